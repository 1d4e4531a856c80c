"""The Lua scripts: each one step, atomic on the server, timed by the server's clock.

Every time comes from ``redis.call('TIME')`` inside the script, never from a client, so
processes whose clocks disagree still share one limit. Numbers go back as strings: Redis
truncates a Lua number in a reply to an integer.
"""

from __future__ import annotations

from typing import Final

__all__ = ["ADMIT", "ENDPOINT_PUBLISH", "ENDPOINT_READ", "HOLD", "LEASE_RENEW", "UNHOLD"]

# Admission of a batch of calls to one endpoint, in one step: the releases of leases this
# process has finished with, then each call's GCRA rate limits and lease, in order.
# KEYS: [1] the requests bucket, [2] the tokens bucket, [3] the sorted set of leases.
# ARGV: [1..4] requests' interval (s per request, 0: no limit) and tolerance (burst x
# interval), tokens' interval and tolerance; [5] hold grace (s); [6] the lease cap;
# [7] lease ttl (ms); [8] n, the number of releases, then n members; then five per call:
# ticket, cost (tokens), rated ('1': charge the rate limits), member ('': no lease), hold
# ('1': refused by the tokens limit, take or keep its hold).
# Returns two per call: {'0', wait} when refused by a rate limit (nothing charged), else
# {'1', '1'} admitted with its lease taken, or {'1', '0'} admitted without one (none
# wanted, or all held: the caller waits for one).
#
# A caller refused by the tokens limit holds it (one holder at a time, the largest refused
# caller taking it over from a smaller one): until it is admitted, or its hold lapses (its
# wait plus the grace), others are admitted only if the holder's cost is left in the
# bucket, so small calls cannot starve a large one. A caller that may still go to another
# endpoint asks without a hold, so it leaves none behind where it will not wait.
ADMIT: Final = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local grace = tonumber(ARGV[5])
local cap = tonumber(ARGV[6])
local ttl = tonumber(ARGV[7])
local released = tonumber(ARGV[8])
if released > 0 then redis.call('ZREM', KEYS[3], unpack(ARGV, 9, 8 + released)) end

local function gcra(me, cost, hold)
  local wait = 0
  local plan = {}
  for i = 1, 2 do
    local interval = tonumber(ARGV[2 * i - 1])
    local tau = tonumber(ARGV[2 * i])
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
    if hold and p and p[5] > 1e-9 and ((not p[2]) or p[2] == me or p[3] > p[6]) then
      redis.call('HSET', KEYS[2], 'hid', me, 'hcost', string.format('%.6f', p[3]),
                 'huntil', string.format('%.6f', now + p[5] + grace))
      redis.call('PEXPIRE', KEYS[2],
                 math.ceil((p[1] - now + p[3] * p[4] + p[5] + grace) * 1000) + 1000)
    end
    return wait
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
  return 0
end

local held = nil
local leased = false
local out = {}
for i = 9 + released, #ARGV, 5 do
  local wait = 0
  if ARGV[i + 2] == '1' then wait = gcra(ARGV[i], tonumber(ARGV[i + 1]), ARGV[i + 4] == '1') end
  if wait > 0 then
    out[#out + 1] = '0'
    out[#out + 1] = string.format('%.6f', wait)
  else
    local got = '0'
    if ARGV[i + 3] ~= '' then
      if held == nil then
        redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now_ms)
        held = redis.call('ZCARD', KEYS[3])
      end
      if held < cap then
        redis.call('ZADD', KEYS[3], now_ms + ttl, ARGV[i + 3])
        held = held + 1
        leased = true
        got = '1'
      end
    end
    out[#out + 1] = '1'
    out[#out + 1] = got
  end
end
if leased then redis.call('PEXPIRE', KEYS[3], ttl) end
return out
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
