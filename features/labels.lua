-- riskstream feature store: apply a batch of labels atomically (one call).
--
-- KEYS[1]              index of the transactions' seen day hashes (sorted set, score = the time
--                      after which the hash may be deleted; see update.lua)
-- KEYS[2..1+nl]        label-seen hashes, one per label day present (field = event id)
-- KEYS[nl+2..nl+ne+1]  transaction seen hashes of the days a labelled transaction may be in
-- KEYS[nl+ne+2..]      label kind hashes (field = bucket, value = its epoch)
-- ARGV[1..6]           n, nl, ne, nk, seen TTL s, "kind TTL s, epoch of a new
--                      bucket (random), the kinds' data key prefixes" (layout: see update.lua)
-- ARGV[7]              per label day: "a b" ranges of label numbers (labels ordered by day)
-- ARGV[8]              the label days (day numbers, space separated)
-- ARGV[9..8+n]         event ids;  ARGV[9+n..8+2n] label times (ms, text); ARGV[9+2n..8+3n] '1'/'0'
-- A label-seen hash of day d is indexed with the end of day d + 1: it is deleted with the
-- transaction seen hashes it may refer to (a label only finds transactions up to a day later).
-- What update.lua keeps of a transaction (the seen hash's value): float64 time, then per label
-- kind float64 bucket of its entity value (-1: none) and the value's 64-bit hash (8 bytes).
-- A label counts once per event id (the first one that finds its transaction); a fraud label
-- appends the record (transaction time, label time, value hash) to every label kind's bucket of
-- the transaction's entity value.
-- Reply: { fraud labels applied, labels applied, unknown transaction, duplicates }
local n, nl, ne, nk = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local seen_ttl = ARGV[5]
local kt = string.gmatch(ARGV[6], '%S+')
local kind_ttl = kt()
local RND = kt()
local dpres = {}
for x in kt do dpres[#dpres + 1] = x end
local ids = {}
for i = 1, n do ids[i] = ARGV[8 + i] end
local found = {}
for e = 1, ne do
  local vals = redis.call('HMGET', KEYS[1 + nl + e], unpack(ids))
  for i = 1, n do
    if vals[i] and not found[i] then found[i] = vals[i] end
  end
end
local applied, frauds, unknown, dups = 0, 0, 0, 0
local add = {}
for c = 1, nk do add[c] = {} end
local it = string.gmatch(ARGV[7], '%S+')
local dit = string.gmatch(ARGV[8], '%S+')
local done = {}
for d = 1, nl do
  local a, b = tonumber(it()), tonumber(it())
  local dend = (tonumber(dit()) + 2) * 86400000
  local vals = redis.call('HMGET', KEYS[1 + d], unpack(ids, a, b))
  local hs, m = {}, 0
  for i = a, b do
    if vals[i - a + 1] or done[ids[i]] then
      dups = dups + 1
    elseif not found[i] then
      unknown = unknown + 1
    else
      done[ids[i]] = true
      applied = applied + 1
      hs[m + 1] = ids[i]
      hs[m + 2] = ARGV[8 + 2 * n + i]
      m = m + 2
      if ARGV[8 + 2 * n + i] == '1' then
        frauds = frauds + 1
        local v = found[i]
        local rec = struct.pack('<dd', struct.unpack('<d', v, 1), tonumber(ARGV[8 + n + i]))
        for c = 1, nk do
          local at = 9 + 16 * (c - 1)
          local b = struct.unpack('<d', v, at)
          if b >= 0 then
            local bk = string.format('%d', b)
            add[c][bk] = (add[c][bk] or '') .. rec .. string.sub(v, at + 8, at + 15)
          end
        end
      end
    end
  end
  if m > 0 then
    redis.call('HSET', KEYS[1 + d], unpack(hs))
    redis.call('EXPIRE', KEYS[1 + d], seen_ttl)
    redis.call('ZADD', KEYS[1], string.format('%d', dend), KEYS[1 + d])
  end
end
for c = 1, nk do
  local key = KEYS[1 + nl + ne + c]
  local fs = {}
  for v, _ in pairs(add[c]) do fs[#fs + 1] = v end
  if #fs > 0 then
    local cur = redis.call('HMGET', key, unpack(fs))
    local hs, m = {}, 0
    for j = 1, #fs do
      local dk = dpres[c] .. fs[j]
      if cur[j] then
        redis.call('APPEND', dk, add[c][fs[j]])
        redis.call('EXPIRE', dk, kind_ttl)
      else
        redis.call('SET', dk, add[c][fs[j]], 'EX', kind_ttl)
        hs[m + 1] = fs[j]
        hs[m + 2] = RND
        m = m + 2
      end
    end
    if m > 0 then redis.call('HSET', key, unpack(hs)) end
    redis.call('HEXPIRE', key, kind_ttl, 'FIELDS', #fs, unpack(fs))
  end
end
return { frauds, applied, unknown, dups }
