for _, sn in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[2])) do redis.call('DEL', ARGV[7] .. sn) end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[2])
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[3]) then return redis.error_reply('TOO_MANY') end
redis.call('ZADD', KEYS[1], ARGV[1], ARGV[4])
redis.call('DEL', KEYS[2])
redis.call('HSET', KEYS[2], 'stage', ARGV[8], 'rec', ARGV[5])
redis.call('PEXPIRE', KEYS[2], ARGV[6])
return 1
