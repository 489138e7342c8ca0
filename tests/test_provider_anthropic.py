"""The Anthropic adapter against a fake Messages API over real local HTTP."""

from __future__ import annotations

import orjson
import pytest

from turnout.adapters.providers.anthropic import AnthropicAdapter
from turnout.kernel.errors import (
    ContentPolicy,
    ContextTooLong,
    ProviderBadRequest,
    ProviderRateLimited,
    ProviderUnavailable,
)
from turnout.kernel.types import ModelProfile

from .fakes import Refuse, Status, TooLong, count_tokens
from .support import collect, user
from .wires import ANTHROPIC as WIRE
from .wires import provider_fixtures

pytestmark = pytest.mark.anyio

KEY, MODEL = WIRE.key, WIRE.model
WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather of a city.",
    "parameters": {"type": "object", "properties": {"location": {"type": "string"}},
                   "required": ["location"]}}}
PIXEL = ("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJ"
         "RU5ErkJggg==")


wire, upstream, script, adapter = provider_fixtures(WIRE)
config, ask, assert_clean = WIRE.config, WIRE.ask, WIRE.assert_clean


# --- requests and answers ----------------------------------------------------------------------


async def test_complete_sends_the_messages_api_request(adapter, script):
    answer = await adapter.complete(ask(user("What is up?")), MODEL)

    assert answer.content == "Echo: What is up?"
    assert answer.finish_reason == "stop"
    assert (answer.model, answer.provider) == ("claude", "anthropic-main")
    sent = script.last
    assert sent.path == "/v1/messages"
    assert sent.headers["x-api-key"] == KEY
    assert sent.headers["anthropic-version"] == "2023-06-01"
    assert "authorization" not in sent.headers
    assert sent.body == {"model": "claude-sonnet-4-5", "max_tokens": 4096,
                         "messages": [{"role": "user", "content": "What is up?"}]}


async def test_usage_tokens(adapter, script):
    answer = await adapter.complete(ask({"role": "system", "content": "Be brief."},
                                        user("five little words right here")), MODEL)
    assert answer.usage.input_tokens == count_tokens("Be brief. five little words right here")
    assert answer.usage.output_tokens == count_tokens("Echo: five little words right here")


async def test_api_version_and_max_tokens_come_from_config_and_model(upstream, script):
    adapter = AnthropicAdapter("anthropic-main", config(upstream[1], api_version="2024-10-22"))
    capped = ModelProfile(name="claude", provider="anthropic-main", upstream="claude-haiku",
                          max_output_tokens=50)
    try:
        await adapter.complete(ask(user("hi"), max_tokens=100), capped)
        assert script.last.body["max_tokens"] == 50
        await adapter.complete(ask(user("hi"), max_completion_tokens=20), capped)
        assert script.last.body["max_tokens"] == 20
        await adapter.complete(ask(user("hi")), capped)
        assert script.last.body["max_tokens"] == 50
    finally:
        await adapter.aclose()
    assert script.last.headers["anthropic-version"] == "2024-10-22"


async def test_system_and_developer_messages_become_top_level_system(adapter, script):
    request = ask({"role": "system", "content": "You are terse."}, user("Hi"),
                  {"role": "assistant", "content": "Hello."},
                  {"role": "developer", "content": "Answer in French."}, user("And now?"),
                  user("Please."))

    answer = await adapter.complete(request, MODEL)

    body = script.last.body
    assert body["system"] == "You are terse.\n\nAnswer in French."
    assert [m["role"] for m in body["messages"]] == ["user", "assistant", "user"]
    # Two user messages in a row are one turn of two text blocks.
    assert body["messages"][2]["content"] == [{"type": "text", "text": "And now?"},
                                              {"type": "text", "text": "Please."}]
    assert answer.content == "Echo: And now?\nPlease."


async def test_sampling_options_are_translated_and_openai_only_fields_dropped(adapter, script):
    request = ask(user("hi"), temperature=1.6, top_p=0.9, stop="END", user="alice",
                  presence_penalty=0.5, seed=7, logprobs=True)

    await adapter.complete(request, MODEL)

    body = script.last.body
    assert body["temperature"] == 1.0
    assert body["top_p"] == 0.9
    assert body["stop_sequences"] == ["END"]
    assert body["metadata"] == {"user_id": "alice"}
    for leaked in ("presence_penalty", "seed", "logprobs", "stop", "user", "stream"):
        assert leaked not in body


