"""Circuit breakers, one per deployment, with their state in the shared store.

A circuit is **closed** (calls go through), **open** (calls are refused) or **half-open** (one
probe call at a time is let through). Every replica reads and writes the same keys, so a circuit
opened by one is open for all:

- ``health:circuit:<deployment>``: the circuit as JSON (whether it has tripped, how often its
  probes failed, its generation, when and why it opened); absent means closed.
- ``health:open:<deployment>``: present while the circuit is open; its TTL is the open
  interval, on the store's clock, so when it expires every replica sees the circuit half-open.
- ``health:probe:<deployment>``: the lock a probe call holds, so one call at a time probes.
- ``health:calls:<deployment>:<gen>`` and ``health:faults:<deployment>:<gen>``: sliding windows
  of calls and upstream faults. The generation grows each time a circuit closes, so the faults
  that opened it do not count against it again.

Closed opens after ``failure_threshold`` faults within ``window_s``, or once faults reach
``error_rate`` of at least ``min_requests`` calls. Open lasts ``open_s``, times two for each
failed probe, up to ``max_open_s``, with up to 25% added at random. A probe that succeeds closes
the circuit; one that fails opens it again.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

from turnout.kernel.store import Store, WindowAdd

from .settings import HealthSettings

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"

OPEN_JITTER = 0.25
"""An open interval is stretched by a random fraction up to this, so replicas that opened the
same circuit together do not all half-open in the same instant."""

CIRCUIT_TTL_S = 86_400.0
"""How long a circuit's record outlives its last change; an idle deployment starts afresh."""


def circuit_key(deployment: str) -> str:
    return f"health:circuit:{deployment}"


def open_key(deployment: str) -> str:
    return f"health:open:{deployment}"


def probe_key(deployment: str) -> str:
    return f"health:probe:{deployment}"


@dataclass(slots=True)
class Circuit:
    """One deployment's circuit as read from the store."""

    state: str = CLOSED
    gen: int = 0
    """Generation: grows by one each time the circuit closes after having opened."""
    trips: int = 0
    """Probes that failed since the circuit opened (the open interval doubles for each)."""
    opened_at: float | None = None
    """When it last opened (this replica's wall clock, for people to read)."""
    open_s: float = 0.0
    """How long it stays open this time, jitter included."""
    reason: str = ""

    @property
    def tripped(self) -> bool:
        """Open or half-open: it opened and no probe has closed it yet."""
        return self.state != CLOSED

    def half_opens_in(self, now: float) -> float:
        """Seconds until it half-opens, by the wall clock (0 once it has)."""
        if self.state != OPEN or self.opened_at is None:
            return 0.0
        return max(0.0, self.opened_at + self.open_s - now)

    def dumps(self) -> bytes:
        fields = asdict(self)
        fields["tripped"] = fields.pop("state") != CLOSED
        return json.dumps(fields).encode()

    @classmethod
    def loads(cls, raw: bytes | None) -> "Circuit":
        if raw is None:
            return cls()
        fields = json.loads(raw)
        tripped = fields.pop("tripped", False)
        return cls(state=OPEN if tripped else CLOSED, **fields)


class Breakers:
    """Reads and moves the circuits of deployments in ``store``."""

    def __init__(self, store: Store, settings: HealthSettings, rng: random.Random,
                 clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.settings = settings
        self.random = rng
        self.clock = clock

    async def read(self, deployment: str) -> Circuit:
        """The circuit as the store has it now: one read while closed, two once it tripped."""
        circuit = Circuit.loads(await self.store.get(circuit_key(deployment)))
        if circuit.tripped and await self.store.get(open_key(deployment)) is None:
            circuit.state = HALF_OPEN
        return circuit

    async def try_probe(self, deployment: str, token: str, ttl_s: float) -> bool:
        """Take the probe slot of a half-open circuit, across replicas."""
        return await self.store.try_lock(probe_key(deployment), token, ttl_s)

    async def end_probe(self, deployment: str, token: str) -> None:
        await self.store.unlock(probe_key(deployment), token)

    async def record(self, deployment: str, seen: Circuit, outcome: str | None, kind: str,
                     probe: str | None = None) -> str | None:
        """Count one call's ``outcome`` (``ok``, ``fault`` or None: says nothing about the
        upstream) against the circuit as it was when the call was admitted (``seen``); a probe
        call (``probe``: its lock token) closes or re-opens it. Returns the transition made
        (``opened``, ``reopened``, ``closed``) or None."""
        if probe is not None:
            try:
                if outcome == "ok":
                    await self._close(deployment, seen)
                    return "closed"
                if outcome == "fault":
                    await self._trip(deployment, seen, seen.trips + 1,
                                     f"the probe failed ({kind})")
                    return "reopened"
                return None
            finally:
                await self.end_probe(deployment, probe)
        if outcome is None or seen.tripped:  # a late answer of a call made before it opened
            return None
        window = self.settings.window_s
        adds = [WindowAdd(f"health:calls:{deployment}:{seen.gen}", 1.0, window)]
        if outcome == "fault":
            adds.append(WindowAdd(f"health:faults:{deployment}:{seen.gen}", 1.0, window))
        totals = await self.store.window_add_all(adds)
        if outcome != "fault":
            return None
        calls, faults = totals[0].total, totals[1].total
        why = self.why_open(calls, faults, kind)
        if why is None:
            return None
        current = await self.read(deployment)
        if current.tripped or current.gen != seen.gen:  # another call or replica opened it
            return None
        await self._trip(deployment, current, 0, why)
        return "opened"

    def why_open(self, calls: float, faults: float, kind: str) -> str | None:
        """Why these counts open a circuit, or None when they do not."""
        s = self.settings
        if faults >= s.failure_threshold:
            return f"{faults:g} upstream faults in {s.window_s:g} s (last: {kind})"
        if calls >= s.min_requests and faults / calls >= s.error_rate:
            return (f"{faults / calls:.0%} of {calls:g} calls in {s.window_s:g} s failed "
                    f"(last: {kind})")
        return None

    def open_interval(self, trips: int) -> float:
        """How long a circuit stays open after ``trips`` failed probes: doubled per probe,
        jittered, capped."""
        s = self.settings
        stretched = s.open_s * 2 ** min(trips, 32) * self.random.uniform(1.0, 1.0 + OPEN_JITTER)
        return min(stretched, s.max_open_s)

    async def _trip(self, deployment: str, base: Circuit, trips: int, reason: str) -> None:
        interval = self.open_interval(trips)
        await self.store.set(open_key(deployment), b"1", ttl_s=interval)
        circuit = Circuit(OPEN, gen=base.gen, trips=trips, opened_at=self.clock(),
                          open_s=interval, reason=reason)
        await self.store.set(circuit_key(deployment), circuit.dumps(), ttl_s=CIRCUIT_TTL_S)

    async def _close(self, deployment: str, base: Circuit) -> None:
        closed = Circuit(CLOSED, gen=base.gen + 1)
        await self.store.set(circuit_key(deployment), closed.dumps(), ttl_s=CIRCUIT_TTL_S)
        await self.store.delete(open_key(deployment))
