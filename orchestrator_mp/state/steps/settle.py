"""Settling: record a batch of finished tasks in one step, each counted exactly once.

For each outcome still in the worker's in-flight list: remove it, count it (worker and
total), append it to its stream, and, for a failure, schedule its retry or dead-letter
it; store the final outcome for a submitter who waits for it; release a keyed task's
lane. An outcome no longer in flight (its partition was taken over and the task ran
again elsewhere) counts only as a duplicate. A fenced worker's settle changes nothing.
"""
from __future__ import annotations

import time
from collections import Counter
from typing import Sequence

from ... import keys, wire
from ...models import BAD_PAYLOAD, Outcome
from ..base import SettleResult, dead_letter_entry
from .lua import RELEASE_LANE_FUNCTION, SERVER_NOW, Lanes
from .ops import (
    DEAD_LETTER,
    DELAY,
    STREAM,
    UNCLAIM,
    Op,
    Step,
    Tally,
    bump,
    encode_value,
    error_event,
    ms,
    owns,
    refused,
    state_event,
    stored_ops,
)

# Settle a batch: for each finished task remove it from the in-flight list and,
# only if it was still there, count it and append it to its stream; then mark the
# worker idle. Completions and failures of one batch are one atomic step. A failure
# either goes to the delayed set to run again (retry raw + due time) or to the
# dead-letter list (entry); entries that were never tasks count as foreign. A
# final outcome whose submitter wants it is stored under its result key (a
# one-element list with a TTL) in the same step, so the stored result is always
# the counted one. A final outcome of a keyed task releases its lane. Counters move
# once per batch (INCRBY); each stream entry still carries its own running total n,
# consecutive in stream order.
# The batch travels as two JSON arrays (one argument each), not as one argument per
# field: encoding thousands of small arguments was the worker's main cost.
# KEYS: 1 state hash, 2 in-flight list, 3 worker completed, 4 worker errors,
#       5 total_work_completed, 6 total_errors, 7 total_dead_lettered, 8 total_duplicates,
#       9 total_fenced, 10 work_completions, 11 work_errors, 12 dead-letter list, 13 events:stream,
#       14 delayed sorted set, 15 total_retried, 16 total_foreign, 17 queue, 18 lane-waiting gauge,
#       19.. R result keys, then lane (list, owner) pairs
# ARGV: 1 worker id, 2 epoch, 3 completions maxlen, 4 events maxlen,
#       5 number of completions C, 6 number of failures F, 7 result ttl ms,
#       8 completions: JSON [[raw, task id, name, wait_ms, run_ms, result number, stored result,
#                             lane number], ...]
#       9 failures: JSON [[raw, task id, name, category, message, dead-letter entry,
#                          retry raw, retry delay (seconds from now, server clock), result number,
#                          stored result, lane number], ...]
#       10 R, the number of result keys
#       (retry raw '' means dead-letter; result or lane number 0 means none)
# Returns: {completed, failed, duplicates}, or {-1, C + F} when fenced
SETTLE = RELEASE_LANE_FUNCTION + SERVER_NOW + """
local n_ok, n_failed = tonumber(ARGV[5]), tonumber(ARGV[6])
if redis.call('HGET', KEYS[1], 'epoch') ~= ARGV[2] then
  redis.call('INCRBY', KEYS[9], n_ok + n_failed)
  return {-1, n_ok + n_failed}
end
local now = server_now()
local lanes_at = 18 + tonumber(ARGV[10])
local function store(index, value)
  if index ~= 0 then
    local key = KEYS[18 + index]
    redis.call('DEL', key)
    redis.call('RPUSH', key, value)
    redis.call('PEXPIRE', key, ARGV[7])
  end
end
local function release(lane)
  if lane ~= 0 then release_lane(KEYS[lanes_at + 2 * lane - 1], KEYS[lanes_at + 2 * lane], KEYS[17], KEYS[18]) end
end
local function still_in_flight(batch)
  local counted = {}
  for _, item in ipairs(batch) do
    if redis.call('LREM', KEYS[2], -1, item[1]) == 1 then counted[#counted + 1] = item end
  end
  return counted
end
-- Decode and check everything before the first write (no rollback after it).
local done_in = n_ok > 0 and cjson.decode(ARGV[8]) or {}
local failures_in = n_failed > 0 and cjson.decode(ARGV[9]) or {}
for _, item in ipairs(failures_in) do
  if item[7] ~= '' and not tonumber(item[8]) then
    return redis.error_reply('ERR retry delay is not a number: ' .. tostring(item[8]))
  end
end
local done = still_in_flight(done_in)
local failures = still_in_flight(failures_in)
local duplicates = n_ok + n_failed - #done - #failures
if #done > 0 then
  redis.call('INCRBY', KEYS[3], #done)
  local n = redis.call('INCRBY', KEYS[5], #done) - #done
  for k, item in ipairs(done) do
    redis.call('XADD', KEYS[10], 'MAXLEN', '~', ARGV[3], '*', 'n', n + k, 'task_id', item[2],
               'name', item[3], 'worker', ARGV[1], 'wait_ms', item[4], 'run_ms', item[5])
    store(item[6], item[7])
    release(item[8])
  end
end
if #failures > 0 then
  redis.call('INCRBY', KEYS[4], #failures)
  local n = redis.call('INCRBY', KEYS[6], #failures) - #failures
  local retried, dead, foreign = 0, 0, 0
  for k, item in ipairs(failures) do
    local retry = item[7] ~= ''
    redis.call('XADD', KEYS[11], 'MAXLEN', '~', ARGV[3], '*', 'n', n + k, 'task_id', item[2],
               'name', item[3], 'worker', ARGV[1], 'category', item[4], 'message', item[5],
               'retry', retry and 1 or 0)
    if retry then
      redis.call('ZADD', KEYS[14], now + tonumber(item[8]), item[7])
      retried = retried + 1
    else
      redis.call('LPUSH', KEYS[12], item[6])
      dead = dead + 1
      store(item[9], item[10])
      release(item[11])
    end
    if item[4] == 'bad_payload' then foreign = foreign + 1 end
  end
  if retried > 0 then redis.call('INCRBY', KEYS[15], retried) end
  if dead > 0 then redis.call('INCRBY', KEYS[7], dead) end
  if foreign > 0 then redis.call('INCRBY', KEYS[16], foreign) end
end
if duplicates > 0 then redis.call('INCRBY', KEYS[8], duplicates) end
local version = redis.call('HINCRBY', KEYS[1], 'version', 1)
redis.call('HSET', KEYS[1], 'status', 'idle', 'current_task', '', 'batch', 0, 'deadline', '',
           'last_activity', now)
redis.call('XADD', KEYS[13], 'MAXLEN', '~', ARGV[4], '*', 'event', 'state', 'worker', ARGV[1],
           'status', 'idle', 'completed', #done, 'failed', #failures, 'version', version)
return {#done, #failures, duplicates}
"""


