"""The OpenAI and OpenAI-compatible adapters against a fake OpenAI server over real local HTTP."""

from __future__ import annotations

import email.utils
import time

import orjson
import pytest

from turnout.adapters.providers.openai import OpenAIAdapter, OpenAICompatibleAdapter
from turnout.adapters.providers.settings import HttpProviderSettings, Timeouts
from turnout.kernel.errors import (
    ContentPolicy,
    ContextTooLong,
    ProviderAuthFailed,
    ProviderBadRequest,
    ProviderRateLimited,
    ProviderTimeout,
)
from turnout.kernel.types import ModelProfile

from .fakes import Refuse, Reply, Script, Status, TooLong, count_tokens, openai_app, serve
from .support import collect, user
from .wires import OPENAI as WIRE
from .wires import provider_fixtures

pytestmark = pytest.mark.anyio

KEY, MODEL = WIRE.key, WIRE.model
WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather of a city.",
    "parameters": {"type": "object", "properties": {"location": {"type": "string"}},
                   "required": ["location"], "additionalProperties": False}}}


wire, upstream, script, adapter = provider_fixtures(WIRE)
config, ask, assert_clean = WIRE.config, WIRE.ask, WIRE.assert_clean


# --- answers -----------------------------------------------------------------------------------


async def test_complete_returns_text_with_profile_and_provider_names(adapter, script):
    answer = await adapter.complete(ask(user("What is up?")), MODEL)

    assert answer.content == "Echo: What is up?"
    assert answer.finish_reason == "stop"
    assert answer.tool_calls is None
    assert (answer.model, answer.provider) == ("fast", "openai-main")
    sent = script.last
    assert sent.path == "/v1/chat/completions"
    assert sent.headers["authorization"] == f"Bearer {KEY}"
    assert sent.headers["content-type"] == "application/json"
    assert sent.body["model"] == "gpt-4o-mini"
    assert sent.body["stream"] is False
    assert "stream_options" not in sent.body


async def test_usage_is_read_from_the_answer(adapter, script):
    question = "count these five words please"
    answer = await adapter.complete(ask({"role": "system", "content": "Be brief."},
                                        user(question)), MODEL)

    assert answer.usage.input_tokens == count_tokens("Be brief.") + count_tokens(question)
    assert answer.usage.output_tokens == count_tokens(f"Echo: {question}")
    assert answer.usage.input_tokens != answer.usage.output_tokens


async def test_system_prompt_multi_turn_and_extra_fields_pass_through(adapter, script):
    request = ask({"role": "system", "content": "You are terse."}, user("Hi"),
                  {"role": "assistant", "content": "Hello."}, user("And now?"),
                  temperature=0.3, stop=["END"], logprobs=True)

    answer = await adapter.complete(request, MODEL)

    assert answer.content == "Echo: And now?"
    body = script.last.body
    assert [m["role"] for m in body["messages"]] == ["system", "user", "assistant", "user"]
    assert body["messages"][0]["content"] == "You are terse."
    assert body["temperature"] == 0.3 and body["stop"] == ["END"]
    assert body["logprobs"] is True


async def test_extra_headers_are_sent(upstream, script):
    adapter = OpenAIAdapter("openai-main", config(upstream[1], headers={"X-Title": "turnout"}))
    try:
        await adapter.complete(ask(user("hi")), MODEL)
    finally:
        await adapter.aclose()
    assert script.last.headers["x-title"] == "turnout"


async def test_tool_call_and_follow_up_with_the_result(adapter, script):
    question = user("What's the weather in Paris?")
    first = await adapter.complete(ask(question, tools=[WEATHER_TOOL]), MODEL)

    assert first.finish_reason == "tool_calls"
    assert first.content is None
    [call] = first.tool_calls
    assert call["function"]["name"] == "get_weather"
    assert orjson.loads(call["function"]["arguments"]) == {"location": "Paris"}
    assert script.last.body["tools"] == [WEATHER_TOOL]

    follow_up = ask(question, {"role": "assistant", "content": None, "tool_calls": [call]},
                    {"role": "tool", "tool_call_id": call["id"], "content": "18C and sunny"},
                    tools=[WEATHER_TOOL])
    second = await adapter.complete(follow_up, MODEL)

    assert second.content == "Tool said: 18C and sunny"
    sent = script.last.body["messages"]
    assert sent[1]["tool_calls"][0]["id"] == call["id"]
    assert sent[2] == {"role": "tool", "tool_call_id": call["id"], "content": "18C and sunny"}


async def test_json_mode_is_passed_on(adapter, script):
    answer = await adapter.complete(ask(user("give json"),
                                        response_format={"type": "json_object"}), MODEL)

    assert script.last.body["response_format"] == {"type": "json_object"}
    assert orjson.loads(answer.content) == {"echo": "give json"}


async def test_scripted_reply_text(adapter, script):
    script.push(Reply("scripted answer"))
    answer = await adapter.complete(ask(user("anything")), MODEL)
    assert answer.content == "scripted answer"


# --- streams -----------------------------------------------------------------------------------


async def test_stream_yields_several_chunks_then_finish_and_usage(adapter, script):
    chunks = await collect(adapter.stream(ask(user("tell me a story"), stream=True), MODEL))

    texts = [c.content for c in chunks if c.content]
    assert len(texts) >= 3
    assert "".join(texts) == "Echo: tell me a story"
    assert chunks[0].role == "assistant"
    last = chunks[-1]
    assert last.finish_reason == "stop"
    assert last.usage.input_tokens == count_tokens("tell me a story")
    assert last.usage.output_tokens == count_tokens("Echo: tell me a story")
    assert all(c.finish_reason is None for c in chunks[:-1])
    body = script.last.body
    assert body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}


