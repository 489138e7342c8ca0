"""The built-in ``cascade`` and ``race`` strategies: in the kernel with scripted providers, and
over HTTP with the official openai SDK against a fake OpenAI upstream."""

from __future__ import annotations

import json
import time

import anyio
import pytest

from turnout.kernel import errors
from turnout.kernel.hookspecs import hookimpl
from turnout.kernel.types import Answer, Chunk, Completion, Usage, Verdict
from turnout.plugins import cascade, race

from .fakes import Delay, Reply, Script, openai_app, serve
from .gateway import running_gateway
from .support import ask, collect, kernel_for

pytestmark = pytest.mark.anyio

STRATEGIES = {"cascade": cascade, "race": race}
JSON = {"type": "json_object"}
THREE = {
    "small": {"provider": "p", "input_price": 1, "output_price": 2},
    "medium": {"provider": "p", "input_price": 5, "output_price": 10},
    "large": {"provider": "p", "input_price": 30, "output_price": 60},
}


class Short:
    """A test validator: answers longer than ``limit`` characters fail."""

    def __init__(self, limit: int = 10) -> None:
        self.limit = limit

    @hookimpl
    def validate(self, completion):
        ok = len(completion.content or "") <= self.limit
        return Verdict(ok, "short", "" if ok else f"longer than {self.limit} characters")


class Timed:
    """A provider plugin answering each model after a delay: ``{model: (delay_s, outcome)}``.
    Streams wait the delay before their first chunk."""

    def __init__(self, script: dict[str, tuple[float, object]]) -> None:
        self.script = script
        self.calls: list[str] = []
        self.closed: list[str] = []

    @hookimpl(tryfirst=True)
    async def call(self, ctx, step):
        name = step.model.name
        self.calls.append(name)
        delay, outcome = self.script[name]
        if ctx.request.stream:
            return self._stream(name, delay, outcome)
        await anyio.sleep(delay)
        if isinstance(outcome, Exception):
            raise outcome
        return Completion(content=outcome, usage=Usage(10, 5))

    async def _stream(self, name, delay, outcome):
        try:
            await anyio.sleep(delay)
            if isinstance(outcome, Exception):
                raise outcome
            for part in (outcome[:3], outcome[3:]):
                yield Chunk(content=part)
            yield Chunk(finish_reason="stop", usage=Usage(10, 5))
        finally:
            self.closed.append(name)


def cascade_kernel(script, settings=None, models=None, plugins=None, **route):
    names = list(models or {"small": 0, "big": 0})
    return kernel_for(script, route={"models": names, "strategy": "cascade",
                                     "cascade": settings or {}, **route},
                      models=models, plugins={**STRATEGIES, **(plugins or {})})


def race_kernel(timed: Timed, settings=None, models=None, plugins=None, **route):
    names = list(models or {"small": 0, "big": 0})
    kernel, _, recorder = kernel_for({}, route={"models": names, "strategy": "race",
                                                "race": settings or {}, **route},
                                     models=models,
                                     plugins={**STRATEGIES, "timed": timed, **(plugins or {})})
    return kernel, recorder


# --- cascade -------------------------------------------------------------------------------------


async def test_cascade_returns_the_first_answer_that_passes() -> None:
    kernel, provider, recorder = cascade_kernel(
        {"small": ["not json"], "medium": ['{"from": "medium"}'], "large": ['{"a": 1}']},
        models=THREE)
    async with kernel:
        ctx = kernel.context(ask(response_format=JSON))
        completion = await kernel.complete(ctx)
    assert completion.content == '{"from": "medium"}' and completion.model == "medium"
    assert provider.calls == ["small", "medium"]
    assert recorder.records == [(ctx.request_id, "ok", ["rejected", "ok"])]
    path = ctx.decision["cascade"]
    assert [(e["model"], e["passed"]) for e in path] == [("small", False), ("medium", True)]
    assert "json" in path[0]["reason"] and path[1]["chosen"]
    assert "x-turnout-validation" not in ctx.response_headers
    # Both answers were paid for.
    assert Answer.of(ctx).cost_usd == pytest.approx((10 * 1 + 5 * 2 + 10 * 5 + 5 * 10) / 1e6)


async def test_cascade_moves_on_after_a_provider_error_without_retrying() -> None:
    kernel, provider, recorder = cascade_kernel(
        {"small": [errors.ProviderUnavailable("503")], "big": ['{"ok": true}']})
    async with kernel:
        ctx = kernel.context(ask(response_format=JSON))
        completion = await kernel.complete(ctx)
    assert completion.content == '{"ok": true}'
    assert provider.calls == ["small", "big"]
    assert recorder.records == [(ctx.request_id, "ok", ["error", "ok"])]
    assert ctx.decision["cascade"][0]["reason"].startswith("upstream_unavailable") \
        or "503" in ctx.decision["cascade"][0]["reason"]


