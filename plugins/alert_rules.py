"""Alert rules: conditions watched on the request records, raised through the ``alert`` event
once per transition across replicas, with an action that lasts as long as the alert.

```toml
[[alerts]]
kind = "latency_p95"     # budget | latency_p95 | error_rate | fallback_rate | provider_down | digest
match = "strong"         # a model or route; omitted for each model
above_ms = 8000
for_minutes = 5
channel = "#llm-ops"
action = "shift_traffic" # optional
```

**What is watched.** ``record`` feeds per-process counts in 5-second buckets (top-level
requests only; cancelled ones are left out): requests, server errors, fallbacks and a latency
histogram (bins 1% apart: a p95 is read at most 1% high). It costs a few dict updates per
request and no store call. A request's latency is from its acceptance to its end (a stream's
last chunk). Every 10 seconds a background task, started at startup and cancelled at shutdown,
evaluates every rule on these counts (``AlertRules(tick_s=...)``: a list of tables has no place
for a setting of its own). A window of ``window_minutes`` counts the 5-second buckets it
overlaps, so it looks back up to 5 seconds further.

- ``latency_p95``: the 95th percentile of request latency over the last ``window_minutes`` (1
  by default). *Fires* once the window holds at least ``min_requests`` requests and its p95 has
  stayed above ``above_ms`` at every tick for ``for_minutes``; a short spike, or a window with
  too few requests, starts that count again. *Resolves* at the first tick whose p95 is below
  ``above_ms``, or once the window has held too few requests for ``for_minutes`` (at least one
  window; nothing left to judge by: traffic stopped, or was shifted away; if the model is still
  slow when traffic comes back, the rule fires again after ``for_minutes``). A p95 equal to
  the bound changes nothing.
- ``error_rate``: the share of requests that failed with a server error (status 5xx, or an
  upstream 429 the gateway could not get past); a client's own errors (4xx: bad requests,
  budget and rate-limit refusals, content policy) do not count. Fires and resolves as above,
  with ``above`` a fraction (0.2 for 20%).
- ``fallback_rate``: the share of requests that took more than one attempt (retries and
  fallbacks), against ``above``.
- ``provider_down``: the circuit. ``after_failures`` attempts of a provider in a row (5 by
  default, sub-requests' included) that failed as ``upstream_unavailable`` (5xx, connection
  refused) or ``upstream_timeout`` open it; the next attempt it answers (even one a validator
  refuses) closes it. The alert fires at the first tick the circuit is open (``for_minutes`` 0
  by default) and resolves at the first tick it is closed; a circuit that opens and closes
  between two ticks raises nothing. :meth:`AlertRules.is_open` reads it, for a health filter.
- ``budget``: the budgets plugin raises ``budget_threshold`` itself (once per budget, window
  and threshold, across replicas). A budget rule routes those alerts: each one of a budget whose
  ``match`` is the rule's (every budget when omitted) gets the rule's ``channel``, and from
  ``above`` (0.8 by default) of the limit on, its ``action``. See :meth:`AlertRules.enrich`.
- ``digest``: once a day at ``at`` (UTC, ``HH:MM``; a replica starting up to an hour late still
  sends it), an ``info`` alert with the last 24 hours' requests, server errors and spend (summed
  across replicas in the store) and p95 latency (of the replica that sends it).

``match`` names a configured route, or a model (latency and error rates count a request
against the model that answered it, or the model of its last attempt when none did; fallback
rates against the model tried first); ``"*"`` counts all requests together; omitted, each model
is watched on its own. For ``provider_down`` it names a provider (omitted: each provider).

**One alert across replicas.** Each replica judges from its own requests (a p95 is its own
requests' p95: behind a load balancer every replica sees much the same), but an alert is opened
and resolved once for all of them, through the store:

- ``alert:<key>`` (a value, JSON) is the alert's state: ``open``, the episode id,
  ``started_at``, ``resolved_at``, ``acked_by``, ``muted_until``, ``delivered``, ``last_sent``
  and ``refs`` (what sinks remember of their posts, to update them in place).
- ``alert:<key>:open`` (a lock) is held while a replica changes that state: opening, resolving,
  acknowledging, muting. A replica that wants to open an alert takes it, reads the state and the
  index, and opens a new episode only when no other replica has: two replicas seeing the same
  condition deliver one alert.
- ``alert:<key>:owner`` (a value with a TTL of three ticks, at least 30 s, renewed every tick
  under the lock above) names the replica that opened it. Only the owner resolves it, when its own requests
  say so, so a replica that sees less of the trouble does not close it; should the owner die
  (or stop: it gives the alert up), another replica takes it over within three ticks.
- ``alerts:open`` (a value, JSON, changed under the lock of the same name) indexes the open
  alerts, with their actions: every replica reads it at each tick and acts on it, so traffic is
  shifted everywhere while the alert lasts, and back everywhere once it resolves.
- ``alerts:digest:requests|errors|spend`` are 24-hour sliding windows each replica adds its
  counts to every tick; ``alert:digest:<day>:<rule>`` is the lock that sends a day's digest once.

The key is :func:`~turnout.kernel.types.alert_key` of the alert's name (the rule's kind) and
labels: ``model``, ``route`` or ``provider``, and the bound (``above_ms``, ``above``), so two
rules with different bounds on the same model are two alerts.

**Acknowledge and mute** (:meth:`AlertRules.acknowledge`, :meth:`AlertRules.mute`, for a chat
sink's buttons): an acknowledged alert is not posted again while it lasts (its repeats, every
``repeat_minutes``, stop) but its resolve is still delivered. A muted key delivers nothing new
until the mute ends: an episode that opens meanwhile opens silently and is delivered when the
mute ends, if it still lasts; a resolve is delivered only for an episode that was delivered (so
a posted message is closed). Budget thresholds and digests are not muted by these (they are
raised elsewhere, or are a new alert each day); a digest can be muted by its key ``digest{}``.

**Actions**, named in the alert (``alert.action``, and in its summary) and undone when it
resolves:

- ``shift_traffic`` (latency, error and fallback rules on models; provider_down): while the
  alert lasts the model (every model of the provider) is dropped from the candidates, as long
  as another candidate remains; a request naming the model still gets it. A down provider gets
  one request through every 30 seconds (a probe), so that its circuit can see it answer again.
- ``enable_cache`` (rules on a route, or ``"*"``): while the alert lasts, requests of the route
  are marked ``ctx.state["alerts.cache"] = "always"``, which the cache plugin takes over the
  route's own ``cache`` mode.
- ``downgrade`` (budget rules): while a matched budget's spend in its current window is at or
  over ``above`` of its limit, the candidates of requests that budget counts are tried cheapest
  first. Budgets with a ``match`` (and the global one) are read, one store read each per tick.

Time comes from an injectable clock (epoch seconds, ``time.time`` by default): tests move it
and call :meth:`AlertRules.tick` instead of waiting for the timer.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Literal

import anyio
import orjson
import structlog
from pydantic import BaseModel, ConfigDict, Field, model_validator

from turnout.kernel.errors import ConfigError, ProviderError, TurnoutError
from turnout.kernel.hookspecs import hookimpl
from turnout.kernel.store import Store, StoreError, WindowAdd
from turnout.kernel.types import Alert, Context, ModelProfile, Step, alert_key

from .scopes import REQUEST_SCOPES, rule_list

log = structlog.get_logger("turnout.alerts")

Kind = Literal["budget", "latency_p95", "error_rate", "fallback_rate", "provider_down", "digest"]
Action = Literal["shift_traffic", "enable_cache", "downgrade"]
Severity = Literal["info", "warning", "critical"]

SERIES_KINDS = ("latency_p95", "error_rate", "fallback_rate")
ACTIONS: dict[str, frozenset[str]] = {
    "latency_p95": frozenset({"shift_traffic", "enable_cache"}),
    "error_rate": frozenset({"shift_traffic", "enable_cache"}),
    "fallback_rate": frozenset({"shift_traffic", "enable_cache"}),
    "provider_down": frozenset({"shift_traffic"}),
    "budget": frozenset({"downgrade"}),
    "digest": frozenset(),
}
"""The actions each kind may take."""

KEYS: dict[str, frozenset[str]] = {
    "match": frozenset(ACTIONS) - {"digest"},
    "above_ms": frozenset({"latency_p95"}),
    "above": frozenset({"error_rate", "fallback_rate", "budget"}),
    "for_minutes": frozenset({"latency_p95", "error_rate", "fallback_rate", "provider_down"}),
    "window_minutes": frozenset(SERIES_KINDS),
    "min_requests": frozenset(SERIES_KINDS),
    "after_failures": frozenset({"provider_down"}),
    "at": frozenset({"digest"}),
    "repeat_minutes": frozenset(SERIES_KINDS + ("provider_down",)),
}
"""The kinds each optional key applies to (the rest apply to all)."""

DEFAULT_SEVERITY = {"latency_p95": "warning", "error_rate": "warning",
                    "fallback_rate": "warning", "provider_down": "critical", "budget": "warning",
                    "digest": "info"}

DOWN_KINDS = frozenset({"upstream_unavailable", "upstream_timeout"})
"""Attempt error kinds that count towards a provider's circuit: it did not answer (5xx,
connection refused or reset, no answer in time)."""

ANSWERED = frozenset({"ok", "rejected"})
"""Attempt statuses that mean the provider answered (a validator refusing the answer is not the
provider being down)."""

ALL = "*"
"""``match`` for all requests together."""

BUCKET_S = 5.0
"""Width of the per-process time buckets the rules count in."""
DAY_BUCKET_S = 300.0
"""Width of the buckets behind a digest's 24-hour p95."""
DAY_S = 86400.0
LATENCY_STEP = math.log(1.01)
"""Latency histogram bins grow by 1%: a p95 is its bin's upper edge, at most 1% high."""

