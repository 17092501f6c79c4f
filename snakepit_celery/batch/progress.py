"""A map's shared state in Redis: items done, the first error, and its progress stream.

The chunks of one map run on many workers, so what they share lives in one
Redis hash per map, changed only by one Lua script (atomic, one round trip):

* items done and failed, counted *per chunk* as the highest count that chunk
  reported, so a chunk that is redelivered and runs again never counts twice;
* the end of the map: the first error (every chunk then stops and raises that
  same error, so the chord fails with it whichever chunk Celery looks at
  first), a cancel, or ``ok`` once every item is done.

With progress on, the same script appends ``{"done", "total", "failed",
"progress_percent"}`` chunks to the map's stream, laid out exactly as
:mod:`snakepit_celery.streaming.protocol` describes (entry ``n-0`` holds
chunk ``n-1``, the final entry is ``n-1``), so ``Stream.follow(progress_id)``
and the Flask progress page read a map like any stream, and a cancel pushed
by them (``Stream.cancel``) stops the map. The stream's ``alive`` key means
"the map has not ended" here: it lives as long as the stream's TTL, because a
chunk lost with its worker is redelivered and the map goes on.
"""

from __future__ import annotations

import json
from typing import Any

import redis

from snakepit_celery.errors import CommandCancelled, SnakepitError
from snakepit_celery.streaming.protocol import DEFAULT_BUFFER_CHUNKS, DEFAULT_STREAM_TTL, Outcome, StreamKeys

__all__ = ["PROGRESS_INTERVAL", "MapState", "outcome_error", "state_key"]

#: Seconds between two reports of a running chunk (progress entries and the stop check).
PROGRESS_INTERVAL = 0.25

_SCRIPT = """
local data, alive, cancel, state = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local chunk = ARGV[1]
local cdone, cfailed, total = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local ttl, stream, err, buffer = tonumber(ARGV[5]), ARGV[6] == '1', ARGV[7], tonumber(ARGV[8])

local ended = redis.call('HGET', state, 'end')
if ended then
  return {0, ended}
end
local prev = tonumber(redis.call('HGET', state, 'd' .. chunk) or '0')
if cdone > prev then
  redis.call('HSET', state, 'd' .. chunk, cdone)
  redis.call('HINCRBY', state, 'done', cdone - prev)
end
prev = tonumber(redis.call('HGET', state, 'f' .. chunk) or '0')
if cfailed > prev then
  redis.call('HSET', state, 'f' .. chunk, cfailed)
  redis.call('HINCRBY', state, 'failed', cfailed - prev)
end
local done = tonumber(redis.call('HGET', state, 'done') or '0')
local failed = tonumber(redis.call('HGET', state, 'failed') or '0')

local final = nil
if err ~= '' then
  final = {outcome = 'error', error = cjson.decode(err)}
elseif stream and redis.call('LINDEX', cancel, 0) then
  final = {outcome = 'cancelled', reason = redis.call('LINDEX', cancel, 0)}
elseif done >= total then
  final = {outcome = 'ok'}
end

local n = tonumber(redis.call('HGET', state, 'seq') or '0')
if stream then
  local shown = done .. ':' .. failed
  if n == 0 or redis.call('HGET', state, 'shown') ~= shown then
    local item = cjson.encode({done = done, total = total, failed = failed,
      progress_percent = math.floor(done * 1000 / math.max(total, 1)) / 10,
      processed_rows = done, total_rows = total})
    if n == 0 then
      local now = redis.call('TIME')
      redis.call('XADD', data, (n + 1) .. '-0', 's', n, 'j', '[' .. item .. ']',
        't', now[1] .. '.' .. string.format('%06d', tonumber(now[2])))
    else
      redis.call('XADD', data, 'MAXLEN', '~', buffer, (n + 1) .. '-0', 's', n, 'j', '[' .. item .. ']')
    end
    n = n + 1
    redis.call('HSET', state, 'seq', n, 'shown', shown)
  end
end
local encoded = ''
if final then
  final['chunks'] = n
  encoded = cjson.encode(final)
  redis.call('HSET', state, 'end', encoded)
  if stream then
    redis.call('XADD', data, n .. '-1', 'f', encoded)
    redis.call('DEL', alive)
  end
elseif stream then
  redis.call('SET', alive, '1', 'EX', ttl)
end
redis.call('EXPIRE', state, ttl)
if stream then
  redis.call('EXPIRE', data, ttl)
end
return {1, encoded}
"""


def state_key(keys: StreamKeys) -> str:
    """The map's hash beside its stream key."""
    return f"{keys.data}:map"


class MapState:
    """One chunk's view of its map's shared state.

    Args:
        client: the streams' Redis.
        map_id: the map's id (its progress stream's id).
        prefix: the key prefix (the config's ``queue_prefix``).
        chunk: this chunk's number in the map.
        total: items in the whole map.
        stream: write progress entries to the map's stream.
    """

    def __init__(
        self,
        client: redis.Redis,
        map_id: str,
        *,
        prefix: str,
        chunk: int,
        total: int,
        stream: bool,
        ttl: int = DEFAULT_STREAM_TTL,
    ) -> None:
        self.client = client
        self.keys = StreamKeys.for_task(map_id, prefix)
        self.chunk = chunk
        self.total = total
        self.stream = stream
        self.ttl = ttl
        self._script = client.register_script(_SCRIPT)

    def report(self, done: int, failed: int, error: SnakepitError | None = None) -> Outcome | None:
        """Add this chunk's counts (and its error, if it failed); the map's end, once it ended.

        A map that ended before this report (another chunk failed, a cancel)
        returns that earlier end: the caller raises *its* error.
        """
        err = ""
        if error is not None:
            err = json.dumps({"class": type(error).__name__, "args": [str(a) for a in error.args]})
        keys = self.keys
        args: list[Any] = [self.chunk, done, failed, self.total, self.ttl, int(self.stream), err]
        args.append(DEFAULT_BUFFER_CHUNKS)
        _, final = self._script(keys=[keys.data, keys.alive, keys.cancel, state_key(keys)], args=args)
        return Outcome.from_json(final) if final else None


def outcome_error(outcome: Outcome) -> SnakepitError | None:
    """The error a chunk raises for a map that ended with ``outcome``; None for ``ok``."""
    if outcome.status == "error":
        return outcome.error
    if outcome.status == "cancelled":
        return CommandCancelled(f"the map was cancelled: {outcome.reason}")
    return None
