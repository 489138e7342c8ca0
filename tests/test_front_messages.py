"""Anthropic's Messages API front door (``/v1/messages``, ``/v1/messages/count_tokens``), driven
by the official ``anthropic`` SDK with its base URL pointed at a real gateway whose upstreams are
the local OpenAI, Anthropic and Gemini fakes."""

from __future__ import annotations

import anthropic
import httpx
import orjson
import pytest

from turnout.kernel.tokens import count

from .fakes import ErrorInStream, Status
from .fakes.fleet import each_test_scripted, every_provider
from .gateway import running_gateway

OPENAI_KEY, ANTHROPIC_KEY, GEMINI_KEY = "sk-openai-up-1111", "sk-ant-up-2222", "AIzaUpGemini0123456789"
KEY = "sk-turnout-front-messages-key"
MODELS = [("gpt", "openai"), ("claude", "anthropic"), ("gemini", "gemini")]
WEATHER = [{"name": "get_weather", "description": "Weather in a city.",
            "input_schema": {"type": "object", "properties": {"location": {"type": "string"}},
                             "required": ["location"]}}]
PIXEL = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="


@pytest.fixture(scope="module")
def fakes():
    with every_provider(OPENAI_KEY, ANTHROPIC_KEY, GEMINI_KEY) as found:
        yield found


@pytest.fixture(scope="module")
def gateway(fakes, tmp_path_factory: pytest.TempPathFactory):
    _, urls = fakes
    caps = ["tools", "json", "streaming", "vision"]
    config = {
        "server": {"api_keys": [{"name": "coder", "key": KEY, "user": "keyholder"}]},
        "providers": {
            "openai": {"kind": "openai", "base_url": urls["openai"], "api_key": OPENAI_KEY},
            "anthropic": {"kind": "anthropic", "base_url": urls["anthropic"],
                          "api_key": ANTHROPIC_KEY},
            "gemini": {"kind": "gemini", "base_url": urls["gemini"], "api_key": GEMINI_KEY},
        },
        "models": {
            "gpt": {"provider": "openai", "upstream": "gpt-4o-mini", "input_price": 0.15,
                    "output_price": 0.6, "capabilities": caps},
            "claude": {"provider": "anthropic", "upstream": "claude-3-5-haiku-latest",
                       "input_price": 0.8, "output_price": 4, "capabilities": caps},
            "gemini": {"provider": "gemini", "upstream": "gemini-2.0-flash", "input_price": 0.1,
                       "output_price": 0.4, "capabilities": caps},
        },
        "routes": {"solo-claude": {"models": ["claude"]}},
    }
    with running_gateway(config, tmp_path_factory.mktemp("front_messages")) as gw:
        yield gw


@pytest.fixture(autouse=True)
def clean(fakes):
    yield from each_test_scripted(fakes[0])


def client(gateway, **kw) -> anthropic.Anthropic:
    kw.setdefault("api_key", KEY)
    return anthropic.Anthropic(base_url=gateway.url, max_retries=0, **kw)


def post(gateway, path: str, body: object, **headers: str) -> httpx.Response:
    content = body if isinstance(body, bytes) else orjson.dumps(body)
    return httpx.post(gateway.url + path, content=content,
                      headers={"x-api-key": KEY, "content-type": "application/json", **headers})


def assert_anthropic_error(response: httpx.Response, status: int, kind: str) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["type"] == "error" and body["error"]["type"] == kind, body
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    return body["error"]["message"]


# --- each provider, both ways ------------------------------------------------------------------


@pytest.mark.parametrize("model, provider", MODELS)
def test_create_answers_from_every_provider(gateway, fakes, model, provider) -> None:
    raw = client(gateway).messages.with_raw_response.create(
        model=model, max_tokens=100, messages=[{"role": "user", "content": "Hi there"}],
        system=[{"type": "text", "text": "Be brief."}, {"type": "text", "text": "Be kind."}])
    message = raw.parse()
    assert message.type == "message" and message.role == "assistant"
    assert [b.type for b in message.content] == ["text"]
    assert message.content[0].text == "Echo: Hi there"
    assert message.model == model
    assert message.stop_reason == "end_turn" and message.stop_sequence is None
    assert message.usage.input_tokens > 0 and message.usage.output_tokens > 0
    assert message.id == "msg_" + raw.headers["x-request-id"].removeprefix("req_")
    assert raw.headers["x-turnout-provider"] == provider
    assert float(raw.headers["x-turnout-cost-usd"]) > 0
    sent = orjson.dumps(fakes[0][provider].last.body).decode()
    assert "Be brief." in sent and "Be kind." in sent


