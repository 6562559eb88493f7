"""The Redis scripts of the online feature store (:mod:`driftline.sinks.feature_store`).

:data:`APPLY` applies one partition batch atomically: if the partition's
stored offset is still ``ARGV[2]``, it merges every entity's bucket rings and
``last`` values (the newer event time wins), drops buckets older than the ring
keeps, refreshes the TTL, and stores the new offset and watermark; else it
changes nothing and answers the stored offset.  Arguments, per call::

    KEYS  offsets hash (a shard's fence on a cluster), then one entity hash per entity
    ARGV  partition, expected offset ('<N': at most N), new offset, watermark ('' for none),
          now ms, groups;
          per group: V value fields, D distinct fields, TTL ms, F flags, R rings,
                     R x (resolution ms, buckets kept), entities;
          per entity: newest event ms, L last values, L x ('l:' field, event ms, JSON),
                      R ring blobs (binary, see :mod:`driftline.features.codec`; '' for none)

Flags, per group: ``1`` the group's *live mark* key follows in KEYS (before its
entities): ``p{partition}`` is set there, unless it is set already, to the
stored offset before this batch (the offset from which this group version is
written live: the seam a backfill hands over at), and ``h{partition}`` to the
new offset; a write finding ``h`` (or the mark) behind the stored offset
records ``g{partition}`` = ``h:stored``, once: a writer without the version
wrote the partition after its mark (a gap the backfill cannot fill); ``2`` a ``last`` value
replaces a stored one only when strictly newer (a backfill writes older
offsets after newer ones, so on a tie the stored one is the later record's).

Rings are merged as a merge join over the two blobs (both in ascending bucket
id, as every writer writes them): a stored bucket the batch does not touch is
copied as bytes, never unpacked, so a script's cost follows the buckets a batch
touches, not the buckets the entities hold.  The merge (Chan et al.'s parallel
summaries, KMV sketches capped at 33 hashes) mirrors
:func:`driftline.features.engine.apply_delta`, the reference implementation it
is tested against on a real Redis.  :data:`TOUCH` records a group version's
last write time, never moving it backwards.  :data:`PROGRESS` moves a
partition's offset and watermark forward, never back (on a cluster, once every
shard has applied a batch).
"""

from __future__ import annotations

__all__ = ["APPLY", "MARK", "PROGRESS", "TOUCH"]

