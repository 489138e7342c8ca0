"""Budgets: spend limits in US dollars per key, user, team, model, route or globally, over a
calendar window (UTC), held exactly across replicas by reserving before every attempt.

```toml
[[budgets]]
scope = "key"            # key | user | team | model | route | global
match = "ci"             # the key's name, user id, team, model or route; omitted for global
limit_usd = 5.0
window = "day"           # minute | hour | day | month | total
```

**Reserve, then settle.** Before every attempt (retries, fallbacks, sub-requests' and cache hits
included) the attempt's worst-case cost is reserved on each budget that applies: the prompt's
tokens, counted, plus the request's ``max_tokens`` (else the model's ``max_output_tokens``, else
what is left of its context window), at the model's prices. The reservation is one atomic step in
the shared store, admitted only while settled spend + live reservations + this one stay within the
limit, so N replicas admit exactly what one would. When the attempt ends, each reservation is
settled to the attempt's real cost (from the provider's usage) or released when it cost nothing.
A replica that dies holding a reservation loses it after ``server.request_timeout_s`` plus a
minute. A refusal is an OpenAI-style 429, ``type: "budget_exceeded"``,
``code: "budget_exceeded"``, naming the budget, its limit, its spend and when it resets.

**Thresholds.** When settled spend crosses a threshold (``thresholds``, default 50%, 80% and
100%) the ``budget_threshold`` alert fires, once per budget, window and threshold across all
replicas (a lock in the store that lasts the window). A refusal fires the 100% alert too.

**Routers see what is left.** Requests are labelled ``budget_left`` (the smallest fraction left
among the key, user, team, route and global budgets that apply, 0 to 1) and ``budget_left_usd``,
so a routing rule can send requests to a cheaper route as a budget runs low (``when = {
budget_left = "< 0.2" }``): in ``classify`` when some ``[[routing.rules]]`` entry matches on a
``budget_left`` label (it costs a store read per budget), else in ``filter_candidates`` when
there is more than one candidate to choose from. ``filter_candidates`` drops the models whose
worst-case cost no longer fits (while one that fits is left), and models whose own budget is
spent.

**Set at run time.** Beside the config's ``[[budgets]]``, budgets can be added, replaced and
removed while the gateway runs (``PUT /admin/budgets``, ``turnout budget set``; see the ``admin``
plugin). They live in the shared store at ``limits:runtime``, so every replica enforces them; a
runtime budget replaces the config budgets with the same scope, match and window (its spend so
far still counts: the ledger is the same). Each replica re-reads them at most once a second
(:class:`RuntimeRules`): a request costs a clock check, and one GET when a second has passed.

Keys in the store: ``budget:<scope>:<value>:<window id>`` (a ledger),
``budget-alert:<ledger>:<threshold>`` (a lock), and ``limits:runtime`` (the budgets and rate
limits set at run time, JSON).
"""

from __future__ import annotations

import datetime as dt
import math
import time
import uuid
from typing import Any, Callable, Generic, Literal, TypeVar

import orjson
import structlog
from pydantic import BaseModel, Field, ValidationError

from turnout.kernel import tokens
from turnout.kernel.errors import BudgetExceeded
from turnout.kernel.hookspecs import hookimpl
from turnout.kernel.store import Reservation, Store, StoreError
from turnout.kernel.types import Alert, Attempt, Context, Hold, ModelProfile, Step, Usage

from .scopes import REQUEST_SCOPES, ScopedRule, rule_list

log = structlog.get_logger("turnout.budgets")

Window = Literal["minute", "hour", "day", "month", "total"]

RESERVATION_GRACE_S = 60.0
"""How much longer than ``server.request_timeout_s`` an unsettled reservation counts."""


class Budget(ScopedRule):
    """One ``[[budgets]]`` entry: a spend limit over a window."""

    limit_usd: float = Field(ge=0, description="Most that may be spent in one window, in US "
                             "dollars (reserved worst case first, settled to the real cost).")
    window: Window = Field(default="day", description="The window spend is counted over, in "
                           "UTC calendar terms: 'minute', 'hour', 'day', 'month', or 'total' "
                           "(never resets).")
    thresholds: list[float] = Field(default=[0.5, 0.8, 1.0], description="Fractions of the "
                                    "limit at which the budget_threshold alert fires, once per "
                                    "window.")


BudgetList = rule_list(Budget, "Budgets: ``[[budgets]]`` entries, each a spend limit over a "
                               "window for a key, user, team, model, route or everything.")


RUNTIME_LIMITS = "limits:runtime"
"""Store key of the budgets and rate limits set at run time: JSON ``{"budgets": [...],
"rate_limits": [...]}``, each entry a ``[[budgets]]`` or ``[[rate_limits]]`` table; changed only
under the store lock of the same name."""

