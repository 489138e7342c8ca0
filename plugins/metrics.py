"""Prometheus metrics on ``GET /metrics``: requests, latency, tokens, cost, attempts, refusals.

The ``metrics`` plugin counts every finished request from the ``record`` hook into a
``CollectorRegistry`` of its own (never the process-wide default one, so several gateways in one
process keep apart) and serves it in the Prometheus text format, or OpenMetrics when the scraper
asks for it (``prometheus_client`` writes the format and keeps the histograms).

The endpoint asks for no API key, even when ``server.api_keys`` are set: scrapers seldom send one,
and the metrics hold no prompt, answer, key or request id, only names from the config. Where the
gateway listens beyond loopback, keep ``/metrics`` off the public side (a proxy rule or a network
policy), or turn the plugin off with ``plugins.disable = ["metrics"]``, which also removes the
route. ``[metrics] enabled = false`` stops the counting and makes the route answer 404.

The metrics (label values are route, model and provider names from the config, error kinds (the
kernel's error codes, or an unexpected exception's class name) and statuses; never a request id
or user text):

``turnout_requests_total`` (counter; route, model, provider, status, error_kind)
    Client requests that ended, by outcome. ``status`` is ``ok``, ``error`` or ``cancelled``;
    ``error_kind`` the error's code (``""`` when none). ``model`` and ``provider`` are the last
    attempt's (the one that answered, or the last tried); for an answer a sub-request gave, the
    answer's; ``""`` when no attempt was made (a request refused before it had one).
``turnout_request_duration_seconds`` (histogram; route, model, provider, status)
    Seconds from acceptance to the end of the answer (the last chunk, for streams). Buckets:
    ``[metrics] buckets``.
``turnout_time_to_first_token_seconds`` (histogram; route, model, provider)
    Streams only: seconds from acceptance to the first chunk. Buckets: ``[metrics] buckets``.
``turnout_gateway_overhead_seconds`` (histogram; route, status)
    The gateway's own time per request: total minus the time spent waiting on providers (their
    answers, backoffs between attempts, sub-requests). Fine buckets, 0.5 ms to 100 ms.
``turnout_tokens_total`` (counter; model, provider, direction)
    Tokens of every attempt, ``direction`` ``input`` or ``output``, as the request record counts
    them (answers from a cache included; their cost is zero).
``turnout_cost_usd_total`` (counter; model, provider, route)
    US dollars spent, per attempt (failed and cancelled attempts' billed tokens included).
``turnout_attempts_total`` (counter; model, provider, status)
    Calls made to models, by the attempt's status as the kernel records it: ``ok``, ``error``,
    ``rejected`` (failed validation), ``cancelled``...
``turnout_fallbacks_total`` (counter; route)
    Attempts beyond a request's first: every retry or move to another model of the plan.
``turnout_cache_hits_total`` (counter; route, model)
    Client requests answered from a cache (``completion.cached``). Misses cannot be known here
    (whether any cache was asked is the cache plugin's business): the hit ratio is this over
    ``turnout_requests_total``.
``turnout_rate_limit_refusals_total`` (counter; route)
    Client requests the gateway's own rate limits refused (error ``rate_limited`` raised by a
    plugin, not an upstream's 429).
``turnout_budget_refusals_total`` (counter; route)
    Client requests refused because a budget would be exceeded (error ``budget_exceeded``).
``turnout_budget_remaining_usd`` (gauge; scope, match, window)
    Read at scrape time from the plugin named ``budgets``, when one is loaded and has ``async def
    remaining()`` (a list of dicts with scope, match, window, limit_usd and spent_usd): the limit
    minus what was spent. Absent without such a plugin.
``turnout_auth_failures_total`` (counter)
    Requests refused for a missing or wrong API key (``kernel.counters["auth_failed"]``), read at
    scrape time.

Sub-requests (those a multi-call strategy makes, ``ctx.parent`` set) are not client requests:
they are left out of the requests, duration, first-token, overhead, cache-hit and refusal metrics,
which count what clients asked for once each. Their attempts, tokens, cost and fallbacks are
counted, each context counting its own attempts, so nothing is counted twice.
"""

from __future__ import annotations

from typing import Any, Iterator

import structlog
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import choose_encoder
from pydantic import BaseModel, ConfigDict, Field, field_validator
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response

from turnout.kernel.errors import ProviderError
from turnout.kernel.hookspecs import hookimpl
from turnout.kernel.manager import resolve
from turnout.kernel.types import Context

log = structlog.get_logger("turnout.metrics")

PATH = "/metrics"
"""Where the metrics are served. Fixed: HTTP routes are registered while plugins load, before
any settings are read."""

BUDGETS_PLUGIN = "budgets"
"""The plugin whose ``remaining()`` the budget gauge reads at scrape time."""

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0)
"""Default buckets (seconds) of the request duration and time-to-first-token histograms: model
calls take from tens of milliseconds to minutes."""

OVERHEAD_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1)
"""Buckets (seconds) of the gateway overhead histogram: the gateway's own time is sub-millisecond
to a few milliseconds when all is well."""

