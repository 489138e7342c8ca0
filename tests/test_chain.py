"""The built-in ``chain`` strategy: its config errors (with their lines), prompt rendering, the
kernel running stages with a scripted provider, and the gateway over HTTP with the official
openai SDK against a fake OpenAI upstream whose answers depend on the model and the prompt."""

from __future__ import annotations

import json
import time

import anyio
import pytest

from turnout.kernel import errors
from turnout.kernel.config import parse, parse_text
from turnout.kernel.hookspecs import hookimpl
from turnout.kernel.kernel import BUILTINS, Kernel
from turnout.kernel.types import Answer, ChatRequest, Chunk, Completion, Usage
from turnout.plugins.chain import placeholders, render

from .fakes import Delay, Reply, Script, openai_app, serve
from .gateway import running_gateway
from .support import ROUTING, collect

# --- config errors, each with its line ---------------------------------------------------------

PIPELINE = """\
[providers.p]
kind = "openai-compatible"
base_url = "http://127.0.0.1:9/v1"

[models.small]
provider = "p"

[models.large]
provider = "p"

[routes.review-pipeline]
strategy = "chain"
[[routes.review-pipeline.stages]]
name = "triage"
model = "small"
prompt = "Rate the risk of this change as LOW, MEDIUM or HIGH: {input}"
[[routes.review-pipeline.stages]]
name = "deep"
model = "large"
prompt = "Review this high-risk change in depth: {input}"
when = { stage = "triage", matches = "HIGH" }
"""
"""The issue's example. Line 19 is deep's model, 20 its prompt, 21 its when."""


def load(text: str) -> Kernel:
    kernel = Kernel(parse_text(text, source="gateway.toml"), builtins=BUILTINS)
    kernel.load_plugins()
    return kernel


def problems(text: str) -> str:
    with pytest.raises(errors.ConfigError) as caught:
        load(text)
    return str(caught.value)


def test_the_issue_example_loads_as_a_route_without_models() -> None:
    kernel = load(PIPELINE)
    route = kernel.config.routes["review-pipeline"]
    assert route.models == [] and route.strategy == "chain"
    stages = kernel.route_settings("chain", "review-pipeline").stages
    assert [(s.name, s.model) for s in stages] == [("triage", "small"), ("deep", "large")]
    assert stages[1].when.stage == "triage" and stages[1].when.matches == "HIGH"
    assert kernel.route_settings("chain", "another").stages == []  # other routes: none


@pytest.mark.parametrize("old, new, expected", [
    ('model = "large"', 'model = "huge"',
     "gateway.toml:19: routes.review-pipeline.stages[1].model: no model or route 'huge'; name "
     "one of the models (large, small) or routes (review-pipeline)"),
    ('model = "large"', 'model = "auto"',
     "gateway.toml:19: routes.review-pipeline.stages[1].model: 'auto' lets the routers choose"),
    ('model = "large"', 'model = "review-pipeline"',
     "gateway.toml:19: routes.review-pipeline.stages[1].model: a stage cannot ask its own route"),
    ('stage = "triage"', 'stage = "deep"',
     "gateway.toml:21: routes.review-pipeline.stages[1].when.stage: names this stage itself; a "
     "stage can use only input, triage"),
    ('matches = "HIGH"', 'matches = "(HIGH"',
     "gateway.toml:21: routes.review-pipeline.stages[1].when.matches: not a valid regular "
     "expression: missing ), unterminated subpattern"),
    ("in depth: {input}", "in depth: {input} {triag}",
     "gateway.toml:20: routes.review-pipeline.stages[1].prompt: {triag} names no stage: 'triag' "
     "is unknown; a stage can use only input, triage"),
    ('name = "deep"', 'name = "triage"',
     "gateway.toml:18: routes.review-pipeline.stages[1].name: a stage before this one is named "
     "'triage' too"),
    ('name = "deep"', 'name = "input"',
     "gateway.toml:18: routes.review-pipeline.stages[1].name: 'input' is the placeholder"),
    ('strategy = "chain"', 'strategy = "fallback"',
     "gateway.toml:13: routes.review-pipeline.stages: only strategy = \"chain\" runs stages, and "
     "this route's strategy is 'fallback'"),
])
def test_a_bad_stage_is_a_config_error_with_its_line(old: str, new: str, expected: str) -> None:
    assert old in PIPELINE
    assert expected in problems(PIPELINE.replace(old, new, 1))


