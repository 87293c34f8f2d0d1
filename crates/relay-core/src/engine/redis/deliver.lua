local done = redis.call('GET', KEYS[4])
if done then return tonumber(done) end
if redis.call('EXISTS', KEYS[1]) == 0 then return redis.error_reply('UNKNOWN_PEER') end
if ARGV[16] ~= '' then
  local kv = redis.call('HGET', KEYS[1], 'kv') or '0'
  if kv ~= ARGV[16] then return redis.error_reply('PEER_KEY_CHANGED:' .. kv) end
end
local message = ARGV[8] == 'message'
local len = tonumber(ARGV[15])
local empty = false
if message then
  local refused
  refused, empty = admit(KEYS[1], KEYS[2], KEYS[5], ARGV[1], len, {ARGV[11], ARGV[12], ARGV[13], ARGV[14]})
  if refused then return redis.error_reply(refused) end
end
local seq = redis.call('HINCRBY', KEYS[1], 'next', 1)
local entry
if message then
  entry = '{"seq":' .. seq .. ',"from":' .. cjson.encode(ARGV[1]) .. ',"kind":"message","payload":"' .. ARGV[2] ..
    '","timestamp_ms":' .. ARGV[3] .. ',"expires_at":' .. ARGV[4] .. '}'
  redis.call('ZADD', KEYS[3], ARGV[4], seq)
  count_in(KEYS[1], KEYS[5], ARGV[1], len, empty)
else
  entry = '{"seq":' .. seq .. ',"from":' .. cjson.encode(ARGV[1]) .. ',"kind":"expired","to":' .. cjson.encode(ARGV[9]) ..
    ',"message_seq":' .. ARGV[10] .. ',"payload":"","timestamp_ms":' .. ARGV[3] .. ',"expires_at":' .. ARGV[4] .. '}'
end
redis.call('ZADD', KEYS[2], seq, entry)
redis.call('SET', KEYS[4], seq, 'EX', ARGV[7])
redis.call('PUBLISH', ARGV[5], ARGV[6])
return seq
