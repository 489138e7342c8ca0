"""The response cache: an identical request answered again from the shared store, at no cost.

The built-in plugin ``cache``. It answers the ``call`` hook before any provider (``tryfirst``) and
stores finished answers from the ``record`` hook, in ``kernel.store``: with ``[state] backend =
"redis"`` every replica shares one cache and one single-flight lock per request. This is an
exact cache only (same request, same answer); there is no semantic (similar-prompt) cache.

**What is cached.** Per route (``[routes.NAME]``): ``cache = "deterministic"`` (the default)
caches only requests with ``temperature`` 0 or a ``seed`` set, ``"always"`` every request,
``"off"`` none; an entry lives ``cache_ttl_s`` seconds (default 24 h). A model asked for by name
gets the defaults. Only answers of requests that ended ``ok`` are stored: never an error, a
cancelled stream, or an answer a validator failed (a stream's verdicts come after it was sent,
so they are checked here). An answer cut short by ``max_tokens`` (finish_reason ``length``) is
stored like any other: the same request, ``max_tokens`` included, would be cut short again.
Answers whose entry is over ``[cache] max_entry_bytes`` are not stored.

**The key.** ``cache:<sha256>`` of a canonical JSON dump (orjson, keys sorted, unset and null
request and message fields left out) of the request as the client sent it: the model or route
it asked for (not the model that answered), the messages, and every other field, pass-through
extras included, except those in :data:`EXCLUDE`, which do not change the answer. A field not
listed there is part of the key, so a field added later splits entries rather than merging
them. ``metadata`` stays in the key: validators may read it (a ``max_words`` limit), so it can
change which answer is accepted. The caller (API key, ``user``) is not: identical requests
share an answer whoever sent them.

**Cache-Control.** A request header ``Cache-Control: no-cache`` (a token, any case) skips the
lookup and the single-flight wait but stores the fresh answer, as HTTP means it; ``no-store``
skips the cache entirely (no lookup, nothing stored, no header).

**The answer.** A hit is a Completion with ``cached=True``, ``cost_usd`` 0 and the usage the
provider originally reported; the decision record gets ``cache = {"hit": true, "saved_usd":
<the original cost>}`` (plus ``waited_s`` when it waited for an identical request in flight),
a cacheable miss ``{"hit": false}``. For a streaming request the kernel replays the hit as
chunks. A hit that a validator refuses is not served again to that request: its next attempt
goes upstream, and that answer replaces the entry. The response header ``x-turnout-cache`` is
``hit`` or ``miss`` for requests the route caches (``miss`` for ``no-cache`` too), and absent for
the rest (cache off, not deterministic, ``no-store``, ``[cache] enabled = false``).

**Single flight.** Identical requests that arrive together make one upstream call. A miss takes
the lock ``cache-lock:<sha256>`` (``try_lock``, TTL ``lock_wait_s``) and goes upstream; its
``record`` stores the answer and only then releases the lock, whatever became of the request.
An identical request finding the lock held polls the store until the entry appears (a hit),
the lock is free (it takes it and goes upstream: the leader failed), or it has waited
``lock_wait_s`` (at most half the attempt's timeout, so it has time left to call upstream
itself, which it then does without the lock).

**Cost of a miss.** A request the route does not cache costs a read of the route's settings. A
cacheable miss costs the key (a dump and a hash) and one store operation (``get_or_lock``); its
``record`` one more (``set_and_unlock``). A store error never fails a request: it is logged and
the request goes upstream uncached.
"""

from __future__ import annotations

import hashlib
import time
import uuid
from typing import Any, Literal

import anyio
import orjson
import structlog
from pydantic import BaseModel, ConfigDict, Field

from turnout.kernel.hookspecs import hookimpl
from turnout.kernel.store import StoreError
from turnout.kernel.types import Completion, Context, Step, Usage

log = structlog.get_logger("turnout.cache")

EXCLUDE = frozenset({"stream", "stream_options", "user", "store", "service_tier"})
"""Request fields left out of the key because they do not change the answer: whether it is
streamed (a hit replays either way) and with which options, who the end user is, whether OpenAI
keeps the completion, and which processing tier serves it. Every other field is in the key."""

HEADER = "x-turnout-cache"
POLL_FIRST_S = 0.005
"""First pause of a request waiting for an identical one in flight; doubles up to POLL_MAX_S."""
POLL_MAX_S = 0.05
ENTRY_VERSION = 2


class CacheSettings(BaseModel):
    """The response cache, the ``[cache]`` table (per route: ``cache`` and ``cache_ttl_s``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = Field(default=True, description="Answer repeated requests from the shared "
                          "store. False: nothing is cached, whatever routes.NAME.cache says.")
    max_entry_bytes: int = Field(default=1_000_000, ge=1, description="Answers whose stored "
                                 "entry is larger than this many bytes are not cached.")
    lock_wait_s: float = Field(default=30.0, gt=0, description="How long a request waits for "
                               "an identical one in flight to store its answer (at most half the "
                               "attempt's timeout) before calling upstream itself; also the TTL "
                               "of that request's lock, should its replica die.")


class CacheRouteSettings(BaseModel):
    """What a route caches, and for how long: keys of ``[routes.NAME]``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    cache: Literal["deterministic", "always", "off"] = Field(
        default="deterministic", description="Which requests are answered from the cache: "
        "'deterministic' those with temperature 0 or a seed, 'always' all, 'off' none.")
    cache_ttl_s: float = Field(default=86400.0, gt=0, description="Seconds a cached answer is "
                               "served before the request goes upstream again.")


