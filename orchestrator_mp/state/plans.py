"""The planners: what each Lua script does, as pure Python, for the backends that
cannot run the scripts (the lock-based baseline, the file fallback).

A write of either Python backend has three parts::

    read    its inputs (the worker's state, in-flight list, counters) inside its
            critical section (locks held, or the file transaction open)
    plan    here: a pure function of those inputs returns a :class:`Step`: the
            operations the script would run, in the script's order, the worker's new
            state, the counters' new values, and the result (or error) for the caller
    apply   the backend turns the Step into its own writes (one fenced Redis call,
            or one file transaction); each backend has one applier per operation

Each planner names the script it mirrors; a change to a script in ``scripts.py`` must
be made here too (the contract suite runs every backend against the same expectations).
"""
from __future__ import annotations

from collections import Counter
from typing import Any, Callable, Sequence

import attrs

from .. import keys
from ..exceptions import Fenced
from ..models import BAD_PAYLOAD, POISON, Outcome, dumps
from .base import ReclaimResult, SettleResult, dead_letter_entry
from .common import (
    WANTS_RESULT,
    claimable,
    encode_value,
    fair_share,
    ms,
    name_of,
    present,
    requeue_or_poison,
    split_settled,
    task_id_of,
)

# -- what a step does, in order (each backend applies these to its own storage) ------------
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
PROMOTE = "promote"  # (PROMOTE, raws): ZREM queue:delayed, LPUSH queue:pending (raws in due order)
TAKE = "take"  # (TAKE, raws): the oldest len(raws) queued tasks (these) into the worker's in-flight list
DROP_INFLIGHT = "drop_inflight"  # (DROP_INFLIGHT,): empty the worker's in-flight list
CANCEL = "cancel"  # (CANCEL, raw): LREM queue:pending 1 raw
UNLETTER = "unletter"  # (UNLETTER, entry): LREM queue:dead_letter 1 entry
UNLETTER_ALL = "unletter_all"  # (UNLETTER_ALL,): DEL queue:dead_letter

Op = tuple[Any, ...]


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
class Step:
    """What one planned step does: ``ops`` in order, the worker's new ``state`` (None:
    unchanged), the counters' new values, then ``result`` or ``error`` for the caller.
    ``fenced`` > 0: the write was refused and counts that many times in total_fenced."""

    worker_id: str = ""
    ops: list[Op] = attrs.Factory(list)
    state: dict[str, str] | None = None
    result: Any = None
    error: Exception | None = None
    fenced: int = 0
    counters: Tally | None = None

    @property
    def changed_counters(self) -> dict[str, int]:
        return self.counters.changed if self.counters is not None else {}


def owns(state: dict[str, str], epoch: int) -> bool:
    """The fencing test every script makes: the stored epoch is the caller's."""
    return state.get("epoch") == str(epoch)


def refused(worker_id: str, epoch: int, writes: int) -> Step:
    """A write from a fenced owner: nothing changes but total_fenced (by ``writes``)."""
    return Step(worker_id, error=Fenced(worker_id, epoch), fenced=writes)


def _bump(state: dict[str, str], **fields: str) -> tuple[dict[str, str], int]:
    new = dict(state)
    version = int(new.get("version", 0)) + 1
    new.update(fields)
    new["version"] = str(version)
    return new, version


def _state_event(worker_id: str, version: int, **fields: object) -> Op:
    return (STREAM, keys.EVENTS, {"event": "state", "worker": worker_id, **fields, "version": version})


# -- planners, one per script --------------------------------------------------------------------
def plan_register(worker_id: str, state: dict[str, str], *, pid: int, host: str, now: float) -> Step:
    """REGISTER: a new epoch and its first lease; idle; into active and known workers."""
    epoch = int(state.get("epoch", 0)) + 1
    at = encode_value(now)
    new, version = _bump(
        state, status="idle", current_task="", pid=encode_value(pid), host=host, started_at=at, last_activity=at
    )
    new["epoch"] = str(epoch)
    ops = [
        (LEASE, epoch),
        (MEMBERSHIP, True),
        (STREAM, keys.WORKER_EVENTS, {"event": "registered", "worker": worker_id, "pid": pid, "host": host,
                                      "epoch": epoch}),
        _state_event(worker_id, version, status="idle"),
    ]
    return Step(worker_id, ops, new, result=epoch)


def plan_deregister(worker_id: str, state: dict[str, str], epoch: int, now: float) -> Step:
    """DEREGISTER: stopped, lease dropped, out of active_workers (a fenced call counts nothing)."""
    if not owns(state, epoch):
        return Step(worker_id, error=Fenced(worker_id, epoch))
    new, version = _bump(state, status="stopped", current_task="", last_activity=encode_value(now))
    ops = [
        (LEASE, None),
        (MEMBERSHIP, False),
        (STREAM, keys.WORKER_EVENTS, {"event": "deregistered", "worker": worker_id, "epoch": epoch}),
        _state_event(worker_id, version, status="stopped"),
    ]
    return Step(worker_id, ops, new)


