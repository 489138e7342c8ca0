"""``POST /v1/responses`` and ``GET /v1/models/{id}`` end to end, driven by the official openai SDK.

The gateway runs for real (kernel, plugins, HTTP API, record); its upstreams are local servers
speaking the OpenAI, Anthropic and Gemini protocols, so every Responses request is checked through
each provider wire format's translation. Follow-up turns are continued on another gateway
instance sharing a Redis store.
"""

from __future__ import annotations

import json

import httpx
import openai
import pytest

from .fakes import ErrorInStream, Reply
from .fakes.fleet import each_test_scripted, every_provider
from .gateway import running_gateway
from .redis_support import prefix_fixture, redis_url_fixture  # noqa: F401 - the fixtures

OPENAI_KEY, ANTHROPIC_KEY, GEMINI_KEY = "sk-openai-upstream-1234", "sk-ant-upstream-5678", \
    "AIzaUpstreamGeminiKey0123456789"
ALICE, BOB = "sk-gw-alice-0001", "sk-gw-bob-0002"
MODELS = [("gpt", "openai"), ("claude", "anthropic"), ("gemini", "gemini")]
WEATHER_TOOL = {"type": "function", "name": "get_weather", "description": "The weather in a city.",
                "parameters": {"type": "object", "properties": {"location": {"type": "string"}},
                               "required": ["location"]}}


@pytest.fixture(scope="module")
def fakes():
    with every_provider(OPENAI_KEY, ANTHROPIC_KEY, GEMINI_KEY) as found:
        yield found


def config_for(urls: dict[str, str]) -> dict:
    return {
        "server": {"api_keys": [{"name": "alice", "key": ALICE}, {"name": "bob", "key": BOB}]},
        "providers": {
            "openai": {"kind": "openai", "base_url": urls["openai"], "api_key": OPENAI_KEY},
            "anthropic": {"kind": "anthropic", "base_url": urls["anthropic"],
                          "api_key": ANTHROPIC_KEY},
            "gemini": {"kind": "gemini", "base_url": urls["gemini"], "api_key": GEMINI_KEY},
        },
        "models": {
            "gpt": {"provider": "openai", "upstream": "gpt-4o-mini", "input_price": 0.15,
                    "output_price": 0.6},
            "claude": {"provider": "anthropic", "upstream": "claude-3-5-haiku-latest",
                       "input_price": 0.8, "output_price": 4},
            "gemini": {"provider": "gemini", "upstream": "gemini-2.0-flash", "input_price": 0.1,
                       "output_price": 0.4},
        },
        "routes": {"chain": {"models": ["gpt", "claude", "gemini"]}},
        "budgets": [{"scope": "user", "match": "broke", "limit_usd": 0}],
    }


@pytest.fixture(scope="module")
def gateway(fakes, tmp_path_factory: pytest.TempPathFactory):
    with running_gateway(config_for(fakes[1]), tmp_path_factory.mktemp("responses")) as gw:
        yield gw


@pytest.fixture(autouse=True)
def clean(fakes):
    yield from each_test_scripted(fakes[0])


def client(gw, key: str = ALICE) -> openai.OpenAI:
    return gw.client(key)


def sent(fakes, provider: str) -> dict:
    """The body the provider's fake received last."""
    return fakes[0][provider].last.body


def system_sent(fakes, provider: str) -> str:
    body = sent(fakes, provider)
    if provider == "openai":
        return "\n".join(m["content"] for m in body["messages"]
                         if m["role"] in ("system", "developer"))
    if provider == "anthropic":
        return body.get("system") or ""
    return "\n".join(p["text"] for p in (body.get("systemInstruction") or {}).get("parts", []))


def calls(fakes) -> int:
    return sum(len(script.requests) for script in fakes[0].values())


# --- answers, each provider --------------------------------------------------------------------


