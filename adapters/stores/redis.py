"""The shared store: every replica's windows, ledgers, values and locks in one Redis server.

Each operation is one atomic step on the server: a Lua script (registered once; redis-py sends
EVALSHA and falls back to loading it on NOSCRIPT) or a single command, never a read followed by a
write in Python. So N gateway replicas sharing one Redis admit exactly what one replica would.

**Time.** With ``clock=None`` (production) every script reads the Redis server's clock
(``redis.call('TIME')``), so all replicas agree on windows and expiries whatever their own clocks
say. With a ``clock`` (tests), the scripts receive ``now`` from it as an argument instead.
Either way every expiry is stored in the data and checked by the scripts against ``now``; Redis's
own key expiry (PEXPIRE, same duration) only collects keys nobody touches again. With the server
clock the two agree; with an injected clock the stored expiry is the one that counts.

**Keys.** Everything lives under ``key_prefix`` (``turnout:`` by default), one sub-prefix per
kind of state, so keys of different kinds never collide (``{prefix}{kind}:{caller's key}``):

- ``sliding:<key>``      sorted set: score = time of an add, member = ``<uuid>:<amount>``
- ``sliding-sum:<key>``  string: the sum of the sorted set's amounts, kept as entries come and go
- ``fixed:<key>``        hash ``s`` (window start), ``t`` (total); expires at the window's end
- ``ledger:<key>``       string: the settled total (never expires)
- ``reservations:<key>`` hash: reservation id -> ``"<expires_at> <amount>"``
- ``settled-ids:<key>``  sorted set: settled reservation id, score = when it may be forgotten
- ``value:<key>``        hash ``v`` (the bytes), ``x`` (expiry, absent when none)
- ``lock:<key>``         hash ``t`` (holder's token), ``x`` (expiry)

Ids of adds and reservations are made here (uuid4), so a command redis-py retries after a dropped
connection writes the same member again instead of counting twice.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from typing import Any, ClassVar
from urllib.parse import urlsplit, urlunsplit

import redis.asyncio as aioredis
from pydantic import BaseModel, ConfigDict, Field, field_validator
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from turnout.kernel.store import (
    Reservation,
    Store,
    StoreError,
    WindowAdd,
    WindowResult,
    check_number,
)

SETTLED_IDS_KEPT_S = 24 * 3600.0
"""How long a settled reservation id is remembered after its reservation's expiry."""


class RedisSettings(BaseModel):
    """``[state] backend = "redis"``: the store shared by every replica, in one Redis server."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    url: str = Field(default="redis://127.0.0.1:6379/0", description="Where Redis is: "
                     "redis://[:password@]host:port/db, rediss:// for TLS, unix:///path.sock.")
    key_prefix: str = Field(default="turnout:", min_length=1, description="Every key the gateway "
                            "writes starts with it; give gateways sharing one database different "
                            "prefixes.")
    max_connections: int = Field(default=50, ge=1, description="Most connections held open to "
                                 "Redis by one replica; more concurrent operations wait for one.")
    socket_timeout_s: float = Field(default=2.0, gt=0, description="Seconds to connect, to wait "
                                    "for an answer, or to wait for a free connection before an "
                                    "operation fails with a store error (503).")

    @field_validator("url")
    @classmethod
    def _redis_scheme(cls, url: str) -> str:
        if urlsplit(url).scheme not in ("redis", "rediss", "unix"):
            raise ValueError("must start with redis://, rediss:// or unix://")
        return url


def _redacted(url: str) -> str:
    """``url`` without its password, for error messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = f"{parts.username}:" if parts.username else ":"
    return urlunsplit(parts._replace(netloc=f"{user}***@{netloc}"))


def _window_result(reply: Sequence[Any]) -> WindowResult:
    admitted, total, retry = reply
    return WindowResult(bool(admitted), float(total), float(retry) if retry else None)


def _num(value: float) -> str:
    """A float as a script argument, exactly (repr round-trips)."""
    return repr(float(value))


# --- scripts ----------------------------------------------------------------------------------
# ARGV[1] is always ``now``: seconds on the injected clock, or '' for the server's TIME.

