"""Routers that order a route's models: the seam (``register_routers``, ``[routes.NAME] router``),
the built-in ``score`` and ``cost_tiers``, the ``[routing]`` task map and difficulty steps for
``auto``, a route with a router over HTTP (the official openai SDK against the fake OpenAI
upstream), and ``turnout route --explain``."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import structlog

from turnout.adapters import cli
from turnout.kernel import errors
from turnout.kernel.config import parse, parse_text
from turnout.kernel.hookspecs import hookimpl
from turnout.kernel.kernel import Kernel
from turnout.kernel.types import Attempt, Completion, Context, ModelProfile, Ranking
from turnout.plugins import routers
from turnout.plugins.routers import CostTiersSettings, LatencyBook, ScoreRouter, ScoreSettings

from .fakes import Reply, Script, openai_app, serve
from .gateway import running_gateway
from .support import ROUTING, ask, kernel_for

BUILTINS = {**ROUTING, "routers": "turnout.plugins.routers"}

pytestmark = pytest.mark.anyio


# --- the seam --------------------------------------------------------------------------------------


class Reverser:
    """A plugin registering two routers: ``reverse`` (the candidates backwards, with settings)
    and ``pass`` (async, leaves the order); logs what each was given."""

    def __init__(self) -> None:
        self.seen: list[list[str]] = []

    @hookimpl
    def register_routers(self, register) -> None:
        from pydantic import BaseModel, ConfigDict, Field

        class Settings(BaseModel):
            model_config = ConfigDict(extra="forbid")
            bonus: float = Field(default=1.0, ge=0, description="Added to every score.")

        def reverse(ctx, candidates, settings):
            self.seen.append([m.name for m in candidates])
            ranked = list(reversed(candidates))
            return Ranking(ranked, "backwards",
                           {m.name: settings.bonus + i for i, m in enumerate(ranked)},
                           {"prediction": {"cheap_is_enough": 0.25}})

        async def leave(ctx, candidates, settings):
            self.seen.append([m.name for m in candidates])
            return None

        register("reverse", reverse, settings=Settings)
        register("pass", leave)


async def test_a_plugin_registered_router_reorders_the_candidates() -> None:
    plugin = Reverser()
    kernel, provider, _ = kernel_for({"big": ["from big"], "small": ["from small"]},
                                     route={"router": {"kind": "reverse", "bonus": 2}},
                                     plugins={"reverser": plugin})
    answer = await kernel.ask(ask("hello", model="chain"))
    assert answer.model == "big" and provider.calls == ["big"]
    assert plugin.seen == [["small", "big"]]
    assert answer.decision["plan"] == ["big", "small"]
    assert answer.decision["router"] == {"kind": "reverse", "reason": "backwards",
                                         "scores": {"big": 2.0, "small": 3.0},
                                         "prediction": {"cheap_is_enough": 0.25}}
    assert answer.decision["candidates"] == ["small", "big"]


async def test_a_router_returning_none_leaves_the_order() -> None:
    plugin = Reverser()
    kernel, provider, _ = kernel_for({"small": ["from small"]}, route={"router": "pass"},
                                     plugins={"reverser": plugin})
    answer = await kernel.ask(ask("hello", model="chain"))
    assert answer.model == "small" and answer.decision["plan"] == ["small", "big"]
    assert plugin.seen == [["small", "big"]] and "router" not in answer.decision


async def test_the_router_sees_what_the_filters_left() -> None:
    plugin = Reverser()  # small has a 2000-token window: the fit filter drops it first
    kernel, _, _ = kernel_for({"big": ["ok"]}, route={"router": {"kind": "reverse"}},
                              plugins={"reverser": plugin})
    answer = await kernel.ask(ask("word " * 2500, model="chain"))
    assert plugin.seen == [["big"]] and answer.model == "big"
    assert [d["model"] for d in answer.decision["dropped"]] == ["small"]


async def test_a_router_ranking_a_model_that_is_no_candidate_is_a_plugin_error() -> None:
    class Stranger:
        @hookimpl
        def register_routers(self, register):
            ghost = ModelProfile(name="ghost", provider="p", upstream="ghost")
            register("stranger", lambda ctx, candidates, settings: Ranking([ghost], "made up"))

    kernel, provider, _ = kernel_for({}, route={"router": "stranger"},
                                     plugins={"stranger": Stranger()})
    with pytest.raises(errors.PluginError, match="not candidates \\(ghost\\)") as caught:
        await kernel.ask(ask("hello", model="chain"))
    assert caught.value.plugin == "stranger" and provider.calls == []


TOML = """\
[providers.p]
kind = "openai-compatible"
base_url = "http://127.0.0.1:9/v1"