@pytest.mark.parametrize("model, provider", MODELS)
def test_string_input_is_answered_as_a_response(gateway, fakes, model, provider) -> None:
    raw = client(gateway).responses.with_raw_response.create(model=model, input="Hi there")
    response = raw.parse()
    assert response.output_text == "Echo: Hi there"
    assert response.object == "response" and response.status == "completed"
    assert response.model == model
    assert response.id == "resp_" + raw.headers["x-request-id"].removeprefix("req_")
    message = response.output[0]
    assert message.type == "message" and message.role == "assistant"
    assert message.content[0].type == "output_text"
    assert response.usage.input_tokens > 0 and response.usage.output_tokens > 0
    assert response.usage.total_tokens == response.usage.input_tokens + \
        response.usage.output_tokens
    assert raw.headers["x-turnout-provider"] == provider
    assert float(raw.headers["x-turnout-cost-usd"]) > 0


@pytest.mark.parametrize("model, provider", MODELS)
def test_message_items_and_instructions_reach_the_upstream(gateway, fakes, model,
                                                            provider) -> None:
    response = client(gateway).responses.create(
        model=model, instructions="Answer in one word.",
        input=[{"role": "developer", "content": "Be kind."},
               {"role": "user", "content": "First question"},
               {"role": "assistant", "content": [{"type": "output_text", "text": "First answer"}]},
               {"type": "message", "role": "user",
                "content": [{"type": "input_text", "text": "Second question"}]}],
        max_output_tokens=50, temperature=0.5)
    assert response.output_text == "Echo: Second question"
    assert response.instructions == "Answer in one word."
    system = system_sent(fakes, provider)
    assert system.index("Answer in one word.") < system.index("Be kind.")
    assert "First answer" in json.dumps(sent(fakes, provider))


@pytest.mark.parametrize("model, provider", MODELS)
def test_json_schema_format_reaches_the_upstream(gateway, fakes, model, provider) -> None:
    schema = {"type": "object", "properties": {"echo": {"type": "string"}}, "required": ["echo"]}
    if provider == "anthropic":  # its API has no JSON mode: the schema goes into the system prompt
        fakes[0]["anthropic"].push(Reply('{"echo": "Give me JSON"}'))
    response = client(gateway).responses.create(
        model=model, input="Give me JSON",
        text={"format": {"type": "json_schema", "name": "echo", "schema": schema, "strict": True}})
    assert json.loads(response.output_text) == {"echo": "Give me JSON"}
    assert response.text.format.type == "json_schema"
    body = sent(fakes, provider)
    if provider == "openai":
        assert body["response_format"] == {"type": "json_schema", "json_schema": {
            "name": "echo", "schema": schema, "strict": True}}
    elif provider == "gemini":
        assert body["generationConfig"]["responseMimeType"] == "application/json"
        assert body["generationConfig"]["responseSchema"]["required"] == ["echo"]
    else:
        assert json.dumps(schema, separators=(",", ":")) in system_sent(fakes, provider)


@pytest.mark.parametrize("first, second", [("gpt", "gpt"), ("claude", "claude"),
                                           ("gemini", "gemini"), ("gpt", "claude"),
                                           ("claude", "gemini")])
def test_function_call_round_trip_with_previous_response_id(gateway, fakes, first,
                                                             second) -> None:
    api = client(gateway)
    asked = api.responses.create(model=first, input="What is the weather in Paris?",
                                 tools=[WEATHER_TOOL])
    call = next(item for item in asked.output if item.type == "function_call")
    assert call.name == "get_weather"
    assert json.loads(call.arguments) == {"location": "Paris"}
    assert call.call_id
    answered = api.responses.create(
        model=second, previous_response_id=asked.id, tools=[WEATHER_TOOL],
        input=[{"type": "function_call_output", "call_id": call.call_id,
                "output": json.dumps({"sky": "sunny"})}])
    assert answered.previous_response_id == asked.id
    assert answered.output_text.startswith("Tool said:")
    assert "sunny" in answered.output_text
    provider = dict(MODELS)[second]
    assert "What is the weather in Paris?" in json.dumps(sent(fakes, provider))


def test_a_follow_up_carries_the_whole_conversation_but_not_old_instructions(gateway,
                                                                              fakes) -> None:
    api = client(gateway)
    one = api.responses.create(model="gpt", input="My name is Ada.", instructions="Old rules.")
    two = api.responses.create(model="claude", input="What is my name?",
                               previous_response_id=one.id, instructions="New rules.")
    assert two.output_text == "Echo: What is my name?"
    body = sent(fakes, "anthropic")
    assert body["system"] == "New rules."
    texts = json.dumps(body["messages"])
    assert texts.index("My name is Ada.") < texts.index("Echo: My name is Ada.") \
        < texts.index("What is my name?")