REFRESH_S = 1.0
"""How often, at most, a replica re-reads the runtime rules."""

R = TypeVar("R", bound=BaseModel)


def runtime_entries(raw: bytes | None, kind: str) -> list[dict[str, Any]]:
    """The entries under ``kind`` (``budgets`` or ``rate_limits``) of the stored runtime
    limits, as stored; empty when there are none."""
    if not raw:
        return []
    found = orjson.loads(raw)
    entries = found.get(kind, []) if isinstance(found, dict) else []
    return [e for e in entries if isinstance(e, dict)] if isinstance(entries, list) else []


class RuntimeRules(Generic[R]):
    """A plugin's rules: the config's, plus those set at run time (the entries under ``kind`` of
    ``limits:runtime`` in the store, validated by ``model``), where a runtime rule replaces every
    config rule with the same ``identity``.

    :meth:`refresh` re-reads the store at most once every :data:`REFRESH_S` seconds per replica,
    so a request costs a clock check (:meth:`due`), and one GET when a second has passed. A
    store that cannot be read keeps the rules last read (and says so in the log); an entry that
    does not validate is logged and skipped.
    """

    def __init__(self, kind: str, model: type[R], identity: Callable[[R], tuple]) -> None:
        self.kind, self.model, self.identity = kind, model, identity
        self.config: list[R] = []
        self.runtime: list[R] = []
        self.rules: list[R] = []
        """What applies now: the config rules not replaced, then the runtime ones."""
        self._raw: bytes | None = None
        self._due = 0.0

    def configure(self, rules: Any) -> None:
        """Set the config's rules (at startup)."""
        self.config = list(rules or ())
        self._merge()

    def due(self) -> bool:
        """True when the runtime rules should be read again."""
        return time.monotonic() >= self._due

    async def refresh(self, store: Store | None, *, force: bool = False) -> list[R]:
        """The rules that apply, re-read from the store when due (or ``force``)."""
        if store is None or not (force or self.due()):
            return self.rules
        self._due = time.monotonic() + REFRESH_S  # before the GET: one reader per second
        try:
            raw = await store.get(RUNTIME_LIMITS)
        except StoreError as exc:
            log.warning("runtime_limits_unreadable", kind=self.kind, error=exc.message)
            return self.rules
        if raw != self._raw:
            self._raw = raw
            self.runtime = self._parse(raw)
            self._merge()
        return self.rules

    def _parse(self, raw: bytes | None) -> list[R]:
        try:
            entries = runtime_entries(raw, self.kind)
        except orjson.JSONDecodeError:
            log.error("runtime_limits_unreadable", kind=self.kind, error="not JSON")
            return self.runtime
        rules = []
        for entry in entries:
            try:
                rules.append(self.model.model_validate(entry))
            except ValidationError as exc:
                log.error("runtime_rule_invalid", kind=self.kind, entry=entry,
                          error=str(exc.errors()[0]["msg"]))
        return rules

    def _merge(self) -> None:
        replaced = {self.identity(rule) for rule in self.runtime}
        self.rules = [r for r in self.config if self.identity(r) not in replaced] + self.runtime

    def listing(self) -> list[tuple[R, str]]:
        """Every rule that applies with where it comes from: ``config`` or ``runtime``."""
        runtime = {id(rule) for rule in self.runtime}
        return [(rule, "runtime" if id(rule) in runtime else "config") for rule in self.rules]


def budget_identity(rule: Budget) -> tuple:
    """What a runtime budget replaces: the budgets with the same scope, match and window."""
    return (rule.scope, rule.match, rule.window)


def window_bounds(window: Window, now: float) -> tuple[str, float | None]:
    """The id of the window ``now`` falls in and when it ends (None for ``total``), in UTC."""
    if window == "total":
        return "total", None
    if window == "month":
        day = dt.datetime.fromtimestamp(now, dt.timezone.utc)
        start = day.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
        end = (start + dt.timedelta(days=32)).replace(day=1)
        return start.strftime("%Y-%m"), end.timestamp()
    length = {"minute": 60, "hour": 3600, "day": 86400}[window]
    start = math.floor(now / length) * length
    stamp = dt.datetime.fromtimestamp(start, dt.timezone.utc)
    return stamp.strftime({"minute": "%Y-%m-%dT%H:%M", "hour": "%Y-%m-%dT%H",
                           "day": "%Y-%m-%d"}[window]), float(start + length)


def ledger_key(rule: Budget, value: str, window: str) -> str:
    """The store key of ``rule``'s ledger for ``value`` (a key's name, a user...) in the window
    ``window`` (an id from :func:`window_bounds`)."""
    return f"budget:{rule.counter(value)}:{window}"


