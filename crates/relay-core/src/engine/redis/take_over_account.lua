-- A recovery: the name moves from the old key (ARGV[3]) to the new one (ARGV[1]) only if the old
-- key still holds it. KEYS: owner, new session, peer record, old session (one user slot).
-- ARGV: new key id (hex), session bytes, old key id (hex), now (unix seconds).
local o = redis.call('GET', KEYS[1])
if o ~= ARGV[3] then return redis.error_reply('TAKEN') end
redis.call('SET', KEYS[1], ARGV[1])
redis.call('DEL', KEYS[4])
redis.call('HSET', KEYS[2], 'data', ARGV[2], 'version', 0)
if redis.call('EXISTS', KEYS[3]) == 1 then
  -- A new registration as far as expiry goes (ARGV[4]: now). A withdrawn key is a key change:
  -- kv + 1, so a message sealed for the old key is refused.
  local had = redis.call('HGET', KEYS[3], 'key')
  if had and had ~= '' then redis.call('HINCRBY', KEYS[3], 'kv', 1) end
  redis.call('HSET', KEYS[3], 'key', '', 'reg', ARGV[4], 'seen', ARGV[4])
end
return 1