_PRELUDE = """
local function clock(arg)
  if arg ~= '' then return tonumber(arg) end
  local t = redis.call('TIME')
  return tonumber(t[1]) + tonumber(t[2]) / 1000000
end
local function fits(total, amount, limit)
  return limit == nil or total + amount <= limit + 1e-9 * math.max(1.0, math.abs(limit))
end
local function num(x) return string.format('%.17g', x) end
local function ms(s) return math.max(1, math.ceil(s * 1000)) end
local function extend(key, seconds)
  local want = ms(seconds)
  if redis.call('PTTL', key) < want then redis.call('PEXPIRE', key, want) end
end
local now = clock(ARGV[1])
"""

# The log's running sum is kept beside it (KEYS[2]), so an add costs the entries that expire, not
# a pass over the whole window; it is reset to 0 whenever the log empties, so float rounding
# cannot build up.
_SLIDING = _PRELUDE + """
local function amount_of(m) return tonumber(string.sub(m, string.find(m, ':', 1, true) + 1)) end
local function trimmed(log, sum, window)
  local cutoff = num(now - window)
  local gone = redis.call('ZRANGEBYSCORE', log, '-inf', cutoff)
  local total = tonumber(redis.call('GET', sum) or '0')
  if #gone > 0 then
    for i = 1, #gone do total = total - amount_of(gone[i]) end
    redis.call('ZREMRANGEBYSCORE', log, '-inf', cutoff)
  end
  if redis.call('EXISTS', log) == 0 then
    redis.call('DEL', sum)
    return 0.0
  end
  if #gone > 0 then redis.call('SET', sum, num(total), 'KEEPTTL') end
  return total
end
-- Refused: walk the log from its oldest entry until enough has expired for the amount.
local function retry(log, total, amount, limit, window)
  if not fits(0.0, amount, limit) then return '' end
  local entries = redis.call('ZRANGE', log, 0, -1, 'WITHSCORES')
  local remaining = total
  for i = 1, #entries, 2 do
    remaining = remaining - amount_of(entries[i])
    if fits(remaining, amount, limit) then return num(tonumber(entries[i + 1]) + window - now) end
  end
  return num(tonumber(entries[#entries]) + window - now)
end
"""

# KEYS: per add, its log and its sum. ARGV: now, then per add: amount, window_s, limit or '',
# member id -> per add {room, total, retry}; added only when every add has room.
_SLIDING_ADD_ALL = _SLIDING + """
local n = #KEYS / 2
local totals, room = {}, true
for i = 1, n do
  local a = 4 * (i - 1) + 2
  totals[i] = trimmed(KEYS[2 * i - 1], KEYS[2 * i], tonumber(ARGV[a + 1]))
  if not fits(totals[i], tonumber(ARGV[a]), tonumber(ARGV[a + 2])) then room = false end
end
local out = {}
for i = 1, n do
  local a = 4 * (i - 1) + 2
  local amount, window, limit = tonumber(ARGV[a]), tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2])
  if room then
    redis.call('ZADD', KEYS[2 * i - 1], num(now), ARGV[a + 3] .. ':' .. ARGV[a])
    redis.call('PEXPIRE', KEYS[2 * i - 1], ms(window))
    redis.call('SET', KEYS[2 * i], num(totals[i] + amount), 'PX', ms(window))
    out[i] = {1, num(totals[i] + amount), ''}
  elseif fits(totals[i], amount, limit) then
    out[i] = {1, num(totals[i]), ''}
  else
    out[i] = {0, num(totals[i]), retry(KEYS[2 * i - 1], totals[i], amount, limit, window)}
  end
end
return out
"""

# KEYS: sliding, its sum. ARGV: now, window_s -> total
_SLIDING_TOTAL = _SLIDING + """
return num(trimmed(KEYS[1], KEYS[2], tonumber(ARGV[2])))
"""

# KEYS: fixed. ARGV: now, amount, window_s, limit or '' -> {admitted, total, retry}
_FIXED_ADD = _PRELUDE + """
local amount, window, limit = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local start = math.floor(now / window) * window
local held = redis.call('HMGET', KEYS[1], 's', 't')
local total = 0.0
if held[1] and tonumber(held[1]) == start then total = tonumber(held[2]) end
if fits(total, amount, limit) then
  total = total + amount
  redis.call('HSET', KEYS[1], 's', num(start), 't', num(total))
  redis.call('PEXPIRE', KEYS[1], ms(start + window - now))
  return {1, num(total), ''}
end
if not fits(0.0, amount, limit) then return {0, num(total), ''} end
return {0, num(total), num(start + window - now)}
"""

