"""The Lua scripts the data plane runs, so each multi-key step is atomic.

Every key a script touches is passed in KEYS and carries the zone's hash tag, so the scripts are
legal on Redis Cluster. Sources live here, next to what they promise.
"""

from __future__ import annotations

# Lua shared by COMPLETE and ACK_DELETE: variadic calls in chunks (Lua's unpack has a limit), and the
# acknowledgement of entries of one stream together with their deletion.
# Deletion: every entry older than the oldest one still pending in the group has been delivered and
# acknowledged, and acknowledged entries are always deleted — so what lies below it is exactly what was
# just acknowledged, and one XTRIM MINID removes it (XDEL looks each id up: 3x the server time of an
# XACK). With nothing pending, the bound is the group's last delivered entry, deleted on its own. Ids
# the trim did not take (a batch acknowledged while an older entry is still pending) are deleted one
# by one; so are all of them if the count taken differs from the batch (something else lay there).
_ACK_DELETE_FN = """
local function each_chunk(cmd, key, list, extra)
  for i = 1, #list, 1000 do
    if extra then
      redis.call(cmd, key, extra, unpack(list, i, math.min(i + 999, #list)))
    else
      redis.call(cmd, key, unpack(list, i, math.min(i + 999, #list)))
    end
  end
end

local function ack_delete(stream, group, ids)
  each_chunk('XACK', stream, ids, group)
  local pending = redis.call('XPENDING', stream, group)
  local bound, last = pending[2], false
  if pending[1] == 0 then
    for _, g in ipairs(redis.call('XINFO', 'GROUPS', stream)) do
      for i = 1, #g, 2 do
        if g[i] == 'name' and g[i + 1] ~= group then break end
        if g[i] == 'last-delivered-id' then bound, last = g[i + 1], true end
      end
    end
  end
  local gone = 0
  if bound then gone = redis.call('XTRIM', stream, 'MINID', bound) end
  if last then gone = gone + redis.call('XDEL', stream, bound) end
  if gone ~= #ids then each_chunk('XDEL', stream, ids) end
end
"""

# Store results and acknowledge their jobs, for a whole batch at once.
# KEYS: for job i: result_key, job_stream, reply_stream (the result key again when there is no reply),
#       in-flight set of the job's tenant (see ADMIT), claim key of the job id (see CLAIM_EACH)
# ARGV: ttl_ms, group, reply_maxlen, then for job i: entry_id, stored_result, job_id, want_reply (0/1)
# A result is written only if none exists (SET NX): a job run twice still has exactly one result,
# and its producer is notified once. One notification entry per reply stream lists its job ids.
# The jobs are acknowledged and deleted per stream (`ack_delete`), leave their tenants' in-flight sets
# (ZREM: idempotent, and a no-op for jobs admitted without an admission policy), and their claims
# are dropped (the result now answers the duplicate check): one variadic call each, not one per job.
COMPLETE = (
    _ACK_DELETE_FN
    + """
local ttl, group, maxlen = ARGV[1], ARGV[2], ARGV[3]
local created = 0
local replies, order = {}, {}
local acks, streams, leaving, sets, claims = {}, {}, {}, {}, {}
for i = 0, (#KEYS / 5) - 1 do
  local rkey, stream, reply, inflight = KEYS[i * 5 + 1], KEYS[i * 5 + 2], KEYS[i * 5 + 3], KEYS[i * 5 + 4]
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
  if acks[stream] == nil then
    acks[stream] = {}
    streams[#streams + 1] = stream
  end
  table.insert(acks[stream], eid)
  if leaving[inflight] == nil then
    leaving[inflight] = {}
    sets[#sets + 1] = inflight
  end
  table.insert(leaving[inflight], jid)
  claims[#claims + 1] = KEYS[i * 5 + 5]
end
for _, stream in ipairs(streams) do ack_delete(stream, group, acks[stream]) end
for _, set in ipairs(sets) do each_chunk('ZREM', set, leaving[set]) end
for i = 1, #claims, 1000 do redis.call('DEL', unpack(claims, i, math.min(i + 999, #claims))) end
for _, reply in ipairs(order) do
  redis.call('XADD', reply, 'MAXLEN', '~', maxlen, '*', 'jobs', table.concat(replies[reply], ','))
  redis.call('PEXPIRE', reply, ttl)
end
return created
"""
)

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

