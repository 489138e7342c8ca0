"""Every example in docs/plugins.md registers cleanly and does what the guide says."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import anyio
import httpx
import pytest
from starlette.applications import Starlette
from starlette.responses import Response
from starlette.routing import Route

from turnout.kernel import errors, hookimpl
from turnout.kernel.config import parse
from turnout.kernel.kernel import Kernel
from turnout.kernel.manager import PluginManager, hook_names
from turnout.kernel.types import Alert, Caller

from .fakes.server import serve
from .gateway import running_gateway
from .support import ROUTING, Recorder, Scripted, ask, kernel_for, user

GUIDE = Path(__file__).resolve().parent.parent / "docs" / "plugins.md"


def guide_plugins() -> dict[str, type]:
    namespace: dict = {}
    for block in re.findall(r"```python\n(.*?)```", GUIDE.read_text(), re.S):
        exec(compile(block, str(GUIDE), "exec"), namespace)
    return {name: obj for name, obj in namespace.items()
            if isinstance(obj, type) and obj.__module__ == "builtins" and name[0].isupper()}


PLUGINS = guide_plugins()


def guide_kernel(config: dict, *names: str, script: dict | None = None) -> tuple[Kernel, Scripted]:
    """A kernel with the routing built-ins, a scripted provider and the guide's plugins."""
    kernel = Kernel(parse(config, source="test"), builtins=ROUTING)
    scripted = Scripted(script or {})
    if script is not None:
        kernel.plugins.register(scripted, name="scripted")
    for name in names:
        kernel.plugins.register(PLUGINS[name](), name=getattr(PLUGINS[name], "name", name))
    return kernel, scripted


def models(**prices: tuple[float, float]) -> dict:
    return {name: {"provider": "p", "input_price": i, "output_price": o}
            for name, (i, o) in prices.items()}


PROVIDER = {"p": {"kind": "openai-compatible", "base_url": "http://127.0.0.1:9/v1"}}


def test_every_hook_and_registration_hook_has_a_worked_example() -> None:
    pm = PluginManager()
    for name, cls in PLUGINS.items():
        if any(hasattr(getattr(cls, h, None), "turnout_impl") for h in hook_names()):
            pm.register(cls(), name=name)
    implemented = {hook for hook in hook_names() if pm.impls(hook)}
    assert implemented == set(hook_names())


@pytest.mark.anyio
async def test_guide_examples_work_in_the_pipeline() -> None:
    kernel, provider, recorder = kernel_for({
        "small": [errors.ProviderTimeout("slow"), "eins zwei drei vier"],
        "big": ["big one", "big answer, too long"]})
    instances = {name: PLUGINS[name]() for name in
                 ("ScriptLabel", "CheapestFirst", "ExactCache", "MaxWords", "NoRetryOnTimeout",
                  "SpendByClient")}
    for name, plugin in instances.items():
        kernel.plugins.register(plugin, name=name)
    async with kernel:
        ctx = kernel.context(ask("Привет, как дела?"), client="team-a")
        first = await kernel.complete(ctx)
        again = await kernel.complete(kernel.context(ask("Привет, как дела?"), client="team-a"))
        capped = kernel.context(ask("hello", metadata={"max_words": "2"}))
        with pytest.raises(errors.ValidationFailed):
            await kernel.complete(capped)
    assert ctx.labels["script"] == "non-latin"
    assert ctx.decision["plan_reason"] == "cheapest first"
    # NoRetryOnTimeout: small timed out, big answered at once, no retry of small
    assert provider.calls[:2] == ["small", "big"] and first.content == "big one"
    assert again.cached and again.content == "big one" and again.cost_usd == 0
    assert instances["SpendByClient"].spend["team-a"] == pytest.approx(first.cost_usd)
    assert [a.status for a in capped.attempts] == ["rejected", "rejected"]


@pytest.mark.anyio
async def test_the_in_flight_cap_refuses_a_third_concurrent_call_and_frees_its_slots() -> None:
    class Slow(Scripted):
        @hookimpl
        async def call(self, ctx, step):
            await anyio.sleep(0.2)
            return await super().call(ctx, step)

    config = {"providers": PROVIDER, "models": models(m=(1, 1))}
    kernel, _ = guide_kernel(config, "InFlightCap")
    kernel.plugins.register(Slow({"m": ["a", "b", "c"]}), name="slow")
    cap = kernel.plugins.get("InFlightCap")
    outcomes: list = []

    async def one() -> None:
        try:
            outcomes.append((await kernel.ask(ask(model="m"), caller=Caller(key="ci"))).headers)
        except errors.RateLimited as exc:
            outcomes.append(exc.code)

    async with kernel:
        async with anyio.create_task_group() as tg:
            for _ in range(3):
                tg.start_soon(one)
        assert cap.in_flight == {"ci": 0}
        assert (await kernel.ask(ask(model="m"), caller=Caller(key="ci"))).content == "c"
    assert sorted(map(str, outcomes)) == sorted(map(str, [{"x-in-flight-cap": "2"}] * 2
                                                    + ["rate_limited"]))