async def test_cascade_returns_the_best_scoring_answer_when_none_passes() -> None:
    # small fails both validators (score 0); big is JSON but not an object, and short (0.5).
    kernel, provider, recorder = cascade_kernel(
        {"small": ["a long answer, not JSON"], "big": ["[1, 2]"]},
        plugins={"short": Short()})
    async with kernel:
        ctx = kernel.context(ask(response_format=JSON))
        completion = await kernel.complete(ctx)
    assert completion.content == "[1, 2]" and completion.model == "big"
    assert ctx.response_headers["x-turnout-validation"] == "failed"
    assert recorder.records == [(ctx.request_id, "ok", ["rejected", "rejected"])]
    assert Answer.of(ctx).model == "big"
    path = ctx.decision["cascade"]
    assert [e["score"] for e in path] == [0.0, 0.5]
    assert path[1]["chosen"] and "chosen" not in path[0]
    assert Answer.of(ctx).cost_usd == pytest.approx((10 * 1 + 5 * 2 + 10 * 10 + 5 * 20) / 1e6)


async def test_cascade_prefers_the_cheaper_answer_on_a_tie() -> None:
    kernel, _, _ = cascade_kernel({"small": ["no"], "big": ["nope"]})
    async with kernel:
        ctx = kernel.context(ask(response_format=JSON))
        assert (await kernel.complete(ctx)).content == "no"
    assert ctx.response_headers["x-turnout-validation"] == "failed"


async def test_cascade_on_failure_error_is_a_502_validation_failed() -> None:
    kernel, provider, recorder = cascade_kernel({"small": ["no"], "big": ["nope"]},
                                                settings={"on_failure": "error"})
    async with kernel:
        ctx = kernel.context(ask(response_format=JSON))
        with pytest.raises(errors.ValidationFailed) as raised:
            await kernel.complete(ctx)
    assert raised.value.status == 502 and raised.value.code == "validation_failed"
    assert provider.calls == ["small", "big"]
    assert recorder.records == [(ctx.request_id, "error", ["rejected", "rejected"])]


async def test_cascade_with_only_errors_fails_with_the_last_error() -> None:
    kernel, _, _ = cascade_kernel({"small": [errors.ProviderUnavailable("503")],
                                   "big": [errors.ProviderTimeout("slow")]})
    async with kernel:
        with pytest.raises(errors.ProviderTimeout):
            await kernel.complete(kernel.context(ask()))


async def test_cascade_order_price_tries_the_cheapest_first() -> None:
    models = {"large": THREE["large"], "small": THREE["small"]}
    kernel, provider, _ = cascade_kernel({"small": ['{"a": 1}'], "large": ['{"b": 2}']},
                                         settings={"order": "price"}, models=models)
    async with kernel:
        assert (await kernel.complete(kernel.context(ask(response_format=JSON)))).model == "small"
    assert provider.calls == ["small"]


async def test_cascade_settings_are_checked() -> None:
    with pytest.raises(errors.ConfigError, match="on_failure"):
        cascade_kernel({}, settings={"on_failure": "shrug"})


async def test_streaming_cascade_judges_whole_answers_and_streams_the_chosen_one() -> None:
    kernel, provider, recorder = cascade_kernel({"small": ["not json"], "big": ['{"a": 1}']})
    async with kernel:
        ctx = kernel.context(ask(response_format=JSON, stream=True))
        stream = await kernel.stream(ctx)
        chunks = await collect(stream)
    assert "".join(c.content or "" for c in chunks) == '{"a": 1}'
    assert chunks[-1].finish_reason == "stop" and chunks[-1].usage.output_tokens > 0
    assert provider.calls == ["small", "big"]
    assert recorder.records == [(ctx.request_id, "ok", ["rejected", "ok"])]
    assert stream.answer.model == "big" and stream.answer.cost_usd > 0


async def test_streaming_cascade_with_no_passing_answer_streams_the_best() -> None:
    kernel, _, recorder = cascade_kernel({"small": ["nah"], "big": ["no"]})
    async with kernel:
        ctx = kernel.context(ask(response_format=JSON, stream=True))
        chunks = await collect(await kernel.stream(ctx))
    assert "".join(c.content or "" for c in chunks) == "nah"
    assert ctx.response_headers["x-turnout-validation"] == "failed"
    assert recorder.records == [(ctx.request_id, "ok", ["rejected", "rejected"])]
    # Attempts stay in the order they were made; the answer names the one it came from.
    assert [a.model for a in ctx.attempts] == ["small", "big"]
    assert ctx.answered is ctx.attempts[0] and Answer.of(ctx).model == "small"