# -- KEYS and ARGV ------------------------------------------------------------------------------
def settle_call(space: keys.KeySpace, worker_id: str, epoch: int, outcomes: Sequence[Outcome], *,
                completions_maxlen: int, events_maxlen: int, result_ttl_ms: int) -> tuple[list[str], list[object]]:
    """SETTLE's KEYS and ARGV: the batch as two JSON arrays (one argument each: encoding
    thousands of small arguments was the worker's main cost), the result keys and lanes
    of the final outcomes after the script's own keys."""
    now = time.time()  # only for the records people read (stored results, dead letters)
    result_keys: list[str] = []
    lanes = Lanes(space)

    def result_slot(outcome: Outcome, final: bool) -> tuple[int, str]:
        if not (final and outcome.want_result and outcome.task_id):
            return 0, ""
        result_keys.append(space.result_key(outcome.task_id))
        return len(result_keys), outcome.stored_result(worker_id, now)

    def lane_slot(outcome: Outcome, final: bool) -> int:
        partition_key = wire.partition_key_of(outcome.raw) if final else None
        return lanes.number(partition_key) if partition_key else 0

    done, failed = [], []
    for outcome in outcomes:
        if outcome.ok:
            index, stored = result_slot(outcome, True)
            done.append((outcome.raw, outcome.task_id, outcome.name, ms(outcome.wait_ms), ms(outcome.run_ms), index,
                         stored, lane_slot(outcome, True)))
        else:
            final = not outcome.retry_raw
            index, stored = result_slot(outcome, final)
            failed.append((outcome.raw, outcome.task_id, outcome.name, outcome.category, outcome.message,
                           dead_letter_entry(outcome, worker_id) if final else "", outcome.retry_raw,
                           repr(outcome.retry_in_s), index, stored, lane_slot(outcome, final)))
    keys_ = [
        space.worker_state_key(worker_id),
        space.worker_inflight_key(worker_id),
        space.worker_completed_key(worker_id),
        space.worker_errors_key(worker_id),
        space.TOTAL_WORK_COMPLETED,
        space.TOTAL_ERRORS,
        space.TOTAL_DEAD_LETTERED,
        space.TOTAL_DUPLICATES,
        space.TOTAL_FENCED,
        space.WORK_COMPLETIONS,
        space.WORK_ERRORS,
        space.DEAD_LETTER,
        space.EVENTS,
        space.DELAYED,
        space.TOTAL_RETRIED,
        space.TOTAL_FOREIGN,
        space.QUEUE,
        space.LANE_WAITING,
        *result_keys,
        *lanes.keys,
    ]
    args: list[object] = [
        worker_id, epoch, completions_maxlen, events_maxlen, len(done), len(failed), result_ttl_ms,
        wire.dumps(done) if done else "[]", wire.dumps(failed) if failed else "[]", len(result_keys),
    ]
    return keys_, args


