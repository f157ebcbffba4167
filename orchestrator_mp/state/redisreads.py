"""Reads that any Redis layout of ours serves the same way, and the client behaviour
both Redis managers share.

The registration sets, leases, counters, streams, queues, dead letters and stored
results have the same keys and types in the lock-free and the lock-based layouts;
only worker states differ. Both managers take these reads from here; none of them
needs a lock (each is one command, a pipeline of independent reads, one read-only
script, or one MULTI/EXEC snapshot, a read-only script on a full server). Every write of either manager lands in one
atomic server call, so a MULTI snapshot is exact for both.

Lost connections surface as :class:`BackendUnavailable` (the contract's error), not
redis-py's: see :func:`translate_connection_errors`.
"""
from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Iterable, Sequence, cast

import redis

from .. import keys, wire
from ..connection import is_out_of_memory, translate_connection_errors
from ..exceptions import StateError
from .base import (
    AuditSnapshot,
    StreamTail,
    decode_dead_letter,
    decode_result,
    metric_fields,
)
from .redislimits import RedisLimits
from .steps import reads as read_steps

if TYPE_CHECKING:
    from redis.typing import EncodableT, FieldT

# How often a result is polled for while a full server refuses blocking waits.
RESULT_POLL_S = 0.05


class _Snapshot:
    """The reads of one atomic snapshot, run as one MULTI/EXEC. A full server (maxmemory)
    refuses every MULTI, even of reads, but serves a script that only reads: then they
    run as SNAPSHOT, just as atomic (the replies of a stream's newest entry and of a set
    come unparsed, as lists; readers of them accept both)."""

    def __init__(self) -> None:
        self.reads: list[tuple[str, str]] = []

    def get(self, key: str) -> None:
        self.reads.append(("GET", key))

    def llen(self, key: str) -> None:
        self.reads.append(("LLEN", key))

    def zcard(self, key: str) -> None:
        self.reads.append(("ZCARD", key))

    def xlen(self, key: str) -> None:
        self.reads.append(("XLEN", key))

    def smembers(self, key: str) -> None:
        self.reads.append(("SMEMBERS", key))

    def xlast(self, key: str) -> None:
        self.reads.append(("XLAST", key))

    def execute(self, client: Any) -> list[Any]:
        pipe = client.pipeline(transaction=True)
        for read, key in self.reads:
            if read == "XLAST":
                pipe.xrevrange(key, count=1)
            else:
                getattr(pipe, read.lower())(key)
        try:
            replies: list[Any] = pipe.execute()
            return replies
        except redis.ResponseError as exc:
            if not is_out_of_memory(exc):
                raise
        snapshot = client.register_script(read_steps.SNAPSHOT)
        replies = snapshot(keys=[key for _, key in self.reads], args=[read for read, _ in self.reads])
        return replies


def _tail(length: int, last: list[Any]) -> StreamTail:
    if not last:
        return StreamTail(length=int(length), last={})
    entry_id, fields = last[0]
    if isinstance(fields, list):  # a cluster transaction returns the unparsed reply
        fields = dict(zip(fields[::2], fields[1::2], strict=True))
    return StreamTail(length=int(length), last=fields, last_id=entry_id)


def _depths(queue_reads: tuple[Any, Any, Any, Any], by_worker: dict[str, int], limited: int) -> dict[str, Any]:
    """The depths dict from the replies of ``_add_depth_reads`` and the in-flight lists."""
    pending, dead, delayed, laned = queue_reads
    return {
        "pending": int(pending),
        "inflight": sum(by_worker.values()),
        "delayed": int(delayed),
        "limited": limited,
        "laned": int(laned or 0),
        "dead_letter": int(dead),
        "by_worker": by_worker,
    }


