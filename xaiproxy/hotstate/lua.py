"""The Lua scripts that make each hot-state step one atomic Redis round trip.

Layout shared by `admit` and `settle` (built by `redis.RedisState._keys`):
  KEYS[1] loaded marker (its value is the generation), KEYS[2] the account's grants,
  KEYS[3] its reserved total, KEYS[4] this request's settle record,
  then two keys per account of the chain, root first (subtree held, subtree month spend),
  then one hash per rate-limit scope, then one key of the script's own (admit: the
  `settling` key a rebuild sets while instances re-hold their requests in flight).
A settle record is "<generation> <reply>", or "<generation> held" for a request held
again under a generation newer than the one that admitted it (`REHOLD`).
Grants hash: field "<expires_at>|<grant id>" -> remaining nano base units; the field
"0|0" holds a debt run up with no grant at all. Rate-limit hash: `t` (last leak, Redis
time) and `l1`..`l6`, the levels of the RPM RPH RPD TPM TPH TPD leaky buckets.

Money is integer nano units. Lua numbers are doubles, so every change is applied with
INCRBY/HINCRBY (exact int64 in Redis) by deltas the caller keeps below 2^53; reads of
larger balances compare approximately, writes stay exact. Time is Redis's own (TIME),
so instances with drifting clocks still share one clock for the buckets.
"""

LIB = r"""
local PERIODS = {60, 3600, 86400, 60, 3600, 86400}

local function now_s()
  local t = redis.call('TIME')
  return tonumber(t[1]) + tonumber(t[2]) / 1000000
end

local function int(x) return string.format('%.0f', x) end

local function num(key) return tonumber(redis.call('GET', key)) or 0 end

-- The grants of one account, soonest expiry first.
local function grants(key)
  local raw = redis.call('HGETALL', key)
  local out = {}
  for i = 1, #raw, 2 do
    local f = raw[i]
    local bar = string.find(f, '|', 1, true)
    out[#out + 1] = {f = f, exp = tonumber(string.sub(f, 1, bar - 1)), rem = tonumber(raw[i + 1])}
  end
  table.sort(out, function(a, b)
    if a.exp ~= b.exp then return a.exp < b.exp end
    return a.f < b.f
  end)
  return out
end

-- Unexpired remainders; expiry ends what a grant holds, never what it owes.
local function balance(gs, now)
  local sum = 0
  for _, g in ipairs(gs) do
    if g.exp > now or g.rem < 0 then sum = sum + g.rem end
  end
  return sum
end

-- Take `amount` soonest-expiring first; a shortfall is debt on the last live grant (else
-- the last grant, else "0|0"). Returns {field, take, field, take, ...}.
local function draw(key, gs, amount, now)
  local takes, left, last = {}, amount, nil
  for _, g in ipairs(gs) do
    if g.exp > now then
      last = g
      if left > 0 and g.rem > 0 then
        local take = math.min(g.rem, left)
        redis.call('HINCRBY', key, g.f, int(-take))
        takes[#takes + 1] = g.f
        takes[#takes + 1] = int(take)
        left = left - take
      end
    end
  end
  if left > 0 then
    local f = (last and last.f) or (gs[#gs] and gs[#gs].f) or '0|0'
    redis.call('HINCRBY', key, f, int(-left))
    takes[#takes + 1] = f
    takes[#takes + 1] = int(left)
  end
  return takes
end

-- A scope's six bucket levels, leaked to `now` (aiolimiter's leaky bucket: a full limit
-- as a burst, draining at limit / period).
local function leak(key, lim, now)
  local raw = redis.call('HMGET', key, 't', 'l1', 'l2', 'l3', 'l4', 'l5', 'l6')
  local t = tonumber(raw[1]) or now
  local lv = {}
  for k = 1, 6 do
    local l = 0
    if lim[k] > 0 then
      l = math.max((tonumber(raw[k + 1]) or 0) - (now - t) * lim[k] / PERIODS[k], 0)
    end
    lv[k] = l
  end
  return lv
end

-- Store the levels; the hash expires once every bucket would have drained.
local function store(key, lv, lim, now)
  local ttl = 0
  for k = 1, 6 do
    if lim[k] > 0 then ttl = math.max(ttl, lv[k] * PERIODS[k] / lim[k]) end
  end
  redis.call('HSET', key, 't', tostring(now), 'l1', tostring(lv[1]), 'l2', tostring(lv[2]),
    'l3', tostring(lv[3]), 'l4', tostring(lv[4]), 'l5', tostring(lv[5]), 'l6', tostring(lv[6]))
  redis.call('PEXPIRE', key, math.ceil(ttl * 1000) + 1000)
end

local function limits_at(base, j)
  local lim = {}
  for k = 1, 6 do lim[k] = tonumber(ARGV[base + 6 * (j - 1) + k]) end
  return lim
end

-- x-ratelimit-* of the tightest request and token buckets: limit, remaining, ms to empty
-- (-1 = no such bucket).
local function headers(levels, limits)
  local out = {-1, -1, -1, -1, -1, -1}
  for j = 1, #levels do
    for k = 1, 6 do
      local lim = limits[j][k]
      if lim > 0 then
        local o = (k <= 3) and 0 or 3
        local rem = math.max(math.floor(lim - levels[j][k]), 0)
        if out[o + 1] < 0 or rem < out[o + 2] then
          out[o + 1] = lim
          out[o + 2] = rem
          out[o + 3] = math.ceil(levels[j][k] * PERIODS[k] / lim * 1000)
        end
      end
    end
  end
  return out
end
"""