def deadline_passed(state: dict[str, str], task_id: str, now: float) -> bool:
    """RECLAIM's time-limit test: ``task_id`` is still current and its deadline is past."""
    try:
        deadline = float(state.get("deadline") or "")
    except ValueError:
        return False
    return state.get("current_task") == task_id and deadline <= now


def plan_start_task(worker_id: str, state: dict[str, str], epoch: int, task_id: str, deadline: float) -> Step:
    """START_TASK: current_task and its deadline published, version bumped, one event."""
    if not owns(state, epoch):
        return refused(worker_id, epoch, 1)
    at = f"{deadline:.6f}"
    new, version = _bump(state, current_task=task_id, deadline=at)
    event = {"event": "state", "worker": worker_id, "version": version, "current_task": task_id, "deadline": at}
    return Step(worker_id, [(STREAM, keys.EVENTS, event)], new, result=float(at))


def plan_heartbeat(worker_id: str, state: dict[str, str], epoch: int, now: float) -> Step:
    """HEARTBEAT: renew the lease and last_activity; no version, no event."""
    if not owns(state, epoch):
        return refused(worker_id, epoch, 1)
    return Step(worker_id, [(LEASE, epoch)], {**state, "last_activity": encode_value(now)})


def plan_update(
    worker_id: str, state: dict[str, str], fields: dict[str, str], expected_version: int | None, epoch: int | None
) -> Step:
    """UPDATE_STATE: fields set, version bumped, one event; result 0 for a stale version."""
    if epoch is not None and not owns(state, epoch):
        return refused(worker_id, epoch, 1)
    if expected_version is not None and state.get("version", "0") != str(expected_version):
        return Step(worker_id, result=0)
    new, version = _bump(state, **fields)
    event = {"event": "state", "worker": worker_id, "version": version, **fields}
    return Step(worker_id, [(STREAM, keys.EVENTS, event)], new, result=version)


def plan_claim(
    worker_id: str,
    epoch: int,
    state: dict[str, str],
    *,
    depth: int,
    oldest: Sequence[str],
    due: Sequence[str],
    max_count: int,
    divisor: int,
    now: float,
) -> Step:
    """CLAIM: first the ``due`` delayed tasks (in due order) join the back of the queue
    of ``depth`` tasks; then a fair share of it is taken from its oldest end, suspects
    alone. ``oldest`` is the queue's oldest tasks, oldest first: at least ``max_count``
    of them, or all. The result is the claimed tasks, oldest first."""
    if not owns(state, epoch):
        return refused(worker_id, epoch, 1)
    ops: list[Op] = [(PROMOTE, list(due))] if due else []
    candidates = [*oldest, *due][: fair_share(max_count, depth + len(due), divisor)]
    claimed = claimable(candidates)
    if not claimed:
        return Step(worker_id, ops, result=[])
    task_id = task_id_of(claimed[0], "?")
    batch = len(claimed)
    new, version = _bump(
        state, status="busy", current_task=task_id, batch=str(batch), last_activity=encode_value(now)
    )
    ops.append((TAKE, claimed))
    ops.append(_state_event(worker_id, version, status="busy", current_task=task_id, batch=batch))
    return Step(worker_id, ops, new, result=claimed)


def plan_settle(
    worker_id: str,
    epoch: int,
    state: dict[str, str],
    inflight: Sequence[str],
    outcomes: Sequence[Outcome],
    tally: Tally,
    now: float,
) -> Step:
    """SETTLE: each outcome still in flight counted once; failures retried later (delayed
    set) or dead-lettered; final outcomes stored for submitters that want them; idle."""
    if not owns(state, epoch):
        return refused(worker_id, epoch, len(outcomes))
    done, failed, duplicates = split_settled(inflight, outcomes)
    ops: list[Op] = []
    for outcome in done:
        ops.append((UNCLAIM, outcome.raw))
        tally.add(keys.worker_completed_key(worker_id))
        n = tally.add(keys.TOTAL_WORK_COMPLETED)
        ops.append((STREAM, keys.WORK_COMPLETIONS, {
            "n": n, "task_id": outcome.task_id, "name": outcome.name, "worker": worker_id,
            "wait_ms": ms(outcome.wait_ms), "run_ms": ms(outcome.run_ms)}))
        ops.extend(_stored(outcome, worker_id, now))
    for outcome in failed:
        ops.append((UNCLAIM, outcome.raw))
        retry = bool(outcome.retry_raw)
        ops.append(_error(tally, worker_id, outcome.task_id, outcome.name, outcome.category, outcome.message, retry))
        if retry:
            ops.append((DELAY, now + outcome.retry_in_s, outcome.retry_raw))
            tally.add(keys.TOTAL_RETRIED)
        else:
            ops.append((DEAD_LETTER, dead_letter_entry(outcome, worker_id, now)))
            tally.add(keys.TOTAL_DEAD_LETTERED)
            ops.extend(_stored(outcome, worker_id, now))
        if outcome.category == BAD_PAYLOAD:
            tally.add(keys.TOTAL_FOREIGN)
    if duplicates:
        tally.add(keys.TOTAL_DUPLICATES, duplicates)
    new, version = _bump(
        state, status="idle", current_task="", batch="0", deadline="", last_activity=encode_value(now)
    )
    ops.append(_state_event(worker_id, version, status="idle", completed=len(done), failed=len(failed)))
    result = SettleResult(len(done), len(failed), duplicates)
    return Step(worker_id, ops, new, result=result, counters=tally)


