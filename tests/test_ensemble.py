"""The built-in ``ensemble`` strategy: in the kernel with a scripted fleet (vote, judge,
synthesize, members left out, settings), and over HTTP with the official openai SDK against the
fake OpenAI upstream, whose answers depend on the model and the prompt."""

from __future__ import annotations

import json
import re
import time

import anyio
import pytest

from turnout.kernel import errors
from turnout.kernel.hookspecs import hookimpl
from turnout.kernel.types import Answer, Chunk, Completion, Usage
from turnout.plugins import ensemble

from .fakes import Delay, Reply, Script, Status, openai_app, serve
from .gateway import running_gateway
from .support import ask, collect, kernel_for

JSON = {"type": "json_object"}
MODELS = {name: {"provider": "p", "input_price": price, "output_price": 2 * price}
          for name, price in (("a", 1), ("b", 2), ("c", 3), ("d", 4), ("judge", 5))}


class Fleet:
    """A provider plugin answering from ``answer(model, prompt)``: a text, an exception, or a
    ``(delay_s, outcome)`` pair. Logs every call as ``(model, prompt)``."""

    def __init__(self, answer) -> None:
        self.answer = answer
        self.calls: list[tuple[str, str]] = []

    @hookimpl(tryfirst=True)
    async def call(self, ctx, step):
        prompt = ctx.request.messages[-1].text()
        self.calls.append((step.model.name, prompt))
        outcome = self.answer(step.model.name, prompt)
        delay, outcome = outcome if isinstance(outcome, tuple) else (0, outcome)
        if ctx.request.stream:
            return _stream(delay, outcome)
        await anyio.sleep(delay)
        if isinstance(outcome, Exception):
            raise outcome
        return Completion(content=outcome, usage=Usage(10, 5))

    def models(self) -> list[str]:
        return [model for model, _ in self.calls]


async def _stream(delay, outcome):
    await anyio.sleep(delay)
    if isinstance(outcome, Exception):
        raise outcome
    for part in re.findall(r"\S+\s*", outcome) or [outcome]:
        yield Chunk(content=part)
    yield Chunk(finish_reason="stop", usage=Usage(10, 5))


def fleet_kernel(answers, settings=None, models=("a", "b", "c"), **route):
    """A kernel whose default route runs the ensemble over ``models``; ``answers`` is a dict
    ``{model: outcome}`` or a function ``(model, prompt) -> outcome``."""
    answer = answers if callable(answers) else (lambda model, prompt: answers[model])
    fleet = Fleet(answer)
    kernel, _, recorder = kernel_for({}, route={"models": list(models), "strategy": "ensemble",
                                                "ensemble": settings or {}, **route},
                                     models=MODELS,
                                     plugins={"ensemble": ensemble, "fleet": fleet})
    return kernel, fleet, recorder


def members(ctx) -> list[tuple[str, bool]]:
    return [(m["model"], m["ok"]) for m in ctx.decision["ensemble"]["members"]]


# --- vote ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("text, expected", [
    ("Paris", "paris"),
    ("  Paris.  ", "paris"),
    ("PARIS!", "paris"),
    ('"Paris."', "paris"),
    ("'Paris';", "paris"),
    ("\u201cParis\u201d.", "paris"),
    ("```\nParis\n```", "paris"),
    ("```text\nThe   city\n of Paris.\n```", "the city of paris"),
    ("The\tcity  of\nParis", "the city of paris"),
    ("Is it Paris?", "is it paris?"),
    ("", ""),
])
def test_normalise(text, expected) -> None:
    assert ensemble.normalise(text) == expected


def test_normalise_keeps_different_answers_apart() -> None:
    assert ensemble.normalise("Paris") != ensemble.normalise("Lyon")
    assert ensemble.normalise("1.5") != ensemble.normalise("15")


