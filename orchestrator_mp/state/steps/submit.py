"""Putting tasks in the queue: submit (now or delayed), promote due delayed tasks, cancel.

A submission is one atomic step for the whole batch, idempotent per batch id (a call
resent after a lost reply adds nothing). A keyed task (per-key order) enters its lane:
it is queued only when no other task of its key is queued, in flight or waiting for a
retry. Delayed tasks wait in a sorted set scored by due time on the server's clock.
"""
from __future__ import annotations

import math
from typing import Sequence

from ... import keys, wire
from ...exceptions import ConfigurationError
from .lua import CHUNKED, RELEASE_LANE_FUNCTION, SERVER_NOW, Lanes
from .ops import DELAY, ENQUEUE, PROMOTE_DUE, SUBMITTED, WITHDRAW, Op, Step, Tally

# Submit a batch once: a retried call (reply lost to a reconnect) finds the batch
# marker and adds nothing, so a submission is never applied twice. With a due time
# the tasks wait in the delayed set until then (claims and the supervisor promote them);
# a delay is counted from the server's clock, the one claims compare due times with.
# A task with a partition key whose lane is busy waits in its lane list instead.
# KEYS: 1 queue, 2 total_work_created, 3 batch marker, 4 delayed sorted set,
#       5 lane-waiting gauge, 6.. lane (list, owner) pairs
# ARGV: 1 marker ttl seconds, 2 when: '' (now), '+S' (S seconds from now) or an epoch
#       time in seconds, 3 number of keyed tasks K, then K pairs (raw task, lane number),
#       then the raw tasks without a key
# Returns: how many were submitted (0 for a repeated batch)
SUBMIT = SERVER_NOW + """
local due = nil
if ARGV[2] ~= '' then
  if string.sub(ARGV[2], 1, 1) == '+' then
    local delay = tonumber(string.sub(ARGV[2], 2))
    if delay then due = server_now() + delay end
  else
    due = tonumber(ARGV[2])
  end
  if not due then return redis.error_reply('ERR due time must be a number, got ' .. ARGV[2]) end
end
if not redis.call('SET', KEYS[3], 1, 'NX', 'EX', ARGV[1]) then return 0 end
local keyed = tonumber(ARGV[3])
local function enter(raw)
  if not due then redis.call('LPUSH', KEYS[1], raw) else redis.call('ZADD', KEYS[4], due, raw) end
end
for i = 0, keyed - 1 do
  local raw, lane = ARGV[4 + 2 * i], tonumber(ARGV[5 + 2 * i])
  if redis.call('SET', KEYS[5 + 2 * lane], 1, 'NX') then
    enter(raw)
  else
    redis.call('RPUSH', KEYS[4 + 2 * lane], raw)
    redis.call('INCR', KEYS[5])
  end
end
local first = 4 + 2 * keyed
if not due then
  for start = first, #ARGV, 1000 do
    redis.call('LPUSH', KEYS[1], unpack(ARGV, start, math.min(start + 999, #ARGV)))
  end
else
  for i = first, #ARGV do redis.call('ZADD', KEYS[4], due, ARGV[i]) end
end
local n = keyed + #ARGV - first + 1
redis.call('INCRBY', KEYS[2], n)
return n
"""

# Move delayed tasks whose time has come to the back of the queue.
# KEYS: 1 delayed sorted set, 2 queue
# ARGV: 1 most to move
# Returns: how many moved
PROMOTE = CHUNKED + SERVER_NOW + """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', server_now(), 'LIMIT', 0, ARGV[1])
if #due == 0 then return 0 end
chunked('ZREM', KEYS[1], due)
chunked('LPUSH', KEYS[2], due)
return #due
"""

