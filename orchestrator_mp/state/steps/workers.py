"""A worker's own steps: register, heartbeat, publish state or a started task, deregister.

Each worker writes only its own partition (``worker:{w}:*``); these steps open it
(a new epoch and a lease), renew its lease, change fields of its state hash with a
version bump (optimistic concurrency) and fencing, and close it. A takeover
(:mod:`.reclaim`) is the only other writer of a partition.
"""
from __future__ import annotations

from ... import keys
from ...config import MAX_STATE_FIELDS
from ...exceptions import ConfigurationError, Fenced
from .lua import SERVER_NOW
from .ops import (
    LEASE,
    MEMBERSHIP,
    STREAM,
    Step,
    bump,
    encode_value,
    owns,
    refused,
    state_event,
)

RESERVED_FIELDS = frozenset({"version", "epoch"})

# Register a worker as the owner of a new partition, holding its first lease.
# KEYS: 1 state hash, 2 active_workers, 3 known_workers, 4 stream:worker_events, 5 events:stream,
#       6 lease key
# ARGV: 1 worker id, 2 pid, 3 host, 4 events maxlen, 5 lease ms
# Returns: {epoch, version}
REGISTER = SERVER_NOW + """
local now = server_now()
local epoch = redis.call('HINCRBY', KEYS[1], 'epoch', 1)
redis.call('SET', KEYS[6], epoch, 'PX', ARGV[5])
local version = redis.call('HINCRBY', KEYS[1], 'version', 1)
redis.call('HSET', KEYS[1], 'status', 'idle', 'current_task', '', 'pid', ARGV[2], 'host', ARGV[3],
           'started_at', now, 'last_activity', now)
redis.call('SADD', KEYS[2], ARGV[1])
redis.call('SADD', KEYS[3], ARGV[1])
redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[4], '*', 'event', 'registered', 'worker', ARGV[1],
           'pid', ARGV[2], 'host', ARGV[3], 'epoch', epoch)
redis.call('XADD', KEYS[5], 'MAXLEN', '~', ARGV[4], '*', 'event', 'state', 'worker', ARGV[1],
           'status', 'idle', 'version', version)
return {epoch, version}
"""

# Deregister a worker at a clean shutdown.
# KEYS: 1 state hash, 2 active_workers, 3 stream:worker_events, 4 events:stream, 5 lease key
# ARGV: 1 worker id, 2 epoch, 3 events maxlen
# Returns: the new version, or -1 when fenced
DEREGISTER = SERVER_NOW + """
if redis.call('HGET', KEYS[1], 'epoch') ~= ARGV[2] then return -1 end
redis.call('DEL', KEYS[5])
local version = redis.call('HINCRBY', KEYS[1], 'version', 1)
redis.call('HSET', KEYS[1], 'status', 'stopped', 'current_task', '', 'last_activity', server_now())
redis.call('SREM', KEYS[2], ARGV[1])
redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[3], '*', 'event', 'deregistered', 'worker', ARGV[1],
           'epoch', ARGV[2])
redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[3], '*', 'event', 'state', 'worker', ARGV[1],
           'status', 'stopped', 'version', version)
return version
"""

# Set fields of a worker's state hash and bump its version, optionally checking
# the expected version (optimistic concurrency) and the epoch (fencing).
# KEYS: 1 state hash, 2 events:stream, 3 total_fenced
# ARGV: 1 worker id, 2 expected version or '', 3 epoch or '', 4 events maxlen,
#       5.. field, value pairs
# Returns: the new version; 0 when the version was stale; -1 when fenced
UPDATE_STATE = f"""
local MAX_FIELDS = {MAX_STATE_FIELDS}
""" + """
if ARGV[3] ~= '' and redis.call('HGET', KEYS[1], 'epoch') ~= ARGV[3] then
  redis.call('INCR', KEYS[3])
  return -1
end
if ARGV[2] ~= '' then
  local current = redis.call('HGET', KEYS[1], 'version') or '0'
  if current ~= ARGV[2] then return 0 end
end
if #ARGV < 6 or #ARGV > 4 + 2 * MAX_FIELDS or (#ARGV - 4) % 2 ~= 0 then
  return redis.error_reply('ERR a state update takes 1..' .. MAX_FIELDS .. ' field, value pairs')
end
local pairs_ = {}
for i = 5, #ARGV do pairs_[#pairs_ + 1] = ARGV[i] end
redis.call('HSET', KEYS[1], unpack(pairs_))
local version = redis.call('HINCRBY', KEYS[1], 'version', 1)
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[4], '*', 'event', 'state', 'worker', ARGV[1],
           'version', version, unpack(pairs_))
return version
"""

