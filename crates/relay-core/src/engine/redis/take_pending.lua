local v = redis.call('GET', KEYS[1])
if v then redis.call('DEL', KEYS[1]); redis.call('ZREM', KEYS[2], ARGV[1]) end
return v
