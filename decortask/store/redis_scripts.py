r"""The Lua scripts of the Redis store: each is one atomic step on the server, in one round trip.

Records are stored as the compact JSON `json.dumps(..., separators=(",", ":"))` writes (ASCII, no
whitespace). Scripts that change a record never decode and re-encode it with Redis's cjson, which would
round numbers to 14 digits and turn `[]` into `{}`: `split_record` cuts the top-level object into each
field's raw JSON text, and changed fields are spliced in as the JSON texts Python encoded.

The store registers every script behind `redis_events.prelude(...)`, which defines `EVENTS` and
`emit_event`: with events on, the scripts that create, transition, set progress or append log lines append
the task's event to the feed in the same atomic step (see `store/redis_events.py`).
"""

from __future__ import annotations

# Shared Lua helpers, prepended to the scripts that need them.
_HELPERS = r"""
local function skip_string(s, i)  -- i: the opening quote; returns the index after the closing one
  local j = i + 1
  while true do
    local k = string.find(s, '["\\]', j)
    if string.sub(s, k, k) == '"' then return k + 1 end
    j = k + 2  -- an escape: skip the backslash and the character it escapes
  end
end

local function skip_value(s, i)  -- i: the value's first character; returns the index after its last
  local c = string.sub(s, i, i)
  if c == '"' then return skip_string(s, i) end
  if c == '{' or c == '[' then
    local depth, j = 0, i
    while true do
      local k = string.find(s, '[{}%[%]"]', j)
      local d = string.sub(s, k, k)
      if d == '"' then
        j = skip_string(s, k)
      else
        if d == '{' or d == '[' then depth = depth + 1 else depth = depth - 1 end
        j = k + 1
        if depth == 0 then return j end
      end
    end
  end
  return (string.find(s, '[,}%]]', i))  -- a number, true, false or null
end

-- The record's field names in order, and name -> raw JSON text of the value.
local function split_record(s)
  local names, values, i = {}, {}, 2
  if string.sub(s, 2, 2) == '}' then return names, values end
  while true do
    local key_end = skip_string(s, i)
    local name = string.sub(s, i + 1, key_end - 2)
    local value_end = skip_value(s, key_end + 1)  -- key_end is the ':'
    names[#names + 1] = name
    values[name] = string.sub(s, key_end + 1, value_end - 1)
    if string.sub(s, value_end, value_end) == '}' then return names, values end
    i = value_end + 1
  end
end

-- Sets the name/JSON pairs args[first..last] on the split record; new names go last. Returns the JSON.
local function splice(names, values, args, first, last)
  for i = first, last, 2 do
    if values[args[i]] == nil then names[#names + 1] = args[i] end
    values[args[i]] = args[i + 1]
  end
  local parts = {}
  for n, name in ipairs(names) do parts[n] = '"' .. name .. '":' .. values[name] end
  return '{' .. table.concat(parts, ',') .. '}'
end

-- The value of the key `key` that starts at s[i] (a '"'), and the index of the next key; nil if another key.
local function field_at(s, i, key)
  local key_end = skip_string(s, i)
  if string.sub(s, i + 1, key_end - 2) ~= key then return nil end
  local value_end = skip_value(s, key_end + 1)
  return string.sub(s, key_end + 1, value_end - 1), value_end + 1
end

local function plain(text)  -- a JSON string's value
  if string.find(text, '\\', 1, true) then return cjson.decode(text) end
  return string.sub(text, 2, -2)
end

-- The record's name and queue: its leading fields as TaskRecord.to_json writes them (id, name, queue),
-- read without splitting the whole record; split_record if another writer ordered them otherwise.
local function name_and_queue(s)
  local _, at = field_at(s, 2, 'id')
  local name, queue, after = nil, nil, nil
  if at then name, after = field_at(s, at, 'name') end
  if after then queue = field_at(s, after, 'queue') end
  if not queue then
    local _, values = split_record(s)
    name, queue = values['name'], values['queue']
  end
  return plain(name), plain(queue)
end

local function listed(list, value)  -- whether value is one of the comma-separated list
  for item in string.gmatch(list, '[^,]+') do
    if item == value then return true end
  end
  return false
end

-- Writes one schedule entry (replacing one with the same id and forgetting its claim).
-- sched: due, body, claims, owner keys.
local function add_entry(sched, queue_prefix, id, due, queue, body)
  local old = redis.call('HGET', sched[2], id)
  if old then
    local old_queue = cjson.decode(old)['queue']
    if old_queue ~= queue then redis.call('ZREM', queue_prefix .. old_queue, id) end
  end
  redis.call('HSET', sched[2], id, body)
  redis.call('ZADD', sched[1], due, id)
  redis.call('ZADD', queue_prefix .. queue, due, id)
  redis.call('ZREM', sched[3], id)
  redis.call('HDEL', sched[4], id)
end
"""

