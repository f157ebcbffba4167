"""Claiming: move a batch from the queue into the worker's in-flight list, in one step.

A task is always in exactly one place: the queue, one in-flight list, the delayed set,
a lane or a cap's waiting list, or settled. A claim takes a fair share of the queue
(so a shallow queue is spread across workers), oldest first; a task that crashed a
worker before travels alone; due delayed tasks are promoted first (every claiming
worker is also the scheduler). A blocking claim (an idle worker on an empty queue)
moves the first task with BLMOVE and completes with this step.
"""
from __future__ import annotations

import math
from typing import Sequence

from ... import keys, wire
from ...config import MAX_BATCH_SIZE
from ...exceptions import ConfigurationError
from .lua import CHUNKED, SERVER_NOW, WIRE
from .ops import (
    PROMOTE_DUE,
    TAKE,
    Op,
    Step,
    bump,
    encode_value,
    owns,
    refused,
    state_event,
)

# Claim up to N tasks: move them from the queue into the worker's in-flight list
# in one step, so a task is always in exactly one place. N is the smaller of the
# batch size and a fair share of the queue (depth / divisor, rounded up), so a
# shallow queue is spread across workers instead of drained by the first.
# A task that has crashed a worker before (crash count > 0: a suspect) is always
# claimed alone: a crash while it runs is then charged to it only, never to
# innocent tasks that happened to share its batch.
# Due delayed tasks are promoted first, so every claiming worker is also the
# scheduler: no separate scheduler process can fail.
# Reads first, writes last (issue 13): the candidates are read with LRANGE and only
# then trimmed off the queue and pushed in chunks, so no failure can leave a popped
# task in no list (a single unpack of 8,000 values failed after an RPOP and lost them).
# KEYS: 1 queue, 2 in-flight list, 3 state hash, 4 events:stream, 5 delayed sorted set,
#       6 total_fenced
# ARGV: 1 worker id, 2 epoch, 3 max count, 4 divisor, 5 events maxlen,
#       6 tasks already moved by a blocking claim (counted into the state update)
# A fenced claim that follows a blocking move hands the moved tasks straight back: the
# partition was taken over (its list emptied) while its owner blocked, so whatever is in
# the list now landed after the takeover and belongs to no one (issue 13: it waited for
# the next sweep, or the next start when the takeover happened during a stop).
# Returns: the claimed raw tasks (oldest first), or -1 when fenced
CLAIM = CHUNKED + SERVER_NOW + WIRE + """
if redis.call('HGET', KEYS[3], 'epoch') ~= ARGV[2] then
  redis.call('INCR', KEYS[6])
  if tonumber(ARGV[6]) > 0 then
    while redis.call('LMOVE', KEYS[2], KEYS[1], 'LEFT', 'RIGHT') do end
  end
  return -1
end
local max_count = tonumber(ARGV[3])
if not max_count or max_count < 0 or max_count > MAX_BATCH then
  return redis.error_reply('ERR claim count must be 0..' .. MAX_BATCH .. ', got ' .. tostring(ARGV[3]))
end
local now = server_now()
local due = redis.call('ZRANGEBYSCORE', KEYS[5], '-inf', now, 'LIMIT', 0, 1000)
if #due > 0 then
  chunked('ZREM', KEYS[5], due)
  chunked('LPUSH', KEYS[1], due)
end
local function suspect(raw)
  local crashes = string.match(raw, CRASH_COUNT)
  return crashes ~= nil and crashes ~= '0'
end
local moved = tonumber(ARGV[6])
local claimed = {}
local depth = redis.call('LLEN', KEYS[1])
local want = math.min(max_count, math.ceil(depth / tonumber(ARGV[4])))
if moved > 0 and suspect(redis.call('LINDEX', KEYS[2], 0) or '') then want = 0 end
if want > 0 then
  local tail = redis.call('LRANGE', KEYS[1], -want, -1)
  for i = #tail, 1, -1 do
    local raw = tail[i]
    if suspect(raw) then
      if #claimed == 0 and moved == 0 then claimed[1] = raw end
      break
    end
    claimed[#claimed + 1] = raw
  end
  if #claimed > 0 then
    redis.call('LTRIM', KEYS[1], 0, -(#claimed + 1))
    chunked('LPUSH', KEYS[2], claimed)
  end
end
local total = #claimed + moved
if total == 0 then return claimed end
local first = claimed[1] or redis.call('LINDEX', KEYS[2], -1) or ''
local task_id = string.match(first, TASK_ID) or '?'
local version = redis.call('HINCRBY', KEYS[3], 'version', 1)
redis.call('HSET', KEYS[3], 'status', 'busy', 'current_task', task_id, 'batch', total,
           'last_activity', now)
redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[5], '*', 'event', 'state', 'worker', ARGV[1],
           'status', 'busy', 'current_task', task_id, 'batch', total, 'version', version)
return claimed
"""


