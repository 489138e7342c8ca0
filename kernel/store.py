"""The shared-state seam: one async interface for everything replicas must agree on.

Rate limits, budgets, caches, provider health and request dedupe all keep their state behind
:class:`Store`. Every operation is a single atomic step on the store's side (a Lua script in Redis,
one statement or transaction in PostgreSQL, one uninterrupted stretch of the event loop in
memory), never a read followed by a write in the caller, so N gateway replicas sharing one store
admit exactly what one replica would. Callers only ever use this interface; backends live in
``turnout.adapters.stores`` and can be swapped without touching them.

Keys are plain strings chosen by the caller (``"rpm:team-a"``, ``"budget:team-a:2025-06"``);
implementations add their own namespace prefix. A key names one kind of state (a window, a ledger,
a value or a lock) and is always used the same way. Times are seconds; "expires", "ttl" and
``expires_at`` are on the store's clock. Amounts are floats compared with a tolerance for float
rounding (a relative 1e-9), so ``0.1 + 0.2`` fits a limit of ``0.3``.
"""

from __future__ import annotations

import contextlib
import math
import uuid
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

import anyio

from .errors import TurnoutError

LOCK_POLL_S = 0.005
"""How often a lock waiter asks again, in seconds of real time."""


def check_number(name: str, value: float, *, positive: bool = False) -> None:
    """Refuse a negative (or, with ``positive``, zero) or NaN amount, window or TTL."""
    if value < 0 or (positive and value == 0) or math.isnan(value):
        raise ValueError(f"{name} must be {'> 0' if positive else '>= 0'}, not {value!r}")


class StoreError(TurnoutError):
    """The shared-state store could not be reached or failed (503)."""

    status = 503
    type = "api_error"
    code = "store_unavailable"


class LockTimeout(StoreError):
    """A lock could not be had within its wait."""

    code = "lock_timeout"


@dataclass(slots=True, frozen=True)
class WindowResult:
    """The answer of :meth:`Store.window_add`."""

    admitted: bool
    """Whether the amount was added."""
    total: float
    """The window's total after the call, counting the amount only if admitted."""
    retry_after_s: float | None
    """When refused: seconds until enough of the window has expired that the same amount would be
    admitted. None when admitted, and when the amount alone exceeds the limit (waiting never
    helps)."""


@dataclass(slots=True, frozen=True)
class WindowAdd:
    """One add of :meth:`Store.window_add_all`: ``amount`` to the sliding window ``key`` of
    ``window_s`` seconds, within ``limit`` (None: no limit)."""

    key: str
    amount: float
    window_s: float
    limit: float | None = None


@dataclass(slots=True, frozen=True)
class Reservation:
    """An amount held against a ledger's limit until it is settled, released or expires."""

    key: str
    """The ledger it was taken on."""
    id: str
    """Unique id; settling is idempotent per id."""
    amount: float
    """The amount held."""
    expires_at: float
    """When an unsettled reservation stops counting, on the store's clock."""


