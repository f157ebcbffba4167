"""The steps of rate limits and concurrency caps: each decision is one Lua script on
the server's clock (the lock-free state only; :mod:`..redislimits` calls them)."""
from __future__ import annotations

# Decide whether a claimed task may run now, and if not, move it in the same step.
# A task over the rate is given its own future slot (GCRA scheduling: the theoretical
# arrival time advances for it) and sent to the delayed set due at that slot; when it
# comes back it holds a reservation and runs without asking again. Deferred tasks
# therefore return evenly spaced, never all at once.
# Safe to resend after a lost reply (workers do): a task already holding its slot was
# admitted, and one no longer in the in-flight list was moved by the first call, so
# neither is acted on twice (a resent park used to queue a second copy; both ran).
# KEYS: 1 state hash, 2 in-flight list, 3 delayed sorted set, 4 rate key, 5 slots set,
#       6 slot waiters list, 7 worker slots set, 8 limiters set, 9 total_deferred,
#       10 total_fenced, 11 rate reservations set
# ARGV: 1 epoch, 2 raw task, 3 rate interval ms ('' for none), 4 rate tolerance ms,
#       5 cap limit ('' for none), 6 cap name, 7 slot holder, 8 task id
# Returns: {1} run now | {0, due ms} deferred by the rate | {2} waiting for a slot |
#          {3} not in flight (moved already) | {-1} fenced
ADMIT = """
if redis.call('HGET', KEYS[1], 'epoch') ~= ARGV[1] then
  redis.call('INCR', KEYS[10])
  return {-1}
end
if ARGV[5] ~= '' and redis.call('ZSCORE', KEYS[5], ARGV[7]) then return {1} end
if not redis.call('LPOS', KEYS[2], ARGV[2], 'RANK', -1) then return {3} end
if ARGV[5] ~= '' and redis.call('ZCARD', KEYS[5]) >= tonumber(ARGV[5]) then
  redis.call('LREM', KEYS[2], -1, ARGV[2])
  redis.call('RPUSH', KEYS[6], ARGV[2])
  redis.call('SADD', KEYS[8], ARGV[6])
  redis.call('INCR', KEYS[9])
  return {2}
end
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + tonumber(clock[2]) / 1000
if ARGV[3] ~= '' and redis.call('SREM', KEYS[11], ARGV[8]) == 0 then
  local tat = tonumber(redis.call('GET', KEYS[4]) or now)
  if tat < now then tat = now end
  local run_at = math.max(now, tat - tonumber(ARGV[4]))
  local next_tat = tat + tonumber(ARGV[3])
  redis.call('SET', KEYS[4], string.format('%.3f', next_tat), 'PX', math.ceil(next_tat - now) + 60000)
  if run_at > now then
    redis.call('LREM', KEYS[2], -1, ARGV[2])
    redis.call('ZADD', KEYS[3], string.format('%.3f', run_at / 1000), ARGV[2])
    redis.call('SADD', KEYS[11], ARGV[8])
    redis.call('INCR', KEYS[9])
    return {0, string.format('%.3f', run_at)}
  end
end
if ARGV[5] ~= '' then
  redis.call('ZADD', KEYS[5], now, ARGV[7])
  redis.call('SADD', KEYS[7], ARGV[6] .. '|' .. ARGV[7])
  redis.call('SADD', KEYS[8], ARGV[6])
end
return {1}
"""

# Free one slot; if it was held, wake the oldest waiter (front of the queue).
# KEYS: 1 slots set, 2 slot waiters list, 3 queue, 4 worker slots set ('' owner: any key)
# ARGV: 1 holder, 2 record in the worker's set (name|holder)
# Returns: 1 if a slot was freed, 0 if it was not held (already freed by a takeover)
RELEASE_SLOT = """
if redis.call('ZREM', KEYS[1], ARGV[1]) == 0 then return 0 end
redis.call('SREM', KEYS[4], ARGV[2])
local waiter = redis.call('LPOP', KEYS[2])
if waiter then redis.call('RPUSH', KEYS[3], waiter) end
return 1
"""

# A code-level rate decision without a task: how long to wait (0: go, token taken).
# KEYS: 1 rate key
# ARGV: 1 interval ms, 2 tolerance ms
# Returns: milliseconds to wait before asking again ('0' when allowed)
RATE_ONLY = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + tonumber(clock[2]) / 1000
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local allowed_at = tat - tonumber(ARGV[2])
if now < allowed_at then return string.format('%.3f', allowed_at - now) end
local next_tat = tat + tonumber(ARGV[1])
redis.call('SET', KEYS[1], string.format('%.3f', next_tat), 'PX', math.ceil(next_tat - now) + 1000)
return '0'
"""

# A code-level slot: take one if the cap has room (stale holders past their hold time go).
# Fenced like every write made for a worker: a zombie resumed after its takeover (which
# freed its slots) must not take a slot nobody will free. Ages are measured on the
# server's clock, the one that stamped them.
# KEYS: 1 slots set, 2 worker slots set, 3 limiters set, 4 the worker's state hash
# ARGV: 1 limit, 2 holder, 3 cap name, 4 longest hold (ms) before a holder is presumed
#       abandoned, 5 the worker's epoch ('' for code outside a worker)
# Returns: 1 taken, 0 full, -1 fenced
TAKE_SLOT = """
if ARGV[5] ~= '' and redis.call('HGET', KEYS[4], 'epoch') ~= ARGV[5] then return -1 end
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + tonumber(clock[2]) / 1000
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[4]))
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then return 0 end
redis.call('ZADD', KEYS[1], now, ARGV[2])
redis.call('SADD', KEYS[2], ARGV[3] .. '|' .. ARGV[2])
redis.call('SADD', KEYS[3], ARGV[3])
return 1
"""
