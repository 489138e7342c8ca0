"""Embeddings: the request and result types, and the kernel's pipeline for them.

``Kernel.embed`` runs an :class:`EmbeddingRequest` through the same seams as a chat request,
without a strategy: the model (or route) it names resolves to the models carrying the
``embeddings`` capability, each attempt is admitted by the ``admit`` hook (budgets and rate
limits), answered from the cache or by the model's provider (``Provider.embed``), falls back to
the next model on a provider error, and the request is recorded once through the ``record``
hook (one request row, one row per attempt).

The context handed to plugins carries a chat-shaped view of the request (one user message
holding the input, ``max_tokens`` 1) with the ``prompt_tokens`` label set to the input's
counted tokens, so plugins that price or count a request from ``ctx.request`` and that label
(budgets: the counted prompt at the model's input price; rate limits: the prompt's tokens)
work unchanged. ``ctx.state["kind"]`` and ``ctx.decision["kind"]`` are ``"embeddings"``.

The cache is kept here, not in the ``cache`` plugin (which keys chat requests): the route's
``cache`` key (``off`` turns it off; ``deterministic`` and ``always`` both cache, since an
embedding does not depend on sampling) and ``cache_ttl_s`` apply, in ``kernel.store`` under
``embeddings:<sha256 of model, input and dimensions>``. ``Cache-Control: no-cache`` skips the
lookup and stores the fresh vectors; ``no-store`` skips the cache.
"""

from __future__ import annotations

import hashlib
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import anyio
import orjson
import structlog

from . import tokens
from .errors import (
    BadRequest,
    NoRoute,
    ProviderError,
    ProviderMissing,
    ProviderTimeout,
    ProviderUnavailable,
    TurnoutError,
    UnknownModel,
    clip,
)
from .store import StoreError
from .types import Answer, Attempt, ChatRequest, Completion, Context, ModelProfile, Plan, Step, Usage

if TYPE_CHECKING:
    from .kernel import Kernel

log = structlog.get_logger("turnout.embeddings")

CAPABILITY = "embeddings"
"""The capability (``models.NAME.capabilities``) of a model that embeds."""

KIND = "embeddings"
"""``ctx.state["kind"]`` and ``ctx.decision["kind"]`` of an embeddings request."""

MAX_INPUTS = 2048
"""Most texts in one request, as OpenAI allows."""

ENCODINGS = ("float", "base64")
FIELDS = frozenset({"model", "input", "encoding_format", "dimensions", "user"})
CACHE_VERSION = 1
AUTO = "auto"


@dataclass(slots=True, frozen=True)
class EmbeddingRequest:
    """What a client asks to embed: ``texts`` (one or more non-empty strings) with ``model``
    (a model, a route, or ``auto``), ``dimensions`` (the vectors' length, where the model can
    shorten them), ``encoding_format`` (how the frontend writes the vectors) and ``user``."""

    model: str
    texts: tuple[str, ...]
    dimensions: int | None = None
    encoding_format: str = "float"
    user: str | None = None
    single: bool = False
    """True when the client sent one string rather than a list."""

    @classmethod
    def parse(cls, data: Any) -> "EmbeddingRequest":
        """Validate an OpenAI ``/v1/embeddings`` body (a decoded JSON object); raises
        :class:`BadRequest` naming the field that is wrong and what it must be."""
        if not isinstance(data, dict):
            raise BadRequest('The request body must be a JSON object: {"model": "...", '
                             '"input": "text to embed"}.')
        unknown = sorted(set(data) - FIELDS)
        if unknown:
            raise BadRequest(f"Unrecognized request argument supplied: {clip(unknown[0])}. "
                             f"Embeddings take {', '.join(sorted(FIELDS))}.",
                             param=clip(unknown[0]))
        model = data.get("model")
        if model is None:
            raise BadRequest("Missing required parameter: 'model'.", param="model")
        if not isinstance(model, str) or not model:
            raise BadRequest(f"model must be a non-empty string naming an embedding model or "
                             f"route, not {clip(model)}.", param="model")
        if "input" not in data or data["input"] is None:
            raise BadRequest("Missing required parameter: 'input'.", param="input")
        texts, single = _texts(data["input"])
        encoding = data.get("encoding_format")
        if encoding is None:
            encoding = "float"
        if encoding not in ENCODINGS:
            raise BadRequest(f"encoding_format must be 'float' or 'base64', not {clip(encoding)}.",
                             param="encoding_format")
        dimensions = data.get("dimensions")
        if dimensions is not None and (isinstance(dimensions, bool)
                                       or not isinstance(dimensions, int) or dimensions < 1):
            raise BadRequest(f"dimensions must be a positive integer, not {clip(dimensions)}.",
                             param="dimensions")
        user = data.get("user")
        if user is not None and not isinstance(user, str):
            raise BadRequest("user must be a string.", param="user")
        return cls(model=model, texts=texts, dimensions=dimensions, encoding_format=encoding,
                   user=user, single=single)


