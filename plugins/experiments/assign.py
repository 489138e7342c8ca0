"""Which arm a request gets: a stable hash of the experiment's salt and the key's value.

``bucket(salt, value)`` is the first 8 bytes of ``sha256(f"{salt}:{value}")`` read as a
big-endian integer over 2**64: a number in [0, 1) that depends on nothing but the two strings,
so every process, replica and restart gives the same request the same arm (Python's ``hash()``
is salted per process and never used here). The arms cut [0, 1) into consecutive spans in
proportion to their weights, in the order configured; a bucket falls in exactly one.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Sequence

from turnout.kernel.types import Context

from .settings import Arm, Experiment

CONVERSATION_HEADER = "x-turnout-conversation"
"""The request header naming the conversation a request belongs to (for ``key =
"conversation"``)."""

CONVERSATION_METADATA = "conversation_id"
"""The request's ``metadata`` field naming the conversation when the header is absent."""


def bucket(salt: str, value: str) -> float:
    """A number in [0, 1), the same for the same ``salt`` and ``value`` in any process."""
    digest = hashlib.sha256(f"{salt}:{value}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0 ** 64


def pick(arms: Sequence[Arm], point: float) -> Arm:
    """The arm whose span of [0, 1) holds ``point``: the spans follow the arms in order, each
    as wide as its share of the total weight."""
    total = sum(arm.weight for arm in arms)
    edge = 0.0
    for arm in arms:
        edge += arm.weight / total
        if point < edge:
            return arm
    return arms[-1]  # point within rounding of 1.0


def key_value(ctx: Context, key: str) -> str | None:
    """The value a request is assigned by: its user, gateway key or conversation; None when it
    has none."""
    if key == "user":
        return ctx.caller.user or None
    if key == "key":
        return ctx.caller.key or None
    found = ctx.headers.get(CONVERSATION_HEADER)
    if not found and ctx.request.metadata:
        found = ctx.request.metadata.get(CONVERSATION_METADATA)
    return found or None


@dataclass(frozen=True, slots=True)
class Assignment:
    """A request's arm in an experiment, and how it was reached."""

    experiment: Experiment
    arm: Arm
    bucket: float | None
    """Where the key's value hashed to; None when the request had no value (unassigned)."""

    def decision(self) -> dict:
        """What the decision record keeps (never the key's value itself)."""
        found: dict = {"name": self.experiment.name, "arm": self.arm.name,
                       "key": self.experiment.key,
                       "bucket": round(self.bucket, 6) if self.bucket is not None else None,
                       "target": self.arm.target}
        if self.bucket is None:
            found["unassigned"] = True
        return found


def assign(experiment: Experiment, ctx: Context) -> Assignment:
    """The request's arm: by the hash of its key's value, else (no value) the first arm,
    unassigned."""
    value = key_value(ctx, experiment.key)
    if value is None:
        return Assignment(experiment, experiment.arms[0], None)
    point = bucket(experiment.seed, value)
    return Assignment(experiment, pick(experiment.arms, point), point)