MUTEX_TTL_S = 30.0
"""How long a replica may hold an alert's ``:open`` lock should it die holding it."""
MUTEX_WAIT_S = 2.0
"""How long a transition waits for another replica's (real seconds) before leaving it to the
next tick."""
STATE_TTL_S = 7 * DAY_S
"""How long a resolved alert's state (acks, mutes, refs) is kept."""
PROBE_S = 30.0
"""How often a down provider whose traffic is shifted gets one request through."""
DIGEST_LATE_S = 3600.0
"""How late a digest may still be sent (a replica started after ``at``)."""
INDEX = "alerts:open"
NO_STEP = Step(ModelProfile(name="", provider="", upstream=""))
"""Stands in for the step when a request-wide budget is asked whether it counts a request."""
CACHE_MARK = "alerts.cache"
"""Key in ``ctx.state`` that ``enable_cache`` sets to ``"always"`` while its alert lasts."""
DIGEST_WINDOWS = ("requests", "errors", "spend")


# --- settings ------------------------------------------------------------------------------------


class AlertRule(BaseModel):
    """One ``[[alerts]]`` entry: a condition on the records, where to raise it, what to do."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Kind = Field(description="What is watched: 'latency_p95', 'error_rate', "
                       "'fallback_rate', 'provider_down', 'budget' (routes the budgets plugin's "
                       "threshold alerts) or 'digest' (a daily summary).")
    match: str | None = Field(default=None, description="latency_p95, error_rate, "
                              "fallback_rate: a route or a model ('*': all requests together); "
                              "omitted, each model on its own. provider_down: a provider "
                              "(omitted: each). budget: the budget's match (omitted: every "
                              "budget).")
    above_ms: float | None = Field(default=None, gt=0, description="latency_p95: the bound, in "
                                   "milliseconds, the p95 must stay above to fire.")
    above: float | None = Field(default=None, gt=0, le=1, description="error_rate, "
                                "fallback_rate: the share of requests (0.2 for 20%) the rate "
                                "must stay above to fire. budget: the share of the limit from "
                                "which the action applies (default 0.8).")
    for_minutes: float | None = Field(default=None, ge=0, description="How long the condition "
                                      "must hold, at every tick, before the alert fires "
                                      "(default 5; provider_down 0).")
    window_minutes: float = Field(default=1.0, gt=0, description="The sliding window the p95 "
                                  "or rate is computed over, in minutes.")
    min_requests: int = Field(default=20, ge=1, description="Fewest requests in the window for "
                              "a p95 or rate to count; with fewer, nothing is judged.")
    after_failures: int = Field(default=5, ge=1, description="provider_down: attempts in a row "
                                "failing as unavailable or timed out that open the circuit.")
    at: str = Field(default="09:00", pattern=r"^([01]\d|2[0-3]):[0-5]\d$",
                    description="digest: when to send it each day, UTC, 'HH:MM'.")
    channel: str | None = Field(default=None, description="Where a chat sink posts the alert "
                                "('#llm-ops'); omitted, the sink's default.")
    action: Action | None = Field(default=None, description="What the gateway does while the "
                                  "alert lasts, undone when it resolves: 'shift_traffic' "
                                  "(latency/error/fallback rules on models, provider_down), "
                                  "'enable_cache' (rules on a route), 'downgrade' (budget).")
    severity: Severity | None = Field(default=None, description="The alert's severity "
                                      "(default: warning; provider_down critical; digest info).")
    repeat_minutes: float = Field(default=240.0, ge=0, description="While the alert lasts and "
                                  "nobody has acknowledged it, deliver it again this often "
                                  "(0: never).")

    @model_validator(mode="after")
    def _fits_kind(self) -> "AlertRule":
        kind = self.kind
        for key in sorted(self.model_fields_set & KEYS.keys()):
            if kind not in KEYS[key] and getattr(self, key) is not None:
                takes = sorted(k for k, kinds in KEYS.items() if kind in kinds)
                raise ValueError(f"{key!r} does not apply to kind {kind!r}; its keys are "
                                 f"{', '.join(takes) or 'none of these'}")
        if kind == "latency_p95" and self.above_ms is None:
            raise ValueError("latency_p95 needs 'above_ms', the bound in milliseconds")
        if kind in ("error_rate", "fallback_rate") and self.above is None:
            raise ValueError(f"{kind} needs 'above', a share of requests (0.2 for 20%)")
        if self.action is not None and self.action not in ACTIONS[kind]:
            allowed = ", ".join(sorted(ACTIONS[kind])) or "none"
            raise ValueError(f"action {self.action!r} does not apply to kind {kind!r} "
                             f"(its actions: {allowed})")
        if kind == "provider_down" and self.match == ALL:
            raise ValueError("provider_down watches providers: name one in 'match', or omit it "
                             "for each provider")
        return self

    @property
    def for_s(self) -> float:
        default = 0.0 if self.kind == "provider_down" else 5.0
        return 60.0 * (default if self.for_minutes is None else self.for_minutes)

    @property
    def window_s(self) -> float:
        return 60.0 * self.window_minutes

    @property
    def share(self) -> float:
        """``above`` with the budget default."""
        return 0.8 if self.above is None else self.above


AlertRuleList = rule_list(AlertRule, "Alert rules: ``[[alerts]]`` entries, each a condition on "
                                     "the records (latency, error and fallback rates, a provider "
                                     "down, budgets, a daily digest) raised once across replicas.")


# --- per-process counts --------------------------------------------------------------------------


def latency_bin(ms: float) -> int:
    """The histogram bin of a latency in milliseconds (bin 0 holds everything up to 1 ms)."""
    return 0 if ms <= 1.0 else math.ceil(math.log(ms) / LATENCY_STEP)


def bin_ms(index: int) -> float:
    """The upper edge of a histogram bin, in milliseconds."""
    return math.exp(index * LATENCY_STEP)


@dataclass(slots=True)
class Bucket:
    start: float
    requests: int = 0
    errors: int = 0
    fallbacks: int = 0
    bins: dict[int, int] = field(default_factory=dict)


@dataclass(slots=True)
class Totals:
    """What a series counted over a window."""

    requests: int = 0
    errors: int = 0
    fallbacks: int = 0
    bins: dict[int, int] = field(default_factory=dict)

    def p95_ms(self) -> float | None:
        """The nearest-rank 95th percentile latency (a bin's upper edge); None without
        requests."""
        if not self.requests:
            return None
        rank = math.ceil(0.95 * self.requests)
        seen = 0
        for index in sorted(self.bins):
            seen += self.bins[index]
            if seen >= rank:
                return bin_ms(index)
        return bin_ms(max(self.bins))


class Series:
    """One stream of requests counted in time buckets, for as long as the rules look back."""

    __slots__ = ("bucket_s", "keep_s", "buckets")

    def __init__(self, keep_s: float, bucket_s: float = BUCKET_S) -> None:
        self.bucket_s, self.keep_s = bucket_s, keep_s
        self.buckets: deque[Bucket] = deque()

    def add(self, now: float, latency_ms: float, error: bool = False,
            fallback: bool = False) -> None:
        """Count one request that ended at ``now``; amortised O(1)."""
        buckets = self.buckets
        if buckets and buckets[-1].start + self.bucket_s > now:
            bucket = buckets[-1]  # also when the clock stepped back: counted in the latest
        else:
            bucket = Bucket(math.floor(now / self.bucket_s) * self.bucket_s)
            buckets.append(bucket)
            self.trim(now)
        bucket.requests += 1
        bucket.errors += error
        bucket.fallbacks += fallback
        index = latency_bin(latency_ms)
        bucket.bins[index] = bucket.bins.get(index, 0) + 1

    def trim(self, now: float) -> None:
        edge = now - self.keep_s - self.bucket_s
        buckets = self.buckets
        while buckets and buckets[0].start < edge:
            buckets.popleft()

    def totals(self, now: float, window_s: float) -> Totals:
        """Everything counted in the buckets that overlap the last ``window_s`` seconds."""
        self.trim(now)
        out = Totals()
        since = now - window_s
        for bucket in self.buckets:
            if bucket.start + self.bucket_s <= since:
                continue
            out.requests += bucket.requests
            out.errors += bucket.errors
            out.fallbacks += bucket.fallbacks
            for index, count in bucket.bins.items():
                out.bins[index] = out.bins.get(index, 0) + count
        return out


@dataclass(slots=True)
class Circuit:
    """A provider's attempts in a row that found it down."""

    failures: int = 0
    last_error: str | None = None


def server_error(ctx: Context) -> bool:
    """Whether a finished request failed on the gateway's or the upstream's side (5xx, or an
    upstream 429 it could not get past), not the client's (4xx refusals)."""
    if ctx.status != "error":
        return False
    error = ctx.error
    if not isinstance(error, TurnoutError):
        return True
    return error.status >= 500 or (isinstance(error, ProviderError) and error.status == 429)


# --- what the engine tracks per alert ------------------------------------------------------------


@dataclass(slots=True, eq=False)
class Tracked:
    """One alert as this replica knows it: its rule and target, the condition's progress, and
    whether it is open (and this replica its owner)."""

    index: int
    rule: AlertRule
    target: tuple[str, str]
    """(dimension, name): ``("model", m)``, ``("first", m)``, ``("route", r)`` or
    ``("provider", p)``."""
    labels: dict[str, str]
    key: str
    since: float | None = None
    """When the condition was first seen holding (None: not holding)."""
    quiet_since: float | None = None
    """While open: since when the window has held too few requests to judge by."""
    open: bool = False
    owner: bool = False
    episode: str | None = None
    started_at: float = 0.0
    details: dict[str, Any] = field(default_factory=dict)
    token: str = field(default_factory=lambda: uuid.uuid4().hex)
    """This replica's token in the owner lease (``alert:<key>:owner``)."""


def _target_labels(rule: AlertRule, target: tuple[str, str]) -> dict[str, str]:
    dim, name = target
    labels = {"provider" if dim == "provider" else "route" if dim == "route" else "model": name}
    if rule.kind == "latency_p95":
        labels["above_ms"] = f"{rule.above_ms:g}"
    elif rule.kind in ("error_rate", "fallback_rate"):
        labels["above"] = f"{rule.above:g}"
    return labels


def _what(target: tuple[str, str]) -> str:
    dim, name = target
    if dim == "route":
        return "all requests" if name == ALL else f"route {name!r}"
    return f"{'provider' if dim == 'provider' else 'model'} {name!r}"


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:g} min"


