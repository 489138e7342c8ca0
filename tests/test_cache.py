"""The response cache: which requests it answers, its key, TTL, Cache-Control, what a hit costs,
single flight (one upstream call for a burst of identical requests), over HTTP with the OpenAI
SDK, and shared by two replicas through the real Redis store.

Every test counts the calls that reach the fake upstream, so a cache that answers too much or too
little fails it.
"""

from __future__ import annotations

import hashlib
import time

import anyio
import orjson
import pytest
import redis

from turnout.adapters.stores.memory import MemoryStore
from turnout.kernel.config import parse
from turnout.kernel.errors import ConfigError, ProviderBadRequest
from turnout.kernel.hookspecs import hookimpl
from turnout.kernel.kernel import BUILTINS, Kernel
from turnout.kernel.store import StoreError
from turnout.kernel.types import Chunk, Completion, Context, Usage, Verdict
from turnout.plugins.cache import EXCLUDE, HEADER, ResponseCache, cache_control, cache_key

from .gateway import running_gateway
from .redis_support import prefix_fixture, redis_url_fixture  # noqa: F401 - redis_url, prefix
from .store_contract import FakeClock
from .support import ROUTING, ask, collect

pytestmark = pytest.mark.anyio

CACHED = {**ROUTING, "cache": "turnout.plugins.cache:ResponseCache"}
"""The routing built-ins and the cache: no recorder, no budgets, no metrics."""

COST = (10 * 1 + 5 * 2) / 1e6
"""What an answer of the fake upstream costs on ``small`` (10 tokens in, 5 out)."""

CONFIG = {
    "providers": {"p": {"kind": "openai-compatible", "base_url": "http://127.0.0.1:9/v1"}},
    "models": {"small": {"provider": "p", "input_price": 1, "output_price": 2},
               "big": {"provider": "p", "input_price": 10, "output_price": 20}},
    "routes": {"chain": {"models": ["small", "big"]}},
    "routing": {"default": "chain"},
}


class Upstream:
    """Stands in for every provider: answers "answer N" (N: its call count) after ``delay``
    seconds (or the Nth of a list of delays), streamed as two parts for a streaming request; its
    first ``fail`` calls refuse (a bad request, which the fallback does not retry)."""

    def __init__(self, delay: float | list[float] = 0.0, fail: int = 0,
                 text: str | None = None) -> None:
        self.calls = 0
        self.delay, self.fail, self.text = delay, fail, text

    @hookimpl
    async def call(self, ctx, step):
        self.calls += 1
        n = self.calls
        delay = self.delay[n - 1] if isinstance(self.delay, list) else self.delay
        if delay:
            await anyio.sleep(delay)
        if n <= self.fail:
            raise ProviderBadRequest("refused by the test", provider="p", model=step.model.name)
        text = self.text if self.text is not None else f"answer {n}"
        if ctx.request.stream:
            return _stream(text)
        return Completion(content=text, usage=Usage(10, 5))


async def _stream(text: str):
    half = len(text) // 2
    yield Chunk(role="assistant", content=text[:half])
    yield Chunk(content=text[half:])
    yield Chunk(finish_reason="stop", usage=Usage(10, 5))


def cache_kernel(upstream: Upstream, *, route: dict | None = None, cache: dict | None = None,
                 state: dict | None = None, routes: dict | None = None) -> Kernel:
    """A kernel with the cache over the fake upstream; ``route`` adds keys to the route ``chain``,
    ``cache`` is the ``[cache]`` table."""
    tree = {**CONFIG, "routes": {"chain": {"models": ["small", "big"], **(route or {})},
                                 **(routes or {})}}
    if cache is not None:
        tree["cache"] = cache
    if state is not None:
        tree["state"] = state
    kernel = Kernel(parse(tree, source="test"), builtins=CACHED)
    kernel.plugins.register(upstream, name="upstream")
    kernel.load_plugins()
    return kernel


def det(text: str = "hello", **kw):
    """A deterministic request (temperature 0), cacheable by default."""
    return ask(text, **{"temperature": 0, **kw})


# --- which requests are cached -----------------------------------------------------------------


