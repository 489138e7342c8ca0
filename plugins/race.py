"""The ``race`` strategy: the first ``n`` models of the plan at once; the first good answer wins.

The first ``n`` steps (``[routes.NAME.race] n``, capped at the plan's length) start together in
one task group. The first attempt that comes back passing the route's validators wins; an
attempt that fails (an error or a failed verdict) just drops out of the race. Once there is a
winner the others are cancelled: their upstream calls are cut off, and the kernel records each
as a ``cancelled`` attempt with its prompt tokens counted (estimated) and paid for.

A streaming request races to the first chunk: the winner is the stream whose first chunk arrives
first (its answer is judged when it ends, as any stream's is), and the losers' streams are closed.

**Hedging.** With ``hedge_after`` set, only the first model starts at once; the others start
if it has not answered after that long (or as soon as it fails): a number of seconds, or a
percentile of the first model's recent latencies such as ``"p95"`` (its last
``HEDGE_SAMPLES`` answers in this process; until ``HEDGE_MIN_SAMPLES`` are known, all start at
once, as in a plain race). Most requests then cost one call, and only the slow tail pays for a
second. ``decision["race"]["hedge_after_s"]`` says what the wait was.

When every raced model fails, the remaining steps of the plan (after the first ``n``) are tried
one at a time, in order; when those fail too, the last failure ends the request as it would
under the ``fallback`` strategy. The race is written into the decision record as
``decision["race"]``: the models started, the winner, and why each loser dropped out.
"""

from __future__ import annotations

import re
import time
from collections import deque
from typing import Any

import anyio
from pydantic import BaseModel, ConfigDict, Field, field_validator

from turnout.kernel.errors import NoRoute
from turnout.kernel.hookspecs import hookimpl
from turnout.kernel.strategy import AttemptFailed, Run, Strategy
from turnout.kernel.types import Completion, Step