@pytest.mark.anyio
async def test_vote_returns_the_majority_answer_compared_normalised() -> None:
    kernel, fleet, recorder = fleet_kernel({"a": "London", "b": "  paris ", "c": '"Paris."'})
    async with kernel:
        ctx = kernel.context(ask("The capital of France?"))
        completion = await kernel.complete(ctx)
    assert completion.content == "  paris " and completion.model == "b"  # b's own answer
    assert sorted(fleet.models()) == ["a", "b", "c"]
    assert recorder.records == [(ctx.request_id, "ok", ["ok", "ok", "ok"])]
    assert ctx.response_headers[ensemble.HEADER] == "3/3"
    record = ctx.decision["ensemble"]
    assert (record["combine"], record["took_part"], record["asked"]) == ("vote", 3, 3)
    assert record["winner"] == "b" and "2 of 3" in record["why"]
    assert record["tally"] == [{"answer": "paris", "votes": 2, "models": ["b", "c"]},
                               {"answer": "london", "votes": 1, "models": ["a"]}]
    assert [m["answer_chars"] for m in record["members"]] == [6, 8, 8]
    # Every member's attempt is paid for.
    assert Answer.of(ctx).cost_usd == pytest.approx(sum(a.cost_usd for a in ctx.attempts))
    assert len(ctx.attempts) == 3 and all(a.cost_usd > 0 for a in ctx.attempts)


@pytest.mark.anyio
async def test_vote_tie_goes_to_the_model_listed_first() -> None:
    # Two answers with two votes each: a's group wins, with a's own answer (d says the same).
    kernel, _, _ = fleet_kernel({"a": "Yes", "b": "no", "c": "No.", "d": "yes!"},
                                models=("a", "b", "c", "d"))
    async with kernel:
        ctx = kernel.context(ask())
        completion = await kernel.complete(ctx)
    assert (completion.content, completion.model) == ("Yes", "a")
    record = ctx.decision["ensemble"]
    assert record["winner"] == "a" and "tie" in record["why"]
    assert [t["votes"] for t in record["tally"]] == [2, 2]

    # The same with the order turned round: the first listed model still wins.
    kernel, _, _ = fleet_kernel({"a": "Yes", "b": "no", "c": "No.", "d": "yes!"},
                                models=("c", "d", "a", "b"))
    async with kernel:
        completion = await kernel.complete(kernel.context(ask()))
    assert (completion.content, completion.model) == ("No.", "c")

    # All different: the first answering model wins (a failed, so b).
    kernel, _, _ = fleet_kernel({"a": errors.ProviderUnavailable("down"), "b": "one",
                                 "c": "two"})
    async with kernel:
        ctx = kernel.context(ask())
        assert (await kernel.complete(ctx)).model == "b"
    assert ctx.decision["ensemble"]["winner"] == "b"


@pytest.mark.anyio
async def test_members_run_at_the_same_time() -> None:
    kernel, _, _ = fleet_kernel({"a": (0.3, "x"), "b": (0.3, "x"), "c": (0.3, "x")})
    async with kernel:
        started = time.monotonic()
        await kernel.complete(kernel.context(ask()))
        took = time.monotonic() - started
    assert took < 0.8  # one after another would take 0.9s


@pytest.mark.anyio
async def test_failing_members_are_left_out() -> None:
    # a errors, b's answer fails the json validator, c and d answer.
    kernel, _, recorder = fleet_kernel(
        {"a": errors.ProviderUnavailable("upstream said 503"), "b": "not json",
         "c": '{"x": 1}', "d": '{"x": 2}'}, models=("a", "b", "c", "d"))
    async with kernel:
        ctx = kernel.context(ask(response_format=JSON))
        completion = await kernel.complete(ctx)
    assert completion.model == "c"
    assert ctx.response_headers[ensemble.HEADER] == "2/4"
    assert members(ctx) == [("a", False), ("b", False), ("c", True), ("d", True)]
    entries = ctx.decision["ensemble"]["members"]
    assert entries[0]["reason"].startswith("upstream_unavailable") \
        and "503" in entries[0]["reason"]
    assert "json" in entries[1]["reason"]
    assert "answer_chars" not in entries[0] and entries[2]["answer_chars"] == 8
    assert recorder.records == [(ctx.request_id, "ok", ["error", "rejected", "ok", "ok"])]


@pytest.mark.anyio
async def test_a_member_past_timeout_s_is_left_out() -> None:
    kernel, _, recorder = fleet_kernel({"a": (5, "late"), "b": "on time", "c": "on time"},
                                       settings={"timeout_s": 0.2})
    async with kernel:
        ctx = kernel.context(ask())
        with anyio.fail_after(2):
            completion = await kernel.complete(ctx)
    assert completion.content == "on time"
    assert members(ctx) == [("a", False), ("b", True), ("c", True)]
    assert ctx.decision["ensemble"]["members"][0]["reason"].startswith("upstream_timeout")
    assert recorder.records == [(ctx.request_id, "ok", ["error", "ok", "ok"])]


