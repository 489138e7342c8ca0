"""The kernel's seams: the frontends' API, the attempt caps, provider lookup by name, settings,
and the fixes found by using the gateway as a new user would."""

from __future__ import annotations

import random

import pytest

from turnout.kernel import errors, hookimpl, tokens
from turnout.kernel.types import Answer, Escalation, ModelProfile

from .support import ask, collect, kernel_for

pytestmark = pytest.mark.anyio


async def test_ask_returns_the_answer_with_what_it_took() -> None:
    kernel, _, _ = kernel_for({"small": [errors.ProviderUnavailable("down"), "hello"]})
    async with kernel:
        answer = await kernel.ask(ask(), client="team-a")
    assert isinstance(answer, Answer)
    assert (answer.content, answer.model, answer.route, answer.strategy) == \
        ("hello", "small", "chain", "fallback")
    assert answer.attempts == 2 and answer.status == "ok"
    assert answer.cost_usd == pytest.approx((10 * 1 + 5 * 2) / 1e6)
    assert answer.decision["plan"] == ["small", "big"] and answer.latency_s > 0


async def test_a_failed_ask_carries_its_account_on_the_error() -> None:
    down = errors.ProviderUnavailable("down")
    kernel, _, _ = kernel_for({"small": [down, down], "big": [down, down]})
    async with kernel:
        with pytest.raises(errors.ProviderUnavailable) as info:
            await kernel.ask(ask())
    account = info.value.answer
    assert account.status == "error" and account.attempts == 4 and account.route == "chain"
    assert [e["action"] for e in account.decision["escalations"]][-1] == "stop"


async def test_ask_stream_gives_chunks_then_the_final_account() -> None:
    kernel, _, _ = kernel_for({"small": [["he", "llo"]]})
    async with kernel:
        stream = await kernel.ask_stream(ask())
        assert stream.answer.model == "small" and stream.answer.completion is None
        chunks = await collect(stream)
    assert "".join(c.content or "" for c in chunks) == "hello"
    final = stream.answer
    assert final.status == "ok" and final.content == "hello" and final.cost_usd > 0


async def test_an_escalation_that_always_retries_stops_at_max_attempts() -> None:
    class Stubborn:
        @hookimpl(tryfirst=True)
        def escalate(self):
            return Escalation("retry", "try again, forever")

    down = errors.ProviderUnavailable("down")
    kernel, provider, _ = kernel_for({"small": [down] * 10}, route={"max_attempts": 3})
    kernel.plugins.register(Stubborn(), name="stubborn")
    async with kernel:
        ctx = kernel.context(ask())
        with pytest.raises(errors.ProviderUnavailable):
            await kernel.complete(ctx)
    assert provider.calls == ["small"] * 3
    assert ctx.decision["escalations"][-1] == {"action": "stop",
                                               "reason": "3 attempts made (max_attempts)"}


async def test_a_model_no_provider_serves_falls_back_and_says_why() -> None:
    class Ghost:
        @hookimpl
        def startup(self, kernel):
            kernel.models.register(ModelProfile(name="ghost", provider="nobody",
                                                upstream="ghost"))

    kernel, provider, recorder = kernel_for({"small": ["from small"]},
                                            route={"models": ["small"]})
    kernel.plugins.register(Ghost(), name="ghost")
    kernel.plugins.unregister("scripted")

    class OnlySmall:  # answers for "small" only, as a provider plugin for one model would
        @hookimpl
        def call(self, ctx, step):
            return provider.call(ctx, step) if step.model.name == "small" else None

    kernel.plugins.register(OnlySmall(), name="only-small")
    async with kernel:
        ctx = kernel.context(ask(model="ghost"))
        with pytest.raises(errors.ProviderMissing, match=r"\[providers.nobody\]"):
            await kernel.complete(ctx)
        assert [a.status for a in ctx.attempts] == ["error"]
        assert ctx.attempts[0].error.startswith("provider_missing")

        class GhostFirst:
            @hookimpl
            def filter_candidates(self, ctx):
                ctx.candidates = [kernel.models.get("ghost"), *ctx.candidates]

        kernel.plugins.register(GhostFirst(), name="ghost-first")
        answered = await kernel.ask(ask())
    assert answered.content == "from small" and answered.attempts == 2
    assert recorder.records[-1][2] == ["error", "ok"]


async def test_a_model_asked_for_by_name_names_itself_as_the_route() -> None:
    kernel, _, _ = kernel_for({"big": ["big answer"]})
    async with kernel:
        answer = await kernel.ask(ask(model="big"))
    assert answer.route == "big" and answer.model == "big"


async def test_the_tokenizer_loads_at_startup_not_on_the_first_request() -> None:
    tokens._encoding.cache_clear()
    kernel, _, _ = kernel_for({})
    async with kernel:
        assert tokens._encoding.cache_info().currsize == 1


async def test_backoff_jitter_leaves_the_global_random_alone() -> None:
    down = errors.ProviderUnavailable("down")
    kernel, provider, _ = kernel_for({"small": [down, "second try"]})
    random.seed(1234)
    state = random.getstate()
    async with kernel:
        assert (await kernel.ask(ask())).content == "second try"
    assert provider.calls == ["small", "small"]
    assert random.getstate() == state


