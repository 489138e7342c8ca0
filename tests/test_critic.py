"""The built-in ``critic`` strategy: in the kernel with scripted models, and over HTTP with the
official openai SDK against the fake OpenAI upstream, whose writer and reviewers answer by what
they are shown."""

from __future__ import annotations

import json
import re

import pytest

from turnout.kernel import errors
from turnout.kernel.hookspecs import hookimpl
from turnout.kernel.types import Answer, Completion, Usage
from turnout.plugins import critic

from .fakes import Script, openai_app, serve
from .gateway import running_gateway
from .support import ask, collect, kernel_for

pytestmark = pytest.mark.anyio


def verdict(score, feedback="add the year it was built") -> str:
    return json.dumps({"score": score, "feedback": feedback})


class Seen:
    """Logs the request each call was made with (and lets the scripted provider answer)."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, object]] = []

    @hookimpl(tryfirst=True)
    def call(self, ctx, step):
        self.requests.append((step.model.name, ctx.request))


def critic_kernel(script, models=None, route_models=("small",), **settings):
    seen = Seen()
    kernel, provider, recorder = kernel_for(
        script, route={"models": list(route_models), "strategy": "critic",
                       "critic": {"model": "big", **settings}},
        models=models, plugins={"critic": critic, "seen": seen})
    return kernel, provider, recorder, seen


def record_of(recorder, ctx):
    return next(r for r in recorder.records if r[0] == ctx.request_id)


# --- reading the critic's answer -----------------------------------------------------------------


@pytest.mark.parametrize(("text", "expected"), [
    ('{"score": 7, "feedback": "cite a source"}', (7.0, "cite a source")),
    ('```json\n{"score": 6, "feedback": "shorter"}\n```', (6.0, "shorter")),
    ('My verdict: {"score": "9", "feedback": "fine"} -- hope it helps {sic}', (9.0, "fine")),
    ('{"score": "8/10", "reason": "solid"}', (8.0, "solid")),
    ('{"score": 5}', (5.0, "")),
    ('{"score": 14, "feedback": "x"}', (10.0, "x")),
    ('{"score": 0, "feedback": "x"}', (1.0, "x")),
    ('{"score": -3, "feedback": "x"}', (1.0, "x")),
    ("Score: 4. Too vague.", (4.0, "Score: 4. Too vague.")),
])
def test_verdicts_are_read_leniently_and_clamped(text, expected) -> None:
    assert critic.parse_verdict(text) == expected


@pytest.mark.parametrize("text", ["Looks good to me.", "", '{"score": true}',
                                  '{"feedback": "no score"}', '{"score": "great"}'])
def test_an_answer_without_a_score_gives_none(text) -> None:
    assert critic.parse_verdict(text) is None


# --- the loop in the kernel ------------------------------------------------------------------------


async def test_stops_once_a_draft_reaches_min_score() -> None:
    kernel, provider, recorder, seen = critic_kernel(
        {"small": ["draft 1", "draft 2"],
         "big": [verdict(5, "add the year"), '```json\n' + verdict(9, "good") + '\n```']})
    async with kernel:
        ctx = kernel.context(ask("When was the bridge built?", model="chain"))
        completion = await kernel.complete(ctx)
    assert completion.content == "draft 2"
    assert provider.calls == ["small", "big", "small", "big"]
    record = ctx.decision["critic"]
    assert [(r["round"], r["draft_model"], r["score"]) for r in record["rounds"]] == \
        [(1, "small", 5.0), (2, "small", 9.0)]
    assert record["rounds"][0]["feedback"] == "add the year"
    assert (record["stopped"], record["chosen_round"]) == ("min_score", 2)
    assert ctx.response_headers[critic.SCORE_HEADER] == "9"
    assert ctx.response_headers[critic.ROUNDS_HEADER] == "2"
    # The critic saw the conversation and the draft; the writer revised its own draft.
    critique = seen.requests[1][1]
    assert "When was the bridge built?" in critique.messages[-1].text()
    assert "draft 1" in critique.messages[-1].text()
    revision = seen.requests[2][1]
    assert [m.role for m in revision.messages] == ["user", "assistant", "user"]
    assert revision.messages[1].text() == "draft 1"
    assert "add the year" in revision.messages[2].text() and "5/10" in revision.messages[2].text()
    # The first draft is the request's attempt; critiques and revisions are sub-requests.
    assert record_of(recorder, ctx) == (ctx.request_id, "ok", ["ok"])
    assert [c.request.model for c in ctx.children] == ["big", "small", "big"]
    small, big = (10 * 1 + 5 * 2) / 1e6, (10 * 10 + 5 * 20) / 1e6
    assert Answer.of(ctx).cost_usd == pytest.approx(2 * small + 2 * big)
    assert Answer.of(ctx).model == "small"


async def test_stops_after_max_rounds_with_the_best_scoring_draft() -> None:
    kernel, provider, _, _ = critic_kernel(
        {"small": ["draft 1", "draft 2", "draft 3", "draft 4"],
         "big": [verdict(3), verdict(6), verdict(5), verdict(9)]}, max_rounds=3)
    async with kernel:
        ctx = kernel.context(ask(model="chain"))
        completion = await kernel.complete(ctx)
    assert completion.content == "draft 2"  # scored 6, better than the last draft's 5
    assert provider.calls == ["small", "big"] * 3  # no fourth draft, no fourth critique
    record = ctx.decision["critic"]
    assert [r["score"] for r in record["rounds"]] == [3.0, 6.0, 5.0]
    assert (record["stopped"], record["chosen_round"]) == ("max_rounds", 2)
    assert ctx.response_headers[critic.SCORE_HEADER] == "6"
    assert ctx.response_headers[critic.ROUNDS_HEADER] == "3"


async def test_one_round_is_one_critique_and_no_revision() -> None:
    kernel, provider, _, _ = critic_kernel({"small": ["draft 1", "draft 2"],
                                            "big": [verdict(2)]}, max_rounds=1)
    async with kernel:
        ctx = kernel.context(ask(model="chain"))
        assert (await kernel.complete(ctx)).content == "draft 1"
    assert provider.calls == ["small", "big"]
    assert ctx.decision["critic"]["stopped"] == "max_rounds"


async def test_a_tie_goes_to_the_later_draft() -> None:
    kernel, _, _, _ = critic_kernel({"small": ["draft 1", "draft 2"],
                                     "big": [verdict(4), verdict(4)]}, max_rounds=2)
    async with kernel:
        ctx = kernel.context(ask(model="chain"))
        assert (await kernel.complete(ctx)).content == "draft 2"
    assert ctx.decision["critic"]["chosen_round"] == 2


async def test_a_critic_without_a_score_stops_with_the_current_draft() -> None:
    kernel, provider, _, _ = critic_kernel({"small": ["draft 1"], "big": ["Looks fine to me."]})
    async with kernel:
        ctx = kernel.context(ask(model="chain"))
        assert (await kernel.complete(ctx)).content == "draft 1"
    record = ctx.decision["critic"]
    assert record["stopped"] == "critic_failed"
    assert "gave no score" in record["reason"] and "Looks fine" in record["reason"]
    assert record["rounds"] == [{"round": 1, "draft_model": "small", "score": None,
                                 "feedback": None}]
    assert critic.SCORE_HEADER not in ctx.response_headers
    assert ctx.response_headers[critic.ROUNDS_HEADER] == "1"


async def test_a_failing_critic_stops_with_the_revision_it_did_not_judge() -> None:
    down = errors.ProviderUnavailable("503 from the critic")
    kernel, provider, recorder, _ = critic_kernel(
        {"small": ["draft 1", "draft 2"], "big": [verdict(4), down, down]})
    async with kernel:
        ctx = kernel.context(ask(model="chain"))
        assert (await kernel.complete(ctx)).content == "draft 2"
    record = ctx.decision["critic"]
    assert record["stopped"] == "critic_failed" and "503 from the critic" in record["reason"]
    assert [r["score"] for r in record["rounds"]] == [4.0, None]
    assert record["chosen_round"] == 2
    assert critic.SCORE_HEADER not in ctx.response_headers
    assert record_of(recorder, ctx)[1] == "ok"


async def test_a_failing_revision_stops_with_the_best_draft() -> None:
    kernel, provider, _, _ = critic_kernel(
        {"small": ["draft 1", errors.ProviderBadRequest("no")], "big": [verdict(6)]})
    async with kernel:
        ctx = kernel.context(ask(model="chain"))
        assert (await kernel.complete(ctx)).content == "draft 1"
    record = ctx.decision["critic"]
    assert record["stopped"] == "revision_failed" and "'small' did not revise" in record["reason"]
    assert ctx.response_headers[critic.SCORE_HEADER] == "6"


# Writer: free prompt, $1000 per million output tokens; critic free. A request with
# max_tokens=100 makes every revision's worst case 100 * 1000 / 1e6 = $0.1, and every scripted
# draft (5 output tokens) cost $0.005.
PRICED = {"small": {"provider": "p", "input_price": 0, "output_price": 1000},
          "big": {"provider": "p", "input_price": 0, "output_price": 0}}


@pytest.mark.parametrize(("cap", "calls", "drafts"), [
    (0.104, ["small", "big"], 1),                # 0.005 spent + 0.1 > 0.104: no revision
    (0.106, ["small", "big", "small", "big"], 2),  # 0.010 + 0.1 > 0.106: no second revision
])
async def test_stops_before_a_call_that_could_pass_max_cost_usd(cap, calls, drafts) -> None:
    kernel, provider, _, _ = critic_kernel(
        {"small": ["draft 1", "draft 2", "draft 3"], "big": [verdict(3), verdict(4), verdict(5)]},
        models=PRICED, max_cost_usd=cap)
    async with kernel:
        ctx = kernel.context(ask(model="chain", max_tokens=100))
        completion = await kernel.complete(ctx)
    assert provider.calls == calls
    assert completion.content == f"draft {drafts}"
    record = ctx.decision["critic"]
    assert record["stopped"] == "max_cost_usd" and "the revision by small" in record["reason"]
    assert len(record["rounds"]) == drafts
    assert Answer.of(ctx).cost_usd == pytest.approx(0.005 * drafts) and ctx.spend_usd <= cap


async def test_the_first_draft_is_always_written_and_the_cap_can_stop_its_critique() -> None:
    models = {"small": {"provider": "p", "input_price": 0, "output_price": 1000},
              "big": {"provider": "p", "input_price": 0, "output_price": 100}}
    kernel, provider, _, _ = critic_kernel({"small": ["draft 1"], "big": [verdict(9)]},
                                           models=models, max_cost_usd=0.01)
    async with kernel:  # the critique's worst case: 500 tokens at $100/M = $0.05
        ctx = kernel.context(ask(model="chain"))
        assert (await kernel.complete(ctx)).content == "draft 1"
    assert provider.calls == ["small"]
    record = ctx.decision["critic"]
    assert record["stopped"] == "max_cost_usd" and "the critique by big" in record["reason"]
    assert record["rounds"][0]["score"] is None and record["chosen_round"] == 1
    assert critic.SCORE_HEADER not in ctx.response_headers


class Tools:
    """The writer answers with a tool call."""

    @hookimpl(tryfirst=True)
    def call(self, ctx, step):
        if step.model.name == "small":
            return Completion(content=None, finish_reason="tool_calls", usage=Usage(10, 5),
                              tool_calls=[{"id": "call_1", "type": "function", "function": {
                                  "name": "lookup", "arguments": "{}"}}])


async def test_an_answer_calling_tools_is_returned_without_a_critique() -> None:
    kernel, provider, _, _ = critic_kernel({"small": [], "big": [verdict(9)]})
    kernel.plugins.register(Tools(), name="tools")
    async with kernel:
        ctx = kernel.context(ask(model="chain"))
        completion = await kernel.complete(ctx)
    assert completion.tool_calls[0]["function"]["name"] == "lookup"
    assert provider.calls == []  # the critic was not asked
    record = ctx.decision["critic"]
    assert (record["stopped"], record["chosen_round"]) == ("tool_calls", 1)


async def test_the_first_draft_falls_back_along_the_route() -> None:
    kernel, provider, _, _ = critic_kernel(
        {"small": [errors.ProviderBadRequest("no")], "big": ["draft by big", verdict(9)]},
        route_models=("small", "big"))
    async with kernel:
        ctx = kernel.context(ask(model="chain"))
        assert (await kernel.complete(ctx)).content == "draft by big"
    assert provider.calls == ["small", "big", "big"]
    assert ctx.decision["critic"]["rounds"][0]["draft_model"] == "big"


async def test_a_streaming_request_gets_the_chosen_draft_replayed() -> None:
    kernel, provider, recorder, _ = critic_kernel(
        {"small": ["draft 1", "draft 2"], "big": [verdict(5), verdict(8)]})
    async with kernel:
        ctx = kernel.context(ask(model="chain", stream=True))
        stream = await kernel.stream(ctx)
        assert provider.calls == ["small", "big", "small", "big"]  # all before the first chunk
        chunks = await collect(stream)
    assert "".join(c.content or "" for c in chunks) == "draft 2"
    assert chunks[-1].finish_reason == "stop"
    assert record_of(recorder, ctx) == (ctx.request_id, "ok", ["ok"])
    assert stream.answer.model == "small" and stream.answer.cost_usd > 0


@pytest.mark.parametrize(("settings", "match"), [
    ({"model": None}, "model"),
    ({"model": "auto"}, "auto"),
    ({"min_score": 0}, "min_score"),
    ({"min_score": 11}, "min_score"),
    ({"max_rounds": 0}, "max_rounds"),
    ({"max_cost_usd": 0}, "max_cost_usd"),
    ({"rounds": 2}, "rounds"),
])
async def test_settings_are_checked(settings, match) -> None:
    route_settings = {"model": "big", **settings}
    if route_settings["model"] is None:
        del route_settings["model"]
    with pytest.raises(errors.ConfigError, match=match):
        kernel_for({}, route={"models": ["small"], "strategy": "critic",
                              "critic": route_settings}, plugins={"critic": critic})


NAMES = {"models": frozenset({"small", "big"}), "routes": frozenset({"chain"}), "route": "chain"}


@pytest.mark.parametrize(("name", "match"), [("nope", "no model or route 'nope'"),
                                             ("chain", "cannot be the route itself")])
def test_the_critic_must_name_another_model_or_route(name, match) -> None:
    with pytest.raises(ValueError, match=match):
        critic.CriticSettings.model_validate({"model": name}, context=NAMES)
    critic.CriticSettings.model_validate({"model": "big"}, context=NAMES)


@pytest.mark.parametrize(("name", "match"), [("nope", "nope"), ("chain", "route itself")])
async def test_a_critic_that_cannot_be_asked_is_refused_before_any_call(name, match) -> None:
    # The config check refuses it when it can tell; else the first request, before a call.
    try:
        kernel, provider, _, _ = critic_kernel({"small": ["draft 1"]}, model=name)
    except errors.ConfigError as refused:
        assert match in str(refused)
        return
    async with kernel:
        with pytest.raises(errors.ConfigError, match=match):
            await kernel.complete(kernel.context(ask(model="chain")))
    assert provider.calls == []


# --- over HTTP -----------------------------------------------------------------------------------

KEY = "sk-critic-upstream-4242"
QUESTION = "How long is the Rhine?"
SCORES = {"reviewer": {1: 5, 2: 8, 3: 9}, "harsh": {1: 4, 2: 6, 3: 5}}
"""What each reviewer gives the writer's draft n."""