def test_a_stage_may_use_only_the_stages_before_it() -> None:
    later = PIPELINE.replace("of this change as LOW, MEDIUM or HIGH: {input}",
                             "of this change as LOW, MEDIUM or HIGH: {input} {deep}")
    assert "gateway.toml:16: routes.review-pipeline.stages[0].prompt: {deep} names stage " \
           "'deep', which comes later; a stage can use only the stages before it: input" \
           in problems(later)
    swapped = PIPELINE.replace('when = { stage = "triage", matches = "HIGH" }', "") + \
        '[[routes.review-pipeline.stages]]\nname = "third"\nmodel = "small"\nprompt = "{input}"\n'
    swapped = swapped.replace('[[routes.review-pipeline.stages]]\nname = "triage"\n',
                              '[[routes.review-pipeline.stages]]\nname = "triage"\n'
                              'when = { stage = "third", matches = "x" }\n')
    assert "gateway.toml:15: routes.review-pipeline.stages[0].when.stage: names stage 'third', " \
           "which comes later" in problems(swapped)


def test_a_chain_needs_stages_and_other_strategies_need_models() -> None:
    no_stages = PIPELINE.split("[[routes.review-pipeline.stages]]")[0]
    assert "gateway.toml:11: routes.review-pipeline.stages: a route with strategy = \"chain\" " \
           "needs stages: add [[routes.review-pipeline.stages]] tables" in problems(no_stages)
    plain = no_stages.replace('strategy = "chain"', 'strategy = "race"')
    assert "gateway.toml:11: routes.review-pipeline.models: strategy 'race' needs models" \
        in problems(plain)
    assert load(plain.replace('strategy = "race"', 'models = ["small"]\nstrategy = "race"'))
    with_models = PIPELINE.replace('strategy = "chain"', 'models = ["small"]\nstrategy = "chain"')
    assert "gateway.toml:12: routes.review-pipeline.models: strategy 'chain' takes no models" \
        in problems(with_models)


