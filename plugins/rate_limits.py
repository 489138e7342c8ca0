"""Rate limits: requests and tokens per minute per key, user, team, route or globally, and per
model (to stay under a provider's own limits), over sliding one-minute windows in the shared
store, exact across replicas.

```toml
[[rate_limits]]
scope = "key"            # key | user | team | model | route | global
match = "ci"             # omitted: each key (user, team...) gets its own limit
rpm = 60
tpm = 100000
```

**What counts.** ``rpm``: a request counts once against the key, user, team, route and global
limits, at its first attempt (retries, fallbacks and sub-requests are the same request); a
``model`` limit counts every call of that model, since each is a request its provider sees.
``tpm``: every call's tokens count, against every limit that applies: the prompt's (counted)
when the call is admitted, the answer's when it ends. Every count is one atomic step in the
store, admitted only while the last 60 seconds' total plus it stays within the limit.

**Refusal.** An OpenAI-style 429 (``type: "rate_limit_error"``, ``code: "rate_limited"``) with
``Retry-After``: the seconds until enough of the window has passed. Answers and refusals carry
OpenAI's ``x-ratelimit-*`` headers for the tightest limit that applies:
``x-ratelimit-limit-requests``, ``x-ratelimit-remaining-requests``,
``x-ratelimit-reset-requests`` and the same for ``-tokens``.

Every limit that applies to a call is counted in one atomic step of the store: all of them, or,
when one refuses, none (a refused request uses up nothing).

**Set at run time.** Beside the config's ``[[rate_limits]]``, limits can be added, replaced and
removed while the gateway runs (``PUT /admin/budgets``, ``turnout budget set --rpm/--tpm``; see the
``admin`` plugin). They live in the shared store at ``limits:runtime`` beside the runtime budgets,
so every replica enforces them; a runtime limit replaces the config limits with the same scope and
match (its window's count so far still counts: the key is the same). Each replica re-reads them at
most once a second (:class:`~turnout.plugins.budgets.RuntimeRules`).

Keys in the store: ``ratelimit:<rpm|tpm>:<scope>:<value>`` (sliding windows;
``<scope>/each`` for a limit without ``match``), and
``limits:runtime`` (read only).
"""

from __future__ import annotations

from pydantic import Field, model_validator

from turnout.kernel import tokens
from turnout.kernel.errors import RateLimited
from turnout.kernel.hookspecs import hookimpl
from turnout.kernel.store import Store, WindowAdd
from turnout.kernel.types import Attempt, Context, Hold, Step

from .budgets import RuntimeRules
from .scopes import REQUEST_SCOPES, ScopedRule, rule_list

WINDOW_S = 60.0
"""The sliding window every limit is counted over."""

COUNTED = "rate_limits.counted"
"""Key in the root request's ``state``: its request-wide limits have been counted."""


class RateLimit(ScopedRule):
    """One ``[[rate_limits]]`` entry: requests and/or tokens per minute."""

    rpm: int | None = Field(default=None, ge=1, description="Most requests in any 60 seconds "
                            "(for 'model': calls of the model).")
    tpm: int | None = Field(default=None, ge=1, description="Most tokens, prompt and answer, in "
                            "any 60 seconds.")

    @model_validator(mode="after")
    def _some_limit(self) -> "RateLimit":
        if self.rpm is None and self.tpm is None:
            raise ValueError("give 'rpm', 'tpm' or both")
        return self


RateLimitList = rule_list(RateLimit, "Rate limits: ``[[rate_limits]]`` entries, each requests "
                                     "and tokens per minute for a key, user, team, model, route "
                                     "or everything.")


def rate_limit_identity(rule: RateLimit) -> tuple:
    """What a runtime rate limit replaces: the limits with the same scope and match."""
    return (rule.scope, rule.match)


def _reset(seconds: float | None) -> str:
    """A reset delay the way OpenAI's ``x-ratelimit-reset-*`` headers write it (``1.5s``)."""
    return f"{max(seconds or 0.0, 0.0):.3g}s"


