for _, sn in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])) do redis.call('DEL', ARGV[2] .. sn) end
return redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