def test_config_check_accepts_a_chain_and_names_the_line_of_a_bad_one(
        tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    from turnout.adapters.cli import main

    good, bad = tmp_path / "gateway.toml", tmp_path / "bad.toml"
    good.write_text(PIPELINE)
    bad.write_text(PIPELINE.replace('stage = "triage"', 'stage = "nothing"'))
    assert main(["config", "check", str(good)]) == 0
    assert "ok (1 providers, 2 models, 1 routes)" in capsys.readouterr().out
    assert main(["config", "check", str(bad)]) == 2
    assert "bad.toml:21: routes.review-pipeline.stages[1].when.stage: names no stage: " \
           "'nothing' is unknown" in capsys.readouterr().err


def test_every_problem_of_a_chain_is_listed_at_once() -> None:
    bad = PIPELINE.replace('model = "large"', 'model = "huge"').replace('"HIGH"', '"(HIGH"')
    message = problems(bad)
    assert "stages[1].model" in message and "stages[1].when.matches" in message


# --- rendering ---------------------------------------------------------------------------------


def test_render_fills_known_names_once_and_leaves_other_braces() -> None:
    values = {"input": "fix {triage} and {0} and {{x}} and %(s)s", "triage": "HIGH"}
    template = 'Risk {triage} of: {input}; as JSON {"risk": 1} or { } or {unknown}'
    assert render(template, values) == (
        'Risk HIGH of: fix {triage} and {0} and {{x}} and %(s)s; as JSON {"risk": 1} or { } or '
        "{unknown}")
    assert placeholders(template) == ["triage", "input", "unknown"]
    assert render("{input}{input}", {"input": "a}{"}) == "a}{a}{"


# --- the kernel, with a scripted fleet ---------------------------------------------------------


class Fleet:
    """A provider plugin answering ``answer(model, prompt)`` (a text, an exception, or
    ``(delay_s, text)``); logs each call's model, prompt, start and end."""

    def __init__(self, answer) -> None:
        self.answer = answer
        self.calls: list[tuple[str, str, float, float]] = []

    @hookimpl(tryfirst=True)
    async def call(self, ctx, step):
        prompt = ctx.request.messages[-1].text()
        started = time.monotonic()
        outcome = self.answer(step.model.name, prompt)
        delay, outcome = outcome if isinstance(outcome, tuple) else (0, outcome)
        await anyio.sleep(delay)
        self.calls.append((step.model.name, prompt, started, time.monotonic()))
        if isinstance(outcome, Exception):
            raise outcome
        if ctx.request.stream:
            return _stream(outcome)
        return Completion(content=outcome, usage=Usage(10, 5))


async def _stream(text: str):
    for part in (text[:4], text[4:]):
        yield Chunk(content=part)
    yield Chunk(finish_reason="stop", usage=Usage(10, 5))


MODELS = {"small": {"provider": "p", "input_price": 1, "output_price": 2},
          "large": {"provider": "p", "input_price": 10, "output_price": 20}}


def stage(name: str, model: str, prompt: str, **when) -> dict:
    return {"name": name, "model": model, "prompt": prompt, **({"when": when} if when else {})}


def chain_kernel(answer, *stages: dict, routes: dict | None = None) -> tuple[Kernel, Fleet]:
    config = parse({
        "providers": {"p": {"kind": "openai-compatible", "base_url": "http://127.0.0.1:9/v1"}},
        "models": MODELS,
        "routes": {"pipe": {"strategy": "chain", "stages": list(stages)}, **(routes or {})},
    }, source="test")
    kernel = Kernel(config, builtins={**ROUTING, "chain": "turnout.plugins.chain"})
    kernel.load_plugins()
    fleet = Fleet(answer)
    kernel.plugins.register(fleet, name="fleet")
    return kernel, fleet


def request(text: str = "add a cache", *, stream: bool = False,
            system: str | None = None) -> ChatRequest:
    messages = [{"role": "system", "content": system}] if system else []
    messages += [{"role": "user", "content": "an earlier question"},
                 {"role": "assistant", "content": "an earlier answer"},
                 {"role": "user", "content": text}]
    return ChatRequest(model="pipe", messages=messages, stream=stream)


REVIEW = (stage("triage", "small", "Rate: {input}"),
          stage("deep", "large", "Review {input} (rated {triage})", stage="triage",
                matches="HIGH"),
          stage("summary", "small", "Summarize {deep}"))


def review(model: str, prompt: str) -> str:
    if prompt.startswith("Rate:"):
        return "HIGH" if "delete" in prompt else "LOW"
    return f"{model} on <{prompt}>"


def ran(ctx) -> list[tuple[str, bool]]:
    return [(e["name"], e["ran"]) for e in ctx.decision["chain"]["stages"]]


@pytest.mark.anyio
async def test_stages_run_in_order_feeding_each_other() -> None:
    kernel, fleet = chain_kernel(review, *REVIEW)
    async with kernel:
        ctx = kernel.context(request("delete the database", system="Be terse."))
        completion = await kernel.complete(ctx)
    assert [c[:2] for c in fleet.calls] == [
        ("small", "Rate: delete the database"),
        ("large", "Review delete the database (rated HIGH)"),
        ("small", "Summarize large on <Review delete the database (rated HIGH)>")]
    assert completion.content == f"small on <{fleet.calls[2][1]}>"
    assert ran(ctx) == [("triage", True), ("deep", True), ("summary", True)]
    assert ctx.decision["chain"]["answer_stage"] == "summary"
    assert ctx.decision["plan"] == [] and ctx.decision["strategy"] == "chain"
    entries = ctx.decision["chain"]["stages"]
    assert entries[0]["chars"] == 4 and entries[0]["ended_s"] <= entries[1]["started_s"]
    # each stage sees the system prompt and its rendered prompt only, as its own sub-request
    assert [[m.role for m in c.request.messages] for c in ctx.children] == [["system", "user"]] * 3
    assert [c.parent is ctx for c in ctx.children] == [True] * 3
    assert Answer.of(ctx).cost_usd == pytest.approx(sum(c.spend_usd for c in ctx.children))
    assert Answer.of(ctx).cost_usd == pytest.approx((2 * (10 + 10) + (100 + 100)) / 1e6)


@pytest.mark.anyio
async def test_a_failed_condition_skips_the_stage_and_the_stages_using_it() -> None:
    kernel, fleet = chain_kernel(review, *REVIEW)
    async with kernel:
        ctx = kernel.context(request("fix a typo"))
        completion = await kernel.complete(ctx)
    assert [c[0] for c in fleet.calls] == ["small"]
    assert completion.content == "LOW"
    assert ran(ctx) == [("triage", True), ("deep", False), ("summary", False)]
    entries = ctx.decision["chain"]["stages"]
    assert entries[1]["skipped_because"] == "the answer of 'triage' does not match 'HIGH'"
    assert entries[2]["skipped_because"] == "it needs stage 'deep', which was skipped"
    assert ctx.decision["chain"]["answer_stage"] == "triage"


@pytest.mark.anyio
async def test_independent_stages_run_at_once_and_the_next_waits_for_both() -> None:
    def answer(model, prompt):
        if prompt.startswith("Weigh"):
            return "balanced"
        return 0.3, f"{model} says {prompt.split()[0]}"

    kernel, fleet = chain_kernel(answer, stage("pros", "small", "Pros of {input}"),
                                 stage("cons", "large", "Cons of {input}"),
                                 stage("verdict", "small", "Weigh {pros} | {cons}"))
    async with kernel:
        ctx = kernel.context(request())
        started = time.monotonic()
        completion = await kernel.complete(ctx)
        took = time.monotonic() - started
    assert completion.content == "balanced"
    pros, cons, verdict = fleet.calls
    assert pros[2] < cons[3] and cons[2] < pros[3]  # in flight together
    assert verdict[2] >= max(pros[3], cons[3])
    assert verdict[1] == "Weigh small says Pros | large says Cons"
    assert took < 0.55  # 0.3 s, not 0.6 s


@pytest.mark.anyio
async def test_a_failing_stage_fails_the_request_and_cancels_the_others() -> None:
    def answer(model, prompt):
        if prompt.startswith("Pros"):
            return 0.05, errors.ProviderUnavailable("pros are down", provider="p", model=model)
        return 2.0, "too late"

    kernel, fleet = chain_kernel(answer, stage("pros", "small", "Pros of {input}"),
                                 stage("cons", "large", "Cons of {input}"),
                                 stage("verdict", "small", "Weigh {pros} | {cons}"))
    async with kernel:
        ctx = kernel.context(request())
        with anyio.fail_after(1.5), pytest.raises(errors.ProviderUnavailable):
            await kernel.complete(ctx)
    assert ctx.status == "error"
    entries = ctx.decision["chain"]["stages"]
    assert "pros are down" in entries[0]["error"] and not entries[0]["ran"]
    assert not entries[1]["ran"] and entries[1]["skipped_because"] == \
        "cancelled: stage 'pros' failed"
    assert not entries[2]["ran"] and entries[2]["skipped_because"] == "stage 'pros' failed"
    assert [c.status for c in ctx.children] == ["error", "cancelled"]


@pytest.mark.anyio
async def test_streaming_streams_the_last_stage_and_replays_an_earlier_answer() -> None:
    kernel, fleet = chain_kernel(review, *REVIEW[:2])
    async with kernel:
        ctx = kernel.context(request("delete it", stream=True))
        stream = await kernel.stream(ctx)
        chunks = await collect(stream)
        assert len(chunks) == 3  # deep's own two pieces and its end: streamed, not replayed
        assert "".join(c.content or "" for c in chunks) == "large on <Review delete it " \
                                                          "(rated HIGH)>"
        assert ctx.decision["chain"]["stages"][1]["streamed"]
        assert [c.request.stream for c in ctx.children] == [False, True]
        assert stream.answer.model == "large" and stream.answer.cost_usd > 0

        ctx = kernel.context(request("fix it", stream=True))
        chunks = await collect(await kernel.stream(ctx))
        assert "".join(c.content or "" for c in chunks) == "LOW"
        assert ran(ctx) == [("triage", True), ("deep", False)]
        assert ctx.status == "ok" and ctx.decision["chain"]["answer_stage"] == "triage"


@pytest.mark.anyio
async def test_a_condition_may_test_the_input() -> None:
    kernel, fleet = chain_kernel(review, stage("plain", "small", "Answer {input}"),
                                 stage("careful", "large", "Carefully: {input}",
                                       stage="input", matches="(?i)urgent"))
    async with kernel:
        calm = await kernel.complete(ctx := kernel.context(request("what time is it")))
        assert ran(ctx) == [("plain", True), ("careful", False)]
        urgent = await kernel.complete(kernel.context(request("URGENT: prod is down")))
    assert calm.content == "small on <Answer what time is it>"
    assert urgent.content == "large on <Carefully: URGENT: prod is down>"
    # the two stages of the urgent request do not depend on each other: both ran at once
    assert [c[0] for c in fleet.calls] == ["small", "small", "large"]


@pytest.mark.anyio
async def test_a_chain_leading_back_to_itself_is_refused() -> None:
    kernel, fleet = chain_kernel(review, stage("ask", "other", "{input}"), routes={
        "other": {"strategy": "chain", "stages": [stage("back", "pipe", "{input}")]}})
    async with kernel:
        with pytest.raises(errors.NoRoute, match="asks itself through its stages"):
            await kernel.complete(kernel.context(request()))
    assert fleet.calls == []


# --- over HTTP ---------------------------------------------------------------------------------

KEY = "sk-chain-upstream-1357"
OVERLAP_S = 0.3


def fleet_answer(model: str, prompt: str):
    """The fake fleet: small rates risk (HIGH for anything that drops or deletes, else LOW), the
    'pros' and 'cons' prompts take OVERLAP_S seconds, anything else is echoed with the model."""
    if prompt.startswith("Rate the risk"):
        return "HIGH" if any(w in prompt for w in ("drop", "delete")) else "LOW"
    if prompt.startswith(("Pros:", "Cons:")):
        return Delay(OVERLAP_S, Reply(f"{prompt.split(':')[0].lower()} by {model}"))
    return f"{model} reviewed: {prompt}"


@pytest.fixture(scope="module")
def fake():
    script = Script(answer=fleet_answer)
    with serve(openai_app(script, api_key=KEY)) as url:
        yield script, url + "/v1"


@pytest.fixture(scope="module")
def gateway(fake, tmp_path_factory: pytest.TempPathFactory):
    config = {
        "providers": {"up": {"kind": "openai", "base_url": fake[1], "api_key": KEY}},
        "models": {"small": {"provider": "up", "input_price": 1.0, "output_price": 2.0},
                   "large": {"provider": "up", "input_price": 30.0, "output_price": 60.0}},
        "routes": {
            "review-pipeline": {"strategy": "chain", "stages": [
                stage("triage", "small",
                      "Rate the risk of this change as LOW, MEDIUM or HIGH: {input}"),
                stage("deep", "large", "Review this high-risk change in depth: {input}",
                      stage="triage", matches="HIGH")]},
            "weigh": {"strategy": "chain", "stages": [
                stage("pros", "small", "Pros: {input}"),
                stage("cons", "large", "Cons: {input}"),
                stage("verdict", "large", "Weigh {pros} against {cons} for: {input}")]},
        },
    }
    with running_gateway(config, tmp_path_factory.mktemp("chain")) as gw:
        yield gw


@pytest.fixture
def script(fake) -> Script:
    fake[0].reset()
    return fake[0]


def record_of(gateway, request_id: str) -> tuple[dict, list[dict]]:
    """The request's row (its decision decoded) and its sub-requests' rows."""
    rows = gateway.rows()
    row = next(r for r in rows if r["request_id"] == request_id)
    row["decision"] = json.loads(row["decision"] or "{}")
    return row, [r for r in rows if r["parent_id"] == request_id]


def ask(gateway, model: str, text: str, **kw):
    return gateway.client(timeout=10).chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "system", "content": "You review code."},
                               {"role": "user", "content": text}], **kw)


