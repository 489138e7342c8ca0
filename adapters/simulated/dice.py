"""The random behaviour of a fleet tier: one seeded draw per request decides its status, latency
and whether its answer is good, so one seed replays one sequence of outcomes."""

from __future__ import annotations

import math
import random
import threading
from dataclasses import dataclass

from .settings import SimulatedModel

LATENCY_CAP = 5.0
"""A latency draw is capped at this many times the model's median."""

ERROR_STATUSES = (500, 502, 503)
"""Statuses of simulated upstream failures."""


@dataclass(slots=True, frozen=True)
class Outcome:
    """What the dice decided for one request: its status, delay and whether the answer is good."""

    status: int
    latency_ms: float
    good: bool


class Dice:
    """The fleet's seeded RNG; every request draws the same number of values in the same order,
    so one seed gives one sequence of outcomes."""

    def __init__(self, seed: int | None) -> None:
        self._rng = random.Random(seed)
        self._lock = threading.Lock()

    def roll(self, model: SimulatedModel) -> Outcome:
        """Draw the outcome of one request to ``model``."""
        with self._lock:
            limited = self._rng.random() < model.rate_limit_rate
            failed = self._rng.random() < model.error_rate
            status = ERROR_STATUSES[self._rng.randrange(len(ERROR_STATUSES))]
            z = self._rng.normalvariate(0.0, 1.0)
            good = self._rng.random() < model.quality
        latency = min(model.latency_ms * math.exp(model.jitter * z), LATENCY_CAP * model.latency_ms)
        if limited:
            return Outcome(429, 0.0, good)
        if failed:
            return Outcome(status, latency / 2, good)
        return Outcome(200, latency, good)
