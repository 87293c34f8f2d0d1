local v = redis.call('GET', KEYS[1])
if not v or not string.find(v, '"stage":"AwaitingDhParams"', 1, true) then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'KEEPTTL')
return 1
