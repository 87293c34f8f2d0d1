local owner = redis.call('GET', KEYS[3])
-- A key id left by a removal that did not finish: its key record is still to be deleted
-- (unless the same key owns the name again).
local tomb = redis.call('GET', KEYS[7])
local stale = ''
if tomb then
  if tomb == owner then redis.call('DEL', KEYS[7]) else stale = tomb end
end
if redis.call('EXISTS', KEYS[1]) == 0 then return {2, '', stale} end
if redis.call('ZCARD', KEYS[2]) > 0 then return {0, '', stale} end
local p = redis.call('HMGET', KEYS[1], 'key', 'reg', 'seen')
local now = tonumber(ARGV[1])
local unpublished = (not p[1] or p[1] == '') and math.max(0, now - tonumber(p[2] or ARGV[1])) >= tonumber(ARGV[2])
local idle = math.max(0, now - tonumber(p[3] or ARGV[1])) >= tonumber(ARGV[3])
if not (unpublished or idle) then return {0, '', stale} end
redis.call('DEL', KEYS[1], KEYS[3], KEYS[4], KEYS[5], KEYS[8], KEYS[9])
for _, k in ipairs(redis.call('ZRANGE', KEYS[6], 0, -1)) do redis.call('DEL', k) end
redis.call('DEL', KEYS[6])
if owner then
  redis.call('DEL', ARGV[4] .. 'sess:' .. owner)
  redis.call('SET', KEYS[7], owner)
end
return {1, owner or '', stale}