def test_http_high_risk_runs_the_deep_review_and_answers_with_it(gateway, script) -> None:
    change = "drop the users table {now}"
    raw = ask(gateway, "review-pipeline", change)
    deep_prompt = f"Review this high-risk change in depth: {change}"
    assert raw.parse().choices[0].message.content == f"large reviewed: {deep_prompt}"
    assert [s.model for s in script.spans] == ["small", "large"]
    assert script.requests[0].body["messages"] == [
        {"role": "system", "content": "You review code."},
        {"role": "user", "content": f"Rate the risk of this change as LOW, MEDIUM or HIGH: "
                                    f"{change}"}]
    assert (raw.headers["x-turnout-strategy"], raw.headers["x-turnout-model"]) == \
        ("chain", "large")
    row, subs = record_of(gateway, raw.headers["x-request-id"])
    assert [(s["route"], s["model"], s["status"]) for s in subs] == [
        ("small", "small", "ok"), ("large", "large", "ok")]
    cost = float(raw.headers["x-turnout-cost-usd"])
    assert all(s["cost_usd"] > 0 for s in subs)
    assert cost == pytest.approx(sum(s["cost_usd"] for s in subs), abs=1e-9)
    assert row["cost_usd"] == pytest.approx(cost, abs=1e-9)
    chain = row["decision"]["chain"]
    assert [(e["name"], e["model"], e["ran"]) for e in chain["stages"]] == [
        ("triage", "small", True), ("deep", "large", True)]
    assert chain["answer_stage"] == "deep" and row["decision"]["plan"] == []


