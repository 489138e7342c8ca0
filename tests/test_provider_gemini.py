"""The Gemini adapter against a fake generativelanguage API over real local HTTP."""

from __future__ import annotations

import orjson
import pytest

from turnout.adapters.providers.gemini import GeminiAdapter
from turnout.kernel.errors import ContentPolicy, ContextTooLong, ProviderAuthFailed, ProviderRateLimited

from .fakes import Refuse, Status, TooLong, count_tokens
from .support import collect, user
from .wires import GEMINI as WIRE
from .wires import provider_fixtures

pytestmark = pytest.mark.anyio

KEY, MODEL = WIRE.key, WIRE.model
WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather of a city.",
    "parameters": {"type": "object", "additionalProperties": False,
                   "$schema": "http://json-schema.org/draft-07/schema#",
                   "properties": {"location": {"type": "string"},
                                  "unit": {"type": ["string", "null"], "const": "celsius"}},
                   "required": ["location"]}}}
PIXEL = ("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJ"
         "RU5ErkJggg==")


wire, upstream, script, adapter = provider_fixtures(WIRE)
config, ask, assert_clean = WIRE.config, WIRE.ask, WIRE.assert_clean


# --- requests and answers ----------------------------------------------------------------------


async def test_complete_sends_generate_content(adapter, script):
    answer = await adapter.complete(ask(user("What is up?")), MODEL)

    assert answer.content == "Echo: What is up?"
    assert answer.finish_reason == "stop"
    assert (answer.model, answer.provider) == ("flash", "gemini-main")
    sent = script.last
    assert sent.path == "/v1beta/models/gemini-2.0-flash:generateContent"
    assert sent.headers["x-goog-api-key"] == KEY
    assert sent.body == {"contents": [{"role": "user", "parts": [{"text": "What is up?"}]}]}


async def test_usage_tokens(adapter, script):
    answer = await adapter.complete(ask({"role": "system", "content": "Be brief."},
                                        user("five little words right here")), MODEL)
    assert answer.usage.input_tokens == count_tokens("Be brief. five little words right here")
    assert answer.usage.output_tokens == count_tokens("Echo: five little words right here")


async def test_system_instruction_and_multi_turn_roles(adapter, script):
    request = ask({"role": "system", "content": "You are terse."}, user("Hi"),
                  {"role": "assistant", "content": "Hello."}, user("And now?"))

    answer = await adapter.complete(request, MODEL)

    body = script.last.body
    assert body["systemInstruction"] == {"parts": [{"text": "You are terse."}]}
    assert body["contents"] == [{"role": "user", "parts": [{"text": "Hi"}]},
                                {"role": "model", "parts": [{"text": "Hello."}]},
                                {"role": "user", "parts": [{"text": "And now?"}]}]
    assert answer.content == "Echo: And now?"


async def test_generation_config(adapter, script):
    await adapter.complete(ask(user("hi"), temperature=0.2, top_p=0.8, max_tokens=64,
                               stop=["END", "STOP"], seed=3, logprobs=True), MODEL)
    body = script.last.body
    assert body["generationConfig"] == {"temperature": 0.2, "topP": 0.8, "maxOutputTokens": 64,
                                        "stopSequences": ["END", "STOP"], "seed": 3,
                                        "responseLogprobs": True}
    assert "logprobs" not in body  # OpenAI's top-level field is translated, not passed on


async def test_tool_call_and_follow_up_with_the_result(adapter, script):
    question = user("What's the weather in Paris?")
    first = await adapter.complete(ask(question, tools=[WEATHER_TOOL]), MODEL)

    [declaration] = script.last.body["tools"][0]["functionDeclarations"]
    assert declaration == {"name": "get_weather", "description": "Current weather of a city.",
                           "parameters": {"type": "object", "required": ["location"],
                                          "properties": {
                                              "location": {"type": "string"},
                                              "unit": {"type": "string", "nullable": True,
                                                       "enum": ["celsius"]}}}}
    assert first.finish_reason == "tool_calls"
    assert first.content is None
    [call] = first.tool_calls
    assert call["id"] == "call_0" and call["type"] == "function"
    assert call["function"]["name"] == "get_weather"
    assert orjson.loads(call["function"]["arguments"]) == {"location": "Paris"}

    follow_up = ask(question, {"role": "assistant", "content": None, "tool_calls": [call]},
                    {"role": "tool", "tool_call_id": call["id"], "content": '{"temp": 18}'},
                    tools=[WEATHER_TOOL])
    second = await adapter.complete(follow_up, MODEL)

    contents = script.last.body["contents"]
    assert contents[1] == {"role": "model", "parts": [
        {"functionCall": {"name": "get_weather", "args": {"location": "Paris"}}}]}
    assert contents[2] == {"role": "user", "parts": [
        {"functionResponse": {"name": "get_weather", "response": {"temp": 18}}}]}
    assert second.content == 'Tool said: get_weather={"temp":18}'


async def test_tool_results_take_their_function_name_from_the_call_id(adapter, script):
    calls = [{"id": "call_a", "type": "function",
              "function": {"name": "get_weather", "arguments": '{"location": "Oslo"}'}},
             {"id": "call_b", "type": "function",
              "function": {"name": "get_time", "arguments": "{}"}}]
    await adapter.complete(ask(user("weather and time?"),
                               {"role": "assistant", "content": None, "tool_calls": calls},
                               {"role": "tool", "tool_call_id": "call_b", "content": "noon"},
                               {"role": "tool", "tool_call_id": "call_a", "content": "cold"}),
                           MODEL)
    assert script.last.body["contents"][2] == {"role": "user", "parts": [
        {"functionResponse": {"name": "get_time", "response": {"result": "noon"}}},
        {"functionResponse": {"name": "get_weather", "response": {"result": "cold"}}}]}