@pytest.mark.anyio
async def test_long_prompts_go_to_the_named_route_and_price_cap_drops_models() -> None:
    config = {"providers": PROVIDER, "models": models(small=(1, 2), big=(10, 20)),
              "routes": {"general": {"models": ["small"]}, "strong": {"models": ["small", "big"]}},
              "long_prompts": {"over_tokens": 50, "route": "strong"}}
    kernel, _ = guide_kernel(config, "LongPrompts", "PriceCap", script={"small": ["ok", "ok"]})
    async with kernel:
        short = await kernel.ask(ask("a short question"))
        long = await kernel.ask(ask("word " * 200))
    assert short.route == "general"
    assert long.route == "strong" and "prompt tokens > 50" in long.decision["rule"]
    assert long.decision["dropped"] == [{"model": "big", "reason": "output price 20.0 over "
                                                                   "cap 5.0"}]


@pytest.mark.anyio
async def test_the_hedge_strategy_asks_the_second_model_when_the_first_is_slow() -> None:
    class Slow(Scripted):
        @hookimpl
        async def call(self, ctx, step):
            if step.model.name == "slow":
                await anyio.sleep(5)
            return await super().call(ctx, step)

    config = {"providers": PROVIDER, "models": models(slow=(1, 1), quick=(1, 1)),
              "routes": {"interactive": {"models": ["slow", "quick"], "strategy": "hedge",
                                         "hedge": {"hedge_after_s": 0.05}}}}
    kernel, _ = guide_kernel(config, "HedgePlugin")
    kernel.plugins.register(Slow({"slow": ["late"], "quick": ["in time"]}), name="slow")
    recorder = Recorder()
    kernel.plugins.register(recorder, name="recorder")
    async with kernel:
        with anyio.fail_after(2):
            answer = await kernel.ask(ask(model="interactive"))
    assert (answer.content, answer.model, answer.strategy) == ("in time", "quick", "hedge")
    assert recorder.records[-1][2] == ["cancelled", "ok"]
    assert answer.cost_usd > (10 + 5) / 1e6, "the cancelled call's prompt is paid for too"


@pytest.mark.anyio
async def test_a_provider_kind_named_in_the_config_answers() -> None:
    config = {"providers": {"loud": {"kind": "shout", "marks": 3}},
              "models": {"loudmouth": {"provider": "loud"}}}
    kernel, _ = guide_kernel(config, "ShoutKind")
    async with kernel:
        answer = await kernel.ask(ask("hello there", model="loudmouth"))
        stream = await kernel.ask_stream(ask("and again", model="loudmouth"))
        streamed = "".join([c.content or "" async for c in stream])
    assert answer.content == "HELLO THERE!!!" and answer.provider == "loud"
    assert streamed == "AND AGAIN!!!"
    bad = Kernel(parse({"providers": {"loud": {"kind": "shout", "marks": -1}}}, source="t"),
                 builtins=ROUTING)
    bad.plugins.register(PLUGINS["ShoutKind"](), name="shout")
    with pytest.raises(errors.ConfigError, match="providers.loud.marks"):
        bad.load_plugins()


@pytest.mark.anyio
async def test_a_named_validator_applies_on_the_routes_that_list_it() -> None:
    config = {"providers": PROVIDER, "models": models(a=(1, 1), b=(1, 1)),
              "routes": {"polite": {"models": ["a", "b"], "validators": ["no_apology"]},
                         "lenient": {"models": ["a", "b"], "validators": []}}}
    apology = "I'm sorry, I cannot help with that."
    kernel, _ = guide_kernel(config, "NoApology", script={"a": [apology, apology],
                                                          "b": ["Here it is."]})
    async with kernel:
        judged = await kernel.ask(ask(model="polite"))
        unjudged = await kernel.ask(ask(model="lenient"))
    assert judged.content == "Here it is." and judged.attempts == 2
    assert unjudged.content == apology