@pytest.mark.parametrize("model, provider", MODELS)
def test_stream_relays_anthropic_events(gateway, fakes, model, provider) -> None:
    with client(gateway).messages.stream(
            model=model, max_tokens=100,
            messages=[{"role": "user", "content": "Stream me a reply please"}]) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == "Echo: Stream me a reply please"
    assert final.content[0].text == text
    assert final.model == model and final.stop_reason == "end_turn"
    assert final.usage.output_tokens > 0 and final.usage.input_tokens > 0
    upstream = fakes[0][provider].last
    assert upstream.body.get("stream") is True if provider != "gemini" \
        else ":streamGenerateContent" in upstream.path


def test_stream_sends_every_event_type_in_order(gateway) -> None:
    with httpx.stream("POST", gateway.url + "/v1/messages", headers={"x-api-key": KEY},
                      json={"model": "claude", "max_tokens": 50, "stream": True,
                            "messages": [{"role": "user", "content": "Hello"}]}) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        events = [line.removeprefix("event: ") for line in response.iter_lines()
                  if line.startswith("event: ")]
    assert events[:3] == ["message_start", "ping", "content_block_start"]
    assert "content_block_delta" in events
    assert events[-3:] == ["content_block_stop", "message_delta", "message_stop"]


# --- tool use ----------------------------------------------------------------------------------


@pytest.mark.parametrize("model, provider", MODELS)
def test_tool_use_round_trip(gateway, fakes, model, provider) -> None:
    sdk = client(gateway)
    ask = {"role": "user", "content": "What is the weather in Paris?"}
    first = sdk.messages.create(model=model, max_tokens=100, tools=WEATHER, messages=[ask])
    assert first.stop_reason == "tool_use"
    use = next(b for b in first.content if b.type == "tool_use")
    assert use.name == "get_weather" and use.input == {"location": "Paris"}
    second = sdk.messages.create(model=model, max_tokens=100, tools=WEATHER, messages=[
        ask, {"role": "assistant", "content": [b.model_dump(exclude_none=True)
                                               for b in first.content]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id,
                                      "content": [{"type": "text", "text": "sunny, 21C"}]}]}])
    assert second.stop_reason == "end_turn"
    assert "Tool said:" in second.content[0].text and "21C" in second.content[0].text


@pytest.mark.parametrize("model, provider", MODELS)
def test_streamed_tool_use_arrives_as_input_json(gateway, model, provider) -> None:
    with client(gateway).messages.stream(
            model=model, max_tokens=100, tools=WEATHER,
            messages=[{"role": "user", "content": "Weather in Oslo?"}]) as stream:
        final = stream.get_final_message()
    uses = [b for b in final.content if b.type == "tool_use"]
    assert final.stop_reason == "tool_use"
    assert [(u.name, u.input) for u in uses] == [("get_weather", {"location": "Oslo"})]


def test_tool_choice_stops_and_errors_are_translated(gateway, fakes) -> None:
    client(gateway).messages.create(
        model="gpt", max_tokens=100, tools=WEATHER, tool_choice={"type": "any"},
        stop_sequences=["END"], metadata={"user_id": "alice"},
        extra_body={"temperature": 0.5, "top_p": 0.9},  # newer SDKs no longer name them
        messages=[{"role": "user", "content": "Weather in Rome?"},
                  {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1",
                                                     "name": "get_weather",
                                                     "input": {"location": "Rome"}}]},
                  {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1",
                                                "content": "no such city", "is_error": True}]}])
    sent = fakes[0]["openai"].last.body
    assert sent["tool_choice"] == "required" and sent["stop"] == ["END"]
    assert (sent["temperature"], sent["top_p"], sent["user"]) == (0.5, 0.9, "alice")
    assert sent["messages"][-1] == {"role": "tool", "tool_call_id": "toolu_1",
                                    "content": "Error: no such city"}


