"""Taking over a dead worker's partition: the one path by which lost work comes back.

One step: the partition's epoch goes up (fencing the old owner, whose later writes are
refused), its lease is dropped, every in-flight task returns to the front of the queue
(its crash count raised when the death was a crash) or, past ``max_crashes`` or not a
task at all, is dead-lettered with its reason; one task may be named as the cause (a
time limit) and settled as that failure. Conditional forms take over only a lapsed
lease, or only while a task's time limit still stands.
"""
from __future__ import annotations

import time
from typing import Sequence

from ... import keys, wire
from ...models import BAD_PAYLOAD, POISON, Outcome
from ...wire import dumps
from ..base import ReclaimResult, dead_letter_entry
from .lua import RELEASE_LANE_FUNCTION, SERVER_NOW, WIRE
from .ops import (
    DEAD_LETTER,
    DELAY,
    DROP_INFLIGHT,
    LEASE,
    MEMBERSHIP,
    REQUEUE,
    RESULT,
    STREAM,
    Op,
    Step,
    Tally,
    error_event,
)

# Take over a dead worker's partition: bump its epoch (fencing the old owner), drop
# its lease, put every in-flight task back at the front of the queue (raising its
# crash count when the death was a crash), dead-letter the ones that crashed workers
# too often (poison) or are not tasks at all, and remove the worker from
# active_workers. One task may be named as the cause (a time limit): it is settled
# as a failure instead, retried later or dead-lettered as the caller decided.
# KEYS: 1 state hash, 2 in-flight list, 3 queue, 4 dead-letter list, 5 active_workers,
#       6 stream:worker_events, 7 total_requeued, 8 total_dead_lettered, 9 total_errors,
#       10 worker errors, 11 work_errors, 12 lease key, 13 delayed sorted set, 14 total_retried,
#       15 total_foreign, 16 lane-waiting gauge, 17.. extra keys (result keys, lane pairs)
# ARGV: 1 worker id, 2 max crashes, 3 events maxlen, 4 completions maxlen, 5 reason,
#       6 crash increment (0 or 1), 7 only if the lease expired (0 or 1),
#       8 the causing task's raw or '', 9 its retry raw or '', 10 its retry delay (seconds
#       from now, server clock), 11 its dead-letter entry, 12 its category, 13 its message,
#       14 its stored result, 15 result ttl ms, 16 JSON {raw: [result key number, lane number]}
#       for the in-flight tasks that want a result or hold a lane (numbers index the extra
#       keys: a result key is KEYS[16 + n], a lane is KEYS[16 + n] and KEYS[17 + n]; 0 means
#       none), 17 a task id whose time limit must still stand (its deadline past on the
#       server's clock, and it still the worker's current task), or ''
# Returns: {new epoch, requeued, dead-lettered}, or {-1, 0, 0} when nothing was taken over
#          (the lease is still alive, or the time limit no longer stands)
RECLAIM = RELEASE_LANE_FUNCTION + SERVER_NOW + WIRE + """
local now = server_now()
if ARGV[7] == '1' and redis.call('EXISTS', KEYS[12]) == 1 then return {-1, 0, 0} end
if ARGV[17] ~= '' then
  -- A time limit is enforced only while it still stands: a settle that landed first
  -- cleared the deadline (the task finished in time) and nothing is taken over.
  local state = redis.call('HMGET', KEYS[1], 'current_task', 'deadline')
  if state[1] ~= ARGV[17] or not tonumber(state[2]) or tonumber(state[2]) > now then return {-1, 0, 0} end
end
if ARGV[9] ~= '' and not tonumber(ARGV[10]) then
  return redis.error_reply('ERR retry delay is not a number: ' .. tostring(ARGV[10]))
end
local extras = cjson.decode(ARGV[16])
local function store(raw, value)
  local extra = extras[raw]
  if extra and extra[1] ~= 0 then
    local key = KEYS[16 + extra[1]]
    redis.call('DEL', key)
    redis.call('RPUSH', key, value)
    redis.call('PEXPIRE', key, ARGV[15])
  end
end
local function release(raw)
  local extra = extras[raw]
  if extra and extra[2] ~= 0 then release_lane(KEYS[16 + extra[2]], KEYS[17 + extra[2]], KEYS[3], KEYS[16]) end
end
-- The lease goes first: a write that grows nothing, so a full server (maxmemory) lets
-- the takeover through (see HEARTBEAT); it moves tasks, it adds little.
redis.call('DEL', KEYS[12])
local epoch = redis.call('HINCRBY', KEYS[1], 'epoch', 1)
redis.call('HSET', KEYS[1], 'status', 'dead', 'current_task', '', 'batch', 0, 'deadline', '')
local requeued, dead = 0, 0
local max_crashes = tonumber(ARGV[2])
local increment = tonumber(ARGV[6])
local function record_error(task_id, name, category, message, retry)
  redis.call('INCR', KEYS[10])
  local n = redis.call('INCR', KEYS[9])
  redis.call('XADD', KEYS[11], 'MAXLEN', '~', ARGV[4], '*', 'n', n, 'task_id', task_id,
             'name', name, 'worker', ARGV[1], 'category', category, 'message', message,
             'retry', retry and 1 or 0)
end
while true do
  local raw = redis.call('LPOP', KEYS[2])
  if not raw then break end
  local task_id = string.match(raw, TASK_ID) or ''
  local name = string.match(raw, TASK_NAME) or ''
  if raw == ARGV[8] then
    local retry = ARGV[9] ~= ''
    record_error(task_id, name, ARGV[12], ARGV[13], retry)
    if retry then
      redis.call('ZADD', KEYS[13], now + tonumber(ARGV[10]), ARGV[9])
      redis.call('INCR', KEYS[14])
    else
      redis.call('LPUSH', KEYS[4], ARGV[11])
      redis.call('INCR', KEYS[8])
      store(raw, ARGV[14])
      release(raw)
      dead = dead + 1
    end
  else
    local crashes, rest = string.match(raw, CRASHES_AND_REST)
    local category, message = nil, nil
    if not crashes then
      category, message = 'bad_payload', 'in-flight entry is not a task'
      redis.call('INCR', KEYS[15])
    else
      local count = tonumber(crashes) + increment
      if count >= max_crashes then
        category = 'poison'
        message = 'crashed ' .. count .. ' workers (limit ' .. max_crashes .. ')'
      else
        redis.call('RPUSH', KEYS[3], CRASHES_PREFIX .. count .. ',' .. rest)
        requeued = requeued + 1
      end
    end
    if category then
      record_error(task_id, name, category, message, false)
      redis.call('LPUSH', KEYS[4], cjson.encode({task = raw, task_id = task_id, name = name,
                 category = category, message = message, traceback = '', worker = ARGV[1],
                 failed_at = tonumber(now)}))
      redis.call('INCR', KEYS[8])
      store(raw, cjson.encode({status = 'dead_lettered', category = category,
            error_type = category == 'poison' and 'WorkerCrashed' or 'BadPayload', message = message, traceback = '', worker = ARGV[1],
            finished_at = tonumber(now)}))
      release(raw)
      dead = dead + 1
    end
  end
end
if requeued > 0 then redis.call('INCRBY', KEYS[7], requeued) end
redis.call('SREM', KEYS[5], ARGV[1])
redis.call('XADD', KEYS[6], 'MAXLEN', '~', ARGV[3], '*', 'event', 'reclaimed', 'worker', ARGV[1],
           'reason', ARGV[5], 'epoch', epoch, 'requeued', requeued, 'dead_lettered', dead)
return {epoch, requeued, dead}
"""