# Publish the task a worker starts under a time limit, with its deadline on the server's
# clock (the parent enforces it with RECLAIM, which compares on the same clock).
# KEYS: 1 state hash, 2 events:stream, 3 total_fenced
# ARGV: 1 worker id, 2 epoch, 3 task id, 4 time limit in seconds, 5 events maxlen
# Returns: the deadline (epoch seconds, as a string), or -1 when fenced
START_TASK = SERVER_NOW + """
if redis.call('HGET', KEYS[1], 'epoch') ~= ARGV[2] then
  redis.call('INCR', KEYS[3])
  return -1
end
local deadline = string.format('%.6f', server_now() + tonumber(ARGV[4]))
redis.call('HSET', KEYS[1], 'current_task', ARGV[3], 'deadline', deadline)
local version = redis.call('HINCRBY', KEYS[1], 'version', 1)
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[5], '*', 'event', 'state', 'worker', ARGV[1],
           'version', version, 'current_task', ARGV[3], 'deadline', deadline)
return deadline
"""

# Renew a worker's lease (from its heartbeat thread, which a long task cannot block).
# Not a state change: no version bump and no event, only last_activity.
# A full server (maxmemory, noeviction) must not cost a live worker its lease (issue 13):
# Redis refuses a script only at its first write, and only if that command may grow
# memory (SET, HSET: yes; PEXPIRE, DEL, LREM, LTRIM: no). PEXPIRE comes first, so the
# renewal, which grows nothing, goes through while the server is full.
# KEYS: 1 state hash, 2 lease key, 3 total_fenced
# ARGV: 1 epoch, 2 lease ms
# Returns: 1, or -1 when fenced
HEARTBEAT = SERVER_NOW + """
if redis.call('HGET', KEYS[1], 'epoch') ~= ARGV[1] then
  redis.call('INCR', KEYS[3])
  return -1
end
if redis.call('PEXPIRE', KEYS[2], ARGV[2]) == 0 then
  redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[2])
end
redis.call('HSET', KEYS[1], 'last_activity', server_now())
return 1
"""


# -- KEYS and ARGV ------------------------------------------------------------------------------
def register_call(space: keys.KeySpace, worker_id: str, pid: int, host: str, events_maxlen: int,
                  lease_ms: int) -> tuple[list[str], list[object]]:
    keys_ = [space.worker_state_key(worker_id), space.ACTIVE_WORKERS, space.KNOWN_WORKERS, space.WORKER_EVENTS,
             space.EVENTS, space.worker_lease_key(worker_id)]
    return keys_, [worker_id, pid, host, events_maxlen, lease_ms]


def deregister_call(space: keys.KeySpace, worker_id: str, epoch: int, events_maxlen: int) -> tuple[list[str], list[object]]:
    keys_ = [space.worker_state_key(worker_id), space.ACTIVE_WORKERS, space.WORKER_EVENTS, space.EVENTS,
             space.worker_lease_key(worker_id)]
    return keys_, [worker_id, epoch, events_maxlen]


def heartbeat_call(space: keys.KeySpace, worker_id: str, epoch: int, lease_ms: int) -> tuple[list[str], list[object]]:
    return [space.worker_state_key(worker_id), space.worker_lease_key(worker_id), space.TOTAL_FENCED], [epoch, lease_ms]


def update_call(space: keys.KeySpace, worker_id: str, fields: dict[str, str], expected_version: int | None,
                epoch: int | None, events_maxlen: int) -> tuple[list[str], list[object]]:
    flat: list[object] = []
    for field, value in fields.items():
        flat.extend((field, value))
    args = [worker_id, "" if expected_version is None else expected_version, "" if epoch is None else epoch,
            events_maxlen, *flat]
    return [space.worker_state_key(worker_id), space.EVENTS, space.TOTAL_FENCED], args


