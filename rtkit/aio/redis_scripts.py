"""The backplane's data in Redis: key names and the Lua scripts that change them atomically.

One Redis (a primary, with replicas or Sentinel if wanted; not Redis Cluster: the scripts
touch keys of more than one slot) holds, per channel, with ``P`` the prefix ``rtkit:``:

* ``P m:<channel>`` a hash: ``epoch``, ``serial`` (the last assigned), ``bytes`` (of the
  stored messages) and ``first_ts`` (the oldest stored message's time);
* ``P s:<channel>`` a stream of the stored messages, entry id ``<serial>-0``, fields ``t``
  (ms on Redis's clock) and ``m`` (the message object, JSON, as subscribers receive it);
* ``P i:<n>:<channel><key>`` the answer to an idempotent publish (``serial:timestamp``),
  for the continuity window (``n``: the length of the channel name, so names cannot collide);
* ``P pr:<channel>`` a hash of present members: ``<node> <member key>`` -> the
  ``presence_event`` item;

and for the nodes: ``P nodes`` (a sorted set: node -> last refresh, ms), ``P nodeinfo``
(node -> JSON: url, connections, counters), ``P np:<node>`` (the channels where the node
has members), ``P keys`` and ``P revoked`` (API keys made on a node, and revocations: every
node verifies the same keys). Live messages go to PUB/SUB channel ``P <db>:p:<channel>``
(PUB/SUB ignores the database number, so it is part of the name):
``m <epoch> <serial> <ms> <json>`` for a message, ``p <node> <json>`` for a presence change.

Serials are assigned here and only here (:data:`PUBLISH`: ``HINCRBY`` on the channel's hash
in the same script that stores, de-duplicates and publishes the message), so every node sees
one order. A channel whose hash is missing (never used, expired, or Redis lost its data) gets
the epoch the caller proposes and an empty history: nodes then see an epoch they do not know
and their clients are told of the loss.
"""

from __future__ import annotations

PREFIX = "rtkit:"
#: Bytes a stored message counts on top of its JSON (stream entry, ids, field names).
ENTRY_OVERHEAD = 64

# Make sure the channel has an epoch: an unknown channel (or one whose data Redis lost)
# starts afresh with the proposed epoch ARGV[1] and an empty history (KEYS[1] meta,
# KEYS[2] stream).
_ENSURE = """
local function ensure(meta, stream, candidate)
  local epoch = redis.call('HGET', meta, 'epoch')
  if not epoch then
    epoch = candidate
    redis.call('DEL', stream)
    redis.call('HSET', meta, 'epoch', epoch, 'serial', 0, 'bytes', 0, 'first_ts', 0)
  end
  return epoch
end
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
"""