@pytest.mark.anyio
async def test_without_timeout_s_a_member_has_the_routes_attempt_timeout() -> None:
    kernel, _, _ = fleet_kernel({"a": (5, "late"), "b": "on time", "c": "on time"},
                                attempt_timeout_s=0.2)
    async with kernel:
        ctx = kernel.context(ask())
        with anyio.fail_after(2):
            await kernel.complete(ctx)
    assert members(ctx) == [("a", False), ("b", True), ("c", True)]


@pytest.mark.anyio
async def test_members_beyond_max_attempts_are_left_out() -> None:
    kernel, _, _ = fleet_kernel({"a": "x", "b": "x", "c": "y"}, max_attempts=2)
    async with kernel:
        ctx = kernel.context(ask())
        await kernel.complete(ctx)
    assert members(ctx) == [("a", True), ("b", True), ("c", False)]
    assert "max_attempts" in ctx.decision["ensemble"]["members"][2]["reason"]
    assert ctx.response_headers[ensemble.HEADER] == "2/3"


@pytest.mark.anyio
async def test_with_no_member_answering_the_last_error_ends_the_request() -> None:
    kernel, _, recorder = fleet_kernel({"a": (0.1, errors.ProviderTimeout("slow")),
                                        "b": errors.ProviderUnavailable("down"),
                                        "c": errors.ContentPolicy("refused")})
    async with kernel:
        ctx = kernel.context(ask())
        with pytest.raises(errors.ContentPolicy):  # c's: the last in the route's order
            await kernel.complete(ctx)
    assert ctx.response_headers[ensemble.HEADER] == "0/3"
    assert ctx.decision["ensemble"]["took_part"] == 0
    assert recorder.records == [(ctx.request_id, "error", ["error", "error", "error"])]


@pytest.mark.anyio
async def test_fewer_answers_than_min_members_is_a_502() -> None:
    kernel, _, recorder = fleet_kernel({"a": errors.ProviderUnavailable("down"), "b": "x",
                                        "c": errors.ProviderTimeout("slow")},
                                       settings={"min_members": 2})
    async with kernel:
        ctx = kernel.context(ask())
        with pytest.raises(errors.ProviderError) as raised:
            await kernel.complete(ctx)
    error = raised.value
    assert (error.status, error.code) == (502, "upstream_error")
    assert "1 of 3" in error.message and "min_members" in error.message
    assert "a: upstream_unavailable" in error.message and "c: upstream_timeout" in error.message
    assert ctx.response_headers[ensemble.HEADER] == "1/3"
    assert recorder.records == [(ctx.request_id, "error", ["error", "ok", "error"])]

    kernel, _, _ = fleet_kernel({"a": errors.ProviderUnavailable("down"), "b": "x", "c": "y"},
                                settings={"min_members": 2})
    async with kernel:
        assert (await kernel.complete(kernel.context(ask()))).content == "x"


@pytest.mark.anyio
async def test_streaming_vote_replays_the_winner() -> None:
    kernel, _, recorder = fleet_kernel({"a": "Rome", "b": "the Tiber", "c": "The tiber."})
    async with kernel:
        ctx = kernel.context(ask(stream=True))
        stream = await kernel.stream(ctx)
        chunks = await collect(stream)
    assert "".join(c.content or "" for c in chunks) == "the Tiber"
    assert stream.answer.model == "b"
    assert recorder.records == [(ctx.request_id, "ok", ["ok", "ok", "ok"])]


# --- judge ---------------------------------------------------------------------------------------


def judged(pick):
    """Members answer by name; the judge replies ``pick(prompt)``."""
    def answer(model, prompt):
        if model == "judge":
            return pick(prompt)
        return {"a": "Lyon", "b": "Lyon.", "c": "Paris"}[model]
    return answer


def number_of(prompt: str, text: str) -> int:
    """The number the prompt gives the answer ``text``."""
    found = re.search(rf"Answer (\d+):\n{re.escape(text)}\n", prompt + "\n")
    assert found, prompt
    return int(found.group(1))