# -- KEYS and ARGV ------------------------------------------------------------------------------
def reclaim_call(space: keys.KeySpace, worker_id: str, inflight: Sequence[str], *, max_crashes: int, reason: str,
                 crashed: bool, only_if_expired: bool, cause: Outcome | None, deadline_of: str | None,
                 events_maxlen: int, completions_maxlen: int, result_ttl_ms: int) -> tuple[list[str], list[object]]:
    """RECLAIM's KEYS and ARGV. ``inflight``: the partition's list as read just before,
    for the result keys and lanes of tasks that may be dead-lettered (a task claimed
    after the read is requeued, never dead-lettered: requeueing needs no extra key)."""
    now = time.time()  # only for the records people read (dead letters, stored results)
    cause_args: list[object] = ["", "", 0, "", "", "", ""]
    if cause is not None:
        entry = "" if cause.retry_raw else dead_letter_entry(cause, worker_id)
        stored = cause.stored_result(worker_id, now)
        cause_args = [cause.raw, cause.retry_raw, cause.retry_in_s, entry, cause.category, cause.message, stored]
    # Tasks whose submitters wait for a result get it even when dead-lettered here,
    # and a dead-lettered keyed task releases its lane.
    extra_keys: list[str] = []
    extras: dict[str, list[int]] = {}
    for raw in inflight:
        result_number = lane_number = 0
        if wire.wants_result(raw):
            extra_keys.append(space.result_key(wire.task_id_of(raw)))
            result_number = len(extra_keys)
        partition_key = wire.partition_key_of(raw)
        if partition_key is not None:
            lane_number = len(extra_keys) + 1
            extra_keys.extend((space.lane_key(partition_key), space.lane_owner_key(partition_key)))
        if result_number or lane_number:
            extras[raw] = [result_number, lane_number]
    keys_ = [
        space.worker_state_key(worker_id),
        space.worker_inflight_key(worker_id),
        space.QUEUE,
        space.DEAD_LETTER,
        space.ACTIVE_WORKERS,
        space.WORKER_EVENTS,
        space.TOTAL_REQUEUED,
        space.TOTAL_DEAD_LETTERED,
        space.TOTAL_ERRORS,
        space.worker_errors_key(worker_id),
        space.WORK_ERRORS,
        space.worker_lease_key(worker_id),
        space.DELAYED,
        space.TOTAL_RETRIED,
        space.TOTAL_FOREIGN,
        space.LANE_WAITING,
        *extra_keys,
    ]
    args = [
        worker_id, max_crashes, events_maxlen, completions_maxlen, reason, 1 if crashed else 0,
        1 if only_if_expired else 0, *cause_args, result_ttl_ms, wire.dumps(extras) if extras else "{}",
        deadline_of or "",
    ]
    return keys_, args


