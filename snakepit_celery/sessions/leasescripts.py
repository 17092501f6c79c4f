"""The Lua scripts of the lease table (:mod:`snakepit_celery.sessions.lease`).

Each decision about a session's owner is one script reading Redis' own clock, so
callers and workers on different machines agree; the keys are drawn in the lease
module's docstring. Scripts that handle many sessions take them as the last
arguments (the caller sends a bounded batch at a time).
"""

from __future__ import annotations

__all__ = [
    "ADOPT",
    "BEGIN_CALL",
    "CLAIM",
    "EXPIRE_ABORT",
    "EXPIRE_BEGIN",
    "FORGET",
    "HEARTBEAT",
    "ROUTE",
    "SET_ACTIVE",
]

_COMMON = """
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function alive(P, w, now)
  local dl = redis.call('ZSCORE', P .. ':workers', w)
  return dl and tonumber(dl) > now
end
local function assign(P, sid, pool, now, op)
  local rk = P .. ':route:' .. sid
  local chosen = false
  for _, w in ipairs(redis.call('ZRANGE', P .. ':load:' .. pool, 0, -1)) do
    if alive(P, w, now) then chosen = w; break end
  end
  if not chosen then
    redis.call('HSET', rk, 'owner', '', 'pool', pool, 'active', '0', 'state', 'orphan', 'routed_at', now)
    redis.call('SADD', P .. ':orphans:' .. pool, sid)
    return false
  end
  redis.call('HSET', rk, 'owner', chosen, 'pool', pool, 'active', '0', 'state', 'bound', 'routed_at', now)
  redis.call('SADD', P .. ':owned:' .. chosen, sid)
  redis.call('ZINCRBY', P .. ':load:' .. pool, 1, chosen)
  redis.call('SREM', P .. ':orphans:' .. pool, sid)
  redis.call('RPUSH', P .. ':wake:' .. chosen, op .. ' ' .. sid)
  return chosen
end
"""

# ARGV: prefix, sid, requested pool ('' = the session's or the default), default
# pool, task id and call JSON to journal ('' = no journal), '1' to keep its place
# in the send order.  Returns {status, owner, pool}.
ROUTE = (
    _COMMON
    + """
local P, sid, want, default = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local now = now_ms()
local rk = P .. ':route:' .. sid
local function journal()
  if ARGV[5] == '' then return end
  local seq = redis.call('HINCRBY', rk, 'seq', 1)
  redis.call('HSET', P .. ':calls:' .. sid, ARGV[5], seq .. '|' .. now .. '|' .. ARGV[6])
  if ARGV[7] == '1' then redis.call('ZADD', P .. ':order:' .. sid, seq, ARGV[5]) end
end
local r = redis.call('HMGET', rk, 'owner', 'pool', 'active', 'state')
if not r[2] then
  local pool = want ~= '' and want or default
  local w = assign(P, sid, pool, now, 'bind')
  journal()
  if w then return {'bound', w, pool} end
  return {'orphan', '', pool}
end
if want ~= '' and want ~= r[2] then return {'pool', r[1], r[2]} end
if r[4] == 'closing' then return {'closing', r[1], r[2]} end
redis.call('HSET', rk, 'routed_at', now)
journal()
if r[4] ~= 'bound' then return {r[4], '', r[2]} end
if not alive(P, r[1], now) then return {'dead', r[1], r[2]} end
if r[3] ~= '1' then
  redis.call('RPUSH', P .. ':wake:' .. r[1], 'wake ' .. sid)
  return {'woken', r[1], r[2]}
end
return {'active', r[1], r[2]}
"""
)

# ARGV: prefix, worker id, lease ms, pools csv, first ('1' registers).
# Returns 1, or 0 when the worker was declared dead (its sessions are gone).
HEARTBEAT = """
local P, w, ttl, pools, first = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4], ARGV[5]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local k = P .. ':workers'
if first ~= '1' and not redis.call('ZSCORE', k, w) then return 0 end
redis.call('ZADD', k, now + ttl, w)
if first == '1' then
  redis.call('HSET', P .. ':worker:' .. w, 'pools', pools)
  for pool in string.gmatch(pools, '[^,]+') do
    redis.call('ZADD', P .. ':load:' .. pool, 'NX', 0, w)
  end
end
return 1
"""

# ARGV: prefix, dead worker id, '1' when it leaves on purpose (skip the deadline check).
# Returns the sessions it owned (now in state failover), or false.
CLAIM = (
    _COMMON
    + """
local P, w, leaving = ARGV[1], ARGV[2], ARGV[3]
local now = now_ms()
local dl = redis.call('ZSCORE', P .. ':workers', w)
if not dl then return false end
if leaving ~= '1' and tonumber(dl) > now then return false end
redis.call('ZREM', P .. ':workers', w)
local sids = redis.call('SMEMBERS', P .. ':owned:' .. w)
for _, sid in ipairs(sids) do
  local rk = P .. ':route:' .. sid
  if redis.call('HGET', rk, 'owner') == w then
    redis.call('HSET', rk, 'owner', '', 'active', '0', 'state', 'failover', 'failover_at', now)
    redis.call('SADD', P .. ':orphans:' .. redis.call('HGET', rk, 'pool'), sid)
  end
end
local pools = redis.call('HGET', P .. ':worker:' .. w, 'pools') or ''
for pool in string.gmatch(pools, '[^,]+') do redis.call('ZREM', P .. ':load:' .. pool, w) end
redis.call('DEL', P .. ':owned:' .. w, P .. ':wake:' .. w, P .. ':worker:' .. w)
return sids
"""
)

