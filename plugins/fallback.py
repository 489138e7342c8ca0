"""The fallback chain: the built-in ``fallback`` strategy and the escalation policy by error class.

Strategy: walk the plan's steps in order; after a failed attempt ask the escalate event what to do
(retry the same step after a delay, move to another step, or stop). Settings in
``[routes.NAME.fallback]``; a model asked for by name gets the defaults.

Escalation, per the failed attempt's error:

- rate limited (429): wait out a Retry-After up to ``retry_after_cap_s`` and retry the same
  model; a longer or missing Retry-After moves on;
- timeout, unavailable (5xx, connect errors), a stream broken before its first byte: retry the
  same model ``retries_per_model`` times with a short backoff, then move on;
- content-policy refusal: stop, unless the route sets ``fallback_on_content_policy``;
- the provider refused our credentials: raise a critical alert and move on;
- context too long: move on to the next model with a larger context window;
- other bad requests and failed validation: move on;
- with no step left: stop. (The kernel stops the request at ``routes.NAME.max_attempts``.)

Before moving on, models the prompt does not fit are skipped, so a fallback never lands on a
smaller model that cannot take the prompt.
"""

from __future__ import annotations

import random
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from turnout.kernel.errors import (
    ContentPolicy,
    ContextTooLong,
    NoRoute,
    ProviderAuthFailed,
    ProviderBadRequest,
    ProviderRateLimited,
)
from turnout.kernel.hookspecs import hookimpl
from turnout.kernel.strategy import AttemptFailed, Run, Strategy
from turnout.kernel.types import Alert, Context, Escalation, Step, Verdict

from .fit import fits

BACKOFF_S = 0.2
"""First retry delay after a timeout or 5xx; doubles with each retry, with full jitter."""


class FallbackSettings(BaseModel):
    """The fallback chain's settings: ``[routes.NAME.fallback]``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    retry_after_cap_s: float = Field(default=5, ge=0, description="A 429 whose Retry-After is at "
                                     "most this is waited out and retried; longer moves on.")
    retries_per_model: int = Field(default=1, ge=0, description="Extra tries of the same model "
                                   "after a timeout or 5xx before moving on.")
    fallback_on_content_policy: bool = Field(default=False, description="Re-ask the next model "
                                             "after a content-policy refusal.")


class FallbackStrategy(Strategy):
    """Try the plan's steps in order until one answers, as the escalate event directs."""

    Settings = FallbackSettings

    async def run(self, run: Run) -> object:
        answer, _ = await walk(run)
        return answer


async def walk(run: Run, *, stream: bool | None = None) -> tuple[Any, Step]:
    """Attempt the plan's steps from its cursor until one answers, as the escalate event directs
    (a retry after a wait, the next step, or the end): the answer and the step that gave it.
    Raises the last failure's reason when none answers. ``stream`` as for ``Run.attempt``."""
    plan = run.plan
    last: AttemptFailed | None = None
    while (step := plan.current) is not None:
        try:
            return await run.attempt(step, stream=stream), step
        except AttemptFailed as failed:
            last = failed
        move = await run.escalate(last)
        if move.action == "stop":
            break
        if move.action == "retry":
            await run.wait(move.delay_s)
        else:
            plan.cursor = plan.cursor + 1 if move.cursor is None else move.cursor
    if last is not None:
        raise last.reason
    raise NoRoute("the plan has no steps")

class Fallback:
    """Registers the ``fallback`` strategy and decides escalation by error kind."""

    def __init__(self) -> None:
        self.kernel = None
        self.random = random.Random()
        """Backoff jitter: the plugin's own generator, so nothing else's draws shift it."""

    @hookimpl
    def register_strategies(self, register) -> None:
        register("fallback", FallbackStrategy())

    @hookimpl
    def startup(self, kernel) -> None:
        self.kernel = kernel

    @staticmethod
    def settings(ctx: Context) -> FallbackSettings:
        settings = ctx.plan.settings if ctx.plan is not None else None
        return settings if isinstance(settings, FallbackSettings) else DEFAULTS

    @hookimpl(trylast=True)
    async def escalate(self, ctx: Context, error: Exception | None,
                       verdicts: list[Verdict]) -> Escalation:
        """Retry, move on or stop, by the kind of failure."""
        route = self.settings(ctx)
        failed = ctx.plan.current.model
        same_model = sum(1 for a in ctx.attempts if a.model == failed.name)
        if verdicts:
            return self._next(ctx, "the answer failed validation")
        if isinstance(error, ContentPolicy):
            if route.fallback_on_content_policy:
                return self._next(ctx, "content-policy refusal; the route allows re-asking")
            return Escalation("stop", "content-policy refusal; not re-asked elsewhere "
                                      "(fallback_on_content_policy is off)")
        if isinstance(error, ProviderRateLimited):
            wait = error.retry_after
            if wait is not None and wait <= route.retry_after_cap_s and same_model <= 1:
                return Escalation("retry", f"rate limited; waiting Retry-After {wait}s",
                                  delay_s=wait)
            return self._next(ctx, "rate limited" + (f" for {wait}s" if wait else ""))
        if isinstance(error, ProviderAuthFailed):
            await self.kernel.alert(Alert(
                name="provider_auth_failed", severity="critical",
                summary=f"provider {failed.provider!r} refused the gateway's credentials",
                labels={"provider": failed.provider, "model": failed.name}))
            return self._next(ctx, "provider refused our credentials")
        if isinstance(error, ContextTooLong):
            return self._next(ctx, "context too long", larger_than=failed.context_window)
        if isinstance(error, ProviderBadRequest):
            return self._next(ctx, "the provider rejected the request")
        if error is not None and getattr(error, "retryable", False) \
                and same_model <= route.retries_per_model:
            delay = self.random.uniform(0, BACKOFF_S * 2 ** (same_model - 1))
            return Escalation("retry", f"{error.kind}; retrying the same model", delay_s=delay)
        return self._next(ctx, error.kind if error is not None else "failed")

    def _next(self, ctx: Context, reason: str, larger_than: int = 0) -> Escalation:
        """Move to the next step the prompt fits, or stop when there is none."""
        plan = ctx.plan
        for cursor in range(plan.cursor + 1, len(plan.steps)):
            model = plan.steps[cursor].model
            why_not = "context window not larger than the failed model's" \
                if model.context_window <= larger_than else fits(ctx, model)
            if why_not is None:
                return Escalation("next", f"{reason}; falling back to {model.name}",
                                  cursor=cursor)
            ctx.decision.setdefault("skipped", []).append({"model": model.name,
                                                           "reason": why_not})
        return Escalation("stop", f"{reason}; no fallback left")


DEFAULTS = FallbackSettings()
"""Escalation settings where the plan carries none of the fallback's (another strategy's plan)."""