def answer(model: str, prompt: str) -> str | None:
    """The writer writes draft n+1 when the feedback asks for it (draft 1 otherwise); a reviewer
    scores the draft it is shown and asks for the next one, in prose around a fenced JSON."""
    if model == "writer":
        asked = re.search(r"write draft (\d+)", prompt)
        return f"The Rhine is long. (draft {asked.group(1) if asked else 1})"
    if model in SCORES:
        shown = int(re.search(r"\(draft (\d+)\)", prompt).group(1))
        feedback = f"Give the length in km; write draft {shown + 1}"
        return ("Here is my verdict:\n```json\n"
                + json.dumps({"score": SCORES[model][shown], "feedback": feedback})
                + "\n```\nThanks.")
    return None


SCRIPT = Script(answer=answer)


def config(url: str) -> dict:
    return {
        "providers": {"up": {"kind": "openai", "base_url": url + "/v1", "api_key": KEY}},
        "models": {
            "writer": {"provider": "up", "upstream": "writer", "input_price": 1,
                       "output_price": 2},
            "reviewer": {"provider": "up", "upstream": "reviewer", "input_price": 0.5,
                         "output_price": 1},
            "harsh": {"provider": "up", "upstream": "harsh"},
            # The same writer at $1000 per million output tokens, and a free reviewer.
            "pricey-writer": {"provider": "up", "upstream": "writer", "input_price": 0,
                              "output_price": 1000},
            "free-reviewer": {"provider": "up", "upstream": "reviewer"},
        },
        "routes": {
            "reviewed": {"models": ["writer"], "strategy": "critic",
                         "critic": {"model": "reviewer", "min_score": 8, "max_rounds": 3,
                                    "max_cost_usd": 0.05}},
            "strict": {"models": ["writer"], "strategy": "critic",
                       "critic": {"model": "harsh", "max_rounds": 3}},
            # Each draft is 6 words (6 tokens to the fake): $0.006. With max_tokens=100 a
            # revision's worst case is $0.1: the first fits (0.006 + 0.1 <= 0.11), the second
            # would not (0.012 + 0.1 > 0.11).
            "capped": {"models": ["pricey-writer"], "strategy": "critic",
                       "critic": {"model": "free-reviewer", "min_score": 10, "max_rounds": 5,
                                  "max_cost_usd": 0.11}},
        },
    }


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory):
    with serve(openai_app(SCRIPT, api_key=KEY)) as url:
        with running_gateway(config(url), tmp_path_factory.mktemp("critic")) as gw:
            yield gw