@pytest.mark.parametrize("choice, expected", [
    ("auto", {"mode": "AUTO"}), ("none", {"mode": "NONE"}), ("required", {"mode": "ANY"}),
    ({"type": "function", "function": {"name": "get_weather"}},
     {"mode": "ANY", "allowedFunctionNames": ["get_weather"]})])
async def test_tool_choice_mapping(adapter, script, choice, expected):
    await adapter.complete(ask(user("hello"), tools=[WEATHER_TOOL], tool_choice=choice), MODEL)
    assert script.last.body["toolConfig"] == {"functionCallingConfig": expected}


async def test_json_mode_sets_the_mime_type_and_schema(adapter, script):
    answer = await adapter.complete(ask(user("data please"),
                                        response_format={"type": "json_object"}), MODEL)
    assert script.last.body["generationConfig"] == {"responseMimeType": "application/json"}
    assert orjson.loads(answer.content) == {"echo": "data please"}

    schema = {"type": "object", "additionalProperties": False,
              "properties": {"city": {"type": "string"}}, "required": ["city"]}
    await adapter.complete(ask(user("data please"), response_format={
        "type": "json_schema", "json_schema": {"name": "place", "schema": schema}}), MODEL)
    assert script.last.body["generationConfig"] == {
        "responseMimeType": "application/json",
        "responseSchema": {"type": "object", "properties": {"city": {"type": "string"}},
                           "required": ["city"]}}


async def test_image_data_url_becomes_inline_data(adapter, script):
    await adapter.complete(ask({"role": "user", "content": [
        {"type": "text", "text": "What is this?"},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PIXEL}"}}]}), MODEL)
    assert script.last.body["contents"][0]["parts"] == [
        {"text": "What is this?"}, {"inlineData": {"mimeType": "image/png", "data": PIXEL}}]


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
    assert script.last.path == "/v1beta/models/gemini-2.0-flash:streamGenerateContent?alt=sse"


async def test_streamed_tool_call(adapter, script):
    chunks = await collect(adapter.stream(
        ask(user("weather in Lyon?"), tools=[WEATHER_TOOL], stream=True), MODEL))

    deltas = [d for c in chunks for d in c.tool_calls or []]
    assert len(deltas) == 1
    assert deltas[0]["index"] == 0 and deltas[0]["id"] == "call_0"
    assert deltas[0]["function"]["name"] == "get_weather"
    assert orjson.loads(deltas[0]["function"]["arguments"]) == {"location": "Lyon"}
    assert chunks[-1].finish_reason == "tool_calls"


# --- errors ------------------------------------------------------------------------------------


async def test_429_retry_delay_comes_from_retry_info(adapter, script):
    script.push(Status(429, retry_after=37))
    with pytest.raises(ProviderRateLimited, match="exceeded your current quota") as caught:
        await adapter.complete(ask(user("hi")), MODEL)
    assert caught.value.retry_after == 37
    assert_clean(caught.value)


async def test_429_retry_after_header_wins(adapter, script):
    script.push(Status(429, headers={"retry-after": "4"}))
    with pytest.raises(ProviderRateLimited) as caught:
        await adapter.complete(ask(user("hi")), MODEL)
    assert caught.value.retry_after == 4


async def test_missing_key_is_auth_failed(upstream, script):
    adapter = GeminiAdapter("gemini-main", config(upstream[1], api_key=None))
    try:
        with pytest.raises(ProviderAuthFailed, match="unregistered callers"):
            await adapter.complete(ask(user("hi")), MODEL)
    finally:
        await adapter.aclose()
    assert "x-goog-api-key" not in script.last.headers


async def test_blocked_prompt_is_content_policy(adapter, script):
    script.push(Refuse())
    with pytest.raises(ContentPolicy, match="SAFETY"):
        await adapter.complete(ask(user("something bad")), MODEL)
    script.push(Refuse())
    with pytest.raises(ContentPolicy, match="SAFETY"):
        await collect(adapter.stream(ask(user("something bad"), stream=True), MODEL))


async def test_safety_finish_reason_is_content_policy(adapter, script):
    script.push(Status(200, body={
        "candidates": [{"content": {"parts": [], "role": "model"}, "finishReason": "SAFETY",
                        "index": 0}],
        "usageMetadata": {"promptTokenCount": 3, "totalTokenCount": 3}}))
    with pytest.raises(ContentPolicy, match="finishReason SAFETY"):
        await adapter.complete(ask(user("something bad")), MODEL)


async def test_too_many_input_tokens_is_context_too_long(adapter, script):
    script.push(TooLong())
    with pytest.raises(ContextTooLong, match="exceeds the maximum number of tokens") as caught:
        await adapter.complete(ask(user("long")), MODEL)
    assert_clean(caught.value)


async def test_passthrough_params_go_into_the_generation_config(adapter, script):
    listed = type(adapter)(adapter.name, adapter.config.model_copy(
        update={"passthrough_params": ["topK"]}), client=adapter.client)
    await listed.complete(ask(user("hi"), temperature=0.2, topK=40, other=1), MODEL)
    assert script.last.body["generationConfig"] == {"temperature": 0.2, "topK": 40}
    assert "other" not in str(script.last.body)  # not listed: not sent
