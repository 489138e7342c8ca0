"""The simulated fleet over real HTTP, driven with the official OpenAI SDK and httpx."""

from __future__ import annotations

import asyncio
import datetime
import enum
import json
import socket
import statistics
import time
import typing

import httpx
import jsonschema
import openai
import pydantic
import pytest

from turnout.adapters.simulated import Fleet, Simulation
from turnout.kernel import tokens
from turnout.kernel.types import ChatRequest
from turnout.plugins import critic, ensemble, llm_classifier, validators

from .gateway import running_gateway

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


# --- structured answers through the gateway -----------------------------------------------------

class Address(pydantic.BaseModel):
    city: str
    postcode: str = pydantic.Field(pattern=r"^[0-9]{4}$")
    country: str | None = None


class Colour(str, enum.Enum):
    red = "red"
    blue = "blue"


class Person(pydantic.BaseModel):
    name: str = pydantic.Field(min_length=2, max_length=40)
    age: int = pydantic.Field(ge=18, le=99)
    email: str
    favourite: Colour
    home: Address
    past: list[Address] = pydantic.Field(min_length=2)
    born: datetime.date
    kind: typing.Literal["customer", "staff"]


NESTED = {"type": "object", "additionalProperties": False,
          "required": ["title", "rating", "tags", "status", "author", "links", "id"],
          "properties": {
              "title": {"type": "string", "minLength": 5, "maxLength": 30},
              "rating": {"type": "number", "exclusiveMinimum": 0, "maximum": 5, "multipleOf": 0.5},
              "tags": {"type": "array", "items": {"type": "string"}, "minItems": 3,
                       "maxItems": 4, "uniqueItems": True},
              "status": {"enum": ["draft", "published"]},
              "author": {"$ref": "#/$defs/author"},
              "links": {"type": "array", "items": {"type": "string", "format": "uri"}},
              "id": {"type": "string", "format": "uuid"},
              "note": {"anyOf": [{"type": "null"}, {"type": "integer", "minimum": 3}]}},
          "$defs": {"author": {"type": "object", "required": ["email", "joined"],
                               "additionalProperties": False,
                               "properties": {"email": {"type": "string", "format": "email"},
                                              "joined": {"type": "string", "format": "date"},
                                              "code": {"type": "string",
                                                       "pattern": "^[A-Z]{3}-[0-9]{2}$"}}}}}

FLEET = {"sim-good": {"latency_ms": 1, "jitter": 0, "quality": 1.0},
         "sim-bad": {"latency_ms": 1, "jitter": 0, "quality": 0.0},
         "sim-writer": {"latency_ms": 1, "jitter": 0, "quality": 1.0},
         "sim-critic": {"latency_ms": 1, "jitter": 0, "quality": 1.0}}


def _validate(value, schema) -> None:
    jsonschema.validate(value, schema, format_checker=jsonschema.FormatChecker())


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory):
    config = {
        "providers": {"fleet": {"kind": "simulated"}},
        "simulation": {"models": FLEET, "seed": 5},
        "models": {name: {"provider": "fleet", "input_price": 1.0, "output_price": 2.0}
                   for name in FLEET},
        "routes": {
            "reviewed": {"models": ["sim-writer"], "strategy": "critic",
                         "critic": {"model": "sim-critic", "min_score": 8, "max_rounds": 3}},
            "json-cascade": {"models": ["sim-bad", "sim-good"], "strategy": "cascade",
                             "validators": ["json"]}},
        "routing": {"default": "reviewed"},
    }
    with running_gateway(config, tmp_path_factory.mktemp("simulated")) as gw:
        yield gw


def _schema_format(name: str, schema: dict) -> dict:
    return {"type": "json_schema", "json_schema": {"name": name, "schema": schema}}