# -- KEYS and ARGV ------------------------------------------------------------------------------
def checked_claim_count(max_count: int) -> int:
    """A claim's size, refused when no batch may be that large (CLAIM refuses it too)."""
    if isinstance(max_count, bool) or not isinstance(max_count, int) or not 0 <= max_count <= MAX_BATCH_SIZE:
        message = f"a claim takes 0 to {MAX_BATCH_SIZE:,} tasks (batch_size's bound), got {max_count!r}"
        raise ConfigurationError(message)
    return max_count


def claim_call(space: keys.KeySpace, worker_id: str, epoch: int, max_count: int, divisor: int,
               events_maxlen: int, moved: int) -> tuple[list[str], list[object]]:
    """CLAIM's KEYS and ARGV; ``moved``: tasks a blocking move already put in flight."""
    keys_ = [space.QUEUE, space.worker_inflight_key(worker_id), space.worker_state_key(worker_id), space.EVENTS,
             space.DELAYED, space.TOTAL_FENCED]
    return keys_, [worker_id, epoch, max_count, max(1, divisor), events_maxlen, moved]


# -- the Python twin ------------------------------------------------------------------------------
def fair_share(max_count: int, depth: int, divisor: int) -> int:
    """How many tasks one claim takes (CLAIM): min(batch, ceil(depth / divisor))."""
    return max(0, min(max_count, math.ceil(depth / max(1, divisor))))


def claimable(candidates: Sequence[str]) -> list[str]:
    """What CLAIM keeps of the oldest tasks it took: a suspect travels alone, so the
    claim stops before the first suspect, or is that suspect alone when it comes first."""
    for index, raw in enumerate(candidates):
        if wire.is_suspect(raw):
            return list(candidates[: index or 1])
    return list(candidates)


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
) -> Step[list[str]]:
    """CLAIM: first the ``due`` delayed tasks (in due order) join the back of the queue
    of ``depth`` tasks; then a fair share of it is taken from its oldest end, suspects
    alone. ``oldest`` is the queue's oldest tasks, oldest first: at least ``max_count``
    of them, or all. The result is the claimed tasks, oldest first."""
    if not owns(state, epoch):
        return refused(worker_id, epoch, 1)
    ops: list[Op] = [(PROMOTE_DUE, list(due))] if due else []
    candidates = [*oldest, *due][: fair_share(max_count, depth + len(due), divisor)]
    claimed = claimable(candidates)
    if not claimed:
        return Step(worker_id, ops, result=[])
    task_id = wire.task_id_of(claimed[0], "?")
    batch = len(claimed)
    new, version = bump(
        state, status="busy", current_task=task_id, batch=str(batch), last_activity=encode_value(now)
    )
    ops.append((TAKE, claimed))
    ops.append(state_event(worker_id, version, status="busy", current_task=task_id, batch=batch))
    return Step(worker_id, ops, new, result=claimed)