@pytest.fixture
def script(gateway):
    SCRIPT.reset()
    return SCRIPT


def chat(gateway, route: str, **kw):
    """Ask ``route`` the question; nothing is cached (critiques at temperature 0 would be, and
    sub-requests share the request's headers), so every call reaches the fake."""
    return gateway.client(timeout=10).chat.completions.with_raw_response.create(
        model=route, messages=[{"role": "user", "content": QUESTION}],
        extra_headers={"cache-control": "no-store"}, **kw)


def family(gateway, request_id: str) -> tuple[dict, list[dict]]:
    rows = gateway.rows()
    parent = next(r for r in rows if r["request_id"] == request_id)
    return parent, [r for r in rows if r["parent_id"] == request_id]


def test_http_stops_when_the_critic_is_satisfied(gateway, script) -> None:
    raw = chat(gateway, "reviewed")
    assert raw.parse().choices[0].message.content == "The Rhine is long. (draft 2)"
    assert raw.headers["x-turnout-critic-score"] == "8"
    assert raw.headers["x-turnout-critic-rounds"] == "2"
    assert (raw.headers["x-turnout-strategy"], raw.headers["x-turnout-model"]) == \
        ("critic", "writer")
    assert [r.body["model"] for r in script.requests] == ["writer", "reviewer"] * 2
    revision = script.requests[2].body["messages"]
    assert [m["role"] for m in revision] == ["user", "assistant", "user"]
    assert revision[1]["content"] == "The Rhine is long. (draft 1)"
    assert "write draft 2" in revision[2]["content"]
    parent, children = family(gateway, raw.headers["x-request-id"])
    decision = json.loads(parent["decision"])["critic"]
    assert decision["stopped"] == "min_score" and decision["chosen_round"] == 2
    assert [r["score"] for r in decision["rounds"]] == [5, 8]
    assert [c["model"] for c in children] == ["reviewer", "writer", "reviewer"]