class RateLimits:
    """The ``rate_limits`` plugin: counts on ``admit``, adds answer tokens when it ends."""

    name = "rate_limits"
    Settings = RateLimitList

    def __init__(self) -> None:
        self.limits: RuntimeRules[RateLimit] = RuntimeRules("rate_limits", RateLimit,
                                                            rate_limit_identity)
        self.kernel = None

    @hookimpl
    def startup(self, kernel) -> None:
        self.kernel = kernel
        self.limits.configure(kernel.plugin_settings(self))

    @property
    def rules(self) -> list[RateLimit]:
        """The limits that apply: the config's and those set at run time, as last read."""
        return self.limits.rules

    @hookimpl
    async def admit(self, ctx: Context, step: Step) -> Hold | None:
        limits = self.limits
        rules = await limits.refresh(self.kernel.store) if limits.due() else limits.rules
        if not rules:
            return None
        root = ctx.root
        whole_request = COUNTED not in root.state
        root.state[COUNTED] = True
        store: Store = self.kernel.store
        prompt = tokens.prompt_tokens(ctx)
        adds: list[WindowAdd] = []
        counted: list[tuple[RateLimit, str, str, int]] = []  # rule, value, unit, limit
        for rule in rules:
            value = rule.value(ctx, step)
            if value is None:
                continue
            once = rule.scope in REQUEST_SCOPES
            for unit, limit, amount in (("requests", rule.rpm, 1.0),
                                        ("tokens", rule.tpm, float(prompt))):
                if limit is None or (unit == "requests" and once and not whole_request):
                    continue  # a request counts once; its every call's tokens count
                kind = "rpm" if unit == "requests" else "tpm"
                adds.append(WindowAdd(window_key(kind, rule, value), amount,
                                      WINDOW_S, limit))
                counted.append((rule, value, unit, limit))
        if not adds:
            return None
        results = await store.window_add_all(adds)  # one atomic step: all counted, or none
        tightest: dict[str, tuple[float, int, float]] = {}
        for add, (rule, value, unit, limit), result in zip(adds, counted, results):
            if not result.admitted:
                _headers(ctx, {unit: (0, limit, result.retry_after_s or WINDOW_S)})
                raise RateLimited(_refusal(rule, value, unit, limit, add.amount, result),
                                  retry_after=result.retry_after_s)
            remaining = limit - result.total
            if unit not in tightest or remaining < tightest[unit][0]:
                tightest[unit] = (remaining, limit, WINDOW_S)
        _headers(ctx, tightest)
        token_keys = [add.key for add, (_, _, unit, _) in zip(adds, counted) if unit == "tokens"]
        return TokenHold(store, token_keys, prompt) if token_keys else None


def window_key(kind: str, rule: RateLimit, value: str) -> str:
    """The store key of ``rule``'s sliding window of ``kind`` (``rpm`` or ``tpm``) for
    ``value``."""
    return f"ratelimit:{kind}:{rule.counter(value)}"


def _refusal(rule: RateLimit, value: str, unit: str, limit: int, amount: float, result) -> str:
    what = "requests" if unit == "requests" else "tokens"
    if result.retry_after_s is None:
        return (f"Rate limit of {rule.label(value)}: this request's {amount:g} prompt tokens "
                f"exceed the {limit} {what} per minute allowed; shorten it or raise the limit.")
    return (f"Rate limit reached for {rule.label(value)}: {limit} {what} per minute. "
            f"Retry after {result.retry_after_s:.1f} s.")


def _headers(ctx: Context, tightest: dict) -> None:
    """Say the tightest limit per unit in the answer's headers, unless an earlier attempt of the
    request already named a tighter one."""
    headers = ctx.root.response_headers
    for unit, (remaining, limit, reset) in tightest.items():
        before = headers.get(f"x-ratelimit-remaining-{unit}")
        if before is not None and int(before) < remaining:
            continue
        headers[f"x-ratelimit-limit-{unit}"] = str(limit)
        headers[f"x-ratelimit-remaining-{unit}"] = str(max(int(remaining), 0))
        headers[f"x-ratelimit-reset-{unit}"] = _reset(reset)


class TokenHold(Hold):
    """Adds an attempt's answer tokens (and any prompt tokens beyond the count) to the token
    windows it was admitted on; never refused, since the call has happened."""

    __slots__ = ("store", "keys", "counted")

    def __init__(self, store: Store, keys: list[str], counted: int) -> None:
        self.store, self.keys, self.counted = store, keys, counted

    async def done(self, attempt: Attempt) -> None:
        more = attempt.usage.output_tokens + max(attempt.usage.input_tokens - self.counted, 0)
        if more > 0:
            await self.store.window_add_all([WindowAdd(key, float(more), WINDOW_S)
                                             for key in self.keys])
