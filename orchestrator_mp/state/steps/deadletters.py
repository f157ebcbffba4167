"""The dead-letter queue by hand: send entries back to the queue as fresh tasks, or
discard them; each is one step, counted (total_dlq_retried, total_dlq_purged)."""
from __future__ import annotations

from collections import Counter
from typing import Any, Sequence

from ... import keys, wire
from ..base import requeueable_task
from .lua import Lanes
from .ops import ENQUEUE, UNLETTER, UNLETTER_ALL, Op, Step, Tally
from .release import present

# Send dead letters back to the queue as fresh submissions (by hand, after a fix).
# A keyed task re-enters its lane (behind a busy lane's task, or as its owner).
# KEYS: 1 dead-letter list, 2 queue, 3 total_work_created, 4 total_dlq_retried,
#       5 lane-waiting gauge, 6.. lane (list, owner) pairs
# ARGV: triples of (the exact dead-letter entry, the task to queue again, lane number or 0)
# Returns: how many were sent back (entries no longer in the list are skipped)
DLQ_RETRY = """
local moved = 0
for i = 1, #ARGV, 3 do
  if redis.call('LREM', KEYS[1], 1, ARGV[i]) == 1 then
    local lane = tonumber(ARGV[i + 2])
    if lane == 0 or redis.call('SET', KEYS[5 + 2 * lane], 1, 'NX') then
      redis.call('LPUSH', KEYS[2], ARGV[i + 1])
    else
      redis.call('RPUSH', KEYS[4 + 2 * lane], ARGV[i + 1])
      redis.call('INCR', KEYS[5])
    end
    moved = moved + 1
  end
end
if moved > 0 then
  redis.call('INCRBY', KEYS[3], moved)
  redis.call('INCRBY', KEYS[4], moved)
end
return moved
"""

# Discard dead letters: the named entries, or all of them when none are named.
# KEYS: 1 dead-letter list, 2 total_dlq_purged
# ARGV: the exact entries to remove (none: everything)
# Returns: how many were removed
DLQ_PURGE = """
local removed = 0
if #ARGV == 0 then
  removed = redis.call('LLEN', KEYS[1])
  redis.call('DEL', KEYS[1])
else
  for i = 1, #ARGV do removed = removed + redis.call('LREM', KEYS[1], 1, ARGV[i]) end
end
if removed > 0 then redis.call('INCRBY', KEYS[2], removed) end
return removed
"""


# -- KEYS and ARGV ------------------------------------------------------------------------------
def retry_pairs(entries: Sequence[dict[str, Any]]) -> list[tuple[str, str]]:
    """DLQ_RETRY's arguments: (the stored dead-letter entry, the fresh task to queue)."""
    pairs = []
    for entry in entries:
        fresh = requeueable_task(entry)
        if fresh is not None:
            pairs.append((entry["raw"], fresh))
    return pairs


def retry_call(space: keys.KeySpace, pairs: Sequence[tuple[str, str]]) -> tuple[list[str], list[object]]:
    """DLQ_RETRY's KEYS and ARGV; a keyed task re-enters its lane."""
    args: list[object] = []
    lanes = Lanes(space)
    for entry_raw, fresh in pairs:
        partition_key = wire.partition_key_of(fresh)
        args.extend((entry_raw, fresh, lanes.number(partition_key) if partition_key else 0))
    keys_ = [space.DEAD_LETTER, space.QUEUE, space.TOTAL_WORK_CREATED, space.TOTAL_DLQ_RETRIED, space.LANE_WAITING,
             *lanes.keys]
    return keys_, args


def purge_call(space: keys.KeySpace, raws: Sequence[str]) -> tuple[list[str], list[object]]:
    return [space.DEAD_LETTER, space.TOTAL_DLQ_PURGED], list(raws)


# -- the Python twins -----------------------------------------------------------------------------
def plan_dlq_retry(stored: Sequence[str], pairs: Sequence[tuple[str, str]], tally: Tally) -> Step[int]:
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


def plan_dlq_purge(stored: Sequence[str], entries: Sequence[str] | None, tally: Tally) -> Step[int]:
    """DLQ_PURGE: the named entries (None: all of them) removed, counted in total_dlq_purged."""
    ops: list[Op]
    if entries is None:
        removed, ops = len(stored), [(UNLETTER_ALL,)]
    else:
        found = present(stored, entries)
        removed, ops = len(found), [(UNLETTER, entry) for entry in found]
    if removed:
        tally.add(keys.TOTAL_DLQ_PURGED, removed)
    return Step(ops=ops if removed else [], result=removed, counters=tally)
