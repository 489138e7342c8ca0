"""What every :class:`~turnout.kernel.store.Store` promises, whatever holds the state.

:class:`StoreContract` is a mixin of async tests. A backend's test module subclasses it as
``TestXStore``, implements :meth:`StoreContract.create` (a fresh, empty store and a clock that
store reads, with ``advance(seconds)``), and sets ``pytestmark = pytest.mark.anyio``. The memory
store takes a :class:`FakeClock`; a server-side store needs a clock its server honours.

Store time moves only through ``clock.advance``; lock waits are real (short) sleeps, because
waiting for a lock is measured in real time.
"""

from __future__ import annotations

import time
from typing import Protocol

import anyio
import pytest

from turnout.kernel.store import LockTimeout, Reservation, Store, WindowAdd, WindowResult

T0 = 36_000.0
"""Where a :class:`FakeClock` starts: a multiple of every fixed window used here."""


class Clock(Protocol):
    def advance(self, seconds: float) -> None: ...


class FakeClock:
    """A store clock that moves only when told."""

    def __init__(self, start: float = T0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class StoreContract:
    """The tests every Store backend must pass. Subclasses implement :meth:`create`."""

    async def create(self) -> tuple[Store, Clock]:
        """A fresh, empty store and its clock, which reads ``T0`` (a window boundary) at first."""
        raise NotImplementedError

    @pytest.fixture(autouse=True)
    async def _close_stores(self, anyio_backend):
        self._stores: list[Store] = []
        yield
        for store in self._stores:
            await store.aclose()

    async def make(self) -> tuple[Store, Clock]:
        store, clock = await self.create()
        self._stores.append(store)
        return store, clock

    # --- sliding windows -------------------------------------------------------------------------

    async def test_sliding_window_admits_up_to_the_limit_then_refuses(self):
        store, clock = await self.make()
        seen = []
        for _ in range(3):
            seen.append(await store.window_add("rpm", window_s=10, limit=3))
            clock.advance(1)
        assert seen == [WindowResult(True, 1.0, None), WindowResult(True, 2.0, None),
                        WindowResult(True, 3.0, None)]
        refused = await store.window_add("rpm", window_s=10, limit=3)  # at T0 + 3
        assert refused.admitted is False
        assert refused.total == 3.0
        assert refused.retry_after_s == pytest.approx(7.0)  # the add at T0 leaves at T0 + 10
        assert await store.window_total("rpm", window_s=10) == 3.0  # the refusal added nothing

    async def test_sliding_window_admits_again_once_the_oldest_add_has_left(self):
        store, clock = await self.make()
        await store.window_add("rpm", window_s=10, limit=2)
        clock.advance(4)
        await store.window_add("rpm", window_s=10, limit=2)
        clock.advance(5.5)  # T0 + 9.5
        early = await store.window_add("rpm", window_s=10, limit=2)
        assert (early.admitted, early.retry_after_s) == (False, pytest.approx(0.5))
        clock.advance(0.5)  # T0 + 10: the first add has left the window
        again = await store.window_add("rpm", window_s=10, limit=2)
        assert (again.admitted, again.total, again.retry_after_s) == (True, 2.0, None)
        refused = await store.window_add("rpm", window_s=10, limit=2)
        assert refused.retry_after_s == pytest.approx(4.0)  # now the add at T0 + 4 is the oldest

    async def test_sliding_retry_after_waits_for_enough_room_for_the_amount(self):
        store, clock = await self.make()
        for amount in (2.0, 3.0, 1.0):  # at T0, T0 + 1, T0 + 2
            assert (await store.window_add("tpm", amount, window_s=10, limit=6)).admitted
            clock.advance(1)
        refused = await store.window_add("tpm", 4.0, window_s=10, limit=6)  # at T0 + 3
        # Room for 4 needs the first two adds gone (6 - 2 - 3 = 1); the second leaves at T0 + 11.
        assert (refused.admitted, refused.total) == (False, 6.0)
        assert refused.retry_after_s == pytest.approx(8.0)
        clock.advance(7.5)
        assert not (await store.window_add("tpm", 4.0, window_s=10, limit=6)).admitted
        clock.advance(0.5)
        admitted = await store.window_add("tpm", 4.0, window_s=10, limit=6)
        assert (admitted.admitted, admitted.total) == (True, 5.0)

    async def test_a_sliding_total_stays_exact_as_entries_come_and_go(self):
        store, clock = await self.make()
        added: list[tuple[float, float]] = []
        for i in range(300):  # one add every 0.25 s over a 10 s window, amounts 0.1 .. 1.0
            amount = round(0.1 * (1 + i % 10), 1)
            result = await store.window_add("tpm", amount, window_s=10)
            added.append((i * 0.25, amount))
            in_window = sum(a for at, a in added if at > i * 0.25 - 10)
            assert result.total == pytest.approx(in_window, abs=1e-9)
            clock.advance(0.25)
        clock.advance(10)
        assert await store.window_total("tpm", window_s=10) == 0.0
        fresh = await store.window_add("tpm", 0.3, window_s=10)
        assert fresh.total == 0.3, "an emptied window starts again from nothing"

    async def test_window_add_all_adds_to_every_window_or_to_none(self):
        store, clock = await self.make()
        both = [WindowAdd("rpm:a", 1, 10, limit=2), WindowAdd("tpm:a", 50, 10, limit=100)]
        first = await store.window_add_all(both)
        assert first == [WindowResult(True, 1.0, None), WindowResult(True, 50.0, None)]
        clock.advance(1)
        second = await store.window_add_all(both)
        assert [r.total for r in second] == [2.0, 100.0]
        clock.advance(1)
        tokens_only = await store.window_add_all([WindowAdd("tpm:a", 1, 10, limit=100),
                                                  WindowAdd("rpm:b", 1, 10, limit=5)])
        assert tokens_only[0].admitted is False and tokens_only[0].retry_after_s == \
            pytest.approx(8.0)
        assert tokens_only[1] == WindowResult(True, 0.0, None), "room, but nothing added"
        assert await store.window_total("rpm:b", window_s=10) == 0.0
        too_big = await store.window_add_all([WindowAdd("rpm:c", 3, 10, limit=2)])
        assert too_big == [WindowResult(False, 0.0, None)]
        assert await store.window_add_all([]) == []

    async def test_amounts_that_fit_only_after_float_rounding_are_admitted(self):
        store, _ = await self.make()
        assert (await store.window_add("usd", 0.1, window_s=60, limit=0.3)).admitted
        assert (await store.window_add("usd", 0.2, window_s=60, limit=0.3)).admitted
        assert not (await store.window_add("usd", 0.01, window_s=60, limit=0.3)).admitted

    # --- fixed windows ---------------------------------------------------------------------------

    async def test_fixed_window_resets_at_the_boundary(self):
        store, clock = await self.make()
        clock.advance(3)  # T0 + 3; the windows are [T0, T0 + 10), [T0 + 10, T0 + 20), ...
        assert (await store.window_add("rpm", window_s=10, limit=2, sliding=False)).total == 1.0
        clock.advance(3)
        assert (await store.window_add("rpm", window_s=10, limit=2, sliding=False)).total == 2.0
        refused = await store.window_add("rpm", window_s=10, limit=2, sliding=False)  # T0 + 6
        assert (refused.admitted, refused.total) == (False, 2.0)
        assert refused.retry_after_s == pytest.approx(4.0)  # to the boundary, not to T0 + 13
        clock.advance(3.75)
        refused = await store.window_add("rpm", window_s=10, limit=2, sliding=False)
        assert refused.retry_after_s == pytest.approx(0.25)
        assert await store.window_total("rpm", window_s=10, sliding=False) == 2.0
        clock.advance(0.25)  # T0 + 10: a new window
        assert await store.window_total("rpm", window_s=10, sliding=False) == 0.0
        admitted = await store.window_add("rpm", window_s=10, limit=2, sliding=False)
        assert (admitted.admitted, admitted.total, admitted.retry_after_s) == (True, 1.0, None)

    async def test_fixed_window_counts_amounts(self):
        store, clock = await self.make()
        assert (await store.window_add("tpm", 700, window_s=60, limit=1000, sliding=False)).admitted
        refused = await store.window_add("tpm", 301, window_s=60, limit=1000, sliding=False)
        assert (refused.admitted, refused.total, refused.retry_after_s) == (False, 700.0,
                                                                           pytest.approx(60.0))
        admitted = await store.window_add("tpm", 300, window_s=60, limit=1000, sliding=False)
        assert (admitted.admitted, admitted.total) == (True, 1000.0)

    # --- both kinds ------------------------------------------------------------------------------

    @pytest.mark.parametrize("sliding", [True, False], ids=["sliding", "fixed"])
    async def test_an_amount_over_the_limit_is_never_admitted_and_has_no_retry(self, sliding):
        store, clock = await self.make()
        await store.window_add("tpm", 2, window_s=10, limit=10, sliding=sliding)
        result = await store.window_add("tpm", 11, window_s=10, limit=10, sliding=sliding)
        assert result == WindowResult(False, 2.0, None)
        clock.advance(60)
        result = await store.window_add("tpm", 11, window_s=10, limit=10, sliding=sliding)
        assert result == WindowResult(False, 0.0, None)

    @pytest.mark.parametrize("sliding", [True, False], ids=["sliding", "fixed"])
    async def test_no_limit_always_admits(self, sliding):
        store, _ = await self.make()
        for n in range(1, 101):
            result = await store.window_add("seen", 1.5, window_s=10, sliding=sliding)
            assert result == WindowResult(True, 1.5 * n, None)
        assert await store.window_total("seen", window_s=10, sliding=sliding) == 150.0

    async def test_window_total_counts_the_last_window_without_adding(self):
        store, clock = await self.make()
        assert await store.window_total("rpm", window_s=10) == 0.0
        await store.window_add("rpm", 5, window_s=10)
        clock.advance(6)
        await store.window_add("rpm", 2, window_s=10)
        assert await store.window_total("rpm", window_s=10) == 7.0
        assert await store.window_total("rpm", window_s=10) == 7.0
        clock.advance(4)  # the 5 has left
        assert await store.window_total("rpm", window_s=10) == 2.0
        clock.advance(6)
        assert await store.window_total("rpm", window_s=10) == 0.0
        assert await store.window_total("other", window_s=10) == 0.0

    async def test_windows_of_different_keys_are_apart(self):
        store, _ = await self.make()
        assert (await store.window_add("a", 3, window_s=10, limit=3)).admitted
        assert (await store.window_add("b", 3, window_s=10, limit=3)).admitted
        assert not (await store.window_add("a", 1, window_s=10, limit=3)).admitted

    # --- ledgers ---------------------------------------------------------------------------------

    async def test_reserve_counts_outstanding_reservations(self):
        store, _ = await self.make()
        first = await store.reserve("budget", 4, limit=10, ttl_s=60)
        assert isinstance(first, Reservation)
        assert (first.key, first.amount) == ("budget", 4.0)
        second = await store.reserve("budget", 4, limit=10, ttl_s=60)
        assert second is not None and second.id != first.id
        assert await store.reserve("budget", 3, limit=10, ttl_s=60) is None
        assert await store.reserve("budget", 2, limit=10, ttl_s=60) is not None
        assert await store.ledger_total("budget") == 10.0
        assert await store.reserve("budget", 0.5, limit=10, ttl_s=60) is None
        assert await store.reserve("budget", 11, limit=20, ttl_s=60) is None  # 10 + 11 > 20
        assert await store.ledger_total("elsewhere") == 0.0

    async def test_reservation_expiry_is_on_the_store_clock(self):
        store, clock = await self.make()
        clock.advance(5)
        before = await store.reserve("budget", 1, limit=10, ttl_s=30)
        assert before is not None
        clock.advance(10)
        after = await store.reserve("budget", 1, limit=10, ttl_s=30)
        assert after is not None
        assert after.expires_at - before.expires_at == pytest.approx(10.0)

    async def test_settle_replaces_the_reserved_amount_by_the_actual_one(self):
        store, _ = await self.make()
        held = await store.reserve("budget", 5, limit=10, ttl_s=60)
        other = await store.reserve("budget", 1, limit=10, ttl_s=60)
        assert await store.settle(held, 3) == 3.0
        assert await store.ledger_total("budget") == 4.0  # 3 settled + 1 still reserved
        assert await store.reserve("budget", 7, limit=10, ttl_s=60) is None
        assert await store.reserve("budget", 6, limit=10, ttl_s=60) is not None
        assert await store.settle(other, 0.5) == 3.5

    async def test_settle_may_exceed_the_reservation_and_is_never_refused(self):
        store, _ = await self.make()
        held = await store.reserve("budget", 2, limit=10, ttl_s=60)
        assert await store.settle(held, 12) == 12.0
        assert await store.ledger_total("budget") == 12.0
        assert await store.reserve("budget", 0.5, limit=10, ttl_s=60) is None

    async def test_settling_twice_adds_once(self):
        store, _ = await self.make()
        held = await store.reserve("budget", 5, limit=10, ttl_s=60)
        assert await store.settle(held, 3) == 3.0
        assert await store.settle(held, 3) == 3.0
        assert await store.settle(held, 9) == 3.0
        assert await store.ledger_total("budget") == 3.0
        await store.release(held)  # after settling: nothing to drop, the spend stays
        assert await store.ledger_total("budget") == 3.0

    async def test_release_frees_the_reservation(self):
        store, _ = await self.make()
        held = await store.reserve("budget", 8, limit=10, ttl_s=60)
        assert await store.reserve("budget", 5, limit=10, ttl_s=60) is None
        await store.release(held)
        assert await store.ledger_total("budget") == 0.0
        await store.release(held)  # idempotent
        assert await store.reserve("budget", 5, limit=10, ttl_s=60) is not None
        assert await store.ledger_total("budget") == 5.0

    async def test_an_unsettled_reservation_stops_counting_after_its_ttl(self):
        store, clock = await self.make()
        held = await store.reserve("budget", 8, limit=10, ttl_s=30)
        clock.advance(29)
        assert await store.ledger_total("budget") == 8.0
        assert await store.reserve("budget", 5, limit=10, ttl_s=30) is None
        clock.advance(1.5)
        assert await store.ledger_total("budget") == 0.0
        late = await store.reserve("budget", 5, limit=10, ttl_s=30)
        assert late is not None
        # A late settle still counts what was spent, once.
        assert await store.settle(held, 4) == 4.0
        assert await store.settle(held, 4) == 4.0
        assert await store.ledger_total("budget") == 9.0

    async def test_settled_spend_does_not_expire(self):
        store, clock = await self.make()
        held = await store.reserve("budget", 5, limit=10, ttl_s=30)
        await store.settle(held, 5)
        clock.advance(7 * 24 * 3600)
        assert await store.ledger_total("budget") == 5.0
        assert await store.reserve("budget", 6, limit=10, ttl_s=30) is None

    # --- values ----------------------------------------------------------------------------------

    async def test_get_set_delete(self):
        store, clock = await self.make()
        assert await store.get("k") is None
        await store.set("k", b"one")
        assert await store.get("k") == b"one"
        await store.set("k", b"\x00two")
        assert await store.get("k") == b"\x00two"
        clock.advance(1e6)  # no ttl: kept
        assert await store.get("k") == b"\x00two"
        assert await store.get("other") is None
        assert await store.delete("k") is True
        assert await store.get("k") is None
        assert await store.delete("k") is False

    async def test_values_expire_after_their_ttl(self):
        store, clock = await self.make()
        await store.set("k", b"v", ttl_s=5)
        clock.advance(4.9)
        assert await store.get("k") == b"v"
        clock.advance(0.2)
        assert await store.get("k") is None
        assert await store.delete("k") is False
        await store.set("k", b"short", ttl_s=5)
        await store.set("k", b"forever")  # a set without ttl drops the old ttl
        clock.advance(10)
        assert await store.get("k") == b"forever"
        await store.set("k", b"again", ttl_s=5)  # and a set with one adds it
        clock.advance(6)
        assert await store.get("k") is None

    # --- locks -----------------------------------------------------------------------------------

    async def test_get_or_lock_takes_the_lock_only_when_there_is_no_value(self):
        store, clock = await self.make()
        assert await store.get_or_lock("answer", "fill", "leader", 10) == (None, True)
        assert await store.get_or_lock("answer", "fill", "follower", 10) == (None, False)
        await store.set_and_unlock("answer", b"42", ttl_s=5, lock="fill", token="leader")
        assert await store.get_or_lock("answer", "fill", "late", 10) == (b"42", False)
        assert await store.try_lock("fill", "other", 10), "the leader's lock was released"
        clock.advance(5)  # the value expired
        assert await store.get_or_lock("answer", "fill2", "next", 10) == (None, True)

    async def test_set_and_unlock_keeps_a_lock_another_token_holds(self):
        store, clock = await self.make()
        assert await store.try_lock("fill", "holder", 10)
        await store.set_and_unlock("answer", b"v", ttl_s=None, lock="fill", token="stranger")
        assert await store.get("answer") == b"v"
        assert not await store.try_lock("fill", "third", 10), "still the holder's"

    async def test_a_held_lock_refuses_a_second_holder_that_will_not_wait(self):
        store, _ = await self.make()
        async with store.lock("fill:x", ttl_s=10):
            with pytest.raises(LockTimeout):
                async with store.lock("fill:x", ttl_s=10):
                    pytest.fail("two holders at once")
            async with store.lock("fill:y", ttl_s=10):  # other keys are free
                pass
        async with store.lock("fill:x", ttl_s=10):  # released on leaving the block
            pass

    async def test_a_lock_is_released_when_its_block_raises(self):
        store, _ = await self.make()
        with pytest.raises(RuntimeError):
            async with store.lock("fill:x", ttl_s=10):
                raise RuntimeError("boom")
        async with store.lock("fill:x", ttl_s=10):
            pass

    async def test_a_waiter_gets_the_lock_when_the_holder_leaves_within_its_wait(self):
        store, _ = await self.make()
        events: list[str] = []
        held = anyio.Event()

        async def first():
            async with store.lock("fill:x", ttl_s=10):
                events.append("first in")
                held.set()
                await anyio.sleep(0.05)
                events.append("first out")

        async def second():
            await held.wait()
            started = time.monotonic()
            async with store.lock("fill:x", ttl_s=10, wait_s=1.0):
                events.append("second in")
                waited = time.monotonic() - started
            assert waited >= 0.03

        with anyio.fail_after(2):
            async with anyio.create_task_group() as tg:
                tg.start_soon(first)
                tg.start_soon(second)
        assert events == ["first in", "first out", "second in"]

    async def test_a_waiter_gives_up_after_its_wait(self):
        store, _ = await self.make()
        async with store.lock("fill:x", ttl_s=10):
            started = time.monotonic()
            with pytest.raises(LockTimeout):
                async with store.lock("fill:x", ttl_s=10, wait_s=0.05):
                    pytest.fail("two holders at once")
            assert 0.04 <= time.monotonic() - started < 1.0

    async def test_only_one_of_many_concurrent_lockers_holds_the_lock(self):
        store, _ = await self.make()
        outcomes: list[str] = []

        async def attempt():
            try:
                async with store.lock("fill:x", ttl_s=10):
                    outcomes.append("held")
                    await anyio.sleep(0.02)
            except LockTimeout:
                outcomes.append("refused")

        async with anyio.create_task_group() as tg:
            for _ in range(20):
                tg.start_soon(attempt)
        assert sorted(outcomes) == ["held"] + ["refused"] * 19

    async def test_an_expired_lock_can_be_taken_and_the_old_holder_cannot_release_it(self):
        store, clock = await self.make()
        old = store.lock("fill:x", ttl_s=5)
        await old.__aenter__()
        clock.advance(6)  # the holder "died": its lock has expired
        new = store.lock("fill:x", ttl_s=5)
        await new.__aenter__()  # no wait needed
        try:
            await old.__aexit__(None, None, None)  # the old holder wakes up and leaves
            with pytest.raises(LockTimeout):  # the new holder still holds it
                async with store.lock("fill:x", ttl_s=5):
                    pass
        finally:
            await new.__aexit__(None, None, None)
        async with store.lock("fill:x", ttl_s=5):
            pass

    # --- concurrency -----------------------------------------------------------------------------

    @pytest.mark.parametrize("sliding", [True, False], ids=["sliding", "fixed"])
    async def test_concurrent_adds_admit_exactly_the_limit(self, sliding):
        store, _ = await self.make()
        results: list[WindowResult] = []

        async def add():
            results.append(await store.window_add("rpm", window_s=60, limit=10, sliding=sliding))

        async with anyio.create_task_group() as tg:
            for _ in range(50):
                tg.start_soon(add)
        assert sum(r.admitted for r in results) == 10
        assert len(results) == 50
        assert await store.window_total("rpm", window_s=60, sliding=sliding) == 10.0

    async def test_concurrent_reservations_admit_exactly_the_limit(self):
        store, _ = await self.make()
        results: list[Reservation | None] = []

        async def reserve():
            results.append(await store.reserve("budget", 1, limit=10, ttl_s=60))

        async with anyio.create_task_group() as tg:
            for _ in range(50):
                tg.start_soon(reserve)
        assert len(results) == 50
        assert sum(r is not None for r in results) == 10
        assert len({r.id for r in results if r is not None}) == 10
        assert await store.ledger_total("budget") == 10.0
