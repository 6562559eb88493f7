"""The Redis scripts of the online feature store (:mod:`driftline.sinks.feature_store`).

:data:`APPLY` applies one partition batch atomically: if the partition's
stored offset is still ``ARGV[2]``, it merges every entity's bucket rings and
``last`` values (the newer event time wins), drops buckets older than the ring
keeps, refreshes the TTL, and stores the new offset and watermark; else it
changes nothing and answers the stored offset.  Arguments, per call::

    KEYS  offsets hash, then one entity hash per entity (in argument order)
    ARGV  partition, expected offset, new offset, watermark ('' for none), now ms, groups;
          per group: V value fields, D distinct fields, TTL ms, R rings,
                     R x (resolution ms, buckets kept), entities;
          per entity: newest event ms, L last values, L x ('l:' field, event ms, JSON),
                      R ring blobs (binary, see :mod:`driftline.features.codec`; '' for none)

The merge (Chan et al.'s parallel summaries, KMV sketches capped at 33 hashes) mirrors
:func:`driftline.features.engine.apply_delta`, the reference implementation it
is tested against on a real Redis.  :data:`TOUCH` records a group version's
last write time, never moving it backwards.
"""

from __future__ import annotations

__all__ = ["APPLY", "TOUCH"]

APPLY = r"""
local K_CAP = 33
local offsets = KEYS[1]
local partition = ARGV[1]
local stored = redis.call('HGET', offsets, 'p' .. partition)
if (stored or '-1') ~= ARGV[2] then
  return {0, stored or '-1'}
end
local now = ARGV[5]
local ngroups = tonumber(ARGV[6])
local a = 7
local k = 2

local function read_ring(blob, V, D)
  local ring, ids = {}, {}
  local pos, len = 1, #blob
  while pos <= len do
    local id
    id, pos = struct.unpack('<d', blob, pos)
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
    ring[id] = {sums, sketches}
    ids[#ids + 1] = id
  end
  return ring, ids
end

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

local function write_ring(ring, V, D)
  local ids = {}
  for id, _ in pairs(ring) do ids[#ids + 1] = id end
  table.sort(ids)
  local parts = {}
  for _, id in ipairs(ids) do
    local b = ring[id]
    parts[#parts + 1] = struct.pack('<d', id)
    for v = 1, V do
      local s = b[1][v]
      parts[#parts + 1] = struct.pack('<ddddd', s[1], s[2], s[3], s[4], s[5])
    end
    for d = 1, D do
      local hs = b[2][d]
      parts[#parts + 1] = struct.pack('<d', #hs)
      for _, h in ipairs(hs) do parts[#parts + 1] = struct.pack('<d', h) end
    end
  end
  return table.concat(parts)
end

for _ = 1, ngroups do
  local V, D = tonumber(ARGV[a]), tonumber(ARGV[a + 1])
  local ttl, R = tonumber(ARGV[a + 2]), tonumber(ARGV[a + 3])
  a = a + 4
  local res, nb = {}, {}
  for r = 1, R do
    res[r] = tonumber(ARGV[a]); nb[r] = tonumber(ARGV[a + 1]); a = a + 2
  end
  local nentities = tonumber(ARGV[a]); a = a + 1
  for _ = 1, nentities do
    local key = KEYS[k]; k = k + 1
    local delta_newest = tonumber(ARGV[a]); a = a + 1
    local old_newest = tonumber(redis.call('HGET', key, '_n') or '')
    local newest = delta_newest
    if old_newest and old_newest > newest then newest = old_newest end
    redis.call('HSET', key, '_n', string.format('%.0f', newest), '_u', now)
    local nlast = tonumber(ARGV[a]); a = a + 1
    for _ = 1, nlast do
      local field, t, value = ARGV[a], tonumber(ARGV[a + 1]), ARGV[a + 2]
      a = a + 3
      local held = redis.call('HGET', key, field)
      local held_t = held and tonumber(string.match(held, '^(-?%d+)|'))
      if (not held_t) or t >= held_t then
        redis.call('HSET', key, field, ARGV[a - 2] .. '|' .. value)
      end
    end
    for r = 1, R do
      local blob = ARGV[a]; a = a + 1
      local field = 'r' .. res[r]
      local cutoff = math.floor(newest / res[r]) - nb[r]
      local old = redis.call('HGET', key, field)
      local ring = {}
      if old then
        local oring = read_ring(old, V, D)
        for id, b in pairs(oring) do
          if id > cutoff then ring[id] = b end
        end
      end
      if #blob > 0 then
        local dring = read_ring(blob, V, D)
        for id, b in pairs(dring) do
          if id > cutoff then
            local cur = ring[id]
            if cur == nil then
              ring[id] = b
            else
              local sums, sketches = {}, {}
              for v = 1, V do sums[v] = merge_summary(cur[1][v], b[1][v]) end
              for d = 1, D do sketches[d] = merge_kmv(cur[2][d], b[2][d]) end
              ring[id] = {sums, sketches}
            end
          end
        end
      end
      local out = write_ring(ring, V, D)
      if #out > 0 then
        redis.call('HSET', key, field, out)
      elseif old then
        redis.call('HDEL', key, field)
      end
    end
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
