-- riskstream feature store: apply one micro-batch atomically and return the pre-batch state.
--
-- KEYS[1..n]        idempotency keys, one per event:      <prefix>seen:<event_id>
-- KEYS[n+1..n+K]    state hashes, distinct, grouped:      <prefix>f:<entity>:<resolution>:<value>
--                   fields c<bucket> (count, integer) and s<bucket> (sum of amount, float;
--                   only for groups with a sum/mean feature)
-- ARGV[1]  n (number of events)
-- ARGV[2]  TTL of idempotency keys, seconds
-- ARGV[3]  G (number of groups = distinct (entity, resolution))
-- ARGV[4]  per group, space separated: "<keys in group> <keep buckets> <ttl seconds> <has sum 0|1>"
--          (state keys are ordered by group)
-- ARGV[5]  per state key: lo, hi = the bucket range to return (pre-batch state)
-- ARGV[6]  per event: amount, as text (space separated), passed verbatim to HINCRBYFLOAT
-- ARGV[7]  per event, per group: state key number (1..K, 0 if the entity is missing), bucket
-- ARGV[5] and ARGV[7] are packed little-endian float64 (exact for integers < 2^53): decoding them
-- with struct.unpack is several times cheaper than parsing text, on both sides.
--
-- Steps: (a) SET NX EX per event id -> new flag; (b) for every state key, read the buckets in
-- [lo, hi] BEFORE any increment, prune buckets older than (newest bucket - keep + 1) with HDEL;
-- (c) for new events, HINCRBY c<b> 1 (+ HINCRBYFLOAT s<b> amount), unless the event is older than
-- the allowed lateness relative to the key's newest stored bucket ("too late": not stored);
-- (d) EXPIRE every written key to its group's horizon (keys only read keep the TTL of their
-- last write, which already covers all the data they hold).
--
-- Reply: { flags, meta, data }
--   flags  n bytes, '1' = new event, '0' = already seen (redelivery)
--   meta   per state key: "<entries> <floor>"; floor = oldest bucket still accepted for writes
--   data   per state key, its entries: "<bucket> <count> <sum>" (sum 0 for count-only groups)

local CHUNK = 100
local FMT = '<' .. string.rep('d', CHUNK)

local function doubles(s)
  local total = string.len(s) / 8
  local out = {}
  local pos = 1
  local m = 0
  while m + CHUNK <= total do
    local t = { struct.unpack(FMT, s, pos) }
    for j = 1, CHUNK do
      out[m + j] = t[j]
    end
    m = m + CHUNK
    pos = t[CHUNK + 1]
  end
  while m < total do
    local v
    v, pos = struct.unpack('<d', s, pos)
    m = m + 1
    out[m] = v
  end
  return out
end

local n = tonumber(ARGV[1])
local seen_ttl = ARGV[2]
local ngroups = tonumber(ARGV[3])
local nkeys = #KEYS - n

local keep, ttl, hassum = {}, {}, {}
local it = string.gmatch(ARGV[4], '%S+')
local k = 0
for _ = 1, ngroups do
  local cnt = tonumber(it())
  local kp = tonumber(it())
  local tt = it()
  local hs = it() == '1'
  for _ = 1, cnt do
    k = k + 1
    keep[k] = kp
    ttl[k] = tt
    hassum[k] = hs
  end
end

local lohi = doubles(ARGV[5])

-- (a) idempotency
local flags = {}
for i = 1, n do
  if redis.call('SET', KEYS[i], '1', 'NX', 'EX', seen_ttl) then
    flags[i] = '1'
  else
    flags[i] = '0'
  end
end

-- (b) pre-batch state + pruning
local meta, data, floor = {}, {}, {}
local nd = 0
for j = 1, nkeys do
  local key = KEYS[n + j]
  local h = redis.call('HGETALL', key)
  local nh = #h
  if nh == 0 then
    floor[j] = -math.huge
    meta[j] = '0 -1e18'
  else
    local bn, bstr, sv = {}, {}, {}
    local maxb = nil
    for x = 1, nh, 2 do
      local f = h[x]
      local bs = string.sub(f, 2)
      local b = tonumber(bs)
      bn[x] = b
      bstr[x] = bs
      if string.byte(f, 1) == 115 then -- 's'
        sv[bs] = h[x + 1]
      end
      if maxb == nil or b > maxb then maxb = b end
    end
    local fl = maxb - keep[j] + 1
    floor[j] = fl
    local top = lohi[2 * j]
    if maxb > top then top = maxb end
    local prune = top - keep[j] + 1
    local del, ndel = nil, 0
    local cnt = 0
    local l, u = lohi[2 * j - 1], lohi[2 * j]
    for x = 1, nh, 2 do
      local b = bn[x]
      if b < prune then
        if del == nil then del = {} end
        ndel = ndel + 1
        del[ndel] = h[x]
      end
      if b >= l and b <= u and string.byte(h[x], 1) == 99 then -- 'c'
        local bs = bstr[x]
        data[nd + 1] = bs
        data[nd + 2] = h[x + 1]
        data[nd + 3] = sv[bs] or '0'
        nd = nd + 3
        cnt = cnt + 1
      end
    end
    for x = 1, ndel, 500 do
      redis.call('HDEL', key, unpack(del, x, math.min(x + 499, ndel)))
    end
    meta[j] = cnt .. ' ' .. string.format('%d', fl)
  end
end

-- (c) increments of the new events
local amounts = {}
it = string.gmatch(ARGV[6], '%S+')
for i = 1, n do
  amounts[i] = it()
end
local written = {}
local refs = doubles(ARGV[7])
local r = 0
for i = 1, n do
  local new = flags[i] == '1'
  for _ = 1, ngroups do
    local kk = refs[r + 1]
    local b = refs[r + 2]
    r = r + 2
    if new and kk > 0 and b >= floor[kk] then
      local key = KEYS[n + kk]
      local bs = string.format('%d', b)
      redis.call('HINCRBY', key, 'c' .. bs, 1)
      if hassum[kk] then
        redis.call('HINCRBYFLOAT', key, 's' .. bs, amounts[i])
      end
      written[kk] = true
    end
  end
end

-- (d) idle entities disappear after the horizon
for kk in pairs(written) do
  redis.call('EXPIRE', KEYS[n + kk], ttl[kk])
end

return { table.concat(flags), table.concat(meta, ' '), table.concat(data, ' ') }
