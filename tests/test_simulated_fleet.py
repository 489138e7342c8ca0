"""The simulated fleet over real HTTP, driven with the official OpenAI SDK and httpx."""

from __future__ import annotations

import asyncio
import json
import socket
import statistics
import time

import httpx
import jsonschema
import openai
import pytest

from turnout.adapters.simulated import Fleet, Simulation
from turnout.kernel import tokens
from turnout.kernel.types import ChatRequest

pytestmark = pytest.mark.timeout(60)

MODELS = {
    "sim-fast": {"latency_ms": 5, "jitter": 0, "quality": 1.0, "tokens_per_s": 5000},
    "sim-poor": {"latency_ms": 5, "jitter": 0, "quality": 0.0, "tokens_per_s": 5000},
    "sim-broken": {"latency_ms": 5, "error_rate": 1.0},
    "sim-limited": {"latency_ms": 5, "rate_limit_rate": 1.0},
    "sim-timed": {"latency_ms": 50, "jitter": 0.3, "quality": 1.0},
    "sim-steady": {"latency_ms": 300, "jitter": 0, "quality": 1.0},
    "sim-paced": {"latency_ms": 0, "jitter": 0, "quality": 1.0, "tokens_per_s": 300},
}

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather of a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"},
                                                    "days": {"type": "integer", "minimum": 1}},
                   "required": ["city", "days"]}}}

QUESTION = [{"role": "user", "content": "How do volcanoes form under the ocean floor?"}]


def settings(models: dict) -> Simulation:
    return Simulation.model_validate({"models": models})


@pytest.fixture(scope="module")
def fleet():
    with Fleet(settings(MODELS), seed=1234) as running:
        yield running


@pytest.fixture
def client(fleet) -> openai.OpenAI:
    return openai.OpenAI(base_url=fleet.url, api_key="x", max_retries=0)


def test_answer_has_text_usage_and_latency_header(client):
    raw = client.chat.completions.with_raw_response.create(model="sim-fast", messages=QUESTION)
    answer = raw.parse()
    text = answer.choices[0].message.content
    assert text.startswith("[sim-fast] ")
    assert "volcanoes" in text
    assert answer.object == "chat.completion" and answer.model == "sim-fast"
    assert answer.choices[0].finish_reason == "stop"
    expected_prompt = tokens.count_request(ChatRequest.model_validate(
        {"model": "sim-fast", "messages": QUESTION}))
    assert answer.usage.prompt_tokens == expected_prompt
    assert answer.usage.completion_tokens == tokens.count(text) > 10
    assert answer.usage.total_tokens == expected_prompt + tokens.count(text)
    assert float(raw.headers["x-sim-latency-ms"]) == pytest.approx(5, abs=1)


def test_same_prompt_same_text_and_poor_answers_differ(client):
    first = client.chat.completions.create(model="sim-fast", messages=QUESTION)
    again = client.chat.completions.create(model="sim-fast", messages=QUESTION)
    poor = client.chat.completions.create(model="sim-poor", messages=QUESTION)
    assert first.choices[0].message.content == again.choices[0].message.content
    assert poor.choices[0].message.content.startswith("[sim-poor] ")
    assert len(poor.choices[0].message.content) < len(first.choices[0].message.content)


def test_streaming_chunks_finish_and_usage(client):
    stream = client.chat.completions.create(
        model="sim-fast", messages=QUESTION, stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    assert all(c.object == "chat.completion.chunk" and c.model == "sim-fast" for c in chunks)
    assert len({c.id for c in chunks}) == 1
    assert chunks[0].choices[0].delta.role == "assistant"
    content = [c.choices[0].delta.content for c in chunks
               if c.choices and c.choices[0].delta.content]
    assert len(content) >= 5
    text = "".join(content)
    assert text.startswith("[sim-fast] ")
    finishes = [c.choices[0].finish_reason for c in chunks
                if c.choices and c.choices[0].finish_reason]
    assert finishes == ["stop"]
    last = chunks[-1]
    assert last.choices == []
    assert last.usage.completion_tokens == tokens.count(text)
    assert last.usage.prompt_tokens == tokens.count_request(ChatRequest.model_validate(
        {"model": "sim-fast", "messages": QUESTION}))


def test_stream_wire_format_and_no_usage_unless_asked(fleet):
    body = {"model": "sim-fast", "messages": QUESTION, "stream": True}
    with httpx.stream("POST", fleet.url + "/chat/completions", json=body) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in response.iter_lines() if line]
    assert all(line.startswith("data: ") for line in lines)
    assert lines[-1] == "data: [DONE]"
    frames = [json.loads(line[6:]) for line in lines[:-1]]
    assert all(f["choices"] for f in frames)
    assert all("usage" not in f for f in frames)
    assert frames[-1]["choices"][0] == {"index": 0, "delta": {}, "logprobs": None,
                                        "finish_reason": "stop"}