@pytest.mark.parametrize("model", ["gpt", "claude", "gemini"])
def test_a_client_keeping_its_own_state_replays_the_output_items(gateway, model) -> None:
    api = client(gateway)
    question = [{"role": "user", "content": "What is the weather in Lima?"}]
    asked = api.responses.create(model=model, input=question, tools=[WEATHER_TOOL], store=False)
    call = next(item for item in asked.output if item.type == "function_call")
    answered = api.responses.create(
        model=model, tools=[WEATHER_TOOL], store=False,
        input=question + [item.model_dump(exclude_none=True) for item in asked.output]
        + [{"type": "function_call_output", "call_id": call.call_id, "output": "rain"}])
    assert answered.output_text.startswith("Tool said:") and "rain" in answered.output_text


def test_a_response_is_budgeted_like_a_chat_completion(gateway, fakes) -> None:
    with pytest.raises(openai.RateLimitError) as caught:
        client(gateway).responses.create(model="gpt", input="Spend it", user="broke")
    assert "budget" in caught.value.message.lower()
    assert calls(fakes) == 0


def test_tool_choice_and_function_tool_shape_are_translated(gateway, fakes) -> None:
    client(gateway).responses.create(
        model="gpt", input="What is the weather in Rome?", tools=[WEATHER_TOOL],
        tool_choice={"type": "function", "name": "get_weather"}, parallel_tool_calls=False,
        max_output_tokens=64)
    body = sent(fakes, "openai")
    assert body["tools"] == [{"type": "function", "function": {
        k: WEATHER_TOOL[k] for k in ("name", "description", "parameters")}}]
    assert body["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
    assert body["parallel_tool_calls"] is False
    assert body["max_completion_tokens"] == 64


# --- streaming ---------------------------------------------------------------------------------


@pytest.mark.parametrize("model, provider", MODELS)
def test_stream_sends_the_responses_events_in_order(gateway, fakes, model, provider) -> None:
    events = list(client(gateway).responses.create(model=model, input="Stream me some words",
                                                   stream=True))
    kinds = [e.type for e in events]
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert kinds[-1] == "response.completed"
    for kind in ("response.output_item.added", "response.content_part.added",
                 "response.output_text.delta", "response.output_text.done",
                 "response.content_part.done", "response.output_item.done"):
        assert kind in kinds, kind
    assert [e.sequence_number for e in events] == list(range(len(events)))
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert deltas == "Echo: Stream me some words"
    done = next(e for e in events if e.type == "response.output_text.done")
    assert done.text == deltas
    final = events[-1].response
    assert final.output_text == deltas and final.status == "completed"
    assert final.usage.input_tokens > 0
    assert events[0].response.status == "in_progress"


@pytest.mark.parametrize("model", ["gpt", "claude", "gemini"])
def test_stream_helper_gives_the_final_response(gateway, model) -> None:
    with client(gateway).responses.stream(model=model, input="Hello helper") as stream:
        text = "".join(e.delta for e in stream if e.type == "response.output_text.delta")
        final = stream.get_final_response()
    assert text == "Echo: Hello helper" == final.output_text


@pytest.mark.parametrize("model", ["gpt", "claude", "gemini"])
def test_stream_function_call_arguments(gateway, model) -> None:
    events = list(client(gateway).responses.create(
        model=model, input="What is the weather in Oslo?", tools=[WEATHER_TOOL], stream=True))
    kinds = [e.type for e in events]
    assert "response.function_call_arguments.done" in kinds
    done = next(e for e in events if e.type == "response.function_call_arguments.done")
    assert json.loads(done.arguments) == {"location": "Oslo"}
    deltas = "".join(e.delta for e in events
                     if e.type == "response.function_call_arguments.delta")
    assert deltas == done.arguments
    final = events[-1].response
    call = next(item for item in final.output if item.type == "function_call")
    assert call.name == "get_weather" and call.call_id and call.arguments == done.arguments


@pytest.mark.parametrize("model, provider", MODELS)
def test_a_stream_broken_after_the_first_byte_ends_with_an_error_event(gateway, fakes, model,
                                                                        provider) -> None:
    fakes[0][provider].push(ErrorInStream(after_chunks=1))
    events = list(client(gateway).responses.create(model=model, input="one two three four",
                                                   stream=True))
    kinds = [e.type for e in events]
    assert kinds[-2:] == ["error", "response.failed"]
    assert "response.completed" not in kinds
    assert events[-2].message and events[-1].response.status == "failed"


def test_streamed_response_can_be_continued(gateway, fakes) -> None:
    api = client(gateway)
    events = list(api.responses.create(model="gemini", input="Remember the word teal.",
                                       stream=True))
    first = events[-1].response
    api.responses.create(model="gpt", input="Which word?", previous_response_id=first.id)
    assert "Echo: Remember the word teal." in json.dumps(sent(fakes, "openai")["messages"])


# --- the store: another replica, store=false, another key ---------------------------------------


def test_another_gateway_sharing_redis_continues_the_conversation(fakes, redis_url, prefix,
                                                                  tmp_path) -> None:
    config = {**config_for(fakes[1]),
              "state": {"backend": "redis", "url": redis_url, "key_prefix": prefix}}
    with running_gateway(config, tmp_path / "a") as one, \
            running_gateway(config, tmp_path / "b") as two:
        first = client(one).responses.create(model="claude", input="The code is 4711.")
        answer = client(two).responses.create(model="gemini", input="What is the code?",
                                              previous_response_id=first.id)
    assert answer.output_text == "Echo: What is the code?"
    contents = json.dumps(sent(fakes, "gemini")["contents"])
    assert contents.index("The code is 4711.") < contents.index("Echo: The code is 4711.") \
        < contents.index("What is the code?")


def test_a_gateway_with_its_own_store_does_not_know_the_response(fakes, gateway,
                                                                 tmp_path) -> None:
    first = client(gateway).responses.create(model="gpt", input="Only here.")
    with running_gateway(config_for(fakes[1]), tmp_path) as other:
        with pytest.raises(openai.BadRequestError) as caught:
            client(other).responses.create(model="gpt", input="And?",
                                           previous_response_id=first.id)
    assert caught.value.body["param"] == "previous_response_id"
    assert caught.value.body["code"] == "previous_response_not_found"


def test_store_false_is_not_kept(gateway) -> None:
    api = client(gateway)
    first = api.responses.create(model="gpt", input="Forget this.", store=False)
    with pytest.raises(openai.BadRequestError) as caught:
        api.responses.create(model="gpt", input="And?", previous_response_id=first.id)
    assert "not found" in caught.value.message


def test_another_key_cannot_continue_a_response(gateway) -> None:
    first = client(gateway, ALICE).responses.create(model="gpt", input="Alice's secret.")
    with pytest.raises(openai.BadRequestError) as caught:
        client(gateway, BOB).responses.create(model="gpt", input="Tell me.",
                                              previous_response_id=first.id)
    assert caught.value.body["code"] == "previous_response_not_found"
    client(gateway, ALICE).responses.create(model="gpt", input="Go on.",
                                            previous_response_id=first.id)


# --- the record --------------------------------------------------------------------------------


def test_a_response_is_recorded_like_a_chat_completion(gateway) -> None:
    raw = client(gateway).responses.with_raw_response.create(model="claude", input="Record me")
    request_id = raw.headers["x-request-id"]
    row = next(r for r in gateway.rows() if r["request_id"] == request_id)
    response = raw.parse()
    assert row["requested"] == "claude" and row["model"] == "claude"
    assert row["status"] == "ok" and row["client"] == "alice"
    assert row["input_tokens"] == response.usage.input_tokens
    assert row["output_tokens"] == response.usage.output_tokens
    assert row["cost_usd"] == pytest.approx(float(raw.headers["x-turnout-cost-usd"]))
    streamed = client(gateway).responses.with_raw_response.create(model="gpt", input="Stream me",
                                                                  stream=True)
    stream_id = streamed.headers["x-request-id"]
    list(streamed.parse())
    row = next(r for r in gateway.rows() if r["request_id"] == stream_id)
    assert row["stream"] and row["status"] == "ok"


# --- models.retrieve ---------------------------------------------------------------------------


@pytest.mark.parametrize("name, owner", [("gpt", "openai"), ("gemini", "gemini"),
                                         ("chain", "turnout"), ("auto", "turnout")])
def test_models_retrieve(gateway, name, owner) -> None:
    model = client(gateway).models.retrieve(name)
    assert model.id == name and model.object == "model" and model.owned_by == owner


def test_models_retrieve_unknown_is_a_404_in_openai_shape(gateway) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        client(gateway).models.retrieve("gpt-9-ultra")
    assert caught.value.body["code"] == "model_not_found"
    assert "gpt-9-ultra" in caught.value.body["message"]


def test_models_retrieve_needs_a_key(gateway) -> None:
    with pytest.raises(openai.AuthenticationError):
        client(gateway, "sk-wrong").models.retrieve("gpt")


# --- bad input: OpenAI's error shape, a 4xx, no upstream call -----------------------------------


BAD = [
    ({"model": "gpt", "input": 5}, "input"),
    ({"model": "gpt"}, "input"),
    ({"input": "hi"}, "model"),
    ({"model": "gpt", "input": []}, "input"),
    ({"model": "gpt", "input": "hi", "temperature": "hot"}, "temperature"),
    ({"model": "gpt", "input": "hi", "stream": "yes"}, "stream"),
    ({"model": "gpt", "input": "hi", "max_output_tokens": 0}, "max_output_tokens"),
    ({"model": "gpt", "input": "hi", "frobnicate": 1}, "frobnicate"),
    ({"model": "gpt", "input": "hi", "tools": [{"type": "web_search"}]}, "tools[0].type"),
    ({"model": "gpt", "input": "hi", "tools": [{"type": "function", "name": "bad name!"}]},
     "tools[0].name"),
    ({"model": "gpt", "input": "hi", "tool_choice": {"type": "file_search"}}, "tool_choice"),
    ({"model": "gpt", "input": "hi", "tool_choice": "sometimes"}, "tool_choice"),
    ({"model": "gpt", "input": "hi", "text": {"format": {"type": "json_schema", "name": "x",
                                                         "schema": {"type": 12}}}},
     "text.format.schema.type"),
    ({"model": "gpt", "input": "hi", "text": {"format": {"type": "yaml"}}}, "text.format.type"),
    ({"model": "gpt", "input": [{"type": "reasoning", "summary": []}]}, "input[0].type"),
    ({"model": "gpt", "input": [{"role": "robot", "content": "hi"}]}, "input[0].role"),
    ({"model": "gpt", "input": [{"role": "user", "content": [{"type": "output_text",
                                                              "text": "x"}]}]},
     "input[0].content[0].type"),
    ({"model": "gpt", "input": [{"role": "user", "content": 7}]}, "input[0].content"),
    ({"model": "gpt", "input": [{"role": "user", "content": [{"type": "input_image",
                                                              "file_id": "file-1"}]}]},
     "input[0].content[0].image_url"),
    ({"model": "gpt", "input": [{"type": "function_call_output", "output": "x"}]},
     "input[0].call_id"),
    ({"model": "gpt", "input": [{"type": "function_call", "call_id": "c", "name": "f",
                                 "arguments": "{}", "colour": "red"}]}, "input[0].colour"),
    ({"model": "gpt", "input": ["hi"]}, "input[0]"),
    ({"model": "gpt", "input": "hi", "tools": {"type": "function"}}, "tools"),
    ({"model": "gpt", "input": "hi", "text": "json"}, "text"),
    ({"model": "gpt", "input": "hi", "text": {"format": {"type": "json_schema"}}},
     "text.format.name"),
    ({"model": "gpt", "input": "hi", "reasoning": {"effort": "extreme"}}, "reasoning.effort"),
    ({"model": "gpt", "input": "hi", "metadata": {"n": 1}}, "metadata.n"),
    ({"model": "gpt", "input": "hi", "tool_choice": {"type": "function"}}, "tool_choice"),
    ({"model": "gpt", "input": [{"type": "function_call_output", "call_id": "c",
                                 "output": [{"type": "input_image", "image_url": "x"}]}]},
     "input[0].output"),
    ({"model": "gpt", "input": "hi", "previous_response_id": "resp_nope"},
     "previous_response_id"),
    ({"model": "gpt", "input": "hi", "background": True}, "background"),
    ({"model": "gpt", "input": "hi", "include": ["file_search_call.results"]}, "include"),
]


@pytest.mark.parametrize("body, param", BAD, ids=[p for _, p in BAD])
def test_bad_input_is_a_400_in_openai_shape(gateway, fakes, body, param) -> None:
    answer = httpx.post(gateway.url + "/v1/responses", json=body,
                        headers={"authorization": f"Bearer {ALICE}"})
    assert answer.status_code == 400, answer.text
    error = answer.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error" and error["message"]
    assert error["param"] == param
    assert calls(fakes) == 0


def test_builtin_tools_are_named_in_the_refusal(gateway) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client(gateway).responses.create(model="gpt", input="Search it",
                                         tools=[{"type": "web_search"}])
    assert "web_search" in caught.value.message and "function" in caught.value.message


@pytest.mark.parametrize("content, status", [(b"{not json", 400), (b"[1, 2]", 400), (b"", 400)])
def test_undecodable_bodies_are_400s(gateway, content, status) -> None:
    answer = httpx.post(gateway.url + "/v1/responses", content=content,
                        headers={"authorization": f"Bearer {ALICE}",
                                 "content-type": "application/json"})
    assert answer.status_code == status
    assert answer.json()["error"]["type"] == "invalid_request_error"


def test_unknown_model_and_bad_key_in_openai_shape(gateway, fakes) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        client(gateway).responses.create(model="gpt-9-ultra", input="hi")
    assert caught.value.body["code"] == "model_not_found"
    with pytest.raises(openai.AuthenticationError):
        client(gateway, "sk-wrong").responses.create(model="gpt", input="hi")
    assert calls(fakes) == 0


# --- OpenAI's published spec -------------------------------------------------------------------


def event_schema(kind: str) -> str:
    """The spec's schema for a stream event of type ``kind`` (``response.created``...)."""
    from .test_wire_fidelity import spec

    schemas = spec()["components"]["schemas"]
    names = [ref["$ref"].rsplit("/", 1)[1] for ref in schemas["ResponseStreamEvent"]["anyOf"]]
    return next(name for name in names
                if kind in schemas[name]["properties"]["type"].get("enum", ()))


def sse_events(gw, body: dict) -> list[dict]:
    events, kind = [], None
    with httpx.stream("POST", gw.url + "/v1/responses", json=body, timeout=10,
                      headers={"authorization": f"Bearer {ALICE}"}) as response:
        for line in response.iter_lines():
            if line.startswith("event: "):
                kind = line[7:]
            elif line.startswith("data: "):
                event = json.loads(line[6:])
                assert event["type"] == kind
                events.append(event)
    return events


@pytest.mark.parametrize("model, provider", MODELS)
def test_responses_events_models_and_errors_match_openais_spec(gateway, fakes, model,
                                                               provider) -> None:
    from .test_wire_fidelity import valid

    headers = {"authorization": f"Bearer {ALICE}"}
    for body in ({"model": model, "input": "Spec me", "metadata": {"team": "a"}},
                 {"model": model, "input": "What is the weather in Bern?",
                  "tools": [WEATHER_TOOL]}):
        answer = httpx.post(gateway.url + "/v1/responses", json=body, headers=headers,
                            timeout=10)
        valid("Response", answer.json())
        events = sse_events(gateway, {**body, "stream": True})
        assert events[-1]["type"] == "response.completed"
        for event in events:
            valid(event_schema(event["type"]), event)
    fakes[0][provider].push(ErrorInStream(after_chunks=1))
    failed = sse_events(gateway, {"model": model, "input": "one two three", "stream": True})
    assert [e["type"] for e in failed[-2:]] == ["error", "response.failed"]
    for event in failed:
        valid(event_schema(event["type"]), event)
    valid("Model", httpx.get(gateway.url + f"/v1/models/{model}", headers=headers).json())
    for response in (httpx.get(gateway.url + "/v1/models/nope", headers=headers),
                     httpx.post(gateway.url + "/v1/responses", headers=headers,
                                json={"model": model, "input": 5})):
        assert response.status_code in (400, 404)
        valid("ErrorResponse", response.json())