# ARGV: est, floor, unlimited, C (chain length), S (scopes), C HardLimits (nano base,
# 0 = none), 6 limits per scope. Checks everything, then applies everything, or nothing:
# {'ok', gen, '0', headers...} | {'insufficient_balance', gen, available}
# | {'hard_limit_reached', gen, chain index} | {'rate_limit_exceeded', gen, wait s, headers...}
# | {'not_loaded'} | {'settling'} (just rebuilt: instances are re-holding their requests).
ADMIT = (
    LIB
    + r"""
local gen = redis.call('GET', KEYS[1])
if not gen then return {'not_loaded'} end
if redis.call('EXISTS', KEYS[#KEYS]) == 1 then return {'settling'} end
local now = now_s()
local est, floor, unlimited = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3] == '1'
local C, S = tonumber(ARGV[4]), tonumber(ARGV[5])
if not unlimited then
  local avail = balance(grants(KEYS[2]), now) - num(KEYS[3])
  if avail - est < floor then return {'insufficient_balance', gen, int(avail)} end
end
for i = 1, C do
  local limit = tonumber(ARGV[5 + i])
  if limit > 0 then
    local used = num(KEYS[3 + 2 * i]) + num(KEYS[4 + 2 * i])
    if used >= limit or used + est > limit then return {'hard_limit_reached', gen, tostring(i)} end
  end
end
local levels, limits, wait = {}, {}, 0
for j = 1, S do
  local lim = limits_at(5 + C, j)
  local lv = leak(KEYS[4 + 2 * C + j], lim, now)
  levels[j], limits[j] = lv, lim
  for k = 1, 3 do
    if lim[k] > 0 and lv[k] + 1 > lim[k] then
      wait = math.max(wait, (lv[k] + 1 - lim[k]) * PERIODS[k] / lim[k])
    end
  end
  for k = 4, 6 do
    if lim[k] > 0 and lv[k] >= lim[k] then
      wait = math.max(wait, (lv[k] - lim[k]) * PERIODS[k] / lim[k] + 0.001)
    end
  end
end
if wait > 0 then
  local h = headers(levels, limits)
  return {'rate_limit_exceeded', gen, tostring(wait), h[1], h[2], h[3], h[4], h[5], h[6]}
end
for j = 1, S do
  for k = 1, 3 do
    if limits[j][k] > 0 then levels[j][k] = levels[j][k] + 1 end
  end
  store(KEYS[4 + 2 * C + j], levels[j], limits[j], now)
end
if not unlimited then redis.call('INCRBY', KEYS[3], ARGV[1]) end
for i = 1, C do redis.call('INCRBY', KEYS[3 + 2 * i], ARGV[1]) end
local h = headers(levels, limits)
return {'ok', gen, '0', h[1], h[2], h[3], h[4], h[5], h[6]}
"""
)