@pytest.mark.anyio
async def test_judge_picks_the_answer_returned() -> None:
    kernel, fleet, recorder = fleet_kernel(
        judged(lambda p: json.dumps({"best": number_of(p, "Paris"), "reason": "It is."})),
        settings={"combine": "judge", "judge": "judge"})
    async with kernel:
        ctx = kernel.context(ask("The capital of France?"))
        completion = await kernel.complete(ctx)
    assert (completion.content, completion.model) == ("Paris", "c")  # not the vote's Lyon
    record = ctx.decision["ensemble"]
    assert record["winner"] == "c" and "It is." in record["why"]
    assert record["judge"]["ok"] and "fallback" not in record
    prompt = next(p for m, p in fleet.calls if m == "judge")
    assert "The capital of France?" in prompt and "Answer 3:" in prompt
    assert len(ctx.children) == 1 and ctx.children[0].request.model == "judge"
    assert Answer.of(ctx).cost_usd == pytest.approx(
        sum(a.cost_usd for a in ctx.attempts) + ctx.children[0].attempts[0].cost_usd)
    assert recorder.records[-1] == (ctx.request_id, "ok", ["ok", "ok", "ok"])


@pytest.mark.parametrize("reply, problem", [
    ("I like them all.", "names no answer"),
    ('{"best": 7, "reason": "?"}', "picked answer 7, but there are 3"),
    (errors.ProviderUnavailable("judge down"), "did not answer"),
])
@pytest.mark.anyio
async def test_a_judge_without_a_usable_pick_falls_back_to_the_vote(reply, problem) -> None:
    kernel, _, _ = fleet_kernel(judged(lambda p: reply),
                                settings={"combine": "judge", "judge": "judge"})
    async with kernel:
        ctx = kernel.context(ask())
        completion = await kernel.complete(ctx)
    assert (completion.content, completion.model) == ("Lyon", "a")
    record = ctx.decision["ensemble"]
    assert record["fallback"] == "vote" and problem in record["why"]
    assert record["judge"]["ok"] is False and problem in record["judge"]["reason"]


@pytest.mark.parametrize("text, expected", [
    ('{"best": 2, "reason": "clear"}', (2, "clear")),
    ('```json\n{"best": "3", "reason": "x"}\n```', (3, "x")),
    ('Sure! {"best": "Answer 1"}', (1, "")),
    ("best: 2", (2, "")),
    ('{"best": true}', None),
    ('{"best": 1.5}', None),
    ("no idea", None),
])
def test_parse_pick(text, expected) -> None:
    assert ensemble.parse_pick(text) == expected


@pytest.mark.anyio
async def test_one_answer_is_returned_without_judging() -> None:
    for combine in ("judge", "synthesize"):
        kernel, fleet, _ = fleet_kernel(
            {"a": errors.ProviderUnavailable("down"), "b": "alone",
             "c": errors.ProviderUnavailable("down"), "judge": "never asked"},
            settings={"combine": combine, "judge": "judge"})
        async with kernel:
            ctx = kernel.context(ask())
            assert (await kernel.complete(ctx)).content == "alone"
        assert "judge" not in fleet.models() and not ctx.children
        assert "only one member answered" in ctx.decision["ensemble"]["why"]


# --- synthesize ----------------------------------------------------------------------------------


def synthesis(model, prompt):
    if model == "judge":
        seen = re.findall(r"Answer \d+:\n(.*)", prompt)
        return "They agree on " + " and ".join(seen)
    return {"a": "red", "b": "blue", "c": "green"}[model]


@pytest.mark.anyio
async def test_synthesize_returns_the_synthesizers_answer() -> None:
    kernel, fleet, _ = fleet_kernel(synthesis, settings={"combine": "synthesize",
                                                         "judge": "judge"})
    async with kernel:
        ctx = kernel.context(ask("A colour?", max_tokens=50))
        completion = await kernel.complete(ctx)
    assert completion.content == "They agree on red and blue and green"
    assert completion.model == "judge"
    prompt = next(p for m, p in fleet.calls if m == "judge")
    assert "A colour?" in prompt and "agree" in prompt and "disagree" in prompt
    assert ctx.children[0].request.max_tokens == 50
    record = ctx.decision["ensemble"]
    assert record["winner"] == "judge" and record["synthesizer"]["ok"]
    assert Answer.of(ctx).cost_usd == pytest.approx(
        sum(a.cost_usd for a in ctx.attempts) + ctx.children[0].spend_usd)


