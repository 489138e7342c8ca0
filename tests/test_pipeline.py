"""The kernel's pipeline with in-test plugins: fallback by error class, streams, records.

Providers here are tiny plugins defined in the test (as pluggy's own tests do); the end-to-end
tests drive the same paths over real HTTP.
"""

from __future__ import annotations

import pytest

from turnout.kernel import errors
from turnout.kernel.config import parse
from turnout.kernel.hookspecs import hookimpl
from turnout.kernel.kernel import Kernel
from turnout.kernel.types import Chunk, Completion, Usage

from .support import ROUTING, ask, kernel_for

pytestmark = pytest.mark.anyio

async def test_answer_costs_from_usage_and_decision_is_recorded() -> None:
    kernel, provider, recorder = kernel_for({"small": ["hi there"]})
    async with kernel:
        ctx = kernel.context(ask())
        completion = await kernel.complete(ctx)
    assert completion.content == "hi there" and completion.model == "small"
    assert completion.cost_usd == pytest.approx((10 * 1 + 5 * 2) / 1e6)
    assert ctx.decision["route"] == "chain" and ctx.decision["plan"] == ["small", "big"]
    assert recorder.records == [(ctx.request_id, "ok", ["ok"])]


async def test_5xx_is_retried_once_then_falls_back() -> None:
    down = errors.ProviderUnavailable("503")
    kernel, provider, recorder = kernel_for({"small": [down, down], "big": ["from big"]})
    async with kernel:
        completion = await kernel.complete(kernel.context(ask()))
    assert completion.content == "from big"
    assert provider.calls == ["small", "small", "big"]


async def test_retry_after_within_cap_waits_and_retries_same_model() -> None:
    limited = errors.ProviderRateLimited("429", retry_after=0.05)
    kernel, provider, _ = kernel_for({"small": [limited, "after wait"], "big": []})
    async with kernel:
        ctx = kernel.context(ask())
        assert (await kernel.complete(ctx)).content == "after wait"
    assert provider.calls == ["small", "small"]
    assert ctx.decision["escalations"][0]["delay_s"] == 0.05
    assert ctx.upstream_s >= 0.05  # the wait counts as waiting on the provider, not overhead


async def test_retry_after_over_cap_moves_on_at_once() -> None:
    limited = errors.ProviderRateLimited("429", retry_after=30)
    kernel, provider, _ = kernel_for({"small": [limited], "big": ["big answered"]})
    async with kernel:
        assert (await kernel.complete(kernel.context(ask()))).content == "big answered"
    assert provider.calls == ["small", "big"]


async def test_content_policy_refusal_is_not_re_asked_elsewhere() -> None:
    kernel, provider, recorder = kernel_for({"small": [errors.ContentPolicy("refused")],
                                             "big": ["should not be asked"]})
    async with kernel:
        with pytest.raises(errors.ContentPolicy):
            await kernel.complete(kernel.context(ask()))
    assert provider.calls == ["small"]
    assert recorder.records[0][1] == "error"


async def test_content_policy_fallback_when_the_route_allows() -> None:
    kernel, provider, _ = kernel_for({"small": [errors.ContentPolicy("refused")],
                                      "big": ["big answered"]},
                                     fallback={"fallback_on_content_policy": True})
    async with kernel:
        assert (await kernel.complete(kernel.context(ask()))).content == "big answered"


async def test_fallback_skips_models_the_prompt_does_not_fit() -> None:
    models = {
        "big": {"provider": "p", "context_window": 100_000},
        "small": {"provider": "p", "context_window": 1000},
        "huge": {"provider": "p", "context_window": 1_000_000},
    }
    config_route = {"models": ["big", "small", "huge"]}
    kernel, provider, _ = kernel_for({"big": [errors.ProviderUnavailable("down")] * 2,
                                      "huge": ["huge answered"]},
                                     route=config_route, models=models)
    async with kernel:
        ctx = kernel.context(ask("word " * 2000))
        assert (await kernel.complete(ctx)).content == "huge answered"
    assert provider.calls == ["big", "big", "huge"]
    assert {"model": "small", "reason": ctx.decision["dropped"][0]["reason"]} \
        in ctx.decision["dropped"]


async def test_context_too_long_moves_to_a_larger_window() -> None:
    kernel, provider, _ = kernel_for({"small": [errors.ContextTooLong("too long")],
                                      "big": ["fits"]})
    async with kernel:
        assert (await kernel.complete(kernel.context(ask()))).content == "fits"


async def test_auth_failure_alerts_and_moves_on() -> None:
    kernel, provider, recorder = kernel_for({"small": [errors.ProviderAuthFailed("401")],
                                             "big": ["ok"]})
    async with kernel:
        await kernel.complete(kernel.context(ask()))
    assert [a.name for a in recorder.alerts] == ["provider_auth_failed"]


async def test_invalid_json_escalates_to_the_next_model() -> None:
    kernel, provider, _ = kernel_for({"small": ['{"broken": '], "big": ['{"fine": true}']})
    async with kernel:
        ctx = kernel.context(ask(response_format={"type": "json_object"}))
        assert (await kernel.complete(ctx)).content == '{"fine": true}'
    assert [a.status for a in ctx.attempts] == ["rejected", "ok"]


