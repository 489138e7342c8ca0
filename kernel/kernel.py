"""The kernel: runs one request through classify, route, call, validate, escalate and record.

It owns no policy. Which model answers, how failures fall back, what is cached or recorded: all of
that is plugins. The kernel resolves what was asked for, fires the route phases, hands the plan to
the strategy the plan names, runs the attempts the strategy asks for (traced, counted and capped),
and makes sure every request is recorded exactly once, whatever happens to the client. Frontends
use :meth:`Kernel.ask` and :meth:`Kernel.ask_stream`.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, AsyncIterator, Awaitable, Callable, Mapping

import anyio
import structlog
from opentelemetry import trace
from pydantic import BaseModel, ValidationError

from . import embeddings, tokens
from .config import Config, Route
from .embeddings import EmbeddingAnswer, EmbeddingRequest
from .errors import (
    AttemptsExhausted,
    BadRequest,
    ConfigError,
    NoRoute,
    PluginError,
    ProviderError,
    ProviderMissing,
    ProviderTimeout,
    StreamBroken,
    TurnoutError,
    UnknownModel,
    ValidationFailed,
    clip,
)
from .manager import PluginManager, resolve
from .observability import scrub
from .provider import Provider, ProviderSettings
from .registry import ModelRegistry, Registry, Validator
from .store import Store
from .strategy import AttemptFailed, Run, Strategy
from .types import (
    FEEDBACK_COMMENT_MAX_CHARS,
    FEEDBACK_ID_MAX_CHARS,
    FEEDBACK_LABEL_MAX_CHARS,
    Alert,
    Answer,
    Attempt,
    Caller,
    ChatRequest,
    Chunk,
    Completion,
    Context,
    Escalation,
    Feedback,
    Hold,
    ModelProfile,
    Plan,
    Ranking,
    Selection,
    Step,
    Usage,
    Verdict,
)
from .wiring import Wiring, settings_model, wire

log = structlog.get_logger("turnout.kernel")
NO_SPAN = nullcontext(trace.INVALID_SPAN)
"""Stands in for a span when tracing is off: reusable, costs nothing."""

BUILTINS = {
    "classify": "turnout.plugins.classify",
    "llm_classifier": "turnout.plugins.llm_classifier:LLMClassifier",
    "rules_router": "turnout.plugins.rules_router:RulesRouter",
    "routers": "turnout.plugins.routers",
    "learned_router": "turnout.plugins.learned_router:LearnedRouter",
    "health": "turnout.plugins.health:Health",
    "experiments": "turnout.plugins.experiments:Experiments",
    "spend_report": "turnout.plugins.spend_report:SpendReport",
    "estimate": "turnout.plugins.estimate:Estimate",
    "model_bench": "turnout.plugins.model_bench:ModelBench",
    "fit": "turnout.plugins.fit",
    "fallback": "turnout.plugins.fallback:Fallback",
    "cascade": "turnout.plugins.cascade",
    "race": "turnout.plugins.race",
    "ensemble": "turnout.plugins.ensemble",
    "critic": "turnout.plugins.critic",
    "chain": "turnout.plugins.chain",
    "conversation": "turnout.plugins.conversation:Conversation",
    "json_validator": "turnout.plugins.json_validator",
    "validators": "turnout.plugins.validators:Validators",
    "budgets": "turnout.plugins.budgets:Budgets",
    "rate_limits": "turnout.plugins.rate_limits:RateLimits",
    "cache": "turnout.plugins.cache:ResponseCache",
    "record": "turnout.plugins.sqlite_recorder:SQLiteRecorder",
    "request_log": "turnout.plugins.request_log",
    "log_alerts": "turnout.plugins.log_alerts",
    "alerts": "turnout.plugins.alert_rules:AlertRules",
    "webhook_alerts": "turnout.plugins.webhook_alerts:WebhookAlerts",
    "telemetry": "turnout.plugins.telemetry:Telemetry",
    "metrics": "turnout.plugins.metrics:Metrics",
    "admin": "turnout.plugins.admin:Admin",
    "slack": "turnout.bots.slack.plugin:SlackBot",
    "providers": "turnout.adapters.providers",
    "simulation": "turnout.adapters.simulated.plugin:Simulation",
    "stores": "turnout.adapters.stores",
}
"""Built-in plugins, loaded through the same path as third-party ones."""

AUTO = "auto"
"""The model name that lets the routers choose."""

ESTIMATED_ANSWER_TOKENS = 256
"""Answer length assumed for the decision's cost estimate when the request sets no max_tokens."""

DEFAULT_ROUTE = Route(models=["(a model asked for by name)"])
"""The route settings of a request that names a model, or of a route a router made up."""


@dataclass(slots=True, frozen=True)
class ProviderKind:
    """A registered provider kind: how to build one, and the model of its settings."""

    factory: Callable[[str, Any], Provider]
    settings: type[BaseModel]


@dataclass(slots=True, frozen=True)
class Router:
    """A registered router: ``order(ctx, candidates, settings)`` gives a Ranking or None;
    ``settings`` is the pydantic model of its table in ``[routes.NAME] router``, if any."""

    order: Callable[..., Any]
    settings: type[BaseModel] | None = None


@dataclass(slots=True, frozen=True)
class HttpRoute:
    """An HTTP endpoint a plugin serves beside the API."""

    endpoint: Callable[..., Any]
    methods: tuple[str, ...]


@dataclass(slots=True, frozen=True)
class Command:
    """A ``turnout`` sub-command a plugin adds."""

    run: Callable[[Any], int]
    help: str
    arguments: Callable[[Any], None] | None


@dataclass(slots=True)
class Started:
    """A stream whose first chunk has arrived, and where it comes from: an attempt of this
    request (``attempt`` set), a sub-request's stream (``rest`` is its AnswerStream), or a
    whole answer replayed as chunks (``completion`` set)."""

    first: Chunk
    rest: Any
    step: Step | None = None
    attempt: Attempt | None = None
    completion: Completion | None = None