def test_http_stops_after_max_rounds_with_the_best_draft(gateway, script) -> None:
    raw = chat(gateway, "strict")
    assert raw.parse().choices[0].message.content == "The Rhine is long. (draft 2)"
    assert raw.headers["x-turnout-critic-score"] == "6"
    assert raw.headers["x-turnout-critic-rounds"] == "3"
    assert [r.body["model"] for r in script.requests] == ["writer", "harsh"] * 3
    parent, _ = family(gateway, raw.headers["x-request-id"])
    decision = json.loads(parent["decision"])["critic"]
    assert (decision["stopped"], decision["chosen_round"]) == ("max_rounds", 2)


def test_http_stops_before_passing_the_cost_cap(gateway, script) -> None:
    raw = chat(gateway, "capped", max_tokens=100)
    assert raw.parse().choices[0].message.content == "The Rhine is long. (draft 2)"
    # The fake never got the second revision (it would have written draft 3).
    writes = [r for r in script.requests if r.body["model"] == "writer"]
    assert len(writes) == 2 and len(script.requests) == 4
    assert not any("write draft 3" in r.body["messages"][-1]["content"] for r in writes)
    cost = float(raw.headers["x-turnout-cost-usd"])
    assert 0 < cost <= 0.11
    parent, _ = family(gateway, raw.headers["x-request-id"])
    decision = json.loads(parent["decision"])["critic"]
    assert decision["stopped"] == "max_cost_usd"
    assert "the revision by pricey-writer" in decision["reason"]


