-- Quota bookkeeping of one mailbox, prepended to every script that appends to or removes from
-- one. The user's peer hash keeps `bytes` (payload bytes waiting); the user's `senders` hash
-- keeps `n:<sender>` and `b:<sender>` (messages and payload bytes waiting per sender). Relay
-- notices count against nothing (entries of the mailbox aside). A mailbox written before these
-- counters existed reads them as 0, so it is undercounted until it empties once: an empty
-- mailbox starts its counters afresh, which also heals any drift.

-- Payload bytes of a stored entry's standard padded base64.
local function payload_len(b64)
  local n = #b64
  if n == 0 then return 0 end
  local pad = 0
  if string.sub(b64, -2) == '==' then pad = 2 elseif string.sub(b64, -1) == '=' then pad = 1 end
  return math.floor(n / 4) * 3 - pad
end

-- The refusal ('MAILBOX_FULL' or 'SENDER_QUOTA') of one more message of `len` bytes from
-- `from`, or nil; and whether the mailbox is empty. Writes nothing.
-- q: mailbox entries, mailbox bytes, sender entries, sender bytes (strings).
local function admit(peer, mbox, senders, from, len, q)
  local n = redis.call('ZCARD', mbox)
  if n == 0 then
    if tonumber(q[1]) < 1 or len > tonumber(q[2]) then return 'MAILBOX_FULL', true end
    if tonumber(q[3]) < 1 or len > tonumber(q[4]) then return 'SENDER_QUOTA', true end
    return nil, true
  end
  local bytes = tonumber(redis.call('HGET', peer, 'bytes') or '0')
  if n >= tonumber(q[1]) or bytes + len > tonumber(q[2]) then return 'MAILBOX_FULL', false end
  local s = redis.call('HMGET', senders, 'n:' .. from, 'b:' .. from)
  if tonumber(s[1] or '0') >= tonumber(q[3]) or tonumber(s[2] or '0') + len > tonumber(q[4]) then
    return 'SENDER_QUOTA', false
  end
  return nil, false
end

-- Counts a message admitted by `admit` (`empty`: its answer about the mailbox).
local function count_in(peer, senders, from, len, empty)
  if empty then
    redis.call('DEL', senders)
    redis.call('HSET', peer, 'bytes', len)
  else
    redis.call('HINCRBY', peer, 'bytes', len)
  end
  redis.call('HINCRBY', senders, 'n:' .. from, 1)
  redis.call('HINCRBY', senders, 'b:' .. from, len)
end

-- Uncounts a stored entry (JSON) that is being removed. Never below 0 (legacy entries were
-- never counted).
local function count_out(peer, senders, entry)
  local ok, m = pcall(cjson.decode, entry)
  if not ok or m.kind ~= 'message' or type(m.from) ~= 'string' then return end
  local len = 0
  if type(m.payload) == 'string' then len = payload_len(m.payload) end
  if redis.call('EXISTS', peer) == 1 and redis.call('HINCRBY', peer, 'bytes', -len) < 0 then
    redis.call('HSET', peer, 'bytes', 0)
  end
  if redis.call('HINCRBY', senders, 'n:' .. m.from, -1) <= 0 then
    redis.call('HDEL', senders, 'n:' .. m.from, 'b:' .. m.from)
  elseif redis.call('HINCRBY', senders, 'b:' .. m.from, -len) < 0 then
    redis.call('HSET', senders, 'b:' .. m.from, 0)
  end
end

-- Removes the mailbox entry `seq`, uncounting it; returns how many were removed (0 or 1).
-- With `ts` (an acknowledgement that names the entry's store time), only an entry stored at that
-- millisecond goes: after a rollback a new entry may reuse the sequence number, never the time.
local function remove_entry(peer, mbox, senders, seq, ts)
  local gone = 0
  for _, e in ipairs(redis.call('ZRANGEBYSCORE', mbox, seq, seq)) do
    local match = true
    if ts then
      local ok, m = pcall(cjson.decode, e)
      match = ok and type(m) == 'table' and tostring(m.timestamp_ms) == ts
    end
    if match then
      count_out(peer, senders, e)
      redis.call('ZREM', mbox, e)
      gone = gone + 1
    end
  end
  return gone
end