# -- the Python twin ------------------------------------------------------------------------------
def split_settled(inflight: Sequence[str], outcomes: Sequence[Outcome]) -> tuple[list[Outcome], list[Outcome], int]:
    """SETTLE's bookkeeping: which outcomes are still in flight (counted) and how many
    are duplicates. Returns ``(completed, failed, duplicates)``; completions are
    matched first, then failures, each removing one occurrence."""
    remaining = Counter(inflight)
    completed: list[Outcome] = []
    failed: list[Outcome] = []
    duplicates = 0
    for outcome in [o for o in outcomes if o.ok] + [o for o in outcomes if not o.ok]:
        if remaining[outcome.raw] > 0:
            remaining[outcome.raw] -= 1
            (completed if outcome.ok else failed).append(outcome)
        else:
            duplicates += 1
    return completed, failed, duplicates


def plan_settle(
    worker_id: str,
    epoch: int,
    state: dict[str, str],
    inflight: Sequence[str],
    outcomes: Sequence[Outcome],
    tally: Tally,
    now: float,
) -> Step[SettleResult]:
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
        ops.extend(stored_ops(outcome, worker_id, now))
    for outcome in failed:
        ops.append((UNCLAIM, outcome.raw))
        retry = bool(outcome.retry_raw)
        ops.append(error_event(tally, worker_id, outcome.task_id, outcome.name, outcome.category, outcome.message, retry))
        if retry:
            ops.append((DELAY, now + outcome.retry_in_s, outcome.retry_raw))
            tally.add(keys.TOTAL_RETRIED)
        else:
            ops.append((DEAD_LETTER, dead_letter_entry(outcome, worker_id, now)))
            tally.add(keys.TOTAL_DEAD_LETTERED)
            ops.extend(stored_ops(outcome, worker_id, now))
        if outcome.category == BAD_PAYLOAD:
            tally.add(keys.TOTAL_FOREIGN)
    if duplicates:
        tally.add(keys.TOTAL_DUPLICATES, duplicates)
    new, version = bump(
        state, status="idle", current_task="", batch="0", deadline="", last_activity=encode_value(now)
    )
    ops.append(state_event(worker_id, version, status="idle", completed=len(done), failed=len(failed)))
    result = SettleResult(len(done), len(failed), duplicates)
    return Step(worker_id, ops, new, result=result, counters=tally)


def settle_counters(worker_id: str) -> list[str]:
    """Every counter :func:`plan_settle` may change (a backend reads them first)."""
    return [keys.worker_completed_key(worker_id), keys.worker_errors_key(worker_id), keys.TOTAL_WORK_COMPLETED,
            keys.TOTAL_ERRORS, keys.TOTAL_DEAD_LETTERED, keys.TOTAL_DUPLICATES, keys.TOTAL_RETRIED,
            keys.TOTAL_FOREIGN]
