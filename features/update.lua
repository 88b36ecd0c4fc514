-- riskstream feature store: apply one micro-batch atomically; return what the caller lacks.
--
-- Layout: per kind (entity [+ filter] [+ distinct field]) and entity value, one string key
-- (data prefix .. value) of fixed-width float64 records, appended in arrival order (APPEND: the
-- script never copies a value it only extends), and the value's version in the kind's hash
-- (field = entity value). Every write of a value bumps its version; a new value starts at a random
-- one. The caller sends the version it expects per value: when it is current the caller's copy of
-- the records is exact and nothing is returned for that value, otherwise the whole pre-batch value
-- is. Invariant: a value's version lives at least as long as its records (both get TTLs together;
-- the version's is renewed on every write), so no version means no records. TTLs are a wall-clock
-- backstop. Idempotency and the label look-up share one hash per event-time day: field = event
-- id, value = what labels need of the event; the day hashes are indexed in a sorted set (score =
-- end of the day, ms) and deleted once the watermark has passed them by more than the retention
-- (event time).
--
-- Lateness is judged per scope (the partition key: card for transactions, customer for account
-- events) and against the global watermark with a skew allowance: an event is too late when
-- t < (newest counted time of its scope) - lateness  or  t < (global watermark) - skew.
--
-- KEYS[1]             global watermark (largest counted event time, ms)
-- KEYS[2]             scope watermarks (hash: scope value -> largest counted event time, ms)
-- KEYS[3]             index of the seen day hashes (sorted set)
-- KEYS[4..3+nd]       seen hashes, one per event day present in the batch
-- KEYS[4+nd..3+nd+ng] per entity group: index of its values by newest event time (sorted set)
-- KEYS[4+nd+ng..]     kind hashes (versions), in kind order
-- ARGV[1..9]          n, nu (distinct ids), nd, lateness ms, seen TTL s, skew ms, retention ms,
--                     ns (distinct scope values), first version of a new value (random)
-- ARGV[10]            per event, little-endian float64 triples: ts, unique id number (1..nu),
--                     scope number (1..ns)
-- ARGV[11]            per event '1' = first occurrence of its id in the batch, else '0'
-- ARGV[12]            per day: "a b" ranges of unique id numbers (ids are ordered by day)
-- ARGV[13]            the days (event-time day numbers, space separated)
-- ARGV[14..13+ns]     scope values
-- then nu unique ids, then their nu seen values
-- then ng, and per entity group: K, K values, "reach ms, then per kind its index covers: KEYS
--   position and data prefix", per value float64 newest event time in the batch (< -1e299: none).
--   Every event of this batch or a later one that may still be counted (or is a redelivery) has
--   t >= oldest = min(watermark after the batch - skew, earliest such event of this batch), not
--   below the watermark before the batch - skew. A value whose newest event time is more than
--   "reach ms" (the longest reach of those kinds) behind that can no longer be in any window of
--   such an event: its records and versions are deleted (event-time expiry of idle entities;
--   at most 500 per group and batch). Not "behind the watermark after the batch": a batch may
--   span more event time than the skew, and its early events need the values' records.
-- then per kind: "group write width ttl ncomp", data key prefix, per value the expected version
--   (float64, 0 = none), per value '1' = renew its TTLs, [records, counts (u16 BE per value),
--   positions (float64 per event: record number within the kind, 0 = none)] if write, then
--   ncomp x (field, expected version, length, new value): compare-and-set compactions.
-- Reply: { flags (per event: '0' already seen, '1' counted, '2' too late: seen, not stored),
--          global watermark before the batch, scope watermarks after the batch (space separated),
--          per kind: per value '1' the caller's copy is current / '0' returned here, the returned
--          values' records (pre-batch), their lengths and versions after the batch }

local CHUNK = 100
local FMT = '<' .. string.rep('d', CHUNK)
local function doubles(s)
  local total = string.len(s) / 8
  local out, pos, m = {}, 1, 0
  while m + CHUNK <= total do
    local t = { struct.unpack(FMT, s, pos) }
    for j = 1, CHUNK do out[m + j] = t[j] end
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

local DAY = 86400000
local n = tonumber(ARGV[1])
local nu = tonumber(ARGV[2])
local nd = tonumber(ARGV[3])
local late_ms = tonumber(ARGV[4])
local seen_ttl = ARGV[5]
local skew_ms = tonumber(ARGV[6])
local retain_ms = tonumber(ARGV[7])
local ns = tonumber(ARGV[8])
local RND = ARGV[9]
local ev = doubles(ARGV[10])
local first = ARGV[11]
local SV = 13            -- scope values: ARGV[SV + s]
local ID = 13 + ns       -- ids: ARGV[ID + u]; seen values: ARGV[ID + nu + u]
local KD = 3             -- seen day hashes: KEYS[KD + d]

-- (a) idempotency: which ids were already seen
local seen = {}
local it = string.gmatch(ARGV[12], '%S+')
for d = 1, nd do
  local a, b = tonumber(it()), tonumber(it())
  local vals = redis.call('HMGET', KEYS[KD + d], unpack(ARGV, ID + a, ID + b))
  for u = a, b do seen[u] = vals[u - a + 1] end
end

-- (b) flags in stream order; global and per-scope watermarks
local wm = tonumber(redis.call('GET', KEYS[1]) or '-1e18')
local run = wm
local srun = {}
if ns > 0 then
  local v = redis.call('HMGET', KEYS[2], unpack(ARGV, SV + 1, SV + ns))
  for s = 1, ns do srun[s] = tonumber(v[s] or '-1e18') end
end
local schanged = {}
local flags = {}
local drops = false
for i = 1, n do
  local t, u, s = ev[3 * i - 2], ev[3 * i - 1], ev[3 * i]
  if string.byte(first, i) == 49 and not seen[u] then
    if t < srun[s] - late_ms or t < run - skew_ms then
      flags[i] = '2'
      drops = true
    else
      flags[i] = '1'
      if t > run then run = t end
      if t > srun[s] then
        srun[s] = t
        schanged[s] = true
      end
    end
  else
    flags[i] = '0'
    if string.byte(first, i) == 49 then drops = true end
  end
end
if run > wm then redis.call('SET', KEYS[1], string.format('%d', run)) end
-- the earliest time an event of this batch (counted or redelivered) or of a later one may have
-- and still need exact values: the idle sweep must keep what those events' windows reach
local oldest = run - skew_ms
for i = 1, n do
  local t = ev[3 * i - 2]
  if flags[i] ~= '2' and t < oldest then oldest = t end
end
if oldest < wm - skew_ms then oldest = wm - skew_ms end
do
  local hs, fs, m = {}, {}, 0
  for s = 1, ns do
    if schanged[s] then
      m = m + 1
      fs[m] = ARGV[SV + s]
      hs[2 * m - 1] = fs[m]
      hs[2 * m] = string.format('%d', srun[s])
    end
  end
  if m > 0 then
    redis.call('HSET', KEYS[2], unpack(hs))
    redis.call('HEXPIRE', KEYS[2], seen_ttl, 'FIELDS', m, unpack(fs))
  end
end
-- day hashes the watermark has passed by more than the retention: gone (event-time expiry)
local cutoff = run - retain_ms
if run > wm then
  local old = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', string.format('%d', cutoff))
  if #old > 0 then
    for x = 1, #old, 1000 do
      redis.call('DEL', unpack(old, x, math.min(x + 999, #old)))
    end
    redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', string.format('%d', cutoff))
  end
end

-- (c) remember the new ids (not in day hashes that are already past the retention)
do
  it = string.gmatch(ARGV[12], '%S+')
  local dit = string.gmatch(ARGV[13], '%S+')
  local isnew = {}
  for i = 1, n do
    if flags[i] ~= '0' then isnew[ev[3 * i - 1]] = true end
  end
  for d = 1, nd do
    local a, b = tonumber(it()), tonumber(it())
    local dend = (tonumber(dit()) + 1) * DAY
    local hs, m = {}, 0
    if dend > cutoff then
      for u = a, b do
        if isnew[u] then
          hs[m + 1] = ARGV[ID + u]
          hs[m + 2] = ARGV[ID + nu + u]
          m = m + 2
        end
      end
    end
    if m > 0 then
      redis.call('HSET', KEYS[KD + d], unpack(hs))
      redis.call('EXPIRE', KEYS[KD + d], seen_ttl)
      redis.call('ZADD', KEYS[3], string.format('%d', dend), KEYS[KD + d])
    end
  end
end

-- entity groups
local p = ID + 2 * nu + 1
local ng = tonumber(ARGV[p]); p = p + 1
local gstart, gsize = {}, {}
local KG = KD + nd
for g = 1, ng do
  local k = tonumber(ARGV[p])
  gstart[g] = p + 1
  gsize[g] = k
  local meta = string.gmatch(ARGV[p + 1 + k], '%S+')
  local reach = tonumber(meta() or '0')
  local ikeys, ipre = {}, {}
  for x in meta do
    ikeys[#ikeys + 1] = KEYS[tonumber(x)]
    ipre[#ipre + 1] = meta()
  end
  if #ikeys > 0 then
    local idx = KEYS[KG + g]
    local newest = doubles(ARGV[p + 2 + k])
    local zs, m = {}, 0
    for j = 1, k do
      if newest[j] > -1e299 then
        zs[m + 1] = string.format('%d', newest[j])
        zs[m + 2] = ARGV[p + j]
        m = m + 2
      end
    end
    if m > 0 then redis.call('ZADD', idx, 'GT', unpack(zs)) end
    if run > wm then
      local old = redis.call('ZRANGEBYSCORE', idx, '-inf', string.format('%d', oldest - reach),
        'LIMIT', 0, 500)
      if #old > 0 then
        for x, key in ipairs(ikeys) do
          redis.call('HDEL', key, unpack(old))
          local dks = {}
          for y = 1, #old do dks[y] = ipre[x] .. old[y] end
          redis.call('DEL', unpack(dks))
        end
        redis.call('ZREM', idx, unpack(old))
      end
    end
  end
  p = p + 3 + k
end

local sout = {}
for s = 1, ns do sout[s] = string.format('%d', srun[s]) end
local reply = { table.concat(flags), string.format('%d', wm), table.concat(sout, ' ') }
local kk = KG + ng
while p <= #ARGV do
  kk = kk + 1
  local vkey = KEYS[kk]
  local hit = string.gmatch(ARGV[p], '%S+')
  local g, write, width, ttl, ncomp =
    tonumber(hit()), hit() == '1', tonumber(hit()), hit(), tonumber(hit())
  local dpre = ARGV[p + 1]
  local known = doubles(ARGV[p + 2])
  local tflag = ARGV[p + 3]
  p = p + 4
  local recs, counts, posmap
  if write then
    recs, counts, posmap = ARGV[p], ARGV[p + 1], ARGV[p + 2]
    p = p + 3
  end
  -- (d) compare-and-set compactions planned by a previous batch: applied when the value still
  -- has the epoch and the length the planner expected (its own appends since included)
  local compacted = {}
  for c = 1, ncomp do
    local q = p + 5 * (c - 1)
    local f = ARGV[q]
    compacted[f] = true
    local cur = redis.call('HGET', vkey, f)
    if cur == ARGV[q + 1] then
      local dk = dpre .. f
      local v = redis.call('GET', dk)
      local len = tonumber(ARGV[q + 2])
      if v and #v == tonumber(ARGV[q + 3]) and #v >= len then
        redis.call('SET', dk, ARGV[q + 4] .. string.sub(v, len + 1), 'KEEPTTL')
        redis.call('HSET', vkey, f, string.format('%d', tonumber(cur) + 1))
        redis.call('HEXPIRE', vkey, ttl, 'FIELDS', 1, f)
      end
    end
  end
  p = p + 5 * ncomp
  -- (e) per value: its records unless the caller's copy is current (same epoch and length);
  -- append the batch's counted records
  local a, k = gstart[g], gsize[g]
  local modes, data, lens, eps = {}, {}, {}, {}
  if k > 0 then
    local epochs = redis.call('HMGET', vkey, unpack(ARGV, a, a + k - 1))
    local w = 8 * width
    local dropped = nil
    if write and drops then
      local pos = doubles(posmap)
      for i = 1, n do
        if flags[i] ~= '1' and pos[i] > 0 then
          dropped = dropped or {}
          dropped[pos[i]] = true
        end
      end
    end
    local hs, m, fs, nt = {}, 0, {}, 0
    local r, off = 0, 1
    for j = 1, k do
      local f = ARGV[a + j - 1]
      local ep = epochs[j]
      local cnt = 0
      if write then
        local hi, lo = string.byte(counts, 2 * j - 1, 2 * j)
        cnt = hi * 256 + lo
      end
      local chunk = ''
      if cnt > 0 then
        if dropped then
          local parts, np = {}, 0
          for x = 1, cnt do
            if not dropped[r + x] then
              np = np + 1
              parts[np] = string.sub(recs, off + (x - 1) * w, off + x * w - 1)
            end
          end
          chunk = table.concat(parts)
        else
          chunk = string.sub(recs, off, off + cnt * w - 1)
        end
        r = r + cnt
        off = off + cnt * w
      end
      if not ep then
        -- no epoch, no records (the epoch outlives them): created by this batch, or nothing
        modes[j] = '0'
        lens[#lens + 1] = '0'
        if #chunk > 0 then
          redis.call('SET', dpre .. f, chunk, 'EX', ttl)
          m = m + 1
          hs[2 * m - 1] = f
          hs[2 * m] = RND
          nt = nt + 1
          fs[nt] = f
          eps[#eps + 1] = RND
        else
          eps[#eps + 1] = '0'
        end
      else
        local dk = dpre .. f
        local pre
        if #chunk > 0 then
          pre = redis.call('APPEND', dk, chunk) - #chunk
        else
          pre = redis.call('STRLEN', dk)
        end
        if string.byte(tflag, j) == 49 then
          redis.call('EXPIRE', dk, ttl)
          nt = nt + 1
          fs[nt] = f
        end
        if tonumber(ep) == known[2 * j - 1] and pre == known[2 * j] and not compacted[f] then
          modes[j] = '1'
        else
          modes[j] = '0'
          if pre > 0 then data[#data + 1] = redis.call('GETRANGE', dk, 0, pre - 1) end
          lens[#lens + 1] = pre
          eps[#eps + 1] = ep
        end
      end
    end
    if m > 0 then redis.call('HSET', vkey, unpack(hs)) end
    if nt > 0 then redis.call('HEXPIRE', vkey, ttl, 'FIELDS', nt, unpack(fs)) end
  end
  reply[#reply + 1] = table.concat(modes)
  reply[#reply + 1] = table.concat(data)
  reply[#reply + 1] = table.concat(lens, ' ')
  reply[#reply + 1] = table.concat(eps, ' ')
end
return reply