# Creates records in order, all or none, as `TaskStore.create_many` describes (`create` is a batch of one).
# KEYS: created index, expires index.
# ARGV: 1 task key prefix, 2 logs key prefix, 3 idempotency key prefix, 4 status index prefix, 5 holding
#       statuses (comma separated), then per record: id, idempotency key or '', status, record JSON,
#       created_at, expires_at or '', the number of log lines, the log lines.
# Returns {'exists', id} (nothing written), or per record {'ok'} or {'held', holder JSON, holder's log lines...}.
CREATE = (
    _HELPERS
    + """
local records, i = {}, 6
while i <= #ARGV do
  local count = tonumber(ARGV[i + 6])
  records[#records + 1] = {i, count}
  if redis.call('EXISTS', ARGV[1] .. ARGV[i]) == 1 then return {'exists', ARGV[i]} end
  i = i + 7 + count
end
if redis.call('EXISTS', KEYS[1]) == 0 then
  -- A new store: every record it will hold is indexed by name and queue below, so nothing predates
  -- those indexes (redis_queries.ensure_indexed need not read the records of a store made before them).
  redis.call('SET', string.sub(ARGV[4], 1, -8) .. 'by-name-and-queue', '1')
end
local replies = {}
for n, record in ipairs(records) do
  local at, count = record[1], record[2]
  local id, key = ARGV[at], ARGV[at + 1]
  local reply = nil
  if key ~= '' then
    local holder = redis.call('GET', ARGV[3] .. key)
    local body = holder and redis.call('GET', ARGV[1] .. holder)
    if body then
      local status = cjson.decode(body)['status']
      for s in string.gmatch(ARGV[5], '[^,]+') do
        if s == status then
          reply = {'held', body}
          for _, line in ipairs(redis.call('LRANGE', ARGV[2] .. holder, 0, -1)) do reply[#reply + 1] = line end
          break
        end
      end
    end
    if not reply then redis.call('SET', ARGV[3] .. key, id) end
  end
  if not reply then
    redis.call('SET', ARGV[1] .. id, ARGV[at + 3])
    redis.call('ZADD', KEYS[1], ARGV[at + 4], id)
    redis.call('ZADD', ARGV[4] .. ARGV[at + 2], ARGV[at + 4], id)
    -- The name and queue indexes of the listings (redis_queries.py) sit beside the status ones.
    local name, queue = name_and_queue(ARGV[at + 3])
    local index = string.sub(ARGV[4], 1, -8)  -- ARGV[4] is 'ns:index:status:'
    redis.call('ZADD', index .. 'name:' .. name, ARGV[at + 4], id)
    redis.call('ZADD', index .. 'queue:' .. queue, ARGV[at + 4], id)
    redis.call('SADD', index .. 'names', name)
    redis.call('SADD', index .. 'queues', queue)
    -- A workflow's task is indexed by its root (`TaskQuery.root_id`); decoding only records that have one.
    if string.find(ARGV[at + 3], '"root_id":"', 1, true) then
      local root = cjson.decode(ARGV[at + 3])['root_id']
      if type(root) == 'string' then redis.call('ZADD', index .. 'root:' .. root, ARGV[at + 4], id) end
    end
    if ARGV[at + 5] ~= '' then redis.call('ZADD', KEYS[2], ARGV[at + 5], id) end
    for l = at + 7, at + 6 + count do redis.call('RPUSH', ARGV[2] .. id, ARGV[l]) end
    if EVENTS then
      local _, values = split_record(ARGV[at + 3])
      emit_event('state', values)
    end
    reply = {'ok'}
  end
  replies[n] = reply
end
return replies
"""
)

