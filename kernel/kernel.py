"""The kernel: runs one request through classify, route, call, validate, escalate and record.

It owns no policy. Which model answers, how failures fall back, what is cached or recorded: all of
that is plugins. The kernel walks the plan, keeps the attempts, traces each step, and makes sure
every request is recorded exactly once, whatever happens to the client.
"""

from __future__ import annotations

import time
from contextlib import nullcontext
from typing import Any, AsyncIterator

import anyio
import structlog
from opentelemetry import trace

from . import config as config_module
from . import tokens
from .config import Config
from .errors import (
    NoRoute,
    PluginError,
    ProviderError,
    ProviderTimeout,
    StreamBroken,
    UnknownModel,
    ValidationFailed,
)
from .manager import PluginManager
from .registry import ModelRegistry
from .types import (
    Alert,
    Attempt,
    ChatRequest,
    Chunk,
    Completion,
    Context,
    Escalation,
    ModelProfile,
    Plan,
    Step,
    Usage,
    Verdict,
)

log = structlog.get_logger("turnout.kernel")
tracer = trace.get_tracer("turnout")
NO_SPAN = nullcontext(trace.INVALID_SPAN)
"""Stands in for a span when tracing is off: reusable, costs nothing."""

BUILTINS = {
    "classify": "turnout.plugins.classify",
    "rules_router": "turnout.plugins.rules_router:RulesRouter",
    "fit": "turnout.plugins.fit",
    "fallback": "turnout.plugins.fallback:Fallback",
    "json_validator": "turnout.plugins.json_validator",
    "sqlite_recorder": "turnout.plugins.sqlite_recorder:SQLiteRecorder",
    "request_log": "turnout.plugins.request_log",
    "log_alerts": "turnout.plugins.log_alerts",
    "telemetry": "turnout.plugins.telemetry:Telemetry",
    "providers": "turnout.adapters.providers:Providers",
}
"""Built-in plugins, loaded through the same path as third-party ones."""

AUTO = "auto"
"""The model name that lets the routers choose."""

ESTIMATED_ANSWER_TOKENS = 256
"""Answer length assumed for the decision's cost estimate when the request sets no max_tokens."""


