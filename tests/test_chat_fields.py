"""The chat fields each provider wire format serves its own way: ``n``, ``logprobs`` and
``top_logprobs``, ``seed``, ``parallel_tool_calls``, ``reasoning_effort``, and the cached and
reasoning token details with their price, driven with the official openai SDK through the gateway
against the local OpenAI, Anthropic and Gemini fakes."""

from __future__ import annotations

import uuid

import openai
import pytest

from .fakes import Delay, Reply, Script, Status, anthropic_app, gemini_app, openai_app, serve
from .gateway import running_gateway

KINDS = ("openai", "anthropic", "gemini")
PRICES = {"input_price": 2.0, "cached_input_price": 0.5, "output_price": 8.0}
"""USD per million tokens of every model here."""

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather of a city.",
    "parameters": {"type": "object", "properties": {"location": {"type": "string"}},
                   "required": ["location"]}}}


@pytest.fixture(scope="module")
def fakes():
    scripts = {kind: Script() for kind in KINDS}
    with serve(openai_app(scripts["openai"])) as o, \
            serve(anthropic_app(scripts["anthropic"])) as a, \
            serve(gemini_app(scripts["gemini"])) as g:
        yield scripts, {"openai": o + "/v1", "anthropic": a, "gemini": g + "/v1beta"}


@pytest.fixture(scope="module")
def gateway(fakes, tmp_path_factory: pytest.TempPathFactory):
    urls = fakes[1]
    keys = {"openai": "sk-test", "anthropic": "sk-ant-test", "gemini": "AIza-test-key"}
    config = {
        "providers": {kind: {"kind": kind, "base_url": urls[kind], "api_key": keys[kind]}
                      for kind in KINDS},
        "models": {f"{kind}-model": {"provider": kind, **PRICES} for kind in KINDS},
    }
    with running_gateway(config, tmp_path_factory.mktemp("chat-fields")) as gw:
        yield gw


@pytest.fixture
def scripts(fakes) -> dict[str, Script]:
    for script in fakes[0].values():
        script.reset()
    return fakes[0]


@pytest.fixture
def client(gateway) -> openai.OpenAI:
    return gateway.client()


def ask(client: openai.OpenAI, kind: str, text: str = "hello there", **fields):
    """The raw response (headers and parsed completion) of one chat request to ``kind``."""
    return client.chat.completions.with_raw_response.create(
        model=f"{kind}-model", messages=[{"role": "user", "content": text}], **fields)


# --- n -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_n_returns_that_many_choices(client, scripts, kind) -> None:
    raw = ask(client, kind, "count me", n=3)
    answer = raw.parse()

    assert [c.index for c in answer.choices] == [0, 1, 2]
    # The OpenAI and Gemini fakes vary the further choices; Anthropic's are three calls alike.
    marks = ["", "", ""] if kind == "anthropic" else ["", " (2)", " (3)"]
    assert [c.message.content for c in answer.choices] == [f"Echo: count me{m}" for m in marks]
    assert all(c.finish_reason == "stop" for c in answer.choices)
    sent = [r.body for r in scripts[kind].requests]
    if kind == "openai":
        assert [b["n"] for b in sent] == [3]
    elif kind == "gemini":
        assert [b["generationConfig"]["candidateCount"] for b in sent] == [3]
    else:  # Anthropic answers one at a time: three calls, their usage summed
        assert len(sent) == 3 and all("n" not in b for b in sent)
    # Every choice is paid for: the fakes count each one's words.
    assert answer.usage.completion_tokens == (9 if kind == "anthropic" else 3 + 4 + 4)
    assert answer.usage.prompt_tokens == (6 if kind == "anthropic" else 2)


def test_the_anthropic_choices_are_asked_for_in_parallel(client, scripts) -> None:
    scripts["anthropic"].push(*(Delay(0.2) for _ in range(3)))
    answer = ask(client, "anthropic", "side by side", n=3).parse()

    assert len(answer.choices) == 3
    first, second, third = scripts["anthropic"].spans
    assert first.overlaps(second) and second.overlaps(third) and first.overlaps(third)


def test_a_failing_anthropic_choice_fails_the_request(client, scripts) -> None:
    scripts["anthropic"].push(Reply(), Status(400, "bad"), Reply())
    with pytest.raises(openai.BadRequestError):
        ask(client, "anthropic", n=3)


# --- logprobs ----------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["openai", "gemini"])
def test_logprobs_come_back_in_openais_shape(client, scripts, kind) -> None:
    raw = ask(client, kind, "three little words", logprobs=True, top_logprobs=1)
    answer = raw.parse()

    tokens = answer.choices[0].logprobs.content
    assert [t.token for t in tokens] == ["Echo:", "three", "little"]
    assert all(t.logprob < 0 and len(t.top_logprobs) == 1 for t in tokens)
    assert tokens[1].top_logprobs[0].token == "three"
    assert raw.headers.get("x-turnout-dropped") is None
    body = scripts[kind].last.body
    if kind == "gemini":
        assert body["generationConfig"]["responseLogprobs"] is True
        assert body["generationConfig"]["logprobs"] == 1
    else:
        assert body["logprobs"] is True and body["top_logprobs"] == 1


def test_logprobs_from_anthropic_are_dropped_and_said_so(client, scripts) -> None:
    raw = ask(client, "anthropic", logprobs=True)
    answer = raw.parse()

    assert answer.choices[0].logprobs is None
    assert answer.choices[0].message.content == "Echo: hello there"
    assert raw.headers["x-turnout-dropped"] == "logprobs"
    assert "logprobs" not in scripts["anthropic"].last.body


def test_no_dropped_header_when_logprobs_were_not_asked(client, scripts) -> None:
    assert ask(client, "anthropic").headers.get("x-turnout-dropped") is None