APPLY = r"""
local K_CAP = 33
local offsets = KEYS[1]
local partition = ARGV[1]
local stored = redis.call('HGET', offsets, 'p' .. partition) or '-1'
local expected = ARGV[2]
if string.byte(expected, 1) == 60 then
  -- '<N': a shard's fence, which may lag the batch's start (no record of the
  -- shard in between) but must not have passed it
  if tonumber(stored) > tonumber(string.sub(expected, 2)) then return {0, stored} end
elseif stored ~= expected then
  return {0, stored}
end
local now = ARGV[5]
local ngroups = tonumber(ARGV[6])
local a = 7
local k = 2

local function merge_summary(x, y)
  if y[1] == 0 then return x end
  if x[1] == 0 then return y end
  local an, bn = x[1], y[1]
  local n = an + bn
  local delta = y[2] - x[2]
  local mn = x[4]
  if y[4] < mn then mn = y[4] end
  local mx = x[5]
  if y[5] > mx then mx = y[5] end
  return {n, x[2] + delta * bn / n, x[3] + y[3] + delta * delta * an * bn / n, mn, mx}
end

local function merge_kmv(x, y)
  if #y == 0 then return x end
  if #x == 0 then return y end
  local seen, all = {}, {}
  for _, h in ipairs(x) do if not seen[h] then seen[h] = true; all[#all + 1] = h end end
  for _, h in ipairs(y) do if not seen[h] then seen[h] = true; all[#all + 1] = h end end
  table.sort(all)
  local out = {}
  for j = 1, math.min(#all, K_CAP) do out[j] = all[j] end
  return out
end

-- the position just after the bucket that starts at pos (fixed size without sketches)
local function bucket_end(blob, pos, V, D)
  local p = pos + 8 + 40 * V
  for _ = 1, D do
    local cnt = struct.unpack('<d', blob, p)
    p = p + 8 + 8 * cnt
  end
  return p
end

-- one bucket's summaries and sketches, from pos (just after its id)
local function read_bucket(blob, pos, V, D)
  local sums, sketches = {}, {}
  for v = 1, V do
    local n, mean, m2, mn, mx
    n, mean, m2, mn, mx, pos = struct.unpack('<ddddd', blob, pos)
    sums[v] = {n, mean, m2, mn, mx}
  end
  for d = 1, D do
    local cnt
    cnt, pos = struct.unpack('<d', blob, pos)
    local hs = {}
    for j = 1, cnt do
      hs[j], pos = struct.unpack('<d', blob, pos)
    end
    sketches[d] = hs
  end
  return sums, sketches
end

local function merged_bucket(id, old, opos, blob, dpos, V, D)
  local os, ok = read_bucket(old, opos + 8, V, D)
  local ds, dk = read_bucket(blob, dpos + 8, V, D)
  local parts = {struct.pack('<d', id)}
  for v = 1, V do
    local s = merge_summary(os[v], ds[v])
    parts[#parts + 1] = struct.pack('<ddddd', s[1], s[2], s[3], s[4], s[5])
  end
  for d = 1, D do
    local hs = merge_kmv(ok[d], dk[d])
    parts[#parts + 1] = struct.pack('<d', #hs)
    for _, h in ipairs(hs) do parts[#parts + 1] = struct.pack('<d', h) end
  end
  return table.concat(parts)
end

-- Without sketches every bucket has the same size, so the stored ring is an array:
-- the index of the first bucket with an id above x is found by bisection, and a
-- batch that touches the newest buckets of a long ring reads a few ids, not all.
local function first_above(blob, n, size, x, lo)
  local hi = n
  while lo < hi do
    local mid = math.floor((lo + hi) / 2)
    if struct.unpack('<d', blob, 1 + mid * size) > x then hi = mid else lo = mid + 1 end
  end
  return lo
end

local function merge_fixed(old, blob, cutoff, V)
  local size = 8 + 40 * V
  local n = #old / size
  local parts = {}
  local k = first_above(old, n, size, cutoff, 0)  -- stored buckets [k, n) are kept
  local run = k
  local dpos, dlen = 1, #blob
  while dpos <= dlen do
    local did = struct.unpack('<d', blob, dpos)
    if did > cutoff and (k >= n or did > struct.unpack('<d', old, 1 + (n - 1) * size)) then
      -- past the newest stored bucket (the usual case: time moves on): this
      -- delta bucket and all after it are new, as they are
      if n > run then parts[#parts + 1] = string.sub(old, 1 + run * size, n * size) end
      parts[#parts + 1] = string.sub(blob, dpos)
      return table.concat(parts)
    end
    if did > cutoff then
      local at = first_above(old, n, size, did - 1, k)  -- first stored id >= did
      if at > run then parts[#parts + 1] = string.sub(old, 1 + run * size, at * size) end
      if at < n and struct.unpack('<d', old, 1 + at * size) == did then
        parts[#parts + 1] = merged_bucket(did, old, 1 + at * size, blob, dpos, V, 0)
        at = at + 1
      else
        parts[#parts + 1] = string.sub(blob, dpos, dpos + size - 1)
      end
      run, k = at, at
    end
    dpos = dpos + size
  end
  if run < n then parts[#parts + 1] = string.sub(old, 1 + run * size, n * size) end
  return table.concat(parts)
end

-- the id of the bucket at pos, or nil past the end
local function id_at(blob, pos)
  if pos <= #blob then return (struct.unpack('<d', blob, pos)) end
  return nil
end

-- The ring blob after merging a delta blob into a stored one and dropping ids <= cutoff.
-- Both blobs hold buckets in ascending id (as every writer writes them), so this is a
-- merge join: stored buckets the delta does not touch are copied as bytes (runs of
-- them as one substring), and only buckets in both are unpacked and merged.
local function merge_ring(old, blob, cutoff, V, D)
  if D == 0 then return merge_fixed(old, blob, cutoff, V) end
  local parts = {}
  local opos, dpos = 1, 1
  local oid, did = id_at(old, 1), id_at(blob, 1)
  while oid ~= nil and oid <= cutoff do
    opos = bucket_end(old, opos, V, D); oid = id_at(old, opos)
  end
  while did ~= nil and did <= cutoff do
    dpos = bucket_end(blob, dpos, V, D); did = id_at(blob, dpos)
  end
  local run = opos  -- start of the stored buckets not yet copied
  while did ~= nil do  -- once the delta is used up, the rest of the stored ring is kept
    if oid ~= nil and oid < did then
      opos = bucket_end(old, opos, V, D); oid = id_at(old, opos)
    else
      if opos > run then parts[#parts + 1] = string.sub(old, run, opos - 1) end
      local dend = bucket_end(blob, dpos, V, D)
      if oid == did then
        parts[#parts + 1] = merged_bucket(did, old, opos, blob, dpos, V, D)
        opos = bucket_end(old, opos, V, D); oid = id_at(old, opos)
      else
        parts[#parts + 1] = string.sub(blob, dpos, dend - 1)
      end
      run = opos
      dpos = dend; did = id_at(blob, dpos)
    end
  end
  if run <= #old then parts[#parts + 1] = string.sub(old, run) end
  return table.concat(parts)
end

for _ = 1, ngroups do
  local V, D = tonumber(ARGV[a]), tonumber(ARGV[a + 1])
  local ttl, flags, R = tonumber(ARGV[a + 2]), tonumber(ARGV[a + 3]), tonumber(ARGV[a + 4])
  a = a + 5
  if flags % 2 == 1 then
    local mk, pf = KEYS[k], 'p' .. partition
    k = k + 1
    if redis.call('HSETNX', mk, pf, stored) == 0 then
      -- marked before: the last write of this version here must be the last write
      -- here; if another writer (a config without the version) wrote in between,
      -- keep the first such gap for the backfill to refuse
      local last = redis.call('HGET', mk, 'h' .. partition) or redis.call('HGET', mk, pf)
      if tonumber(last) < tonumber(stored) then
        redis.call('HSETNX', mk, 'g' .. partition, last .. ':' .. stored)
      end
    end
    redis.call('HSET', mk, 'h' .. partition, ARGV[3])
  end
  local strict = flags >= 2
  local res, nb = {}, {}
  for r = 1, R do
    res[r] = tonumber(ARGV[a]); nb[r] = tonumber(ARGV[a + 1]); a = a + 2
  end
  local rfields = {}
  for r = 1, R do rfields[r] = 'r' .. res[r] end
  local nentities = tonumber(ARGV[a]); a = a + 1
  for _ = 1, nentities do
    -- three calls per entity: one HMGET of everything the merge reads, one HSET
    -- of everything that changed, one PEXPIRE (each call from Lua has a cost
    -- comparable to merging a bucket)
    local key = KEYS[k]; k = k + 1
    local delta_newest = tonumber(ARGV[a])
    local nlast = tonumber(ARGV[a + 1])
    local la = a + 2                       -- first last value
    local ra = la + 3 * nlast              -- first ring blob
    a = ra + R
    local wanted = {'_n'}
    for r = 1, R do wanted[1 + r] = rfields[r] end
    for j = 0, nlast - 1 do wanted[2 + R + j] = ARGV[la + 3 * j] end
    local held = redis.call('HMGET', key, unpack(wanted))
    local old_newest = tonumber(held[1] or '')
    local newest = delta_newest
    if old_newest and old_newest > newest then newest = old_newest end
    local set = {'_n', string.format('%.0f', newest), '_u', now}
    for j = 0, nlast - 1 do
      local old = held[2 + R + j]
      local old_t = old and tonumber(string.match(old, '^(-?%d+)|'))
      local t = tonumber(ARGV[la + 3 * j + 1])
      if (not old_t) or t > old_t or (t == old_t and not strict) then
        set[#set + 1] = ARGV[la + 3 * j]
        set[#set + 1] = ARGV[la + 3 * j + 1] .. '|' .. ARGV[la + 3 * j + 2]
      end
    end
    local gone = nil
    for r = 1, R do
      local old = held[1 + r]
      local cutoff = math.floor(newest / res[r]) - nb[r]
      local out = merge_ring(old or '', ARGV[ra + r - 1], cutoff, V, D)
      if #out > 0 then
        if out ~= old then set[#set + 1] = rfields[r]; set[#set + 1] = out end
      elseif old then
        gone = gone or {}
        gone[#gone + 1] = rfields[r]
      end
    end
    redis.call('HSET', key, unpack(set))
    if gone then redis.call('HDEL', key, unpack(gone)) end
    if ttl > 0 then redis.call('PEXPIRE', key, ttl) end
  end
end
redis.call('HSET', offsets, 'p' .. partition, ARGV[3])
if ARGV[4] ~= '' then redis.call('HSET', offsets, 'w' .. partition, ARGV[4]) end
return {1, ARGV[3]}
"""