def test_json_schema_answers_validate_nested_enums_arrays_refs_and_formats(gateway):
    client = gateway.client()
    person = Person.model_json_schema()
    for name, schema in (("nested", NESTED), ("person", person)):
        answer = client.chat.completions.create(
            model="sim-good", messages=[{"role": "user", "content": "Describe Ada Lovelace, "
                                         "a mathematician from London."}],
            response_format=_schema_format(name, schema))
        value = json.loads(answer.choices[0].message.content)
        _validate(value, schema)
    assert Person.model_validate(value).home.city  # the last one: the pydantic model's schema
    assert value["name"] in {"Lovelace", "London", "Ada"} or "Ada" in value["name"]


def test_poor_model_leaves_out_a_required_field_and_a_cascade_escalates(gateway, client):
    # straight to the fleet: the gateway's json validator would refuse the poor answer
    ask = [{"role": "user", "content": "Describe a book about volcanoes."}]
    poor = client.chat.completions.create(model="sim-poor", messages=ask,
                                          response_format=_schema_format("book", NESTED))
    value = json.loads(poor.choices[0].message.content)  # still JSON: only the schema is broken
    assert len(set(NESTED["required"]) - set(value)) == 1
    with pytest.raises(jsonschema.ValidationError, match="is a required property"):
        _validate(value, NESTED)
    again = client.chat.completions.create(model="sim-poor", messages=ask,
                                           response_format=_schema_format("book", NESTED))
    assert again.choices[0].message.content == poor.choices[0].message.content

    raw = gateway.client().chat.completions.with_raw_response.create(
        model="json-cascade", messages=ask, response_format=_schema_format("book", NESTED))
    _validate(json.loads(raw.parse().choices[0].message.content), NESTED)
    attempts = gateway.attempts(raw.headers["x-request-id"])
    assert [a["model"] for a in attempts] == ["sim-bad", "sim-good"]


def test_json_object_with_a_schema_in_the_system_prompt_validates(gateway):
    # instructor's JSON mode: the schema is in the system message, response_format json_object
    system = ("As a genius expert, your task is to understand the content and provide the parsed "
              "objects in json that match the following json_schema:\n\n"
              + json.dumps(Person.model_json_schema(), indent=2)
              + "\n\nMake sure to return an instance of the JSON, not the schema itself")
    messages = [{"role": "system", "content": system},
                {"role": "user", "content": "Grace Hopper joined the navy and wrote compilers."}]
    client = gateway.client()
    good = client.chat.completions.create(model="sim-good", messages=messages,
                                          response_format={"type": "json_object"})
    person = Person.model_validate_json(good.choices[0].message.content)
    assert person.name in {"Hopper", "Grace"}
    poor = client.chat.completions.create(model="sim-bad", messages=messages,
                                          response_format={"type": "json_object"})
    json.loads(poor.choices[0].message.content)  # an object (json mode is met), missing a field
    with pytest.raises(pydantic.ValidationError, match="Field required"):
        Person.model_validate_json(poor.choices[0].message.content)
    # LangChain's format instructions: a fenced schema in the user message, no response_format
    fenced = client.chat.completions.create(model="sim-good", messages=[{
        "role": "user", "content": "Tell me about Oslo.\nThe output should be formatted as a JSON "
        "instance that conforms to the JSON schema below.\n```json\n"
        + json.dumps(Address.model_json_schema()) + "\n```"}])
    assert Address.model_validate_json(fenced.choices[0].message.content).city == "Oslo"


def test_sdk_parse_returns_the_pydantic_object(gateway):
    client = gateway.client()
    parse = getattr(client.chat.completions, "parse", None) or client.beta.chat.completions.parse
    completion = parse(model="sim-good", response_format=Person, messages=[
        {"role": "user", "content": "Extract the person: Alan Turing, born in London."}])
    person = completion.choices[0].message.parsed
    assert isinstance(person, Person) and isinstance(person.home, Address)
    assert len(person.past) >= 2 and 18 <= person.age <= 99


def _ask(client, content: str, model: str = "sim-critic") -> str:
    return client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": content}]).choices[0].message.content