# --- race ----------------------------------------------------------------------------------------


async def test_race_the_faster_model_wins_and_the_slower_is_cancelled_and_paid_for() -> None:
    timed = Timed({"small": (0.01, "quick"), "big": (5, "slow")})
    kernel, recorder = race_kernel(timed)
    async with kernel:
        ctx = kernel.context(ask())
        with anyio.fail_after(2):
            completion = await kernel.complete(ctx)
    assert completion.content == "quick" and completion.model == "small"
    assert sorted(timed.calls) == ["big", "small"]
    assert recorder.records == [(ctx.request_id, "ok", ["ok", "cancelled"])]
    assert [a.model for a in ctx.attempts] == ["small", "big"]
    assert ctx.answered is ctx.attempts[0] and Answer.of(ctx).model == "small"
    slow = ctx.attempts[1]
    assert slow.usage.input_tokens > 0 and slow.cost_usd > 0
    assert Answer.of(ctx).cost_usd == pytest.approx(completion.cost_usd + slow.cost_usd)
    assert ctx.decision["race"]["winner"] == "small"
    assert ctx.decision["race"]["started"] == ["small", "big"]


async def test_race_a_failing_fast_model_lets_the_slow_one_win() -> None:
    timed = Timed({"small": (0, errors.ProviderUnavailable("503")), "big": (0.05, "slow")})
    kernel, recorder = race_kernel(timed)
    async with kernel:
        ctx = kernel.context(ask())
        assert (await kernel.complete(ctx)).content == "slow"
    assert recorder.records == [(ctx.request_id, "ok", ["error", "ok"])]
    assert [d["model"] for d in ctx.decision["race"]["dropped"]] == ["small"]


async def test_race_an_answer_failing_validation_drops_out() -> None:
    timed = Timed({"small": (0, "not json"), "big": (0.05, '{"a": 1}')})
    kernel, recorder = race_kernel(timed)
    async with kernel:
        ctx = kernel.context(ask(response_format=JSON))
        assert (await kernel.complete(ctx)).model == "big"
    assert recorder.records == [(ctx.request_id, "ok", ["rejected", "ok"])]


async def test_race_n_limits_how_many_start_and_the_rest_follow_in_order() -> None:
    down = errors.ProviderUnavailable("503")
    timed = Timed({"small": (0, "one"), "medium": (0, "two"), "large": (0, "three")})
    kernel, _ = race_kernel(timed, settings={"n": 1}, models=THREE)
    async with kernel:
        assert (await kernel.complete(kernel.context(ask()))).content == "one"
    assert timed.calls == ["small"]

    timed = Timed({"small": (0, down), "medium": (0.01, down), "large": (0, "three")})
    kernel, recorder = race_kernel(timed, settings={"n": 2}, models=THREE)
    async with kernel:
        ctx = kernel.context(ask())
        assert (await kernel.complete(ctx)).content == "three"
    assert timed.calls == ["small", "medium", "large"]
    assert recorder.records == [(ctx.request_id, "ok", ["error", "error", "ok"])]


async def test_race_n_is_capped_at_the_plan_and_all_failing_raises_the_last_error() -> None:
    timed = Timed({"small": (0, errors.ProviderUnavailable("503")),
                   "big": (0.01, errors.ProviderTimeout("late"))})
    kernel, recorder = race_kernel(timed, settings={"n": 5})
    async with kernel:
        ctx = kernel.context(ask())
        with pytest.raises(errors.ProviderTimeout):
            await kernel.complete(ctx)
    assert recorder.records == [(ctx.request_id, "error", ["error", "error"])]


async def test_race_settings_are_checked() -> None:
    with pytest.raises(errors.ConfigError, match="n"):
        race_kernel(Timed({}), settings={"n": 0})


async def test_streaming_race_streams_the_first_to_its_first_chunk() -> None:
    timed = Timed({"small": (5, "slow stream"), "big": (0.01, "fast stream")})
    kernel, recorder = race_kernel(timed)
    async with kernel:
        ctx = kernel.context(ask(stream=True))
        with anyio.fail_after(2):
            stream = await kernel.stream(ctx)
            chunks = await collect(stream)
    assert "".join(c.content or "" for c in chunks) == "fast stream"
    assert recorder.records == [(ctx.request_id, "ok", ["cancelled", "ok"])]
    assert ctx.attempts[0].cost_usd > 0
    assert stream.answer.model == "big"
    await anyio.sleep(0.01)
    assert sorted(timed.closed) == ["big", "small"]  # the loser's upstream stream is closed
    assert ctx.decision["race"]["winner"] == "big"


