"""The ``race`` strategy: the first ``n`` models of the plan at once; the first good answer wins.

The first ``n`` steps (``[routes.NAME.race] n``, capped at the plan's length) start together in
one task group. The first attempt that comes back passing the route's validators wins; an
attempt that fails (an error or a failed verdict) just drops out of the race. Once there is a
winner the others are cancelled: their upstream calls are cut off, and the kernel records each
as a ``cancelled`` attempt with its prompt tokens counted (estimated) and paid for.

A streaming request races to the first chunk: the winner is the stream whose first chunk arrives
first (its answer is judged when it ends, as any stream's is), and the losers' streams are closed.

When every raced model fails, the remaining steps of the plan (after the first ``n``) are tried
one at a time, in order; when those fail too, the last failure ends the request as it would
under the ``fallback`` strategy. The race is written into the decision record as
``decision["race"]``: the models started, the winner, and why each loser dropped out.
"""

from __future__ import annotations

from typing import Any

import anyio
from pydantic import BaseModel, ConfigDict, Field

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


class RaceStrategy(Strategy):
    """Ask the first ``n`` steps at once; keep the first good answer, cancel the rest."""

    Settings = RaceSettings

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

        async with anyio.create_task_group() as tg:
            async def enter(step: Step) -> None:
                try:
                    answer = await run.attempt(step)
                except AttemptFailed as failed:
                    errors.append(failed.reason)
                    record["dropped"].append(_dropped(step, failed.reason))
                    return
                except Exception as exc:  # noqa: BLE001 - a refusal (budget, attempts) drops out
                    errors.append(exc)
                    record["dropped"].append(_dropped(step, exc))
                    return
                if won:  # finished in the same instant as the winner: it lost
                    await _discard(run, step, answer)
                    return
                won.append(answer)
                record["winner"] = step.model.name
                run.plan.cursor = steps.index(step)
                tg.cancel_scope.cancel()

            for step in racing:
                tg.start_soon(enter, step)
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