def cache_control(value: str) -> set[str]:
    """The directives of a Cache-Control header value, lower case, without their arguments."""
    return {part.split("=", 1)[0].strip().lower() for part in value.split(",")}


def cache_key(ctx: Context) -> str:
    """The entry's key: a hash of everything in the request that changes the answer."""
    canonical = ctx.request.model_dump(exclude=EXCLUDE, exclude_none=True)
    digest = hashlib.sha256(orjson.dumps(canonical, option=orjson.OPT_SORT_KEYS)).hexdigest()
    return f"cache:{digest}"


def entry(completion: Completion) -> bytes:
    """A finished answer as stored (with its other choices, when ``n`` asked for several)."""
    usage = completion.usage
    return orjson.dumps({
        "v": ENTRY_VERSION, **_choice(completion),
        "choices": [_choice(c) for c in completion.choices or ()],
        "system_fingerprint": completion.system_fingerprint,
        "usage": {"input": usage.input_tokens, "output": usage.output_tokens,
                  "details": usage.details},
        "model": completion.model, "provider": completion.provider,
        "cost_usd": completion.cost_usd, "stored_at": time.time()})


def _choice(completion: Completion) -> dict[str, Any]:
    return {"content": completion.content, "tool_calls": completion.tool_calls,
            "finish_reason": completion.finish_reason, "refusal": completion.refusal,
            "logprobs": completion.logprobs}


def _choice_of(data: dict[str, Any]) -> dict[str, Any]:
    return {"content": data["content"], "finish_reason": data["finish_reason"],
            "tool_calls": data["tool_calls"], "refusal": data["refusal"],
            "logprobs": data["logprobs"]}


def answer(raw: bytes) -> tuple[Completion, float] | None:
    """A stored entry as a cached Completion (cost 0) and what it cost first; None for an
    entry this version cannot read (another version's, or damaged: it is replaced)."""
    try:
        data = orjson.loads(raw)
        if not isinstance(data, dict) or data.get("v") != ENTRY_VERSION:
            return None
        usage = data["usage"]
        others = [Completion(**_choice_of(c), model=data["model"], provider=data["provider"],
                             cached=True) for c in data["choices"]]
        return Completion(
            **_choice_of(data), system_fingerprint=data["system_fingerprint"],
            usage=Usage(int(usage["input"]), int(usage["output"]), usage["details"]),
            model=data["model"], provider=data["provider"], cost_usd=0.0, cached=True,
            choices=others or None), float(data["cost_usd"])
    except (ValueError, TypeError, KeyError):  # orjson.JSONDecodeError is a ValueError
        return None