async def test_every_model_failing_gives_the_last_error_and_one_record() -> None:
    down = errors.ProviderUnavailable("down")
    kernel, provider, recorder = kernel_for({"small": [down, down], "big": [down, down]},
                                            route={"max_attempts": 3})
    async with kernel:
        with pytest.raises(errors.ProviderUnavailable):
            await kernel.complete(kernel.context(ask()))
    assert len(provider.calls) == 3
    assert len(recorder.records) == 1


async def test_stream_failing_before_first_chunk_falls_back() -> None:
    cut = errors.StreamBroken("cut")
    kernel, provider, recorder = kernel_for({"small": [[cut], [cut]], "big": [["a", "b"]]})
    async with kernel:
        chunks = await kernel.stream(kernel.context(ask(stream=True)))
        text = "".join([c.content async for c in chunks if c.content])
    assert text == "ab" and provider.calls == ["small", "small", "big"]
    assert recorder.records[0][1] == "ok"


async def test_stream_failing_after_first_chunk_raises_never_ends_quietly() -> None:
    kernel, provider, recorder = kernel_for({"small": [["a", errors.ProviderUnavailable("gone")]],
                                             "big": [["never"]]})
    got = []
    async with kernel:
        chunks = await kernel.stream(kernel.context(ask(stream=True)))
        with pytest.raises(errors.StreamBroken):
            async for chunk in chunks:
                got.append(chunk.content)
    assert got == ["a"] and provider.calls == ["small"]
    assert [r[1] for r in recorder.records] == ["error"]


async def test_a_stream_abandoned_by_the_client_is_recorded_once_as_cancelled() -> None:
    kernel, provider, recorder = kernel_for({"small": [["a", "b", "c"]]})
    async with kernel:
        chunks = await kernel.stream(kernel.context(ask(stream=True)))
        await anext(chunks)
        await chunks.aclose()
    assert [r[1:] for r in recorder.records] == [("cancelled", ["cancelled"])]


async def test_unknown_model_is_refused_before_anything_runs() -> None:
    kernel, provider, recorder = kernel_for({})
    async with kernel:
        with pytest.raises(errors.UnknownModel, match="nope"):
            kernel.context(ask(model="nope"))
    assert recorder.records == [] and provider.calls == []


async def test_rules_route_auto_by_labels() -> None:
    config = parse({
        "providers": {"p": {"kind": "openai-compatible", "base_url": "http://127.0.0.1:9/v1"}},
        "models": {"a": {"provider": "p"}, "b": {"provider": "p"}},
        "routes": {"cheap": {"models": ["a"]}, "coding": {"models": ["b"]}},
        "routing": {"default": "cheap", "rules": [
            {"name": "code", "when": {"task": "code", "complexity": ">= 0.1"},
             "route": "coding"}]},
    }, source="test")
    kernel = Kernel(config, builtins=ROUTING)
    async with kernel:
        code = await kernel.explain(kernel.context(ask("Fix this bug: def f(x): return x +")))
        chat = await kernel.explain(kernel.context(ask("hi!")))
    assert (code["route"], code["rule"]) == ("coding", "code")
    assert (chat["route"], chat["rule"]) == ("cheap", "default")


async def test_a_stream_closed_before_its_first_read_still_ends_upstream_and_records() -> None:
    closed = []

    async def upstream():
        try:
            for part in ("a", "b"):
                yield Chunk(content=part)
        finally:
            closed.append(True)

    class Streams:
        @hookimpl(tryfirst=True)
        def call(self, ctx, step):
            return upstream()

    kernel, _, recorder = kernel_for({})
    kernel.plugins.register(Streams(), name="streams")
    async with kernel:
        ctx = kernel.context(ask(stream=True))
        chunks = await kernel.stream(ctx)  # the first chunk was pulled: the stream is open
        await chunks.aclose()              # the client left before the response started
        await chunks.aclose()              # closing twice is harmless
    assert closed == [True]
    assert recorder.records == [(ctx.request_id, "cancelled", ["cancelled"])]


async def test_subrequests_run_the_whole_pipeline_under_their_parent() -> None:
    """A multi-call strategy (here: ask two models, join the answers) through Kernel.subrequest."""
    seen = []

    class Pair:
        def __init__(self):
            self.kernel = None

        @hookimpl
        def startup(self, kernel):
            self.kernel = kernel

        @hookimpl(tryfirst=True)
        async def call(self, ctx, step):
            if ctx.request.model != "pair":
                return None
            answers = [await self.kernel.subrequest(ctx, ctx.request.model_copy(
                update={"model": name})) for name in ("small", "big")]
            return Completion(content=" + ".join(a.content for a in answers),
                              usage=Usage(sum(a.usage.input_tokens for a in answers),
                                          sum(a.usage.output_tokens for a in answers)))

        @hookimpl
        def record(self, ctx):
            seen.append((ctx.request.model, ctx.parent.request_id if ctx.parent else None))

    kernel, provider, _ = kernel_for({"small": ["from small"], "big": ["from big"]},
                                     models={"small": {"provider": "p"}, "big": {"provider": "p"},
                                             "pair": {"provider": "p"}})
    kernel.plugins.register(Pair(), name="pair")
    async with kernel:
        parent = kernel.context(ask(model="pair"))
        completion = await kernel.complete(parent)
    assert completion.content == "from small + from big"
    assert provider.calls == ["small", "big"]
    assert seen == [("small", parent.request_id), ("big", parent.request_id), ("pair", None)]
