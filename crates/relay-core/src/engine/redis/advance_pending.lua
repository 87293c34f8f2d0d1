-- Only a handshake still at its first stage moves on (HSET keeps the key's TTL).
if redis.call('HGET', KEYS[1], 'stage') ~= ARGV[3] then return 0 end
redis.call('HSET', KEYS[1], 'stage', ARGV[2], 'rec', ARGV[1])
return 1
