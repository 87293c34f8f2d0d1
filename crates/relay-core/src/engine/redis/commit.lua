local v = redis.call('HGET', KEYS[1], 'version')
if not v or v ~= ARGV[1] then return redis.error_reply('CONFLICT') end
local op = ARGV[3]
local result
local stored
if op == 'send' then
  if redis.call('EXISTS', KEYS[6]) == 0 then return redis.error_reply('UNKNOWN_PEER') end
  if ARGV[18] ~= '' then
    local kv = redis.call('HGET', KEYS[6], 'kv') or '0'
    if kv ~= ARGV[18] then return redis.error_reply('PEER_KEY_CHANGED:' .. kv) end
  end
  local len = tonumber(ARGV[16])
  local refused, empty = admit(KEYS[6], KEYS[7], KEYS[9], ARGV[8], len, {ARGV[12], ARGV[13], ARGV[14], ARGV[15]})
  if refused then return redis.error_reply(refused) end
  local seq = redis.call('HINCRBY', KEYS[6], 'next', 1)
  local entry = '{"seq":' .. seq .. ',"from":' .. cjson.encode(ARGV[8]) .. ',"kind":"message","payload":"' .. ARGV[9] ..
    '","timestamp_ms":' .. ARGV[10] .. ',"expires_at":' .. ARGV[11] .. '}'
  redis.call('ZADD', KEYS[7], seq, entry)
  redis.call('ZADD', KEYS[8], ARGV[11], seq)
  count_in(KEYS[6], KEYS[9], ARGV[8], len, empty)
  redis.call('PUBLISH', ARGV[17], ARGV[7])
  result = {'sent', seq, ARGV[10]}
  stored = 'sent|' .. seq .. '|' .. ARGV[10]
elseif op == 'delivered' then
  result = {'sent', tonumber(ARGV[7]), ARGV[8]}
  stored = 'sent|' .. ARGV[7] .. '|' .. ARGV[8]
elseif op == 'ack' then
  local removed = 0
  for a in string.gmatch(ARGV[7], '[^,]+') do
    local s, ts = string.match(a, '^(%d+):(%d+)$')
    if not s then s = a end
    local n = remove_entry(KEYS[3], KEYS[4], KEYS[9], s, ts)
    if n > 0 then redis.call('ZREM', KEYS[8], s) end
    removed = removed + n
  end
  local limit = tonumber(ARGV[8])
  local entries = {}
  if limit > 0 then entries = redis.call('ZRANGEBYSCORE', KEYS[4], '-inf', '+inf', 'LIMIT', 0, limit) end
  result = {'acked', removed, entries}
  stored = 'acked|' .. removed .. '|0'
elseif op == 'publish' then
  local cur = redis.call('HGET', KEYS[3], 'key')
  if not cur then return redis.error_reply('UNKNOWN_PEER') end
  local kv = tonumber(redis.call('HGET', KEYS[3], 'kv'))
  local changed = 0
  if cur ~= ARGV[7] then
    changed = 1
    kv = kv + 1
    redis.call('HSET', KEYS[3], 'key', ARGV[7], 'kv', kv)
  end
  result = {'published', changed, kv}
  stored = 'published|' .. changed .. '|' .. kv
elseif op == 'prekeys' then
  -- The rule of crate::prekeys::StoredPrekeys. KEYS[10] prekey hash (kv, key, signed), KEYS[11]
  -- one-time prekeys (JSON, oldest first). ARGV: 7 the identity key version checked, 8 the
  -- signing key and signed prekey (JSON), 9 the cap, 10.. the one-time prekeys (JSON).
  local p = redis.call('HMGET', KEYS[3], 'key', 'kv')
  if not p[2] then return redis.error_reply('UNKNOWN_PEER') end
  if not p[1] or p[1] == '' then return redis.error_reply('NO_IDENTITY_KEY') end
  if p[2] ~= ARGV[7] then return redis.error_reply('CONFLICT') end
  local held = {}
  local count = 0
  local was = redis.call('HMGET', KEYS[10], 'kv', 'key')
  if was[1] == ARGV[7] and was[2] == p[1] then
    for _, e in ipairs(redis.call('LRANGE', KEYS[11], 0, -1)) do
      held[string.match(e, '"id":(%d+)') or ''] = true
      count = count + 1
    end
  end
  local adding = {}
  for i = 10, #ARGV do
    local id = string.match(ARGV[i], '"id":(%d+)')
    if id and not held[id] then
      held[id] = true
      adding[#adding + 1] = ARGV[i]
    end
  end
  if count + #adding > tonumber(ARGV[9]) then
    return redis.error_reply('PREKEY_QUOTA:' .. count .. ':' .. #adding)
  end
  -- Nothing held for this key: whatever the list holds is an earlier key's.
  if count == 0 then redis.call('DEL', KEYS[11]) end
  for _, e in ipairs(adding) do redis.call('RPUSH', KEYS[11], e) end
  redis.call('HSET', KEYS[10], 'kv', ARGV[7], 'key', p[1], 'signed', ARGV[8])
  result = {'prekeys', count + #adding, 0}
  stored = 'prekeys|' .. (count + #adding) .. '|0'
elseif op == 'bundle' then
  -- The requester's half of a bundle fetch: `TAKE_PREKEY` took it; ARGV[7] is the outcome (JSON).
  result = {'json', 0, ARGV[7]}
  stored = 'json|' .. ARGV[7]
else
  result = {'done', 0, 0}
  stored = 'done|0|0'
end
if redis.call('EXISTS', KEYS[3]) == 1 then redis.call('HSET', KEYS[3], 'seen', ARGV[4]) end
redis.call('HSET', KEYS[1], 'data', ARGV[2], 'version', tonumber(ARGV[1]) + 1)
if ARGV[5] == '1' then
  redis.call('SET', KEYS[2], stored, 'EX', ARGV[6])
  redis.call('ZADD', KEYS[5], ARGV[4], KEYS[2])
end
return result