#: KEYS: meta, stream, dedup. ARGV: head, tail, settings (:func:`publish_settings`: one
#: argument, fewer to encode per publish), pubsub channel.
#: Returns {epoch, 'serial:timestamp', duplicate (1/0)}.
PUBLISH = _ENSURE + f"""
local meta, stream, dedup = KEYS[1], KEYS[2], KEYS[3]
local candidate, has_dedup, retention, window, budget, meta_ttl =
  string.match(ARGV[3], '^(%S+) (%d) (%d+) (%d+) (%d+) (%d+)$')
retention, budget = tonumber(retention), tonumber(budget)
local epoch = ensure(meta, stream, candidate)
if has_dedup == '1' then
  local seen = redis.call('GET', dedup)
  if seen then return {{epoch, seen, 1}} end
end
local now = now_ms()
local serial = redis.call('HINCRBY', meta, 'serial', 1)
local text = ARGV[1] .. serial .. ',"timestamp":' .. now .. ARGV[2]
local newest = serial .. '-0'
redis.call('XADD', stream, newest, 't', now, 'm', text)
local bytes = redis.call('HINCRBY', meta, 'bytes', #text + {ENTRY_OVERHEAD})
local first_ts = tonumber(redis.call('HGET', meta, 'first_ts'))
if first_ts == 0 then
  first_ts = now
  redis.call('HSET', meta, 'first_ts', now)
end
-- The continuity window: drop the oldest messages past the retention time or over the
-- channel's budget in bytes (never the one just added).
if now - first_ts > retention or bytes > budget then
  local cursor, keep = '-', nil
  while true do
    local batch = redis.call('XRANGE', stream, cursor, '+', 'COUNT', 32)
    for _, e in ipairs(batch) do
      local ts = tonumber(e[2][2])
      if e[1] == newest or (now - ts <= retention and bytes <= budget) then
        keep, first_ts = e[1], ts
        break
      end
      bytes = bytes - (#e[2][4] + {ENTRY_OVERHEAD})
    end
    if keep or #batch < 32 then break end
    cursor = '(' .. batch[#batch][1]
  end
  if keep then redis.call('XTRIM', stream, 'MINID', keep) end
  redis.call('HSET', meta, 'bytes', bytes, 'first_ts', first_ts)
end
if has_dedup == '1' then
  redis.call('SET', dedup, serial .. ':' .. now, 'PX', window)
end
redis.call('PEXPIRE', stream, retention)
redis.call('PEXPIRE', meta, meta_ttl)
redis.call('PUBLISH', ARGV[4], 'm ' .. epoch .. ' ' .. serial .. ' ' .. now .. ' ' .. text)
return {{epoch, serial .. ':' .. now, 0}}
"""

#: KEYS: meta, stream. ARGV: candidate epoch, meta ttl ms. Returns {epoch, serial}.
POSITION = _ENSURE + """
local epoch = ensure(KEYS[1], KEYS[2], ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return {epoch, tonumber(redis.call('HGET', KEYS[1], 'serial'))}
"""

#: KEYS: meta, stream, presence, nodes. ARGV: candidate epoch, meta ttl ms, node timeout ms.
#: Returns {epoch, serial, node, event, node, event...}: the members of live nodes.
FOLLOW = _ENSURE + """
local epoch = ensure(KEYS[1], KEYS[2], ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
local out = {epoch, tonumber(redis.call('HGET', KEYS[1], 'serial'))}
local now, timeout = now_ms(), tonumber(ARGV[3])
local all = redis.call('HGETALL', KEYS[3])
for i = 1, #all, 2 do
  local node = string.match(all[i], '^([^ ]+) ')
  local seen = node and redis.call('ZSCORE', KEYS[4], node)
  if seen and now - tonumber(seen) <= timeout then
    out[#out + 1] = node
    out[#out + 1] = all[i + 1]
  end
end
return out
"""

#: KEYS: meta, stream. ARGV: candidate epoch, meta ttl ms, first, last, limit, newest
#: first ('1'/'0'). Returns {epoch, serial, entries}; entries as XRANGE gives them.
READ = _ENSURE + """
local epoch = ensure(KEYS[1], KEYS[2], ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
local serial = tonumber(redis.call('HGET', KEYS[1], 'serial'))
local first, last = tonumber(ARGV[3]), tonumber(ARGV[4])
local entries = {}
if first <= last then
  if ARGV[6] == '1' then
    entries = redis.call('XREVRANGE', KEYS[2], last .. '-0', first .. '-0', 'COUNT', ARGV[5])
  else
    entries = redis.call('XRANGE', KEYS[2], first .. '-0', last .. '-0', 'COUNT', ARGV[5])
  end
end
return {epoch, serial, entries}
"""

#: KEYS: meta, stream. ARGV: epoch, serial, new epoch. The channel's serial went back below
#: what a node delivered (lost writes): start a new epoch, unless that is no longer so.
REBASE = """
local epoch = redis.call('HGET', KEYS[1], 'epoch')
local serial = tonumber(redis.call('HGET', KEYS[1], 'serial') or '0')
if epoch == ARGV[1] and serial < tonumber(ARGV[2]) then
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[1], 'epoch', ARGV[3], 'serial', 0, 'bytes', 0, 'first_ts', 0)
  return 1
end
return 0
"""

