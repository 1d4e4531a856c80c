"""The Lua scripts: each one step, atomic on the server, timed by the server's clock.

Every time comes from ``redis.call('TIME')`` inside the script, never from a client, so
processes whose clocks disagree still share one limit. Numbers go back as strings: Redis
truncates a Lua number in a reply to an integer.
"""

from __future__ import annotations

from typing import Final

__all__ = ["ENDPOINT_PUBLISH", "ENDPOINT_READ", "GCRA", "HOLD", "LEASE_ACQUIRE", "LEASE_RENEW",
           "UNHOLD"]

# KEYS[1]: the sorted set of leases; ARGV: cap, ttl (ms), member. 1 if leased, else 0.
LEASE_ACQUIRE: Final = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[1]) then
  local ttl = tonumber(ARGV[2])
  redis.call('ZADD', KEYS[1], now + ttl, ARGV[3])
  redis.call('PEXPIRE', KEYS[1], ttl)
  return 1
end
return 0
"""

# KEYS[1]: the sorted set; ARGV: ttl (ms), then the members to renew. Only members still
# there are renewed (a lapsed lease is not revived). Returns how many were.
LEASE_RENEW: Final = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[1])
local renewed = 0
for i = 2, #ARGV do
  if redis.call('ZSCORE', KEYS[1], ARGV[i]) then
    redis.call('ZADD', KEYS[1], 'XX', now + ttl, ARGV[i])
    renewed = renewed + 1
  end
end
if renewed > 0 then redis.call('PEXPIRE', KEYS[1], ttl) end
return renewed
"""

# GCRA over two limits at once: KEYS[1] requests (each call costs 1), KEYS[2] tokens.
# ARGV: ticket, requests' interval (s per request, 0: no limit), requests' tolerance
# (burst x interval), tokens' interval, tokens' tolerance, cost (tokens), hold grace (s).
# Returns {'1', '0'} when admitted (both limits charged), else {'0', wait}: nothing charged.
#
# A caller refused by the tokens limit holds it (one holder at a time, the largest refused
# caller taking it over from a smaller one): until it is admitted, or its hold lapses (its
# wait plus the grace), others are admitted only if the holder's cost is left in the
# bucket, so small calls cannot starve a large one.
GCRA: Final = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local me = ARGV[1]
local cost = tonumber(ARGV[6])
local grace = tonumber(ARGV[7])
local wait = 0
local plan = {}
for i = 1, 2 do
  local interval = tonumber(ARGV[2 * i])
  local tau = tonumber(ARGV[2 * i + 1])
  local amount = 1
  if i == 2 then amount = cost end
  if interval > 0 and amount > 0 then
    local v = redis.call('HMGET', KEYS[i], 'tat', 'hid', 'hcost', 'huntil')
    local tat = tonumber(v[1]) or now
    if tat < now then tat = now end
    local hid = v[2]
    local hcost = tonumber(v[3]) or 0
    if hid and (tonumber(v[4]) or 0) < now then
      hid = false
      hcost = 0
    end
    local reserve = 0
    if hid and hid ~= me then reserve = hcost end
    local need = tat + (amount + reserve) * interval - tau - now
    plan[i] = {tat, hid, amount, interval, need, hcost}
    if need > wait then wait = need end
  end
end
if wait > 1e-9 then
  local p = plan[2]
  if p and p[5] > 1e-9 and ((not p[2]) or p[2] == me or p[3] > p[6]) then
    redis.call('HSET', KEYS[2], 'hid', me, 'hcost', string.format('%.6f', p[3]),
               'huntil', string.format('%.6f', now + p[5] + grace))
    redis.call('PEXPIRE', KEYS[2],
               math.ceil((p[1] - now + p[3] * p[4] + p[5] + grace) * 1000) + 1000)
  end
  return {'0', string.format('%.6f', wait)}
end
for i = 1, 2 do
  local p = plan[i]
  if p then
    local tat = p[1] + p[3] * p[4]
    redis.call('HSET', KEYS[i], 'tat', string.format('%.6f', tat))
    if p[2] and p[2] == me then redis.call('HDEL', KEYS[i], 'hid', 'hcost', 'huntil') end
    redis.call('PEXPIRE', KEYS[i], math.ceil((tat - now + grace) * 1000) + 1000)
  end
end
return {'1', '0'}
"""

# One endpoint's shared verdicts: a hash with a field pair per kind ("breaker", "health"):
# <kind> (the verdict) and <kind>_until (Redis time, ms, when it lapses), plus <kind>_by.
# KEYS[1]: the hash; ARGV: kind, verdict, ttl (ms; 0 withdraws the kind's verdict if `by`
# gave it: a breaker closing here clears only its own opening). The hash expires with the
# last of its verdicts.
ENDPOINT_PUBLISH: Final = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local kind = ARGV[1]
local ttl = tonumber(ARGV[3])
if ttl > 0 then
  redis.call('HSET', KEYS[1], kind, ARGV[2], kind .. '_until', now + ttl, kind .. '_by', ARGV[4])
elseif redis.call('HGET', KEYS[1], kind .. '_by') == ARGV[4] then
  redis.call('HDEL', KEYS[1], kind, kind .. '_until', kind .. '_by')
end
local last = 0
for _, k in ipairs({'breaker', 'health'}) do
  local u = tonumber(redis.call('HGET', KEYS[1], k .. '_until')) or 0
  if u > last then last = u end
end
if last > now then redis.call('PEXPIREAT', KEYS[1], last) else redis.call('DEL', KEYS[1]) end
return 1
"""

# KEYS[1]: the hash. Returns {breaker, its ms left, health, its ms left}, '' for a verdict
# absent or lapsed: the reader turns ms left into its own clock's deadline.
ENDPOINT_READ: Final = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local v = redis.call('HMGET', KEYS[1], 'breaker', 'breaker_until', 'health', 'health_until')
local out = {}
for i = 0, 1 do
  local left = (tonumber(v[2 * i + 2]) or 0) - now
  if v[2 * i + 1] and left > 0 then
    out[2 * i + 1] = v[2 * i + 1]
    out[2 * i + 2] = tostring(left)
  else
    out[2 * i + 1] = ''
    out[2 * i + 2] = '0'
  end
end
return out
"""

# A lease held by one process at a time (which process runs an endpoint's health checks).
# KEYS[1]: the lease; ARGV: holder, ttl (ms). 1 if the holder has it (taken or renewed).
HOLD: Final = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 1 end
return 0
"""

# KEYS[1]: the lease; ARGV: holder. Let go of it, if still held by the holder.
UNHOLD: Final = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
