"""Read-only scripts: where a task is now, and the audit's snapshot on a full server."""
from __future__ import annotations

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
