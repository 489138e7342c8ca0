"""The embedded default store: all state in this process's memory, nothing shared.

Fine for one gateway process. Several replicas each keep their own windows, ledgers, values and
locks, so each would admit the full limit and spend the full budget on its own: run several
replicas with the Redis backend instead.

Everything runs on one event loop, and no method awaits inside its critical section, so each
operation is atomic without any lock. Expired state is purged lazily, when it is touched and when
the ``max_keys`` cap is enforced; beyond the cap the entries that expire soonest go first (expired
ones before all others), then those that never expire, least recently written first.
"""

from __future__ import annotations

import heapq
import math
import time
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field

from turnout.kernel.store import Reservation, Store, WindowAdd, WindowResult, check_number

SETTLED_IDS_KEPT_S = 24 * 3600.0
"""How long a settled reservation id is remembered after its reservation's expiry."""

NEVER = math.inf


class MemorySettings(BaseModel):
    """``[state] backend = "memory"``: the embedded single-process store."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_keys: int = Field(default=100_000, ge=1, description="Most keys held (values, windows, ledgers, "
                          "locks together); the oldest-expiring are evicted beyond it.")


def _fits(total: float, amount: float, limit: float | None) -> bool:
    """Whether ``total + amount <= limit``, allowing for float rounding."""
    if limit is None:
        return True
    return total + amount <= limit + 1e-9 * max(1.0, abs(limit))


@dataclass(slots=True, eq=False)
class _Entry:
    seq: int = 0
    """Write sequence number; a heap item for an older sequence number is stale."""
    deadline: float = NEVER
    """When the whole entry can go (store clock)."""


@dataclass(slots=True, eq=False)
class _Value(_Entry):
    value: bytes = b""


@dataclass(slots=True, eq=False)
class _Sliding(_Entry):
    log: deque[tuple[float, float]] = field(default_factory=deque)
    """(time, amount) of each admitted add, oldest first."""
    total: float = 0.0
    """The sum of the log's amounts, kept as entries come and go (an add costs O(1), not a pass
    over the window)."""


@dataclass(slots=True, eq=False)
class _Fixed(_Entry):
    start: float = 0.0
    total: float = 0.0


@dataclass(slots=True, eq=False)
class _Ledger(_Entry):
    settled: float = 0.0
    live: dict[str, Reservation] = field(default_factory=dict)
    settled_ids: dict[str, float] = field(default_factory=dict)
    """Settled reservation id -> when it may be forgotten."""


@dataclass(slots=True, eq=False)
class _Lock(_Entry):
    token: str = ""


class MemoryStore(Store):
    """The :class:`~turnout.kernel.store.Store` of one process, held in dicts."""

    Settings: ClassVar[type[MemorySettings]] = MemorySettings

    def __init__(self, settings: MemorySettings | None = None, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings or MemorySettings()
        self._clock = clock
        self._values: dict[str, _Value] = {}
        self._windows: dict[str, _Sliding | _Fixed] = {}
        self._ledgers: dict[str, _Ledger] = {}
        self._locks: dict[str, _Lock] = {}
        self._tables: dict[str, dict[str, Any]] = {
            "value": self._values, "window": self._windows, "ledger": self._ledgers,
            "lock": self._locks}
        self._seq = 0
        self._heap: list[tuple[float, int, str, str]] = []
        """(deadline, seq, table, key) per write; items whose seq no longer matches are stale."""

    # --- bookkeeping ------------------------------------------------------------------------------

    def _size(self) -> int:
        """Entries held, live or not yet purged."""
        return sum(len(table) for table in self._tables.values())

    def _written(self, table: str, key: str, entry: _Entry, deadline: float) -> None:
        """Record a write of ``entry`` (already in ``table``) and enforce ``max_keys``."""
        self._seq += 1
        entry.seq = self._seq
        entry.deadline = deadline
        heapq.heappush(self._heap, (deadline, entry.seq, table, key))
        size = self._size()
        if size > self.settings.max_keys:
            self._evict(size - self.settings.max_keys, keep=entry)
        if len(self._heap) > 2 * self._size() + 64:
            self._heap = [(e.deadline, e.seq, name, k) for name, tab in self._tables.items()
                          for k, e in tab.items()]
            heapq.heapify(self._heap)

    def _evict(self, count: int, *, keep: _Entry) -> None:
        """Drop ``count`` entries other than ``keep`` (the one just written): the soonest-expiring
        first (expired ones are the soonest), then never-expiring ones, least recently written
        first."""
        kept = None
        while count > 0 and self._heap:
            item = heapq.heappop(self._heap)
            _, seq, table, key = item
            entry = self._tables[table].get(key)
            if entry is None or entry.seq != seq:
                continue  # stale: the entry was rewritten or is gone
            if entry is keep:
                kept = item
            else:
                del self._tables[table][key]
                count -= 1
        if kept is not None:
            heapq.heappush(self._heap, kept)

    # --- windows ----------------------------------------------------------------------------------

    def _sliding(self, key: str, window_s: float, now: float) -> _Sliding | None:
        entry = self._windows.get(key)
        if not isinstance(entry, _Sliding):
            return None
        log, cutoff = entry.log, now - window_s
        while log and log[0][0] <= cutoff:
            entry.total -= log.popleft()[1]
        if not log:
            del self._windows[key]
            return None
        return entry

    def _fixed(self, key: str, window_s: float, now: float) -> _Fixed | None:
        entry = self._windows.get(key)
        if not isinstance(entry, _Fixed):
            return None
        if entry.start != math.floor(now / window_s) * window_s:
            del self._windows[key]
            return None
        return entry

    async def window_add(self, key: str, amount: float = 1.0, *, window_s: float,
                         limit: float | None = None, sliding: bool = True) -> WindowResult:
        check_number("window_s", window_s, positive=True)
        check_number("amount", amount)
        now = self._clock()
        if sliding:
            return self._sliding_add(key, amount, window_s, limit, now)
        return self._fixed_add(key, amount, window_s, limit, now)

    async def window_add_all(self, adds: Sequence[WindowAdd]) -> list[WindowResult]:
        for add in adds:
            check_number("window_s", add.window_s, positive=True)
            check_number("amount", add.amount)
        now = self._clock()
        rooms = [self._sliding_room(a.key, a.amount, a.window_s, a.limit, now) for a in adds]
        if not all(room.admitted for room in rooms):
            return rooms
        return [self._sliding_add(a.key, a.amount, a.window_s, None, now) for a in adds]

    def _sliding_add(self, key: str, amount: float, window_s: float, limit: float | None,
                     now: float) -> WindowResult:
        room = self._sliding_room(key, amount, window_s, limit, now)
        if not room.admitted:
            return room
        entry = self._windows.get(key)
        if not isinstance(entry, _Sliding):
            entry = self._windows[key] = _Sliding()
        entry.log.append((now, amount))
        entry.total += amount
        self._written("window", key, entry, now + window_s)
        return WindowResult(True, entry.total, None)

    def _sliding_room(self, key: str, amount: float, window_s: float, limit: float | None,
                      now: float) -> WindowResult:
        """Whether the window has room for ``amount`` (its total as it stands), adding nothing;
        a refusal says when to retry."""
        entry = self._sliding(key, window_s, now)
        total = entry.total if entry else 0.0
        if _fits(total, amount, limit):
            return WindowResult(True, total, None)
        if limit is not None and not _fits(0.0, amount, limit):
            return WindowResult(False, total, None)
        remaining = total
        assert entry is not None  # a refusal with room for the amount alone means a non-empty log
        for at, added in entry.log:
            remaining -= added
            if _fits(remaining, amount, limit):
                return WindowResult(False, total, at + window_s - now)
        return WindowResult(False, total, entry.log[-1][0] + window_s - now)  # unreachable

    def _fixed_add(self, key: str, amount: float, window_s: float, limit: float | None,
                   now: float) -> WindowResult:
        entry = self._fixed(key, window_s, now)
        total = entry.total if entry else 0.0
        if _fits(total, amount, limit):
            if entry is None:
                start = math.floor(now / window_s) * window_s
                entry = self._windows[key] = _Fixed(start=start)
            entry.total = total + amount
            self._written("window", key, entry, entry.start + window_s)
            return WindowResult(True, entry.total, None)
        if not _fits(0.0, amount, limit):
            return WindowResult(False, total, None)
        start = math.floor(now / window_s) * window_s
        return WindowResult(False, total, start + window_s - now)

    async def window_total(self, key: str, *, window_s: float, sliding: bool = True) -> float:
        check_number("window_s", window_s, positive=True)
        now = self._clock()
        if sliding:
            entry = self._sliding(key, window_s, now)
            return entry.total if entry else 0.0
        fixed = self._fixed(key, window_s, now)
        return fixed.total if fixed else 0.0

    # --- ledgers ----------------------------------------------------------------------------------

    def _ledger(self, key: str, now: float) -> _Ledger | None:
        ledger = self._ledgers.get(key)
        if ledger is None:
            return None
        for rid in [rid for rid, r in ledger.live.items() if r.expires_at <= now]:
            del ledger.live[rid]
        ids = ledger.settled_ids
        while ids:
            rid, forget_at = next(iter(ids.items()))
            if forget_at > now:
                break
            del ids[rid]
        if not ledger.live and not ids and ledger.settled == 0:
            del self._ledgers[key]
            return None
        return ledger

    def _ledger_written(self, key: str, ledger: _Ledger) -> None:
        if ledger.settled_ids or ledger.settled:
            deadline = NEVER
        else:
            deadline = max((r.expires_at for r in ledger.live.values()), default=self._clock())
        self._written("ledger", key, ledger, deadline)

    async def reserve(self, key: str, amount: float, *, limit: float,
                      ttl_s: float) -> Reservation | None:
        check_number("amount", amount)
        check_number("ttl_s", ttl_s, positive=True)
        now = self._clock()
        ledger = self._ledger(key, now)
        total = (ledger.settled + math.fsum(r.amount for r in ledger.live.values())) if ledger else 0.0
        if not _fits(total, amount, limit):
            return None
        if ledger is None:
            ledger = self._ledgers[key] = _Ledger()
        reservation = Reservation(key=key, id=uuid.uuid4().hex, amount=amount, expires_at=now + ttl_s)
        ledger.live[reservation.id] = reservation
        self._ledger_written(key, ledger)
        return reservation

    async def settle(self, reservation: Reservation, actual: float) -> float:
        check_number("actual", actual)
        now = self._clock()
        key = reservation.key
        ledger = self._ledger(key, now)
        if ledger is not None and reservation.id in ledger.settled_ids:
            return ledger.settled
        if ledger is None:
            ledger = self._ledgers[key] = _Ledger()
        ledger.live.pop(reservation.id, None)
        ledger.settled += actual
        ledger.settled_ids[reservation.id] = max(reservation.expires_at, now) + SETTLED_IDS_KEPT_S
        self._ledger_written(key, ledger)
        return ledger.settled

    async def release(self, reservation: Reservation) -> None:
        ledger = self._ledger(reservation.key, self._clock())
        if ledger is not None and ledger.live.pop(reservation.id, None) is not None:
            if not ledger.live and not ledger.settled_ids and ledger.settled == 0:
                del self._ledgers[reservation.key]

    async def ledger_total(self, key: str) -> float:
        ledger = self._ledger(key, self._clock())
        if ledger is None:
            return 0.0
        return ledger.settled + math.fsum(r.amount for r in ledger.live.values())

    # --- values -----------------------------------------------------------------------------------

    def _value(self, key: str, now: float) -> _Value | None:
        entry = self._values.get(key)
        if entry is not None and entry.deadline <= now:
            del self._values[key]
            return None
        return entry

    async def get(self, key: str) -> bytes | None:
        entry = self._value(key, self._clock())
        return entry.value if entry else None

    async def set(self, key: str, value: bytes, *, ttl_s: float | None = None) -> None:
        if ttl_s is not None:
            check_number("ttl_s", ttl_s, positive=True)
        entry = self._values[key] = _Value(value=bytes(value))
        self._written("value", key, entry, NEVER if ttl_s is None else self._clock() + ttl_s)

    async def delete(self, key: str) -> bool:
        if self._value(key, self._clock()) is None:
            return False
        del self._values[key]
        return True

    # --- locks ------------------------------------------------------------------------------------

    async def try_lock(self, key: str, token: str, ttl_s: float) -> bool:
        now = self._clock()
        held = self._locks.get(key)
        if held is not None and held.deadline > now:
            return False
        entry = self._locks[key] = _Lock(token=token)
        self._written("lock", key, entry, now + ttl_s)
        return True

    async def unlock(self, key: str, token: str) -> None:
        held = self._locks.get(key)
        if held is not None and held.token == token:
            del self._locks[key]