#: KEYS: presence hash, the node's channel set. ARGV: op, field, event, channel,
#: pubsub channel, payload.
PRESENCE = """
if ARGV[1] == 'leave' then
  redis.call('HDEL', KEYS[1], ARGV[2])
else
  redis.call('HSET', KEYS[1], ARGV[2], ARGV[3])
  redis.call('SADD', KEYS[2], ARGV[4])
end
redis.call('PUBLISH', ARGV[5], ARGV[6])
return 1
"""

#: KEYS: nodes (sorted set), node info (hash). ARGV: node, info JSON, timeout ms, prefix,
#: remove ('1': this node is stopping). Refreshes this node, removes the nodes gone (their
#: members too) and returns {now, was registered (1/0), node, seen, info, ...}.
HEARTBEAT = """
local nodes, info, me, timeout, prefix = KEYS[1], KEYS[2], ARGV[1], tonumber(ARGV[3]), ARGV[4]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local was = redis.call('ZSCORE', nodes, me)
local function forget(node)
  local mark = node .. ' '
  for _, ch in ipairs(redis.call('SMEMBERS', prefix .. 'np:' .. node)) do
    local key = prefix .. 'pr:' .. ch
    for _, field in ipairs(redis.call('HKEYS', key)) do
      if string.sub(field, 1, #mark) == mark then redis.call('HDEL', key, field) end
    end
  end
  redis.call('DEL', prefix .. 'np:' .. node)
  redis.call('ZREM', nodes, node)
  redis.call('HDEL', info, node)
end
if ARGV[5] == '1' then
  forget(me)
else
  redis.call('ZADD', nodes, now, me)
  redis.call('HSET', info, me, ARGV[2])
end
for _, node in ipairs(redis.call('ZRANGEBYSCORE', nodes, '-inf', now - timeout)) do
  forget(node)
end
local out = {now, was and 1 or 0}
local all = redis.call('ZRANGE', nodes, 0, -1, 'WITHSCORES')
for i = 1, #all, 2 do
  out[#out + 1] = all[i]
  out[#out + 1] = all[i + 1]
  out[#out + 1] = redis.call('HGET', info, all[i]) or '{}'
end
return out
"""


def publish_settings(candidate: str, dedup: bool, retention_ms: int, window_ms: int,
                     budget: int, meta_ttl_ms: int) -> str:
    """The settings argument of :data:`PUBLISH`: the epoch to give a channel that has none,
    whether to de-duplicate, the retention, the dedup window and the meta key's TTL (ms),
    the channel's budget (bytes)."""
    return f"{candidate} {int(dedup)} {retention_ms} {window_ms} {budget} {meta_ttl_ms}"


def meta_key(channel: str) -> str:
    return f"{PREFIX}m:{channel}"


def stream_key(channel: str) -> str:
    return f"{PREFIX}s:{channel}"


def dedup_key(channel: str, key: str) -> str:
    return f"{PREFIX}i:{len(channel)}:{channel}{key}"


def presence_key(channel: str) -> str:
    return f"{PREFIX}pr:{channel}"


def node_channels_key(node: str) -> str:
    return f"{PREFIX}np:{node}"


NODES = f"{PREFIX}nodes"
NODE_INFO = f"{PREFIX}nodeinfo"
#: API keys made on a node (``server.create_key``): key id -> JSON {value, capability}, and
#: the ids of revoked keys. Every node loads them at start and hears of changes on the
#: control channel (:func:`control_channel`).
KEYS = f"{PREFIX}keys"
REVOKED = f"{PREFIX}revoked"


def control_channel(db: int) -> str:
    """PUB/SUB channel of key changes: ``k <json>`` (a key made), ``r <key id>`` (revoked)."""
    return f"{PREFIX}{db}:ctl"


def pubsub_channel(db: int, channel: str) -> str:
    return f"{PREFIX}{db}:p:{channel}"