async def test_plugin_settings_are_validated_and_handed_to_the_plugin() -> None:
    from pydantic import BaseModel, ConfigDict

    class Limits(BaseModel):
        """Test settings."""

        model_config = ConfigDict(extra="forbid")
        cap: int = 3

    class Capped:
        name = "capped"
        Settings = Limits

        def __init__(self):
            self.seen = None

        @hookimpl
        def startup(self, kernel):
            self.seen = kernel.plugin_settings(self)

    from turnout.kernel.config import parse
    from turnout.kernel.errors import ConfigError
    from turnout.kernel.kernel import Kernel

    from .support import ROUTING

    good = Kernel(parse({"capped": {"cap": 7}}, source="test"), builtins=ROUTING)
    plugin = Capped()
    good.plugins.register(plugin)
    async with good:
        assert plugin.seen == Limits(cap=7)
    bad = Kernel(parse({"capped": {"cap": "lots", "extra": 1}}, source="test"),
                 builtins=ROUTING)
    bad.plugins.register(Capped())
    with pytest.raises(ConfigError) as info:
        bad.load_plugins()
    assert "capped.cap: Input should be a valid integer" in str(info.value)
    assert "capped.extra: unknown key" in str(info.value)


async def test_waits_on_concurrent_sub_requests_count_once_as_provider_time() -> None:
    import anyio

    from turnout.kernel.strategy import Run, Strategy

    class Both(Strategy):
        async def run(self, run: Run):
            answers = []
            async with anyio.create_task_group() as tg:
                for step in run.plan.steps:
                    tg.start_soon(lambda m=step.model.name: self._ask(run, m, answers))
            return answers[0]

        @staticmethod
        async def _ask(run, model, answers):
            answers.append(await run.subrequest(model=model))

    class Sleepy:
        @hookimpl(tryfirst=True)
        async def call(self, ctx, step):
            await anyio.sleep(0.3)
            return None  # then the scripted provider answers

    class Register:
        @hookimpl
        def register_strategies(self, register):
            register("both", Both())

    kernel, _, _ = kernel_for({"small": ["a"], "big": ["b"]}, route={"strategy": "both"},
                              plugins={"sleepy": Sleepy(), "register": Register()})
    async with kernel:
        parent = kernel.context(ask())
        await kernel.complete(parent)
    assert len(parent.children) == 2 and all(c.status == "ok" for c in parent.children)
    # Two sub-requests of 0.3 s each, side by side: 0.3 s of waiting, counted once.
    assert 0.3 <= parent.upstream_s <= parent.latency_s
    assert parent.overhead_s == pytest.approx(parent.latency_s - parent.upstream_s)


async def test_route_settings_a_plugin_declares_are_keys_of_every_route() -> None:
    from pydantic import BaseModel, ConfigDict, Field

    from turnout.kernel.config import parse
    from turnout.kernel.errors import ConfigError
    from turnout.kernel.kernel import Kernel

    from .support import ROUTING

    class Memo(BaseModel):
        """Test route settings."""

        model_config = ConfigDict(extra="forbid")
        memo: str = Field(default="off")

    class Memoiser:
        name = "memoiser"
        RouteSettings = Memo

    class Rival:
        name = "rival"
        RouteSettings = Memo

    models = {"m": {"provider": "p"}}
    providers = {"p": {"kind": "openai-compatible", "base_url": "http://127.0.0.1:9/v1"}}
    routes = {"a": {"models": ["m"], "memo": "on"}, "b": {"models": ["m"]}}
    kernel = Kernel(parse({"providers": providers, "models": models, "routes": routes},
                          source="test"), builtins=ROUTING)
    plugin = Memoiser()
    kernel.plugins.register(plugin)
    kernel.load_plugins()
    assert kernel.route_settings(plugin, "a").memo == "on"
    assert kernel.route_settings("memoiser", "b").memo == "off"
    assert kernel.route_settings(plugin, None).memo == "off"  # a model asked for by name
    assert kernel.route_settings("rules_router", "a") is None

    bad = Kernel(parse({"providers": providers, "models": models,
                        "routes": {"a": {"models": ["m"], "memo": 3,
                                         "other": 1}}}, source="test"), builtins=ROUTING)
    bad.plugins.register(Memoiser())
    bad.plugins.register(Rival())
    with pytest.raises(ConfigError) as info:
        bad.load_plugins()
    assert "routes.a.memo: Input should be a valid string" in str(info.value)
    assert "routes.a.other: unknown key" in str(info.value) and "(memo)" in str(info.value)
    assert "plugins 'memoiser' and 'rival' both declare the route key 'memo'" in str(info.value)


async def test_a_whole_answer_for_a_stream_is_judged_before_it_is_replayed() -> None:
    from turnout.kernel.types import Completion, Usage

    class Canned:
        @hookimpl(tryfirst=True)
        def call(self, ctx, step):
            if step.model.name == "small":
                return Completion(content="not json", usage=Usage(3, 2), cached=True)
            return None

    kernel, provider, _ = kernel_for({"big": [["{", "}"]]}, plugins={"canned": Canned()})
    async with kernel:
        stream = await kernel.ask_stream(ask(model="chain",
                                             response_format={"type": "json_object"}))
        text = "".join([c.content or "" for c in await collect(stream)])
        canned = await kernel.ask_stream(ask(model="small"))
        await collect(canned)
    assert text == "{}" and provider.calls == ["big"], "the failed canned answer fell back"
    assert [a.status for a in stream.ctx.attempts] == ["rejected", "ok"]
    assert canned.ctx.completion.cached and canned.answer.cost_usd == 0