# --- the plugin ----------------------------------------------------------------------------------


class AlertRules:
    """The ``alerts`` plugin: counts on ``record``, judges on a timer, acts in
    ``filter_candidates``, raises through ``kernel.alert``.

    ``clock`` gives epoch seconds (``time.time``); ``tick_s`` is how often the background task
    evaluates (None: no task; call :meth:`tick`); ``lease_s`` how long an owner's lease lasts
    without renewal (default three ticks, at least 30 s).
    """

    name = "alerts"
    Settings = AlertRuleList

    def __init__(self, *, clock: Callable[[], float] = time.time, tick_s: float | None = 10.0,
                 lease_s: float | None = None) -> None:
        self.clock = clock
        self.tick_s = tick_s
        self.lease_s = lease_s or max(3 * (tick_s or 10.0), 30.0)
        self.kernel: Any = None
        self.rules: list[AlertRule] = []
        self.series_rules: list[tuple[int, AlertRule, tuple[str, str] | None]] = []
        """(index, rule, fixed target or None for each model) of the latency and rate rules."""
        self.circuit_rules: list[tuple[int, AlertRule]] = []
        self.budget_rules: list[AlertRule] = []
        self.digest_rules: list[tuple[int, AlertRule]] = []
        self.series: dict[tuple[str, str], Series] = {}
        self.keep_s = 60.0
        self.feeds: dict[str, set[str] | None] = {}
        """Dimension -> the names fed (None: every name)."""
        self.circuits: dict[str, Circuit] = {}
        self.watch_providers: set[str] | None = set()
        self.day: Series | None = None
        self.digest_counts = [0.0, 0.0, 0.0]
        """Requests, errors and spend not yet added to the store's 24-hour windows."""
        self.digest_sent: dict[int, str] = {}
        self.tracked: dict[str, Tracked] = {}
        self.index: dict[str, dict[str, Any]] = {}
        """The open alerts of every replica, as last read from the store."""
        self.shift_models: dict[str, str] = {}
        self.shift_providers: dict[str, str] = {}
        self.cache_routes: dict[str, str] = {}
        self.downgrades: list[tuple[Any, str, str]] = []
        """(budget, value, why) of the budgets whose spend calls for ``downgrade`` now."""
        self.next_probe: dict[str, float] = {}
        self.counting = False
        """Whether ``record`` has anything to count for."""
        self._task: asyncio.Task | None = None
        self._ticking = anyio.Lock()

    # --- lifecycle ---------------------------------------------------------------------------

    @hookimpl
    def startup(self, kernel) -> None:
        self.kernel = kernel
        self.rules = list(kernel.plugin_settings(self) or ())
        routes = set(kernel.config.routes)
        self.series_rules, self.circuit_rules, self.budget_rules, self.digest_rules = [], [], [], []
        self.feeds, self.watch_providers = {}, set()
        keep = 60.0
        for i, rule in enumerate(self.rules):
            where = f"alerts[{i}] ({rule.kind}"
            if rule.kind in SERIES_KINDS:
                target = self._target(rule, routes)
                if rule.action == "shift_traffic" and target is not None and target[0] == "route":
                    raise ConfigError(f"{where}, match = {rule.match!r}): shift_traffic moves "
                                      "requests away from a model; match a model, or omit "
                                      "match for each model")
                if rule.action == "enable_cache" and (target is None or target[0] != "route"):
                    raise ConfigError(f"{where}, match = {rule.match!r}): enable_cache turns on "
                                      "caching for a route; match a configured route, or '*' "
                                      f"for every route (routes: {', '.join(sorted(routes))})")
                dim = "first" if rule.kind == "fallback_rate" else "model"
                if target is None:
                    self.feeds[dim] = None
                elif self.feeds.get(target[0], set()) is not None:
                    self.feeds.setdefault(target[0], set()).add(target[1])
                self.series_rules.append((i, rule, target))
                keep = max(keep, rule.window_s)
            elif rule.kind == "provider_down":
                self.circuit_rules.append((i, rule))
                if rule.match is None:
                    self.watch_providers = None
                elif self.watch_providers is not None:
                    self.watch_providers.add(rule.match)
            elif rule.kind == "budget":
                self.budget_rules.append(rule)
            else:
                self.digest_rules.append((i, rule))
        if self.budget_rules and kernel.plugins.get("budgets") is None:
            log.warning("alert_rule_without_budgets", hint="kind = 'budget' rules route the "
                        "budgets plugin's alerts, which is not loaded")
        self.keep_s = keep
        self.day = Series(DAY_S, DAY_BUCKET_S) if self.digest_rules else None
        self.counting = bool(self.feeds or self.circuit_rules or self.digest_rules)
        if self.rules and self.tick_s:
            self._task = asyncio.get_running_loop().create_task(self._run())

    @staticmethod
    def _target(rule: AlertRule, routes: set[str]) -> tuple[str, str] | None:
        """The fixed series a latency or rate rule watches; None for each model."""
        if rule.match is None:
            return None
        if rule.match == ALL or rule.match in routes:
            return ("route", rule.match)
        return ("first" if rule.kind == "fallback_rate" else "model", rule.match)

    @hookimpl
    async def shutdown(self, kernel) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        store = getattr(kernel, "store", None)
        if store is None:
            return
        for tracked in self.tracked.values():  # another replica takes over at once
            if tracked.owner:
                with contextlib.suppress(Exception):
                    await self._release(store, tracked)

    async def _run(self) -> None:
        while True:
            await anyio.sleep(self.tick_s)
            try:
                await self.tick()
            except Exception:  # noqa: BLE001 - the timer must outlive one bad tick
                log.exception("alert_tick_failed")

    # --- counting: record --------------------------------------------------------------------

    @hookimpl
    def record(self, ctx: Context) -> None:
        """Count a finished request (no store call, no await)."""
        if not self.counting:
            return
        now = self.clock()
        if self.circuit_rules and ctx.attempts:
            self._count_attempts(ctx)
        if ctx.parent is not None or ctx.status == "cancelled":
            return
        latency_ms = ctx.latency_s * 1000.0
        error = server_error(ctx)
        fallback = len(ctx.attempts) > 1
        if self.day is not None:
            spend = ctx.spend_usd
            self.day.add(now, latency_ms)
            counts = self.digest_counts
            counts[0] += 1
            counts[1] += error
            counts[2] += spend
        feeds = self.feeds
        if not feeds:
            return
        if "route" in feeds:
            names = feeds["route"]
            for name in (ctx.route, ALL):
                if name is not None and (names is None or name in names):
                    self._series("route", name).add(now, latency_ms, error, fallback)
        if ctx.attempts:
            if "model" in feeds:
                done = ctx.completion
                model = done.model if done is not None and done.model else ctx.attempts[-1].model
                names = feeds["model"]
                if names is None or model in names:
                    self._series("model", model).add(now, latency_ms, error, fallback)
            if "first" in feeds:
                model = ctx.attempts[0].model
                names = feeds["first"]
                if names is None or model in names:
                    self._series("first", model).add(now, latency_ms, error, fallback)

    def _series(self, dim: str, name: str) -> Series:
        found = self.series.get((dim, name))
        if found is None:
            found = self.series[(dim, name)] = Series(self.keep_s)
        return found

    def _count_attempts(self, ctx: Context) -> None:
        watch = self.watch_providers
        for attempt in ctx.attempts:
            provider = attempt.provider
            if watch is not None and provider not in watch:
                continue
            circuit = self.circuits.get(provider)
            if circuit is None:
                circuit = self.circuits[provider] = Circuit()
            if attempt.status in ANSWERED:
                circuit.failures = 0
            elif attempt.status == "error" and attempt.error:
                kind = attempt.error.split(":", 1)[0]
                if kind in DOWN_KINDS:
                    circuit.failures += 1
                    circuit.last_error = kind

    def is_open(self, provider: str) -> bool:
        """Whether ``provider``'s circuit is open: this replica's attempts found it down
        (``after_failures`` in a row, by the strictest provider_down rule), or an open
        provider_down alert of any replica names it."""
        if provider in self.shift_providers or any(
                e.get("labels", {}).get("provider") == provider and e.get("name") ==
                "provider_down" for e in self.index.values()):
            return True
        circuit = self.circuits.get(provider)
        if circuit is None or not self.circuit_rules:
            return False
        return circuit.failures >= min(rule.after_failures for _, rule in self.circuit_rules)

    # --- acting: filter_candidates -------------------------------------------------------------

    @hookimpl
    def filter_candidates(self, ctx: Context) -> None:
        """Apply the actions of the open alerts: shift traffic away, mark for the cache,
        downgrade to the cheapest candidate."""
        if self.shift_models or self.shift_providers:
            self._shift(ctx)
        if self.cache_routes:
            key = self.cache_routes.get(ctx.route or "") or self.cache_routes.get(ALL)
            if key is not None:
                ctx.state[CACHE_MARK] = "always"
                ctx.decision.setdefault("alerts", []).append({"action": "enable_cache",
                                                              "alert": key})
        if self.downgrades and len(ctx.candidates) > 1:
            self._downgrade(ctx)

    def _shift(self, ctx: Context) -> None:
        shifted: list[tuple[ModelProfile, str]] = []
        keep = 0
        now: float | None = None
        for model in ctx.candidates:
            key = self.shift_models.get(model.name)
            if key is None and model.provider in self.shift_providers:
                now = self.clock() if now is None else now
                if now >= self.next_probe.get(model.provider, 0.0):
                    self.next_probe[model.provider] = now + PROBE_S  # this one probes
                    ctx.decision.setdefault("alerts", []).append(
                        {"action": "probe", "provider": model.provider})
                else:
                    key = self.shift_providers[model.provider]
            if key is None:
                keep += 1
            else:
                shifted.append((model, key))
        if not shifted or not keep:
            return
        for model, key in shifted:
            ctx.drop(model, f"shift_traffic while alert {key} lasts")

    def _downgrade(self, ctx: Context) -> None:
        from .budgets import worst_case_cost

        for budget, _, why in self.downgrades:
            if budget.scope in REQUEST_SCOPES:
                applies = budget.value(ctx, NO_STEP) is not None
            else:
                applies = any(budget.value(ctx, Step(m)) is not None for m in ctx.candidates)
            if applies:
                ctx.candidates = sorted(ctx.candidates, key=lambda m: worst_case_cost(ctx, m))
                ctx.decision.setdefault("alerts", []).append({"action": "downgrade",
                                                              "budget": why})
                return

    # --- routing budget alerts ----------------------------------------------------------------

    @hookimpl(tryfirst=True)
    def alert(self, alert: Alert) -> None:
        """Route the budgets plugin's ``budget_threshold`` alerts before the sinks see them (a
        plain ``tryfirst`` implementation runs before every other one)."""
        if self.budget_rules and alert.name == "budget_threshold":
            self.enrich(alert)

    def enrich(self, alert: Alert) -> Alert:
        """Give a ``budget_threshold`` alert the ``channel`` of the first budget rule matching
        its budget, and that rule's ``action`` when the threshold is at or over the rule's
        ``above``; changes the alert in place and returns it. Other alerts are returned as they
        are."""
        if alert.name != "budget_threshold":
            return alert
        for rule in self.budget_rules:
            if rule.match is not None and alert.labels.get("match") != rule.match:
                continue
            if alert.channel is None:
                alert.channel = rule.channel
            try:
                threshold = float(alert.labels.get("threshold", "0"))
            except ValueError:
                threshold = 0.0
            if rule.action is not None and alert.action is None \
                    and threshold + 1e-9 >= rule.share:
                alert.action = rule.action
                alert.summary += (f"; action: {rule.action}, the cheapest model is tried first "
                                  f"while spend stays at or over {rule.share:.0%} of the limit")
            alert.details.setdefault("threshold", threshold)
            break
        return alert

    # --- judging: the tick -----------------------------------------------------------------------

    async def tick(self, now: float | None = None) -> None:
        """Evaluate every rule once (the timer calls it every ``tick_s``; tests call it with
        their clock's ``now``): open, keep, repeat and resolve alerts, send a due digest, and
        refresh the actions every replica applies."""
        kernel = self.kernel
        if not self.rules or kernel is None or kernel.store is None:
            return
        async with self._ticking:
            now = self.clock() if now is None else now
            store: Store = kernel.store
            try:
                await self._sync(store)
            except StoreError as exc:
                log.warning("alert_store_unavailable", error=exc.message)
                return
            for tracked, verdict in self._judge(now):
                try:
                    await self._step(store, tracked, verdict, now)
                except StoreError as exc:
                    log.warning("alert_store_unavailable", alert=tracked.key, error=exc.message)
            try:
                if self.digest_rules:
                    await self._digest(store, now)
                if any(rule.action == "downgrade" for rule in self.budget_rules):
                    await self._budgets(store, now)
            except StoreError as exc:
                log.warning("alert_store_unavailable", error=exc.message)
            self._actions()

    async def _sync(self, store: Store) -> None:
        """Read the index of open alerts; forget those resolved elsewhere, adopt those opened
        elsewhere, and take over the ones whose owner is gone."""
        self.index = await _read(store, INDEX)
        for key, tracked in self.tracked.items():
            if tracked.open and key not in self.index:  # resolved by another replica
                await self._close(store, tracked)
        for key, entry in self.index.items():
            tracked = self.tracked.get(key) or self._adopt(key, entry)
            if tracked is None:
                continue
            if not tracked.open or tracked.episode != entry.get("episode"):
                tracked.open, tracked.owner = True, False
                tracked.episode = entry.get("episode")
                tracked.started_at = float(entry.get("started_at") or 0.0)
            tracked.owner = await self._claim(store, tracked)

    async def _claim(self, store: Store, tracked: Tracked) -> bool:
        """Renew this replica's ownership of an open alert, or take it over when its owner's
        lease ran out; False while another replica owns it."""
        key = tracked.key
        async with store.lock(f"alert:{key}:open", ttl_s=MUTEX_TTL_S, wait_s=MUTEX_WAIT_S):
            holder = await store.get(f"alert:{key}:owner")
            if holder is not None and holder.decode() != tracked.token:
                return False
            await store.set(f"alert:{key}:owner", tracked.token.encode(), ttl_s=self.lease_s)
        return True

    async def _release(self, store: Store, tracked: Tracked) -> None:
        """Give up ownership, so another replica may take over at once."""
        key = tracked.key
        async with store.lock(f"alert:{key}:open", ttl_s=MUTEX_TTL_S, wait_s=MUTEX_WAIT_S):
            holder = await store.get(f"alert:{key}:owner")
            if holder is not None and holder.decode() == tracked.token:
                await store.delete(f"alert:{key}:owner")

    def _adopt(self, key: str, entry: dict[str, Any]) -> Tracked | None:
        """The local record of an alert another replica opened, when a rule here makes it."""
        try:
            i = int(entry["rule"])
            dim, name = entry["target"]
        except (KeyError, TypeError, ValueError):
            return None
        if not 0 <= i < len(self.rules):
            return None
        tracked = self._tracked(i, self.rules[i], (dim, name))
        return tracked if tracked.key == key else None

    def _tracked(self, i: int, rule: AlertRule, target: tuple[str, str]) -> Tracked:
        labels = _target_labels(rule, target)
        key = alert_key(rule.kind, labels)
        found = self.tracked.get(key)
        if found is None:
            found = self.tracked[key] = Tracked(i, rule, target, labels, key)
        return found

    def _judge(self, now: float) -> list[tuple[Tracked, str | None]]:
        """Every alert's verdict now: ``above``, ``below``, ``hold`` (at the bound) or None
        (too few requests to judge by)."""
        out: list[tuple[Tracked, str | None]] = []
        for i, rule, target in self.series_rules:
            if target is not None:
                targets = [target]
            else:
                dim = "first" if rule.kind == "fallback_rate" else "model"
                targets = [t for t in self.series if t[0] == dim]
            for t in targets:
                tracked = self._tracked(i, rule, t)
                series = self.series.get(t)
                totals = series.totals(now, rule.window_s) if series is not None else Totals()
                out.append((tracked, self._verdict(rule, totals, tracked)))
        for i, rule in self.circuit_rules:
            providers = [rule.match] if rule.match is not None else list(self.circuits)
            for provider in providers:
                tracked = self._tracked(i, rule, ("provider", provider))
                circuit = self.circuits.get(provider) or Circuit()
                tracked.details = {"failures": circuit.failures,
                                   "after_failures": rule.after_failures,
                                   "last_error": circuit.last_error}
                out.append((tracked, "above" if circuit.failures >= rule.after_failures
                            else "below"))
        judged = {id(t) for t, _ in out}
        for tracked in self.tracked.values():  # open elsewhere, nothing counted here
            if tracked.open and id(tracked) not in judged:
                out.append((tracked, None))
        return out

    @staticmethod
    def _verdict(rule: AlertRule, totals: Totals, tracked: Tracked) -> str | None:
        n = totals.requests
        details: dict[str, Any] = {"requests": n, "window_s": rule.window_s}
        if rule.kind == "latency_p95":
            p95 = totals.p95_ms()
            details.update(p95_ms=round(p95, 1) if p95 is not None else None,
                           above_ms=rule.above_ms)
            value, bound = p95, rule.above_ms
        else:
            part = totals.errors if rule.kind == "error_rate" else totals.fallbacks
            value = part / n if n else None
            details.update({"rate": round(value, 4) if value is not None else None,
                            "above": rule.above,
                            "errors" if rule.kind == "error_rate" else "fallbacks": part})
            bound = rule.above
        tracked.details = details
        if value is None or n < rule.min_requests:
            return None
        if value > bound:
            return "above"
        return "below" if value < bound else "hold"

    async def _step(self, store: Store, tracked: Tracked, verdict: str | None,
                    now: float) -> None:
        """Move one alert on: open it, keep it (repeats, a mute that ended), or resolve it."""
        rule = tracked.rule
        if verdict == "above":
            tracked.quiet_since = None
            if tracked.since is None:
                tracked.since = now
        elif verdict is None:
            if tracked.open and tracked.quiet_since is None:
                tracked.quiet_since = now
            if not tracked.open:
                tracked.since = None
        else:
            tracked.quiet_since = None
            if verdict == "below" or not tracked.open:
                tracked.since = None
        if not tracked.open:
            if verdict == "above" and now - tracked.since >= rule.for_s:
                await self._open(store, tracked, now)
            return
        if not tracked.owner:
            return
        if verdict == "below":
            await self._resolve(store, tracked, now, "cleared")
        elif verdict is None and tracked.quiet_since is not None \
                and now - tracked.quiet_since >= max(rule.for_s, rule.window_s):
            await self._resolve(store, tracked, now, "quiet")
        else:
            await self._keep(store, tracked, now)

    async def _open(self, store: Store, tracked: Tracked, now: float) -> None:
        key = tracked.key
        async with store.lock(f"alert:{key}:open", ttl_s=MUTEX_TTL_S, wait_s=MUTEX_WAIT_S):
            index = await _read(store, INDEX)
            entry = index.get(key)
            if entry is not None:  # another replica opened it first
                self.index[key] = entry
                tracked.open, tracked.owner = True, False
                tracked.episode = entry.get("episode")
                tracked.started_at = float(entry.get("started_at") or now)
                return
            state = await _read(store, f"alert:{key}")
            muted = float(state.get("muted_until") or 0.0) > now
            tracked.episode, tracked.started_at = uuid.uuid4().hex, now
            alert = self._alert(tracked, resolved=False)
            state.update(open=True, episode=tracked.episode, started_at=now, resolved_at=None,
                         acked_by=None, acked_at=None, delivered=not muted,
                         last_sent=now if not muted else None, refs={},
                         alert=_public(alert))
            await _write(store, f"alert:{key}", state, None)
            entry = {"name": alert.name, "labels": alert.labels, "action": alert.action,
                     "channel": alert.channel, "episode": tracked.episode, "started_at": now,
                     "rule": tracked.index, "target": list(tracked.target)}
            await self._change_index(store, lambda idx: idx.__setitem__(key, entry))
            self.index[key] = entry
            await store.set(f"alert:{key}:owner", tracked.token.encode(), ttl_s=self.lease_s)
            tracked.open = tracked.owner = True
        log.info("alert_opened", alert=key, muted=muted)
        if not muted:
            await self.kernel.alert(alert)

    async def _keep(self, store: Store, tracked: Tracked, now: float) -> None:
        """An open alert this replica owns still lasts: deliver it once a mute has ended, or
        again every ``repeat_minutes`` until someone acknowledges it."""
        key = tracked.key
        state = await _read(store, f"alert:{key}")
        if float(state.get("muted_until") or 0.0) > now:
            return
        due = not state.get("delivered")
        repeat = tracked.rule.repeat_minutes * 60.0
        if not due and not (repeat and not state.get("acked_by")
                            and now - float(state.get("last_sent") or now) >= repeat):
            return
        async with store.lock(f"alert:{key}:open", ttl_s=MUTEX_TTL_S, wait_s=MUTEX_WAIT_S):
            state = await _read(store, f"alert:{key}")
            if not state.get("open") or state.get("episode") != tracked.episode:
                return
            state.update(delivered=True, last_sent=now)
            await _write(store, f"alert:{key}", state, None)
        alert = self._alert(tracked, resolved=False)
        if not due:
            alert.details["repeat"] = True
        await self.kernel.alert(alert)

    async def _resolve(self, store: Store, tracked: Tracked, now: float, why: str) -> None:
        key = tracked.key
        deliver = False
        async with store.lock(f"alert:{key}:open", ttl_s=MUTEX_TTL_S, wait_s=MUTEX_WAIT_S):
            state = await _read(store, f"alert:{key}")
            if state.get("open") and state.get("episode") == tracked.episode:
                deliver = bool(state.get("delivered"))
                state.update(open=False, resolved_at=now)
                await _write(store, f"alert:{key}", state, self._ttl(state))
            episode = tracked.episode

            def drop(index: dict) -> None:
                if (index.get(key) or {}).get("episode") == episode:
                    del index[key]

            await self._change_index(store, drop)
            self.index.pop(key, None)
        tracked.details["resolved_because"] = why
        alert = self._alert(tracked, resolved=True)
        await self._close(store, tracked)
        log.info("alert_resolved", alert=key, because=why)
        if deliver:
            await self.kernel.alert(alert)

    async def _close(self, store: Store, tracked: Tracked) -> None:
        """Forget locally that an alert is open; the condition must hold ``for_minutes`` anew
        before it opens again."""
        if tracked.owner:
            await self._release(store, tracked)
        tracked.open = tracked.owner = False
        tracked.episode = None
        tracked.since = tracked.quiet_since = None

    async def _change_index(self, store: Store, change: Callable[[dict], Any]) -> None:
        async with store.lock(INDEX, ttl_s=MUTEX_TTL_S, wait_s=MUTEX_WAIT_S):
            index = await _read(store, INDEX)
            change(index)
            await _write(store, INDEX, index, None)

    def _alert(self, tracked: Tracked, *, resolved: bool) -> Alert:
        rule, target = tracked.rule, tracked.target
        details = dict(tracked.details)
        summary = self._summary(rule, target, details, resolved, tracked)
        action = rule.action
        if action is not None:
            summary += "; " + _action_text(action, target, resolved)
        return Alert(rule.kind, rule.severity or DEFAULT_SEVERITY[rule.kind], summary,
                     labels=dict(tracked.labels), resolved=resolved, key=tracked.key,
                     channel=rule.channel, action=action, started_at=tracked.started_at,
                     details=details)

    @staticmethod
    def _summary(rule: AlertRule, target: tuple[str, str], details: dict[str, Any],
                 resolved: bool, tracked: Tracked) -> str:
        what = _what(target)
        n = details.get("requests")
        window = _minutes(rule.window_s)
        if resolved and details.get("resolved_because") == "quiet":
            if rule.kind == "provider_down":
                return f"{what}: resolved, no attempts of it seen by the replica watching it"
            return (f"{rule.kind} of {what}: resolved, too few requests in the last {window} to "
                    f"judge by (fewer than {rule.min_requests})")
        if rule.kind == "latency_p95":
            p95 = details.get("p95_ms")
            figure = f"{p95:.0f} ms" if p95 is not None else "unknown"
            if resolved:
                return (f"p95 latency of {what} is back under {rule.above_ms:g} ms: {figure} "
                        f"over the last {window} ({n} requests)")
            return (f"p95 latency of {what} is {figure}, over {rule.above_ms:g} ms for "
                    f"{_minutes(rule.for_s)} ({n} requests in the last {window}, as one replica "
                    "saw them)")
        if rule.kind in ("error_rate", "fallback_rate"):
            noun = "errors" if rule.kind == "error_rate" else "fallbacks"
            rate = details.get("rate")
            figure = f"{rate:.1%}" if rate is not None else "unknown"
            if resolved:
                return (f"{noun} of {what} are back under {rule.above:.1%}: {figure} over the "
                        f"last {window} ({n} requests)")
            return (f"{noun} of {what} at {figure}, over {rule.above:.1%} for "
                    f"{_minutes(rule.for_s)} ({details.get(noun)} of {n} requests in the last "
                    f"{window}, as one replica saw them)")
        if resolved:
            return f"{what} answers again: its circuit is closed"
        return (f"{what} is down: {details.get('failures')} attempts in a row failed "
                f"({details.get('last_error')}); its circuit is open")

    def _actions(self) -> None:
        """What the open alerts of every replica ask this one to do now."""
        models: dict[str, str] = {}
        providers: dict[str, str] = {}
        routes: dict[str, str] = {}
        for key, entry in self.index.items():
            action, labels = entry.get("action"), entry.get("labels") or {}
            if action == "shift_traffic":
                if "provider" in labels:
                    providers[labels["provider"]] = key
                elif "model" in labels:
                    models[labels["model"]] = key
            elif action == "enable_cache" and "route" in labels:
                routes[labels["route"]] = key
        for provider in providers.keys() - self.shift_providers.keys():
            self.next_probe[provider] = self.clock() + PROBE_S
        self.shift_models, self.shift_providers, self.cache_routes = models, providers, routes

    # --- the digest and the budgets ---------------------------------------------------------------

    async def _digest(self, store: Store, now: float) -> None:
        counts = self.digest_counts
        adds = [WindowAdd(f"alerts:digest:{name}", amount, DAY_S)
                for name, amount in zip(DIGEST_WINDOWS, counts) if amount]
        if adds:
            self.digest_counts = [0.0, 0.0, 0.0]
            try:
                await store.window_add_all(adds)
            except StoreError:
                self.digest_counts = [a + b for a, b in zip(self.digest_counts, counts)]
                raise
        midnight = math.floor(now / DAY_S) * DAY_S
        day = time.strftime("%Y-%m-%d", time.gmtime(midnight))
        for i, rule in self.digest_rules:
            hours, minutes = (int(part) for part in rule.at.split(":"))
            due = midnight + hours * 3600 + minutes * 60
            if not due <= now < due + DIGEST_LATE_S or self.digest_sent.get(i) == day:
                continue
            first = await store.try_lock(f"alert:digest:{day}:{i}", uuid.uuid4().hex, 2 * DAY_S)
            self.digest_sent[i] = day
            if not first:
                continue  # another replica sent it
            muted = await _read(store, f"alert:{alert_key('digest', {})}")
            if float(muted.get("muted_until") or 0.0) > now:
                continue
            requests, errors, spend = [await store.window_total(f"alerts:digest:{name}",
                                                                window_s=DAY_S)
                                       for name in DIGEST_WINDOWS]
            p95 = self.day.totals(now, DAY_S).p95_ms() if self.day is not None else None
            details = {"day": day, "requests": int(requests), "errors": int(errors),
                       "spend_usd": round(spend, 6),
                       "p95_ms": round(p95, 1) if p95 is not None else None,
                       "window_s": DAY_S}
            share = f" ({errors / requests:.1%})" if requests else ""
            latency = f"{p95:.0f} ms" if p95 is not None else "none"
            await self.kernel.alert(Alert(
                "digest", rule.severity or "info",
                f"Last 24 h: {int(requests)} requests, {int(errors)} server errors{share}, "
                f"${spend:.4f} spent, p95 latency {latency} (as one replica saw it)",
                labels={"day": day}, channel=rule.channel, started_at=now, details=details))

    async def _budgets(self, store: Store, now: float) -> None:
        """Which budgets call for ``downgrade`` now: spend at or over a budget rule's share."""
        from .budgets import ledger_key, window_bounds
        from .scopes import GLOBAL

        plugin = self.kernel.plugins.get("budgets")
        active: list[tuple[Any, str, str]] = []
        for budget in getattr(plugin, "rules", None) or ():
            if budget.scope != "global" and budget.match is None:
                continue  # one ledger per value: no single figure to watch
            for rule in self.budget_rules:
                if rule.action != "downgrade" or (rule.match is not None
                                                  and rule.match != budget.match):
                    continue
                value = budget.match or GLOBAL
                window, _ = window_bounds(budget.window, now)
                spent = await store.ledger_total(ledger_key(budget, value, window))
                if budget.limit_usd > 0 and spent / budget.limit_usd + 1e-9 >= rule.share:
                    active.append((budget, value, f"{budget.window} budget of "
                                   f"{budget.label(value)}"))
                break
        self.downgrades = active

    # --- acknowledge, mute, remember (for a chat sink's buttons) -------------------------------

    async def state(self, key: str) -> dict[str, Any] | None:
        """The stored state of the alert ``key`` (open, started_at, acked_by, muted_until,
        refs...), or None when the store knows nothing of it."""
        found = await _read(self.kernel.store, f"alert:{key}")
        return found or None

    async def acknowledge(self, key: str, by: str) -> bool:
        """Mark the open alert ``key`` acknowledged by ``by``: it is not delivered again while
        it lasts, and still resolves. False when no such alert is open."""
        return await self._update(key, lambda state: state.update(
            acked_by=by, acked_at=self.clock()) if state.get("open") else False)

    async def mute(self, key: str, until: float) -> None:
        """Deliver nothing new for ``key`` until ``until`` (epoch seconds), whether it is open
        now or opens later; ``until`` in the past unmutes."""
        await self._update(key, lambda state: state.update(muted_until=until))

    async def remember(self, key: str, sink: str, ref: Any) -> None:
        """Keep what ``sink`` needs to update its post of the alert in place (a message id),
        beside the alert's state; read back as ``state(key)["refs"][sink]``."""
        await self._update(key, lambda state: state.setdefault("refs", {}).__setitem__(sink, ref))

    async def _update(self, key: str, change: Callable[[dict], Any]) -> bool:
        store = self.kernel.store
        async with store.lock(f"alert:{key}:open", ttl_s=MUTEX_TTL_S, wait_s=MUTEX_WAIT_S):
            state = await _read(store, f"alert:{key}")
            if change(state) is False:
                return False
            await _write(store, f"alert:{key}", state, self._ttl(state))
        return True

    def _ttl(self, state: dict[str, Any]) -> float | None:
        """How long to keep an alert's state: while open, for good; then a week, or until its
        mute ends when that is later."""
        if state.get("open"):
            return None
        return STATE_TTL_S + max(float(state.get("muted_until") or 0.0) - self.clock(), 0.0)


def _action_text(action: str, target: tuple[str, str], resolved: bool) -> str:
    what = _what(target)
    if action == "shift_traffic":
        if resolved:
            return f"shift_traffic undone: {what} takes requests again"
        return (f"action: shift_traffic, requests go to other candidates than {what} while "
                "this lasts")
    if action == "enable_cache":
        if resolved:
            return f"enable_cache undone for {what}"
        return f"action: enable_cache, {what} answers repeated requests from the cache"
    return f"action: {action}" + (" undone" if resolved else "")


def _public(alert: Alert) -> dict[str, Any]:
    return {"name": alert.name, "severity": alert.severity, "summary": alert.summary,
            "labels": alert.labels, "key": alert.key, "channel": alert.channel,
            "action": alert.action, "details": alert.details}


async def _read(store: Store, key: str) -> dict[str, Any]:
    raw = await store.get(key)
    if not raw:
        return {}
    try:
        found = orjson.loads(raw)
    except orjson.JSONDecodeError:
        log.error("alert_state_unreadable", key=key)
        return {}
    return found if isinstance(found, dict) else {}


async def _write(store: Store, key: str, value: dict[str, Any], ttl_s: float | None) -> None:
    await store.set(key, orjson.dumps(value), ttl_s=ttl_s)