# ARGV: gen at admission, est, cost, tokens, unlimited, C, S, late, month ttl s, 6 limits
# per scope, account id. KEYS: admit's, then the `touched` set (accounts whose grants
# changed, by Redis time: instances refresh their display copies from it).
# Releases the hold (only if Redis still has the generation that took it, or the request
# was held again under the current one),
# debits the cost, counts it in every chain account's month, charges the token buckets.
# `late` ("" = not late) = a retry whose usage the database got: the seconds since its
# commit, -1 while not known to be committed. In a generation rebuilt since, it is skipped
# if that generation's snapshot counted it (committed before the snapshot was read: the
# Redis time after '@' in the generation; no time: assumed counted), else debited there.
# Idempotent per request and generation (KEYS[4] holds "<gen> <reply>"): a retry gets the
# first answer; after a rebuild the record is stale (the rebuild counted what it did).
# {'ok', field, take, ...} | {'skipped'} | {'not_loaded'}.
SETTLE = (
    LIB
    + r"""
local function counted(gen, late, now)
  if late == '' then return false end
  local at = tonumber(string.match(gen, '@(.+)$') or '')
  if not at then return true end
  local age = tonumber(late)
  return age >= 0 and now - age < at
end
local gen = redis.call('GET', KEYS[1])
if not gen then return {'not_loaded'} end
local same = gen == ARGV[1]
local done = redis.call('GET', KEYS[4])
if done then
  local sp = string.find(done, ' ', 1, true)
  if string.sub(done, 1, sp - 1) == gen then
    local rest = string.sub(done, sp + 1)
    if rest ~= 'held' then return cjson.decode(rest) end
    same = true  -- held again under this generation: release it here
  end
end
local now = now_s()
local cost, tokens, unlimited = tonumber(ARGV[3]), tonumber(ARGV[4]), ARGV[5] == '1'
local C, S = tonumber(ARGV[6]), tonumber(ARGV[7])
local reply = {'skipped'}
if same or not counted(gen, ARGV[8], now) then
  if same then
    if not unlimited then redis.call('DECRBY', KEYS[3], ARGV[2]) end
    for i = 1, C do redis.call('DECRBY', KEYS[3 + 2 * i], ARGV[2]) end
  end
  reply = {'ok'}
  if cost > 0 then
    if not unlimited then
      for _, v in ipairs(draw(KEYS[2], grants(KEYS[2]), cost, now)) do reply[#reply + 1] = v end
    end
    for i = 1, C do
      redis.call('INCRBY', KEYS[4 + 2 * i], ARGV[3])
      redis.call('EXPIRE', KEYS[4 + 2 * i], ARGV[9])
    end
    if not unlimited then redis.call('ZADD', KEYS[#KEYS], now, ARGV[#ARGV]) end
  end
  if tokens > 0 then
    for j = 1, S do
      local lim = limits_at(9, j)
      if lim[4] > 0 or lim[5] > 0 or lim[6] > 0 then
        local key = KEYS[4 + 2 * C + j]
        local lv = leak(key, lim, now)
        for k = 4, 6 do
          if lim[k] > 0 then lv[k] = lv[k] + tokens end
        end
        store(key, lv, lim, now)
      end
    end
  end
end
redis.call('SET', KEYS[4], gen .. ' ' .. cjson.encode(reply), 'EX', 86400)
return reply
"""
)

