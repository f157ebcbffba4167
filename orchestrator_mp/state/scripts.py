"""Lua scripts of the lock-free state manager: each is one atomic step.

Every key a script touches arrives through KEYS (never built inside Lua), and the
keys of one call belong to one worker's partition plus the shared queue, counters
and streams. Each script opens with its KEYS, ARGV and return value.

Scripts are registered once per client (redis-py ``register_script``) and called
by SHA; redis-py reloads them transparently after a server restart (NOSCRIPT).

Fencing: each worker's state hash holds an ``epoch``. Scripts that write on a
worker's behalf take the epoch the worker registered with and refuse (returning
-1) when the hash holds another one: the partition was taken over, the caller is a
zombie, and its writes must not land.

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
from ..config import MAX_BATCH_SIZE, MAX_STATE_FIELDS

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
CLAIM = CHUNKED + SERVER_NOW + """
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
  local crashes = string.match(raw, '^{"crashes":(%d+),')
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
local task_id = string.match(first, '"id":"([^"]*)"') or '?'
local version = redis.call('HINCRBY', KEYS[3], 'version', 1)
redis.call('HSET', KEYS[3], 'status', 'busy', 'current_task', task_id, 'batch', total,
           'last_activity', now)
redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[5], '*', 'event', 'state', 'worker', ARGV[1],
           'status', 'busy', 'current_task', task_id, 'batch', total, 'version', version)
return claimed
"""

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
RECLAIM = RELEASE_LANE_FUNCTION + SERVER_NOW + """
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
  local task_id = string.match(raw, '"id":"([^"]*)"') or ''
  local name = string.match(raw, '"name":"([^"]*)"') or ''
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
    local crashes, rest = string.match(raw, '^{"crashes":(%d+),(.*)$')
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
        redis.call('RPUSH', KEYS[3], '{"crashes":' .. count .. ',' .. rest)
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

# Where is a task now? One atomic look at its result, the in-flight lists, the queue
# and the delayed set. Scans the queue: O(queue length), for diagnostics only.
# KEYS: 1 result key, 2 queue, 3 delayed sorted set, 4.. in-flight lists
# ARGV: 1 the substring that identifies the task ('"id":"<id>"')
# Returns: {'result', stored JSON} | {'running', worker key} | {'queued'} | {'delayed'} | {'unknown'}
TASK_STATUS = """
local stored = redis.call('LINDEX', KEYS[1], 0)
if stored then return {'result', stored} end
for k = 4, #KEYS do
  for _, raw in ipairs(redis.call('LRANGE', KEYS[k], 0, -1)) do
    if string.find(raw, ARGV[1], 1, true) then return {'running', KEYS[k]} end
  end
end
local length = redis.call('LLEN', KEYS[2])
for first = 0, length - 1, 1000 do
  for _, raw in ipairs(redis.call('LRANGE', KEYS[2], first, first + 999)) do
    if string.find(raw, ARGV[1], 1, true) then return {'queued'} end
  end
end
local count = redis.call('ZCARD', KEYS[3])
for first = 0, count - 1, 1000 do
  for _, raw in ipairs(redis.call('ZRANGE', KEYS[3], first, first + 999)) do
    if string.find(raw, ARGV[1], 1, true) then return {'delayed'} end
  end
end
return {'unknown'}
"""

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

# Read many keys in one atomic step: the audit's snapshot on a full server, which
# refuses every MULTI (even one of reads) but serves a script that only reads.
# KEYS: the keys to read
# ARGV: the read of each key, in order: GET, LLEN, ZCARD, XLEN, SMEMBERS, or XLAST (a
#       stream's newest entry, as XREVRANGE + - COUNT 1)
# Returns: one reply per key (false, that is nil, for a missing string)
SNAPSHOT = """
local reads = {GET = true, LLEN = true, ZCARD = true, XLEN = true, SMEMBERS = true}
local replies = {}
for i = 1, #KEYS do
  if ARGV[i] == 'XLAST' then
    replies[i] = redis.call('XREVRANGE', KEYS[i], '+', '-', 'COUNT', 1)
  elseif reads[ARGV[i]] then
    replies[i] = redis.call(ARGV[i], KEYS[i])
  else
    return redis.error_reply('ERR SNAPSHOT cannot read with ' .. tostring(ARGV[i]))
  end
end
return replies
"""
