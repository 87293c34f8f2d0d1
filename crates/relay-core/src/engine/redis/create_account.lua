local o = redis.call('GET', KEYS[1])
if o and o ~= ARGV[1] then return redis.error_reply('TAKEN') end
redis.call('SET', KEYS[1], ARGV[1])
redis.call('HSET', KEYS[2], 'data', ARGV[2], 'version', 0)
if redis.call('EXISTS', KEYS[3]) == 0 then
  redis.call('HSET', KEYS[3], 'key', '', 'kv', 0, 'reg', ARGV[3], 'seen', ARGV[3], 'next', 0)
end
return 1