# --- over HTTP ---------------------------------------------------------------------------------
#
# The gateway runs for real in front of a fake OpenAI upstream whose answers depend on the model
# and the prompt, driven with the official openai SDK.

KEY = "sk-fleet-upstream-2468"
FAST_S, SLOW_S = 0.3, 2.0
"""How long a race's fast model takes (long enough for every raced call to reach the fake before
the winner answers) and its slow ones (a loser cut off is seen by the fake long before)."""


def fleet_answer(model: str, prompt: str):
    """The fleet. A JSON prompt: small answers JSON only about a mountain (a river gets prose),
    medium and large always answer JSON. Any other prompt ends with the name of the one model
    that answers fast (after ``FAST_S``); the others take ``SLOW_S`` seconds."""
    if prompt.endswith("as JSON."):
        if model == "small":
            return '{"mountain": "Eiger"}' if "mountain" in prompt else "not json, sorry"
        return '{"river": "Rhine"}' if model == "medium" else '{"river": "Danube"}'
    reply = f"{model} was here"
    return Delay(FAST_S if prompt.endswith(" " + model) else SLOW_S, Reply(reply))


@pytest.fixture(scope="module")
def fleet():
    script = Script(answer=fleet_answer)
    with serve(openai_app(script, api_key=KEY)) as url:
        yield script, url + "/v1"


@pytest.fixture(scope="module")
def gateway(fleet, tmp_path_factory: pytest.TempPathFactory):
    config = {
        "providers": {"up": {"kind": "openai", "base_url": fleet[1], "api_key": KEY}},
        "models": {
            "small": {"provider": "up", "input_price": 1.0, "output_price": 2.0},
            "medium": {"provider": "up", "input_price": 5.0, "output_price": 10.0},
            "large": {"provider": "up", "input_price": 30.0, "output_price": 60.0},
        },
        "routes": {
            "json-cascade": {"models": ["small", "medium", "large"], "strategy": "cascade",
                             "validators": ["json"]},
            "fastest": {"models": ["small", "medium", "large"], "strategy": "race",
                        "race": {"n": 2}},
        },
    }
    with running_gateway(config, tmp_path_factory.mktemp("cascade_race")) as gw:
        yield gw


@pytest.fixture
def script(fleet) -> Script:
    fleet[0].reset()
    return fleet[0]


def asked(script: Script, prompt: str) -> list[str]:
    """The models the fake was asked ``prompt`` of, in the order their answers settled."""
    return [s.model for s in script.spans if s.prompt == prompt]