def worst_case_cost(ctx: Context, model: ModelProfile) -> float:
    """The most an attempt on ``model`` can cost: the counted prompt, plus the request's output
    cap (else the model's, else the rest of its context window), at the model's prices; times
    ``n`` when the request asks for several choices (a provider without ``n`` is asked ``n``
    times, prompt included)."""
    prompt = tokens.prompt_tokens(ctx)
    output = ctx.request.output_limit or model.max_output_tokens \
        or max(model.context_window - prompt, 0)
    copies = ctx.request.n or 1
    return model.cost(Usage(prompt * copies, output * copies))


def _when(timestamp: float | None) -> str:
    if timestamp is None:
        return "never (a total budget)"
    return dt.datetime.fromtimestamp(timestamp, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class Budgets:
    """The ``budgets`` plugin: reserve on ``admit``, settle when the attempt ends."""

    name = "budgets"
    Settings = BudgetList

    def __init__(self) -> None:
        self.limits: RuntimeRules[Budget] = RuntimeRules("budgets", Budget, budget_identity)
        self.store: Store | None = None
        self.ttl_s = 600.0 + RESERVATION_GRACE_S
        self.alerted: set[tuple[str, float]] = set()
        """(ledger, threshold) pairs this process knows have alerted: no store call again."""
        self.rules_see_left = False
        self.kernel = None

    @hookimpl
    def startup(self, kernel) -> None:
        self.kernel = kernel
        self.limits.configure(kernel.plugin_settings(self))
        self.ttl_s = kernel.config.server.request_timeout_s + RESERVATION_GRACE_S
        self.rules_see_left = any(label.startswith("budget_left")
                                  for rule in kernel.config.routing.rules for label in rule.when)
        """Whether a routing rule matches on budget_left: only then is it read for every
        request before routing (one store read per budget); otherwise only to choose among
        several candidates."""

    @property
    def rules(self) -> list[Budget]:
        """The budgets that apply: the config's and those set at run time, as last read."""
        return self.limits.rules

    async def _fresh(self) -> list[Budget]:
        """:attr:`rules`, re-read from the store when a second has passed since the last read."""
        limits = self.limits
        return await limits.refresh(self.kernel.store) if limits.due() else limits.rules

    def _ledgers(self, ctx: Context, step: Step, scopes: frozenset[str] | None = None,
                 now: float | None = None) -> list[tuple[Budget, str, str, float | None]]:
        """(budget, ledger key, value, reset time) of every budget that applies."""
        found = []
        now = time.time() if now is None else now
        for rule in self.rules:
            if scopes is not None and rule.scope not in scopes:
                continue
            value = rule.value(ctx, step)
            if value is None:
                continue
            window, reset = window_bounds(rule.window, now)
            found.append((rule, ledger_key(rule, value, window), value, reset))
        return found

    # --- routers see what is left ---------------------------------------------------------------

    @hookimpl
    async def classify(self, ctx: Context) -> dict | None:
        if not self.rules_see_left or not await self._fresh():
            return None
        return await self._left(ctx)

    async def _left(self, ctx: Context) -> dict | None:
        """The labels ``budget_left`` and ``budget_left_usd`` for ``ctx``: the tightest of the
        request-wide budgets that apply; None when none applies."""
        store = self.kernel.store
        left: float | None = None
        left_usd: float | None = None
        for rule, ledger, _, _ in self._ledgers(ctx, _NO_STEP, REQUEST_SCOPES):
            remaining = max(rule.limit_usd - await store.ledger_total(ledger), 0.0)
            fraction = remaining / rule.limit_usd if rule.limit_usd else 0.0
            if left is None or fraction < left:
                left = fraction
            if left_usd is None or remaining < left_usd:
                left_usd = remaining
        if left is None:
            return None
        return {"budget_left": round(left, 6), "budget_left_usd": left_usd}

    @hookimpl
    async def filter_candidates(self, ctx: Context) -> None:
        if not await self._fresh() or not ctx.candidates:
            return
        if "budget_left" not in ctx.labels and len(ctx.candidates) > 1:
            ctx.labels.update(await self._left(ctx) or {})
        left = ctx.labels.get("budget_left_usd")
        store = self.kernel.store
        keep: list[tuple[ModelProfile, str]] = []
        for model in ctx.candidates:
            cost = worst_case_cost(ctx, model)
            reason = ""
            if left is not None and cost > left:
                reason = f"worst case ${cost:.6f} over the ${left:.6f} budget left"
            for rule, ledger, value, _ in self._ledgers(ctx, Step(model), frozenset({"model"})):
                if cost + await store.ledger_total(ledger) > rule.limit_usd:
                    reason = f"budget of {rule.label(value)} spent"
            keep.append((model, reason))
        if all(reason for _, reason in keep):
            return  # nothing fits: admit refuses with the budget's own 429
        for model, reason in keep:
            if reason:
                ctx.drop(model, reason)

    # --- reserve, then settle -------------------------------------------------------------------

    @hookimpl
    async def admit(self, ctx: Context, step: Step) -> Hold | None:
        if not await self._fresh():
            return None
        ledgers = self._ledgers(ctx, step)
        if not ledgers:
            return None
        store = self.kernel.store
        cost = worst_case_cost(ctx, step.model)
        held = BudgetHold(self, [])
        for rule, ledger, value, reset in ledgers:
            try:
                reservation = await store.reserve(ledger, cost, limit=rule.limit_usd,
                                                  ttl_s=self.ttl_s)
            except BaseException:
                await held.release()
                raise
            if reservation is None:
                await held.release()
                spent = await store.ledger_total(ledger)
                await self._threshold(rule, ledger, value, 1.0, spent)
                raise BudgetExceeded(
                    f"Budget exceeded: the {rule.window} budget of {rule.label(value)} is "
                    f"${rule.limit_usd:g}; ${spent:.6f} is spent or reserved, and this request "
                    f"may cost up to ${cost:.6f}. It resets at {_when(reset)}.")
            held.entries.append((rule, ledger, value, reservation))
        return held

    async def _threshold(self, rule: Budget, ledger: str, value: str, reached: float,
                         spent: float) -> None:
        """Fire the alert for each threshold ``reached`` (a fraction) has crossed, once per
        window across replicas."""
        for threshold in sorted(rule.thresholds):
            if reached + 1e-9 < threshold or (ledger, threshold) in self.alerted:
                continue
            self.alerted.add((ledger, threshold))
            _, reset = window_bounds(rule.window, time.time())
            ttl = max((reset - time.time()) if reset else 366 * 86400.0, 1.0) + 60
            first = await self.kernel.store.try_lock(f"budget-alert:{ledger}:{threshold:g}",
                                                     uuid.uuid4().hex, ttl)
            if not first:
                continue
            await self.kernel.alert(Alert(
                "budget_threshold", "critical" if threshold >= 1 else "warning",
                f"{threshold:.0%} of the {rule.window} budget of {rule.label(value)} is spent: "
                f"${spent:.4f} of ${rule.limit_usd:g}",
                labels={"scope": rule.scope, "match": value, "window": rule.window,
                        "threshold": f"{threshold:g}"}))

    async def settled(self, rule: Budget, ledger: str, value: str, total: float) -> None:
        """A reservation was settled and the ledger's settled total is ``total``."""
        if rule.limit_usd > 0:
            await self._threshold(rule, ledger, value, total / rule.limit_usd, total)

    async def remaining(self) -> list[dict]:
        """Every budget's spend in its current window (for the metrics), one entry per budget
        with a ``match`` or the global one (per-value budgets have no single figure)."""
        out = []
        now = time.time()
        for rule in await self._fresh():
            spent = await self.spent(rule, now)
            if spent is not None:
                out.append({"scope": rule.scope, "match": rule.match or "",
                            "window": rule.window, "limit_usd": rule.limit_usd,
                            "spent_usd": spent})
        return out

    async def spent(self, rule: Budget, now: float) -> float | None:
        """What ``rule``'s ledger holds (settled and reserved) in the window ``now`` falls in;
        None for a budget without ``match``, which has a ledger per value."""
        value = rule.single_value
        if value is None:
            return None
        window, _ = window_bounds(rule.window, now)
        return await self.kernel.store.ledger_total(ledger_key(rule, value, window))


_NO_STEP = Step(ModelProfile(name="", provider="", upstream=""))
"""Stands in for the step when only request-wide budgets are looked at."""


class BudgetHold(Hold):
    """An attempt's reservations, one per budget that applies."""

    __slots__ = ("plugin", "entries")

    def __init__(self, plugin: Budgets,
                 entries: list[tuple[Budget, str, str, Reservation]]) -> None:
        self.plugin, self.entries = plugin, entries

    async def release(self) -> None:
        store = self.plugin.kernel.store
        for *_, reservation in self.entries:
            await store.release(reservation)
        self.entries = []

    async def done(self, attempt: Attempt) -> None:
        """Settle to the attempt's real cost, or release when it cost nothing."""
        if attempt.cost_usd <= 0:
            await self.release()
            return
        store = self.plugin.kernel.store
        for rule, ledger, value, reservation in self.entries:
            total = await store.settle(reservation, attempt.cost_usd)
            await self.plugin.settled(rule, ledger, value, total)
        self.entries = []