# Withdraw a task that is still queued (no worker has claimed it); a keyed task
# releases its lane.
# KEYS: 1 queue, 2 total_cancelled, 3 lane list, 4 lane owner, 5 lane-waiting gauge
#       (3 and 4 name a lane only when ARGV[2] is 1)
# ARGV: 1 the raw task, 2 keyed (0 or 1)
# Returns: 1 if it was withdrawn, 0 if it was no longer queued
CANCEL = RELEASE_LANE_FUNCTION + """
if redis.call('LREM', KEYS[1], 1, ARGV[1]) == 1 then
  redis.call('INCR', KEYS[2])
  if ARGV[2] == '1' then release_lane(KEYS[3], KEYS[4], KEYS[1], KEYS[5]) end
  return 1
end
return 0
"""


# -- KEYS and ARGV ------------------------------------------------------------------------------
def due_spec(due_at: float | None, delay_s: float | None) -> str:
    """SUBMIT's ``when`` argument: '' (now), '+S' (S seconds on the server's clock) or
    an epoch time. Refuses both at once, and anything that is not a finite number."""
    if due_at is not None and delay_s is not None:
        raise ConfigurationError("give due_at or delay_s, not both")
    for name, value in (("due_at", due_at), ("delay_s", delay_s)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)):
            raise ConfigurationError(f"{name} must be a finite number of seconds, got {value!r}")
    if delay_s is not None:
        return f"+{max(0.0, float(delay_s))!r}"
    return "" if due_at is None else repr(float(due_at))


def due_time(due_at: float | None, delay_s: float | None, now: float) -> float | None:
    """Where :func:`due_spec` puts tasks, for the states that compute in Python."""
    due_spec(due_at, delay_s)  # the same refusals
    if delay_s is not None:
        return now + max(0.0, float(delay_s))
    return due_at


def submit_call(space: keys.KeySpace, raw_tasks: Sequence[str], batch_id: str, when: str,
                marker_ttl_s: int) -> tuple[list[str], list[object]]:
    """SUBMIT's KEYS and ARGV: keyed tasks first (with their lane numbers), then the rest."""
    lanes = Lanes(space)
    keyed: list[object] = []  # raw task, lane number, raw task, ...
    plain: list[str] = []
    for raw in raw_tasks:
        partition_key = wire.partition_key_of(raw)
        if partition_key is None:
            plain.append(raw)
        else:
            keyed.extend((raw, lanes.number(partition_key)))
    keys_ = [space.QUEUE, space.TOTAL_WORK_CREATED, space.submit_marker_key(batch_id), space.DELAYED,
             space.LANE_WAITING, *lanes.keys]
    return keys_, [marker_ttl_s, when, len(keyed) // 2, *keyed, *plain]


def promote_call(space: keys.KeySpace, limit: int) -> tuple[list[str], list[object]]:
    return [space.DELAYED, space.QUEUE], [limit]


def cancel_call(space: keys.KeySpace, raw_task: str) -> tuple[list[str], list[object]]:
    partition_key = wire.partition_key_of(raw_task) or ""
    keys_ = [space.QUEUE, space.TOTAL_CANCELLED, space.lane_key(partition_key), space.lane_owner_key(partition_key),
             space.LANE_WAITING]
    return keys_, [raw_task, 1 if partition_key else 0]


# -- the Python twins -----------------------------------------------------------------------------
def plan_submit(
    raws: Sequence[str], *, seen: bool, batch_id: str | None, due_at: float | None, tally: Tally
) -> Step[int]:
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


def plan_promote(due: Sequence[str]) -> Step[int]:
    """PROMOTE: the due tasks (in due order) from the delayed set to the back of the queue."""
    return Step(ops=[(PROMOTE_DUE, list(due))] if due else [], result=len(due))


def plan_cancel(raw: str, queued: bool, tally: Tally) -> Step[bool]:
    """CANCEL: a task still queued is withdrawn and counted in total_cancelled."""
    if not queued:
        return Step(result=False)
    tally.add(keys.TOTAL_CANCELLED)
    return Step(ops=[(WITHDRAW, raw)], result=True, counters=tally)
