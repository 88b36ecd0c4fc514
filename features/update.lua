-- riskstream feature store: apply one micro-batch atomically; return the pre-batch records.
--
-- Layout: one hash per kind (entity [+ filter] [+ distinct field]); field = entity value; value =
-- 8-byte header (generation, for compare-and-set compaction) + fixed-width float64 records, appended
-- in arrival order. Field TTLs (HEXPIRE) bound memory. Idempotency and the label look-up share
-- one hash per event-time day: field = event id, value = what labels need of the event.
--
-- KEYS[1]             watermark (largest counted event time, ms)
-- KEYS[2..1+nd]       seen hashes, one per event day present in the batch
-- KEYS[2+nd..]        kind hashes, in kind order
-- ARGV[1..5]          n, nu (distinct ids), nd, lateness ms, seen TTL s
-- ARGV[6]             per event, little-endian float64 pairs: ts, unique id number (1..nu)
-- ARGV[7]             per event '1' = first occurrence of its id in the batch, else '0'
-- ARGV[8]             per day: "a b" ranges of unique id numbers (ids are ordered by day)
-- ARGV[9..8+nu]       unique ids;  ARGV[9+nu..8+2nu]  their seen values
-- then ng, and per entity group: K, K values
-- then per kind: "group write width ttl ncomp", [records, counts (u16 BE per value), positions
--   (float64 per event: record number within the kind, 0 = none)] if write, then ncomp x
--   (field, old header, length, new value)
-- Reply: { flags (per event: '0' already seen, '1' counted, '2' too late: seen, not stored),
--          watermark before the batch, per kind: records of the batch's values, their lengths }

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

local H0 = string.rep('\0', 8)
local n = tonumber(ARGV[1])
local nu = tonumber(ARGV[2])
local nd = tonumber(ARGV[3])
local late_ms = tonumber(ARGV[4])
local seen_ttl = ARGV[5]
local ev = doubles(ARGV[6])
local first = ARGV[7]

-- (a) idempotency: which ids were already seen
local seen = {}
local it = string.gmatch(ARGV[8], '%S+')
for d = 1, nd do
  local a, b = tonumber(it()), tonumber(it())
  local vals = redis.call('HMGET', KEYS[1 + d], unpack(ARGV, 8 + a, 8 + b))
  for u = a, b do seen[u] = vals[u - a + 1] end
end

-- (b) flags in stream order; watermark
local wm = tonumber(redis.call('GET', KEYS[1]) or '-1e18')
local run = wm
local flags = {}
local drops = false
for i = 1, n do
  local t, u = ev[2 * i - 1], ev[2 * i]
  if string.byte(first, i) == 49 and not seen[u] then
    if t < run - late_ms then
      flags[i] = '2'
      drops = true
    else
      flags[i] = '1'
      if t > run then run = t end
    end
  else
    flags[i] = '0'
    if string.byte(first, i) == 49 then drops = true end
  end
end
if run > wm then redis.call('SET', KEYS[1], string.format('%d', run)) end

-- (c) remember the new ids
do
  it = string.gmatch(ARGV[8], '%S+')
  local isnew = {}
  for i = 1, n do
    if flags[i] ~= '0' then isnew[ev[2 * i]] = true end
  end
  for d = 1, nd do
    local a, b = tonumber(it()), tonumber(it())
    local hs, m = {}, 0
    for u = a, b do
      if isnew[u] then
        hs[m + 1] = ARGV[8 + u]
        hs[m + 2] = ARGV[8 + nu + u]
        m = m + 2
      end
    end
    if m > 0 then
      redis.call('HSET', KEYS[1 + d], unpack(hs))
      redis.call('EXPIRE', KEYS[1 + d], seen_ttl)
    end
  end
end

-- entity groups
local p = 9 + 2 * nu
local ng = tonumber(ARGV[p]); p = p + 1
local gstart, gsize = {}, {}
for g = 1, ng do
  local k = tonumber(ARGV[p])
  gstart[g] = p + 1
  gsize[g] = k
  p = p + 1 + k
end

local reply = { table.concat(flags), string.format('%d', wm) }
local kk = 1 + nd
while p <= #ARGV do
  kk = kk + 1
  local key = KEYS[kk]
  local hit = string.gmatch(ARGV[p], '%S+')
  local g, write, width, ttl, ncomp =
    tonumber(hit()), hit() == '1', tonumber(hit()), hit(), tonumber(hit())
  p = p + 1
  local recs, counts, posmap
  if write then
    recs, counts, posmap = ARGV[p], ARGV[p + 1], ARGV[p + 2]
    p = p + 3
  end
  -- (d) compare-and-set compactions planned by a previous batch
  if ncomp > 0 then
    local fl = {}
    for c = 1, ncomp do fl[c] = ARGV[p + 4 * (c - 1)] end
    local cur = redis.call('HMGET', key, unpack(fl))
    local hs, m = {}, 0
    for c = 1, ncomp do
      local v = cur[c]
      local q = p + 4 * (c - 1)
      local len = tonumber(ARGV[q + 2])
      if v and string.sub(v, 1, 8) == ARGV[q + 1] and #v >= len then
        hs[m + 1] = fl[c]
        hs[m + 2] = ARGV[q + 3] .. string.sub(v, len + 1)
        m = m + 2
      end
    end
    if m > 0 then
      redis.call('HSET', key, unpack(hs))
      local fs = {}
      for x = 1, m / 2 do fs[x] = hs[2 * x - 1] end
      redis.call('HEXPIRE', key, ttl, 'FIELDS', m / 2, unpack(fs))
    end
    p = p + 4 * ncomp
  end
  -- (e) read the values' records; append the batch's counted records
  local a, k = gstart[g], gsize[g]
  local lens, data = {}, {}
  if k > 0 then
    local vals = redis.call('HMGET', key, unpack(ARGV, a, a + k - 1))
    for j = 1, k do
      local v = vals[j]
      if v then
        data[j] = v
        lens[j] = #v
      else
        data[j] = ''
        lens[j] = 0
      end
    end
    if write then
      local w = 8 * width
      local dropped = nil
      if drops then
        local pos = doubles(posmap)
        for i = 1, n do
          if flags[i] ~= '1' and pos[i] > 0 then
            dropped = dropped or {}
            dropped[pos[i]] = true
          end
        end
      end
      local hs, fs, m = {}, {}, 0
      local r, off = 0, 1
      for j = 1, k do
        local hi, lo = string.byte(counts, 2 * j - 1, 2 * j)
        local cnt = hi * 256 + lo
        if cnt > 0 then
          local chunk
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
          if #chunk > 0 then
            m = m + 1
            fs[m] = ARGV[a + j - 1]
            hs[2 * m - 1] = fs[m]
            hs[2 * m] = (vals[j] or H0) .. chunk
          end
        end
      end
      if m > 0 then
        redis.call('HSET', key, unpack(hs))
        redis.call('HEXPIRE', key, ttl, 'FIELDS', m, unpack(fs))
      end
    end
  end
  reply[#reply + 1] = table.concat(data)
  reply[#reply + 1] = table.concat(lens, ' ')
end
return reply