async def test_streamed_tool_call_arrives_as_indexed_deltas(adapter, script):
    chunks = await collect(adapter.stream(
        ask(user("weather in Lyon?"), tools=[WEATHER_TOOL], stream=True), MODEL))

    deltas = [d for c in chunks for d in c.tool_calls or []]
    assert len(deltas) > 2
    assert all(d["index"] == 0 for d in deltas)
    assert deltas[0]["id"].startswith("call_")
    assert deltas[0]["function"]["name"] == "get_weather"
    arguments = "".join(d["function"].get("arguments", "") for d in deltas)
    assert orjson.loads(arguments) == {"location": "Lyon"}
    assert chunks[-1].finish_reason == "tool_calls"


# --- errors ------------------------------------------------------------------------------------


async def test_429_with_retry_after_seconds(adapter, script):
    script.push(Status(429, retry_after=7))
    with pytest.raises(ProviderRateLimited) as caught:
        await adapter.complete(ask(user("hi")), MODEL)
    assert caught.value.retry_after == 7
    assert caught.value.provider == "openai-main" and caught.value.model == "fast"
    assert "Rate limit reached" in str(caught.value)
    assert_clean(caught.value)


async def test_429_with_retry_after_http_date(adapter, script):
    when = email.utils.formatdate(time.time() + 30, usegmt=True)
    script.push(Status(429, retry_after=when))
    with pytest.raises(ProviderRateLimited) as caught:
        await adapter.complete(ask(user("hi")), MODEL)
    assert 25 <= caught.value.retry_after <= 31


async def test_429_prefers_retry_after_ms(adapter, script):
    script.push(Status(429, retry_after=3, headers={"retry-after-ms": "1500"}))
    with pytest.raises(ProviderRateLimited) as caught:
        await adapter.complete(ask(user("hi")), MODEL)
    assert caught.value.retry_after == 1.5


async def test_429_insufficient_quota_is_an_account_problem(adapter, script):
    script.push(Status(429, body={"error": {
        "message": "You exceeded your current quota, please check your plan and billing details.",
        "type": "insufficient_quota", "param": None, "code": "insufficient_quota"}}))
    with pytest.raises(ProviderAuthFailed, match="exceeded your current quota"):
        await adapter.complete(ask(user("hi")), MODEL)


@pytest.mark.parametrize("code", [408, 504])
async def test_upstream_timeout_statuses_are_timeouts(adapter, script, code):
    script.push(Status(code))
    with pytest.raises(ProviderTimeout, match=f"answered {code}"):
        await adapter.complete(ask(user("hi")), MODEL)


async def test_error_status_on_a_stream_comes_before_any_chunk(adapter, script):
    script.push(Status(429, retry_after=2))
    stream = adapter.stream(ask(user("hi"), stream=True), MODEL)
    with pytest.raises(ProviderRateLimited) as caught:
        await anext(stream)
    assert caught.value.retry_after == 2


async def test_refusal_is_content_policy(adapter, script):
    script.push(Refuse())
    with pytest.raises(ContentPolicy, match="safety system") as caught:
        await adapter.complete(ask(user("something bad")), MODEL)
    assert_clean(caught.value)
    script.push(Refuse())
    with pytest.raises(ContentPolicy):
        await collect(adapter.stream(ask(user("something bad"), stream=True), MODEL))


async def test_context_too_long(adapter, script):
    script.push(TooLong())
    with pytest.raises(ContextTooLong, match="maximum context length") as caught:
        await adapter.complete(ask(user("long")), MODEL)
    assert_clean(caught.value)


async def test_vllm_style_context_error_is_recognised(adapter, script):
    script.push(Status(400, body={
        "object": "error", "type": "BadRequestError", "param": None, "code": 400,
        "message": "This model's maximum context length is 4096 tokens. However, you requested "
                   "5000 tokens in the messages. Please reduce the length of the messages."}))
    with pytest.raises(ContextTooLong):
        await adapter.complete(ask(user("long")), MODEL)


async def test_plain_400_is_bad_request(adapter, script):
    script.push(Status(400, body="Invalid value for 'temperature'."))
    with pytest.raises(ProviderBadRequest, match="Invalid value") as caught:
        await adapter.complete(ask(user("hi")), MODEL)
    assert not isinstance(caught.value, (ContextTooLong, ContentPolicy))


# --- OpenAI-compatible servers -----------------------------------------------------------------


async def test_compatible_server_without_a_key_gets_no_authorization_header():
    script = Script()
    with serve(openai_app(script, api_key=None)) as url:
        provider = HttpProviderSettings(kind="openai-compatible", base_url=url + "/v1",
                            timeout=Timeouts(read=0.5))
        adapter = OpenAICompatibleAdapter("local", provider)
        model = ModelProfile(name="llama", provider="local", upstream="llama3.1:8b")
        try:
            answer = await adapter.complete(ask(user("hello")), model)
            chunks = await collect(adapter.stream(ask(user("hello"), stream=True), model))
        finally:
            await adapter.aclose()
    assert answer.content == "Echo: hello"
    assert "".join(c.content or "" for c in chunks) == "Echo: hello"
    assert all("authorization" not in r.headers for r in script.requests)
    assert script.requests[0].body["model"] == "llama3.1:8b"
    assert OpenAICompatibleAdapter.kind == "openai-compatible"
    default = OpenAIAdapter("x", HttpProviderSettings(kind="openai"))
    await default.aclose()
    assert default.base_url == "https://api.openai.com/v1"