class Store(ABC):
    """Atomic shared state: counters over time windows, budget ledgers, values and locks."""

    # --- windows: rate limits -----------------------------------------------------------------

    @abstractmethod
    async def window_add(self, key: str, amount: float = 1.0, *, window_s: float,
                         limit: float | None = None, sliding: bool = True) -> WindowResult:
        """Add ``amount`` to the counter ``key`` over a window of ``window_s`` seconds, atomically,
        only if ``total + amount <= limit`` (always when ``limit`` is None).

        ``sliding=True`` keeps a log: the total is the sum of the amounts added in the last
        ``window_s`` seconds (each add is stored with its time). ``sliding=False`` uses fixed
        windows aligned to multiples of ``window_s`` on the store's clock: the total resets at each
        boundary, and a refusal's ``retry_after_s`` is the time to the next boundary.
        Returns whether it was admitted, the total after the call, and when to retry.
        """

    @abstractmethod
    async def window_add_all(self, adds: Sequence[WindowAdd]) -> list[WindowResult]:
        """Add to several sliding windows in one atomic step, all or none: each amount is added
        only if every window has room for its own (requests and tokens of a key, a team and a
        model, say, in one round trip, none counted when one refuses).

        Returns one result per add, in order. Each ``admitted`` says whether that window had
        room; the amounts were added only when all are True (each ``total`` then counts its
        amount). When some are False nothing was added, and those carry ``retry_after_s`` as
        :meth:`window_add` does.
        """

    @abstractmethod
    async def window_total(self, key: str, *, window_s: float, sliding: bool = True) -> float:
        """The current total of the window ``key`` (as :meth:`window_add` counts it), adding
        nothing. 0.0 for a key never added to."""

    # --- ledgers: budgets ---------------------------------------------------------------------

    @abstractmethod
    async def reserve(self, key: str, amount: float, *, limit: float,
                      ttl_s: float) -> Reservation | None:
        """Atomically reserve ``amount`` against ``limit`` on the ledger ``key``.

        Admitted when settled total + live reservations + ``amount`` <= ``limit``. An unsettled
        reservation stops counting after ``ttl_s`` seconds, so a crashed replica never holds
        budget forever. Returns the reservation, or None when not admitted.
        """

    @abstractmethod
    async def settle(self, reservation: Reservation, actual: float) -> float:
        """Replace ``reservation`` by the ``actual`` amount spent, added to the settled total for
        good (it may exceed the reserved amount and is never refused).

        Settling an expired or released reservation still adds ``actual``; each reservation id
        adds exactly once, so settling the same id again adds nothing (implementations remember a
        settled id for at least a day after its reservation expires). Returns the settled total.
        """

    @abstractmethod
    async def release(self, reservation: Reservation) -> None:
        """Drop ``reservation`` without spending anything (the call failed). Idempotent; a no-op for
        a reservation already settled, released or expired."""

    @abstractmethod
    async def ledger_total(self, key: str) -> float:
        """The ledger's settled total plus its live (unexpired, unsettled) reservations; 0.0 for
        an unknown key."""

    # --- values: caches, health, dedupe -------------------------------------------------------

    @abstractmethod
    async def get(self, key: str) -> bytes | None:
        """The value at ``key``, or None when there is none or it has expired."""

    @abstractmethod
    async def set(self, key: str, value: bytes, *, ttl_s: float | None = None) -> None:
        """Store ``value`` at ``key``, replacing any value; it expires after ``ttl_s`` seconds, or
        never when ``ttl_s`` is None."""

    @abstractmethod
    async def delete(self, key: str) -> bool:
        """Remove the value at ``key``. Returns True if a live value existed."""

    # --- locks: single flight -----------------------------------------------------------------

    def lock(self, key: str, *, ttl_s: float,
             wait_s: float = 0.0) -> contextlib.AbstractAsyncContextManager[None]:
        """A single-flight lock on ``key``, used as ``async with store.lock(key, ttl_s=30): ...``.

        The holder runs the block; others wait up to ``wait_s`` seconds (real time) for it and
        then raise :class:`LockTimeout`. A lock whose holder died expires after ``ttl_s``.
        Leaving the block releases only the holder's own lock (checked by a token), never one that
        expired meanwhile and was taken by someone else. Backends provide :meth:`try_lock` and
        :meth:`unlock`; the waiting is the same for all.
        """
        check_number("ttl_s", ttl_s, positive=True)
        check_number("wait_s", wait_s)
        return self._hold(key, ttl_s, wait_s)

    @contextlib.asynccontextmanager
    async def _hold(self, key: str, ttl_s: float, wait_s: float) -> AsyncIterator[None]:
        token = uuid.uuid4().hex
        give_up = anyio.current_time() + wait_s
        while not await self.try_lock(key, token, ttl_s):
            left = give_up - anyio.current_time()
            if left <= 0:
                raise LockTimeout(f"lock {key!r} is held; waited {wait_s:g} s")
            await anyio.sleep(min(LOCK_POLL_S, left))
        try:
            yield
        finally:
            await self.unlock(key, token)

    @abstractmethod
    async def try_lock(self, key: str, token: str, ttl_s: float) -> bool:
        """Take the lock ``key`` for ``token`` if it is free or its holder's ``ttl_s`` ran out;
        True when taken. One atomic step."""

    @abstractmethod
    async def unlock(self, key: str, token: str) -> None:
        """Release the lock ``key`` if ``token`` still holds it; otherwise do nothing."""

    # --- single flight in one step: a cache's miss and fill ---------------------------------

    async def get_or_lock(self, key: str, lock: str, token: str,
                          ttl_s: float) -> tuple[bytes | None, bool]:
        """The value at ``key``; when there is none, also try to take the lock ``lock`` for
        ``token`` (as :meth:`try_lock`). Returns the value (or None) and whether the lock was
        taken. Backends with round trips do both in one; this default does one, then the
        other (a value stored in between only costs the caller a call it could have spared)."""
        value = await self.get(key)
        if value is not None:
            return value, False
        return None, await self.try_lock(lock, token, ttl_s)

    async def set_and_unlock(self, key: str, value: bytes, *, ttl_s: float | None, lock: str,
                             token: str) -> None:
        """:meth:`set`, then :meth:`unlock` ``lock`` for ``token``: a single-flight leader
        publishing its answer. Backends with round trips do both in one."""
        try:
            await self.set(key, value, ttl_s=ttl_s)
        finally:
            await self.unlock(lock, token)

    # --- lifetime -----------------------------------------------------------------------------

    async def check(self) -> None:  # noqa: B027 - optional hook, deliberately not abstract
        """Raise :class:`StoreError` when the store cannot be used, saying where it was looked for
        and how to start it; the gateway calls it at start. The default does nothing."""

    async def aclose(self) -> None:  # noqa: B027 - optional hook, deliberately not abstract
        """Release connections and background resources. The default does nothing."""