# KEYS: fixed. ARGV: now, window_s -> total
_FIXED_TOTAL = _PRELUDE + """
local window = tonumber(ARGV[2])
local held = redis.call('HMGET', KEYS[1], 's', 't')
if held[1] and tonumber(held[1]) == math.floor(now / window) * window then return held[2] end
return '0'
"""

_LEDGER = _PRELUDE + """
local function settled() return tonumber(redis.call('GET', KEYS[1]) or '0') end
local function live()
  local all, sum = redis.call('HGETALL', KEYS[2]), 0.0
  for i = 1, #all, 2 do
    local v = all[i + 1]
    local sep = string.find(v, ' ', 1, true)
    if tonumber(string.sub(v, 1, sep - 1)) <= now then redis.call('HDEL', KEYS[2], all[i])
    else sum = sum + tonumber(string.sub(v, sep + 1)) end
  end
  return sum
end
"""

# KEYS: ledger, reservations. ARGV: now, amount, limit, ttl_s, id -> expires_at or nil
_RESERVE = _LEDGER + """
local amount, limit, ttl = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
if not fits(settled() + live(), amount, limit) then return false end
redis.call('HSET', KEYS[2], ARGV[5], num(now + ttl) .. ' ' .. ARGV[2])
extend(KEYS[2], ttl)
return num(now + ttl)
"""

# KEYS: ledger, reservations, settled-ids. ARGV: now, actual, id, expires_at -> settled total
_SETTLE = _LEDGER + """
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', num(now))
if redis.call('ZSCORE', KEYS[3], ARGV[3]) then return num(settled()) end
redis.call('HDEL', KEYS[2], ARGV[3])
local total = settled() + tonumber(ARGV[2])
redis.call('SET', KEYS[1], num(total))
local forget = math.max(tonumber(ARGV[4]), now) + tonumber(ARGV[5])
redis.call('ZADD', KEYS[3], num(forget), ARGV[3])
extend(KEYS[3], forget - now)
return num(total)
"""

# KEYS: ledger, reservations. ARGV: now -> settled + live
_LEDGER_TOTAL = _LEDGER + """
return num(settled() + live())
"""

# KEYS: value. ARGV: now -> value or nil
_GET = _PRELUDE + """
local held = redis.call('HMGET', KEYS[1], 'v', 'x')
if not held[1] then return false end
if held[2] and tonumber(held[2]) <= now then redis.call('DEL', KEYS[1]) return false end
return held[1]
"""

_STORE_VALUE = """
redis.call('DEL', KEYS[1])
if ARGV[3] == '' then
  redis.call('HSET', KEYS[1], 'v', ARGV[2])
else
  redis.call('HSET', KEYS[1], 'v', ARGV[2], 'x', num(now + tonumber(ARGV[3])))
  redis.call('PEXPIRE', KEYS[1], ms(tonumber(ARGV[3])))
end
"""

# KEYS: value. ARGV: now, value, ttl_s or ''
_SET = _PRELUDE + _STORE_VALUE + """
return 1
"""

# KEYS: value. ARGV: now -> 1 if a live value was removed
_DELETE = _PRELUDE + """
local x = redis.call('HGET', KEYS[1], 'x')
local alive = redis.call('EXISTS', KEYS[1]) == 1 and (not x or tonumber(x) > now)
redis.call('DEL', KEYS[1])
if alive then return 1 end
return 0
"""

# KEYS: lock. ARGV: now, token, ttl_s -> 1 if taken
_LOCK = _PRELUDE + """
local x = redis.call('HGET', KEYS[1], 'x')
if x and tonumber(x) > now then return 0 end
redis.call('HSET', KEYS[1], 't', ARGV[2], 'x', num(now + tonumber(ARGV[3])))
redis.call('PEXPIRE', KEYS[1], ms(tonumber(ARGV[3])))
return 1
"""