def test_http_low_risk_skips_the_deep_review(gateway, script) -> None:
    raw = ask(gateway, "review-pipeline", "fix a typo in the README")
    assert raw.parse().choices[0].message.content == "LOW"
    assert [s.model for s in script.spans] == ["small"]  # large was never called
    assert raw.headers["x-turnout-model"] == "small"
    row, subs = record_of(gateway, raw.headers["x-request-id"])
    assert [s["model"] for s in subs] == ["small"]
    assert float(raw.headers["x-turnout-cost-usd"]) == pytest.approx(subs[0]["cost_usd"],
                                                                     abs=1e-9)
    deep = row["decision"]["chain"]["stages"][1]
    assert (deep["ran"], deep["skipped_because"]) == \
        (False, "the answer of 'triage' does not match 'HIGH'")
    assert row["decision"]["chain"]["answer_stage"] == "triage"


def test_http_independent_stages_overlap_and_feed_the_last(gateway, script) -> None:
    raw = ask(gateway, "weigh", "switch to Postgres")
    pros, cons = (next(s for s in script.spans if s.prompt.startswith(p))
                  for p in ("Pros:", "Cons:"))
    assert pros.overlaps(cons)
    verdict = next(r.body for r in script.requests
                   if r.body["messages"][-1]["content"].startswith("Weigh"))
    prompt = "Weigh pros by small against cons by large for: switch to Postgres"
    assert verdict["messages"][-1]["content"] == prompt
    assert raw.parse().choices[0].message.content == f"large reviewed: {prompt}"
    row, subs = record_of(gateway, raw.headers["x-request-id"])
    assert sorted(s["model"] for s in subs) == ["large", "large", "small"]
    assert float(raw.headers["x-turnout-cost-usd"]) == pytest.approx(
        sum(s["cost_usd"] for s in subs), abs=1e-9)
    assert [e["ran"] for e in row["decision"]["chain"]["stages"]] == [True, True, True]


def test_http_streaming_streams_the_last_stage(gateway, script) -> None:
    change = "delete the old backups"
    raw = ask(gateway, "review-pipeline", change, stream=True,
              stream_options={"include_usage": True})
    assert raw.headers["x-turnout-model"] == "large"
    chunks = list(raw.parse())
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == f"large reviewed: Review this high-risk change in depth: {change}"
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) > 1
    assert chunks[-1].usage.completion_tokens > 0
    large = next(r.body for r in script.requests if r.body["model"] == "large")
    small = next(r.body for r in script.requests if r.body["model"] == "small")
    assert large.get("stream") is True and not small.get("stream")
    row, subs = record_of(gateway, raw.headers["x-request-id"])
    assert row["status"] == "ok" and [s["status"] for s in subs] == ["ok", "ok"]
    assert row["cost_usd"] == pytest.approx(sum(s["cost_usd"] for s in subs), abs=1e-9)
    assert row["decision"]["chain"]["stages"][1]["streamed"] is True


def test_http_models_lists_the_chain_route(gateway, script) -> None:
    listed = [m.id for m in gateway.client().models.list()]
    assert "review-pipeline" in listed and "weigh" in listed
