"""The HTTP API driven with the official openai SDK and httpx, over the simulated fleet.

Provider wire formats and upstream faults are covered in test_api_faults.py; this file covers the
API's own contract: answers, streams, headers, models, health, keys and bad input.
"""

from __future__ import annotations

import hashlib
import time

import httpx
import openai
import orjson
import pytest

from .gateway import running_gateway

KEY = "tk-test-0123456789"

FLEET = {
    "providers": {"fleet": {"kind": "simulated"}},
    "models": {
        "fast": {"provider": "fleet", "input_price": 1.0, "output_price": 2.0,
                 "context_window": 4000},
        "slow": {"provider": "fleet", "input_price": 5.0, "output_price": 10.0, "tier": 2},
        "trickle": {"provider": "fleet"},
    },
    "routes": {"duo": {"models": ["fast", "slow"]}},
    "simulation": {"models": {
        "fast": {"latency_ms": 5, "jitter": 0, "quality": 1.0, "tokens_per_s": 2000},
        "slow": {"latency_ms": 10, "jitter": 0, "quality": 1.0, "tokens_per_s": 2000},
        "trickle": {"latency_ms": 5, "jitter": 0, "quality": 1.0, "tokens_per_s": 5},
    }},
}


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory):
    config = {**FLEET, "server": {"api_keys": [
        {"name": "team-a", "sha256": hashlib.sha256(KEY.encode()).hexdigest()}],
        "max_body_bytes": 64 * 1024}}
    with running_gateway(config, tmp_path_factory.mktemp("api")) as gw:
        yield gw


def ask(text: str = "Say hello.") -> list[dict]:
    return [{"role": "user", "content": text}]


def test_sync_answer_with_turnout_headers(gateway) -> None:
    raw = gateway.client(KEY).chat.completions.with_raw_response.create(
        model="duo", messages=ask())
    completion = raw.parse()
    assert completion.choices[0].message.content.startswith("[fast]")
    assert completion.usage.prompt_tokens > 0 and completion.usage.completion_tokens > 0
    assert raw.headers["x-turnout-model"] == "fast"
    assert raw.headers["x-turnout-provider"] == "fleet"
    assert raw.headers["x-turnout-route"] == "duo"
    assert raw.headers["x-turnout-strategy"] == "fallback"
    assert raw.headers["x-request-id"].startswith("req_")
    usage = completion.usage
    assert float(raw.headers["x-turnout-cost-usd"]) == pytest.approx(
        (usage.prompt_tokens * 1.0 + usage.completion_tokens * 2.0) / 1e6, rel=1e-6)


@pytest.mark.anyio
async def test_async_answer_by_model_name(gateway) -> None:
    async with gateway.async_client(KEY) as client:
        raw = await client.chat.completions.with_raw_response.create(
            model="slow", messages=ask("What is a turnout?"))
    completion = raw.parse()
    assert completion.choices[0].message.content.startswith("[slow]")
    assert completion.model == "slow"
    assert raw.headers["x-turnout-route"] == "slow", "a model asked for by name is its route"


def test_sync_stream_with_usage(gateway) -> None:
    stream = gateway.client(KEY).chat.completions.create(
        model="duo", messages=ask("Tell me about trains."), stream=True,
        stream_options={"include_usage": True})
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.startswith("[fast]") and len(chunks) > 3
    assert chunks[-2].choices[0].finish_reason == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens > 0


@pytest.mark.anyio
async def test_async_stream(gateway) -> None:
    async with gateway.async_client(KEY) as client:
        stream = await client.chat.completions.create(
            model="fast", messages=ask("Tell me about rails."), stream=True)
        text = "".join([c.choices[0].delta.content or "" async for c in stream])
    assert text.startswith("[fast]")


def test_auto_goes_through_the_rules_and_explains_itself(gateway) -> None:
    raw = gateway.client(KEY).chat.completions.with_raw_response.create(
        model="auto", messages=ask("hi"), extra_headers={"x-turnout-explain": "1"})
    decision = orjson.loads(raw.headers["x-turnout-decision"])
    assert decision["requested"] == "auto" and decision["plan"] == ["fast", "slow"]
    assert decision["rule"] == "default" and raw.headers["x-turnout-route"] == "duo"