def _texts(value: Any) -> tuple[tuple[str, ...], bool]:
    """The texts of ``input``; token ids (integers, or lists of them) are refused."""
    if isinstance(value, str):
        if not value:
            raise BadRequest("input must not be empty: send the text to embed.", param="input")
        return (value,), True
    if not isinstance(value, list):
        raise BadRequest(f"input must be a string or a list of strings, not {clip(value)}.",
                         param="input")
    if not value:
        raise BadRequest("input must not be an empty list: send at least one text.",
                         param="input")
    if len(value) > MAX_INPUTS:
        raise BadRequest(f"input has {len(value)} items; send at most {MAX_INPUTS} per request.",
                         param="input")
    for i, item in enumerate(value):
        if isinstance(item, str):
            if not item:
                raise BadRequest(f"input[{i}] is empty: every text must have something to embed.",
                                 param=f"input[{i}]")
            continue
        if isinstance(item, int) or isinstance(item, list):
            raise BadRequest("input holds token ids; this gateway embeds text only (send "
                             "strings), since each provider tokenizes differently.",
                             param=f"input[{i}]")
        raise BadRequest(f"input[{i}] must be a string, not {clip(item)}.", param=f"input[{i}]")
    return tuple(value), False


@dataclass(slots=True)
class Embeddings:
    """A provider's answer: one vector per text, in order, with its usage; ``cost_usd`` and
    ``cached`` are filled in by the kernel."""

    vectors: list[list[float]]
    usage: Usage = field(default_factory=Usage)
    model: str = ""
    provider: str = ""
    cost_usd: float = 0.0
    cached: bool = False


@dataclass(slots=True)
class EmbeddingAnswer:
    """What ``Kernel.embed`` returns: the vectors, and the request's account (model, route,
    cost, attempts, headers for the client) as for a chat answer."""

    embeddings: Embeddings
    answer: Answer


# --- resolving the model -------------------------------------------------------------------------

def embedding_models(kernel: "Kernel") -> list[ModelProfile]:
    """Every configured model with the ``embeddings`` capability, in config order."""
    return [m for m in kernel.models if CAPABILITY in m.capabilities]


def resolve(kernel: "Kernel", name: str) -> tuple[str, list[ModelProfile]]:
    """The route and candidate models for ``name``: a route's embedding models, a model, or
    (``auto`` with no route of that name) every embedding model in config order. Raises
    UnknownModel (404) for a name nothing carries, BadRequest (400) naming the embedding models
    when none of those asked for embeds."""
    if name in kernel.config.routes:
        asked = kernel.route_models(name)
    elif name == AUTO:
        asked = embedding_models(kernel)
    elif (model := kernel.models.get(name)) is not None:
        asked = [model]
    else:
        raise UnknownModel(f"The model '{clip(name)}' does not exist: ask for an embedding model "
                           f"({_names(kernel)}), a route of them, or 'auto'.", param="model")
    found = [m for m in asked if CAPABILITY in m.capabilities]
    if not found:
        what = "no model has" if name == AUTO else f"'{clip(name)}' does not have"
        raise BadRequest(f"{what} the '{CAPABILITY}' capability, so it cannot embed; ask for an "
                         f"embedding model: {_names(kernel)}.", param="model")
    return name, found


def _names(kernel: "Kernel") -> str:
    return ", ".join(m.name for m in embedding_models(kernel)) or \
        "none is configured (give a model capabilities = [\"embeddings\"])"


def chat_view(request: EmbeddingRequest) -> ChatRequest:
    """The request as plugins that read ``ctx.request`` see it: one user message holding the
    input, ``max_tokens`` 1 (nothing is generated)."""
    return ChatRequest(model=request.model, max_tokens=1, user=request.user,
                       messages=[{"role": "user", "content": "\n".join(request.texts)}])


