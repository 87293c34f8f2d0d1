for _, k in ipairs(redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', ARGV[2])) do redis.call('DEL', k) end
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', ARGV[2])
local out = {}
for _, s in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, 1000)) do
  local e = redis.call('ZRANGEBYSCORE', KEYS[2], s, s)
  if #e == 0 then
    redis.call('ZREM', KEYS[1], s)
  else
    local ok, m = pcall(cjson.decode, e[1])
    if ok and m.kind == 'message' then
      table.insert(out, s)
      table.insert(out, m.from)
    else
      redis.call('ZREM', KEYS[1], s)
    end
  end
end
return out
