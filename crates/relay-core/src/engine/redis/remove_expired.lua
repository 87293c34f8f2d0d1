for _, s in ipairs(ARGV) do
  redis.call('ZREM', KEYS[1], s)
  remove_entry(KEYS[3], KEYS[2], KEYS[4], s)
end
return #ARGV