@pytest.mark.anyio
async def test_a_validator_with_settings_is_listed_as_a_table() -> None:
    config = {"providers": PROVIDER, "models": models(a=(1, 1), b=(1, 1)),
              "routes": {"brief": {"models": ["a", "b"],
                                   "validators": [{"kind": "word_cap", "limit": 3}]}}}
    kernel, scripted = guide_kernel(config, "WordCap", script={"a": ["one two three four"],
                                                               "b": ["one two"]})
    async with kernel:
        got = await kernel.ask(ask(model="brief"))
    assert got.content == "one two" and scripted.calls == ["a", "b"]
    bad = {**config, "routes": {"brief": {"models": ["a"], "validators": [
        {"kind": "word_cap", "limit": 0}]}}}
    with pytest.raises(errors.ConfigError, match=r"routes.brief.validators\[0\].limit"):
        guide_kernel(bad, "WordCap")[0].load_plugins()


@pytest.mark.anyio
async def test_a_store_backend_named_in_the_config_is_the_kernels_store() -> None:
    kernel, _ = guide_kernel({"state": {"backend": "tiny-memory"}}, "TinyStore")
    async with kernel:
        assert type(kernel.store).__name__ == "TinyMemory"
        assert kernel.store.settings.max_keys == 1000
        result = await kernel.store.window_add("k", window_s=60, limit=1)
        assert result.admitted


def test_a_plugin_command_runs(capsys: pytest.CaptureFixture[str]) -> None:
    kernel, _ = guide_kernel({"providers": PROVIDER, "models": models(m=(0.5, 1.5))},
                             "ModelsCsv")
    kernel.load_plugins()
    command = kernel.commands["models-csv"]
    parser = argparse.ArgumentParser()
    command.arguments(parser)
    assert command.run(parser.parse_args([])) == 0  # the embedded default's models
    assert capsys.readouterr().out.startswith("model,provider,input_price,output_price\n")


def test_spend_is_served_on_the_plugins_http_route(tmp_path: Path) -> None:
    fleet = {"providers": {"fleet": {"kind": "simulated"}}, "models": {"m": {
        "provider": "fleet", "input_price": 1, "output_price": 1}},
        "simulation": {"models": {"m": {"latency_ms": 1, "jitter": 0}}}}
    with running_gateway(fleet, tmp_path, plugins={"spend": PLUGINS["SpendByClient"]()}) as gw:
        gw.client().chat.completions.create(model="m", messages=[user("hi")])
        spend = httpx.get(gw.url + "/v1/spend").json()
    assert spend["anonymous"] > 0


@pytest.mark.anyio
async def test_alerts_reach_the_webhook_and_the_shared_client_is_closed() -> None:
    received = []

    async def hook(request):
        received.append(await request.json())
        return Response(status_code=204)

    with serve(Starlette(routes=[Route("/hook", hook, methods=["POST"])])) as url:
        alerts, shared = PLUGINS["WebhookAlerts"](), PLUGINS["SharedClient"]()
        alerts.url = url + "/hook"
        kernel, _ = guide_kernel({})
        kernel.plugins.register(alerts, name="webhook")
        kernel.plugins.register(shared, name="shared")
        async with kernel:
            assert not shared.client.is_closed
            await kernel.alert(Alert("budget", "warning", "80% of the daily budget spent"))
    assert received == [{"name": "budget", "summary": "80% of the daily budget spent",
                         "severity": "warning", "resolved": False}]
    assert shared.client.is_closed



@pytest.mark.anyio
async def test_thumbs_down_are_counted_per_model_that_answered() -> None:
    config = {"providers": PROVIDER, "models": models(a=(1, 1), b=(1, 1))}
    kernel, _ = guide_kernel(config, "ThumbsDownByModel", script={"a": ["one", "two"],
                                                                  "b": ["three"]})
    counter = kernel.plugins.get("ThumbsDownByModel")
    async with kernel:
        first = await kernel.ask(ask(model="a"))
        second = await kernel.ask(ask(model="a"))
        third = await kernel.ask(ask(model="b"))
        await kernel.feedback(first.request_id, -1, comment="wrong", source="slack", user="U1")
        await kernel.feedback(second.request_id, 1)
        await kernel.feedback(third.request_id, -0.5)
        await kernel.feedback("req_from_another_replica", -1)
    assert counter.thumbs_down == {"a": 1, "b": 1, "(unknown)": 1}
