"""The in-process store: the Store contract on a fake clock, plus what only it has (``max_keys``)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from turnout.adapters.stores.memory import MemorySettings, MemoryStore
from turnout.kernel.errors import TurnoutError
from turnout.kernel.store import LockTimeout, Store, StoreError

from .store_contract import FakeClock, StoreContract

pytestmark = pytest.mark.anyio


class TestMemoryStore(StoreContract):
    async def create(self) -> tuple[Store, FakeClock]:
        clock = FakeClock()
        return MemoryStore(clock=clock), clock


def small(max_keys: int) -> tuple[MemoryStore, FakeClock]:
    clock = FakeClock()
    return MemoryStore(MemorySettings(max_keys=max_keys), clock=clock), clock


async def test_expired_entries_are_evicted_before_live_ones():
    store, clock = small(3)
    await store.set("forever", b"1")
    await store.set("old", b"2", ttl_s=1)
    await store.set("later", b"3", ttl_s=50)
    clock.advance(5)
    await store.set("new", b"4")
    assert [await store.get(k) for k in ("forever", "later", "new")] == [b"1", b"3", b"4"]
    assert store._size() == 3


async def test_the_soonest_expiring_entry_is_evicted_first():
    store, _ = small(3)
    await store.set("a", b"a", ttl_s=100)
    await store.set("b", b"b")
    await store.set("c", b"c", ttl_s=10)
    await store.set("d", b"d", ttl_s=1000)
    assert [await store.get(k) for k in "abcd"] == [b"a", b"b", None, b"d"]


async def test_values_without_ttl_go_least_recently_set_first():
    store, _ = small(2)
    await store.set("a", b"a")
    await store.set("b", b"b")
    await store.set("a", b"a2")  # rewriting makes it the most recent
    await store.set("c", b"c")
    assert [await store.get(k) for k in "abc"] == [b"a2", None, b"c"]


async def test_the_entry_just_written_is_never_the_one_evicted():
    store, _ = small(1)
    await store.set("forever", b"1")
    await store.set("brief", b"2", ttl_s=1)  # expires sooner, but was just written
    assert (await store.get("forever"), await store.get("brief")) == (None, b"2")


async def test_windows_ledgers_and_locks_count_towards_max_keys():
    store, _ = small(2)
    await store.window_add("rpm", window_s=5, limit=10)  # expires first
    await store.set("v", b"v")
    await store.reserve("budget", 1, limit=10, ttl_s=60)
    assert await store.window_total("rpm", window_s=5) == 0.0
    assert await store.get("v") == b"v"
    assert await store.ledger_total("budget") == 1.0
    async with store.lock("fill", ttl_s=30):  # the ledger's reservation expires last but one
        assert store._size() == 2
        assert await store.ledger_total("budget") == 0.0
        assert await store.get("v") == b"v"


async def test_rewriting_keys_many_times_keeps_the_eviction_heap_small():
    store, clock = small(5)
    for n in range(2000):
        await store.window_add("rpm", window_s=60)
        await store.set(f"k{n % 3}", b"x", ttl_s=600)
        clock.advance(0.01)
    assert store._size() == 4
    assert len(store._heap) <= 2 * 4 + 64 + 1
    assert await store.window_total("rpm", window_s=60) == 2000.0


def test_settings_are_checked_and_exposed_on_the_class():
    assert MemoryStore.Settings is MemorySettings
    assert MemorySettings().max_keys == 100_000
    with pytest.raises(ValidationError):
        MemorySettings(max_keys=0)
    with pytest.raises(ValidationError):
        MemorySettings(max_key=5)


def test_store_errors_are_503_kernel_errors():
    assert issubclass(LockTimeout, StoreError) and issubclass(StoreError, TurnoutError)
    assert (StoreError.status, StoreError.type, StoreError.code) == (503, "api_error",
                                                                     "store_unavailable")
    assert (LockTimeout.status, LockTimeout.code) == (503, "lock_timeout")
    assert LockTimeout("x").to_openai()["error"]["code"] == "lock_timeout"