def context(kernel: "Kernel", request: EmbeddingRequest, **fields: Any) -> Context:
    """A context for ``request``: route and candidates resolved, the input's tokens counted
    (the ``prompt_tokens`` label), and a plan of the candidates. Raises before anything runs."""
    route, candidates = resolve(kernel, request.model)
    ctx = Context(request=chat_view(request), route=route, candidates=candidates, **fields)
    ctx.state["kind"] = KIND
    ctx.labels["prompt_tokens"] = sum(tokens.count(t) for t in request.texts)
    timeout = kernel.route_config(route).attempt_timeout_s
    ctx.plan = Plan("fallback", [Step(m, timeout) for m in candidates])
    ctx.decision.update(kind=KIND, requested=request.model, route=route, strategy="fallback",
                        candidates=[m.name for m in candidates],
                        plan=[m.name for m in candidates])
    return ctx


# --- the pipeline ----------------------------------------------------------------------------------

async def run(kernel: "Kernel", ctx: Context, request: EmbeddingRequest) -> Embeddings:
    """Embed ``request`` for ``ctx``: each model of the plan in turn until one answers; the
    request is recorded whatever happens."""
    try:
        limit = kernel.config.server.request_timeout_s
        try:
            with anyio.fail_after(limit):
                result = await _fallback(kernel, ctx, request)
        except TimeoutError:
            raise ProviderTimeout(f"the request took longer than server.request_timeout_s "
                                  f"({limit}s), all attempts together") from None
        ctx.status = "ok"
        return result
    except BaseException as exc:
        kernel._fail(ctx, exc)
        raise
    finally:
        await kernel._record(ctx)


async def _fallback(kernel: "Kernel", ctx: Context, request: EmbeddingRequest) -> Embeddings:
    cache = Cache.of(kernel, ctx, request)
    last: Exception | None = None
    for step in ctx.plan.steps:
        used_up = kernel._attempts_used_up(ctx)
        if used_up is not None:
            ctx.decision.setdefault("escalations", []).append({"action": "stop",
                                                               "reason": used_up})
            break
        try:
            result = await _attempt(kernel, ctx, step, request, cache)
        except ProviderError as exc:
            last = exc
            ctx.decision.setdefault("escalations", []).append(
                {"action": "next", "reason": f"{step.model.name}: {exc.kind}"})
            continue
        if cache is not None and not result.cached:
            await cache.put(result)
        return result
    if last is None:
        raise NoRoute("no model could be tried for this embeddings request.")
    raise last


async def _attempt(kernel: "Kernel", ctx: Context, step: Step, request: EmbeddingRequest,
                   cache: "Cache | None") -> Embeddings:
    """One call: admitted, answered from the cache or the provider, settled; its holds end
    at once on failure, after the answer otherwise."""
    model = step.model
    attempt = Attempt(model=model.name, provider=model.provider, started=time.perf_counter())
    ctx.attempts.append(attempt)
    await kernel._admit(ctx, step, attempt)
    ctx.begin_wait()
    try:
        found = await cache.get() if cache is not None else None
        if found is None:
            scope = anyio.fail_after(step.timeout_s) if step.timeout_s else nullcontext()
            try:
                with scope:
                    found = await _call(kernel, request, model)
            except TimeoutError:
                raise ProviderTimeout(f"{model.name} did not answer within {step.timeout_s}s",
                                      provider=model.provider, model=model.name) from None
            _check(found, request, model)
    except ProviderError as exc:
        attempt.status, attempt.error = "error", f"{exc.kind}: {exc}"
        log.info("attempt_failed", model=model.name, error=exc.kind, detail=str(exc))
        await _ended(kernel, ctx, attempt)
        raise
    except BaseException as exc:
        attempt.status = "cancelled" if not isinstance(exc, Exception) else "error"
        if isinstance(exc, TurnoutError):
            attempt.error = f"{exc.kind}: {exc}"
        await _ended(kernel, ctx, attempt)
        raise
    attempt.latency_s = time.perf_counter() - attempt.started
    ctx.end_wait()
    if not found.usage.input_tokens:
        found.usage = Usage(tokens.prompt_tokens(ctx), 0)
    found.model, found.provider = found.model or model.name, found.provider or model.provider
    found.cost_usd = 0.0 if found.cached else model.cost(found.usage)
    attempt.usage, attempt.cost_usd, attempt.status = found.usage, found.cost_usd, "ok"
    ctx.answered = attempt
    ctx.completion = Completion(content=None, usage=found.usage, model=found.model,
                                provider=found.provider, cost_usd=found.cost_usd,
                                cached=found.cached)
    kernel._end_attempt_later(attempt)
    return found


