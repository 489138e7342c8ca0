"""The ``cascade`` strategy: the route's models in order, cheapest first, until an answer passes.

Each step is asked once for a whole answer, which the route's validators judge (the kernel does,
inside ``run.attempt``). The first answer that passes is returned. A provider error moves on to
the next model; a failed verdict moves on too, but keeps the answer as a candidate with its score:
the mean of its verdicts' scores, where a verdict without a score counts 1 if it passed and 0 if
not. When no answer passes, ``on_failure`` decides: ``best`` returns the best-scoring candidate
(the cheapest on a tie) with the response header ``x-turnout-validation: failed``; ``error`` fails
the request with a 502 ``validation_failed``. With no candidate at all (every step failed with an
error), the last error ends the request.

A streaming request is answered the same way: every attempt is a whole answer (read to its end,
judged before anything is sent), and the chosen one is replayed to the client as a stream.

The path is written into the decision record as ``decision["cascade"]``: one entry per model
tried, with whether it passed, its score and why it did not. Settings in
``[routes.NAME.cascade]``.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from turnout.kernel.errors import AttemptsExhausted, NoRoute, ValidationFailed
from turnout.kernel.hookspecs import hookimpl
from turnout.kernel.strategy import AttemptFailed, Run, Strategy
from turnout.kernel.types import Attempt, Completion, Verdict

HEADER = "x-turnout-validation"
"""Set to ``failed`` when the answer returned is one the validators rejected."""


class CascadeSettings(BaseModel):
    """The cascade's settings: ``[routes.NAME.cascade]``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    on_failure: Literal["best", "error"] = Field(
        default="best", description="When no answer passes the validators: 'best' returns the "
        "best-scoring answer with the header x-turnout-validation: failed; 'error' fails the "
        "request with a 502 validation_failed.")
    order: Literal["route", "price"] = Field(
        default="route", description="The order models are tried in: 'route' as the route lists "
        "them (list the cheapest first); 'price' cheapest first by input_price + output_price "
        "(ties keep the route's order).")


def score(verdicts: list[Verdict]) -> float:
    """An answer's score: the mean of its verdicts' scores, a verdict without one counting 1 if
    it passed and 0 if not (so, with no scores given, the share of verdicts that passed)."""
    if not verdicts:
        return 1.0
    values = []
    for verdict in verdicts:
        given = getattr(verdict, "score", None)
        values.append(float(given) if given is not None else 1.0 if verdict.ok else 0.0)
    return sum(values) / len(values)


class CascadeStrategy(Strategy):
    """Ask the plan's models one after another; return the first answer that passes."""

    Settings = CascadeSettings

    async def run(self, run: Run) -> Completion:
        settings = run.settings if isinstance(run.settings, CascadeSettings) else DEFAULTS
        plan = run.plan
        steps = list(plan.steps)
        if settings.order == "price":
            steps.sort(key=lambda s: s.model.input_price + s.model.output_price)
        path: list[dict[str, Any]] = []
        run.ctx.decision["cascade"] = path
        best: tuple[float, Completion, dict[str, Any], Attempt | None] | None = None
        last: Exception | None = None
        for step in steps:
            plan.cursor = plan.steps.index(step)
            entry: dict[str, Any] = {"model": step.model.name}
            path.append(entry)
            try:
                answer = await run.attempt(step, stream=False)
            except AttemptFailed as failed:
                last = failed.reason
                entry["passed"] = False
                if failed.error is not None or failed.completion is None:
                    entry["reason"] = f"{_kind(failed.reason)}: {failed.reason}"
                    continue
                attempt = _attempt_of(run, failed)
                entry["score"] = round(score(attempt.verdicts if attempt is not None
                                             and attempt.verdicts else failed.verdicts), 4)
                entry["reason"] = "; ".join(f"{v.validator}: {v.reason}"
                                            for v in failed.verdicts)
                if best is None or entry["score"] > best[0]:
                    best = (entry["score"], failed.completion, entry, attempt)
                continue
            except AttemptsExhausted as exc:  # the route's max_attempts: stop here
                path.pop()
                last = exc
                break
            assert isinstance(answer, Completion)
            entry.update(passed=True, chosen=True)
            return answer
        if best is None:
            if last is not None:
                raise last
            raise NoRoute("the plan has no steps")
        if settings.on_failure == "error":
            raise ValidationFailed("no answer passed the route's validators: "
                                   + "; ".join(f"{e['model']}: {e.get('reason', '')}"
                                               for e in path))
        best[2]["chosen"] = True
        run.ctx.response_headers[HEADER] = "failed"
        return best[1]


def _attempt_of(run: Run, failed: AttemptFailed) -> Attempt | None:
    """The failed attempt (its ``verdicts`` are all of them, ``failed.verdicts`` only the
    failing ones): the request's last, as the cascade makes one call at a time."""
    attempts = run.ctx.attempts
    if attempts and attempts[-1].model == failed.step.model.name:
        return attempts[-1]
    return None


def _kind(error: Exception) -> str:
    return getattr(error, "kind", type(error).__name__)


DEFAULTS = CascadeSettings()


@hookimpl
def register_strategies(register) -> None:
    """Register ``cascade``: a route names it with ``strategy = "cascade"``."""
    register("cascade", CascadeStrategy())