async def test_tool_call_and_follow_up_with_the_result(adapter, script):
    question = user("What's the weather in Paris?")
    first = await adapter.complete(ask(question, tools=[WEATHER_TOOL], tool_choice="auto"), MODEL)

    assert script.last.body["tools"] == [{
        "name": "get_weather", "description": "Current weather of a city.",
        "input_schema": WEATHER_TOOL["function"]["parameters"]}]
    assert script.last.body["tool_choice"] == {"type": "auto"}
    assert first.finish_reason == "tool_calls"
    assert first.content == "Let me check."
    [call] = first.tool_calls
    assert call["id"].startswith("toolu_") and call["type"] == "function"
    assert call["function"]["name"] == "get_weather"
    assert orjson.loads(call["function"]["arguments"]) == {"location": "Paris"}

    follow_up = ask(question,
                    {"role": "assistant", "content": first.content, "tool_calls": [call]},
                    {"role": "tool", "tool_call_id": call["id"], "content": "18C and sunny"},
                    tools=[WEATHER_TOOL])
    second = await adapter.complete(follow_up, MODEL)

    assert second.content == "Tool said: 18C and sunny"
    assert second.finish_reason == "stop"
    messages = script.last.body["messages"]
    assert messages[1] == {"role": "assistant", "content": [
        {"type": "text", "text": "Let me check."},
        {"type": "tool_use", "id": call["id"], "name": "get_weather",
         "input": {"location": "Paris"}}]}
    assert messages[2] == {"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": call["id"], "content": "18C and sunny"}]}


async def test_parallel_tool_results_share_one_user_turn(adapter, script):
    calls = [{"id": f"call_{c}", "type": "function",
              "function": {"name": "get_weather", "arguments": f'{{"location": "{c}"}}'}}
             for c in ("Oslo", "Rome")]
    request = ask(user("weather in Oslo and Rome?"),
                  {"role": "assistant", "content": None, "tool_calls": calls},
                  {"role": "tool", "tool_call_id": "call_Oslo", "content": "cold"},
                  {"role": "tool", "tool_call_id": "call_Rome", "content": "warm"},
                  user("Summarise."), tools=[WEATHER_TOOL], parallel_tool_calls=False)

    answer = await adapter.complete(request, MODEL)

    assert answer.content == "Tool said: cold; warm"
    body = script.last.body
    assert [m["role"] for m in body["messages"]] == ["user", "assistant", "user"]
    # Tool results open the user turn; the user's own text follows them.
    assert [(b["type"], b.get("tool_use_id")) for b in body["messages"][2]["content"]] == [
        ("tool_result", "call_Oslo"), ("tool_result", "call_Rome"), ("text", None)]
    assert body["tool_choice"] == {"type": "auto", "disable_parallel_tool_use": True}


@pytest.mark.parametrize("choice, expected", [
    ("auto", {"type": "auto"}), ("none", {"type": "none"}), ("required", {"type": "any"}),
    ({"type": "function", "function": {"name": "get_weather"}},
     {"type": "tool", "name": "get_weather"})])
async def test_tool_choice_mapping(adapter, script, choice, expected):
    await adapter.complete(ask(user("hello"), tools=[WEATHER_TOOL], tool_choice=choice), MODEL)
    assert script.last.body["tool_choice"] == expected


async def test_json_mode_becomes_a_system_instruction(adapter, script):
    await adapter.complete(ask({"role": "system", "content": "Be kind."}, user("data please"),
                               response_format={"type": "json_object"}), MODEL)
    system = script.last.body["system"]
    assert system.startswith("Be kind.\n\n")
    assert "JSON" in system
    assert "response_format" not in script.last.body

    schema = {"type": "object", "properties": {"city": {"type": "string"}},
              "required": ["city"]}
    await adapter.complete(ask(user("data please"), response_format={
        "type": "json_schema", "json_schema": {"name": "place", "schema": schema}}), MODEL)
    system = script.last.body["system"]
    assert "JSON Schema" in system
    assert orjson.dumps(schema).decode() in system