# Admission of one submit batch, and its XADDs, in one step: many producers on many machines can
# never overshoot a limit by a race, because the check and the append are one script.
# KEYS: admission state hash, then the job stream of each lane in the batch (L of them), then the
#       in-flight set of each tenant in the batch (T of them)
# ARGV: now_ms ('' = the server's clock), L, T, lease_ms, watermark_retry_ms,
#       per lane: high, low, count; per tenant: name, rate_per_s, burst, max_in_flight, count
#       (rate or max_in_flight < 0: no such limit), then groups of jobs of one lane and tenant:
#       lane_index, tenant_index, n, the n job ids joined by ',', then n times: h, b
# Watermarks with hysteresis: a lane whose backlog (XLEN = undelivered + pending, because acknowledged
# entries are deleted) reached `high` stays paused until it is back at or below `low`; an open lane
# admits a batch while its backlog is under `high`, so it peaks below high + one batch.
# Token bucket per tenant: `burst` tokens, refilled at `rate_per_s`, one token per job.
# In-flight: job ids scored by lease expiry; expired leases (a dead-lettered job) no longer count.
# Returns {1, peak_backlog} after appending every job, or {0, reason, limit, retry_after_ms} having
# appended nothing and spent no token.
ADMIT = """
local state = KEYS[1]
local now = tonumber(ARGV[1])
if not now then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local nl, nt, lease, wretry = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local a, refusal, peak = 6, nil, 0
for i = 1, nl do
  local high, low, n = tonumber(ARGV[a]), tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2])
  a = a + 3
  local stream = KEYS[1 + i]
  local backlog = redis.call('XLEN', stream)
  local flag = 'paused:' .. stream
  local paused = redis.call('HGET', state, flag) == '1'
  if paused and backlog <= low then
    redis.call('HDEL', state, flag)
    paused = false
  end
  if not paused and backlog >= high then
    redis.call('HSET', state, flag, '1')
    paused = true
  end
  if paused and not refusal then refusal = {0, 'watermark', stream, wretry} end
  if backlog + n > peak then peak = backlog + n end
end
local buckets = {}
for j = 1, nt do
  local name, rate, burst = ARGV[a], tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2])
  local cap, n = tonumber(ARGV[a + 3]), tonumber(ARGV[a + 4])
  a = a + 5
  if rate >= 0 then
    local tk, tsk = 'tok:' .. name, 'ts:' .. name
    local v = redis.call('HMGET', state, tk, tsk)
    local tokens, ts = tonumber(v[1]), tonumber(v[2])
    if not tokens then tokens, ts = burst, now end
    if now > ts then
      tokens = math.min(burst, tokens + (now - ts) * rate / 1000)
      ts = now
    end
    if tokens < n and not refusal then
      local wait = 3600000
      if rate > 0 and n <= burst then wait = math.ceil((n - tokens) * 1000 / rate) end
      refusal = {0, 'rate', name, wait}
    end
    buckets[#buckets + 1] = {tk, tokens - n, tsk, ts}
  end
  if cap >= 0 then
    local set = KEYS[1 + nl + j]
    redis.call('ZREMRANGEBYSCORE', set, '-inf', now)
    if redis.call('ZCARD', set) + n > cap and not refusal then refusal = {0, 'in_flight', name, wretry} end
  end
end
if refusal then return refusal end
for _, b in ipairs(buckets) do
  redis.call('HSET', state, b[1], tostring(b[2]), b[3], tostring(b[4]))
end
local expiry = now + lease
while a <= #ARGV do
  local li, ti, n = tonumber(ARGV[a]), tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2])
  local stream, jids = KEYS[1 + li], ARGV[a + 3]
  a = a + 4
  for k = a, a + 2 * n - 1, 2 do
    redis.call('XADD', stream, '*', 'h', ARGV[k], 'b', ARGV[k + 1])
  end
  a = a + 2 * n
  if tonumber(ARGV[5 + nl * 3 + (ti - 1) * 5 + 4]) >= 0 then
    local leases = {}
    for jid in string.gmatch(jids, '[^,]+') do
      leases[#leases + 1] = expiry
      leases[#leases + 1] = jid
      if #leases >= 1000 then
        redis.call('ZADD', KEYS[1 + nl + ti], unpack(leases))
        leases = {}
      end
    end
    if #leases > 0 then redis.call('ZADD', KEYS[1 + nl + ti], unpack(leases)) end
  end
end
return {1, peak}
"""

