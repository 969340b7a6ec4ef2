"""The server-side scripts of the transport: each runs atomically in Redis, so what it
checks still holds when it acts on it.

:data:`ADD`
    A sidecar's batch of entries, added only while the consumer group's lag (entries
    not yet delivered to a comparator) leaves room below ``transport.max_len``: the
    ones beyond are refused, and the sidecar counts them ``dropped{compare_full}``.
    Each ``XADD`` also trims the stream to about ``max_len`` entries (``MAXLEN ~``); as
    the unread entries are at most ``max_len`` that removes only delivered ones.
    With the entries it records the publisher's batch number and how many it added
    (``KEYS[2]``, ``"seq:added"``, kept a day): a sidecar whose connection broke before
    the reply came reads it back on reconnecting, and counts that batch added, not lost
    (its entries are judged by the comparators: one outcome each, not two).
    Returns ``{added, lag before}``.

:data:`TRIMMED`
    Entries trimmed before the group read them (another writer, an ``XTRIM`` by hand):
    trimming removes from the head, so when the stream's first entry is past the
    group's ``last-delivered-id``, every entry trimmed after that id went unread. The
    group is created with ``ENTRIESREAD 0`` and Redis adds one for each entry it
    delivers, so the unread ones trimmed are the entries trimmed in all
    (``entries-added − length``) less those the group read (``entries-read``). The
    group is then moved to just before the first entry (``XGROUP SETID …
    ENTRIESREAD``) so that they are counted once. Returns that count (``-1`` when Redis
    cannot tell how many).

    It runs when Redis is out of memory (``flags=allow-oom``): a full Redis must not
    stop the comparators from reading, acknowledging and trimming what frees it.

    It also mends the group's read count when the group has read everything:
    Redis 7.0 does not keep ``entries-read`` across a restart (the AOF replays reads
    as ``XCLAIM … LASTID``, which leaves it behind), which would overstate the lag (and
    the sidecars' bound with it) until it is mended here, as soon as the comparators
    have caught up (``XGROUP SETID … ENTRIESREAD entries-added``).

:data:`TRIM_READ`
    Removes the entries every comparator is done with: those before the group's oldest
    pending entry (delivered, not yet acknowledged), or before its last delivered one
    when none is pending (``XTRIM MINID``). Without it the stream would keep ``max_len``
    entries (``MAXLEN ~`` on add) whatever the lag, ~2.8 KB each: a Redis sized for the
    lag it should absorb would fill up in steady state, and ``XADD`` is refused when
    Redis is full. Only entries already delivered go, so no unread entry is trimmed
    (nothing for :data:`TRIMMED` to count). Allowed when Redis is out of memory: it is
    what frees it. Returns the entries removed.
"""

from __future__ import annotations

ADD = """
local n = #ARGV - 4
local lag = 0
local ok, groups = pcall(redis.call, 'XINFO', 'GROUPS', KEYS[1])
if ok then
  for _, g in ipairs(groups) do
    local name, glag
    for i = 1, #g, 2 do
      if g[i] == 'name' then name = g[i + 1] elseif g[i] == 'lag' then glag = g[i + 1] end
    end
    if name == ARGV[1] then
      if not glag then glag = redis.call('XLEN', KEYS[1]) end
      lag = glag
    end
  end
end
local room = tonumber(ARGV[2]) - lag
if room < n then n = math.max(room, 0) end
for i = 5, 4 + n do
  redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], '*', 'v', ARGV[3], 'x', ARGV[i])
end
redis.call('SET', KEYS[2], ARGV[4] .. ':' .. n, 'EX', 86400)
return {n, lag}
"""

TRIMMED = """#!lua flags=allow-oom
local function id(s)
  local ms, seq = string.match(s, '^(%d+)-(%d+)$')
  return tonumber(ms), tonumber(seq)
end
local function after(a, b)
  local am, as = id(a)
  local bm, bs = id(b)
  return am > bm or (am == bm and as > bs)
end
local function before(a)
  local ms, seq = string.match(a, '^(%d+)-(%d+)$')
  if seq ~= '0' then return ms .. '-' .. tostring(tonumber(seq) - 1) end
  return tostring(tonumber(ms) - 1) .. '-18446744073709551615'
end
local ok, info = pcall(redis.call, 'XINFO', 'STREAM', KEYS[1])
if not ok then return 0 end
local s = {}
for i = 1, #info, 2 do s[info[i]] = info[i + 1] end
local gone = s['entries-added'] - s['length']
for _, g in ipairs(redis.call('XINFO', 'GROUPS', KEYS[1])) do
  local f = {}
  for i = 1, #g, 2 do f[g[i]] = g[i + 1] end
  if f['name'] == ARGV[1] then
    local last = f['last-delivered-id']
    if last == s['last-generated-id'] then
      if f['entries-read'] ~= s['entries-added'] then
        redis.call('XGROUP', 'SETID', KEYS[1], ARGV[1], last, 'ENTRIESREAD', s['entries-added'])
      end
      return 0
    end
    if gone == 0 then return 0 end
    local to, past
    if s['first-entry'] then
      past = after(s['first-entry'][1], last)
      if past then to = before(s['first-entry'][1]) end
    else
      past = after(s['last-generated-id'], last)
      to = s['last-generated-id']
    end
    if not past then return 0 end
    local lost = -1
    if f['entries-read'] then lost = gone - f['entries-read'] end
    if lost == 0 then return 0 end
    redis.call('XGROUP', 'SETID', KEYS[1], ARGV[1], to, 'ENTRIESREAD', gone)
    return lost
  end
end
return 0
"""

TRIM_READ = """#!lua flags=allow-oom
local ok, groups = pcall(redis.call, 'XINFO', 'GROUPS', KEYS[1])
if not ok then return 0 end
for _, g in ipairs(groups) do
  local f = {}
  for i = 1, #g, 2 do f[g[i]] = g[i + 1] end
  if f['name'] == ARGV[1] then
    local floor = f['last-delivered-id']
    local pending = redis.call('XPENDING', KEYS[1], ARGV[1])
    if pending[1] > 0 then floor = pending[2] end
    if floor == '0-0' then return 0 end
    return redis.call('XTRIM', KEYS[1], 'MINID', floor)
  end
end
return 0
"""