async def test_an_alert_action_turns_the_cache_on_for_a_route_that_has_it_off() -> None:
    class EnableCache:  # what the alert rules' enable_cache action does while its alert lasts
        on = True

        @hookimpl
        def filter_candidates(self, ctx):
            if self.on:
                ctx.state["alerts.cache"] = "always"

    upstream, action = Upstream(), EnableCache()
    kernel = cache_kernel(upstream, route={"cache": "off"})
    kernel.plugins.register(action, name="enable_cache")
    async with kernel:
        warm = [await kernel.ask(ask(model="chain", temperature=0.7)) for _ in range(2)]
        action.on = False
        cold = await kernel.ask(ask(model="chain", temperature=0.7))
    assert [a.content for a in warm] == ["answer 1", "answer 1"] and warm[1].headers == {
        "x-turnout-cache": "hit"}
    assert cold.content == "answer 2" and "x-turnout-cache" not in cold.headers


async def test_deterministic_default_caches_temperature_zero_and_seeded_requests_only() -> None:
    upstream = Upstream()
    async with cache_kernel(upstream) as kernel:
        first = await kernel.ask(det())
        again = await kernel.ask(det())
        assert upstream.calls == 1
        assert (first.headers[HEADER], again.headers[HEADER]) == ("miss", "hit")
        assert again.content == first.content == "answer 1" and again.completion.cached

        seeded = [await kernel.ask(ask("seeded", seed=7, temperature=0.9)) for _ in range(2)]
        assert upstream.calls == 2
        assert [a.headers[HEADER] for a in seeded] == ["miss", "hit"]

        for kw in ({"temperature": 0.7}, {}):  # sampled, or the provider's default temperature
            answers = [await kernel.ask(ask("sampled", **kw)) for _ in range(2)]
            assert [HEADER in a.headers for a in answers] == [False, False]
            assert "cache" not in answers[0].decision
        assert upstream.calls == 6


async def test_always_caches_every_request_and_off_none() -> None:
    upstream = Upstream()
    routes = {"hot": {"models": ["small"], "cache": "always"},
              "cold": {"models": ["small"], "cache": "off"}}
    async with cache_kernel(upstream, routes=routes) as kernel:
        hot = [await kernel.ask(ask("hi", model="hot", temperature=1.2)) for _ in range(3)]
        assert upstream.calls == 1
        assert [a.headers.get(HEADER) for a in hot] == ["miss", "hit", "hit"]
        cold = [await kernel.ask(det("hi", model="cold")) for _ in range(2)]
        assert upstream.calls == 3
        assert [a.headers.get(HEADER) for a in cold] == [None, None]


async def test_a_model_asked_for_by_name_gets_the_defaults() -> None:
    upstream = Upstream()
    async with cache_kernel(upstream, route={"cache": "off"}) as kernel:
        answers = [await kernel.ask(det(model="small")) for _ in range(2)]
        assert [a.headers.get(HEADER) for a in answers] == ["miss", "hit"]
        assert [a.content for a in answers] == ["answer 1", "answer 1"]
        await kernel.ask(ask(model="small", temperature=0.5))
        assert upstream.calls == 2


async def test_disabled_caches_nothing() -> None:
    upstream = Upstream()
    async with cache_kernel(upstream, cache={"enabled": False}, route={"cache": "always"}) \
            as kernel:
        answers = [await kernel.ask(det()) for _ in range(2)]
    assert upstream.calls == 2 and [HEADER in a.headers for a in answers] == [False, False]


# --- TTL ---------------------------------------------------------------------------------------


async def test_an_entry_expires_after_the_routes_ttl() -> None:
    upstream, clock = Upstream(), FakeClock()
    async with cache_kernel(upstream, route={"cache_ttl_s": 60}) as kernel:
        kernel.store = MemoryStore(clock=clock)  # the same store, on a clock the test moves
        assert (await kernel.ask(det())).headers[HEADER] == "miss"
        clock.advance(59)
        still = await kernel.ask(det())
        assert still.headers[HEADER] == "hit" and still.content == "answer 1"
        clock.advance(2)
        fresh = await kernel.ask(det())
        assert fresh.headers[HEADER] == "miss" and fresh.content == "answer 2"
        assert (await kernel.ask(det())).content == "answer 2"
    assert upstream.calls == 2


async def test_default_ttl_is_a_day() -> None:
    upstream, clock = Upstream(), FakeClock()
    async with cache_kernel(upstream) as kernel:
        kernel.store = MemoryStore(clock=clock)
        await kernel.ask(det())
        clock.advance(86_399)
        assert (await kernel.ask(det())).headers[HEADER] == "hit"
        clock.advance(2)
        assert (await kernel.ask(det())).headers[HEADER] == "miss"
    assert upstream.calls == 2