def _who(caller: Caller | None, headers: Mapping[str, str] | None, client: str | None,
         request_id: str | None) -> dict[str, Any]:
    """The context fields of a request from a front door (:meth:`Kernel.ask`, :meth:`Kernel.embed`):
    who asked, what they sent, and what is recorded as the client (default: the caller's key);
    only the fields given, so the context's defaults hold for the rest."""
    fields: dict[str, Any] = {"client": client if client is not None
                              else caller.key if caller is not None else None}
    if caller is not None:
        fields["caller"] = caller
    if headers:
        fields["headers"] = headers
    if request_id is not None:
        fields["request_id"] = request_id
    return fields


class Kernel:
    """One gateway process: config, plugins, registries, and the request pipeline."""

    def __init__(self, config: Config, *, plugins: PluginManager | None = None,
                 builtins: dict[str, str] = BUILTINS) -> None:
        self.config = config
        self.models = ModelRegistry.from_config(config)
        self.plugins = plugins or PluginManager()
        self._builtins = builtins
        self.provider_kinds: Registry[ProviderKind] = Registry(
            "provider kind", lambda factory, settings=None: ProviderKind(
                factory, settings or settings_model(factory) or ProviderSettings))
        self.strategies: Registry[Strategy] = Registry("strategy")
        self.validators: Registry[Validator] = Registry("validator", Validator.of)
        self.routers: Registry[Router] = Registry(
            "router", lambda order, settings=None: Router(order, settings))
        self.store_backends: Registry[Callable[..., Store]] = Registry("store backend")
        self.http_routes: Registry[HttpRoute] = Registry(
            "HTTP route", lambda endpoint, methods=("GET",): HttpRoute(endpoint, tuple(methods)))
        self.commands: Registry[Command] = Registry(
            "command", lambda run, help="", arguments=None: Command(run, help, arguments))
        self.wiring = Wiring()
        self.providers: dict[str, Provider] = {}
        """Configured providers by name, built at start."""
        self.store: Store | None = None
        """The shared state store, built at start from ``[state]``."""
        self.counters: Counter[str] = Counter()
        """Events worth counting that no request record holds (refused authentication...), for
        logs and metrics to read."""
        self.loaded = False
        self.started = False
        self.tracing = False
        self.tracer: trace.Tracer = trace.NoOpTracer()
        self._route_validators: dict[str, list[tuple[str, Callable[..., Any]]]] = {}
        self._default_validators: list[tuple[str, Callable[..., Any]]] = []
        self._default_strategy_settings: dict[str, BaseModel] = {}
        self._default_route_settings: dict[str, BaseModel] = {}
        self._deferred: set[asyncio.Task] = set()

    # --- lifecycle -----------------------------------------------------------------------------

    def load_plugins(self) -> None:
        """Load plugins, run their registration hooks, and validate every table they own;
        raises one ConfigError listing every problem, each with its file and line."""
        problems: list = []
        self.plugins.load(builtins=self._builtins, paths=self.config.plugins.load,
                          disable=self.config.plugins.disable, problems=problems)
        hook = self.plugins.hook
        for caller, registry in ((hook.register_providers, self.provider_kinds),
                                 (hook.register_strategies, self.strategies),
                                 (hook.register_validators, self.validators),
                                 (hook.register_routers, self.routers),
                                 (hook.register_stores, self.store_backends),
                                 (hook.register_http_routes, self.http_routes),
                                 (hook.register_commands, self.commands)):
            caller.register(registry.callback)
        self.wiring = wire(self)
        self.config.fail(self.config.problems() + problems + self.wiring.problems)
        for name, route in self.config.routes.items():
            self._route_validators[name] = self._validators_for(route, name)
        self._default_validators = self._validators_for(DEFAULT_ROUTE)
        self.loaded = True

    def _validators_for(self, route: Route,
                        name: str | None = None) -> list[tuple[str, Callable[..., Any]]]:
        """The checks judging ``route``'s answers, each bound to its validated settings: those
        the route lists, or (unset) every validator registered without a settings model."""
        if route.validators is None:
            return [(kind, v.bind(None)) for kind, v in sorted(self.validators.items())
                    if v.settings is None]
        configured = self.wiring.validators.get(name or "")
        if configured is None:  # not wired (the default route): names only, default settings
            configured = [(v, None) for v in route.validators if isinstance(v, str)]
        return [(kind, self.validators[kind].bind(settings)) for kind, settings in configured]

    def plugin_settings(self, plugin: object | str) -> Any:
        """A plugin's validated settings (its ``Settings`` model filled from its table), by
        plugin object or name; None for a plugin that declares no settings."""
        name = plugin if isinstance(plugin, str) else self.plugins.name_of(plugin)
        return self.wiring.plugins.get(name) if name is not None else None

    async def start(self) -> None:
        """Load plugins if none are, run every ``startup`` hook, then build the providers and
        the store; the tokenizer is loaded here, not on the first request."""
        if not self.loaded:
            self.load_plugins()
        await anyio.to_thread.run_sync(tokens.count, "warm up the tokenizer")
        await self.plugins.hook.startup(kernel=self)
        for name, settings in self.wiring.providers.items():
            kind = self.provider_kinds[settings.kind]
            try:
                self.providers[name] = kind.factory(name, settings)
            except TurnoutError:
                raise
            except Exception as exc:
                raise ConfigError(f"providers.{name}: cannot start provider kind "
                                  f"{settings.kind!r} ({self.provider_kinds.owners[settings.kind]}): "
                                  f"{type(exc).__name__}: {exc}") from None
        backend = self.config.state.backend
        self.store = self.store_backends[backend](self.wiring.store)
        await self.store.check()
        # Plugins install a tracer provider at startup (the telemetry plugin does); without one,
        # spans would be no-ops, so the kernel skips creating them at all.
        self.tracing = not isinstance(trace.get_tracer_provider(),
                                      (trace.ProxyTracerProvider, trace.NoOpTracerProvider))
        self.tracer = trace.get_tracer("turnout")  # bound to the provider installed now
        self.started = True
        log.info("kernel_started", plugins=self.plugins.names(), models=len(self.models),
                 routes=sorted(self.config.routes), providers=sorted(self.providers),
                 store=backend)

    async def stop(self) -> None:
        """Run every ``shutdown`` hook, then close the providers and the store; one that fails
        does not stop the others."""
        with anyio.CancelScope(shield=True):
            await self.idle()
            await self.plugins.hook.shutdown(kernel=self)
            await self.idle()
            closing: list[Any] = [*self.providers.values(), self.store]
            for resource in closing:
                if resource is None:
                    continue
                try:
                    await resource.aclose()
                except Exception:  # noqa: BLE001 - closing one must not keep the rest open
                    log.exception("close_failed", resource=type(resource).__name__)
            self.providers.clear()
            self.store = None
        self.started = False

    async def __aenter__(self) -> "Kernel":
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def alert(self, alert: Alert) -> None:
        """Deliver an alert to every ``alert`` plugin; delivery failures are only logged."""
        await self.plugins.hook.alert(alert=alert)

    # --- the frontends' API --------------------------------------------------------------------

    async def ask(self, request: ChatRequest, *, caller: Caller | None = None,
                  headers: Mapping[str, str] | None = None, client: str | None = None,
                  request_id: str | None = None) -> Answer:
        """Answer ``request`` (not streaming) and say what it took: model, route, strategy,
        cost, latency, attempts and the decision record.

        ``caller`` says who asked (budgets and rate limits count by it); ``headers`` is the
        frontend's request metadata, names in lower case, for plugins to read
        (``ctx.headers``); ``client`` is recorded as who asked (default: the caller's key).

        Raises a :class:`~turnout.kernel.errors.TurnoutError`; once the request was accepted the
        error carries ``error.answer``, the same account for the failed request.
        """
        ctx = self._accept(request, caller, headers, client, request_id)
        try:
            await self.complete(ctx)
        except TurnoutError as exc:
            exc.answer = Answer.of(ctx)  # type: ignore[attr-defined]
            raise
        return Answer.of(ctx)

    async def embed(self, request: EmbeddingRequest, *, caller: Caller | None = None,
                    headers: Mapping[str, str] | None = None, client: str | None = None,
                    request_id: str | None = None) -> EmbeddingAnswer:
        """Embed ``request``'s texts with a model that has the ``embeddings`` capability (the
        model asked for, a route's, or for ``auto`` each embedding model in config order),
        falling back to the next on a provider error; admitted, cached and recorded like a chat
        request (see :mod:`turnout.kernel.embeddings`). Arguments as :meth:`ask`.

        Raises a :class:`~turnout.kernel.errors.TurnoutError`: UnknownModel (404) for a name
        nothing carries, BadRequest (400) naming the embedding models when the one asked for does
        not embed; once accepted, the error carries ``error.answer``.
        """
        ctx = embeddings.context(self, request,
                                 **_who(caller, headers, client, request_id))
        try:
            result = await embeddings.run(self, ctx, request)
        except TurnoutError as exc:
            exc.answer = Answer.of(ctx)  # type: ignore[attr-defined]
            raise
        return EmbeddingAnswer(result, Answer.of(ctx))

    async def ask_stream(self, request: ChatRequest, *, caller: Caller | None = None,
                         headers: Mapping[str, str] | None = None, client: str | None = None,
                         request_id: str | None = None) -> AnswerStream:
        """Answer ``request`` as a stream: returns once the first chunk has arrived (fallback
        happens before that), then iterate the chunks; ``stream.answer`` says what it took so
        far. Errors as :meth:`ask`; after the first chunk a failure ends the iteration with
        :class:`~turnout.kernel.errors.StreamBroken`. Close the stream when done with it."""
        ctx = self._accept(request.model_copy(update={"stream": True})
                           if not request.stream else request, caller, headers, client,
                           request_id)
        try:
            return await self.stream(ctx)
        except TurnoutError as exc:
            exc.answer = Answer.of(ctx)  # type: ignore[attr-defined]
            raise

    async def feedback(self, request_id: str, score: float, *, comment: str | None = None,
                       source: str = "api", user: str | None = None) -> Feedback:
        """Record a score of the answer to ``request_id`` (``Answer.request_id``): from -1
        (bad) through 0 (neutral) to 1 (good), with an optional ``comment``; ``source`` says
        where it came from (``api``, ``slack``, ...), ``user`` who judged.

        Fires the ``feedback`` hook (the record plugin keeps it with the request's row) and
        returns what was recorded: the comment scrubbed of secrets and cut to
        ``FEEDBACK_COMMENT_MAX_CHARS``. Frontends call this; they never touch the recorder. A
        request id the record has not seen (yet) is accepted: feedback may come before the
        request's row is written, or be about a sub-request. A plugin that fails to take the
        feedback is logged and does not fail the call.

        Raises :class:`~turnout.kernel.errors.BadRequest` naming the argument (``param``) that is
        missing, of the wrong type or out of range.
        """
        if not isinstance(request_id, str) or not request_id.strip():
            raise BadRequest("request_id must be the id of an answer (its x-request-id, "
                             "e.g. req_...), a non-empty string.", param="request_id")
        if len(request_id) > FEEDBACK_ID_MAX_CHARS:
            raise BadRequest(f"request_id is {len(request_id)} characters; a request id has at "
                             f"most {FEEDBACK_ID_MAX_CHARS} (send the answer's x-request-id).",
                             param="request_id")
        if isinstance(score, bool) or not isinstance(score, (int, float)) \
                or not -1 <= score <= 1:
            raise BadRequest(f"score must be a number from -1 (bad) through 0 (neutral) to 1 "
                             f"(good), not {clip(score)}.", param="score")
        if comment is not None and not isinstance(comment, str):
            raise BadRequest("comment must be a string or null.", param="comment")
        if not isinstance(source, str) or not source or len(source) > FEEDBACK_LABEL_MAX_CHARS:
            raise BadRequest(f"source must say where the score came from (api, slack, ...): a "
                             f"non-empty string of at most {FEEDBACK_LABEL_MAX_CHARS} "
                             "characters.", param="source")
        if user is not None and (not isinstance(user, str) or not user
                                 or len(user) > FEEDBACK_LABEL_MAX_CHARS):
            raise BadRequest(f"user must name who judged: a non-empty string of at most "
                             f"{FEEDBACK_LABEL_MAX_CHARS} characters, or null.", param="user")
        given = Feedback(request_id=request_id, score=float(score), source=source, user=user,
                         comment=scrub(comment, limit=FEEDBACK_COMMENT_MAX_CHARS) if comment
                         else None)
        await self.plugins.hook.feedback(feedback=given)
        return given

    def _accept(self, request: ChatRequest, caller: Caller | None,
                headers: Mapping[str, str] | None, client: str | None,
                request_id: str | None) -> Context:
        unknown = sorted(set(request.model_extra) - self.wiring.passthrough) \
            if request.model_extra else None
        if unknown:
            raise BadRequest(f"Unrecognized request argument supplied: {clip(unknown[0])}. "
                             "(A provider lists the fields it passes through in "
                             "providers.NAME.passthrough_params.)", param=clip(unknown[0]))
        return self.context(request, **_who(caller, headers, client, request_id))

    # --- the pipeline --------------------------------------------------------------------------

    def context(self, request: ChatRequest, **fields: Any) -> Context:
        """A fresh context for ``request``; raises UnknownModel before anything runs."""
        ctx = Context(request=request, **fields)
        self._resolve_model(ctx)
        return ctx

    async def complete(self, ctx: Context) -> Completion:
        """Answer a non-streaming request; the request is recorded whatever happens."""
        try:
            with self._span(ctx):
                await self._prepare(ctx)
                result = await self._run_strategy(ctx)
            if not isinstance(result, Completion):
                raise PluginError(f"strategy {ctx.plan.strategy!r} returned "
                                  f"{type(result).__name__} for a non-streaming request; "
                                  "return a Completion",
                                  plugin=self.strategies.owners.get(ctx.plan.strategy, "?"),
                                  hook="register_strategies")
            ctx.completion = result
            ctx.answered = _attempt_of(ctx, result)
            ctx.status = "ok"
            return result
        except BaseException as exc:
            self._fail(ctx, exc)
            raise
        finally:
            await self._record(ctx)

    async def stream(self, ctx: Context) -> AnswerStream:
        """Answer a streaming request.

        Fallback happens until the first chunk arrives; this coroutine returns only then, so the
        caller can still send a clean error. After it returns, a failure ends the iterator with
        :class:`StreamBroken`, never with a quiet end. The request is recorded exactly once, when
        the iterator ends, fails or is closed.
        """
        try:
            with self._span(ctx):
                await self._prepare(ctx)
                started = await self._started(ctx, await self._run_strategy(ctx))
                source = ctx.state.get("kernel.source")
                ctx.answered = started.attempt or _attempt_of(ctx, started.completion) or \
                    (source.answering if source is not None else None)
        except BaseException as exc:
            self._fail(ctx, exc)
            await self._record(ctx)
            raise
        ctx.first_token_s = time.perf_counter() - ctx.started
        return AnswerStream(self, ctx, started)

    async def explain(self, ctx: Context, *,
                      labels: dict[str, Any] | None = None) -> dict[str, Any]:
        """Classify and route without calling any model; the decision record and labels.

        With ``labels`` the classifiers do not run: the request is routed on these labels as
        given (a request replayed from the record, whose prompt is not kept: ``turnout
        estimate``)."""
        await self._prepare(ctx, labels)
        return {"labels": ctx.labels, **ctx.decision}

    async def subrequest(self, parent: Context, request: ChatRequest) -> Completion | AnswerStream:
        """Run a sub-request for a multi-call strategy: classified, routed, traced and recorded
        under ``parent``, its spend, tokens and attempts counted in the parent's. Streams when
        ``request.stream`` is set. Its response headers are its own: what a plugin says about a
        sub-request (a cache hit on a critique, say) does not describe the answer the client
        gets; a plugin that speaks for the whole request writes to ``ctx.root``'s."""
        ctx = self.context(request, parent=parent, client=parent.client, caller=parent.caller,
                           headers=parent.headers)
        parent.children.append(ctx)
        parent.begin_wait()  # the parent's own overhead excludes its sub-requests' time
        try:
            if request.stream:
                return await self.stream(ctx)
            return await self.complete(ctx)
        finally:
            parent.end_wait()

    # --- steps of the pipeline -----------------------------------------------------------------

    def _resolve_model(self, ctx: Context) -> None:
        name = ctx.request.model
        if name in self.config.routes:  # a route named 'auto' overrides the routers
            ctx.route = name
            ctx.candidates = self.route_models(name)
        elif name == AUTO:
            ctx.route = AUTO
        elif (model := self.models.get(name)) is not None:
            ctx.route = name
            ctx.candidates = [model]
        else:
            raise UnknownModel(
                f"The model '{clip(name)}' does not exist: ask for 'auto', a route "
                f"({', '.join(sorted(self.config.routes)) or 'none'}) or a model; "
                "GET /v1/models lists them.", param="model")

    def route_models(self, route: str) -> list[ModelProfile]:
        """The models of a configured route, in order."""
        return [m for name in self.config.routes[route].models
                if (m := self.models.get(name)) is not None]

    def route_config(self, route: str | None) -> Route:
        """The ``[routes.NAME]`` settings of ``route``; the defaults for anything else."""
        return self.config.routes.get(route or "") or DEFAULT_ROUTE

    def route_settings(self, plugin: object | str, route: str | None) -> Any:
        """A plugin's settings for ``route``: the keys its ``RouteSettings`` model declares,
        from ``[routes.NAME]``, validated; the model's defaults for a route that sets none of
        them (and for a model asked for by name). None for a plugin that declares no
        ``RouteSettings``."""
        name = plugin if isinstance(plugin, str) else self.plugins.name_of(plugin)
        found = self.wiring.routes.get((route or "", name or ""))
        if found is not None:
            return found
        model = self.wiring.route_models.get(name or "")
        if model is None:
            return None
        default = self._default_route_settings.get(name)
        if default is None:
            default = self._default_route_settings[name] = model()
        return default

    def strategy_settings(self, route: str | None, strategy: str) -> Any:
        """The strategy's validated settings for ``route`` (its defaults where none are set)."""
        found = self.wiring.strategies.get((route or "", strategy))
        if found is not None:
            return found
        default = self._default_strategy_settings.get(strategy)
        if default is None:
            model = settings_model(self.strategies.get(strategy))
            try:
                default = model() if model is not None else None
            except ValidationError as exc:
                raise NoRoute(f"strategy {strategy!r} has settings without defaults "
                              f"({', '.join(str(e['loc'][0]) for e in exc.errors())}); it can "
                              f"run only on a route that sets them in [routes.NAME."
                              f"{strategy}]") from None
            self._default_strategy_settings[strategy] = default
        return default

    async def _prepare(self, ctx: Context, given: dict[str, Any] | None = None) -> None:
        hook = self.plugins.hook
        if given is not None:
            ctx.labels.update(given)
        else:
            for labels in await hook.classify(ctx=ctx):
                ctx.labels.update(labels)
        ctx.decision["requested"] = ctx.request.model
        if ctx.route == AUTO and not ctx.candidates:
            self._select(ctx, await hook.select_route(ctx=ctx))
        ctx.decision["candidates"] = [m.name for m in ctx.candidates]
        await hook.filter_candidates(ctx=ctx)
        await self._rank(ctx)
        plan = await hook.plan_route(ctx=ctx)
        if plan is None:
            route = self.route_config(ctx.route)
            if not ctx.candidates and self._needs_models(route):
                raise NoRoute(f"no model can serve this request ({self._why_none(ctx)}).")
            plan = Plan(route.strategy, [Step(m, route.attempt_timeout_s)
                                         for m in ctx.candidates])
        if plan.strategy not in self.strategies:
            raise NoRoute(f"the plan names strategy {plan.strategy!r}, which no plugin "
                          f"registered; registered: {self.strategies.known()}")
        if plan.settings is None:
            plan.settings = self.strategy_settings(ctx.route, plan.strategy)
        ctx.plan = plan
        first = plan.steps[0].model if plan.steps else None
        estimate = first.cost(Usage(tokens.prompt_tokens(ctx),
                                    ctx.request.output_limit or ESTIMATED_ANSWER_TOKENS)) \
            if first else 0.0
        ctx.decision.update(route=ctx.route, strategy=plan.strategy,
                            plan=[s.model.name for s in plan.steps],
                            estimated_cost_usd=round(estimate, 8))
        log.debug("route_selected", route=ctx.route, plan=ctx.decision["plan"])

    async def _rank(self, ctx: Context) -> None:
        """Let the route's router (``[routes.NAME] router``) order what the filters left, and
        record why in ``decision["router"]``."""
        configured = self.wiring.routers.get(ctx.route or "")
        if configured is None or not ctx.candidates:
            return
        name, settings = configured
        router = self.routers[name]
        owner = self.routers.owners[name]
        try:
            ranking = await resolve(router.order(ctx, list(ctx.candidates), settings))
        except TurnoutError:
            raise
        except Exception as exc:
            log.exception("router_raised", router=name, plugin=owner)
            raise PluginError(f"router {name!r} ({owner}) raised {type(exc).__name__}: {exc}",
                              plugin=owner, hook="register_routers") from exc
        if ranking is None:
            return
        if not isinstance(ranking, Ranking):
            raise PluginError(f"router {name!r} ({owner}) returned {type(ranking).__name__}; "
                              "return a Ranking, or None to leave the order as it is",
                              plugin=owner, hook="register_routers")
        known = {id(m) for m in ctx.candidates}
        strangers = [m.name for m in ranking.models if id(m) not in known]
        if strangers or not ranking.models:
            what = f"models that are not candidates ({', '.join(strangers)})" if strangers \
                else "no models"
            raise PluginError(f"router {name!r} ({owner}) ranked {what}; rank the candidates "
                              "it was given (ctx.drop removes one, with a reason)",
                              plugin=owner, hook="register_routers")
        ranked = {id(m) for m in ranking.models}
        left_out = [m.name for m in ctx.candidates if id(m) not in ranked]
        ctx.candidates = list(ranking.models)
        ctx.decision["router"] = {"kind": name, "reason": ranking.reason,
                                  "scores": dict(ranking.scores), **ranking.details}
        if left_out:
            ctx.decision["router"]["left_out"] = left_out

    def _select(self, ctx: Context, selection: Selection | None) -> None:
        """Apply a router's choice for ``auto``."""
        if selection is None:
            raise NoRoute("no select_route plugin chose a route for 'auto' (is the rules router "
                          "disabled?); ask for a route or a model by name.")
        if selection.models is None:
            if selection.route not in self.config.routes:
                raise NoRoute(f"a router chose route {selection.route!r}, which is not "
                              f"configured; routes: {', '.join(sorted(self.config.routes))}")
            ctx.candidates = self.route_models(selection.route)
        else:
            ctx.candidates = list(selection.models)
        ctx.route = selection.route
        ctx.decision["rule"] = selection.reason or selection.route

    def _needs_models(self, route: Route) -> bool:
        """Whether ``route``'s strategy runs on the route's models (every strategy but one that
        declares ``needs_models = False``, such as ``chain``, which has a plan without steps)."""
        strategy = self.strategies.get(route.strategy)
        return strategy is None or getattr(strategy, "needs_models", True)

    @staticmethod
    def _why_none(ctx: Context) -> str:
        dropped = ctx.decision.get("dropped") or []
        if dropped:
            return "; ".join(f"{d['model']}: {d['reason']}" for d in dropped)
        return "no candidate models"

    async def _run_strategy(self, ctx: Context) -> Any:
        """Run the plan's strategy under the request's deadline."""
        strategy = self.strategies[ctx.plan.strategy]
        limit = self.config.server.request_timeout_s
        try:
            with anyio.fail_after(limit):
                return await strategy.run(Run(self, ctx))
        except TimeoutError:
            raise ProviderTimeout(f"the request took longer than server.request_timeout_s "
                                  f"({limit}s), all attempts together") from None

    # --- attempts (for strategies, through Run) ------------------------------------------------

    async def _attempt(self, ctx: Context, step: Step,
                       stream: bool | None = None) -> Completion | Started:
        """One call of ``step``, traced and counted; raises AttemptFailed on failure.
        ``stream=False`` on a streaming request: the whole answer, read to its end."""
        self._check_attempts(ctx)
        attempt = Attempt(model=step.model.name, provider=step.model.provider,
                          started=time.perf_counter())
        ctx.attempts.append(attempt)
        await self._admit(ctx, step, attempt)
        error: Exception | None = None
        failed: list[Verdict] = []
        streaming = ctx.request.stream if stream is None else stream and ctx.request.stream
        call = self._call_first_chunk if streaming else self._call_whole
        with self._attempt_span(step) as span:
            _gen_ai_request(span, ctx, step)
            ctx.begin_wait()
            try:
                result = await call(ctx, step, attempt)
            except ProviderError as exc:
                error = exc
            except TimeoutError:
                error = ProviderTimeout(
                    f"{step.model.name} did not answer within {step.timeout_s}s",
                    provider=step.model.provider, model=step.model.name)
            except BaseException as exc:
                if not isinstance(exc, Exception):
                    self._cancel_attempt(ctx, step, attempt)
                attempt.latency_s = time.perf_counter() - attempt.started
                ctx.end_wait()
                await self._end_attempt(attempt)
                raise
            attempt.latency_s = time.perf_counter() - attempt.started
            ctx.end_wait()
            if error is not None:
                attempt.status, attempt.error = "error", f"{error.kind}: {error}"
            elif attempt.status == "rejected":
                failed = [v for v in attempt.verdicts if not v.ok]
            if attempt.status == "ok":  # settled after the answer has left, not before
                self._end_attempt_later(attempt)
            elif attempt.status != "streaming":  # a failure frees its holds before a retry
                await self._end_attempt(attempt)
            _gen_ai_response(span, attempt)
        if error is None and not failed:
            return result
        if error is not None:
            log.info("attempt_failed", model=step.model.name, error=error.kind,
                     detail=str(error))
            reason: Exception = error
        else:
            reason = ValidationFailed("every answer failed validation: "
                                      + "; ".join(f"{v.validator}: {v.reason}" for v in failed))
        raise AttemptFailed(step, error, failed, reason,
                            completion=result if error is None and isinstance(result, Completion)
                            else None)

    async def _admit(self, ctx: Context, step: Step, attempt: Attempt) -> None:
        """Fire ``admit`` for an attempt. On a refusal the holds taken before it are ended at
        once (as a ``refused`` attempt) and the attempt is struck off: no call was made."""
        try:
            attempt.holds = await self.plugins.hook.admit(ctx=ctx, step=step)
        except BaseException as exc:
            attempt.holds = getattr(exc, "partial", [])
            attempt.status = "refused" if isinstance(exc, TurnoutError) else "cancelled"
            attempt.error = f"{exc.kind}: {exc}" if isinstance(exc, TurnoutError) else None
            ctx.attempts.remove(attempt)
            await self._end_attempt(attempt)
            raise

    async def _end_attempt(self, attempt: Attempt) -> None:
        """Hand an ended attempt to its holds (once), shielded: a reservation is settled or
        released even when the request is being cancelled."""
        holds, attempt.holds = attempt.holds, []
        if holds:
            await _hand_over(holds, attempt)

    def _end_attempt_later(self, attempt: Attempt) -> None:
        """As :meth:`_end_attempt`, after the answer (see :meth:`defer`)."""
        holds, attempt.holds = attempt.holds, []
        if holds:
            self.defer(_hand_over, holds, attempt)

    def defer(self, work: Callable[..., Awaitable[Any]], *args: Any) -> None:
        """Run ``await work(*args)`` beside the request instead of in its way: what an answer
        need not wait for (settling its reservations, storing it in a cache). It runs shielded
        from cancellation; a failure is logged. :meth:`idle` waits for everything deferred, and
        :meth:`stop` does before the shutdown hooks, so nothing deferred is lost at a clean
        stop."""
        task = asyncio.get_running_loop().create_task(_shielded(work, *args))
        self._deferred.add(task)
        task.add_done_callback(self._deferred.discard)

    async def idle(self) -> None:
        """Wait until all deferred work (:meth:`defer`) is done."""
        while self._deferred:
            await asyncio.wait(list(self._deferred))

    def _attempts_used_up(self, ctx: Context) -> str | None:
        """Why the request may make no more calls, or None while it may."""
        cap = self.route_config(ctx.route).max_attempts
        if len(ctx.attempts) >= cap:
            return f"{cap} attempts made (max_attempts)"
        total = self.config.server.max_attempts_per_request
        if ctx.root.attempt_count >= total:
            return (f"{total} calls made by the request and its sub-requests "
                    "(server.max_attempts_per_request)")
        return None

    def _check_attempts(self, ctx: Context) -> None:
        used_up = self._attempts_used_up(ctx)
        if used_up is not None:
            raise AttemptsExhausted(f"no answer, and no call left: {used_up}")

    async def _escalate(self, ctx: Context, failed: AttemptFailed) -> Escalation:
        used_up = self._attempts_used_up(ctx)
        if used_up is not None:
            move = Escalation("stop", used_up)
        else:
            move = await self.plugins.hook.escalate(ctx=ctx, error=failed.error,
                                                    verdicts=failed.verdicts) \
                or Escalation("stop", "no escalation")
        entry: dict[str, Any] = {"action": move.action, "reason": move.reason}
        if move.action != "stop":
            entry["delay_s"] = move.delay_s
        ctx.decision.setdefault("escalations", []).append(entry)
        return move

    async def _call(self, ctx: Context, step: Step) -> Any:
        result = await self.plugins.hook.call(ctx=ctx, step=step)
        if result is not None:
            return result
        provider = self.providers.get(step.model.provider)
        if provider is None:
            raise ProviderMissing(
                f"no plugin answered and no provider named {step.model.provider!r} is "
                f"configured for model {step.model.name!r}; add [providers."
                f"{step.model.provider}] with a registered kind ({self.provider_kinds.known()})",
                provider=step.model.provider, model=step.model.name)
        if ctx.request.stream:
            return provider.stream(ctx.request, step.model)
        return await provider.complete(ctx.request, step.model)

    async def _call_whole(self, ctx: Context, step: Step, attempt: Attempt) -> Completion:
        scope = anyio.fail_after(step.timeout_s) if step.timeout_s else nullcontext()
        with scope:
            result = await self._call(ctx, step)
            if ctx.request.stream and not isinstance(result, Completion):
                result = await _whole(result, step)  # a whole answer asked of a stream
        if not isinstance(result, Completion):
            raise PluginError("a call plugin returned a stream for a non-streaming request",
                              plugin=getattr(result, "plugin", "?"), hook="call")
        self._settle(ctx, step, attempt, result)
        await self._validate(ctx, attempt, result)
        return result

    async def _call_first_chunk(self, ctx: Context, step: Step, attempt: Attempt) -> Started:
        scope = anyio.fail_after(step.timeout_s) if step.timeout_s else nullcontext()
        with scope:
            result = await self._call(ctx, step)
            if isinstance(result, Completion):  # a whole answer (a cache hit): settled and
                self._settle(ctx, step, attempt, result)  # judged now, replayed as chunks
                await self._validate(ctx, attempt, result)
                chunks = _replay(result)
                return Started(await anext(chunks), chunks, step, attempt, completion=result)
            try:
                first = await anext(result)
            except StopAsyncIteration:
                raise StreamBroken("the stream ended before its first chunk",
                                   provider=step.model.provider, model=step.model.name) from None
        attempt.status = "streaming"
        return Started(first, result, step, attempt)

    async def _started(self, ctx: Context, result: Any) -> Started:
        """What a strategy answered a streaming request with, as a started stream."""
        if isinstance(result, Started):
            return result
        if isinstance(result, Completion):
            chunks = _replay(result)
            return Started(await anext(chunks), chunks, completion=result)
        if isinstance(result, AnswerStream):
            ctx.state["kernel.source"] = result.ctx
            return Started(await anext(result), result)
        raise PluginError(f"strategy {ctx.plan.strategy!r} returned {type(result).__name__} for "
                          "a streaming request; return what run.attempt or "
                          "run.subrequest(stream=True) gave, or a Completion",
                          plugin=self.strategies.owners.get(ctx.plan.strategy, "?"),
                          hook="register_strategies")

    async def _relay(self, ctx: Context, started: Started) -> AsyncIterator[Chunk]:
        step, attempt, rest = started.step, started.attempt, started.rest
        parts: list[str] = []
        calls: dict[int, dict] = {}
        usage: Usage | None = None
        finish = None
        resumed = time.perf_counter()
        ctx.begin_wait()
        try:
            chunk: Chunk | None = started.first
            while chunk is not None:
                if chunk.content:
                    parts.append(chunk.content)
                if chunk.tool_calls:
                    _merge_tool_calls(calls, chunk.tool_calls)
                if chunk.usage is not None:
                    usage = chunk.usage
                finish = chunk.finish_reason or finish
                yield chunk
                chunk = await anext(rest, None)
            if attempt is not None and attempt.status == "streaming":
                completion = Completion(
                    content="".join(parts) if parts or not calls else None,
                    finish_reason=finish or "stop",
                    tool_calls=[calls[i] for i in sorted(calls)] or None,
                    usage=usage or Usage(), model=step.model.name, provider=step.model.provider)
                self._settle(ctx, step, attempt, completion)
                await self._validate(ctx, attempt, completion)
                ctx.completion = completion
            elif isinstance(rest, AnswerStream):
                ctx.completion = rest.ctx.completion
            else:
                ctx.completion = started.completion
            ctx.status = "ok"
        except ProviderError as exc:
            where = step.model if step is not None else None
            if attempt is not None:
                attempt.status, attempt.error = "error", f"{exc.kind}: {exc}"
            broken = exc if isinstance(exc, StreamBroken) else StreamBroken(
                f"the stream from {where.name if where else 'a sub-request'} failed after it had "
                f"started: {exc}", provider=where.provider if where else None,
                model=where.name if where else None)
            self._fail(ctx, broken)
            raise broken from None
        except BaseException as exc:
            self._fail(ctx, exc)
            raise
        finally:
            ctx.end_wait()
            if attempt is not None:
                attempt.latency_s += time.perf_counter() - resumed
                if attempt.status == "streaming":
                    attempt.status = "ok" if ctx.status == "ok" else "cancelled"
            await _aclose(rest)
            await self._record(ctx)

    def _settle(self, ctx: Context, step: Step, attempt: Attempt, completion: Completion) -> None:
        """Fill in usage and cost of an answer, counting tokens where the provider gave none."""
        if not completion.usage.input_tokens:
            completion.usage = Usage(
                tokens.prompt_tokens(ctx),
                completion.usage.output_tokens or tokens.count(completion.content or ""))
        if not completion.cached:
            completion.cost_usd = step.model.cost(completion.usage)
        completion.model = completion.model or step.model.name
        completion.provider = completion.provider or step.model.provider
        attempt.usage = completion.usage
        attempt.cost_usd = completion.cost_usd
        attempt.status = "ok"

    @staticmethod
    def _cancel_attempt(ctx: Context, step: Step, attempt: Attempt) -> None:
        """An attempt cut short by cancellation: the upstream has the prompt and may bill it,
        so its input tokens are counted (estimated) and costed; the answer's are unknown."""
        attempt.status = "cancelled"
        attempt.usage = Usage(tokens.prompt_tokens(ctx), 0)
        attempt.cost_usd = step.model.cost(attempt.usage)
        attempt.error = "cancelled: input tokens estimated, output unknown"

    async def _validate(self, ctx: Context, attempt: Attempt, completion: Completion) -> None:
        verdicts = await self.plugins.hook.validate(ctx=ctx, completion=completion)
        for _, check in self._route_validators.get(ctx.route or "", self._default_validators):
            verdict = await resolve(check(ctx, completion))
            if verdict is not None:
                verdicts.append(verdict)
        attempt.verdicts = verdicts
        if any(not v.ok for v in verdicts):
            attempt.status = "rejected"

    @staticmethod
    def _fail(ctx: Context, exc: BaseException) -> None:
        if ctx.error is not None:
            return
        ctx.error = exc
        ctx.status = "error" if isinstance(exc, Exception) else "cancelled"

    async def _record(self, ctx: Context) -> None:
        """Fire ``record`` once per request, shielded from cancellation."""
        if ctx.ended is not None:
            return
        ctx.ended = time.perf_counter()
        if ctx.status == "pending":
            ctx.status = "cancelled"
        with anyio.CancelScope(shield=True):
            for attempt in ctx.attempts:  # streams, ended or dropped by a strategy
                if attempt.holds:
                    if attempt.status in ("pending", "streaming"):
                        attempt.status = "cancelled"
                    self._end_attempt_later(attempt)
            await self.plugins.hook.record(ctx=ctx)

    def _span(self, ctx: Context):
        """The request's span; a shared no-op when no tracer provider is installed."""
        return _RequestSpan(ctx, self.tracer) if self.tracing else NO_SPAN

    def _attempt_span(self, step: Step):
        if not self.tracing:
            return NO_SPAN
        return self.tracer.start_as_current_span(f"chat {step.model.upstream}")