def _stored(outcome: Outcome, worker_id: str, now: float) -> list[Op]:
    if not (outcome.want_result and outcome.task_id):
        return []
    return [(RESULT, outcome.task_id, outcome.stored_result(worker_id, now))]


def _error(tally: Tally, worker_id: str, task_id: str, name: str, category: str, message: str, retry: bool) -> Op:
    """A failure counted for the worker and globally, as its work_errors entry."""
    tally.add(keys.worker_errors_key(worker_id))
    n = tally.add(keys.TOTAL_ERRORS)
    return (STREAM, keys.WORK_ERRORS, {
        "n": n, "task_id": task_id, "name": name, "worker": worker_id, "category": category,
        "message": message, "retry": 1 if retry else 0})


def plan_release(worker_id: str, epoch: int, state: dict[str, str], inflight: Sequence[str],
                 raws: Sequence[str]) -> Step:
    """RELEASE: the named tasks still in flight go back to the front of the queue."""
    if not owns(state, epoch):
        return refused(worker_id, epoch, max(1, len(raws)))
    back = present(inflight, raws)
    ops: list[Op] = []
    for raw in back:
        ops.extend(((UNCLAIM, raw), (REQUEUE, raw)))
    return Step(worker_id, ops, result=len(back))


def plan_reclaim(
    worker_id: str,
    state: dict[str, str],
    inflight: Sequence[str],
    tally: Tally,
    *,
    lease_alive: bool,
    max_crashes: int,
    reason: str,
    crashed: bool,
    only_if_expired: bool,
    cause: Outcome | None,
    now: float,
    deadline_of: str | None = None,
) -> Step:
    """RECLAIM: epoch + 1, lease dropped, every in-flight task requeued (crash count + 1
    when ``crashed``) or dead-lettered (poison, not a task), ``cause`` settled as its
    failure; results stored for dead-lettered tasks that want them. ``inflight`` is
    oldest claim first; the result is None (nothing done) for a live lease with
    ``only_if_expired``, or for a ``deadline_of`` task whose time limit no longer
    stands at ``now``. The backend empties the in-flight list."""
    if only_if_expired and lease_alive:
        return Step(worker_id, result=None)
    if deadline_of is not None and not deadline_passed(state, deadline_of, now):
        return Step(worker_id, result=None)
    epoch = int(state.get("epoch", 0)) + 1
    new = {**state, "epoch": str(epoch), "status": "dead", "current_task": "", "batch": "0", "deadline": ""}
    ops: list[Op] = [(LEASE, None), (DROP_INFLIGHT,)] if inflight else [(LEASE, None)]
    requeued = dead = 0
    for raw in reversed(inflight):  # newest claim first, as RECLAIM pops them: the oldest lands in front
        task_id, name = task_id_of(raw), name_of(raw)
        wants = WANTS_RESULT in raw
        if cause is not None and raw == cause.raw:
            retry = bool(cause.retry_raw)
            ops.append(_error(tally, worker_id, task_id, name, cause.category, cause.message, retry))
            if retry:
                ops.append((DELAY, now + cause.retry_in_s, cause.retry_raw))
                tally.add(keys.TOTAL_RETRIED)
                continue
            ops.append((DEAD_LETTER, dead_letter_entry(cause, worker_id, now)))
            stored = cause.stored_result(worker_id, now)
        else:
            again, category, message = requeue_or_poison(raw, max_crashes, 1 if crashed else 0)
            if again is not None:
                ops.append((REQUEUE, again))
                requeued += 1
                continue
            if category == BAD_PAYLOAD:
                tally.add(keys.TOTAL_FOREIGN)
            ops.append(_error(tally, worker_id, task_id, name, category, message, False))
            lost = Outcome(raw=raw, task_id=task_id, name=name, ok=False, category=category, message=message)
            ops.append((DEAD_LETTER, dead_letter_entry(lost, worker_id, now)))
            stored = dumps({
                "status": "dead_lettered", "category": category,
                "error_type": "WorkerCrashed" if category == POISON else "BadPayload", "message": message,
                "traceback": "", "worker": worker_id, "finished_at": now})
        tally.add(keys.TOTAL_DEAD_LETTERED)
        if wants:
            ops.append((RESULT, task_id, stored))
        dead += 1
    if requeued:
        tally.add(keys.TOTAL_REQUEUED, requeued)
    ops.append((MEMBERSHIP, False))
    ops.append((STREAM, keys.WORKER_EVENTS, {"event": "reclaimed", "worker": worker_id, "reason": reason,
                                             "epoch": epoch, "requeued": requeued, "dead_lettered": dead}))
    return Step(worker_id, ops, new, result=ReclaimResult(epoch, requeued, dead), counters=tally)