[models.small]
provider = "p"
quality = 0.5

[models.big]
provider = "p"
quality = {{ code = 0.9, default = 0.8 }}

[routes.chain]
models = ["small", "big"]

[routes.other]
models = ["big"]
{extra}
"""


def loaded(extra: str, source: str = "gateway.toml") -> Kernel:
    kernel = Kernel(parse_text(TOML.format(extra=extra), source=source, references=False),
                    builtins=BUILTINS)
    kernel.load_plugins()
    return kernel


def line_of(text: str, needle: str) -> int:
    return next(i for i, line in enumerate(text.splitlines(), 1) if needle in line)


def test_a_bad_router_table_is_a_config_error_with_its_line() -> None:
    extra = 'router = { kind = "cost_tiers", min_quality = 2 }'
    with pytest.raises(errors.ConfigError) as caught:
        loaded(extra)
    line = line_of(TOML.format(extra=extra), "min_quality = 2")
    assert f"gateway.toml:{line}: routes.other.router.min_quality: Input should be less than " \
           "or equal to 1" in caught.value.message
    with pytest.raises(errors.ConfigError, match=r"routes\.other\.router\.weight: unknown key"):
        loaded('router = { kind = "score", weight = 2 }')
    with pytest.raises(errors.ConfigError, match="a router table needs kind"):
        loaded('router = { min_quality = 0.5 }')


def test_an_unknown_router_names_the_registered_ones() -> None:
    extra = 'router = "learnt"'
    with pytest.raises(errors.ConfigError) as caught:
        loaded(extra)
    line = line_of(TOML.format(extra=extra), "learnt")
    assert (f"gateway.toml:{line}: routes.other.router: unknown router 'learnt'; registered: "
            "cost_tiers, score") in caught.value.message


def test_model_quality_is_checked_and_reaches_the_profile() -> None:
    kernel = loaded('router = "score"')
    assert kernel.models.get("big").quality_for("code") == 0.9
    assert kernel.models.get("big").quality_for("chat") == 0.8  # its default
    assert kernel.models.get("small").quality_for("code") == 0.5  # one number: every task
    assert kernel.wiring.routers["other"] == ("score", ScoreSettings())
    text = TOML.format(extra="").replace("quality = 0.5", "quality = { chat = 1.5 }")
    with pytest.raises(errors.ConfigError) as caught:
        parse_text(text, source="gateway.toml")
    assert f"gateway.toml:{line_of(text, 'chat = 1.5')}: models.small.quality" \
        in caught.value.message and "quality for 'chat' must be from 0 to 1" \
        in caught.value.message


# --- score and cost_tiers on hand-made profiles ----------------------------------------------------


def model(name: str, usd: float, quality=None) -> ModelProfile:
    """A profile whose input plus output price is ``usd`` per million tokens."""
    table = {} if quality is None else quality if isinstance(quality, dict) \
        else {"default": quality}
    return ModelProfile(name=name, provider="p", upstream=name, input_price=usd / 4,
                        output_price=usd * 3 / 4, quality=table)


def context(task: str | None = "code") -> Context:
    ctx = Context(request=ask("x"))
    if task is not None:
        ctx.labels["task"] = task
    return ctx


def names(ranking: Ranking) -> list[str]:
    return [m.name for m in ranking.models]


def test_score_weighs_quality_for_the_task_against_price() -> None:
    cheap, mid, dear = model("cheap", 1, 0.5), model("mid", 10, {"code": 0.9, "default": 0.6}), \
        model("dear", 100, 0.95)
    score = ScoreRouter(LatencyBook())
    # price on a log scale among the three: cheap 1, mid 0.5, dear 0; no latency seen: 1 each
    code = score(context("code"), [dear, mid, cheap], ScoreSettings())
    expected = {"cheap": 0.5 + 0.3 + 0.1, "mid": 0.9 + 0.15 + 0.1, "dear": 0.95 + 0 + 0.1}
    assert names(code) == ["mid", "dear", "cheap"]
    assert code.scores == pytest.approx(expected)
    assert list(code.scores) == names(code)  # recorded best first
    assert code.details["parts"]["mid"]["quality"] == 0.9
    assert code.details["parts"]["mid"]["price"] == pytest.approx(0.5)
    chat = score(context("chat"), [dear, mid, cheap], ScoreSettings())  # mid: its default 0.6
    assert names(chat) == ["dear", "cheap", "mid"]
    thrifty = score(context("code"), [dear, mid, cheap], ScoreSettings(price=2))
    assert names(thrifty) == ["cheap", "mid", "dear"]  # 0.5+2 > 0.9+1 > 0.95+0


def test_score_ties_keep_the_routes_order_and_unknown_quality_counts_as_zero() -> None:
    a, b = model("a", 5, 0.7), model("b", 5, 0.7)
    score = ScoreRouter(LatencyBook())
    assert names(score(context(), [b, a], ScoreSettings())) == ["b", "a"]
    assert names(score(context(), [a, b], ScoreSettings())) == ["a", "b"]
    unknown, known = model("unknown", 1), model("known", 1, 0.2)
    ranked = score(context(), [unknown, known], ScoreSettings())
    assert names(ranked) == ["known", "unknown"]
    assert ranked.details["parts"]["unknown"]["quality"] is None
    assert ranked.scores["unknown"] == pytest.approx(0.3 + 0.1)


def test_score_weighs_observed_latency_and_gives_the_unseen_the_median() -> None:
    fast, slow, new = model("fast", 5, 0.8), model("slow", 5, 0.8), model("new", 5, 0.8)
    score = ScoreRouter(LatencyBook())
    for seconds in (0.2, 0.3):
        ctx = context()
        ctx.attempts = [Attempt("fast", "p", 0, latency_s=seconds, status="ok"),
                        Attempt("slow", "p", 0, latency_s=8.0, status="error"),
                        Attempt("slow", "p", 0, latency_s=2.0, status="ok")]
        score.record(ctx)
    assert score.book.seconds["fast"] == pytest.approx(0.2 + 0.2 * (0.3 - 0.2))
    assert score.book.seconds["slow"] == pytest.approx(2.0)  # failed attempts do not count
    ranked = score(context(), [slow, new, fast], ScoreSettings())
    assert names(ranked) == ["fast", "new", "slow"]
    median = (0.22 + 2.0) / 2
    expected_new = (math.log(2.0) - math.log(median)) / (math.log(2.0) - math.log(0.22))
    assert ranked.details["parts"]["new"]["latency"] == pytest.approx(expected_new, abs=1e-4)
    assert ranked.details["latency_unseen"] == ["new"]
    cached = context()
    cached.attempts = [Attempt("slow", "p", 0, latency_s=0.001, status="ok")]
    cached.completion = Completion(content="x", cached=True)
    cached.answered = cached.attempts[0]
    score.record(cached)  # a cache hit is not the model's latency
    assert score.book.seconds["slow"] == pytest.approx(2.0)


def test_cost_tiers_puts_the_cheapest_good_enough_first() -> None:
    tiny, small, mid, big = model("tiny", 0.5, 0.4), model("small", 2, {"code": 0.75}), \
        model("mid", 6, 0.8), model("big", 20, 0.95)
    floor = CostTiersSettings(min_quality=0.7)
    code = routers.cost_tiers(context("code"), [big, mid, small, tiny], floor)
    assert names(code) == ["small", "mid", "big", "tiny"]
    assert code.details["meets_floor"] == ["small", "mid", "big"]
    assert code.scores == {"small": 0.75, "mid": 0.8, "big": 0.95, "tiny": 0.4}
    # small has no quality for chat (no default): unknown, after the known ones below the floor
    chat = routers.cost_tiers(context("chat"), [big, small, tiny, mid], floor)
    assert names(chat) == ["mid", "big", "tiny", "small"]
    none = routers.cost_tiers(context("code"), [tiny, big, mid],
                              CostTiersSettings(min_quality=0.99))
    assert names(none) == ["big", "mid", "tiny"] and none.details["meets_floor"] == []
    assert none.reason.startswith("none reaches quality 0.99")


def test_cost_tiers_ties_go_to_quality_then_the_routes_order() -> None:
    a, b, c = model("a", 3, 0.8), model("b", 3, 0.9), model("c", 3, 0.9)
    floor = CostTiersSettings(min_quality=0.7)
    assert names(routers.cost_tiers(context(), [a, c, b], floor)) == ["c", "b", "a"]
    low1, low2 = model("low1", 9, 0.3), model("low2", 1, 0.3)
    assert names(routers.cost_tiers(context(), [low1, low2], floor)) == ["low2", "low1"]


# --- [routing] sugar for auto ----------------------------------------------------------------------


class Labels:
    """Sets the labels a prompt spells out (``task=code difficulty=0.5``), and no others (the
    built-in classifier is not loaded beside it)."""

    @hookimpl
    def classify(self, ctx):
        found = dict(word.split("=", 1) for word in ctx.request.messages[-1].text().split()
                     if "=" in word)
        return {k: (float(v) if k in ("difficulty", "complexity") else v)
                for k, v in found.items()}


ROUTES = {name: {"models": ["small"]} for name in ("cheap", "balanced", "strong", "ruled")}


def sugar_kernel(routing: dict) -> Kernel:
    config = parse({
        "providers": {"p": {"kind": "openai-compatible", "base_url": "http://127.0.0.1:9/v1"}},
        "models": {"small": {"provider": "p"}},
        "routes": ROUTES, "routing": routing}, source="test")
    kernel = Kernel(config, builtins={k: v for k, v in BUILTINS.items() if k != "classify"})
    kernel.plugins.register(Labels(), name="labels")
    kernel.load_plugins()
    return kernel


async def routed(kernel: Kernel, prompt: str) -> tuple[str, str]:
    await kernel.start()
    decision = await kernel.explain(kernel.context(ask(prompt)))
    return decision["route"], decision["rule"]


STEPS = [{"below": 0.3, "route": "cheap"}, {"below": 0.7, "route": "balanced"},
         {"route": "strong"}]


async def test_the_task_map_and_difficulty_steps_choose_the_route() -> None:
    kernel = sugar_kernel({"tasks": {"code": "strong", "chat": "cheap"}, "difficulty": STEPS,
                           "default": "ruled"})
    assert await routed(kernel, "task=code difficulty=0.1") == ("strong", "task code -> strong")
    assert await routed(kernel, "task=chat difficulty=0.9") == ("cheap", "task chat -> cheap")
    assert await routed(kernel, "task=math difficulty=0.29") == \
        ("cheap", "difficulty 0.29 < 0.3 -> cheap")
    assert await routed(kernel, "task=math difficulty=0.3") == \
        ("balanced", "difficulty 0.30 < 0.7 -> balanced")
    assert await routed(kernel, "task=math difficulty=0.95") == \
        ("strong", "difficulty 0.95 -> strong")


async def test_difficulty_falls_back_to_complexity_and_the_default_comes_last() -> None:
    kernel = sugar_kernel({"difficulty": STEPS[:2], "default": "ruled"})
    assert await routed(kernel, "task=math complexity=0.5") == \
        ("balanced", "difficulty 0.50 < 0.7 -> balanced")
    assert await routed(kernel, "task=math difficulty=0.1 complexity=0.5") == \
        ("cheap", "difficulty 0.10 < 0.3 -> cheap")
    assert await routed(kernel, "task=math difficulty=0.8") == ("ruled", "default")


async def test_rules_come_before_the_task_map_before_the_difficulty_steps() -> None:
    kernel = sugar_kernel({"rules": [{"name": "urgent", "when": {"urgent": "yes"},
                                      "route": "ruled"}],
                           "tasks": {"code": "strong"}, "difficulty": STEPS})
    assert await routed(kernel, "urgent=yes task=code difficulty=0.1") == ("ruled", "urgent")
    assert await routed(kernel, "task=code difficulty=0.1") == ("strong", "task code -> strong")
    assert await routed(kernel, "task=chat difficulty=0.1") == \
        ("cheap", "difficulty 0.10 < 0.3 -> cheap")


def test_routes_the_sugar_names_must_exist_and_steps_must_ascend() -> None:
    extra = ('[routing]\ntasks = { code = "nowhere" }\n'
             'difficulty = [{ below = 0.5, route = "chain" }, { route = "elsewhere" }]\n')
    text = TOML.format(extra=extra)
    with pytest.raises(errors.ConfigError) as caught:
        parse_text(text, source="gateway.toml")
    message = caught.value.message
    assert f"gateway.toml:{line_of(text, 'nowhere')}: routing.tasks.code: no route 'nowhere'" \
        in message
    assert (f"gateway.toml:{line_of(text, 'elsewhere')}: routing.difficulty[1]: no route "
            "'elsewhere'") in message
    for steps, problem in (('[{ route = "chain" }, { below = 0.5, route = "other" }]',
                            "only the last difficulty entry may leave out 'below'"),
                           ('[{ below = 0.5, route = "chain" }, { below = 0.2, route = "other" }]',
                            "the 'below' bounds must ascend")):
        with pytest.raises(errors.ConfigError, match=problem):
            parse_text(TOML.format(extra=f"[routing]\ndifficulty = {steps}\n"),
                       source="gateway.toml")


# --- over HTTP -------------------------------------------------------------------------------------

KEY = "sk-routers-upstream-0001"
HTTP_CONFIG = {
    "models": {
        "tiny": {"provider": "up", "input_price": 0.1, "output_price": 0.4, "quality": 0.5},
        "mid": {"provider": "up", "input_price": 1, "output_price": 4,
                "quality": {"code": 0.8, "default": 0.6}},
        "big": {"provider": "up", "input_price": 5, "output_price": 15, "quality": 0.9},
    },
    "routes": {
        "tiered": {"models": ["big", "mid", "tiny"],
                   "router": {"kind": "cost_tiers", "min_quality": 0.7}},
        "plain": {"models": ["big", "mid", "tiny"]},
        "scored": {"models": ["big", "mid", "tiny"],
                   "router": {"kind": "score", "quality": 1.0, "price": 1.0, "latency": 0.0}},
    },
    "routing": {"tasks": {"code": "tiered"}, "default": "plain",
                "difficulty": [{"below": 0.2, "route": "scored"}, {"route": "plain"}]},
}
CODE = "Fix the bug in this Python function:\n```python\ndef add(a, b):\n    return a - b\n```"


@pytest.fixture(scope="module")
def fake():
    script = Script(answer=lambda model, prompt: Reply(f"{model} says hi"))
    with serve(openai_app(script, api_key=KEY)) as url:
        yield script, url + "/v1"


@pytest.fixture(scope="module")
def gateway(fake, tmp_path_factory: pytest.TempPathFactory):
    _, url = fake
    config = {"providers": {"up": {"kind": "openai", "base_url": url, "api_key": KEY}},
              **HTTP_CONFIG}
    with running_gateway(config, tmp_path_factory.mktemp("routers")) as gw:
        yield gw


def decision_of(gw, request_id: str) -> dict:
    row = next(r for r in gw.rows() if r["request_id"] == request_id)
    return json.loads(row["decision"])


def test_http_cost_tiers_answers_with_the_cheapest_model_over_the_floor(gateway, fake) -> None:
    script, _ = fake
    raw = gateway.client(timeout=10).chat.completions.with_raw_response.create(
        model="tiered", messages=[{"role": "user", "content": "Write a haiku about rivers."}])
    assert raw.parse().choices[0].message.content == "big says hi"  # chat: only big is >= 0.7
    assert raw.headers["x-turnout-model"] == "big"
    code = gateway.client(timeout=10).chat.completions.with_raw_response.create(
        model="auto", messages=[{"role": "user", "content": CODE}])
    assert code.parse().choices[0].message.content == "mid says hi"  # code: mid 0.8, cheaper
    assert code.headers["x-turnout-route"] == "tiered"
    assert [s.model for s in script.spans][-2:] == ["big", "mid"]
    decision = decision_of(gateway, code.headers["x-request-id"])
    assert decision["rule"] == "task code -> tiered"
    assert decision["router"]["kind"] == "cost_tiers"
    assert decision["router"]["meets_floor"] == ["mid", "big"]
    assert decision["router"]["scores"] == {"mid": 0.8, "big": 0.9, "tiny": 0.5}
    assert decision["plan"] == ["mid", "big", "tiny"]
    plain = gateway.client(timeout=10).chat.completions.with_raw_response.create(
        model="plain", messages=[{"role": "user", "content": CODE}])
    assert plain.headers["x-turnout-model"] == "big"  # no router: the listed order
    assert "router" not in decision_of(gateway, plain.headers["x-request-id"])


def test_http_easy_prompts_step_to_the_score_router_which_weighs_price(gateway, fake) -> None:
    raw = gateway.client(timeout=10).chat.completions.with_raw_response.create(
        model="auto", messages=[{"role": "user", "content": "hi there"}])
    decision = decision_of(gateway, raw.headers["x-request-id"])
    assert decision["labels"]["difficulty"] < 0.2 and decision["rule"].startswith("difficulty")
    assert raw.headers["x-turnout-route"] == "scored"
    scores = decision["router"]["scores"]
    # Price weighs as much as quality: the cheapest model's edge in price beats big's quality.
    assert max(scores, key=scores.get) == "tiny" == raw.headers["x-turnout-model"]
    assert decision["plan"] == sorted(scores, key=lambda m: -scores[m])
    assert raw.parse().choices[0].message.content == "tiny says hi"
    hard = gateway.client(timeout=10).chat.completions.with_raw_response.create(
        model="auto", messages=[{"role": "user", "content": "Design a distributed architecture, "
                                 "analyze the trade-offs, compare options, step by step, and "
                                 "explain why."}])
    assert hard.headers["x-turnout-route"] == "plain"  # past the step: the default's order
    assert hard.headers["x-turnout-model"] == "big"


# --- turnout route --explain -----------------------------------------------------------------------

EXPLAIN_TOML = """\
[providers.fleet]
kind = "simulated"