class AnswerStream:
    """The chunks of a started stream, and ``answer``, what it took so far.

    Closing it, even before the first read, ends the upstream stream and records the request (an
    async generator that never started would do neither).
    """

    __slots__ = ("_kernel", "ctx", "_started", "_relay", "_iterating")

    def __init__(self, kernel: Kernel, ctx: Context, started: Started) -> None:
        self._kernel, self.ctx, self._started = kernel, ctx, started
        self._relay = kernel._relay(ctx, started)
        self._iterating = False

    @property
    def answer(self) -> Answer:
        """The request's account as it stands: final once the stream has ended."""
        return Answer.of(self.ctx)

    def __aiter__(self) -> "AnswerStream":
        return self

    async def __anext__(self) -> Chunk:
        self._iterating = True
        return await self._relay.__anext__()

    async def aclose(self) -> None:
        if self._iterating:
            await self._relay.aclose()
            return
        self._iterating = True
        await _aclose(self._started.rest)
        if self._started.attempt is not None:
            self._started.attempt.status = "cancelled"
        self._kernel._fail(self.ctx, anyio.get_cancelled_exc_class()())
        await self._kernel._record(self.ctx)


class _RequestSpan:
    """The request's root span, kept on the context for plugins to annotate."""

    __slots__ = ("ctx", "cm")

    def __init__(self, ctx: Context, tracer: trace.Tracer) -> None:
        self.ctx = ctx
        self.cm = tracer.start_as_current_span(f"turnout {ctx.request.model}",
                                               end_on_exit=True)

    def __enter__(self):
        self.ctx.span = self.cm.__enter__()
        self.ctx.span.set_attribute("turnout.request_id", self.ctx.request_id)
        return self.ctx.span

    def __exit__(self, *exc):
        span = self.ctx.span
        if span.is_recording():
            span.set_attribute("turnout.route", self.ctx.route or "")
            span.set_attribute("turnout.cost_usd", self.ctx.spend_usd)
        return self.cm.__exit__(*exc)