def test_stream_is_paced_at_tokens_per_second(client):
    started = time.perf_counter()
    chunks = list(client.chat.completions.create(
        model="sim-paced", messages=QUESTION, stream=True, stream_options={"include_usage": True}))
    elapsed = time.perf_counter() - started
    expected = chunks[-1].usage.completion_tokens / 300
    assert expected > 0.1
    assert expected * 0.7 < elapsed < expected + 2.0


def test_unknown_model_is_404(client):
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(model="gpt-nope", messages=QUESTION)
    assert caught.value.status_code == 404
    assert caught.value.body["code"] == "model_not_found"
    assert "sim-fast" in caught.value.body["message"]


def test_malformed_bodies_are_400_in_openai_format(fleet):
    not_json = httpx.post(fleet.url + "/chat/completions", content=b"{nope",
                          headers={"content-type": "application/json"})
    no_messages = httpx.post(fleet.url + "/chat/completions",
                             json={"model": "sim-fast", "messages": []})
    a_list = httpx.post(fleet.url + "/chat/completions", json=["sim-fast"])
    for response in (not_json, no_messages, a_list):
        assert response.status_code == 400
        error = response.json()["error"]
        assert error["type"] == "invalid_request_error"
        assert set(error) == {"message", "type", "param", "code"}
    assert no_messages.json()["error"]["param"] == "messages"


def test_models_are_listed(client):
    listed = sorted(m.id for m in client.models.list())
    assert listed == sorted(MODELS)
    assert client.models.retrieve("sim-fast").id == "sim-fast"


def test_error_rate_one_gives_5xx(client):
    for _ in range(3):
        with pytest.raises(openai.InternalServerError) as caught:
            client.chat.completions.create(model="sim-broken", messages=QUESTION)
        assert caught.value.status_code in (500, 502, 503)
        assert caught.value.body["type"] == "server_error"


def test_rate_limit_rate_one_gives_429_with_retry_after(client):
    with pytest.raises(openai.RateLimitError) as caught:
        client.chat.completions.create(model="sim-limited", messages=QUESTION)
    assert caught.value.status_code == 429
    assert caught.value.response.headers["retry-after"] == "1"
    assert caught.value.body["type"] == "rate_limit_error"
    assert caught.value.body["code"] == "rate_limit_exceeded"


def test_json_mode_quality(client):
    ask = [{"role": "user", "content": "Give the three largest planets as JSON."}]
    good = client.chat.completions.create(model="sim-fast", messages=ask,
                                          response_format={"type": "json_object"})
    poor = client.chat.completions.create(model="sim-poor", messages=ask,
                                          response_format={"type": "json_object"})
    value = json.loads(good.choices[0].message.content)
    assert isinstance(value, dict) and value["model"] == "sim-fast"
    with pytest.raises(json.JSONDecodeError):
        json.loads(poor.choices[0].message.content)


def test_json_schema_good_answer_matches_the_schema(client):
    schema = {"type": "object", "additionalProperties": False,
              "required": ["answer", "confidence", "tags", "kind"],
              "properties": {"answer": {"type": "string"},
                             "confidence": {"type": "number", "minimum": 0, "maximum": 1},
                             "tags": {"type": "array", "items": {"type": "string"}, "minItems": 2},
                             "kind": {"enum": ["fact", "opinion"]}}}
    answer = client.chat.completions.create(
        model="sim-fast", messages=[{"role": "user", "content": "Is Mars red?"}],
        response_format={"type": "json_schema",
                         "json_schema": {"name": "verdict", "schema": schema, "strict": True}})
    value = json.loads(answer.choices[0].message.content)
    jsonschema.validate(value, schema)
    assert len(value["tags"]) == 2 and value["kind"] == "fact"


def test_multiple_choice_is_stable_and_poor_picks_otherwise(client):
    prompt = ("Which gas do plants take in for photosynthesis?\nA. Oxygen\nB. Carbon dioxide\n"
              "C. Nitrogen\nD. Helium")
    ask = [{"role": "user", "content": prompt}]
    picks = {client.chat.completions.create(model=m, messages=ask).choices[0].message.content
             .split("Answer: ")[1][0] for m in ("sim-fast", "sim-timed", "sim-fast")}
    poor = client.chat.completions.create(model="sim-poor", messages=ask).choices[0].message.content
    assert len(picks) == 1 and picks <= set("ABCD")
    assert poor.split("Answer: ")[1][0] in set("ABCD") - picks
    inline = client.chat.completions.create(model="sim-fast", messages=[
        {"role": "user", "content": "Pick one: (A) red (B) green (C) blue"}]).choices[0].message
    assert inline.content.split("Answer: ")[1][0] in "ABC"