class Kernel:
    """One gateway process: config, plugins, models, and the request pipeline."""

    def __init__(self, config: Config, *, plugins: PluginManager | None = None,
                 builtins: dict[str, str] = BUILTINS) -> None:
        self.config = config
        self.models = ModelRegistry.from_config(config)
        self.plugins = plugins or PluginManager()
        self._builtins = builtins
        self.started = False
        self.tracing = False

    # --- lifecycle -----------------------------------------------------------------------------

    def load_plugins(self) -> None:
        """Load built-ins, entry points and config-named plugins; fails fast on a bad one."""
        self.plugins.load(builtins=self._builtins, paths=self.config.plugins.load,
                          disable=self.config.plugins.disable)
        known = set(self.plugins.names())
        for name in self.config.plugins.settings:
            if name not in known:
                raise config_module.ConfigError(
                    f"plugins.settings.{name}: no plugin {name!r} is loaded; "
                    f"loaded plugins: {', '.join(sorted(known))}")

    async def start(self) -> None:
        """Load plugins if none are, then run every ``startup`` hook."""
        if not self.plugins.names():
            self.load_plugins()
        await self.plugins.call_all("startup", kernel=self)
        # Plugins install a tracer provider at startup (the telemetry plugin does); without one,
        # spans would be no-ops, so the kernel skips creating them at all.
        self.tracing = not isinstance(trace.get_tracer_provider(),
                                      (trace.ProxyTracerProvider, trace.NoOpTracerProvider))
        self.started = True
        log.info("kernel_started", plugins=self.plugins.names(), models=len(self.models),
                 routes=sorted(self.config.routes))

    async def stop(self) -> None:
        """Run every ``shutdown`` hook; one that fails does not stop the others."""
        with anyio.CancelScope(shield=True):
            await self.plugins.call_all("shutdown", isolate=True, kernel=self)
        self.started = False

    async def __aenter__(self) -> "Kernel":
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def alert(self, alert: Alert) -> None:
        """Deliver an alert to every ``alert`` plugin; delivery failures are only logged."""
        await self.plugins.call_all("alert", isolate=True, alert=alert)

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
                completion = await self._run_plan(ctx, self._call_whole)
            ctx.completion = completion
            ctx.status = "ok"
            return completion
        except BaseException as exc:
            self._fail(ctx, exc)
            raise
        finally:
            await self._record(ctx)

    async def stream(self, ctx: Context) -> AsyncIterator[Chunk]:
        """Answer a streaming request.

        Fallback happens until the first chunk arrives; this coroutine returns only then, so the
        caller can still send a clean error. After it returns, a failure ends the iterator with
        :class:`StreamBroken`, never with a quiet end. The request is recorded exactly once, when
        the iterator ends, fails or is closed.
        """
        try:
            with self._span(ctx):
                await self._prepare(ctx)
                first, rest = await self._run_plan(ctx, self._call_first_chunk)
        except BaseException as exc:
            self._fail(ctx, exc)
            await self._record(ctx)
            raise
        return RelayStream(self, ctx, first, rest)

    async def explain(self, ctx: Context) -> dict[str, Any]:
        """Classify and route without calling any model; the decision record and labels."""
        await self._prepare(ctx)
        return {"labels": ctx.labels, **ctx.decision}

    async def subrequest(self, parent: Context, request: ChatRequest) -> Completion:
        """Run a sub-request for a multi-call strategy: classified, routed, traced and recorded
        under ``parent``."""
        ctx = self.context(request, parent=parent, client=parent.client)
        return await self.complete(ctx)

    # --- steps of the pipeline -----------------------------------------------------------------

    def _resolve_model(self, ctx: Context) -> None:
        name = ctx.request.model
        if name in self.config.routes:  # a route named 'auto' overrides the routers
            ctx.route = name
            ctx.candidates = self.route_models(name)
        elif name == AUTO:
            ctx.route = AUTO
        elif (model := self.models.get(name)) is not None:
            ctx.candidates = [model]
        else:
            raise UnknownModel(
                f"The model {name!r} does not exist: ask for 'auto', a route "
                f"({', '.join(sorted(self.config.routes)) or 'none'}) or a model; "
                "GET /v1/models lists them.", param="model")

    def route_models(self, route: str) -> list[ModelProfile]:
        """The models of a configured route, in order."""
        return [m for name in self.config.routes[route].models
                if (m := self.models.get(name)) is not None]

    async def _prepare(self, ctx: Context) -> None:
        for labels in await self.plugins.call_all("classify", ctx=ctx):
            ctx.labels.update(labels)
        ctx.decision["requested"] = ctx.request.model
        plan = await self.plugins.call_first("route", ctx=ctx)
        if plan is None:
            raise NoRoute(f"no model can serve this request ({self._why_none(ctx)}).")
        ctx.plan = plan
        first = plan.steps[0].model if plan.steps else None
        estimate = first.cost(Usage(tokens.prompt_tokens(ctx),
                                    ctx.request.output_limit or ESTIMATED_ANSWER_TOKENS)) \
            if first else 0.0
        ctx.decision.update(route=ctx.route, strategy=plan.strategy,
                            plan=[s.model.name for s in plan.steps],
                            estimated_cost_usd=round(estimate, 8))
        log.debug("route_selected", route=ctx.route, plan=ctx.decision["plan"])

    @staticmethod
    def _why_none(ctx: Context) -> str:
        dropped = ctx.decision.get("dropped") or []
        if dropped:
            return "; ".join(f"{d['model']}: {d['reason']}" for d in dropped)
        return "no route plugin made a plan"

    async def _run_plan(self, ctx: Context, attempt_fn) -> Any:
        """Walk the plan: attempt the current step; on failure ask escalate what to do next."""
        plan = ctx.plan
        assert plan is not None
        limit = self.config.server.request_timeout_s
        try:
            with anyio.fail_after(limit):
                return await self._walk(ctx, plan, attempt_fn)
        except TimeoutError:
            raise ProviderTimeout(f"the request took longer than server.request_timeout_s "
                                  f"({limit}s), all attempts together") from None

    async def _walk(self, ctx: Context, plan: Plan, attempt_fn) -> Any:
        last_error: Exception | None = None
        while (step := plan.current) is not None:
            attempt = Attempt(model=step.model.name, provider=step.model.provider,
                              started=time.perf_counter())
            ctx.attempts.append(attempt)
            error: Exception | None = None
            failed: list[Verdict] = []
            with self._attempt_span(step) as span:
                _gen_ai_request(span, ctx, step)
                try:
                    result = await attempt_fn(ctx, step, attempt)
                except ProviderError as exc:
                    error = exc
                except TimeoutError:
                    error = ProviderTimeout(
                        f"{step.model.name} did not answer within {step.timeout_s}s",
                        provider=step.model.provider, model=step.model.name)
                finally:
                    self._end_attempt(ctx, attempt)
                if error is not None:
                    attempt.status, attempt.error = "error", f"{error.kind}: {error}"
                elif attempt.status == "rejected":
                    failed = [v for v in attempt.verdicts if not v.ok]
                _gen_ai_response(span, attempt)
            if error is None and not failed:
                return result
            if error is not None:
                last_error = error
                log.info("attempt_failed", model=step.model.name, error=error.kind,
                         detail=str(error))
            else:
                last_error = ValidationFailed(
                    "every answer failed validation: "
                    + "; ".join(f"{v.validator}: {v.reason}" for v in failed))
            move: Escalation | None = await self.plugins.call_first(
                "escalate", ctx=ctx, error=error, verdicts=failed)
            if move is None or move.action == "stop":
                ctx.decision.setdefault("escalations", []).append(
                    {"action": "stop", "reason": move.reason if move else "no escalation"})
                raise last_error
            ctx.decision.setdefault("escalations", []).append(
                {"action": move.action, "reason": move.reason, "delay_s": move.delay_s})
            if move.action == "retry":
                if move.delay_s:
                    await anyio.sleep(move.delay_s)
                    ctx.upstream_s += move.delay_s  # waiting out a provider is not overhead
            else:
                plan.cursor = plan.cursor + 1 if move.cursor is None else move.cursor
        raise last_error or NoRoute("the plan has no steps left")

    async def _call(self, ctx: Context, step: Step) -> Any:
        result = await self.plugins.call_first("call", ctx=ctx, step=step)
        if result is None:
            raise NoRoute(f"no plugin serves model {step.model.name!r} (provider "
                          f"{step.model.provider!r}); is the provider's plugin loaded?")
        return result

    async def _call_whole(self, ctx: Context, step: Step, attempt: Attempt) -> Completion:
        scope = anyio.fail_after(step.timeout_s) if step.timeout_s else nullcontext()
        with scope:
            result = await self._call(ctx, step)
        if not isinstance(result, Completion):
            raise PluginError("a call plugin returned a stream for a non-streaming request",
                              plugin=getattr(result, "plugin", "?"), hook="call")
        self._settle(ctx, step, attempt, result)
        await self._validate(ctx, attempt, result)
        return result

    async def _call_first_chunk(self, ctx: Context, step: Step,
                                attempt: Attempt) -> tuple[Chunk, Any]:
        scope = anyio.fail_after(step.timeout_s) if step.timeout_s else nullcontext()
        with scope:
            result = await self._call(ctx, step)
            if isinstance(result, Completion):
                self._settle(ctx, step, attempt, result)
                await self._validate(ctx, attempt, result)
                result = _replay(result)
            try:
                first = await anext(result)
            except StopAsyncIteration:
                raise StreamBroken("the stream ended before its first chunk",
                                   provider=step.model.provider, model=step.model.name) from None
        ctx.state["kernel.step"] = step
        ctx.state["kernel.attempt"] = attempt
        attempt.status = "streaming"
        return first, result

    async def _relay(self, ctx: Context, first: Chunk, rest: Any) -> AsyncIterator[Chunk]:
        step: Step = ctx.state["kernel.step"]
        attempt: Attempt = ctx.state["kernel.attempt"]
        parts: list[str] = []
        calls: dict[int, dict] = {}
        usage: Usage | None = None
        finish = None
        resumed = time.perf_counter()
        try:
            chunk: Chunk | None = first
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
            if attempt.status == "streaming":
                completion = Completion(
                    content="".join(parts) if parts or not calls else None,
                    finish_reason=finish or "stop",
                    tool_calls=[calls[i] for i in sorted(calls)] or None,
                    usage=usage or Usage(), model=step.model.name, provider=step.model.provider)
                self._settle(ctx, step, attempt, completion)
                await self._validate(ctx, attempt, completion)
                ctx.completion = completion
            ctx.status = "ok"
        except ProviderError as exc:
            attempt.status, attempt.error = "error", f"{exc.kind}: {exc}"
            broken = exc if isinstance(exc, StreamBroken) else StreamBroken(
                f"the stream from {step.model.name} failed after it had started: {exc}",
                provider=step.model.provider, model=step.model.name)
            self._fail(ctx, broken)
            raise broken from None
        except BaseException as exc:
            self._fail(ctx, exc)
            raise
        finally:
            attempt.latency_s += time.perf_counter() - resumed
            ctx.upstream_s += time.perf_counter() - resumed
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

    async def _validate(self, ctx: Context, attempt: Attempt, completion: Completion) -> None:
        attempt.verdicts = await self.plugins.call_all("validate", ctx=ctx, completion=completion)
        if any(not v.ok for v in attempt.verdicts):
            attempt.status = "rejected"

    @staticmethod
    def _end_attempt(ctx: Context, attempt: Attempt) -> None:
        attempt.latency_s = time.perf_counter() - attempt.started
        ctx.upstream_s += attempt.latency_s

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
            await self.plugins.call_all("record", isolate=True, ctx=ctx)

    def _span(self, ctx: Context):
        """The request's span; a shared no-op when no tracer provider is installed."""
        return _RequestSpan(ctx) if self.tracing else NO_SPAN

    def _attempt_span(self, step: Step):
        if not self.tracing:
            return NO_SPAN
        return tracer.start_as_current_span(f"chat {step.model.upstream}")