# The compare-and-sets of `TaskStore.transition` / `transition_many`, in order, with index moves and schedule
# entries. KEYS: expires index, then the schedule's due, body, claims and owner keys, then the sorted set of
# continuations pending (`follow_state.py`: a terminal record with a workflow is added, by its updated_at).
# ARGV: 1 task key prefix, 2 logs key prefix, 3 status index prefix, 4 schedule queue prefix, 5 terminal
#       statuses (comma separated), then per step: task id, new status, expected statuses ('*' for any),
#       expected attempt or '', statuses the new one may follow, max deliveries or '' (a claim: count one
#       more delivery, up to that cap), '1' to return the log lines, schedule entry id (or ''), due_at,
#       queue, entry JSON, the number of field pairs, then field name / JSON text pairs (status and
#       updated_at among them), then the number of log lines to append and those lines (JSON): appended
#       to an existing task's log whether or not its compare-and-set holds, but not by an illegal step.
# Returns per step {'ok', record JSON, log lines...}, {'none'} or {'illegal', current status}. A step that
# writes a terminal status PUBLISHes the task id on OUTCOME_CHANNEL (defined by `redis_wait.prelude`).
TRANSITION = (
    _HELPERS
    + r"""
local sched = {KEYS[2], KEYS[3], KEYS[4], KEYS[5]}
local replies, at = {}, 6
while at <= #ARGV do
  local id, new_status = ARGV[at], ARGV[at + 1]
  local first, last = at + 12, at + 11 + 2 * tonumber(ARGV[at + 11])
  local lines_end = last + 1 + tonumber(ARGV[last + 1])
  local reply = {'none'}
  local raw = redis.call('GET', ARGV[1] .. id)
  if raw then
    local names, values = split_record(raw)
    local old_status = string.sub(values['status'], 2, -2)
    local deliveries = tonumber(values['deliveries'] or '0')
    if ARGV[at + 5] ~= '' and deliveries >= tonumber(ARGV[at + 5]) then
      reply = {'none'}
    elseif ARGV[at + 2] ~= '*' and not listed(ARGV[at + 2], old_status) then
      reply = {'none'}
    elseif ARGV[at + 3] ~= '' and tonumber(values['attempt']) ~= tonumber(ARGV[at + 3]) then
      reply = {'none'}
    elseif not listed(ARGV[at + 4], old_status) then
      reply = {'illegal', old_status}
    else
      local old_expires = values['expires_at'] or 'null'
      local old_attempt = values['attempt']
      if ARGV[at + 5] ~= '' then
        if values['deliveries'] == nil then names[#names + 1] = 'deliveries' end
        values['deliveries'] = tostring(deliveries + 1)
      end
      local blob = splice(names, values, ARGV, first, last)
      redis.call('SET', ARGV[1] .. id, blob)
      if old_status ~= new_status then
        redis.call('ZREM', ARGV[3] .. old_status, id)
        redis.call('ZADD', ARGV[3] .. new_status, values['created_at'], id)
      end
      local new_expires = values['expires_at'] or 'null'
      if listed(ARGV[5], new_status) and new_expires ~= 'null' then
        redis.call('ZADD', KEYS[1], new_expires, id)
      elseif listed(ARGV[5], old_status) and old_expires ~= 'null' then
        redis.call('ZREM', KEYS[1], id)
      end
      if ARGV[at + 7] ~= '' then
        add_entry(sched, ARGV[4], ARGV[at + 7], ARGV[at + 8], ARGV[at + 9], ARGV[at + 10])
      end
      reply = {'ok', blob}
      if EVENTS and (old_status ~= new_status or values['attempt'] ~= old_attempt) then
        emit_event('state', values)
      end
      if listed(ARGV[5], new_status) then
        redis.call('PUBLISH', OUTCOME_CHANNEL, id)
        if string.sub(values['workflow'] or 'null', 1, 1) == '{' then
          redis.call('ZADD', KEYS[6], values['updated_at'], id)
        end
      end
    end
    if reply[1] ~= 'illegal' and lines_end > last + 1 then
      redis.call('RPUSH', ARGV[2] .. id, unpack(ARGV, last + 2, lines_end))
      if EVENTS then
        for l = last + 2, lines_end do emit_event('log', values, ARGV[l]) end
      end
    end
    if reply[1] == 'ok' and ARGV[at + 6] == '1' then
      for _, line in ipairs(redis.call('LRANGE', ARGV[2] .. id, 0, -1)) do reply[#reply + 1] = line end
    end
  end
  replies[#replies + 1] = reply
  at = lines_end + 1
end
return replies
"""
)

# KEYS: task, logs. ARGV: the attempt ('' for any), the number of log lines, those lines (JSON), then field
# name / JSON text pairs. On an existing record: appends the lines to its log, then sets the fields (progress,
# output; not status) if the record is RUNNING at that attempt.
SET_FIELDS = (
    _HELPERS
    + r"""
local raw = redis.call('GET', KEYS[1])
if not raw then return 0 end
local names, values = split_record(raw)
local lines = tonumber(ARGV[2])
if lines > 0 then
  redis.call('RPUSH', KEYS[2], unpack(ARGV, 3, lines + 2))
  if EVENTS then
    for i = 3, lines + 2 do emit_event('log', values, ARGV[i]) end
  end
end
-- ARGV[1]: the attempt the fields belong to ('' for any); a stale attempt's fields are not set.
if ARGV[1] ~= '' and (values['status'] ~= '"RUNNING"' or tonumber(values['attempt']) ~= tonumber(ARGV[1])) then
  return 0
end
local before = EVENTS and (values['progress'] or '') .. ',' .. (values['progress_message'] or '')
redis.call('SET', KEYS[1], splice(names, values, ARGV, lines + 3, #ARGV))
if EVENTS and before ~= (values['progress'] or '') .. ',' .. (values['progress_message'] or '') then
  emit_event('progress', values)
end
return 1
"""
)

