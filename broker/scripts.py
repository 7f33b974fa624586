"""The Lua scripts the data plane runs, so each multi-key step is atomic.

Every key a script touches is passed in KEYS and carries the zone's hash tag, so the scripts are
legal on Redis Cluster. Sources live here, next to what they promise.
"""

from __future__ import annotations

# Store results and acknowledge their jobs, for a whole batch at once.
# KEYS: for job i: result_key, job_stream, reply_stream (the result key again when there is no reply)
# ARGV: ttl_ms, group, reply_maxlen, then for job i: entry_id, stored_result, job_id, want_reply (0/1)
# A result is written only if none exists (SET NX): a job run twice still has exactly one result,
# and its producer is notified once. One notification entry per reply stream lists its job ids.
COMPLETE = """
local ttl, group, maxlen = ARGV[1], ARGV[2], ARGV[3]
local created = 0
local replies, order = {}, {}
for i = 0, (#KEYS / 3) - 1 do
  local rkey, stream, reply = KEYS[i * 3 + 1], KEYS[i * 3 + 2], KEYS[i * 3 + 3]
  local eid, value, jid, want = ARGV[4 + i * 4], ARGV[5 + i * 4], ARGV[6 + i * 4], ARGV[7 + i * 4]
  if redis.call('SET', rkey, value, 'NX', 'PX', ttl) then
    created = created + 1
    if want == '1' then
      if replies[reply] == nil then
        replies[reply] = {}
        order[#order + 1] = reply
      end
      table.insert(replies[reply], jid)
    end
  end
  redis.call('XACK', stream, group, eid)
  redis.call('XDEL', stream, eid)
end
for _, reply in ipairs(order) do
  redis.call('XADD', reply, 'MAXLEN', '~', maxlen, '*', 'jobs', table.concat(replies[reply], ','))
  redis.call('PEXPIRE', reply, ttl)
end
return created
"""

# Append a chunk of sealed jobs in one call: atomic per chunk, and far cheaper for the client than a
# pipeline of XADDs (one command to pack and one reply to read instead of one per job).
# KEYS: the lane streams this chunk uses   ARGV: triples (index into KEYS, header bytes, body bytes)
APPEND = """
for i = 1, #ARGV, 3 do
  redis.call('XADD', KEYS[tonumber(ARGV[i])], '*', 'h', ARGV[i + 1], 'b', ARGV[i + 2])
end
return #ARGV / 3
"""

# Put a dead letter back on its job stream and remove it from the dead-letter stream.
# KEYS: dlq_stream, job_stream   ARGV: dlq_entry_id, then field/value pairs of the original entry
REPLAY = """
if redis.call('XDEL', KEYS[1], ARGV[1]) == 0 then
  return false
end
local fields = {}
for i = 2, #ARGV do
  fields[#fields + 1] = ARGV[i]
end
return redis.call('XADD', KEYS[2], '*', unpack(fields))
"""

__all__ = ["APPEND", "COMPLETE", "REPLAY"]