# --- Cache-Control -----------------------------------------------------------------------------


async def test_no_cache_skips_the_lookup_and_stores_the_fresh_answer() -> None:
    upstream = Upstream()
    async with cache_kernel(upstream) as kernel:
        await kernel.ask(det())
        fresh = await kernel.ask(det(), headers={"cache-control": "max-age=0, No-Cache"})
        assert upstream.calls == 2
        assert fresh.content == "answer 2" and fresh.headers[HEADER] == "miss"
        assert fresh.decision["cache"] == {"hit": False, "no_cache": True}
        later = await kernel.ask(det())
        assert later.headers[HEADER] == "hit" and later.content == "answer 2"
    assert upstream.calls == 2


async def test_no_store_neither_looks_up_nor_stores() -> None:
    upstream = Upstream()
    async with cache_kernel(upstream) as kernel:
        bypass = await kernel.ask(det(), headers={"cache-control": "no-store"})
        assert HEADER not in bypass.headers and "cache" not in bypass.decision
        first = await kernel.ask(det())
        assert first.headers[HEADER] == "miss" and first.content == "answer 2"
        again = await kernel.ask(det(), headers={"cache-control": "no-store"})
        assert again.content == "answer 3"
    assert upstream.calls == 3


def test_cache_control_directives_are_tokens_any_case() -> None:
    assert cache_control("No-Cache") == {"no-cache"}
    assert cache_control("max-age=0, no-store") == {"max-age", "no-store"}
    assert "no-cache" not in cache_control("no-cachet, private")


# --- what a hit is -----------------------------------------------------------------------------


async def test_a_hit_costs_nothing_and_records_what_it_saved() -> None:
    upstream = Upstream()
    async with cache_kernel(upstream) as kernel:
        first = await kernel.ask(det())
        hit = await kernel.ask(det())
    assert first.cost_usd == pytest.approx(COST) and first.decision["cache"] == {"hit": False}
    assert hit.cost_usd == 0 and hit.completion.cost_usd == 0 and hit.completion.cached
    assert hit.decision["cache"] == {"hit": True, "saved_usd": pytest.approx(COST)}
    assert (hit.input_tokens, hit.output_tokens) == (10, 5)  # usage as first reported
    assert (hit.completion.usage.input_tokens, hit.completion.usage.output_tokens) == (10, 5)
    assert (hit.model, hit.provider) == ("small", "p")
    assert upstream.calls == 1


async def test_every_parameter_that_changes_the_answer_is_another_entry() -> None:
    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
    variants = [
        {}, {"max_tokens": 50}, {"max_completion_tokens": 50}, {"tools": [tool]},
        {"tools": [tool], "tool_choice": "required"}, {"top_p": 0.5}, {"seed": 1},
        {"stop": ["END"]}, {"response_format": {"type": "json_object"}},
        {"presence_penalty": 0.5}, {"frequency_penalty": 0.5}, {"logit_bias": {"42": 1}},
        {"logprobs": True}, {"logprobs": True, "top_logprobs": 2},
        {"reasoning_effort": "low"}, {"parallel_tool_calls": False},
        {"metadata": {"max_words": "5"}},
    ]
    upstream = Upstream(text='{"ok": true}')
    async with cache_kernel(upstream) as kernel:
        for kw in variants:
            assert (await kernel.ask(det(**kw))).headers[HEADER] == "miss", kw
        assert upstream.calls == len(variants)
        assert (await kernel.ask(det("other words"))).headers[HEADER] == "miss"
        assert (await kernel.ask(det(model="small"))).headers[HEADER] == "miss"  # not "auto"
        assert (await kernel.ask(det(model="chain"))).headers[HEADER] == "miss"
        assert upstream.calls == len(variants) + 3
        for kw in variants:  # each one is its own entry now
            assert (await kernel.ask(det(**kw))).headers[HEADER] == "hit", kw
    assert upstream.calls == len(variants) + 3


async def test_fields_that_do_not_change_the_answer_share_the_entry() -> None:
    assert EXCLUDE == {"stream", "stream_options", "user", "store", "service_tier"}
    upstream = Upstream()
    async with cache_kernel(upstream) as kernel:
        await kernel.ask(det())
        for kw in ({"user": "alice"}, {"store": True}, {"service_tier": "flex"},
                   {"stream": False}, {"temperature": 0.0}):
            assert (await kernel.ask(det(**kw))).headers[HEADER] == "hit", kw
        stream = await kernel.ask_stream(det(stream=True, stream_options={"include_usage": True}))
        chunks = await collect(stream)
        assert stream.answer.headers[HEADER] == "hit"
        assert "".join(c.content or "" for c in chunks) == "answer 1"
    assert upstream.calls == 1