@translate_connection_errors
class RedisReadsMixin:
    """Needs ``self.redis`` (a decoded client created in this process) and ``self.events_maxlen``.

    Keys come from ``self.space`` (the plain layout unless a manager serves one shard);
    callers always name counters and streams by their plain names.
    """

    redis: redis.Redis
    events_maxlen: int
    space: keys.KeySpace = keys.PLAIN

    def stream_views(self) -> list[tuple[Any, keys.KeySpace]]:
        return [(self.redis, self.space)]

    def clock(self) -> float:
        seconds, micros = self.redis.time()
        return seconds + micros / 1e6

    # -- workers ------------------------------------------------------------------------------
    def active_workers(self) -> set[str]:
        return set(cast("set[str]", self.redis.smembers(self.space.ACTIVE_WORKERS)))

    def known_workers(self) -> set[str]:
        return set(cast("set[str]", self.redis.smembers(self.space.KNOWN_WORKERS)))

    def expired_workers(self) -> list[str]:
        active = sorted(self.active_workers())
        if not active:
            return []
        pipe = self.redis.pipeline(transaction=False)
        for worker_id in active:
            pipe.exists(self.space.worker_lease_key(worker_id))
        return [w for w, alive in zip(active, pipe.execute(), strict=True) if not alive]

    def inflight(self, worker_id: str) -> list[str]:
        return list(reversed(cast("list[str]", self.redis.lrange(self.space.worker_inflight_key(worker_id), 0, -1))))

    # -- counters, streams ----------------------------------------------------------------------
    def get_counter(self, name: str) -> int:
        return int(self.redis.get(self.space.counter_key(name)) or 0)

    def get_counters(self, names: Sequence[str] = keys.COUNTERS) -> dict[str, int]:
        values = self.redis.mget([self.space.counter_key(name) for name in names])
        return {name: int(value or 0) for name, value in zip(names, values, strict=True)}

    def worker_counters(self, worker_ids: Iterable[str]) -> dict[str, dict[str, int]]:
        ids = sorted(worker_ids)
        if not ids:
            return {}
        pipe = self.redis.pipeline(transaction=False)
        for worker_id in ids:
            pipe.get(self.space.worker_completed_key(worker_id))
            pipe.get(self.space.worker_errors_key(worker_id))
        values = pipe.execute()
        return {
            worker_id: {"completed": int(values[2 * i] or 0), "errors": int(values[2 * i + 1] or 0)}
            for i, worker_id in enumerate(ids)
        }

    def record_metric(
        self, name: str, value: float, tags: dict[str, object] | None = None, *, pipeline: Any = None
    ) -> None:
        """An append needs no lock: XADD (queued in ``pipeline`` if given)."""
        target = pipeline if pipeline is not None else self.redis
        # redis-py types ``fields`` as an invariant Dict[FieldT, EncodableT]; str keys and str | float values are that.
        fields = cast("dict[FieldT, EncodableT]", metric_fields(name, value, tags))
        target.xadd(self.space.METRICS, fields, maxlen=self.events_maxlen, approximate=True)

    def stream_tail(self, stream: str) -> StreamTail:
        pipe = self.redis.pipeline(transaction=False)
        pipe.xlen(self.space.key(stream))
        pipe.xrevrange(self.space.key(stream), count=1)
        return _tail(*pipe.execute())

    def read_stream(self, stream: str, count: int = 100) -> list[tuple[str, dict[str, str]]]:
        entries = cast("list[tuple[str, dict[str, str]]]", self.redis.xrevrange(self.space.key(stream), count=count))
        return list(reversed(entries))

    def follow(
        self, positions: dict[str, str], block_s: float, count: int = 1000
    ) -> list[tuple[str, str, dict[str, str]]]:
        space = self.space
        reply = cast(
            "list[tuple[str, list[tuple[str, dict[str, str]]]]] | None",
            self.redis.xread(
                {space.key(stream): position for stream, position in positions.items()},
                count=count,
                block=None if block_s <= 0 else max(1, int(block_s * 1000)),
            ),
        )
        entries = []
        for key, items in reply or []:
            stream = space.plain(key)
            for entry_id, fields in items:
                entries.append((stream, entry_id, fields))
            if items:
                positions[stream] = items[-1][0]
        return entries

    # -- queues -----------------------------------------------------------------------------------
    def queue_depths(self, worker_ids: Iterable[str] | None = None) -> dict[str, Any]:
        ids = sorted(self.known_workers() if worker_ids is None else worker_ids)
        pipe = self.redis.pipeline(transaction=False)
        self._add_depth_reads(pipe)
        for worker_id in ids:
            pipe.llen(self.space.worker_inflight_key(worker_id))
        pending, dead, delayed, laned, *inflight = pipe.execute()
        by_worker = {worker_id: int(n) for worker_id, n in zip(ids, inflight, strict=True)}
        limited = RedisLimits(self.redis, space=self.space).waiting()
        return _depths((pending, dead, delayed, laned), by_worker, limited)

    def _add_depth_reads(self, pipe: Any) -> None:
        """Queue the reads of the queue, dead-letter, delayed and lane depths, in that order."""
        pipe.llen(self.space.QUEUE)
        pipe.llen(self.space.DEAD_LETTER)
        pipe.zcard(self.space.DELAYED)
        pipe.get(self.space.LANE_WAITING)

    def dead_letters(self, limit: int | None = 100) -> list[dict[str, Any]]:
        stop = -1 if limit is None else max(0, limit - 1)
        raws = cast("list[str]", self.redis.lrange(self.space.DEAD_LETTER, 0, stop))
        return [decode_dead_letter(raw) for raw in raws]

    def audit_snapshot(self) -> AuditSnapshot:
        """One MULTI/EXEC (one read-only script on a full server): a consistent snapshot
        even while workers settle batches."""
        while True:
            known = sorted(self.known_workers())
            limiters = sorted(cast("set[str]", self.redis.smembers(self.space.LIMITERS)))
            snapshot = _Snapshot()
            snapshot.smembers(self.space.KNOWN_WORKERS)
            for name in keys.COUNTERS:  # GETs, not MGET: cluster pipelines refuse MGET
                snapshot.get(self.space.counter_key(name))
            for worker_id in known:
                snapshot.get(self.space.worker_completed_key(worker_id))
                snapshot.get(self.space.worker_errors_key(worker_id))
                snapshot.llen(self.space.worker_inflight_key(worker_id))
            for stream in (self.space.WORK_COMPLETIONS, self.space.WORK_ERRORS):
                snapshot.xlen(stream)
                snapshot.xlast(stream)
            self._add_depth_reads(snapshot)
            for name in limiters:
                snapshot.llen(self.space.slot_waiters_key(name))
            reply = snapshot.execute(self.redis)
            if set(reply[0]) == set(known):
                break  # no worker registered between the two reads
        counted = len(keys.COUNTERS)
        values = iter(reply[1 + counted :])
        per_worker, inflight = {}, {}
        for worker_id in known:
            per_worker[worker_id] = {"completed": int(next(values) or 0), "errors": int(next(values) or 0)}
            inflight[worker_id] = int(next(values))
        completions = _tail(next(values), next(values))
        errors = _tail(next(values), next(values))
        queue_reads = (next(values), next(values), next(values), next(values))
        depths = _depths(queue_reads, inflight, sum(int(n) for n in values))
        counters = {name: int(value or 0) for name, value in zip(keys.COUNTERS, reply[1 : 1 + counted], strict=True)}
        return AuditSnapshot(
            counters=counters, per_worker=per_worker, completions=completions, errors=errors, depths=depths
        )

    # -- results ----------------------------------------------------------------------------------
    def get_results(self, task_ids: Sequence[str]) -> dict[str, dict[str, Any] | None]:
        pipe = self.redis.pipeline(transaction=False)
        for task_id in task_ids:
            pipe.lindex(self.space.result_key(task_id), 0)
        return {task_id: decode_result(stored) for task_id, stored in zip(task_ids, pipe.execute(), strict=True)}

    def wait_result(self, task_id: str, timeout_s: float | None) -> dict[str, Any] | None:
        key = self.space.result_key(task_id)
        stored = cast("str | None", self.redis.lindex(key, 0))
        if stored is None:
            # BLMOVE of a list onto itself: a blocking read that leaves the result
            # for every other waiter. 0 means wait forever.
            try:
                timeout = 0 if timeout_s is None else max(timeout_s, 0.001)
                # redis-py types the timeout as int; BLMOVE takes seconds as a double (1 ms here).
                reply = self.redis.blmove(key, key, timeout, "LEFT", "LEFT")  # type: ignore[arg-type]
                stored = cast("str | None", reply)
            except redis.ResponseError as exc:
                if not is_out_of_memory(exc):
                    raise
                stored = self._poll_result(key, timeout_s)
        return decode_result(stored)

    def _poll_result(self, key: str, timeout_s: float | None) -> str | None:
        """A full server (maxmemory) refuses BLMOVE, which may write: poll instead, every
        RESULT_POLL_S, until the result is there or ``timeout_s`` (None: forever) ends."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            stored = cast("str | None", self.redis.lindex(key, 0))
            if stored is not None or (deadline is not None and time.monotonic() >= deadline):
                return stored
            pause = RESULT_POLL_S if deadline is None else min(RESULT_POLL_S, max(0.0, deadline - time.monotonic()))
            time.sleep(pause)

    def task_status(self, task_id: str) -> tuple[str, dict[str, Any] | None]:
        inflight_keys = [self.space.worker_inflight_key(w) for w in sorted(self.known_workers())]
        reply = self.redis.register_script(read_steps.TASK_STATUS)(
            keys=[self.space.result_key(task_id), self.space.QUEUE, self.space.DELAYED, *inflight_keys],
            args=[wire.id_needle(task_id)],
        )
        if reply[0] == "result":
            stored = decode_result(reply[1])
            return stored.get("status", "unknown"), stored
        return reply[0], None

    def ping(self) -> None:
        """Raise StateError if the server does not answer."""
        try:
            self.redis.ping()
        except redis.RedisError as exc:
            raise StateError(f"Redis did not answer: {exc}") from None
