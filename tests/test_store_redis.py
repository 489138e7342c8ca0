"""The Redis store against a real server: the Store contract on a fake clock, then what only a
shared server shows (two replicas, the server's own clock, an unreachable server).

Needs Redis at ``TURNOUT_TEST_REDIS_URL`` (default ``redis://127.0.0.1:6379/0``). Each test writes
under its own ``turnout-test:<uuid>:`` prefix and deletes every key under it afterwards. Without a
server these tests skip, except under ``CI=true``, where they fail.
"""

from __future__ import annotations

import time
import uuid

import anyio
import pytest
import redis
from pydantic import ValidationError

from turnout.adapters.stores import register_stores
from turnout.adapters.stores.redis import RedisSettings, RedisStore
from turnout.kernel.store import LockTimeout, Reservation, Store, StoreError, WindowResult

from .redis_support import prefix_fixture, redis_url_fixture  # noqa: F401 - redis_url, prefix
from .store_contract import FakeClock, StoreContract

pytestmark = pytest.mark.anyio

def _keys(url: str, pattern: str) -> list[bytes]:
    client = redis.Redis.from_url(url)
    try:
        return list(client.scan_iter(match=pattern, count=1000))
    finally:
        client.close()


def settings(url: str, prefix: str, **more) -> RedisSettings:
    return RedisSettings(url=url, key_prefix=prefix, **more)


class TestRedisStore(StoreContract):
    @pytest.fixture(autouse=True)
    def _isolated(self, redis_url: str, prefix: str) -> None:
        self._settings = settings(redis_url, prefix)

    async def create(self) -> tuple[Store, FakeClock]:
        clock = FakeClock()
        return RedisStore(self._settings, clock=clock), clock


# --- replicas ---------------------------------------------------------------------------------

async def test_two_replicas_admit_exactly_the_limit_together(redis_url, prefix):
    replicas = [RedisStore(settings(redis_url, prefix)) for _ in range(2)]  # server clock
    try:
        added: list[WindowResult] = []
        reserved: list[Reservation | None] = []

        async def add(store: RedisStore) -> None:
            added.append(await store.window_add("rpm", window_s=60, limit=10))

        async def reserve(store: RedisStore) -> None:
            reserved.append(await store.reserve("budget", 1.5, limit=15, ttl_s=60))

        async with anyio.create_task_group() as tg:
            for n in range(40):
                tg.start_soon(add, replicas[n % 2])
                tg.start_soon(reserve, replicas[n % 2])
        assert (len(added), len(reserved)) == (40, 40)
        assert sum(r.admitted for r in added) == 10
        assert sum(r is not None for r in reserved) == 10
        for store in replicas:  # both see the one shared state
            assert await store.window_total("rpm", window_s=60) == 10.0
            assert await store.ledger_total("budget") == 15.0
        assert await replicas[1].reserve("budget", 0.01, limit=15, ttl_s=60) is None
        held = next(r for r in reserved if r is not None)
        assert await replicas[0].settle(held, 1.0) == 1.0
        assert await replicas[1].settle(held, 1.0) == 1.0  # settled once, whichever replica asks
        assert await replicas[1].ledger_total("budget") == 14.5
    finally:
        for store in replicas:
            await store.aclose()


async def test_without_a_clock_the_server_time_is_used(redis_url, prefix):
    store = RedisStore(settings(redis_url, prefix))
    probe = redis.asyncio.Redis.from_url(redis_url)
    try:
        assert (await store.window_add("rps", window_s=0.2, limit=1)).admitted
        refused = await store.window_add("rps", window_s=0.2, limit=1)
        assert refused.admitted is False
        assert 0 < refused.retry_after_s <= 0.2
        await store.set("v", b"x", ttl_s=0.2)
        seconds, micros = await probe.time()
        held = await store.reserve("budget", 1, limit=1, ttl_s=0.2)
        assert held is not None
        assert held.expires_at == pytest.approx(seconds + micros / 1e6 + 0.2, abs=0.1)
        await anyio.sleep(0.3)  # real time passes on the server
        assert await store.window_total("rps", window_s=0.2) == 0.0
        assert (await store.window_add("rps", window_s=0.2, limit=1)).admitted
        assert await store.get("v") is None
        assert await store.reserve("budget", 1, limit=1, ttl_s=0.2) is not None
    finally:
        await probe.aclose()
        await store.aclose()