class RaceSettings(BaseModel):
    """The race's settings: ``[routes.NAME.race]``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    n: int = Field(default=2, ge=1, description="How many of the route's models (the first n) "
                   "are asked at once; capped at the number of models. After all n fail, the "
                   "rest are tried one at a time, in order.")
    hedge_after: float | str | None = Field(
        default=None, description="Hedge instead of racing: start the first model alone and "
        "the others only if it has not answered after this many seconds, or after a "
        "percentile of its recent latencies ('p95', 'p99.9'). Unset: all n start at once.")

    @field_validator("hedge_after")
    @classmethod
    def _seconds_or_percentile(cls, v: float | str | None) -> float | str | None:
        if isinstance(v, str) and not PERCENTILE.fullmatch(v):
            raise ValueError(f"give seconds or a percentile such as 'p95', not {v!r}")
        if isinstance(v, (int, float)) and v < 0:
            raise ValueError(f"seconds must be 0 or more, not {v}")
        return v


PERCENTILE = re.compile(r"p(\d{1,2}(\.\d+)?)")
"""A latency percentile, ``p50`` to ``p99.9``."""

HEDGE_SAMPLES = 200
"""Recent answer latencies kept per model for ``hedge_after = "pNN"``."""

HEDGE_MIN_SAMPLES = 10
"""Latencies a model needs before a percentile of them is trusted."""


class RaceStrategy(Strategy):
    """Ask the first ``n`` steps at once; keep the first good answer, cancel the rest."""

    Settings = RaceSettings

    def __init__(self) -> None:
        self.latencies: dict[str, deque[float]] = {}
        """Recent answer latencies by model (and deployment), for percentile hedging."""

    def hedge_delay(self, settings: RaceSettings, step: Step) -> float | None:
        """Seconds to wait before hedging ``step``; None to start everything at once."""
        after = settings.hedge_after
        if after is None or isinstance(after, (int, float)):
            return after
        seen = sorted(self.latencies.get(_key(step), ()))
        if len(seen) < HEDGE_MIN_SAMPLES:
            return None
        rank = float(after[1:]) / 100 * (len(seen) - 1)
        low = int(rank)
        high = min(low + 1, len(seen) - 1)
        return seen[low] + (seen[high] - seen[low]) * (rank - low)

    def observe(self, step: Step, seconds: float) -> None:
        found = self.latencies.get(_key(step))
        if found is None:
            found = self.latencies[_key(step)] = deque(maxlen=HEDGE_SAMPLES)
        found.append(seconds)

    async def run(self, run: Run) -> Any:
        settings = run.settings if isinstance(run.settings, RaceSettings) else DEFAULTS
        steps = run.plan.steps
        if not steps:
            raise NoRoute("the plan has no steps")
        n = min(settings.n, len(steps))
        racing, rest = steps[:n], steps[n:]
        record: dict[str, Any] = {"started": [s.model.name for s in racing], "winner": None,
                                  "dropped": []}
        run.ctx.decision["race"] = record
        won: list[Any] = []
        errors: list[Exception] = []
        delay = self.hedge_delay(settings, racing[0]) if n > 1 else None
        failed_early = anyio.Event()
        if delay is not None:
            record["hedge_after_s"] = round(delay, 4)
            record["started"] = [racing[0].model.name]

        async with anyio.create_task_group() as tg:
            async def enter(step: Step, hedge: bool = False) -> None:
                if hedge:
                    with anyio.move_on_after(delay):
                        await failed_early.wait()
                    record["started"].append(step.model.name)
                began = time.perf_counter()
                try:
                    answer = await run.attempt(step)
                except anyio.get_cancelled_exc_class():
                    # lost to a faster one: at least this long, which keeps the percentile honest
                    self.observe(step, time.perf_counter() - began)
                    raise
                except AttemptFailed as failed:
                    errors.append(failed.reason)
                    record["dropped"].append(_dropped(step, failed.reason))
                    failed_early.set()
                    return
                except Exception as exc:  # noqa: BLE001 - a refusal (budget, attempts) drops out
                    errors.append(exc)
                    record["dropped"].append(_dropped(step, exc))
                    failed_early.set()
                    return
                self.observe(step, time.perf_counter() - began)
                if won:  # finished in the same instant as the winner: it lost
                    await _discard(run, step, answer)
                    return
                won.append(answer)
                record["winner"] = step.model.name
                run.plan.cursor = steps.index(step)
                tg.cancel_scope.cancel()

            for i, step in enumerate(racing):
                tg.start_soon(enter, step, i > 0 and delay is not None)
        if won:
            return won[0]

        for step in rest:  # every raced model failed: the rest, one at a time
            run.plan.cursor = steps.index(step)
            try:
                answer = await run.attempt(step)
            except AttemptFailed as failed:
                errors.append(failed.reason)
                record["dropped"].append(_dropped(step, failed.reason))
                continue
            record["winner"] = step.model.name
            return answer
        raise errors[-1]


def _key(step: Step) -> str:
    return step.model.deployment or f"{step.model.name}@{step.model.provider}"


def _dropped(step: Step, error: Exception) -> dict[str, str]:
    return {"model": step.model.name,
            "reason": f"{getattr(error, 'kind', type(error).__name__)}: {error}"}


async def _discard(run: Run, step: Step, answer: Any) -> None:
    """A loser that answered anyway: a started stream is closed and recorded as cancelled (its
    prompt counted); a whole answer has been paid for and stays recorded as it is."""
    if isinstance(answer, Completion) or getattr(answer, "attempt", None) is None:
        return
    rest = answer.rest
    close = getattr(rest, "aclose", None)
    if close is not None:
        with anyio.CancelScope(shield=True):
            try:
                await close()
            except Exception:  # noqa: BLE001, S110 - closing a losing stream is best effort
                pass
    if answer.attempt.status == "streaming":
        run.kernel._cancel_attempt(run.ctx, step, answer.attempt)


DEFAULTS = RaceSettings()


@hookimpl
def register_strategies(register) -> None:
    """Register ``race``: a route names it with ``strategy = "race"``."""
    register("race", RaceStrategy())