[models.tiny]
provider = "fleet"
context_window = 300
input_price = 0.1
output_price = 0.4
quality = 0.5

[models.mid]
provider = "fleet"
input_price = 1
output_price = 4
quality = { code = 0.8, default = 0.6 }

[models.big]
provider = "fleet"
input_price = 5
output_price = 15
quality = 0.9

[routes.scored]
models = ["big", "mid", "tiny"]
router = { kind = "score", price = 0.5 }
"""


def explained(tmp_path: Path, capsys, *args: str) -> str:
    path = tmp_path / "gateway.toml"
    path.write_text(EXPLAIN_TOML)
    capsys.readouterr()
    logging = structlog.get_config()  # the command configures logging for the process
    try:
        assert cli.main(["route", "--config", str(path), *args]) == 0
    finally:
        structlog.configure(**logging)
    return capsys.readouterr().out


def test_route_explain_shows_labels_drops_scores_and_plan(tmp_path: Path, capsys) -> None:
    prompt = "Compare these two designs and explain why. " + "word " * 300
    raw = json.loads(explained(tmp_path, capsys, "--explain", prompt, "--model", "scored",
                               "--json"))
    task = raw["labels"]["task"]
    mid = {"code": 0.8}.get(task, 0.6)  # mid's quality for the task the classifier saw
    # price among the two left (tiny does not fit): mid 1, big 0; no latency seen: 1 each
    expected = {"mid": mid + 0.5 + 0.1, "big": 0.9 + 0.0 + 0.1}
    assert raw["router"]["kind"] == "score" and raw["plan"] == ["mid", "big"]
    assert raw["router"]["scores"] == pytest.approx(expected)
    out = explained(tmp_path, capsys, "--explain", prompt, "--model", "scored")
    lines = out.splitlines()
    row = {line.split()[0]: line for line in lines if line and not line.startswith(" ")}
    assert f"task {task}" in row["labels"] and "prompt_tokens" in row["labels"]
    assert row["route"].split()[1:5] == ["scored", "(asked", "for", "scored)"]
    assert row["candidates"].split(None, 1)[1] == "big, mid, tiny"
    assert row["dropped"].split(None, 1)[1].startswith("tiny: needs ")
    assert "context window is 300" in row["dropped"]
    assert row["router"].split(None, 1)[1] == (f"score: score for task {task}: mid "
                                               f"{expected['mid']:.3f}, next big 1.000")
    table = [line.split() for line in lines[lines.index(row["router"]) + 1:][:3]]
    assert table[0][:5] == ["model", "score", "quality", "price", "latency"]
    assert [r[:3] for r in table[1:]] == [["mid", f"{expected['mid']:.4g}", f"{mid:.4g}"],
                                          ["big", "1", "0.9"]]
    assert row["plan"].split(None, 1)[1] == "fallback: mid -> big"