def cut_off(script: Script, prompt: str, model: str, within: float = 5.0) -> bool:
    """Whether the fake saw the gateway hang up on ``model``'s call (waiting for it a while)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if any(s.model == model and s.prompt == prompt and s.gone for s in script.spans):
            return True
        time.sleep(0.02)
    return False


def record_of(gateway, request_id: str) -> tuple[dict, list[dict]]:
    """The request's row (its decision decoded) and its attempts' rows."""
    row = next(r for r in gateway.rows() if r["request_id"] == request_id)
    row["decision"] = json.loads(row["decision"] or "{}")
    return row, gateway.attempts(request_id)


JSON_PROMPTS = [
    ("A mountain, as JSON.", ["small"], ["ok"], '{"mountain": "Eiger"}'),
    ("A river, as JSON.", ["small", "medium"], ["rejected", "ok"], '{"river": "Rhine"}'),
]


@pytest.mark.parametrize("prompt, models, statuses, content", JSON_PROMPTS)
def test_http_cascade_escalates_exactly_when_the_validator_fails(gateway, script, prompt, models,
                                                                 statuses, content) -> None:
    raw = gateway.client(timeout=10).chat.completions.with_raw_response.create(
        model="json-cascade", messages=[{"role": "user", "content": prompt}],
        response_format=JSON)
    completion = raw.parse()
    assert completion.choices[0].message.content == content
    assert asked(script, prompt) == models  # medium only after small's answer failed
    assert raw.headers["x-turnout-strategy"] == "cascade"
    assert raw.headers["x-turnout-model"] == models[-1]
    assert "x-turnout-validation" not in raw.headers
    row, attempts = record_of(gateway, raw.headers["x-request-id"])
    assert (row["status"], row["model"]) == ("ok", models[-1])
    assert [(a["model"], a["status"]) for a in attempts] == list(zip(models, statuses))
    path = row["decision"]["cascade"]
    assert [(e["model"], e["passed"]) for e in path] == [(m, s == "ok")
                                                         for m, s in zip(models, statuses)]
    if len(models) > 1:
        assert "json" in path[0]["reason"]
    cost = float(raw.headers["x-turnout-cost-usd"])
    assert all(a["cost_usd"] > 0 for a in attempts)
    assert cost == pytest.approx(sum(a["cost_usd"] for a in attempts), abs=1e-8)
    assert row["cost_usd"] == pytest.approx(cost, abs=1e-8)


@pytest.mark.parametrize("fast, slow", [("small", "medium"), ("medium", "small")])
def test_http_race_returns_the_winner_and_cuts_the_loser_off(gateway, script, fast,
                                                             slow) -> None:
    prompt = f"Who answers first? {fast}"
    started = time.monotonic()
    raw = gateway.client(timeout=10).chat.completions.with_raw_response.create(
        model="fastest", messages=[{"role": "user", "content": prompt}])
    assert time.monotonic() - started < SLOW_S  # the loser was not waited for
    assert raw.parse().choices[0].message.content == f"{fast} was here"
    assert (raw.headers["x-turnout-strategy"], raw.headers["x-turnout-model"]) == ("race", fast)
    assert cut_off(script, prompt, slow)  # the fake saw the connection closed
    spans = [s for s in script.spans if s.prompt == prompt]
    assert sorted(s.model for s in spans) == sorted([fast, slow])  # large never started
    assert spans[0].overlaps(spans[1])  # both were in flight together
    row, attempts = record_of(gateway, raw.headers["x-request-id"])
    assert (row["status"], row["model"]) == ("ok", fast)
    by_model = {a["model"]: a for a in attempts}
    assert sorted(by_model) == sorted([fast, slow])
    assert by_model[fast]["status"] == "ok" and by_model[slow]["status"] == "cancelled"
    assert by_model[slow]["input_tokens"] > 0 and by_model[slow]["output_tokens"] == 0
    assert by_model[slow]["cost_usd"] > 0  # its prompt was sent, and is paid for
    assert row["decision"]["race"]["winner"] == fast
    cost = float(raw.headers["x-turnout-cost-usd"])
    assert cost > by_model[fast]["cost_usd"] + 1e-8
    assert cost == pytest.approx(sum(a["cost_usd"] for a in attempts), abs=1e-8)
    assert row["cost_usd"] == pytest.approx(cost, abs=1e-8)


def test_http_streaming_cascade_streams_the_chosen_answer(gateway, script) -> None:
    prompt = "A river, as JSON."
    raw = gateway.client(timeout=10).chat.completions.with_raw_response.create(
        model="json-cascade", messages=[{"role": "user", "content": prompt}],
        response_format=JSON, stream=True, stream_options={"include_usage": True})
    assert raw.headers["x-turnout-strategy"] == "cascade"
    assert raw.headers["x-turnout-model"] == "medium"
    assert "x-turnout-validation" not in raw.headers
    chunks = list(raw.parse())
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == '{"river": "Rhine"}'
    assert chunks[-1].usage.completion_tokens > 0
    assert asked(script, prompt) == ["small", "medium"]
    row, attempts = record_of(gateway, raw.headers["x-request-id"])
    assert (row["status"], row["model"]) == ("ok", "medium")
    assert [a["status"] for a in attempts] == ["rejected", "ok"]
    assert row["cost_usd"] == pytest.approx(sum(a["cost_usd"] for a in attempts))


def test_http_streaming_race_streams_the_winner(gateway, script) -> None:
    prompt = "Who answers first? small"
    raw = gateway.client(timeout=10).chat.completions.with_raw_response.create(
        model="fastest", messages=[{"role": "user", "content": prompt}], stream=True)
    text = "".join(c.choices[0].delta.content or "" for c in raw.parse() if c.choices)
    assert text == "small was here"
    assert raw.headers["x-turnout-model"] == "small"
    assert cut_off(script, prompt, "medium")
    row, attempts = record_of(gateway, raw.headers["x-request-id"])
    assert (row["status"], row["model"]) == ("ok", "small")
    assert sorted((a["model"], a["status"]) for a in attempts) == [("medium", "cancelled"),
                                                                   ("small", "ok")]
    assert row["cost_usd"] == pytest.approx(sum(a["cost_usd"] for a in attempts))
    assert all(a["cost_usd"] > 0 for a in attempts)