def _gen_ai_request(span, ctx: Context, step: Step) -> None:
    if not span.is_recording():
        return
    span.set_attribute("gen_ai.operation.name", "chat")
    span.set_attribute("gen_ai.system", step.model.provider)
    span.set_attribute("gen_ai.request.model", step.model.upstream)
    if ctx.request.max_tokens:
        span.set_attribute("gen_ai.request.max_tokens", ctx.request.max_tokens)
    if ctx.request.temperature is not None:
        span.set_attribute("gen_ai.request.temperature", ctx.request.temperature)


def _gen_ai_response(span, attempt: Attempt) -> None:
    if not span.is_recording():
        return
    span.set_attribute("gen_ai.response.model", attempt.model)
    span.set_attribute("gen_ai.usage.input_tokens", attempt.usage.input_tokens)
    span.set_attribute("gen_ai.usage.output_tokens", attempt.usage.output_tokens)
    span.set_attribute("turnout.attempt.status", attempt.status)
    if attempt.error:
        span.set_attribute("error.type", attempt.error.split(":", 1)[0])


async def _replay(completion: Completion) -> AsyncIterator[Chunk]:
    """A whole answer (a cache hit) as a stream of one content chunk and one final chunk."""
    yield Chunk(role="assistant", content=completion.content,
                tool_calls=[{"index": i, **c} for i, c in enumerate(completion.tool_calls or [])]
                or None)
    yield Chunk(finish_reason=completion.finish_reason, usage=completion.usage)