class RelayStream:
    """The chunks of a started stream; closing it, even before the first read, ends the upstream
    stream and records the request (an async generator that never started would do neither)."""

    __slots__ = ("_kernel", "_ctx", "_rest", "_relay", "_started")

    def __init__(self, kernel: Kernel, ctx: Context, first: Chunk, rest: Any) -> None:
        self._kernel, self._ctx, self._rest = kernel, ctx, rest
        self._relay = kernel._relay(ctx, first, rest)
        self._started = False

    def __aiter__(self) -> "RelayStream":
        return self

    async def __anext__(self) -> Chunk:
        self._started = True
        return await self._relay.__anext__()

    async def aclose(self) -> None:
        if self._started:
            await self._relay.aclose()
            return
        self._started = True
        await _aclose(self._rest)
        self._ctx.state["kernel.attempt"].status = "cancelled"
        self._kernel._fail(self._ctx, anyio.get_cancelled_exc_class()())
        await self._kernel._record(self._ctx)


class _RequestSpan:
    """The request's root span, kept on the context for plugins to annotate."""

    __slots__ = ("ctx", "cm")

    def __init__(self, ctx: Context) -> None:
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


async def _aclose(stream: Any) -> None:
    close = getattr(stream, "aclose", None)
    if close is not None:
        with anyio.CancelScope(shield=True):
            try:
                await close()
            except Exception:  # noqa: BLE001 - a stream failing to close is not the request's error
                log.debug("stream_close_failed", exc_info=True)