def reclaim_result(reply: Sequence[int]) -> ReclaimResult | None:
    epoch, requeued, dead = (int(value) for value in reply)
    return None if epoch == -1 else ReclaimResult(epoch, requeued, dead)


# -- the Python twin ------------------------------------------------------------------------------
def requeue_or_poison(raw: str, max_crashes: int, increment: int = 1) -> tuple[str | None, str, str]:
    """RECLAIM's decision for one in-flight entry.

    Returns ``(requeued raw, "", "")`` with the crash count raised by ``increment``,
    or ``(None, category, message)`` when the entry must be dead-lettered instead.
    """
    crashes = wire.crashes_of(raw)
    if crashes is None:
        return None, BAD_PAYLOAD, "in-flight entry is not a task"
    count = crashes + increment
    if count >= max_crashes:
        return None, POISON, f"crashed {count} workers (limit {max_crashes})"
    return wire.with_crashes(raw, count), "", ""


def deadline_passed(state: dict[str, str], task_id: str, now: float) -> bool:
    """RECLAIM's time-limit test: ``task_id`` is still current and its deadline is past."""
    try:
        deadline = float(state.get("deadline") or "")
    except ValueError:
        return False
    return state.get("current_task") == task_id and deadline <= now


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
) -> Step[ReclaimResult | None]:
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
        task_id, name = wire.task_id_of(raw), wire.name_of(raw)
        wants = wire.wants_result(raw)
        if cause is not None and raw == cause.raw:
            retry = bool(cause.retry_raw)
            ops.append(error_event(tally, worker_id, task_id, name, cause.category, cause.message, retry))
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
            ops.append(error_event(tally, worker_id, task_id, name, category, message, False))
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


def reclaim_counters(worker_id: str) -> list[str]:
    """Every counter :func:`plan_reclaim` may change."""
    return [keys.worker_errors_key(worker_id), keys.TOTAL_ERRORS, keys.TOTAL_DEAD_LETTERED, keys.TOTAL_REQUEUED,
            keys.TOTAL_RETRIED, keys.TOTAL_FOREIGN]