async def _whole(chunks: Any, step: Step) -> Completion:
    """A stream read to its end as one Completion (usage as the stream reported it)."""
    parts: list[str] = []
    calls: dict[int, dict] = {}
    usage, finish = Usage(), None
    try:
        async for chunk in chunks:
            parts.append(chunk.content or "")
            if chunk.tool_calls:
                _merge_tool_calls(calls, chunk.tool_calls)
            usage = chunk.usage or usage
            finish = chunk.finish_reason or finish
    finally:
        await _aclose(chunks)
    return Completion(content="".join(parts) if any(parts) or not calls else None,
                      finish_reason=finish or "stop",
                      tool_calls=[calls[i] for i in sorted(calls)] or None, usage=usage,
                      model=step.model.name, provider=step.model.provider)


def _merge_tool_calls(calls: dict[int, dict], deltas: list[dict]) -> None:
    """Fold OpenAI streaming tool-call deltas into whole tool calls, by index."""
    for delta in deltas:
        index = delta.get("index", 0)
        call = calls.setdefault(index, {"id": None, "type": "function",
                                        "function": {"name": "", "arguments": ""}})
        if delta.get("id"):
            call["id"] = delta["id"]
        fn = delta.get("function") or {}
        if fn.get("name"):
            call["function"]["name"] += fn["name"]
        if fn.get("arguments"):
            call["function"]["arguments"] += fn["arguments"]