@pytest.mark.anyio
async def test_streaming_synthesize_streams_the_synthesis() -> None:
    kernel, _, recorder = fleet_kernel(synthesis, settings={"combine": "synthesize",
                                                            "judge": "judge"})
    async with kernel:
        ctx = kernel.context(ask(stream=True))
        stream = await kernel.stream(ctx)
        chunks = await collect(stream)
    assert len([c for c in chunks if c.content]) > 1  # streamed, not replayed whole
    assert "".join(c.content or "" for c in chunks) == "They agree on red and blue and green"
    assert ctx.children[0].request.stream
    assert {r[1] for r in recorder.records} == {"ok"} and len(recorder.records) == 2


@pytest.mark.anyio
async def test_a_failing_synthesizer_falls_back_to_the_vote() -> None:
    def answer(model, prompt):
        return errors.ProviderUnavailable("down") if model == "judge" \
            else {"a": "x", "b": "y", "c": "Y"}[model]
    kernel, _, _ = fleet_kernel(answer, settings={"combine": "synthesize", "judge": "judge"})
    async with kernel:
        ctx = kernel.context(ask())
        assert (await kernel.complete(ctx)).model == "b"
    record = ctx.decision["ensemble"]
    assert record["fallback"] == "vote" and record["synthesizer"]["ok"] is False


# --- settings ------------------------------------------------------------------------------------


@pytest.mark.parametrize("settings, match", [
    ({"combine": "judge"}, "needs a judge"),
    ({"combine": "synthesize"}, "needs a judge"),
    ({"combine": "average"}, "combine"),
    ({"combine": "judge", "judge": "auto"}, "auto is not allowed"),
    ({"min_members": 0}, "min_members"),
    ({"timeout_s": 0}, "timeout_s"),
    ({"judges": "judge"}, "judges"),
])
def test_settings_are_checked(settings, match) -> None:
    with pytest.raises(errors.ConfigError, match=match):
        fleet_kernel({}, settings=settings)


def test_every_setting_is_described() -> None:
    for name, field in ensemble.EnsembleSettings.model_fields.items():
        assert field.description, name


# --- over HTTP -----------------------------------------------------------------------------------

KEY = "sk-ensemble-upstream-0001"
CONFIG = {
    "models": {name: {"provider": "up", "input_price": 100 * price, "output_price": 200 * price}
               for name, price in (("a", 1), ("b", 2), ("c", 3), ("judge", 5))},
    "routes": {
        "vote": {"models": ["a", "b", "c"], "strategy": "ensemble",
                 "ensemble": {"combine": "vote"}},
        "pick": {"models": ["a", "b", "c"], "strategy": "ensemble",
                 "ensemble": {"combine": "judge", "judge": "judge"}},
        "merge": {"models": ["a", "b", "c"], "strategy": "ensemble",
                  "ensemble": {"combine": "synthesize", "judge": "judge"}},
    },
}


def upstream(model: str, prompt: str):
    """The fleet: each member answers the question its own way, slowly enough to overlap; the
    judge picks the answer saying 'Paris'; the synthesizer lists what it was given."""
    if "Pick the best answer" in prompt:
        best = re.search(r"Answer (\d+):\nParis\b", prompt)
        return json.dumps({"best": int(best.group(1)) if best else 0,
                           "reason": "Paris is the capital."})
    if "combines the strongest parts" in prompt:
        return "Merged: " + "; ".join(re.findall(r"Answer \d+:\n(.*)", prompt))
    if "[a fails]" in prompt and model == "a":
        return Delay(0.3, Status(500))
    answers = {"a": "Lyon", "b": "Lyon.", "c": "Paris"} if "[judge]" in prompt \
        else {"a": "Lyon", "b": "Paris.", "c": "paris!"}
    return Delay(0.3, Reply(answers[model])) if model in answers else None


@pytest.fixture(scope="module")
def fake():
    script = Script(answer=upstream)
    with serve(openai_app(script, api_key=KEY)) as url:
        yield script, url + "/v1"


@pytest.fixture(scope="module")
def gateway(fake, tmp_path_factory: pytest.TempPathFactory):
    _, url = fake
    config = {"providers": {"up": {"kind": "openai", "base_url": url, "api_key": KEY}}, **CONFIG}
    with running_gateway(config, tmp_path_factory.mktemp("ensemble")) as gw:
        yield gw