REFUSALS = {"rate_limited": 0, "budget_exceeded": 1}
"""Error kinds that are the gateway refusing a request, and which refusal counter each feeds."""


class MetricsSettings(BaseModel):
    """Prometheus metrics served on GET /metrics, the ``[metrics]`` table."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = Field(default=True, description="Count requests and serve them on GET "
                          "/metrics (no API key asked; keep it off the public side). False: "
                          "nothing is counted and /metrics answers 404; plugins.disable = "
                          "[\"metrics\"] removes the route too.")
    buckets: list[float] = Field(
        default=list(LATENCY_BUCKETS), min_length=1, description="Upper bounds in seconds of "
        "the request duration and time-to-first-token histogram buckets, increasing (+Inf is "
        "added).")

    @field_validator("buckets")
    @classmethod
    def _increasing(cls, value: list[float]) -> list[float]:
        if value[0] <= 0 or any(b <= a for a, b in zip(value, value[1:])):
            raise ValueError("buckets must be positive and strictly increasing")
        return value


class _Instruments:
    """The metrics of one registry, and their labelled children cached by label values."""

    def __init__(self, buckets: tuple[float, ...], scrape_time: Any) -> None:
        self.buckets = buckets
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter("turnout_requests", "Client requests that ended, by outcome.",
                                ("route", "model", "provider", "status", "error_kind"), registry=r)
        self.duration = Histogram("turnout_request_duration_seconds",
                                  "Seconds from acceptance to the end of the answer.",
                                  ("route", "model", "provider", "status"), buckets=buckets,
                                  registry=r)
        self.first_token = Histogram("turnout_time_to_first_token_seconds",
                                     "Streams: seconds from acceptance to the first chunk.",
                                     ("route", "model", "provider"), buckets=buckets, registry=r)
        self.overhead = Histogram("turnout_gateway_overhead_seconds",
                                  "The gateway's own seconds per request: total minus the time "
                                  "waiting on providers.", ("route", "status"),
                                  buckets=OVERHEAD_BUCKETS, registry=r)
        self.tokens = Counter("turnout_tokens", "Tokens of every attempt, input or output.",
                              ("model", "provider", "direction"), registry=r)
        self.cost = Counter("turnout_cost_usd", "US dollars spent on attempts.",
                            ("model", "provider", "route"), registry=r)
        self.attempts = Counter("turnout_attempts", "Calls made to models, by attempt status.",
                                ("model", "provider", "status"), registry=r)
        self.fallbacks = Counter("turnout_fallbacks",
                                 "Attempts beyond a request's first (retries and fallbacks).",
                                 ("route",), registry=r)
        self.cache_hits = Counter("turnout_cache_hits",
                                  "Client requests answered from a cache.", ("route", "model"),
                                  registry=r)
        self.refusals = (
            Counter("turnout_rate_limit_refusals",
                    "Client requests refused by the gateway's rate limits.", ("route",),
                    registry=r),
            Counter("turnout_budget_refusals",
                    "Client requests refused because a budget would be exceeded.", ("route",),
                    registry=r),
        )
        r.register(scrape_time)
        # Labelled children by label values: labels() validates and locks on every call.
        self.request_children: dict[tuple, tuple] = {}
        self.first_token_children: dict[tuple, Any] = {}
        self.attempt_children: dict[tuple, tuple] = {}
        self.route_children: dict[tuple, Any] = {}

    def for_request(self, key: tuple[str, str, str, str, str]) -> tuple:
        """(requests counter, duration histogram, overhead histogram) for these labels."""
        found = self.request_children.get(key)
        if found is None:
            route, model, provider, status, _ = key
            found = (self.requests.labels(*key),
                     self.duration.labels(route, model, provider, status),
                     self.overhead.labels(route, status))
            self.request_children[key] = found
        return found

    def for_attempt(self, key: tuple[str, str, str, str]) -> tuple:
        """(attempts, input tokens, output tokens, cost) for (route, model, provider, status)."""
        found = self.attempt_children.get(key)
        if found is None:
            route, model, provider, status = key
            found = (self.attempts.labels(model, provider, status),
                     self.tokens.labels(model, provider, "input"),
                     self.tokens.labels(model, provider, "output"),
                     self.cost.labels(model, provider, route))
            self.attempt_children[key] = found
        return found

    def for_route(self, metric: Any, *labels: str) -> Any:
        """The child of a counter with few labels (fallbacks, cache hits, refusals)."""
        key = (id(metric), *labels)
        found = self.route_children.get(key)
        if found is None:
            found = self.route_children[key] = metric.labels(*labels)
        return found


class _ScrapeTime:
    """A collector for values read when scraped: authentication failures and budgets left."""

    def __init__(self) -> None:
        self.kernel: Any = None
        self.budgets: list[dict] = []
        """What the budgets plugin said at the start of the current scrape."""

    def describe(self) -> list:
        return []

    def collect(self) -> Iterator[Any]:
        failed = self.kernel.counters["auth_failed"] if self.kernel is not None else 0
        yield CounterMetricFamily("turnout_auth_failures",
                                  "Requests refused for a missing or wrong API key.", value=failed)
        if not self.budgets:
            return
        gauge = GaugeMetricFamily("turnout_budget_remaining_usd",
                                  "US dollars left in each budget window (limit minus spent).",
                                  labels=("scope", "match", "window"))
        for budget in self.budgets:
            gauge.add_metric(
                (str(budget.get("scope") or ""), str(budget.get("match") or ""),
                 str(budget.get("window") or "")),
                float(budget.get("limit_usd") or 0.0) - float(budget.get("spent_usd") or 0.0))
        yield gauge


class Metrics:
    """The ``metrics`` plugin: counts finished requests and serves them on ``GET /metrics``."""

    name = "metrics"
    Settings = MetricsSettings

    def __init__(self) -> None:
        self.settings = MetricsSettings()
        self.scrape_time = _ScrapeTime()
        self.instruments = _Instruments(LATENCY_BUCKETS, self.scrape_time)
        self.kernel: Any = None

    @property
    def registry(self) -> CollectorRegistry:
        """This plugin's registry: what ``/metrics`` serves."""
        return self.instruments.registry

    @hookimpl
    def register_http_routes(self, register) -> None:
        """Serve the metrics on ``GET /metrics``."""
        register(PATH, self.endpoint)

    @hookimpl
    def startup(self, kernel: Any) -> None:
        """Read ``[metrics]``; rebuild the histograms when the buckets differ from the defaults."""
        self.kernel = self.scrape_time.kernel = kernel
        settings: MetricsSettings | None = kernel.plugin_settings(self)
        self.settings = settings or MetricsSettings()
        buckets = tuple(self.settings.buckets)
        if buckets != self.instruments.buckets:
            self.instruments = _Instruments(buckets, self.scrape_time)

    @hookimpl
    def record(self, ctx: Context) -> None:
        """Count the finished request: its attempts always, the request itself when it is a
        client's (no parent)."""
        if not self.settings.enabled:
            return
        m = self.instruments
        route = ctx.route or ""
        attempts = ctx.attempts
        for attempt in attempts:
            calls, tokens_in, tokens_out, cost = m.for_attempt(
                (route, attempt.model, attempt.provider, attempt.status))
            calls.inc()
            usage = attempt.usage
            if usage.input_tokens:
                tokens_in.inc(usage.input_tokens)
            if usage.output_tokens:
                tokens_out.inc(usage.output_tokens)
            if attempt.cost_usd:
                cost.inc(attempt.cost_usd)
        if len(attempts) > 1:
            m.for_route(m.fallbacks, route).inc(len(attempts) - 1)
        if ctx.parent is not None:
            return
        completion = ctx.completion
        if attempts:
            last = ctx.answering
            model, provider = last.model, last.provider
        elif completion is not None:  # answered by a sub-request
            model, provider = completion.model, completion.provider
        else:
            model = provider = ""
        status = ctx.status
        kind = ctx.error_kind or ""
        requests, duration, overhead = m.for_request((route, model, provider, status, kind))
        requests.inc()
        duration.observe(ctx.latency_s)
        overhead.observe(ctx.overhead_s)
        if ctx.first_token_s is not None:
            key = (route, model, provider)
            first = m.first_token_children.get(key)
            if first is None:
                first = m.first_token_children[key] = m.first_token.labels(*key)
            first.observe(ctx.first_token_s)
        if completion is not None and completion.cached:
            m.for_route(m.cache_hits, route, model).inc()
        if kind in REFUSALS and not isinstance(ctx.error, ProviderError):
            m.for_route(m.refusals[REFUSALS[kind]], route).inc()

    async def endpoint(self, request: Request) -> Response:
        """The metrics in the format the scraper accepts (Prometheus text unless it asks for
        OpenMetrics); 404 when ``[metrics] enabled`` is false."""
        if not self.settings.enabled:
            return PlainTextResponse("metrics are off ([metrics] enabled = false)\n",
                                     status_code=404)
        self.scrape_time.budgets = await self._budgets()
        encoder, content_type = choose_encoder(request.headers.get("accept", ""))
        body = encoder(self.instruments.registry)
        return Response(body, headers={"content-type": content_type})

    async def _budgets(self) -> list[dict]:
        """What the ``budgets`` plugin says is left, or nothing without one (or when it fails:
        a scrape never fails for it)."""
        plugin = self.kernel.plugins.get(BUDGETS_PLUGIN) if self.kernel is not None else None
        remaining = getattr(plugin, "remaining", None)
        if not callable(remaining):
            return []
        try:
            found = await resolve(remaining())
            return [b for b in found if isinstance(b, dict)]
        except Exception as exc:  # noqa: BLE001 - budgets missing from one scrape, not a failed scrape
            log.warning("budgets_unreadable", error_type=type(exc).__name__, error=str(exc))
            return []