async def _ended(kernel: "Kernel", ctx: Context, attempt: Attempt) -> None:
    attempt.latency_s = time.perf_counter() - attempt.started
    ctx.end_wait()
    await kernel._end_attempt(attempt)


async def _call(kernel: "Kernel", request: EmbeddingRequest, model: ModelProfile) -> Embeddings:
    provider = kernel.providers.get(model.provider)
    if provider is None:
        raise ProviderMissing(f"no provider named {model.provider!r} is configured for model "
                              f"{model.name!r}; add [providers.{model.provider}] with a kind "
                              f"that embeds (openai, openai-compatible, gemini, simulated)",
                              provider=model.provider, model=model.name)
    return await provider.embed(request, model)


def _check(found: Any, request: EmbeddingRequest, model: ModelProfile) -> None:
    """A provider's answer must hold one vector per text."""
    if not isinstance(found, Embeddings) or len(found.vectors) != len(request.texts):
        got = len(found.vectors) if isinstance(found, Embeddings) else type(found).__name__
        raise ProviderUnavailable(f"{model.provider} answered {got} vectors for "
                                  f"{len(request.texts)} texts", provider=model.provider,
                                  model=model.name)


# --- the cache ---------------------------------------------------------------------------------------

class Cache:
    """The embeddings cache of one request (see the module's docstring)."""

    __slots__ = ("kernel", "ctx", "key", "ttl_s", "lookup", "request")

    def __init__(self, kernel: "Kernel", ctx: Context, request: EmbeddingRequest, key: str,
                 ttl_s: float, lookup: bool) -> None:
        self.kernel, self.ctx, self.request = kernel, ctx, request
        self.key, self.ttl_s, self.lookup = key, ttl_s, lookup

    @classmethod
    def of(cls, kernel: "Kernel", ctx: Context, request: EmbeddingRequest) -> "Cache | None":
        """The request's cache, or None when its route does not cache (or the cache plugin is
        disabled, or the client said ``no-store``)."""
        settings = kernel.plugin_settings("cache")
        route = kernel.route_settings("cache", ctx.route)
        if settings is None or route is None or not settings.enabled or route.cache == "off":
            return None
        header = ctx.headers.get("cache-control") or ""
        directives = {p.split("=", 1)[0].strip().lower() for p in header.split(",")}
        if "no-store" in directives:
            return None
        return cls(kernel, ctx, request, cache_key(request), route.cache_ttl_s,
                   "no-cache" not in directives)

    async def get(self) -> Embeddings | None:
        """The stored vectors (a hit: cost 0), or None; a store error is logged, not raised."""
        if not self.lookup:
            self._mark(False)
            return None
        self.lookup = False  # once per request: a later attempt goes upstream
        try:
            raw = await self.kernel.store.get(self.key)
        except StoreError as exc:
            log.warning("embeddings_cache_failed", error=str(exc))
            raw = None
        found = _entry(raw) if raw is not None else None
        self._mark(found is not None, found)
        return found

    async def put(self, result: Embeddings) -> None:
        """Store fresh vectors under the request's key."""
        data = orjson.dumps({"v": CACHE_VERSION, "vectors": result.vectors,
                             "input": result.usage.input_tokens, "model": result.model,
                             "provider": result.provider, "cost_usd": result.cost_usd})
        try:
            await self.kernel.store.set(self.key, data, ttl_s=self.ttl_s)
        except StoreError as exc:
            log.warning("embeddings_cache_failed", error=str(exc))

    def _mark(self, hit: bool, found: Embeddings | None = None) -> None:
        self.ctx.response_headers["x-turnout-cache"] = "hit" if hit else "miss"
        self.ctx.decision["cache"] = {"hit": True, "saved_usd": found.cost_usd} \
            if hit and found is not None else {"hit": False}
        if found is not None:
            found.cost_usd = 0.0


def cache_key(request: EmbeddingRequest) -> str:
    """``embeddings:<sha256>`` of the model asked for, the texts and the dimensions."""
    canonical = orjson.dumps([request.model, list(request.texts), request.dimensions])
    return "embeddings:" + hashlib.sha256(canonical).hexdigest()


def _entry(raw: bytes) -> Embeddings | None:
    try:
        data = orjson.loads(raw)
        if not isinstance(data, dict) or data.get("v") != CACHE_VERSION:
            return None
        return Embeddings(vectors=data["vectors"], usage=Usage(int(data["input"]), 0),
                          model=data["model"], provider=data["provider"],
                          cost_usd=float(data["cost_usd"]), cached=True)
    except (ValueError, TypeError, KeyError):
        return None