class ResponseCache:
    """Answers repeated requests from the shared store; one upstream call per identical burst.

    Per-request state lives in ``ctx.state["cache"]``: the key, the lock token while this
    request leads (None otherwise), whether it may store its answer, and whether it was a hit.
    """

    name = "cache"
    Settings = CacheSettings
    RouteSettings = CacheRouteSettings

    def __init__(self) -> None:
        self.kernel: Any = None
        self.settings = CacheSettings()
        self._name = self.name

    @hookimpl
    def startup(self, kernel: Any) -> None:
        self.kernel = kernel
        self._name = kernel.plugins.name_of(self) or self.name
        self.settings = kernel.plugin_settings(self) or CacheSettings()

    # --- call: the lookup ----------------------------------------------------------------------

    @hookimpl(tryfirst=True)
    def call(self, ctx: Context, step: Step) -> Any:
        """None at once for a request this route does not cache; otherwise the lookup (a
        coroutine the kernel awaits)."""
        state = ctx.state.get("cache")
        if state is not None:  # a later attempt: looked up already (and may lead)
            if state["hit"]:  # the cached answer was refused by a validator: go upstream
                state["hit"] = False
                ctx.response_headers[HEADER] = "miss"
                ctx.decision["cache"] = {"hit": False, "refused_hit": True}
            return None
        if not self.settings.enabled or self.kernel is None:
            return None
        route = self.kernel.route_settings(self._name, ctx.route)
        # An alert rule's enable_cache action turns the cache on while its alert lasts.
        mode = ctx.state.get("alerts.cache") or route.cache
        if mode == "off":
            return None
        if mode == "deterministic":
            request = ctx.request
            if request.temperature != 0 and request.seed is None:
                return None
        header = ctx.headers.get("cache-control")
        directives = cache_control(header) if header else ()
        if "no-store" in directives:
            return None
        return self._lookup(ctx, step, route.cache_ttl_s, "no-cache" in directives)

    async def _lookup(self, ctx: Context, step: Step, ttl_s: float,
                      no_cache: bool) -> Completion | None:
        key = cache_key(ctx)
        state: dict[str, Any] = {"key": key, "ttl_s": ttl_s, "token": None, "hit": False}
        ctx.state["cache"] = state
        ctx.response_headers[HEADER] = "miss"
        ctx.decision["cache"] = {"hit": False, "no_cache": True} if no_cache else {"hit": False}
        if no_cache:
            return None
        store = self.kernel.store
        try:
            raw = await self._lead_or_wait(ctx, step, store, key, state)
        except StoreError as exc:
            log.warning("cache_store_failed", error=str(exc), request_id=ctx.request_id)
            return None
        if raw is None:
            return None
        found = answer(raw)
        if found is None:
            return None
        completion, saved = found
        state["hit"] = True
        ctx.response_headers[HEADER] = "hit"
        decision: dict[str, Any] = {"hit": True, "saved_usd": saved}
        if "waited_s" in state:
            decision["waited_s"] = state["waited_s"]
        ctx.decision["cache"] = decision
        return completion

    async def _lead_or_wait(self, ctx: Context, step: Step, store: Any, key: str,
                            state: dict[str, Any]) -> bytes | None:
        """The entry's bytes if there is one; else take the single-flight lock (None: go
        upstream and lead), or wait for the entry an identical request in flight stores."""
        lock_key = "cache-lock:" + key.removeprefix("cache:")
        state["lock"] = lock_key
        ttl = self.settings.lock_wait_s
        token = uuid.uuid4().hex
        state["token"] = token  # before taking it: a cancellation in between still releases it
        raw, taken = await store.get_or_lock(key, lock_key, token, ttl)
        if taken:
            return None
        state["token"] = None
        if raw is not None:
            return raw
        wait_s = ttl if not step.timeout_s else min(ttl, step.timeout_s / 2)
        started = anyio.current_time()
        deadline = started + wait_s
        pause = POLL_FIRST_S
        while True:
            left = deadline - anyio.current_time()
            if left <= 0:
                log.info("cache_wait_gave_up", waited_s=wait_s, request_id=ctx.request_id)
                return None  # upstream without the lock; the answer is still stored
            await anyio.sleep(min(pause, left))
            pause = min(pause * 2, POLL_MAX_S)
            raw = await store.get(key)
            if raw is not None:
                state["waited_s"] = round(anyio.current_time() - started, 4)
                return raw
            state["token"] = token
            if await store.try_lock(lock_key, token, ttl):
                # The leader ended without an answer, or stored it and unlocked just now.
                raw = await store.get(key)
                if raw is not None:
                    state["token"] = None
                    await store.unlock(lock_key, token)
                    state["waited_s"] = round(anyio.current_time() - started, 4)
                return raw
            state["token"] = None

    # --- record: store the answer, release the lock ---------------------------------------------

    @hookimpl
    def record(self, ctx: Context) -> Any:
        """None at once for a request the cache did not look up; otherwise the store (a
        coroutine the kernel awaits)."""
        state = ctx.state.get("cache")
        if state is None or state["hit"]:
            return None
        return self._store(ctx, state)

    async def _store(self, ctx: Context, state: dict[str, Any]) -> None:
        store = self.kernel.store
        try:
            data = self._entry(ctx)
            if data is not None:
                if len(data) <= self.settings.max_entry_bytes:
                    token, state["token"] = state["token"], None
                    if token is None:
                        await store.set(state["key"], data, ttl_s=state["ttl_s"])
                    else:  # publish and let the waiters in, in one step
                        await store.set_and_unlock(state["key"], data, ttl_s=state["ttl_s"],
                                                   lock=state["lock"], token=token)
                else:
                    log.info("cache_entry_too_large", size=len(data),
                             limit=self.settings.max_entry_bytes, request_id=ctx.request_id)
        except StoreError as exc:
            log.warning("cache_store_failed", error=str(exc), request_id=ctx.request_id)
        finally:
            token = state["token"]
            if token is not None:
                state["token"] = None
                try:
                    await store.unlock(state["lock"], token)
                except StoreError as exc:  # it expires after lock_wait_s anyway
                    log.warning("cache_unlock_failed", error=str(exc), request_id=ctx.request_id)

    @staticmethod
    def _entry(ctx: Context) -> bytes | None:
        """The request's answer as an entry, or None when it may not be cached: it did not end
        ok, came from a cache, a validator failed it (a stream's verdicts are recorded, not
        acted on), or it does not serialise."""
        completion = ctx.completion
        if ctx.status != "ok" or completion is None or completion.cached:
            return None
        last = ctx.answering
        if last is not None and not all(v.ok for v in last.verdicts):
            return None
        try:
            return entry(completion)
        except TypeError as exc:  # orjson.JSONEncodeError: something a provider left unparsed
            log.info("cache_entry_unserialisable", error=str(exc), request_id=ctx.request_id)
            return None