def family(gw, request_id: str) -> tuple[dict, list[dict], list[dict]]:
    """A request's row, its attempts, and its sub-requests' attempts."""
    rows = gw.rows()
    parent = next(r for r in rows if r["request_id"] == request_id)
    children = [r for r in rows if r["parent_id"] == request_id]
    return parent, gw.attempts(request_id), [a for c in children
                                             for a in gw.attempts(c["request_id"])]


def test_http_vote_leaves_out_a_failing_member_and_returns_the_majority(gateway, fake) -> None:
    script, _ = fake
    question = "The capital of France? [a fails]"
    raw = gateway.client(timeout=10).chat.completions.with_raw_response.create(
        model="vote", messages=[{"role": "user", "content": question}])
    completion = raw.parse()
    assert completion.choices[0].message.content == "Paris."  # b's own answer; c agrees
    assert raw.headers["x-turnout-ensemble"] == "2/3"
    assert raw.headers["x-turnout-strategy"] == "ensemble"
    assert raw.headers["x-turnout-model"] == "b"
    spans = [s for s in script.spans if s.prompt == question]
    assert sorted(s.model for s in spans) == ["a", "b", "c"]  # a asked once, not retried
    assert all(s.overlaps(t) for s in spans for t in spans)  # all three at once
    parent, attempts, sub = family(gateway, raw.headers["x-request-id"])
    assert sorted((a["model"], a["status"]) for a in attempts) == [
        ("a", "error"), ("b", "ok"), ("c", "ok")]
    assert not sub
    cost = float(raw.headers["x-turnout-cost-usd"])
    assert cost > 0
    assert cost == pytest.approx(sum(a["cost_usd"] for a in attempts), abs=1e-8)
    assert parent["cost_usd"] == pytest.approx(cost, abs=1e-8)
    decision = json.loads(parent["decision"])["ensemble"]
    assert (decision["took_part"], decision["asked"], decision["winner"]) == (2, 3, "b")
    assert decision["tally"] == [{"answer": "paris", "votes": 2, "models": ["b", "c"]}]
    assert decision["members"][0]["ok"] is False


def test_http_judge_returns_the_member_it_picks(gateway, fake) -> None:
    raw = gateway.client(timeout=10).chat.completions.with_raw_response.create(
        model="pick", messages=[{"role": "user", "content": "The capital of France? [judge]"}])
    assert raw.parse().choices[0].message.content == "Paris"  # c's, though a and b agree
    assert raw.headers["x-turnout-ensemble"] == "3/3"
    assert raw.headers["x-turnout-model"] == "c"
    parent, attempts, sub = family(gateway, raw.headers["x-request-id"])
    assert [a["model"] for a in sub] == ["judge"]
    cost = float(raw.headers["x-turnout-cost-usd"])
    assert cost == pytest.approx(sum(a["cost_usd"] for a in attempts + sub), abs=1e-8)
    assert sub[0]["cost_usd"] > 0 and len(attempts) == 3
    decision = json.loads(parent["decision"])["ensemble"]
    assert decision["winner"] == "c" and "Paris is the capital." in decision["why"]


def test_http_streaming_synthesize_streams_the_synthesis(gateway, fake) -> None:
    raw = gateway.client(timeout=10).chat.completions.with_raw_response.create(
        model="merge", messages=[{"role": "user", "content": "The capital of France?"}],
        stream=True, stream_options={"include_usage": True})
    assert raw.headers["x-turnout-ensemble"] == "3/3"
    chunks = list(raw.parse())
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Merged: Lyon; Paris.; paris!"
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) > 1
    parent, attempts, sub = family(gateway, raw.headers["x-request-id"])
    assert parent["status"] == "ok" and [a["model"] for a in sub] == ["judge"]
    # The answer is the synthesizer's, not the last member's.
    assert parent["model"] == "judge" and raw.headers["x-turnout-model"] == "judge"
    assert parent["cost_usd"] == pytest.approx(sum(a["cost_usd"] for a in attempts + sub),
                                               abs=1e-8)
    assert sub[0]["cost_usd"] > 0 and sub[0]["output_tokens"] > 0
    decision = json.loads(parent["decision"])["ensemble"]
    assert decision["synthesizer"] == {"model": "judge", "ok": True}