# ARGV: prefix, failover grace ms ('0' = force: the claimer itself), session ids.
# Gives each orphan (or failover whose claimer vanished) an owner; returns the
# owner chosen for each session, or false.
ADOPT = (
    _COMMON
    + """
local P, grace = ARGV[1], tonumber(ARGV[2])
local now = now_ms()
local out = {}
for i = 3, #ARGV do
  local sid = ARGV[i]
  local r = redis.call('HMGET', P .. ':route:' .. sid, 'pool', 'state', 'failover_at')
  local owner = false
  if r[1] then
    if r[2] == 'orphan' or (r[2] == 'failover' and now - tonumber(r[3] or 0) >= grace) then
      owner = assign(P, sid, r[1], now, 'adopt')
    elseif r[2] ~= 'bound' and r[2] ~= 'closing' then
      redis.call('SADD', P .. ':orphans:' .. r[1], sid)
    end
  end
  out[#out + 1] = owner
end
return out
"""
)

# ARGV: prefix, worker, active ('1'/'0'), session ids. Returns, for each session,
# its pool when the worker owns it (and records whether it consumes its queue), or false.
SET_ACTIVE = """
local P, w, active = ARGV[1], ARGV[2], ARGV[3]
local out = {}
for i = 4, #ARGV do
  local rk = P .. ':route:' .. ARGV[i]
  local r = redis.call('HMGET', rk, 'owner', 'state', 'pool')
  if r[1] == w and r[2] == 'bound' then
    redis.call('HSET', rk, 'active', active)
    out[#out + 1] = r[3]
  else
    out[#out + 1] = false
  end
end
return out
"""

# ARGV: prefix, sid, worker, now (s, float), task id, order wait ms ('' = no order
# check). Checks ownership and the send order, takes the call out of the journal
# and refreshes the session data's TTL.
# Returns {'ok'|'missing'|'notmine'|'early', pool, earlier task id}.
BEGIN_CALL = """
local P, sid, w, tid = ARGV[1], ARGV[2], ARGV[3], ARGV[5]
local r = redis.call('HMGET', P .. ':route:' .. sid, 'owner', 'state', 'pool')
if r[1] ~= w or r[2] ~= 'bound' then return {'notmine', r[3] or '', ''} end
local ck, ok = P .. ':calls:' .. sid, P .. ':order:' .. sid
local mine = redis.call('HGET', ck, tid)
if mine and ARGV[6] ~= '' then
  local seq = tonumber(string.match(mine, '^(%d+)|'))
  local t = redis.call('TIME')
  local since = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) - tonumber(ARGV[6])
  for _, e in ipairs(redis.call('ZRANGEBYSCORE', ok, '-inf', '(' .. seq)) do
    local raw = redis.call('HGET', ck, e)
    if raw and tonumber(string.match(raw, '^%d+|(%d+)|')) > since then return {'early', r[3], e} end
    redis.call('ZREM', ok, e)  -- begun, dropped, or waited for long enough
  end
end
redis.call('HDEL', ck, tid)
redis.call('ZREM', ok, tid)
local dk = P .. ':session:' .. sid
local ttl = redis.call('HGET', dk, 'ttl')
if not ttl then return {'missing', r[3], ''} end
redis.call('EXPIRE', dk, tonumber(ttl))
redis.call('ZADD', P .. ':sessions', tonumber(ARGV[4]) + tonumber(ttl), sid)
return {'ok', r[3], ''}
"""

# ARGV: prefix, sid, worker, grace ms. Starts closing an expired session.
EXPIRE_BEGIN = (
    _COMMON
    + """
local P, sid, w, grace = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])
local rk = P .. ':route:' .. sid
local r = redis.call('HMGET', rk, 'owner', 'state', 'routed_at')
if r[1] ~= w or r[2] ~= 'bound' then return 'notmine' end
if redis.call('EXISTS', P .. ':session:' .. sid) == 1 then return 'alive' end
if now_ms() - tonumber(r[3] or 0) < grace then return 'recent' end
redis.call('HSET', rk, 'state', 'closing', 'active', '0')
return 'closing'
"""
)

# ARGV: prefix, sid, worker. A closing session got a call after all: bound again.
EXPIRE_ABORT = """
local rk = ARGV[1] .. ':route:' .. ARGV[2]
if redis.call('HGET', rk, 'owner') ~= ARGV[3] then return 0 end
redis.call('HSET', rk, 'state', 'bound', 'active', '0')
return 1
"""

# ARGV: prefix, sid, worker. Forgets a closed session entirely (or a session
# this worker lost), returning 1 if it removed the route.
FORGET = """
local P, sid, w = ARGV[1], ARGV[2], ARGV[3]
local rk = P .. ':route:' .. sid
local r = redis.call('HMGET', rk, 'owner', 'pool', 'state')
redis.call('SREM', P .. ':owned:' .. w, sid)
if r[1] ~= w then return 0 end
redis.call('ZINCRBY', P .. ':load:' .. r[2], -1, w)
redis.call('DEL', rk, P .. ':calls:' .. sid, P .. ':order:' .. sid)
redis.call('SREM', P .. ':orphans:' .. r[2], sid)
if r[3] == 'closing' then redis.call('ZREM', P .. ':sessions', sid) end
return 1
"""