async def test_the_key_ignores_key_order_in_objects() -> None:
    schema_a = {"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]}
    schema_b = {"required": ["a"], "properties": {"a": {"type": "string"}}, "type": "object"}
    upstream = Upstream(text='{"a": "x"}')
    async with cache_kernel(upstream) as kernel:
        for schema in (schema_a, schema_b):
            await kernel.ask(det(response_format={"type": "json_schema", "json_schema": {
                "name": "s", "schema": schema}}))
    assert upstream.calls == 1


# --- what is stored ----------------------------------------------------------------------------


async def test_failures_are_not_cached_and_release_the_lock_at_once() -> None:
    upstream = Upstream(fail=2)  # both models refuse the first request
    async with cache_kernel(upstream, cache={"lock_wait_s": 30}) as kernel:
        with pytest.raises(ProviderBadRequest):
            await kernel.ask(det())
        started = time.perf_counter()
        after = await kernel.ask(det())
        assert time.perf_counter() - started < 1  # not held up by the failed leader's lock
        assert after.headers[HEADER] == "miss" and after.content == "answer 3"
        assert (await kernel.ask(det())).headers[HEADER] == "hit"
    assert upstream.calls == 3


async def test_an_answer_that_failed_validation_is_never_cached() -> None:
    # Not JSON when JSON was asked for: the json validator fails it. Whole answers fall back to
    # big (and only that answer is stored); a stream's verdict comes after it was sent.
    upstream = Upstream(text="not json")
    async with cache_kernel(upstream) as kernel:
        wants_json = {"response_format": {"type": "json_object"}}
        with pytest.raises(Exception, match="validation"):
            await kernel.ask(det(**wants_json))
        assert upstream.calls == 2
        stream = await kernel.ask_stream(det(stream=True, **wants_json))
        await collect(stream)
        assert stream.ctx.status == "ok" and upstream.calls == 3
        again = await kernel.ask_stream(det(stream=True, **wants_json))
        await collect(again)
        assert again.answer.headers[HEADER] == "miss"
    assert upstream.calls == 4


async def test_a_cached_answer_a_validator_refuses_is_replaced() -> None:
    refuse = {"on": False}

    def picky(ctx, completion):
        return Verdict(not (refuse["on"] and completion.cached), "picky", "no cached answers")

    class Picky:
        @hookimpl
        def register_validators(self, register):
            register("picky", picky)

    upstream = Upstream()
    tree = {**CONFIG, "routes": {"chain": {"models": ["small", "big"], "validators": ["picky"]}}}
    kernel = Kernel(parse(tree, source="test"), builtins=CACHED)
    kernel.plugins.register(Picky(), name="picky")
    kernel.plugins.register(upstream, name="upstream")
    kernel.load_plugins()
    async with kernel:
        await kernel.ask(det())
        refuse["on"] = True
        replaced = await kernel.ask(det())
        assert replaced.content == "answer 2" and not replaced.completion.cached
        assert replaced.decision["cache"] == {"hit": False, "refused_hit": True}
        assert replaced.headers[HEADER] == "miss"
        refuse["on"] = False
        assert (await kernel.ask(det())).content == "answer 2"  # the entry was replaced
    assert upstream.calls == 2


async def test_answers_over_max_entry_bytes_are_not_stored() -> None:
    upstream = Upstream(text="x" * 2000)
    async with cache_kernel(upstream, cache={"max_entry_bytes": 1000}) as kernel:
        answers = [await kernel.ask(det()) for _ in range(2)]
    assert [a.headers[HEADER] for a in answers] == ["miss", "miss"] and upstream.calls == 2


async def test_a_store_error_never_fails_the_request() -> None:
    class Broken(MemoryStore):
        async def get(self, key):
            raise StoreError("the store is down")

    upstream = Upstream()
    async with cache_kernel(upstream) as kernel:
        kernel.store = Broken()
        answers = [await kernel.ask(det()) for _ in range(2)]
    assert [a.content for a in answers] == ["answer 1", "answer 2"]


async def test_a_damaged_entry_is_a_miss_and_is_replaced() -> None:
    upstream = Upstream()
    async with cache_kernel(upstream) as kernel:
        key = cache_key(Context(request=det()))
        for damaged in (b"not json", b'{"v": 1}', b'{"v": 999, "content": "from the future"}'):
            await kernel.store.set(key, damaged)
            missed = await kernel.ask(det())
            assert missed.headers[HEADER] == "miss" and missed.content.startswith("answer")
            hit = await kernel.ask(det())
            assert hit.headers[HEADER] == "hit" and hit.content == missed.content
    assert upstream.calls == 3


async def test_subrequests_are_cached_like_any_request() -> None:
    upstream = Upstream()
    async with cache_kernel(upstream) as kernel:
        parent = kernel.context(ask("the parent"))
        first = await kernel.subrequest(parent, det("a part"))
        second = await kernel.subrequest(parent, det("a part"))
    assert (first.content, second.content) == ("answer 1", "answer 1") and second.cached
    assert upstream.calls == 1
    # The parent's own answer was not served from the cache: the header is not the parent's.
    assert HEADER not in parent.response_headers
    assert [c.response_headers[HEADER] for c in parent.children] == ["miss", "hit"]


# --- streams -----------------------------------------------------------------------------------


async def test_a_streamed_answer_is_cached_and_replayed_as_a_stream() -> None:
    upstream = Upstream()
    async with cache_kernel(upstream) as kernel:
        first = await kernel.ask_stream(det(stream=True))
        parts = await collect(first)
        assert first.answer.headers[HEADER] == "miss" and len(parts) == 3
        again = await kernel.ask_stream(det(stream=True))
        replayed = await collect(again)
        assert again.answer.headers[HEADER] == "hit"
        assert "".join(c.content or "" for c in replayed) == "answer 1"
        assert replayed[0].role == "assistant" and replayed[-1].finish_reason == "stop"
        assert (replayed[-1].usage.input_tokens, replayed[-1].usage.output_tokens) == (10, 5)
        assert again.answer.decision["cache"] == {"hit": True, "saved_usd": pytest.approx(COST)}
        whole = await kernel.ask(det())  # and a whole answer from the streamed entry
        assert whole.headers[HEADER] == "hit" and whole.content == "answer 1"
    assert upstream.calls == 1


async def test_a_streamed_hit_costs_nothing() -> None:
    upstream = Upstream()
    async with cache_kernel(upstream) as kernel:
        await kernel.ask(det())
        again = await kernel.ask_stream(det(stream=True))
        await collect(again)
    assert again.answer.cost_usd == 0 and again.ctx.completion.cached


# --- single flight -----------------------------------------------------------------------------


async def test_fifty_identical_concurrent_requests_make_one_upstream_call() -> None:
    upstream = Upstream(delay=0.2)
    answers = []
    async with cache_kernel(upstream) as kernel:
        async def one() -> None:
            answers.append(await kernel.ask(det()))

        async with anyio.create_task_group() as tg:
            for _ in range(50):
                tg.start_soon(one)
        assert upstream.calls == 1
        assert [a.content for a in answers] == ["answer 1"] * 50
        headers = sorted(a.headers[HEADER] for a in answers)
        assert headers == ["hit"] * 49 + ["miss"]
        assert all(a.cost_usd == 0 for a in answers if a.headers[HEADER] == "hit")
        waited = [a.decision["cache"]["waited_s"] for a in answers if "waited_s" in
                  a.decision["cache"]]
        assert len(waited) == 49 and all(0 < w < 1 for w in waited)


async def test_concurrent_streams_and_whole_requests_share_one_call() -> None:
    upstream = Upstream(delay=0.2)
    contents = []
    async with cache_kernel(upstream) as kernel:
        async def one(i: int) -> None:
            if i % 2:
                stream = await kernel.ask_stream(det(stream=True))
                contents.append("".join(c.content or "" for c in await collect(stream)))
            else:
                contents.append((await kernel.ask(det())).content)

        async with anyio.create_task_group() as tg:
            for i in range(10):
                tg.start_soon(one, i)
    assert upstream.calls == 1 and contents == ["answer 1"] * 10


async def test_when_the_leader_fails_one_waiter_takes_over() -> None:
    upstream = Upstream(delay=0.2, fail=1)
    results = []
    async with cache_kernel(upstream, route={"models": ["small"]}) as kernel:
        async def one() -> None:
            try:
                results.append((await kernel.ask(det())).content)
            except ProviderBadRequest:
                results.append("failed")

        async with anyio.create_task_group() as tg:
            for _ in range(5):
                tg.start_soon(one)
    assert upstream.calls == 2
    assert sorted(results) == ["answer 2"] * 4 + ["failed"]


async def test_waiters_give_up_after_lock_wait_s_and_call_upstream() -> None:
    upstream = Upstream(delay=0.5)
    async with cache_kernel(upstream, cache={"lock_wait_s": 0.1}) as kernel:
        async with anyio.create_task_group() as tg:
            for _ in range(3):
                tg.start_soon(kernel.ask, det())
        assert upstream.calls == 3  # the two waiters went upstream after 0.1 s
        assert (await kernel.ask(det())).headers[HEADER] == "hit"
    assert upstream.calls == 3


async def test_waiting_is_at_most_half_the_attempt_timeout() -> None:
    upstream = Upstream(delay=[0.8, 0.1])  # the leader is slow, the waiter's own call is not
    answers = []
    route = {"attempt_timeout_s": 1.0}
    async with cache_kernel(upstream, route=route, cache={"lock_wait_s": 30}) as kernel:
        async def one(pause: float) -> None:
            await anyio.sleep(pause)
            answers.append(await kernel.ask(det()))

        async with anyio.create_task_group() as tg:
            tg.start_soon(one, 0)
            tg.start_soon(one, 0.05)
    # The waiter gave up after 0.5 s (not lock_wait_s) and answered itself within its timeout.
    assert upstream.calls == 2 and [a.attempts for a in answers] == [1, 1]
    assert [a.content for a in answers] == ["answer 2", "answer 1"]


# --- settings ----------------------------------------------------------------------------------


def test_route_and_plugin_settings_are_validated() -> None:
    for route, cache in (({"cache": "sometimes"}, None), ({"cache_ttl_s": 0}, None),
                         (None, {"lock_wait_s": 0}), (None, {"max_entry_bytes": 0}),
                         (None, {"ttl": 5})):
        with pytest.raises(ConfigError):
            cache_kernel(Upstream(), route=route, cache=cache)
    kernel = cache_kernel(Upstream(), route={"cache": "always", "cache_ttl_s": 5})
    plugin = kernel.plugins.get("cache")
    assert isinstance(plugin, ResponseCache)
    assert kernel.route_settings(plugin, "chain").cache == "always"
    assert kernel.route_settings(plugin, "chain").cache_ttl_s == 5
    defaults = kernel.route_settings(plugin, "small")
    assert (defaults.cache, defaults.cache_ttl_s) == ("deterministic", 86400)
    settings = ResponseCache.Settings()
    assert (settings.enabled, settings.max_entry_bytes, settings.lock_wait_s) == \
        (True, 1_000_000, 30)
    assert BUILTINS["cache"] == "turnout.plugins.cache:ResponseCache"


# --- over HTTP, with the OpenAI SDK ------------------------------------------------------------


def test_over_http_a_miss_then_a_hit_and_a_stream_replayed(tmp_path) -> None:
    upstream = Upstream()
    with running_gateway(CONFIG, tmp_path, plugins={"upstream": upstream}) as gw:
        client = gw.client()
        messages = [{"role": "user", "content": "over http"}]
        first = client.chat.completions.with_raw_response.create(
            model="chain", messages=messages, temperature=0)
        second = client.chat.completions.with_raw_response.create(
            model="chain", messages=messages, temperature=0)
        assert first.headers[HEADER] == "miss" and second.headers[HEADER] == "hit"
        assert second.parse().choices[0].message.content == \
            first.parse().choices[0].message.content == "answer 1"
        assert float(second.headers["x-turnout-cost-usd"]) == 0
        assert second.parse().usage.prompt_tokens == 10
        assert upstream.calls == 1

        streamed = [client.chat.completions.with_raw_response.create(
            model="chain", messages=[{"role": "user", "content": "streamed"}], temperature=0,
            stream=True, stream_options={"include_usage": True}) for _ in range(2)]
        assert [r.headers[HEADER] for r in streamed] == ["miss", "hit"]
        assert all(r.headers["content-type"].startswith("text/event-stream") for r in streamed)
        texts = []
        for raw in streamed:
            chunks = list(raw.parse())
            texts.append("".join(c.choices[0].delta.content or "" for c in chunks if c.choices))
            assert chunks[-1].usage.completion_tokens == 5
            assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
        assert texts == ["answer 2", "answer 2"]
        assert upstream.calls == 2

        fresh = client.chat.completions.with_raw_response.create(
            model="chain", messages=messages, temperature=0,
            extra_headers={"Cache-Control": "no-cache"})
        assert fresh.headers[HEADER] == "miss"
        assert fresh.parse().choices[0].message.content == "answer 3"
        sampled = client.chat.completions.with_raw_response.create(
            model="chain", messages=messages, temperature=0.8)
        assert HEADER not in sampled.headers
        assert upstream.calls == 4
        hit_row = next(r for r in gw.rows() if r["request_id"] == second.headers["x-request-id"])
        assert orjson.loads(hit_row["decision"])["cache"] == {
            "hit": True, "saved_usd": pytest.approx(COST)}
        assert hit_row["cost_usd"] == 0


# --- shared by two replicas through Redis -----------------------------------------------------


def _redis_state(redis_url: str, prefix: str) -> dict:
    return {"backend": "redis", "url": redis_url, "key_prefix": prefix}


async def test_two_replicas_share_entries_through_redis(redis_url, prefix) -> None:
    upstream = Upstream()
    state = _redis_state(redis_url, prefix)
    async with cache_kernel(upstream, state=state) as a, cache_kernel(upstream, state=state) as b:
        first = await a.ask(det())
        second = await b.ask(det())
        assert (first.headers[HEADER], second.headers[HEADER]) == ("miss", "hit")
        assert second.content == "answer 1" and second.cost_usd == 0
        assert second.decision["cache"] == {"hit": True, "saved_usd": pytest.approx(COST)}
    assert upstream.calls == 1
    client = redis.Redis.from_url(redis_url)
    try:
        values = [k.decode() for k in client.scan_iter(match=f"{prefix}value:cache:*")]
        locks = list(client.scan_iter(match=f"{prefix}lock:*"))
        assert len(values) == 1 and locks == []  # stored once, lock released
        ttl = client.pttl(values[0]) / 1000
        assert 86_000 < ttl <= 86_400
        digest = values[0].rsplit(":", 1)[1]
        assert len(digest) == 64 and int(digest, 16) >= 0
    finally:
        client.close()


async def test_concurrent_requests_over_two_replicas_make_one_call(redis_url, prefix) -> None:
    upstream = Upstream(delay=0.3)
    state = _redis_state(redis_url, prefix)
    answers = []
    async with cache_kernel(upstream, state=state) as a, cache_kernel(upstream, state=state) as b:
        async def one(kernel: Kernel) -> None:
            answers.append(await kernel.ask(det("together")))

        async with anyio.create_task_group() as tg:
            for i in range(20):
                tg.start_soon(one, (a, b)[i % 2])
    assert upstream.calls == 1
    assert [x.content for x in answers] == ["answer 1"] * 20
    assert sorted(x.headers[HEADER] for x in answers) == ["hit"] * 19 + ["miss"]


def test_two_gateways_over_http_share_one_cache_in_redis(tmp_path, redis_url, prefix) -> None:
    upstream = Upstream()
    config = {**CONFIG, "state": _redis_state(redis_url, prefix)}
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    with running_gateway(config, tmp_path / "a", plugins={"upstream": upstream}) as a, \
            running_gateway(config, tmp_path / "b", plugins={"upstream": upstream}) as b:
        messages = [{"role": "user", "content": "shared"}]
        first = a.client().chat.completions.with_raw_response.create(
            model="chain", messages=messages, seed=42)
        second = b.client().chat.completions.with_raw_response.create(
            model="chain", messages=messages, seed=42)
        assert (first.headers[HEADER], second.headers[HEADER]) == ("miss", "hit")
        stream = b.client().chat.completions.create(model="chain", messages=messages, seed=42,
                                                    stream=True)
        text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
        assert second.parse().choices[0].message.content == text == "answer 1"
    assert upstream.calls == 1


def test_key_is_a_sha256_of_the_canonical_request() -> None:
    request = det("keyed", user="bob", stream=True)
    key = cache_key(Context(request=request))
    canonical = {"model": "auto", "messages": [{"role": "user", "content": "keyed"}],
                 "temperature": 0.0}
    expected = hashlib.sha256(orjson.dumps(canonical, option=orjson.OPT_SORT_KEYS)).hexdigest()
    assert key == f"cache:{expected}"
