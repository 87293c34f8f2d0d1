local v = redis.call('HGET', KEYS[1], 'rec')
if v then redis.call('DEL', KEYS[1]); redis.call('ZREM', KEYS[2], ARGV[1]) end
return v
