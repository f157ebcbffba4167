"""Data classes and their JSON form; no I/O.

A task travels through Redis as compact JSON, laid out as :mod:`.wire` says (its one
owner: ``"crashes"`` first, which the recovery script bumps with a string match).
Nothing read back is ever unpickled: :meth:`Task.from_json` accepts only the
documented shape and raises PayloadError for anything else.
"""
from __future__ import annotations

import json
import time
import uuid
from typing import Any

import attrs

from .exceptions import PayloadError
from .wire import dumps, partition_key_of, shard_key_of  # noqa: F401  (the wire owns them; re-exported)

# Error categories recorded in ``work_errors`` and the dead-letter queue.
TASK_ERROR = "task_error"  # the task function raised
UNKNOWN_TASK = "unknown_task"  # no task registered under that name
BAD_PAYLOAD = "bad_payload"  # the queue entry is not a valid task
BAD_RESULT = "bad_result"  # the task returned something that is not JSON
POISON = "poison"  # the task crashed its worker too many times
TIMEOUT = "timeout"  # the task ran past its time limit; its worker was killed
ERROR_CATEGORIES = (TASK_ERROR, UNKNOWN_TASK, BAD_PAYLOAD, BAD_RESULT, POISON, TIMEOUT)
# Failures of the task's own making ("failed"); the others never ran it ("dead_lettered").
OWN_FAILURES = frozenset({TASK_ERROR, BAD_RESULT, TIMEOUT})


def new_task_id() -> str:
    return uuid.uuid4().hex


_REQUIRED: dict[str, type | tuple[type, ...]] = {
    "id": str, "name": str, "args": list, "kwargs": dict, "ts": (int, float), "crashes": int,
}
_OPTIONAL: dict[str, type | tuple[type, ...]] = {
    "retries": int,
    "max_retries": int,
    "time_limit": (int, float),
    "result": bool,
    "key": str,
    "shard": str,
}


def _shape_error(body: Any) -> str:
    """Why a decoded entry is not a task (the slow path, for the error message)."""
    if not isinstance(body, dict):
        return f"expected a JSON object, got {type(body).__name__}"
    for field in _REQUIRED:
        if field not in body:
            return f"missing field {field!r}"
    for field, kind in {**_REQUIRED, **_OPTIONAL}.items():
        value = body.get(field)
        if field in body and (not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool)):
            return f"field {field!r} has type {type(value).__name__}"
    return "unexpected task shape"


@attrs.frozen(kw_only=True)
class Task:
    """One unit of work: a registered task name and JSON arguments."""

    name: str
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = attrs.field(factory=dict)
    id: str = attrs.field(factory=new_task_id)
    submitted_at: float = attrs.field(factory=time.time)
    crashes: int = 0
    retries: int = 0
    max_retries: int | None = None
    time_limit_s: float | None = None
    want_result: bool = False  # store the outcome under result:{id} for handles and futures
    partition_key: str | None = None  # tasks sharing a key run one at a time, in submission order
    # Tasks sharing a shard key live in one shard of a sharded layout (a Redis Cluster):
    # set for tasks under a rate limit or cap, so one shard keeps the whole limit.
    shard_key: str | None = None

    def to_json(self) -> str:
        """Encode; raises PayloadError when the arguments are not JSON-serialisable."""
        body: dict[str, Any] = {
            "crashes": self.crashes,
            "id": self.id,
            "name": self.name,
            "args": list(self.args),
            "kwargs": self.kwargs,
            "ts": self.submitted_at,
            "retries": self.retries,
        }
        if self.max_retries is not None:
            body["max_retries"] = self.max_retries
        if self.time_limit_s is not None:
            body["time_limit"] = self.time_limit_s
        if self.want_result:
            body["result"] = True
        if self.partition_key is not None:
            body["key"] = self.partition_key
        if self.shard_key is not None:
            body["shard"] = self.shard_key
        try:
            return dumps(body)
        except (TypeError, ValueError) as exc:
            raise PayloadError({"name": self.name, "args": self.args, "kwargs": self.kwargs}, str(exc)) from None

    @classmethod
    def from_json(cls, raw: str | bytes) -> "Task":
        """Decode a queue entry; raises PayloadError when it is not a valid task."""
        try:
            body = json.loads(raw)
        except (TypeError, ValueError) as exc:
            raise PayloadError(raw, f"not JSON: {exc}") from None
        # Fast path (every well-formed task): exact types, checked in one expression.
        if (
            type(body) is dict
            and type(body.get("id")) is str
            and type(body.get("name")) is str
            and type(body.get("args")) is list
            and type(body.get("kwargs")) is dict
            and type(body.get("crashes")) is int
            and type(body.get("ts")) in (float, int)
            and type(body.get("retries", 0)) is int
            and type(body.get("key", "")) is str
            and type(body.get("shard", "")) is str
        ):
            max_retries, time_limit, want = body.get("max_retries"), body.get("time_limit"), body.get("result", False)
            if (
                (max_retries is None or type(max_retries) is int)
                and (time_limit is None or type(time_limit) in (int, float))
                and type(want) is bool
            ):
                return cls(
                    name=body["name"],
                    args=tuple(body["args"]),
                    kwargs=body["kwargs"],
                    id=body["id"],
                    submitted_at=float(body["ts"]),
                    crashes=body["crashes"],
                    retries=body.get("retries", 0),
                    max_retries=max_retries,
                    time_limit_s=time_limit,
                    want_result=want,
                    partition_key=body.get("key"),
                    shard_key=body.get("shard"),
                )
        raise PayloadError(raw, _shape_error(body))

    def for_retry(self) -> "Task":
        """The same task, one failure further (crash count kept)."""
        return attrs.evolve(self, retries=self.retries + 1)

    def fresh(self) -> "Task":
        """The same task with its failure and crash history cleared (dead-letter retry)."""
        return attrs.evolve(self, retries=0, crashes=0)