def plan_increment(key: str, amount: int, tally: Tally) -> Step:
    """INCRBY: the counter's new value."""
    return Step(result=tally.add(key, amount), counters=tally)


def plan_submit(
    raws: Sequence[str], *, seen: bool, batch_id: str | None, due_at: float | None, tally: Tally
) -> Step:
    """SUBMIT: the batch (unless ``seen``: its marker exists) into the queue, or into the
    delayed set when ``due_at`` is given, counted in total_work_created. ``batch_id``
    None: no marker (the backend has no lost replies to guard against)."""
    if seen:
        return Step(result=0)
    ops: list[Op] = [] if batch_id is None else [(SUBMITTED, batch_id)]
    if due_at is None:
        ops.append((ENQUEUE, list(raws)))
    else:
        ops.extend((DELAY, due_at, raw) for raw in raws)
    tally.add(keys.TOTAL_WORK_CREATED, len(raws))
    return Step(ops=ops, result=len(raws), counters=tally)


def plan_promote(due: Sequence[str]) -> Step:
    """PROMOTE: the due tasks (in due order) from the delayed set to the back of the queue."""
    return Step(ops=[(PROMOTE, list(due))] if due else [], result=len(due))


def plan_cancel(raw: str, queued: bool, tally: Tally) -> Step:
    """CANCEL: a task still queued is withdrawn and counted in total_cancelled."""
    if not queued:
        return Step(result=False)
    tally.add(keys.TOTAL_CANCELLED)
    return Step(ops=[(CANCEL, raw)], result=True, counters=tally)


def plan_dlq_retry(stored: Sequence[str], pairs: Sequence[tuple[str, str]], tally: Tally) -> Step:
    """DLQ_RETRY: each named entry still in the dead-letter list goes back to the queue
    as its fresh task, counted in total_work_created and total_dlq_retried."""
    remaining = Counter(stored)
    ops: list[Op] = []
    for entry, fresh in pairs:
        if remaining[entry] > 0:
            remaining[entry] -= 1
            ops.extend(((UNLETTER, entry), (ENQUEUE, [fresh])))
    moved = len(ops) // 2
    if moved:
        tally.add(keys.TOTAL_WORK_CREATED, moved)
        tally.add(keys.TOTAL_DLQ_RETRIED, moved)
    return Step(ops=ops, result=moved, counters=tally)


def plan_dlq_purge(stored: Sequence[str], entries: Sequence[str] | None, tally: Tally) -> Step:
    """DLQ_PURGE: the named entries (None: all of them) removed, counted in total_dlq_purged."""
    if entries is None:
        removed, ops = len(stored), [(UNLETTER_ALL,)]
    else:
        found = present(stored, entries)
        removed, ops = len(found), [(UNLETTER, entry) for entry in found]
    if removed:
        tally.add(keys.TOTAL_DLQ_PURGED, removed)
    return Step(ops=ops if removed else [], result=removed, counters=tally)


def settle_counters(worker_id: str) -> list[str]:
    """Every counter :func:`plan_settle` may change (a backend reads them first)."""
    return [keys.worker_completed_key(worker_id), keys.worker_errors_key(worker_id), keys.TOTAL_WORK_COMPLETED,
            keys.TOTAL_ERRORS, keys.TOTAL_DEAD_LETTERED, keys.TOTAL_DUPLICATES, keys.TOTAL_RETRIED,
            keys.TOTAL_FOREIGN]


def reclaim_counters(worker_id: str) -> list[str]:
    """Every counter :func:`plan_reclaim` may change."""
    return [keys.worker_errors_key(worker_id), keys.TOTAL_ERRORS, keys.TOTAL_DEAD_LETTERED, keys.TOTAL_REQUEUED,
            keys.TOTAL_RETRIED, keys.TOTAL_FOREIGN]