#: HSET field to ARGV[2] unless it holds a larger number already (workers' clocks differ).
TOUCH = """
local held = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '0')
if tonumber(ARGV[2]) > held then redis.call('HSET', KEYS[1], ARGV[1], ARGV[2]) end
return 1
"""

#: HSET p{ARGV[1]} = ARGV[2] and w{ARGV[1]} = ARGV[3] ('' for none) unless p holds as much.
PROGRESS = """
local held = tonumber(redis.call('HGET', KEYS[1], 'p' .. ARGV[1]) or '-1')
if tonumber(ARGV[2]) <= held then return 0 end
redis.call('HSET', KEYS[1], 'p' .. ARGV[1], ARGV[2])
if ARGV[3] ~= '' then redis.call('HSET', KEYS[1], 'w' .. ARGV[1], ARGV[3]) end
return 1
"""

#: Mark group versions as written live from the stored offset on, unless marked already:
#: KEYS[1] the offsets hash (a shard's fence on a cluster), KEYS[2..] mark keys; ARGV[1]
#: the partition.  Atomic with the writes, like APPLY's flag 1.
MARK = """
local f = redis.call('HGET', KEYS[1], 'p' .. ARGV[1]) or '-1'
for i = 2, #KEYS do redis.call('HSETNX', KEYS[i], 'p' .. ARGV[1], f) end
return f
"""
