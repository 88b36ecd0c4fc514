-- riskstream feature store: apply one micro-batch atomically; return what the caller lacks.
--
-- Layout: per kind (entity [+ filter] [+ distinct field]) a fixed number of buckets; an entity
-- value belongs to bucket (hash of the value) mod buckets. A bucket is one string key (data
-- prefix .. bucket number): fixed-width float64 records, each ending with its value's 64-bit
-- hash, appended in arrival order (APPEND: the script never copies what it only extends). The
-- kind's hash holds each bucket's epoch (random when the bucket is created, bumped when it is
-- rewritten by a compaction). The caller keeps a copy of the buckets it has read and sends the
-- epoch and length it expects per bucket: the reply has nothing for a current copy, the records
-- others appended since for a copy that is only behind, the whole bucket otherwise. Invariant: a
-- bucket's epoch lives at least as long as its records (both get TTLs together; the epoch's is
-- renewed on every write), so no epoch means no records. TTLs are a wall-clock backstop; records
-- leave a bucket when a compaction finds them out of every window (event time). Idempotency and
-- the label look-up share one hash per event-time day: field = event id, value = what labels
-- need of the event; the day hashes are indexed in a sorted set (score = end of the day, ms) and
-- deleted once the watermark has passed them by more than the retention (event time).
--
-- Lateness is judged per scope (the partition key: card for transactions, customer for account
-- events) and against the global watermark with a skew allowance: an event is too late when
-- t < (newest counted time of its scope) - lateness  or  t < (global watermark) - skew.
--
-- KEYS[1]             global watermark (largest counted event time, ms)
-- KEYS[2]             scope watermarks (hash: scope value -> largest counted event time, ms)
-- KEYS[3]             index of the seen day hashes (sorted set)
-- KEYS[4..3+nd]       seen hashes, one per event day present in the batch
-- KEYS[4+nd..]        kind hashes (bucket epochs), in kind order
-- ARGV[1..9]          n, nu (distinct ids), nd, lateness ms, seen TTL s, skew ms, retention ms,
--                     ns (distinct scope values), epoch of a new bucket (random)
-- ARGV[10]            per event, little-endian float64 triples: ts, unique id number (1..nu),
--                     scope number (1..ns)
-- ARGV[11]            per event '1' = first occurrence of its id in the batch, else '0'
-- ARGV[12]            per day: "a b" ranges of unique id numbers (ids are ordered by day)
-- ARGV[13]            the days (event-time day numbers, space separated)
-- ARGV[14], ARGV[15]  the scope values, concatenated; their lengths (float64s)
-- ARGV[16], ARGV[17]  the nu unique ids, concatenated; their lengths
-- ARGV[18], ARGV[19]  what the seen hashes keep of each id (see labels.lua), concatenated; lengths
-- then per kind: "write width ttl ncomp nb", data key prefix, the nb buckets the batch touches
--   (space separated), per bucket the expected epoch, the length the caller holds and the bytes
--   its batches still in flight append (float64 triples; epoch 0 = none),
--   per bucket '1' = renew its TTLs, [records by bucket, counts (u16 BE per bucket), per record
--   its event number (float64)] if write, then ncomp x (bucket, expected epoch, length planned
--   over, new records): compare-and-set compactions.
-- Reply: { flags (per event: '0' already seen, '1' counted, '2' too late: seen, not stored),
--          global watermark before the batch, scope watermarks after the batch (space separated),
--          per kind: per bucket '1' current (the caller's copy plus its batches in flight) /
--          '2' behind (records from the caller's length on) / '0' whole, the records returned
--          (pre-batch), their lengths, the epochs of the buckets returned whole }

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
local nd = tonumber(ARGV[3])
local late_ms = tonumber(ARGV[4])
local seen_ttl = ARGV[5]
local skew_ms = tonumber(ARGV[6])
local retain_ms = tonumber(ARGV[7])
local ns = tonumber(ARGV[8])
local RND = ARGV[9]
local ev = doubles(ARGV[10])
local first = ARGV[11]
-- strings packed into one argument: their lengths are float64s in the next one
local function split(blob, lens)
  local out, pos = {}, 1
  local ls = doubles(lens)
  for x = 1, #ls do
    out[x] = string.sub(blob, pos, pos + ls[x] - 1)
    pos = pos + ls[x]
  end
  return out
end
local svals = split(ARGV[14], ARGV[15])
local ids = split(ARGV[16], ARGV[17])
local seenv = split(ARGV[18], ARGV[19])
local KD = 3             -- seen day hashes: KEYS[KD + d]

-- (a) idempotency: which ids were already seen
local seen = {}
local it = string.gmatch(ARGV[12], '%S+')
for d = 1, nd do
  local a, b = tonumber(it()), tonumber(it())
  local vals = redis.call('HMGET', KEYS[KD + d], unpack(ids, a, b))
  for u = a, b do seen[u] = vals[u - a + 1] end
end

-- (b) flags in stream order; global and per-scope watermarks
local wm = tonumber(redis.call('GET', KEYS[1]) or '-1e18')
local run = wm
local srun = {}
if ns > 0 then
  local v = redis.call('HMGET', KEYS[2], unpack(svals, 1, ns))
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
do
  local hs, fs, m = {}, {}, 0
  for s = 1, ns do
    if schanged[s] then
      m = m + 1
      fs[m] = svals[s]
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
          hs[m + 1] = ids[u]
          hs[m + 2] = seenv[u]
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

local sout = {}
for s = 1, ns do sout[s] = string.format('%d', srun[s]) end
local reply = { table.concat(flags), string.format('%d', wm), table.concat(sout, ' ') }
local p = 20
local kk = KD + nd
while p <= #ARGV do
  kk = kk + 1
  local ekey = KEYS[kk]
  local hit = string.gmatch(ARGV[p], '%S+')
  local write, width, ttl, ncomp, nb =
    hit() == '1', tonumber(hit()), hit(), tonumber(hit()), tonumber(hit())
  local dpre = ARGV[p + 1]
  local bids = {}
  for b in string.gmatch(ARGV[p + 2], '%S+') do bids[#bids + 1] = b end
  local known = doubles(ARGV[p + 3])
  local renew = ARGV[p + 4]
  p = p + 5
  local recs, counts, evidx
  if write then
    recs, counts, evidx = ARGV[p], ARGV[p + 1], ARGV[p + 2]
    p = p + 3
  end
  -- (d) compare-and-set compactions planned by a previous batch: applied when the bucket still
  -- has the epoch the planner saw (since then, only appends: the planned prefix is unchanged)
  local compacted = {}
  for c = 1, ncomp do
    local q = p + 4 * (c - 1)
    local b = ARGV[q]
    compacted[b] = true
    local cur = redis.call('HGET', ekey, b)
    if cur == ARGV[q + 1] then
      local dk = dpre .. b
      local v = redis.call('GET', dk) or ''
      local len = tonumber(ARGV[q + 2])
      if #v >= len then
        redis.call('SET', dk, ARGV[q + 3] .. string.sub(v, len + 1), 'KEEPTTL')
        redis.call('HSET', ekey, b, string.format('%d', tonumber(cur) + 1))
        redis.call('HEXPIRE', ekey, ttl, 'FIELDS', 1, b)
      end
    end
  end
  p = p + 4 * ncomp
  -- (e) per bucket: append the batch's counted records; return what the caller's copy lacks:
  -- nothing ('1'), the records others appended since ('2'), or the whole bucket ('0')
  local modes, data, lens, eps = {}, {}, {}, {}
  if nb > 0 then
    local epochs = redis.call('HMGET', ekey, unpack(bids))
    local w = 8 * width
    local keep = nil
    if write and drops then
      local ev = doubles(evidx)
      keep = {}
      for x = 1, #ev do keep[x] = flags[ev[x]] == '1' end
    end
    local hs, m, fs, nt = {}, 0, {}, 0
    local r, off = 0, 1
    for j = 1, nb do
      local b = bids[j]
      local ep = epochs[j]
      local cnt = 0
      if write then
        local hi, lo = string.byte(counts, 2 * j - 1, 2 * j)
        cnt = hi * 256 + lo
      end
      local chunk = ''
      if cnt > 0 then
        if keep then
          local parts, np = {}, 0
          for x = 1, cnt do
            if keep[r + x] then
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
      local dk = dpre .. b
      if not ep and #chunk == 0 and known[3 * j - 2] == 0 and known[3 * j - 1] == 0
          and known[3 * j] == 0 then
        modes[j] = '1'  -- nothing here, and the caller holds nothing
      elseif not ep then
        -- no epoch, no records (the epoch outlives them): created by this batch, or nothing
        modes[j] = '0'
        lens[#lens + 1] = '0'
        if #chunk > 0 then
          redis.call('SET', dk, chunk, 'EX', ttl)
          m = m + 1
          hs[2 * m - 1] = b
          hs[2 * m] = RND
          nt = nt + 1
          fs[nt] = b
          eps[#eps + 1] = RND
        else
          eps[#eps + 1] = '0'
        end
      else
        local pre
        if #chunk > 0 then
          pre = redis.call('APPEND', dk, chunk) - #chunk
        else
          pre = redis.call('STRLEN', dk)
        end
        if string.byte(renew, j) == 49 then
          redis.call('EXPIRE', dk, ttl)
          nt = nt + 1
          fs[nt] = b
        end
        local kl = known[3 * j - 1]
        if tonumber(ep) ~= known[3 * j - 2] or compacted[b] or pre < kl then
          modes[j] = '0'
          if pre > 0 then data[#data + 1] = redis.call('GETRANGE', dk, 0, pre - 1) end
          lens[#lens + 1] = pre
          eps[#eps + 1] = ep
        elseif pre ~= kl + known[3 * j] then
          modes[j] = '2'
          data[#data + 1] = redis.call('GETRANGE', dk, kl, pre - 1)
          lens[#lens + 1] = pre - kl
        else
          modes[j] = '1'
        end
      end
    end
    if m > 0 then redis.call('HSET', ekey, unpack(hs)) end
    if nt > 0 then redis.call('HEXPIRE', ekey, ttl, 'FIELDS', nt, unpack(fs)) end
  end
  reply[#reply + 1] = table.concat(modes)
  reply[#reply + 1] = table.concat(data)
  reply[#reply + 1] = table.concat(lens, ' ')
  reply[#reply + 1] = table.concat(eps, ' ')
end
return reply
