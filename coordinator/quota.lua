-- The janitor of the regions' streams (coordinator/quota.py): run by the active aggregator
-- just before each read, in the same MULTI, so no entry reaches it unsized. For each stream it
-- walks the entries the consumer group has not been given yet, one at a time (an entry's bytes
-- are copied into Lua only to be measured, never returned), and deletes every entry larger than
-- the largest honest one of its kind and every entry past the region's backlog bound, recording
-- each deletion as a rejection under the entry, like the aggregator's own.
--
-- KEYS: lease, the current model's blob, rejected (hash), rejections (stream), then the streams
-- ARGV: holder ('' without a lease), group, now, version, update factor, update margin (bytes),
--       update bound without a model, result bound, max entries, bytes floor, honest backlog,
--       rejections recorded one by one per stream and call, entries examined per stream and
--       call, then per stream: kind ('update' | 'evaluation'), region, the last entry id this
--       janitor examined ('' none), the entries it kept that are still undelivered, their bytes
-- Returns -1 when the lease is another's (nothing written), else
--   {update bound, result bound, bytes bound,
--    per stream: {last examined id, too_large, quota, {kept id, kept size, ...}, reset}}
--   (reset 1: the undelivered entries kept before were delivered since, by another reader)
local lease, model, rejected, rejections = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local holder, group, now, version = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
if holder ~= '' and redis.call('GET', lease) ~= holder then return -1 end

local blob = redis.call('STRLEN', model)
local update_bound = tonumber(ARGV[7])
if blob > 0 then update_bound = math.floor(blob * tonumber(ARGV[5])) + tonumber(ARGV[6]) end
local result_bound = tonumber(ARGV[8])
local max_count, bytes_floor, honest = tonumber(ARGV[9]), tonumber(ARGV[10]), tonumber(ARGV[11])
local max_records, max_scan = tonumber(ARGV[12]), tonumber(ARGV[13])
-- bytes: never below what the honest backlog of the largest honest updates takes, twice
local max_bytes = math.max(bytes_floor, 2 * honest * update_bound)

-- entry ids compared as numbers written in decimal (no leading zeros): Lua's doubles would
-- round a sequence number near 2^64, which anybody may choose with an explicit id
local function split(id)
  local ms, seq = string.match(id, '^(%d+)-(%d+)$')
  return ms or id, seq or '0'
end
local function less(a, b)
  if #a ~= #b then return #a < #b end
  return a < b
end
local function before(x, y)
  local xm, xs = split(x)
  local ym, ys = split(y)
  if xm ~= ym then return less(xm, ym) end
  return less(xs, ys)
end

local function last_delivered(stream)
  if redis.call('EXISTS', stream) == 0 then return nil end
  for _, g in ipairs(redis.call('XINFO', 'GROUPS', stream)) do
    local info = {}
    for k = 1, #g, 2 do info[g[k]] = g[k + 1] end
    if info['name'] == group then return info['last-delivered-id'] end
  end
  return nil
end

-- one rejection: under the entry (``entry:<stream> <id>``, the id it claimed beside it), in the
-- hash and on the stream; a sweep's summary of the deletions past the per-call record count goes
-- on the stream only, under ``sweep:<stream> <last id>`` (it names no one entry)
local function record(stream, region, kind, ref, reason, detail, claimed)
  local fields = {'id', ref, 'reason', reason, 'detail', detail, 'at', now, 'version', version,
                  'region', region}
  if claimed ~= nil then
    redis.call('HSET', rejected, ref, reason)
    fields[#fields + 1] = 'claimed'
    fields[#fields + 1] = claimed
  end
  if kind == 'evaluation' then
    fields[#fields + 1] = 'kind'
    fields[#fields + 1] = 'evaluation'
  end
  redis.call('XADD', rejections, 'MAXLEN', '~', '1000000', '*', unpack(fields))
end

local out = {update_bound, result_bound, max_bytes}
local base = 14  -- the first stream's parameters in ARGV
for s = 5, #KEYS do
  local stream = KEYS[s]
  local a = base + (s - 5) * 5
  local kind, region, from = ARGV[a], ARGV[a + 1], ARGV[a + 2]
  local kept_count, kept_bytes = tonumber(ARGV[a + 3]), tonumber(ARGV[a + 4])
  local bound = (kind == 'update') and update_bound or result_bound
  local cursor = last_delivered(stream)
  local kept, too_large, over, recorded = {}, 0, 0, 0
  if cursor == nil then
    out[#out + 1] = {from, 0, 0, kept, 0}
  else
    local reset = 0
    if from == '' or before(from, cursor) then
      kept_count, kept_bytes, reset = 0, 0, 1  -- delivered since (another reader, or a start)
    else
      cursor = from
    end
    for _ = 1, max_scan do
      local got = redis.call('XRANGE', stream, '(' .. cursor, '+', 'COUNT', 1)
      if #got == 0 then break end
      local id, fields = got[1][1], got[1][2]
      cursor = id
      local size, claimed = 0, nil
      for k = 1, #fields, 2 do
        size = size + string.len(fields[k]) + string.len(fields[k + 1])
        if fields[k] == 'id' then claimed = string.sub(fields[k + 1], 1, 200) end
      end
      got, fields = nil, nil
      local reason, detail = nil, nil
      if size > bound then
        reason = 'too_large'
        detail = size .. ' bytes > ' .. bound .. ', the largest honest ' .. kind .. ' entry'
        too_large = too_large + 1
      elseif kept_count >= max_count or kept_bytes + size > max_bytes then
        reason = 'quota'
        detail = 'region ' .. region .. "'s undelivered " .. kind .. ' entries (' .. kept_count
          .. ', ' .. kept_bytes .. ' bytes) + ' .. size .. ' bytes > ' .. max_count
          .. ' entries or ' .. max_bytes .. ' bytes'
        over = over + 1
      end
      if reason == nil then
        kept_count, kept_bytes = kept_count + 1, kept_bytes + size
        kept[#kept + 1] = id
        kept[#kept + 1] = size
      else
        redis.call('XDEL', stream, id)
        if recorded < max_records then
          local ref = 'entry:' .. stream .. ' ' .. id
          record(stream, region, kind, ref, reason, detail, claimed or ref)
          recorded = recorded + 1
        end
      end
      if size > 1048576 then collectgarbage('collect') end  -- the entry's copy, freed now
    end
    local unrecorded = too_large + over - recorded
    if unrecorded > 0 then  -- a flood of entries: the rest in one line, not one entry each
      record(stream, region, kind, 'sweep:' .. stream .. ' ' .. cursor, 'quota', unrecorded
        .. ' more entries of region ' .. region .. ' deleted by this sweep (too large or past'
        .. ' the backlog bound)', nil)
    end
    out[#out + 1] = {cursor, too_large, over, kept, reset}
  end
end
return out