def test_image_and_user_reach_an_anthropic_upstream_intact(gateway, fakes) -> None:
    client(gateway).messages.create(
        model="claude", max_tokens=50, metadata={"user_id": "bob"},
        messages=[{"role": "user", "content": [
            {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                         "data": PIXEL}},
            {"type": "text", "text": "What is this?", "cache_control": {"type": "ephemeral"}}]}])
    sent = fakes[0]["anthropic"].last.body
    assert sent["metadata"] == {"user_id": "bob"}
    assert sent["messages"][0]["content"][0] == {
        "type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PIXEL}}


# --- count_tokens ------------------------------------------------------------------------------


def test_count_tokens_counts_without_an_upstream_call(gateway, fakes) -> None:
    sdk = client(gateway)
    short = sdk.messages.count_tokens(model="claude",
                                      messages=[{"role": "user", "content": "Hi"}])
    long_text = "The quick brown fox jumps over the lazy dog. " * 20
    long = sdk.messages.count_tokens(model="auto", system="Be brief.",
                                     messages=[{"role": "user", "content": long_text}],
                                     tools=WEATHER)
    assert short.input_tokens > 0
    assert long.input_tokens - short.input_tokens >= count(long_text) - count("Hi")
    assert all(not script.requests for script in fakes[0].values())


def test_count_tokens_refuses_an_unknown_model(gateway) -> None:
    with pytest.raises(anthropic.NotFoundError) as caught:
        client(gateway).messages.count_tokens(model="no-such-model",
                                              messages=[{"role": "user", "content": "Hi"}])
    assert caught.value.body["error"]["type"] == "not_found_error"


# --- bad input, in Anthropic's error shape -----------------------------------------------------

GOOD = {"model": "gpt", "max_tokens": 10, "messages": [{"role": "user", "content": "Hi"}]}


@pytest.mark.parametrize("change, where", [
    ({"max_tokens": None}, "max_tokens"),
    ({"max_tokens": "10"}, "max_tokens"),
    ({"max_tokens": True}, "max_tokens"),
    ({"max_tokens": 0}, "max_tokens"),
    ({"messages": "Hi"}, "messages"),
    ({"messages": []}, "messages"),
    ({"messages": [{"role": "system", "content": "Hi"}]}, "role"),
    ({"messages": [{"role": "user", "content": [{"type": "document", "source": {}}]}]}, "type"),
    ({"messages": [{"role": "assistant", "content": [{"type": "tool_result",
                                                       "tool_use_id": "x"}]}]}, "type"),
    ({"messages": [{"role": "user", "content": [{"type": "image", "source": {
        "type": "base64", "media_type": "image/bmp", "data": "AA"}}]}]}, "media_type"),
    ({"system": 7}, "system"),
    ({"temperature": 1.5}, "temperature"),
    ({"stream": "yes"}, "stream"),
    ({"stop_sequences": ["a", "b", "c", "d", "e"]}, "stop_sequences"),
    ({"top_k": 5}, "top_k"),
    ({"thinking": {"type": "enabled", "budget_tokens": 2048}}, "thinking"),
    ({"tools": [{"type": "web_search_20250305", "name": "web_search"}]}, "server tools"),
    ({"tools": [{"name": "f", "input_schema": {"type": 12}}]}, "JSON Schema"),
    ({"tool_choice": {"type": "tool"}}, "name"),
    ({"metadata": {"user_id": 5}}, "user_id"),
    ({"unknown_field": 1}, "unknown_field"),
])
def test_bad_input_gets_anthropic_error_shape(gateway, fakes, change, where) -> None:
    body = {k: v for k, v in {**GOOD, **change}.items() if v is not None}
    message = assert_anthropic_error(post(gateway, "/v1/messages", body), 400,
                                     "invalid_request_error")
    assert where in message
    assert all(not script.requests for script in fakes[0].values())


@pytest.mark.parametrize("body", [b"", b"{not json", b"[1, 2]", b"[" * 100 + b"]" * 100])
def test_undecodable_bodies_are_400s(gateway, body) -> None:
    assert_anthropic_error(post(gateway, "/v1/messages", body), 400, "invalid_request_error")
    assert_anthropic_error(post(gateway, "/v1/messages/count_tokens", body), 400,
                           "invalid_request_error")


def test_sdk_sees_bad_requests_as_its_own_errors(gateway) -> None:
    with pytest.raises(anthropic.BadRequestError) as caught:
        client(gateway).messages.create(model="gpt", max_tokens=-1,
                                        messages=[{"role": "user", "content": "Hi"}])
    assert caught.value.body["type"] == "error"
    with pytest.raises(anthropic.NotFoundError) as caught:
        client(gateway).messages.create(model="nope", max_tokens=10,
                                        messages=[{"role": "user", "content": "Hi"}])
    assert "nope" in caught.value.body["error"]["message"]
    assert caught.value.response.headers["x-request-id"].startswith("req_")


# --- keys --------------------------------------------------------------------------------------


def test_keys_by_header_or_bearer_and_refusals(gateway) -> None:
    answer = client(gateway, api_key=None, auth_token=KEY).messages.create(
        model="gpt", max_tokens=10, messages=[{"role": "user", "content": "Hi"}])
    assert answer.content[0].text == "Echo: Hi"
    before = gateway.kernel.counters["auth_failed"]
    with pytest.raises(anthropic.AuthenticationError) as caught:
        client(gateway, api_key="sk-wrong").messages.create(
            model="gpt", max_tokens=10, messages=[{"role": "user", "content": "Hi"}])
    assert caught.value.body["error"]["type"] == "authentication_error"
    assert "sk-wrong" not in caught.value.response.text
    missing = httpx.post(gateway.url + "/v1/messages", json=GOOD)
    assert "x-api-key" in assert_anthropic_error(missing, 401, "authentication_error")
    counted = httpx.post(gateway.url + "/v1/messages/count_tokens", json=GOOD,
                         headers={"x-api-key": "sk-wrong"})
    assert_anthropic_error(counted, 401, "authentication_error")
    assert gateway.kernel.counters["auth_failed"] == before + 3


# --- failures mid-stream, and the record -------------------------------------------------------


def test_failure_after_first_byte_is_an_error_event(gateway, fakes) -> None:
    fakes[0]["anthropic"].push(ErrorInStream(after_chunks=1))
    with httpx.stream("POST", gateway.url + "/v1/messages", headers={"x-api-key": KEY},
                      json={"model": "solo-claude", "max_tokens": 50, "stream": True,
                            "messages": [{"role": "user", "content": "A longer reply"}]}) as r:
        lines = list(r.iter_lines())
    events = [line.removeprefix("event: ") for line in lines if line.startswith("event: ")]
    assert events[0] == "message_start" and events[-1] == "error"
    assert "message_stop" not in events
    error = orjson.loads(lines[lines.index("event: error") + 1].removeprefix("data: "))
    assert error["type"] == "error" and error["error"]["type"] in ("api_error",
                                                                   "overloaded_error")
    fakes[0]["anthropic"].push(ErrorInStream(after_chunks=1))
    with pytest.raises(anthropic.APIStatusError):
        with client(gateway).messages.stream(
                model="solo-claude", max_tokens=50,
                messages=[{"role": "user", "content": "A longer reply"}]) as stream:
            for _ in stream.text_stream:
                pass


def test_requests_are_recorded_like_chat_completions(gateway) -> None:
    raw = client(gateway).messages.with_raw_response.create(
        model="claude", max_tokens=20, messages=[{"role": "user", "content": "Record me"}])
    with client(gateway).messages.stream(
            model="gemini", max_tokens=20,
            messages=[{"role": "user", "content": "Record me too"}]) as stream:
        stream.until_done()
        streamed_id = stream.response.headers["x-request-id"]
    rows = {r["request_id"]: r for r in gateway.rows()}
    whole, streamed = rows[raw.headers["x-request-id"]], rows[streamed_id]
    assert (whole["model"], whole["provider"], whole["client"]) == ("claude", "anthropic",
                                                                     "coder")
    assert whole["status"] == "ok" and whole["cost_usd"] > 0 and not whole["stream"]
    assert whole["input_tokens"] == raw.parse().usage.input_tokens
    assert (streamed["model"], streamed["client"], streamed["stream"]) == ("gemini", "coder", 1)
    assert streamed["output_tokens"] > 0
    assert KEY not in orjson.dumps(list(rows.values())).decode()


@pytest.mark.parametrize("stream", [False, True])
def test_upstream_failure_before_the_first_byte_is_a_json_error(gateway, fakes, stream) -> None:
    fakes[0]["anthropic"].push(Status(401))
    response = post(gateway, "/v1/messages", {"model": "solo-claude", "max_tokens": 10,
                                              "stream": stream,
                                              "messages": [{"role": "user", "content": "Hi"}]})
    assert response.headers["content-type"].startswith("application/json")
    assert_anthropic_error(response, 502, "api_error")
    assert ANTHROPIC_KEY not in response.text
    assert response.headers["x-turnout-attempts"] == "1"
