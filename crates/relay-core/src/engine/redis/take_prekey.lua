-- The peer's half of a bundle fetch (the rule of crate::prekeys::StoredPrekeys::hand_out), in
-- the peer's slot, once per marker: run again (the requester's commit lost its race, a resend
-- before the commit), it answers what it took the first time and takes nothing more.
-- KEYS: 1 peer record, 2 prekey hash, 3 one-time prekeys, 4 marker.
-- ARGV: 1 take a one-time prekey ('1' or '0'), 2 marker TTL (seconds).
-- Returns {"kv":…,"key":"<identity hex>","signed":{…},"otp":{…}|null}.
local done = redis.call('GET', KEYS[4])
if done then return done end
local p = redis.call('HMGET', KEYS[1], 'key', 'kv')
if not p[2] then return redis.error_reply('UNKNOWN_PEER') end
local pk = redis.call('HMGET', KEYS[2], 'kv', 'key', 'signed')
if not p[1] or p[1] == '' or pk[1] ~= p[2] or pk[2] ~= p[1] or not pk[3] then
  return redis.error_reply('NO_PREKEYS')
end
local otp = false
if ARGV[1] == '1' then otp = redis.call('LPOP', KEYS[3]) end
local taken = '{"kv":' .. p[2] .. ',"key":"' .. p[1] .. '","signed":' .. pk[3] .. ',"otp":' .. (otp or 'null') .. '}'
redis.call('SET', KEYS[4], taken, 'EX', ARGV[2])
return taken