def test_http_streaming_returns_the_final_draft(gateway, script) -> None:
    raw = chat(gateway, "reviewed", stream=True, stream_options={"include_usage": True})
    assert raw.headers["x-turnout-critic-score"] == "8"
    chunks = list(raw.parse())
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "The Rhine is long. (draft 2)"
    assert chunks[-1].usage.completion_tokens > 0
    assert [r.body["model"] for r in script.requests] == ["writer", "reviewer"] * 2
    parent, children = family(gateway, raw.headers["x-request-id"])
    assert (parent["status"], parent["model"], parent["stream"]) == ("ok", "writer", 1)
    assert len(children) == 3


def test_http_cost_is_the_sum_of_attempts_and_subrequests(gateway, script) -> None:
    raw = chat(gateway, "reviewed")
    request_id = raw.headers["x-request-id"]
    parent, children = family(gateway, request_id)
    own = gateway.attempts(request_id)
    assert [a["model"] for a in own] == ["writer"]
    total = sum(a["cost_usd"] for a in own) + sum(c["cost_usd"] for c in children)
    assert all(c["cost_usd"] > 0 for c in children) and own[0]["cost_usd"] > 0
    assert float(raw.headers["x-turnout-cost-usd"]) == pytest.approx(total)
    assert parent["cost_usd"] == pytest.approx(total)
    assert parent["attempts"] == 1 + len(children)


def test_a_critic_route_without_its_table_is_a_config_error_with_its_line() -> None:
    from turnout.kernel.config import parse_text
    from turnout.kernel.kernel import BUILTINS, Kernel

    text = """\
[providers.p]
kind = "simulated"

[models.writer]
provider = "p"

[routes.reviewed]
models = ["writer"]
strategy = "critic"
"""
    kernel = Kernel(parse_text(text, source="gateway.toml"), builtins=BUILTINS)
    with pytest.raises(errors.ConfigError) as caught:
        kernel.load_plugins()
    assert "gateway.toml" in str(caught.value) and "routes.reviewed.critic" in str(caught.value)
    assert "model" in str(caught.value)
