"""The fallback chain: the last-resort routing strategy and the escalation policy by error class.

Routing: the remaining candidates, in order, become a ``fallback`` plan; each step gets the route's
``attempt_timeout_s``.

Escalation, per the failed attempt's error (settings from the route, or the defaults of
``[routes.*]`` for a model asked for by name):

- rate limited (429): wait out a Retry-After up to ``retry_after_cap_s`` and retry the same
  model; a longer or missing Retry-After moves on;
- timeout, unavailable (5xx, connect errors), a stream broken before its first byte: retry the
  same model ``retries_per_model`` times with a short backoff, then move on;
- content-policy refusal: stop, unless the route sets ``fallback_on_content_policy``;
- the provider refused our credentials: raise a critical alert and move on;
- context too long: move on to the next model with a larger context window;
- other bad requests and failed validation: move on;
- after ``max_attempts`` attempts in all, or with no step left: stop.

Before moving on, models the prompt does not fit are skipped, so a fallback never lands on a
smaller model that cannot take the prompt.
"""

from __future__ import annotations

import random

from turnout.kernel.config import Route
from turnout.kernel.errors import (
    ContentPolicy,
    ContextTooLong,
    ProviderAuthFailed,
    ProviderBadRequest,
    ProviderRateLimited,
)
from turnout.kernel.hookspecs import hookimpl
from turnout.kernel.types import Alert, Context, Escalation, Plan, Step, Verdict

from .fit import fits

DEFAULT_ROUTE = Route(models=["(model asked for by name)"])
"""Escalation settings for requests that name a model rather than a route."""

BACKOFF_S = 0.2
"""First retry delay after a timeout or 5xx; doubles with each retry, with full jitter."""


class Fallback:
    """Plans fallback chains and decides escalation by error kind."""

    def __init__(self) -> None:
        self.kernel = None

    @hookimpl
    def startup(self, kernel) -> None:
        self.kernel = kernel

    def settings(self, ctx: Context) -> Route:
        routes = self.kernel.config.routes
        return routes.get(ctx.route) or DEFAULT_ROUTE

    @hookimpl(trylast=True)
    def route(self, ctx: Context) -> Plan | None:
        """Make the remaining candidates a fallback chain."""
        if not ctx.candidates:
            return None
        timeout = self.settings(ctx).attempt_timeout_s
        return Plan("fallback", [Step(model, timeout) for model in ctx.candidates])

    @hookimpl(trylast=True)
    async def escalate(self, ctx: Context, error: Exception | None,
                       verdicts: list[Verdict]) -> Escalation:
        """Retry, move on or stop, by the kind of failure."""
        route = self.settings(ctx)
        plan = ctx.plan
        failed = plan.current.model
        if len(ctx.attempts) >= route.max_attempts:
            return Escalation("stop", f"{route.max_attempts} attempts made (max_attempts)")
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
            delay = random.uniform(0, BACKOFF_S * 2 ** (same_model - 1))
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
