"""Lua shared by several steps: chunked variadic writes, the server's clock, lanes.

Every script of the lock-free state is a module constant of its step's module, with
a header giving its KEYS, ARGV and return value; each is registered once per client
(redis-py ``register_script``) and called by SHA, reloaded after a server restart.
Every key a script touches arrives through KEYS (never built inside Lua), so each call
stays in one cluster slot.

Fencing: each worker's state hash holds an ``epoch``. Scripts that write on a worker's
behalf take the epoch the worker registered with and refuse (returning -1) when the
hash holds another one: the partition was taken over, the caller is a zombie, and its
writes must not land.

A full server (maxmemory, policy noeviction; issue 13): Redis refuses a script at its
first write if that command may grow memory (SET, HSET, HINCRBY, INCR, LPUSH, XADD,
ZADD...), so nothing of a refused script has landed; a script whose first write cannot
(LTRIM, LREM, ZREM, PEXPIRE, DEL) runs to its end. So at maxmemory SUBMIT, REGISTER and
UPDATE_STATE are refused whole (and any fenced call, whose first write is its INCR of
total_fenced), while CLAIM, SETTLE, RELEASE, CANCEL, PROMOTE, DEREGISTER, DLQ_RETRY,
DLQ_PURGE, HEARTBEAT and RECLAIM go through: they move, refresh or remove what exists
(the last two are ordered so). One CLAIM is refused: the one completing a blocking move
that finds nothing more to take (its first write is the state hash); the worker then
hands the moved task back before its next claim. BLMOVE itself may grow memory and is
refused. Checked step by step in tests/faults/test_memory.py.
"""
from __future__ import annotations

from ... import keys, wire
from ...config import MAX_BATCH_SIZE

# The raw task's layout as the scripts read it, from :mod:`orchestrator_mp.wire` (its
# one owner; tests/integration/test_wire.py checks the Lua and Python readings agree).
WIRE = f"""
local CRASH_COUNT, CRASHES_AND_REST = '{wire.LUA_CRASH_COUNT}', '{wire.LUA_CRASHES}'
local TASK_ID, TASK_NAME, CRASHES_PREFIX = '{wire.LUA_ID}', '{wire.LUA_NAME}', '{wire.CRASHES_PREFIX}'
"""

# Redis's Lua cannot unpack more than about 8,000 values (its C stack), and a script
# that fails after its first write keeps that write (no rollback). So every variadic
# command over a list of unbounded length pushes in chunks of 1,000 (STYLE rule 16),
# and counts a script cannot handle are refused before anything is written.
CHUNKED = f"""
local MAX_BATCH = {MAX_BATCH_SIZE}
local function chunked(command, key, values)
  for first = 1, #values, 1000 do
    redis.call(command, key, unpack(values, first, math.min(first + 999, #values)))
  end
end
"""

# One clock (STYLE rule 17): every time a script writes or compares (due times of
# delayed tasks, deadlines, last activity) is the server's, never a caller's, so hosts
# and processes with skewed clocks still agree. Seconds since the epoch, as a float.
SERVER_NOW = """
local function server_now()
  local clock = redis.call('TIME')
  return tonumber(clock[1]) + tonumber(clock[2]) / 1000000
end
"""

# Partition-key lanes: at most one task of a key is ever queued, in flight or waiting
# for a retry (its lane's owner flag is set); the key's later tasks wait, in order,
# in its lane list. The step that finally settles (or cancels, or dead-letters) the
# key's task releases the lane: the next waiting task goes to the back of the queue.
# Lane keys arrive through KEYS like every other key.
RELEASE_LANE_FUNCTION = """
local function release_lane(list, owner, queue, waiting)
  local next_task = redis.call('LPOP', list)
  if next_task then
    redis.call('LPUSH', queue, next_task)
    redis.call('DECR', waiting)
  else
    redis.call('DEL', owner)
  end
end
"""


class Lanes:
    """Numbers the lanes one script call touches; their (list, owner) key pairs go into
    KEYS in that order, after the script's own keys (``release_lane`` takes them)."""

    def __init__(self, space: keys.KeySpace) -> None:
        self.space = space
        self.keys: list[str] = []
        self._numbers: dict[str, int] = {}

    def number(self, partition_key: str) -> int:
        if partition_key not in self._numbers:
            self._numbers[partition_key] = len(self._numbers) + 1
            self.keys.extend((self.space.lane_key(partition_key), self.space.lane_owner_key(partition_key)))
        return self._numbers[partition_key]
