"""The vocabulary of the Python twins of the scripts (the lock-based baseline and the
file fallback compute each step in Python and apply it in their critical section).

A write of either Python state has three parts::

    read    its inputs (the worker's state, in-flight list, counters) inside its
            critical section (locks held, or the file transaction open)
    plan    a step module's planner: a pure function of those inputs returns a
            :class:`Step`: the operations the script would run, in the script's order,
            the worker's new state, the counters' new values, and the result (or
            error) for the caller
    apply   the state turns the Step into its own writes (one fenced Redis call, or
            one file transaction); each state has one applier per operation below
"""
from __future__ import annotations

from typing import Any, Callable, Generic, TypeVar

import attrs

from ... import keys
from ...exceptions import ConfigurationError, Fenced
from ...models import Outcome

# -- what a step does, in order (each state applies these to its own storage) -------------
STREAM = "stream"  # (STREAM, stream, fields): XADD with the stream's MAXLEN ~
DEAD_LETTER = "dead_letter"  # (DEAD_LETTER, entry): LPUSH queue:dead_letter
DELAY = "delay"  # (DELAY, due, raw): ZADD queue:delayed
RESULT = "result"  # (RESULT, task id, stored JSON): result:{id} replaced, with the result TTL
REQUEUE = "requeue"  # (REQUEUE, raw): RPUSH queue:pending, so it is claimed next
UNCLAIM = "unclaim"  # (UNCLAIM, raw): LREM -1 from the worker's in-flight list
LEASE = "lease"  # (LEASE, epoch | None): set (for the worker lease) or drop the worker's lease
MEMBERSHIP = "membership"  # (MEMBERSHIP, bool): into active_workers (and known_workers), or out
ENQUEUE = "enqueue"  # (ENQUEUE, raws): LPUSH queue:pending, in order (claimed after everything queued)
SUBMITTED = "submitted"  # (SUBMITTED, batch id): the batch's marker, for submit_marker_ttl_s
PROMOTE_DUE = "promote"  # (PROMOTE_DUE, raws): ZREM queue:delayed, LPUSH queue:pending (raws in due order)
TAKE = "take"  # (TAKE, raws): the oldest len(raws) queued tasks (these) into the worker's in-flight list
DROP_INFLIGHT = "drop_inflight"  # (DROP_INFLIGHT,): empty the worker's in-flight list
WITHDRAW = "cancel"  # (WITHDRAW, raw): LREM queue:pending 1 raw
UNLETTER = "unletter"  # (UNLETTER, entry): LREM queue:dead_letter 1 entry
UNLETTER_ALL = "unletter_all"  # (UNLETTER_ALL,): DEL queue:dead_letter

Op = tuple[Any, ...]

R = TypeVar("R")


class Tally:
    """Counters as one step changes them: each read once (``read(key)``), then added to;
    ``changed`` holds the new values to write back."""

    def __init__(self, read: Callable[[str], int]) -> None:
        self._read = read
        self.changed: dict[str, int] = {}

    def add(self, key: str, amount: int = 1) -> int:
        value = self.changed[key] if key in self.changed else int(self._read(key))
        self.changed[key] = value + amount
        return value + amount


@attrs.define
class Step(Generic[R]):
    """What one planned step does: ``ops`` in order, the worker's new ``state`` (None:
    unchanged), the counters' new values, then ``result`` or ``error`` for the caller.
    ``fenced`` > 0: the write was refused and counts that many times in total_fenced.
    ``R`` is the result's type (the backend method's return type); ``result`` is None
    only where R allows it or ``error`` is set."""

    worker_id: str = ""
    ops: list[Op] = attrs.Factory(list)
    state: dict[str, str] | None = None
    result: R | None = None
    error: Exception | None = None
    fenced: int = 0
    counters: Tally | None = None

    @property
    def changed_counters(self) -> dict[str, int]:
        return self.counters.changed if self.counters is not None else {}


def owns(state: dict[str, str], epoch: int) -> bool:
    """The fencing test every script makes: the stored epoch is the caller's."""
    return state.get("epoch") == str(epoch)


def refused(worker_id: str, epoch: int, writes: int) -> Step[Any]:
    """A write from a fenced owner: nothing changes but total_fenced (by ``writes``)."""
    return Step(worker_id, error=Fenced(worker_id, epoch), fenced=writes)


def bump(state: dict[str, str], **fields: str) -> tuple[dict[str, str], int]:
    new = dict(state)
    version = int(new.get("version", 0)) + 1
    new.update(fields)
    new["version"] = str(version)
    return new, version


def state_event(worker_id: str, version: int, **fields: object) -> Op:
    return (STREAM, keys.EVENTS, {"event": "state", "worker": worker_id, **fields, "version": version})


def stored_ops(outcome: Outcome, worker_id: str, now: float) -> list[Op]:
    if not (outcome.want_result and outcome.task_id):
        return []
    return [(RESULT, outcome.task_id, outcome.stored_result(worker_id, now))]


def error_event(tally: Tally, worker_id: str, task_id: str, name: str, category: str, message: str, retry: bool) -> Op:
    """A failure counted for the worker and globally, as its work_errors entry."""
    tally.add(keys.worker_errors_key(worker_id))
    n = tally.add(keys.TOTAL_ERRORS)
    return (STREAM, keys.WORK_ERRORS, {
        "n": n, "task_id": task_id, "name": name, "worker": worker_id, "category": category,
        "message": message, "retry": 1 if retry else 0})


def encode_value(value: object) -> str:
    """A value as redis-py would send it: str as is, numbers by ``repr``."""
    if isinstance(value, str):
        return value
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return repr(value)
    message = f"state values must be str, int or float, got {type(value).__name__}: {value!r}"
    raise ConfigurationError(message)


def ms(value: float) -> str:
    """Milliseconds as SETTLE's callers send them."""
    return f"{value:.3f}"


def plan_increment(key: str, amount: int, tally: Tally) -> Step[int]:
    """INCRBY: the counter's new value."""
    return Step(result=tally.add(key, amount), counters=tally)