# KEYS: task, logs. ARGV: line JSON. Appends only to an existing task.
# KEYS: task, logs. ARGV: log lines (JSON), appended in order if the task exists.
APPEND_LOG = (
    _HELPERS
    + """
local raw  -- the record only when an event needs its fields; otherwise whether it exists is enough
if EVENTS then raw = redis.call('GET', KEYS[1]) else raw = redis.call('EXISTS', KEYS[1]) == 1 end
if raw then
  for i = 1, #ARGV do redis.call('RPUSH', KEYS[2], ARGV[i]) end
  if EVENTS then
    local _, values = split_record(raw)
    for i = 1, #ARGV do emit_event('log', values, ARGV[i]) end
  end
end
"""
)

# KEYS: due, body, claims, owner. ARGV: queue key prefix, then (id, due_at, queue, entry JSON) per entry.
# Replaces an entry with the same id (and forgets its claim), moving it between queue indexes if needed.
SCHEDULE_ADD = (
    _HELPERS
    + """
for i = 2, #ARGV, 4 do
  add_entry(KEYS, ARGV[1], ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3])
end
"""
)

# KEYS: due, body, claims, owner. ARGV: queue key prefix, the claim's owner ('' for any), then entry ids.
# With an owner, an entry is removed only while that owner's claim holds it (not rewritten since).
SCHEDULE_REMOVE = """
for i = 3, #ARGV do
  local id = ARGV[i]
  if ARGV[2] == '' or redis.call('HGET', KEYS[4], id) == ARGV[2] then
    local old = redis.call('HGET', KEYS[2], id)
    if old then redis.call('ZREM', ARGV[1] .. cjson.decode(old)['queue'], id) end
    redis.call('HDEL', KEYS[2], id)
    redis.call('ZREM', KEYS[1], id)
    redis.call('ZREM', KEYS[3], id)
    redis.call('HDEL', KEYS[4], id)
  end
end
"""

# KEYS: due, body, claims, owner. ARGV: now, limit, claimed_until, owner, batch.
# Walks due entries oldest first, skipping those whose claim has not lapsed; returns the claimed bodies.
CLAIM_DUE = """
local now, limit, batch = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[5])
local claimed, offset = {}, 0
while #claimed < limit do
  local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', offset, batch)
  if #ids == 0 then break end
  offset = offset + #ids
  for _, id in ipairs(ids) do
    local until_ = redis.call('ZSCORE', KEYS[3], id)
    if not until_ or tonumber(until_) <= now then
      redis.call('ZADD', KEYS[3], ARGV[3], id)
      redis.call('HSET', KEYS[4], id, ARGV[4])
      claimed[#claimed + 1] = redis.call('HGET', KEYS[2], id)
      if #claimed >= limit then break end
    end
  end
end
return claimed
"""

# Periodic tasks (store/periodic_state.py). KEYS: the lease hash. ARGV: owner, until, now, key ttl (s).
# Takes the lease when it is free, lapsed or already the owner's.
LEASE_ACQUIRE = """
local holder = redis.call('HMGET', KEYS[1], 'owner', 'until')
if holder[1] and holder[1] ~= ARGV[1] and tonumber(holder[2]) > tonumber(ARGV[3]) then return 0 end
redis.call('HSET', KEYS[1], 'owner', ARGV[1], 'until', ARGV[2])
redis.call('EXPIRE', KEYS[1], ARGV[4])
return 1
"""

# KEYS: the lease hash. ARGV: owner. Deletes the lease only if the owner holds it.
LEASE_RELEASE = """
if redis.call('HGET', KEYS[1], 'owner') == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 1
"""

# KEYS: the schedule's state hash, the set of schedule names. ARGV: name, slot.
# Moves last_slot forward only; returns last_slot and paused.
SCHEDULE_ADVANCE = """
local last = redis.call('HGET', KEYS[1], 'last_slot')
if not last or tonumber(last) < tonumber(ARGV[2]) then redis.call('HSET', KEYS[1], 'last_slot', ARGV[2]) end
redis.call('SADD', KEYS[2], ARGV[1])
return redis.call('HMGET', KEYS[1], 'last_slot', 'paused')
"""