# Management: take `amount` from an account, soonest expiry first, if its balance less
# what its requests in flight reserved covers it (or always, with allow_debt); amount 0:
# all of it (balance less reservations, if positive). With an expected reservation (a
# delete: all that is free, atomic against every instance's holds), only if the account's
# reservations are that and the amount is all that is free, else {'quote'}.
# KEYS: loaded marker, grants, reserved, touched, settling. ARGV: amount, allow_debt,
# account id, expected reservations ("" = any). {'ok', gen, reserved, field, take, ...}
# | {'insufficient_balance', available} | {'quote'} | {'not_loaded'} | {'settling'}.
DRAW = (
    LIB
    + r"""
local gen = redis.call('GET', KEYS[1])
if not gen then return {'not_loaded'} end
if redis.call('EXISTS', KEYS[5]) == 1 then return {'settling'} end
local now = now_s()
local amount = tonumber(ARGV[1])
local gs = grants(KEYS[2])
local reserved = num(KEYS[3])
local avail = balance(gs, now) - reserved
if ARGV[4] ~= '' and (reserved ~= tonumber(ARGV[4]) or amount ~= math.max(avail, 0)) then
  return {'quote'}
end
if amount == 0 then amount = math.max(avail, 0) end
if ARGV[4] == '' and ARGV[2] ~= '1' and avail < amount then
  return {'insufficient_balance', int(avail)}
end
local reply = {'ok', gen, int(reserved)}
if amount > 0 then
  for _, v in ipairs(draw(KEYS[2], gs, amount, now)) do reply[#reply + 1] = v end
  redis.call('ZADD', KEYS[4], now, ARGV[3])
end
return reply
"""
)

# Management, after (or instead of) a unit's commit: put new grants and give amounts back
# to grants, once (KEYS[4] records the step) and only under the generation that took the
# money (after a rebuild the database already says what happened).
# KEYS: loaded marker, grants, touched, step record. ARGV: generation ("" = any), account
# id, then (grant field, amount, "put"|"add") triples: put = HSETNX; add = HINCRBY on the
# grant whose id is given in place of the field (none if Redis has no such grant: a
# give-back lost errs towards less credit, never more). {'ok'} | {'skipped'} | {'not_loaded'}.
ADJUST = r"""
local gen = redis.call('GET', KEYS[1])
if not gen then return {'not_loaded'} end
if (ARGV[1] ~= '' and ARGV[1] ~= gen) or redis.call('EXISTS', KEYS[4]) == 1 then
  return {'skipped'}
end
local fields = nil
for i = 3, #ARGV, 3 do
  local f, amount, mode = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  if mode == 'put' then
    redis.call('HSETNX', KEYS[2], f, amount)
  else
    if not fields then fields = redis.call('HKEYS', KEYS[2]) end
    local suffix = '|' .. f
    for _, name in ipairs(fields) do
      if string.sub(name, -#suffix) == suffix then redis.call('HINCRBY', KEYS[2], name, amount) end
    end
  end
end
local t = redis.call('TIME')
redis.call('ZADD', KEYS[3], tonumber(t[1]) + tonumber(t[2]) / 1000000, ARGV[2])
redis.call('SET', KEYS[4], '1', 'EX', 86400)
return {'ok'}
"""

# After a rebuild: hold one request in flight again under the new generation (its
# reservation and every chain account's held), unless it was settled or held again under
# it already. Its settle record says "<gen> held", so its settle releases it.
# KEYS: loaded marker, settle record, reserved ("" unused when unlimited), then each chain
# account's held. ARGV: the generation to hold under, estimate, unlimited.
# {'ok'} | {'done'} (settled or held already) | {'other'} (another generation now).
REHOLD = r"""
local gen = redis.call('GET', KEYS[1])
if gen ~= ARGV[1] then return {'other'} end
local done = redis.call('GET', KEYS[2])
if done and string.sub(done, 1, #gen + 1) == gen .. ' ' then return {'done'} end
if ARGV[3] ~= '1' then redis.call('INCRBY', KEYS[3], ARGV[2]) end
for i = 4, #KEYS do redis.call('INCRBY', KEYS[i], ARGV[2]) end
redis.call('SET', KEYS[2], gen .. ' held', 'EX', 86400)
return {'ok'}
"""

# KEYS: version counter. ARGV: channel, message. The event carries the version it made,
# so a listener that sees a gap knows it missed one and reloads.
PUBLISH = r"""
local v = redis.call('INCR', KEYS[1])
redis.call('PUBLISH', ARGV[1], v .. ' ' .. ARGV[2])
return v
"""

# KEYS: the lock. ARGV: its owner's token. Delete only one's own lock.
UNLOCK = r"""
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