def _attempt_of(ctx: Context, completion: Completion | None) -> Attempt | None:
    """The attempt that gave ``completion``: one of ``ctx``'s own (settling shares its usage
    object with the attempt) or, for an answer a sub-request gave, the attempt that answered
    the sub-request."""
    if completion is None:
        return None
    own = next((a for a in ctx.attempts if a.usage is completion.usage), None)
    if own is not None:
        return own
    return next((child.answering for child in ctx.children if child.completion is completion),
                None)


async def _hand_over(holds: list[Hold], attempt: Attempt) -> None:
    """Tell each hold its attempt has ended; one that fails is logged, the others still run."""
    with anyio.CancelScope(shield=True):
        for hold in holds:
            try:
                await hold.done(attempt)
            except Exception:  # noqa: BLE001 - one hold failing must not keep the others
                log.exception("hold_failed", hold=type(hold).__name__)


async def _shielded(work: Callable[..., Awaitable[Any]], *args: Any) -> None:
    with anyio.CancelScope(shield=True):
        try:
            await work(*args)
        except Exception:  # noqa: BLE001 - deferred work has no caller to fail
            log.exception("deferred_failed", work=getattr(work, "__qualname__", repr(work)))


async def _aclose(stream: Any) -> None:
    close = getattr(stream, "aclose", None)
    if close is not None:
        with anyio.CancelScope(shield=True):
            try:
                await close()
            except Exception:  # noqa: BLE001 - a stream failing to close is not the request's error
                log.debug("stream_close_failed", exc_info=True)