def test_max_tokens_truncates_with_length(client):
    full = client.chat.completions.create(model="sim-fast", messages=QUESTION)
    cut = client.chat.completions.create(model="sim-fast", messages=QUESTION, max_tokens=6)
    cut2 = client.chat.completions.create(model="sim-fast", messages=QUESTION,
                                          max_completion_tokens=6)
    assert full.choices[0].finish_reason == "stop"
    assert cut.choices[0].finish_reason == "length"
    assert 0 < cut.usage.completion_tokens <= 6
    assert full.choices[0].message.content.startswith(cut.choices[0].message.content)
    assert cut2.choices[0].message.content == cut.choices[0].message.content
    streamed = list(client.chat.completions.create(model="sim-fast", messages=QUESTION,
                                                   max_tokens=6, stream=True))
    assert [c.choices[0].finish_reason for c in streamed][-1] == "length"


def test_stop_sequence_cuts_the_answer(client):
    answer = client.chat.completions.create(model="sim-fast", messages=QUESTION, stop=["ocean"])
    text = answer.choices[0].message.content
    assert "ocean" not in text and text.startswith("[sim-fast] ")
    assert answer.choices[0].finish_reason == "stop"


def test_tool_call_shape(client):
    forced = client.chat.completions.create(
        model="sim-fast", messages=[{"role": "user", "content": "Hello there, friend"}],
        tools=[WEATHER], tool_choice="required")
    choice = forced.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    call = choice.message.tool_calls[0]
    assert call.type == "function" and call.id.startswith("call_")
    assert call.function.name == "get_weather"
    jsonschema.validate(json.loads(call.function.arguments), WEATHER["function"]["parameters"])
    assert forced.usage.completion_tokens > 0

    auto = client.chat.completions.create(
        model="sim-fast", messages=[{"role": "user", "content": "Is it raining? Check the weather "
                                     "in Oslo"}], tools=[WEATHER])
    assert json.loads(auto.choices[0].message.tool_calls[0].function.arguments)["city"] == "Oslo"

    unrelated = client.chat.completions.create(model="sim-fast", messages=QUESTION, tools=[WEATHER])
    assert unrelated.choices[0].message.tool_calls is None
    assert unrelated.choices[0].finish_reason == "stop"

    after = client.chat.completions.create(model="sim-fast", tools=[WEATHER], messages=[
        {"role": "user", "content": "What's the weather in Oslo?"},
        {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
        {"role": "tool", "tool_call_id": call.id, "content": "12 C, light rain"}])
    assert "12 C, light rain" in after.choices[0].message.content


def test_streamed_tool_call_reassembles(client):
    chunks = list(client.chat.completions.create(
        model="sim-fast", messages=[{"role": "user", "content": "weather in Oslo please"}],
        tools=[WEATHER], tool_choice={"type": "function", "function": {"name": "get_weather"}},
        stream=True))
    deltas = [tc for c in chunks if c.choices for tc in c.choices[0].delta.tool_calls or []]
    assert deltas[0].id.startswith("call_") and deltas[0].function.name == "get_weather"
    arguments = "".join(d.function.arguments or "" for d in deltas)
    assert len(deltas) > 2
    assert json.loads(arguments)["city"] == "Oslo"
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_latency_follows_the_config(client):
    def timed() -> float:
        started = time.perf_counter()
        client.chat.completions.create(model="sim-timed", messages=QUESTION)
        return (time.perf_counter() - started) * 1000

    client.chat.completions.create(model="sim-fast", messages=QUESTION)  # warm connection
    median = statistics.median(timed() for _ in range(20))
    assert 25 < median < 200


def test_slow_answers_do_not_block_each_other(fleet):
    async def burst() -> float:
        async with httpx.AsyncClient(base_url=fleet.url) as http:
            started = time.perf_counter()
            answers = await asyncio.gather(*(http.post("/chat/completions", json={
                "model": "sim-steady", "messages": QUESTION}) for _ in range(5)))
            assert [a.status_code for a in answers] == [200] * 5
            return time.perf_counter() - started

    assert asyncio.run(burst()) < 1.0  # one after another would take 1.5 s


def outcomes(seed: int) -> list[int]:
    flaky = settings({"sim-flaky": {"latency_ms": 0, "error_rate": 0.3,
                                    "rate_limit_rate": 0.2}})
    with Fleet(flaky, seed=seed) as running, httpx.Client(base_url=running.url) as http:
        return [http.post("/chat/completions", json={
            "model": "sim-flaky", "messages": QUESTION}).status_code for _ in range(30)]


def test_same_seed_same_sequence_of_outcomes():
    first, second, other = outcomes(7), outcomes(7), outcomes(8)
    assert first == second
    assert {200, 429} <= set(first) and set(first) & {500, 502, 503}
    assert other != first


def test_stop_is_idempotent_and_closes_the_port():
    running = Fleet(settings({"sim-fast": MODELS["sim-fast"]}))
    url = running.start()
    assert running.start() == url
    assert httpx.get(url + "/models").status_code == 200
    running.stop()
    running.stop()
    with pytest.raises(httpx.ConnectError):
        httpx.get(url + "/models")


def test_busy_port_raises_a_clear_error():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        taken = Simulation.model_validate({"port": port, "models": {"sim-fast": {}}})
        with pytest.raises(RuntimeError, match=f"cannot listen on 127.0.0.1:{port}"):
            Fleet(taken).start()