# KEYS: lock. ARGV: token -> 1 if the caller's own lock was dropped (no clock needed)
_UNLOCK = """
if redis.call('HGET', KEYS[1], 't') == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

# KEYS: value, lock. ARGV: now, token, ttl_s -> {value or false, 1 if the lock was taken}
_GET_OR_LOCK = _PRELUDE + """
local held = redis.call('HMGET', KEYS[1], 'v', 'x')
if held[1] and not (held[2] and tonumber(held[2]) <= now) then return {held[1], 0} end
if held[1] then redis.call('DEL', KEYS[1]) end
local x = redis.call('HGET', KEYS[2], 'x')
if x and tonumber(x) > now then return {false, 0} end
redis.call('HSET', KEYS[2], 't', ARGV[2], 'x', num(now + tonumber(ARGV[3])))
redis.call('PEXPIRE', KEYS[2], ms(tonumber(ARGV[3])))
return {false, 1}
"""

# KEYS: value, lock. ARGV: now, value, ttl_s or '', token
_SET_AND_UNLOCK = _PRELUDE + _STORE_VALUE + """
if redis.call('HGET', KEYS[2], 't') == ARGV[4] then redis.call('DEL', KEYS[2]) end
return 1
"""

_SCRIPTS = {"get_or_lock": _GET_OR_LOCK, "set_and_unlock": _SET_AND_UNLOCK,
            "sliding_add_all": _SLIDING_ADD_ALL, "sliding_total": _SLIDING_TOTAL, "fixed_add": _FIXED_ADD,
            "fixed_total": _FIXED_TOTAL, "reserve": _RESERVE, "settle": _SETTLE,
            "ledger_total": _LEDGER_TOTAL, "get": _GET, "set": _SET, "delete": _DELETE,
            "lock": _LOCK, "unlock": _UNLOCK}


class RedisStore(Store):
    """The :class:`~turnout.kernel.store.Store` shared by every replica, in Redis.

    ``clock=None`` takes every time from the Redis server (what replicas need); a ``clock`` is
    for tests, whose scripts then get ``now`` from it (see the module docstring).
    """

    Settings: ClassVar[type[RedisSettings]] = RedisSettings

    def __init__(self, settings: RedisSettings | None = None, *,
                 clock: Callable[[], float] | None = None) -> None:
        self.settings = settings or RedisSettings()
        self._clock = clock
        self._where = _redacted(self.settings.url)
        timeout = self.settings.socket_timeout_s
        # The blocking pool (a ConnectionPool) makes a burst beyond max_connections wait for a
        # free connection, up to the timeout, instead of failing at once.
        self._pool = aioredis.BlockingConnectionPool.from_url(
            self.settings.url, max_connections=self.settings.max_connections, timeout=timeout,
            socket_timeout=timeout, socket_connect_timeout=timeout)
        self._redis = aioredis.Redis(connection_pool=self._pool)
        self._scripts = {name: self._redis.register_script(src) for name, src in _SCRIPTS.items()}

    # --- plumbing ---------------------------------------------------------------------------------

    def _key(self, kind: str, key: str) -> str:
        return f"{self.settings.key_prefix}{kind}:{key}"

    def _sliding_keys(self, key: str) -> list[str]:
        return [self._key("sliding", key), self._key("sliding-sum", key)]

    def _now(self) -> str:
        return "" if self._clock is None else _num(self._clock())

    async def _run(self, script: str, keys: Sequence[str], *args: Any) -> Any:
        """Run one script (or one command, for ``release``) and translate every failure."""
        try:
            if script == "release":
                return await self._redis.hdel(keys[0], *args)
            if script == "ping":
                return await self._redis.ping()
            return await self._scripts[script](keys=list(keys), args=list(args))
        except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
            raise StoreError(
                f"the Redis store at {self._where} cannot be reached ({exc}): is Redis running? "
                f"Start it with `redis-server --daemonize yes`, or set `url` under [state] to "
                f"where it runs") from exc
        except RedisError as exc:
            raise StoreError(f"the Redis store at {self._where} failed: {exc}") from exc

    # --- windows ----------------------------------------------------------------------------------

    async def window_add(self, key: str, amount: float = 1.0, *, window_s: float,
                         limit: float | None = None, sliding: bool = True) -> WindowResult:
        check_number("window_s", window_s, positive=True)
        check_number("amount", amount)
        limit_arg = "" if limit is None else _num(limit)
        if sliding:
            return (await self.window_add_all([WindowAdd(key, amount, window_s, limit)]))[0]
        reply = await self._run("fixed_add", [self._key("fixed", key)], self._now(),
                                _num(amount), _num(window_s), limit_arg)
        return _window_result(reply)

    async def window_add_all(self, adds: Sequence[WindowAdd]) -> list[WindowResult]:
        keys: list[str] = []
        args: list[str] = [self._now()]
        for add in adds:
            check_number("window_s", add.window_s, positive=True)
            check_number("amount", add.amount)
            keys += self._sliding_keys(add.key)
            args += [_num(add.amount), _num(add.window_s),
                     "" if add.limit is None else _num(add.limit), uuid.uuid4().hex]
        if not adds:
            return []
        return [_window_result(reply) for reply in await self._run("sliding_add_all", keys, *args)]

    async def window_total(self, key: str, *, window_s: float, sliding: bool = True) -> float:
        check_number("window_s", window_s, positive=True)
        if sliding:
            total = await self._run("sliding_total", self._sliding_keys(key), self._now(),
                                    _num(window_s))
        else:
            total = await self._run("fixed_total", [self._key("fixed", key)], self._now(),
                                    _num(window_s))
        return float(total)

    # --- ledgers ----------------------------------------------------------------------------------

    def _ledger_keys(self, key: str) -> list[str]:
        return [self._key("ledger", key), self._key("reservations", key),
                self._key("settled-ids", key)]

    async def reserve(self, key: str, amount: float, *, limit: float,
                      ttl_s: float) -> Reservation | None:
        check_number("amount", amount)
        check_number("ttl_s", ttl_s, positive=True)
        rid = uuid.uuid4().hex
        expires_at = await self._run("reserve", self._ledger_keys(key)[:2], self._now(),
                                     _num(amount), _num(limit), _num(ttl_s), rid)
        if expires_at is None:
            return None
        return Reservation(key=key, id=rid, amount=float(amount), expires_at=float(expires_at))

    async def settle(self, reservation: Reservation, actual: float) -> float:
        check_number("actual", actual)
        total = await self._run("settle", self._ledger_keys(reservation.key), self._now(),
                                _num(actual), reservation.id, _num(reservation.expires_at),
                                _num(SETTLED_IDS_KEPT_S))
        return float(total)

    async def release(self, reservation: Reservation) -> None:
        # One command: dropping a live, expired, settled or released reservation is all the same.
        await self._run("release", [self._key("reservations", reservation.key)], reservation.id)

    async def ledger_total(self, key: str) -> float:
        return float(await self._run("ledger_total", self._ledger_keys(key)[:2], self._now()))

    # --- values -----------------------------------------------------------------------------------

    async def get(self, key: str) -> bytes | None:
        return await self._run("get", [self._key("value", key)], self._now())

    async def set(self, key: str, value: bytes, *, ttl_s: float | None = None) -> None:
        if ttl_s is not None:
            check_number("ttl_s", ttl_s, positive=True)
        await self._run("set", [self._key("value", key)], self._now(), bytes(value),
                        "" if ttl_s is None else _num(ttl_s))

    async def delete(self, key: str) -> bool:
        return bool(await self._run("delete", [self._key("value", key)], self._now()))

    # --- locks ------------------------------------------------------------------------------------

    async def try_lock(self, key: str, token: str, ttl_s: float) -> bool:
        return bool(await self._run("lock", [self._key("lock", key)], self._now(), token,
                                    _num(ttl_s)))

    async def unlock(self, key: str, token: str) -> None:
        await self._run("unlock", [self._key("lock", key)], token)

    async def get_or_lock(self, key: str, lock: str, token: str,
                          ttl_s: float) -> tuple[bytes | None, bool]:
        check_number("ttl_s", ttl_s, positive=True)
        value, taken = await self._run("get_or_lock", [self._key("value", key),
                                                       self._key("lock", lock)],
                                       self._now(), token, _num(ttl_s))
        return value, bool(taken)

    async def set_and_unlock(self, key: str, value: bytes, *, ttl_s: float | None, lock: str,
                             token: str) -> None:
        if ttl_s is not None:
            check_number("ttl_s", ttl_s, positive=True)
        await self._run("set_and_unlock", [self._key("value", key), self._key("lock", lock)],
                        self._now(), bytes(value), "" if ttl_s is None else _num(ttl_s), token)

    # --- lifetime ---------------------------------------------------------------------------------

    async def check(self) -> None:
        """Ping the server: a StoreError saying where Redis was looked for and how to start it."""
        await self._run("ping", [])

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._redis.aclose()
        await self._pool.disconnect()