@attrs.frozen(kw_only=True)
class Outcome:
    """How one claimed task ended, as the worker reports it back in a batch.

    ``raw`` is the exact queue entry the worker claimed: the completion step removes
    that string from the worker's in-flight list, and counts the task only if it
    was still there (a task is counted once, whoever ran it).
    """

    raw: str
    task_id: str
    name: str
    ok: bool
    category: str = ""
    message: str = ""
    traceback: str = ""
    wait_ms: float = 0.0
    run_ms: float = 0.0
    retry_raw: str = ""  # failures only: the task to run again, or "" to dead-letter
    retry_in_s: float = 0.0  # when retry_raw becomes due: seconds after the settle, on the server's clock
    error_type: str = ""  # failures only: the exception's class name
    result_json: str = ""  # what the task returned, as JSON ("" when not wanted)
    want_result: bool = False  # the submitter asked for the outcome to be stored

    def stored_result(self, worker_id: str, finished_at: float) -> str:
        """The JSON kept under ``result:{id}`` for a final outcome (see TaskHandle)."""
        if self.ok:
            return '{"status":"done","result":%s,"worker":%s,"finished_at":%r}' % (
                self.result_json or "null",
                dumps(worker_id),
                finished_at,
            )
        status = "failed" if self.category in OWN_FAILURES else "dead_lettered"
        return dumps(
            {
                "status": status,
                "category": self.category,
                "error_type": self.error_type,
                "message": self.message,
                "traceback": self.traceback,
                "worker": worker_id,
                "finished_at": finished_at,
            }
        )


@attrs.frozen
class StreamEntry:
    """One entry of a Redis stream as the read side sees it (``XRANGE``/``XREAD``).

    ``time`` comes from the entry id (milliseconds since the epoch, set by the
    server that appended it), so it needs no field of its own.
    """

    stream: str
    id: str
    fields: dict[str, str]

    @property
    def time(self) -> float:
        """When the server appended the entry, in seconds since the epoch."""
        return int(self.id.split("-", 1)[0]) / 1000.0

    @property
    def worker(self) -> str:
        """The worker the entry names (metrics name it in their tags), or ``""``."""
        worker = self.fields.get("worker")
        if worker:
            return worker
        tags = self.fields.get("tags")
        if tags:
            try:
                decoded = json.loads(tags)
            except ValueError:
                return ""
            if isinstance(decoded, dict) and isinstance(decoded.get("worker"), str):
                tagged: str = decoded["worker"]
                return tagged
        return ""

    def to_dict(self) -> dict[str, Any]:
        """``{"stream", "id", "time", "fields"}``: the JSON shape ``monitor --json`` prints."""
        return {"stream": self.stream, "id": self.id, "time": self.time, "fields": dict(self.fields)}