def test_verdict_prompts_of_the_plugins_get_json_they_can_read(gateway):
    client = gateway.client()
    question = "user: How do volcanoes form under the ocean floor?"
    poor_draft = "[sim-bad] Hmm, volcanoes? Hard to say; maybe look it up."
    good_draft = _ask(client, "How do volcanoes form under the ocean floor?", "sim-good")
    scores = []
    for draft in (poor_draft, good_draft):
        text = _ask(client, critic.CRITIC_PROMPT.format(conversation=question, draft=draft))
        score, feedback = critic.parse_verdict(text)
        assert json.loads(text)["score"] == score and feedback
        scores.append(score)
    assert 1 <= scores[0] < scores[1] <= 10

    judged = _ask(client, validators.JUDGE_PROMPT.format(rubric="Correct and complete.",
                                                         question=question, answer=good_draft))
    assert validators.parse_judgement(judged)[0] >= 5

    answers = "\n\n".join(f"Answer {n}:\n{a}" for n, a in enumerate([poor_draft, good_draft], 1))
    pick = _ask(client, ensemble.JUDGE_PROMPT.format(question=question, answers=answers, n=2))
    assert ensemble.parse_pick(pick)[0] == 2
    poor_pick = _ask(client, ensemble.JUDGE_PROMPT.format(question=question, answers=answers, n=2),
                     "sim-bad")
    assert ensemble.parse_pick(poor_pick)[0] == 1  # a weak judge visibly picks worse

    for message, task in (("Write a Python function that reverses a linked list", "code"),
                          ("Translate 'good morning' into French", "translation"),
                          ("Prove that the square root of 2 is irrational", "math")):
        verdict = llm_classifier.parse_verdict(_ask(client, llm_classifier.prompt_for(message)))
        assert verdict is not None and verdict["task"] == task


def test_a_critic_route_revises_and_records_scores(gateway):
    client = gateway.client()
    ask = [{"role": "user", "content": "This change drops a table."}]
    raw = client.chat.completions.with_raw_response.create(model="reviewed", messages=ask)
    answer = raw.parse().choices[0].message.content
    rounds = int(raw.headers["x-turnout-critic-rounds"])
    assert rounds > 1
    row = next(r for r in gateway.rows() if r["request_id"] == raw.headers["x-request-id"])
    record = json.loads(row["decision"])["critic"]
    scores = [r["score"] for r in record["rounds"]]
    assert len(scores) == rounds and all(isinstance(s, (int, float)) for s in scores)
    assert scores[-1] > scores[0] and record["stopped"] != "critic_failed"
    again = client.chat.completions.create(model="reviewed", messages=ask)
    assert again.choices[0].message.content == answer


def test_same_structured_prompt_same_answer(gateway):
    client = gateway.client()
    ask = [{"role": "user", "content": "Describe a book about glaciers."}]
    answers = {client.chat.completions.create(
        model="sim-good", messages=ask, response_format=_schema_format("book", NESTED))
        .choices[0].message.content for _ in range(3)}
    assert len(answers) == 1
    prompt = critic.CRITIC_PROMPT.format(conversation="user: hi", draft="Hello! How can I help?")
    assert len({_ask(client, prompt) for _ in range(3)}) == 1


def test_n_choices_are_n_answers(gateway) -> None:
    raw = gateway.client(timeout=10).chat.completions.with_raw_response.create(
        model="sim-good", n=3, messages=[{"role": "user", "content": "Name a river."}])
    completion = raw.parse()
    assert [c.index for c in completion.choices] == [0, 1, 2]
    assert all(c.message.content for c in completion.choices)
    one = gateway.client(timeout=10).chat.completions.create(
        model="sim-good", messages=[{"role": "user", "content": "Name a river."}])
    # Every choice is paid for: three answers' tokens.
    assert completion.usage.completion_tokens > one.usage.completion_tokens