# --- seed, parallel_tool_calls, reasoning_effort -----------------------------------------------


def test_openai_gets_the_fields_as_they_are(client, scripts) -> None:
    ask(client, "openai", "weather in Paris?", seed=7, tools=[WEATHER], parallel_tool_calls=False,
        reasoning_effort="low")

    body = scripts["openai"].last.body
    assert (body["seed"], body["parallel_tool_calls"], body["reasoning_effort"]) == (7, False, "low")


def test_openai_gets_no_parallel_tool_calls_without_tools(client, scripts) -> None:
    ask(client, "openai", parallel_tool_calls=True)

    assert "parallel_tool_calls" not in scripts["openai"].last.body


def test_anthropic_gets_a_thinking_budget_and_no_seed(client, scripts) -> None:
    raw = ask(client, "anthropic", "weather in Paris?", seed=7, tools=[WEATHER],
              parallel_tool_calls=False, reasoning_effort="low", max_tokens=100, temperature=0.3)
    answer = raw.parse()

    body = scripts["anthropic"].last.body
    assert body["thinking"] == {"type": "enabled", "budget_tokens": 2048}
    assert body["max_tokens"] == 100 + 2048  # the answer keeps its 100 tokens
    assert "temperature" not in body and "seed" not in body
    assert body["tool_choice"] == {"type": "auto", "disable_parallel_tool_use": True}
    # The thinking block is not part of the answer, but its tokens are paid for as output.
    assert answer.choices[0].message.content == "Let me check."
    assert answer.choices[0].message.tool_calls[0].function.name == "get_weather"
    assert answer.usage.completion_tokens == 2 + 5 + 3  # answer, thinking, tool input + 1


def test_anthropic_streams_without_the_thinking(client, scripts) -> None:
    stream = client.chat.completions.create(
        model="anthropic-model", messages=[{"role": "user", "content": "think first"}],
        reasoning_effort="high", stream=True)
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)

    assert text == "Echo: think first"
    assert scripts["anthropic"].last.body["thinking"]["budget_tokens"] == 16384


def test_gemini_gets_a_thinking_config_and_the_seed(client, scripts) -> None:
    answer = ask(client, "gemini", "weather in Paris?", seed=7, tools=[WEATHER],
                 parallel_tool_calls=False, reasoning_effort="medium").parse()

    body = scripts["gemini"].last.body
    assert body["generationConfig"]["seed"] == 7
    assert body["generationConfig"]["thinkingConfig"] == {"thinkingBudget": 8192}
    assert "parallel_tool_calls" not in str(body)  # Gemini has no such switch
    assert answer.usage.completion_tokens_details.reasoning_tokens == 40


# --- usage details and their price -------------------------------------------------------------


def price(usage) -> float:
    """The hand-computed cost of ``usage`` at :data:`PRICES`."""
    cached = usage.prompt_tokens_details.cached_tokens
    return ((usage.prompt_tokens - cached) * PRICES["input_price"]
            + cached * PRICES["cached_input_price"]
            + usage.completion_tokens * PRICES["output_price"]) / 1_000_000


@pytest.mark.parametrize("kind", KINDS)
def test_cached_and_reasoning_tokens_are_reported_and_priced(client, gateway, scripts,
                                                             kind) -> None:
    system = f"You are assistant number {uuid.uuid4().hex}."  # 5 words, new to the fake
    messages = [{"role": "system", "content": system}, {"role": "user", "content": "hi"}]
    client.chat.completions.create(model=f"{kind}-model", messages=messages)
    raw = client.chat.completions.with_raw_response.create(
        model=f"{kind}-model", messages=messages, reasoning_effort="low")
    answer = raw.parse()

    usage = answer.usage
    assert usage.prompt_tokens == 5 + 1 and usage.prompt_tokens_details.cached_tokens == 5
    reasoning = {"openai": 8, "anthropic": 0, "gemini": 40}[kind]
    if reasoning:
        assert usage.completion_tokens_details.reasoning_tokens == reasoning
    thinking = 3 if kind == "anthropic" else 0  # "Thinking about: hi", inside output_tokens
    assert usage.completion_tokens == 2 + reasoning + thinking
    cost = float(raw.headers["x-turnout-cost-usd"])
    assert cost == pytest.approx(price(usage), abs=1e-8)
    assert cost < (usage.prompt_tokens * PRICES["input_price"]
                   + usage.completion_tokens * PRICES["output_price"]) / 1_000_000
    [row] = [r for r in gateway.rows() if r["request_id"] == raw.headers["x-request-id"]]
    assert row["cost_usd"] == pytest.approx(cost, abs=1e-8)


# --- bad values --------------------------------------------------------------------------------


@pytest.mark.parametrize("fields, param", [
    ({"n": 0}, "n"),
    ({"n": 100}, "n"),
    ({"n": 2, "stream": True}, "n"),
    ({"top_logprobs": 2}, "top_logprobs"),
    ({"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
    ({"reasoning_effort": "extreme"}, "reasoning_effort"),
])
@pytest.mark.parametrize("kind", KINDS)
def test_bad_values_are_400s_in_openais_shape(client, scripts, kind, fields, param) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        ask(client, kind, **fields)

    assert caught.value.status_code == 400
    error = caught.value.body
    assert error["type"] == "invalid_request_error" and error["param"] == param
    assert param in error["message"]
    assert scripts[kind].requests == []  # refused before any upstream call


def test_a_cached_answer_keeps_its_choices(client, scripts) -> None:
    first = ask(client, "openai", "same again", n=3, seed=5)
    again = ask(client, "openai", "same again", n=3, seed=5)

    assert (first.headers["x-turnout-cache"], again.headers["x-turnout-cache"]) == ("miss", "hit")
    assert len(again.parse().choices) == 3
