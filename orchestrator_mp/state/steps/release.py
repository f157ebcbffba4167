"""Handing claimed, unstarted tasks back to the front of the queue (a warm stop, or a
worker resyncing after a lost reply): the named tasks still in its in-flight list go
back, in one fenced step."""
from __future__ import annotations

from collections import Counter
from typing import Iterable, Sequence

from ... import keys
from .ops import REQUEUE, UNCLAIM, Op, Step, owns, refused

# Hand claimed-but-unstarted tasks back to the front of the queue (warm stop).
# KEYS: 1 state hash, 2 in-flight list, 3 queue, 4 total_fenced
# ARGV: 1 epoch, 2.. raw tasks
# Returns: how many were handed back, or -1 when fenced
RELEASE = """
if redis.call('HGET', KEYS[1], 'epoch') ~= ARGV[1] then
  redis.call('INCRBY', KEYS[4], math.max(1, #ARGV - 1))
  return -1
end
local released = 0
for i = 2, #ARGV do
  if redis.call('LREM', KEYS[2], -1, ARGV[i]) == 1 then
    redis.call('RPUSH', KEYS[3], ARGV[i])
    released = released + 1
  end
end
return released
"""


def release_call(space: keys.KeySpace, worker_id: str, epoch: int, raw_tasks: Sequence[str]) -> tuple[list[str], list[object]]:
    keys_ = [space.worker_state_key(worker_id), space.worker_inflight_key(worker_id), space.QUEUE, space.TOTAL_FENCED]
    return keys_, [epoch, *raw_tasks]


# -- the Python twin ------------------------------------------------------------------------------
def present(stored: Iterable[str], wanted: Sequence[str]) -> list[str]:
    """The members of ``wanted`` found in ``stored``, in ``wanted``'s order; each stored
    occurrence matches once (what a series of ``LREM key 1 value`` removes)."""
    remaining = Counter(stored)
    found = []
    for value in wanted:
        if remaining[value] > 0:
            remaining[value] -= 1
            found.append(value)
    return found


def plan_release(worker_id: str, epoch: int, state: dict[str, str], inflight: Sequence[str],
                 raws: Sequence[str]) -> Step[int]:
    """RELEASE: the named tasks still in flight go back to the front of the queue."""
    if not owns(state, epoch):
        return refused(worker_id, epoch, max(1, len(raws)))
    back = present(inflight, raws)
    ops: list[Op] = []
    for raw in back:
        ops.extend(((UNCLAIM, raw), (REQUEUE, raw)))
    return Step(worker_id, ops, result=len(back))