async def test_a_lock_on_the_server_clock_expires_after_its_ttl(redis_url, prefix):
    store = RedisStore(settings(redis_url, prefix))
    try:
        old = store.lock("fill", ttl_s=0.2)
        await old.__aenter__()
        with pytest.raises(LockTimeout):
            async with store.lock("fill", ttl_s=0.2):
                pass
        started = time.monotonic()
        async with store.lock("fill", ttl_s=5, wait_s=2):  # taken once the dead holder's expires
            assert 0.1 <= time.monotonic() - started < 1.5
            await old.__aexit__(None, None, None)  # the old holder cannot drop the new lock
            with pytest.raises(LockTimeout):
                async with store.lock("fill", ttl_s=5):
                    pass
    finally:
        await store.aclose()


# --- keys -------------------------------------------------------------------------------------

async def test_every_key_is_under_the_prefix_with_one_sub_prefix_per_kind(redis_url, prefix):
    store = RedisStore(settings(redis_url, prefix), clock=FakeClock())
    marker = uuid.uuid4().hex
    try:
        await store.window_add(marker, window_s=10)
        await store.window_add(marker, window_s=10, sliding=False)
        held = await store.reserve(marker, 1, limit=5, ttl_s=10)
        await store.settle(held, 1)
        await store.reserve(marker, 1, limit=5, ttl_s=10)
        await store.set(marker, b"v")
        lock = store.lock(marker, ttl_s=10)
        await lock.__aenter__()
        written = sorted(k.decode() for k in _keys(redis_url, f"*{marker}*"))
        await lock.__aexit__(None, None, None)
    finally:
        await store.aclose()
    assert written == sorted(f"{prefix}{kind}:{marker}" for kind in (
        "sliding", "sliding-sum", "fixed", "ledger", "reservations", "settled-ids", "value",
        "lock"))


# --- failures ---------------------------------------------------------------------------------

async def test_an_unreachable_server_raises_a_store_error_saying_what_to_do():
    store = RedisStore(RedisSettings(url="redis://:hunter2@127.0.0.1:1/0", socket_timeout_s=0.5))
    try:
        for call in (store.window_add("rpm", window_s=10, limit=1), store.get("k"),
                     store.reserve("b", 1, limit=2, ttl_s=5), store.ledger_total("b")):
            with pytest.raises(StoreError) as caught:
                await call
            assert type(caught.value) is StoreError  # not a redis-py exception
            message = str(caught.value)
            assert "redis://:***@127.0.0.1:1/0" in message and "hunter2" not in message
            assert "is Redis running?" in message and "redis-server --daemonize yes" in message
        with pytest.raises(StoreError):
            async with store.lock("fill", ttl_s=1):
                pytest.fail("locked without a server")
    finally:
        await store.aclose()


# --- settings and registration ----------------------------------------------------------------

def test_settings_are_checked_documented_and_exposed_on_the_class():
    assert RedisStore.Settings is RedisSettings
    defaults = RedisSettings()
    assert (defaults.url, defaults.key_prefix, defaults.max_connections,
            defaults.socket_timeout_s) == ("redis://127.0.0.1:6379/0", "turnout:", 50, 2.0)
    assert all(field.description for field in RedisSettings.model_fields.values())
    for bad in ({"urls": "redis://x"}, {"url": "http://127.0.0.1:6379"}, {"max_connections": 0},
                {"socket_timeout_s": 0}, {"key_prefix": ""}):
        with pytest.raises(ValidationError):
            RedisSettings(**bad)
    with pytest.raises(ValidationError):
        defaults.url = "redis://elsewhere"  # frozen


def test_redis_is_registered_as_a_backend():
    backends: dict[str, type] = {}
    register_stores(lambda name, cls: backends.__setitem__(name, cls))
    assert backends["redis"] is RedisStore