async def test_image_data_url_becomes_a_base64_image_block(adapter, script):
    await adapter.complete(ask({"role": "user", "content": [
        {"type": "text", "text": "What is this?"},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PIXEL}"}}]}), MODEL)
    assert script.last.body["messages"][0]["content"] == [
        {"type": "text", "text": "What is this?"},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                     "data": PIXEL}}]


# --- streams -----------------------------------------------------------------------------------


async def test_stream_yields_text_chunks_then_finish_and_usage(adapter, script):
    chunks = await collect(adapter.stream(ask(user("tell me a story"), stream=True), MODEL))

    texts = [c.content for c in chunks if c.content]
    assert len(texts) >= 3
    assert "".join(texts) == "Echo: tell me a story"
    assert chunks[0].role == "assistant"
    assert chunks[-1].finish_reason == "stop"
    assert chunks[-1].usage.input_tokens == count_tokens("tell me a story")
    assert chunks[-1].usage.output_tokens == count_tokens("Echo: tell me a story")
    assert script.last.body["stream"] is True
    assert script.last.headers["accept"] == "text/event-stream"


async def test_streamed_tool_call_becomes_openai_deltas(adapter, script):
    chunks = await collect(adapter.stream(
        ask(user("weather in Lyon?"), tools=[WEATHER_TOOL], stream=True), MODEL))

    assert "".join(c.content or "" for c in chunks) == "Let me check."
    deltas = [d for c in chunks for d in c.tool_calls or []]
    # The tool_use is the second content block but the first tool call.
    assert all(d["index"] == 0 for d in deltas)
    assert deltas[0]["id"].startswith("toolu_")
    assert deltas[0]["function"]["name"] == "get_weather"
    arguments = "".join(d["function"]["arguments"] for d in deltas)
    assert orjson.loads(arguments) == {"location": "Lyon"}
    assert chunks[-1].finish_reason == "tool_calls"


# --- errors ------------------------------------------------------------------------------------


async def test_429_with_retry_after(adapter, script):
    script.push(Status(429, retry_after=12))
    with pytest.raises(ProviderRateLimited, match="rate limit") as caught:
        await adapter.complete(ask(user("hi")), MODEL)
    assert caught.value.retry_after == 12
    assert_clean(caught.value)


async def test_overloaded_529_is_unavailable(adapter, script):
    # Other 5xx statuses are in the contract tests; 529 is Anthropic's own "overloaded".
    script.push(Status(529))
    with pytest.raises(ProviderUnavailable, match="answered 529") as caught:
        await adapter.complete(ask(user("hi")), MODEL)
    assert_clean(caught.value)


async def test_refusal_stop_reason_is_content_policy(adapter, script):
    script.push(Refuse())
    with pytest.raises(ContentPolicy, match="refusal"):
        await adapter.complete(ask(user("something bad")), MODEL)
    script.push(Refuse())
    with pytest.raises(ContentPolicy):
        await collect(adapter.stream(ask(user("something bad"), stream=True), MODEL))


async def test_content_filtering_error_is_content_policy(adapter, script):
    script.push(Status(400, body="Output blocked by content filtering policy"))
    with pytest.raises(ContentPolicy, match="content filtering policy"):
        await adapter.complete(ask(user("hi")), MODEL)


async def test_prompt_too_long_is_context_too_long(adapter, script):
    script.push(TooLong())
    with pytest.raises(ContextTooLong, match="prompt is too long") as caught:
        await adapter.complete(ask(user("long")), MODEL)
    assert_clean(caught.value)


async def test_invalid_tool_arguments_are_refused_before_sending(adapter, script):
    bad = {"id": "call_1", "type": "function",
           "function": {"name": "get_weather", "arguments": "{not json"}}
    with pytest.raises(ProviderBadRequest, match="not JSON"):
        await adapter.complete(ask(user("weather?"), {"role": "assistant", "tool_calls": [bad]},
                                   {"role": "tool", "tool_call_id": "call_1", "content": "x"}),
                               MODEL)
    assert script.requests == []


async def test_passthrough_params_go_to_the_top_of_the_body(adapter, script):
    listed = type(adapter)(adapter.name, adapter.config.model_copy(
        update={"passthrough_params": ["top_k"]}), client=adapter.client)
    await listed.complete(ask(user("hi"), top_k=5, other=1), MODEL)
    assert script.last.body["top_k"] == 5 and "other" not in script.last.body