# The replay and duplicate check of one read, and the claim of each job id it lets run.
# KEYS: the zone's job streams (L of them), then the N jobs' result keys, then their N claim keys
# ARGV: group, claim_ms, L, then for job i: its claim token, "<job stream>\n<entry id>"
# Returns, for job i: 0 = run it (its claim is now this entry's, for claim_ms), 1 = it already has a
# result (a replay or a duplicate submission of a finished job), 2 = another entry of the same job id
# holds the claim and is still pending in the group (a copy of a job that is being run).
# A claim whose entry is no longer pending (acknowledged, dead-lettered, deleted) is stale and is
# taken over; the entry that holds a claim takes it again when it is reclaimed after a crash.
# The usual job costs one call (SET NX PX): replays are ruled out for the whole read by one variadic
# EXISTS, and a claim is looked at (GET, XPENDING) only when SET NX finds one (5.7 → 4.6 µs of
# server time per job; variadic set commands instead of a `redis.call` per job saved at most 1 µs
# of that, claim drop included: docs/benchmarks.md).
CLAIM_EACH = """
local group, lease, nl = ARGV[1], ARGV[2], tonumber(ARGV[3])
local streams = {}
for s = 1, nl do streams[KEYS[s]] = true end
local n = (#KEYS - nl) / 2
-- the usual read has no replay: one variadic EXISTS says so, instead of one per job
local replays = 0
for i = 1, n, 1000 do replays = replays + redis.call('EXISTS', unpack(KEYS, nl + i, nl + math.min(i + 999, n))) end
local out = {}
for i = 1, n do
  local ckey, token = KEYS[nl + n + i], ARGV[3 + i]
  if replays > 0 and redis.call('EXISTS', KEYS[nl + i]) == 1 then
    out[i] = 1
  elseif redis.call('SET', ckey, token, 'NX', 'PX', lease) then
    out[i] = 0
  else
    local holder = redis.call('GET', ckey)
    local held = false
    if holder and holder ~= token then
      local cut = string.find(holder, '\\n', 1, true)
      if cut and streams[string.sub(holder, 1, cut - 1)] then
        local hid = string.sub(holder, cut + 1)
        local rows = redis.pcall('XPENDING', string.sub(holder, 1, cut - 1), group, hid, hid, 1)
        held = type(rows) == 'table' and #rows > 0
      end
    end
    if held then
      out[i] = 2
    else
      redis.call('SET', ckey, token, 'PX', lease)
      out[i] = 0
    end
  end
end
return out
"""

# Acknowledge entries and delete them from their job stream (acknowledged entries never stay, so a
# stream's length is its backlog plus what is pending; see `ack_delete` above), and drop their jobs'
# claims (see CLAIM_EACH). Each id is sent once instead of twice.
# KEYS[1]: job stream, then the claim keys of the entries' job ids   ARGV: group, then the entry ids
# (at most ACK_CHUNK)
ACK_DELETE = (
    _ACK_DELETE_FN
    + """
if #KEYS > 1 then redis.call('DEL', unpack(KEYS, 2)) end
ack_delete(KEYS[1], ARGV[1], {unpack(ARGV, 2)})
return #ARGV - 1
"""
)
ACK_CHUNK = 1000  # well under Lua's limit on unpacked values

__all__ = ["ACK_CHUNK", "ACK_DELETE", "ADMIT", "APPEND", "CLAIM_EACH", "COMPLETE", "REPLAY"]