def start_task_call(space: keys.KeySpace, worker_id: str, epoch: int, task_id: str, time_limit_s: float,
                    events_maxlen: int) -> tuple[list[str], list[object]]:
    keys_ = [space.worker_state_key(worker_id), space.EVENTS, space.TOTAL_FENCED]
    return keys_, [worker_id, epoch, task_id, float(time_limit_s), events_maxlen]


def checked_fields(mapping: dict[str, object]) -> dict[str, str]:
    """The fields of an update, encoded; refuses an empty update and reserved fields (UPDATE_STATE)."""
    if not mapping:
        raise ConfigurationError("update_worker_state needs at least one field")
    if len(mapping) > MAX_STATE_FIELDS:
        message = f"update_worker_state sets at most {MAX_STATE_FIELDS} fields at once, got {len(mapping)}"
        raise ConfigurationError(message)
    reserved = RESERVED_FIELDS.intersection(mapping)
    if reserved:
        raise ConfigurationError(f"fields {sorted(reserved)} are managed by the state manager")
    return {str(field): encode_value(value) for field, value in mapping.items()}


# -- the Python twins -----------------------------------------------------------------------------
# -- planners, one per script --------------------------------------------------------------------
def plan_register(worker_id: str, state: dict[str, str], *, pid: int, host: str, now: float) -> Step[int]:
    """REGISTER: a new epoch and its first lease; idle; into active and known workers."""
    epoch = int(state.get("epoch", 0)) + 1
    at = encode_value(now)
    new, version = bump(
        state, status="idle", current_task="", pid=encode_value(pid), host=host, started_at=at, last_activity=at
    )
    new["epoch"] = str(epoch)
    ops = [
        (LEASE, epoch),
        (MEMBERSHIP, True),
        (STREAM, keys.WORKER_EVENTS, {"event": "registered", "worker": worker_id, "pid": pid, "host": host,
                                      "epoch": epoch}),
        state_event(worker_id, version, status="idle"),
    ]
    return Step(worker_id, ops, new, result=epoch)


def plan_deregister(worker_id: str, state: dict[str, str], epoch: int, now: float) -> Step[None]:
    """DEREGISTER: stopped, lease dropped, out of active_workers (a fenced call counts nothing)."""
    if not owns(state, epoch):
        return Step(worker_id, error=Fenced(worker_id, epoch))
    new, version = bump(state, status="stopped", current_task="", last_activity=encode_value(now))
    ops = [
        (LEASE, None),
        (MEMBERSHIP, False),
        (STREAM, keys.WORKER_EVENTS, {"event": "deregistered", "worker": worker_id, "epoch": epoch}),
        state_event(worker_id, version, status="stopped"),
    ]
    return Step(worker_id, ops, new)


def plan_start_task(worker_id: str, state: dict[str, str], epoch: int, task_id: str, deadline: float) -> Step[float]:
    """START_TASK: current_task and its deadline published, version bumped, one event."""
    if not owns(state, epoch):
        return refused(worker_id, epoch, 1)
    at = f"{deadline:.6f}"
    new, version = bump(state, current_task=task_id, deadline=at)
    event = {"event": "state", "worker": worker_id, "version": version, "current_task": task_id, "deadline": at}
    return Step(worker_id, [(STREAM, keys.EVENTS, event)], new, result=float(at))


def plan_heartbeat(worker_id: str, state: dict[str, str], epoch: int, now: float) -> Step[None]:
    """HEARTBEAT: renew the lease and last_activity; no version, no event."""
    if not owns(state, epoch):
        return refused(worker_id, epoch, 1)
    return Step(worker_id, [(LEASE, epoch)], {**state, "last_activity": encode_value(now)})


def plan_update(
    worker_id: str, state: dict[str, str], fields: dict[str, str], expected_version: int | None, epoch: int | None
) -> Step[int]:
    """UPDATE_STATE: fields set, version bumped, one event; result 0 for a stale version."""
    if epoch is not None and not owns(state, epoch):
        return refused(worker_id, epoch, 1)
    if expected_version is not None and state.get("version", "0") != str(expected_version):
        return Step(worker_id, result=0)
    new, version = bump(state, **fields)
    event = {"event": "state", "worker": worker_id, "version": version, **fields}
    return Step(worker_id, [(STREAM, keys.EVENTS, event)], new, result=version)