def test_tool_call_round_trip(gateway) -> None:
    tools = [{"type": "function", "function": {
        "name": "get_weather", "description": "Weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                       "required": ["city"]}}}]
    client = gateway.client(KEY)
    first = client.chat.completions.create(model="duo", messages=ask("What is the weather in Oslo?"),
                                           tools=tools)
    call = first.choices[0].message.tool_calls[0]
    assert first.choices[0].finish_reason == "tool_calls" and call.function.name == "get_weather"
    assert "city" in orjson.loads(call.function.arguments)
    second = client.chat.completions.create(model="duo", tools=tools, messages=[
        *ask("What is the weather in Oslo?"),
        {"role": "assistant", "tool_calls": [call.model_dump()]},
        {"role": "tool", "tool_call_id": call.id, "content": '{"temp_c": 4}'}])
    assert second.choices[0].message.content


def test_json_mode_answer_is_json(gateway) -> None:
    completion = gateway.client(KEY).chat.completions.create(
        model="duo", messages=ask("A greeting as JSON."), response_format={"type": "json_object"})
    assert isinstance(orjson.loads(completion.choices[0].message.content), dict)


def test_models_lists_auto_routes_and_models(gateway) -> None:
    ids = [m.id for m in gateway.client(KEY).models.list()]
    assert ids == ["auto", "duo", "fast", "slow", "trickle"]


def test_health_and_readiness(gateway) -> None:
    assert httpx.get(gateway.url + "/healthz").json() == {"status": "ok"}
    ready = httpx.get(gateway.url + "/readyz")
    assert ready.status_code == 200 and ready.json()["status"] == "ready"


# --- keys ----------------------------------------------------------------------------------------


def test_wrong_key_is_401_in_openai_format(gateway) -> None:
    with pytest.raises(openai.AuthenticationError) as info:
        gateway.client("wrong-key").chat.completions.create(model="duo", messages=ask())
    assert info.value.status_code == 401
    assert info.value.body["code"] == "invalid_api_key"


def test_missing_key_is_401(gateway) -> None:
    response = httpx.post(gateway.url + "/v1/chat/completions",
                          json={"model": "duo", "messages": ask()})
    assert response.status_code == 401
    assert response.json()["error"]["type"] == "authentication_error"


# --- bad input: a clear 4xx before any upstream is called, never a 500 ---------------------------


def post(gateway, body: bytes | dict, **headers) -> httpx.Response:
    content = body if isinstance(body, bytes) else orjson.dumps(body)
    return httpx.post(gateway.url + "/v1/chat/completions", content=content,
                      headers={"authorization": f"Bearer {KEY}",
                               "content-type": "application/json", **headers})


@pytest.mark.parametrize("body, status, needle", [
    (b"{not json", 400, "not valid JSON"),
    (b"", 400, "empty"),
    (b"[1, 2]", 400, "JSON object"),
    ({"model": "duo"}, 400, "'messages'"),
    ({"model": "duo", "messages": []}, 400, "'messages'"),
    ({"messages": ask()}, 400, "'model'"),
    ({"model": "duo", "messages": "hello"}, 400, "'messages'"),
    ({"model": "duo", "messages": [{"role": "wizard", "content": "x"}]}, 400, "role"),
    ({"model": "duo", "messages": ask(), "max_tokens": -5}, 400, "'max_tokens'"),
    ({"model": "duo", "messages": ask(), "max_tokens": "ten"}, 400, "'max_tokens'"),
    ({"model": "duo", "messages": ask(), "temperature": 7}, 400, "'temperature'"),
    ({"model": "duo", "messages": ask(), "stream": "yes please"}, 400, "'stream'"),
    ({"model": "nope", "messages": ask()}, 404, "'nope' does not exist"),
])
def test_bad_input_gets_an_openai_error_before_any_upstream_call(gateway, body, status,
                                                                  needle) -> None:
    before = len(gateway.rows())
    response = post(gateway, body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert needle in error["message"] and error["type"] and error["code"]
    assert len(gateway.rows()) == before  # refused before the pipeline: nothing called


def test_unknown_model_via_sdk_is_not_found(gateway) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        gateway.client(KEY).chat.completions.create(model="gpt-99", messages=ask())
    assert info.value.body["code"] == "model_not_found"


def test_oversized_body_is_413(gateway) -> None:
    huge = {"model": "duo", "messages": ask("x" * 100_000)}
    response = post(gateway, huge)
    assert response.status_code == 413
    assert "max_body_bytes" in response.json()["error"]["message"]


def test_oversized_chunked_body_is_413(gateway) -> None:
    def body():
        yield b'{"model": "duo", "messages": [{"role": "user", "content": "'
        for _ in range(100):
            yield b"y" * 1024
        yield b'"}]}'

    response = httpx.post(gateway.url + "/v1/chat/completions", content=body(),
                          headers={"authorization": f"Bearer {KEY}"})
    assert response.status_code == 413


def test_unknown_path_and_method_are_openai_errors(gateway) -> None:
    missing = httpx.get(gateway.url + "/v1/nothing-here")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
    wrong = httpx.get(gateway.url + "/v1/chat/completions")
    assert wrong.status_code == 405 and "error" in wrong.json()


# --- the record ------------------------------------------------------------------------------------


def test_every_answered_request_is_recorded_once(gateway) -> None:
    raw = gateway.client(KEY).chat.completions.with_raw_response.create(
        model="duo", messages=ask("Record me."))
    request_id = raw.headers["x-request-id"]
    rows = [r for r in gateway.rows() if r["request_id"] == request_id]
    assert len(rows) == 1
    row = rows[0]
    assert (row["status"], row["model"], row["route"], row["client"]) == \
        ("ok", "fast", "duo", "team-a")
    assert row["cost_usd"] == pytest.approx(float(raw.headers["x-turnout-cost-usd"]))
    assert KEY not in str(row) and "Record me." not in str(row)


def test_a_client_leaving_mid_stream_is_recorded_as_cancelled(gateway) -> None:
    with httpx.stream("POST", gateway.url + "/v1/chat/completions",
                      headers={"authorization": f"Bearer {KEY}"},
                      json={"model": "trickle", "stream": True,
                            "messages": ask("Tell me a long story about trains.")}) as response:
        request_id = response.headers["x-request-id"]
        first = next(response.iter_lines())
        assert first.startswith("data: ")
    # the connection is closed now, long before the answer's end
    deadline = time.monotonic() + 10
    while True:
        rows = [r for r in gateway.rows() if r["request_id"] == request_id]
        if rows or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert [(r["status"], r["error_kind"]) for r in rows] == [("cancelled", "cancelled")]
