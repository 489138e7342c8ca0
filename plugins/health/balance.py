"""Balancing a model's deployments by latency, faults and calls in flight (this process's view).

Each deployment keeps moving averages (weight ``ewma_alpha`` for the newest call) of its latency
and of its faults (1 for a fault, 0 for an answer), and the number of its calls in flight here.
Its **cost** is ``ewma_ms * (1 + in_flight) / (weight * max(1 - fault_rate, 0.05))``; a
deployment with no latency measured yet is taken to be as fast as its siblings' average. Among
the closed deployments of a model, the first is drawn at random with probability proportional to
``1 / cost`` (its **share**), the rest follow cheapest first. A deployment that is slow, busy or
failing therefore gets a smaller share, but never none, so its averages keep being measured and
it wins its traffic back when it recovers.

These figures are per process: in-flight counts are what this replica has in flight, and the
averages are what its own calls measured. What replicas must agree on (circuits) is in the store.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

MIN_HEALTH = 0.05
"""Floor of ``1 - fault_rate`` in the cost, so a failing deployment's cost stays finite."""


@dataclass(slots=True)
class Stats:
    """One deployment's figures in this process."""

    ewma_ms: float | None = None
    fault_rate: float = 0.0
    in_flight: int = 0


class Balancer:
    """Per-deployment moving averages and in-flight counts, and the order they give."""

    def __init__(self, alpha: float, rng: random.Random) -> None:
        self.alpha = alpha
        self.random = rng
        self.stats: dict[str, Stats] = {}

    def of(self, deployment: str) -> Stats:
        found = self.stats.get(deployment)
        if found is None:
            found = self.stats[deployment] = Stats()
        return found

    def observe(self, deployment: str, *, fault: bool, latency_s: float | None) -> None:
        """Fold one call's outcome into the averages; ``latency_s`` None leaves latency alone (a
        fast error says nothing about how fast answers are)."""
        stats = self.of(deployment)
        a = self.alpha
        stats.fault_rate = a * (1.0 if fault else 0.0) + (1 - a) * stats.fault_rate
        if latency_s is not None:
            ms = latency_s * 1000
            stats.ewma_ms = ms if stats.ewma_ms is None else a * ms + (1 - a) * stats.ewma_ms

    def costs(self, deployments: list[tuple[str, float]]) -> dict[str, float]:
        """The cost of each (deployment, weight); unmeasured latency counts as the measured
        siblings' average (1 ms when none is measured)."""
        known = [s.ewma_ms for d, _ in deployments if (s := self.of(d)).ewma_ms is not None]
        guess = sum(known) / len(known) if known else 1.0
        out: dict[str, float] = {}
        for deployment, weight in deployments:
            stats = self.of(deployment)
            latency = max(stats.ewma_ms if stats.ewma_ms is not None else guess, 1e-3)
            health = max(1.0 - stats.fault_rate, MIN_HEALTH)
            out[deployment] = latency * (1 + stats.in_flight) / (weight * health)
        return out

    def order(self, deployments: list[tuple[str, float]]) -> tuple[list[str], dict[str, float]]:
        """The deployments in the order to try them, and each one's share of first picks."""
        if not deployments:
            return [], {}
        costs = self.costs(deployments)
        inverse = {d: 1.0 / c for d, c in costs.items()}
        total = sum(inverse.values())
        shares = {d: v / total for d, v in inverse.items()}
        names = [d for d, _ in deployments]
        first = self.random.choices(names, weights=[shares[d] for d in names])[0]
        rest = sorted((d for d in names if d != first), key=lambda d: costs[d])
        return [first, *rest], shares
