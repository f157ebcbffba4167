"""Retiring a finished partition, so a long-lived database stays bounded (issue 13):
its counters fold into the retired sums, its keys and its place in known_workers go."""
from __future__ import annotations

from ... import keys
from .lua import SERVER_NOW

# Retire a finished partition: fold its counters into the retired sums and delete its
# keys, so a long-lived database holds only recent partitions (issue 13: known_workers
# grew with every death, and the sweep and the audit read every one). Only a partition
# that is surely finished goes: not registered, no lease, nothing in flight, no slot
# held, and no activity for the grace period (its state says dead or stopped). A zombie
# of a retired partition is fenced like any other (its epoch is gone).
# KEYS: 1 state hash, 2 in-flight list, 3 worker completed, 4 worker errors, 5 lease key,
#       6 active_workers, 7 known_workers, 8 retired_completed, 9 retired_errors,
#       10 total_retired, 11 worker slots set
# ARGV: 1 worker id, 2 grace in seconds (server clock, since its last activity)
# Returns: 1 if retired, 0 if it stays
RETIRE = SERVER_NOW + """
if redis.call('SISMEMBER', KEYS[6], ARGV[1]) == 1 or redis.call('EXISTS', KEYS[5]) == 1 then return 0 end
if redis.call('LLEN', KEYS[2]) > 0 or redis.call('SCARD', KEYS[11]) > 0 then return 0 end
local state = redis.call('HMGET', KEYS[1], 'status', 'last_activity')
if state[1] and state[1] ~= 'dead' and state[1] ~= 'stopped' then return 0 end
local last = tonumber(state[2]) or 0
if server_now() - last < tonumber(ARGV[2]) then return 0 end
redis.call('INCRBY', KEYS[8], tonumber(redis.call('GET', KEYS[3]) or '0'))
redis.call('INCRBY', KEYS[9], tonumber(redis.call('GET', KEYS[4]) or '0'))
redis.call('INCR', KEYS[10])
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[11])
redis.call('SREM', KEYS[7], ARGV[1])
return 1
"""


def retire_call(space: keys.KeySpace, worker_id: str, grace_s: float) -> tuple[list[str], list[object]]:
    keys_ = [
        space.worker_state_key(worker_id),
        space.worker_inflight_key(worker_id),
        space.worker_completed_key(worker_id),
        space.worker_errors_key(worker_id),
        space.worker_lease_key(worker_id),
        space.ACTIVE_WORKERS,
        space.KNOWN_WORKERS,
        space.RETIRED_COMPLETED,
        space.RETIRED_ERRORS,
        space.TOTAL_RETIRED,
        space.worker_slots_key(worker_id),
    ]
    return keys_, [worker_id, float(grace_s)]
