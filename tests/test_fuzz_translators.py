"""Property-based tests of the provider translators (``adapters/providers/*.py``) and the front
doors that read other wire formats (``adapters/http/messages.py``, ``responses.py``).

Requests: any valid chat request (system and developer prompts, user text and images, assistant
text and tool calls, tool results, tools, tool_choice, response_format, stop, sampling and limits)
goes out in each provider's wire format. OpenAI's is the kernel's own, so it comes back whole.
Anthropic's comes back through the Messages front door with what that format carries: role
order, text, images, tool call ids, names and arguments, tool results, the system prompt; what it
cannot carry is stated where the property allows for it. Gemini has no way back in, so its body
is checked for the same things directly. A Responses request comes in as the chat request it
describes.

Answers: an upstream answer generated in each wire format, read by the real adapter over an
in-process transport, leaves as an OpenAI chat completion with its text, tool calls, finish
reason and usage; an answer of any other shape is a clean provider error.

Examples are derandomized (the same ones on every run); ``@example`` cases once failed.
"""

from __future__ import annotations

from typing import Any

import anyio
import httpx
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from turnout.adapters.http.messages import MessagesRequest, to_chat_request
from turnout.adapters.http.messages import parse as parse_messages
from turnout.adapters.http.parse import parse_request
from turnout.adapters.http.responses import chat_request, parse_responses
from turnout.adapters.http.wire import completion_json
from turnout.adapters.providers.anthropic import (
    DEFAULT_MAX_TOKENS,
    JSON_INSTRUCTION,
    AnthropicAdapter,
    to_messages_request,
)
from turnout.adapters.providers.gemini import GeminiAdapter, to_generate_request
from turnout.adapters.providers.openai import OpenAIAdapter
from turnout.adapters.providers.settings import HttpProviderSettings
from turnout.kernel.errors import ProviderUnavailable, TurnoutError
from turnout.kernel.types import ChatRequest, Completion, Message, ModelProfile

from .strategies import JSON

FUZZ = settings(max_examples=80, deadline=None, derandomize=True, database=None)

MODEL = ModelProfile(name="m", provider="up", upstream="up-model")
CAPPED = ModelProfile(name="m", provider="up", upstream="up-model", max_output_tokens=2048)

# --- chat requests -----------------------------------------------------------------------------

TEXT = st.text(min_size=1, max_size=16).filter(lambda s: s.strip())
"""Message text: any characters, never blank (every format drops empty text)."""
NAME = st.from_regex(r"[a-zA-Z_][a-zA-Z0-9_-]{0,20}", fullmatch=True)
ARGUMENTS = st.dictionaries(st.text(max_size=6), JSON, max_size=3)
IMAGE = st.one_of(
    st.builds(lambda kind, data: f"data:image/{kind};base64,{data}",
              st.sampled_from(["png", "jpeg", "gif", "webp"]),
              st.from_regex(r"[A-Za-z0-9+/]{4,40}={0,2}", fullmatch=True)),
    st.builds(lambda path: f"https://img.example/{path}.png",
              st.from_regex(r"[a-z0-9]{1,10}", fullmatch=True)),
)


def text_content(kinds: tuple[str, ...] = ("text",)) -> st.SearchStrategy[Any]:
    """Message content: a string, or parts (text, and images where ``kinds`` allows)."""
    part = st.builds(lambda t: {"type": "text", "text": t}, TEXT)
    if "image" in kinds:
        part = st.one_of(part, st.builds(
            lambda url, detail: {"type": "image_url", "image_url": {
                "url": url, **({"detail": detail} if detail else {})}},
            IMAGE, st.sampled_from([None, "low", "high"])))
    return st.one_of(TEXT, st.lists(part, min_size=1, max_size=3))


@st.composite
def conversations(draw: st.DrawFn) -> list[dict[str, Any]]:
    """A conversation as a client sends it: system prompts anywhere, then user turns, each
    answered by the assistant in text or with tool calls whose results follow."""
    messages: list[dict[str, Any]] = []
    ids = iter(range(10**6))
    for _ in range(draw(st.integers(1, 4))):
        if draw(st.booleans()):
            messages.append({"role": draw(st.sampled_from(["system", "developer"])),
                             "content": draw(text_content())})
        messages.append({"role": "user", "content": draw(text_content(("text", "image")))})
        if not draw(st.integers(0, 3)):
            break  # the conversation ends with the user, as a request does
        calls = [{"id": f"call_{draw(NAME)}_{next(ids)}", "type": "function",
                  "function": {"name": draw(NAME),
                               "arguments": orjson.dumps(draw(ARGUMENTS)).decode()}}
                 for _ in range(draw(st.integers(0, 2)))]
        assistant: dict[str, Any] = {"role": "assistant"}
        if not calls or draw(st.booleans()):
            assistant["content"] = draw(text_content())
        if calls:
            assistant["tool_calls"] = calls
        messages.append(assistant)
        for call in calls:
            messages.append({"role": "tool", "tool_call_id": call["id"],
                             "content": draw(st.one_of(
                                 text_content(), st.builds(lambda v: orjson.dumps(v).decode(),
                                                           JSON)))})
    return messages


SCHEMA = st.one_of(
    st.none(),
    st.builds(lambda props, required: {"type": "object", "properties": props,
                                       "required": [p for p in props if required]},
              st.dictionaries(st.from_regex(r"[a-z]{1,8}", fullmatch=True),
                              st.sampled_from([{"type": "string"}, {"type": "integer"},
                                               {"type": "array", "items": {"type": "number"}},
                                               {"type": ["string", "null"]}]), max_size=3),
              st.booleans()),
)


@st.composite
def requests(draw: st.DrawFn) -> ChatRequest:
    """Any valid chat request of the kinds every provider takes."""
    data: dict[str, Any] = {"model": "m", "messages": draw(conversations())}
    tools = draw(st.lists(NAME, max_size=3, unique=True))
    if tools:
        data["tools"] = [{"type": "function", "function": {
            "name": name, **draw(st.fixed_dictionaries({}, optional={
                "description": TEXT, "parameters": SCHEMA.filter(bool)}))}} for name in tools]
        data["tool_choice"] = draw(st.one_of(
            st.sampled_from([None, "auto", "none", "required"]),
            st.builds(lambda n: {"type": "function", "function": {"name": n}},
                      st.sampled_from(tools))))
        data["parallel_tool_calls"] = draw(st.sampled_from([None, True, False]))
    data.update(draw(st.fixed_dictionaries({}, optional={
        "temperature": st.floats(0, 2), "top_p": st.floats(0, 1),
        "max_tokens": st.integers(1, 100_000),
        "stop": st.one_of(TEXT, st.lists(TEXT, min_size=1, max_size=4)),
        "user": TEXT,
        "response_format": st.one_of(
            st.just({"type": "text"}), st.just({"type": "json_object"}),
            st.builds(lambda s: {"type": "json_schema", "json_schema": {"name": "out",
                                                                        "schema": s}},
                      SCHEMA.filter(bool))),
        "seed": st.integers(0, 2**31), "presence_penalty": st.floats(-2, 2),
        "n": st.integers(1, 4),
    })))
    return ChatRequest.model_validate({k: v for k, v in data.items() if v is not None})


def system_text(request: ChatRequest) -> str:
    """Every system and developer prompt of ``request``, in order, as the providers join them."""
    return "\n\n".join(m.text() for m in request.messages
                       if m.role in ("system", "developer") and m.text())


def parts(message: Message) -> list[tuple[str, str]]:
    """A message's content as (kind, value) items: string content is one text part."""
    if isinstance(message.content, str):
        return [("text", message.content)]
    return [("text", p["text"]) if p["type"] == "text" else ("image", p["image_url"]["url"])
            for p in message.content or []]


def calls_of(message: Message) -> list[tuple[str, str, Any]]:
    return [(c["id"], c["function"]["name"], orjson.loads(c["function"]["arguments"]))
            for c in message.tool_calls or []]


# --- OpenAI: the kernel's own format -----------------------------------------------------------


@FUZZ
@given(request=requests(), stream=st.booleans())
def test_openai_bodies_carry_the_whole_request(request: ChatRequest, stream: bool) -> None:
    adapter = OpenAIAdapter("up", HttpProviderSettings(kind="openai", api_key="sk-k"))
    stream = stream and request.choices == 1  # n choices are never streamed
    body = adapter.payload(request, MODEL, stream=stream)
    back = parse_request(orjson.dumps(body))
    assert back.model == "up-model" and back.stream is stream
    sent = request.model_dump(exclude_none=True, exclude={"model", "stream"})
    got = back.model_dump(exclude_none=True, exclude={"model", "stream", "stream_options"})
    if not request.tools:  # the API refuses parallel_tool_calls without tools: not sent
        sent.pop("parallel_tool_calls", None)
    assert got == sent


# --- Anthropic: out through the adapter, back through the Messages front door ------------------


def anthropic_round_trip(request: ChatRequest, model: ModelProfile) -> ChatRequest:
    body = to_messages_request(request, model)
    return to_chat_request(parse_messages(orjson.dumps(body), MessagesRequest))


def turns(messages: list[Message]) -> list[tuple[str, list[Any]]]:
    """What the Messages format can say about a conversation: its non-system messages as
    (role, items) in order, where items are text and images (users), one text joined from the
    parts and the tool calls with their arguments as JSON values (assistants), and the result
    text (tools). Anthropic keeps no image ``detail``, nor the layout of an assistant's text
    parts (they come back as one text) or of a tool result's (joined as one)."""
    out: list[tuple[str, list[Any]]] = []
    for m in messages:
        if m.role == "user":
            out.append(("user", parts(m)))
        elif m.role == "assistant":
            text = "\n\n".join(v for k, v in parts(m) if k == "text" and v)
            out.append(("assistant", [text or None, *calls_of(m)]))
        elif m.role == "tool":
            out.append(("tool", [m.tool_call_id, m.text()]))
    return out


@FUZZ
@given(request=requests(), capped=st.booleans())
def test_anthropic_bodies_carry_the_conversation_back(request: ChatRequest, capped: bool) -> None:
    model = CAPPED if capped else MODEL
    back = anthropic_round_trip(request, model)
    assert turns(back.messages) == turns(request.messages)
    # Every system and developer prompt, wherever it stood, becomes the one system prompt first;
    # JSON mode, which the API lacks, is an instruction appended to it.
    system = system_text(request)
    if request.wants_json:
        system = "\n\n".join(filter(None, [system, JSON_INSTRUCTION]))
    got = back.messages[0].text() if back.messages[0].role == "system" else ""
    assert got.startswith(system)
    assert [m.role for m in back.messages[1:]].count("system") == 0
    # Tools and the tool choice (both only with tools: the API has no choice without them).
    if request.tools:
        assert [t["function"]["name"] for t in back.tools] == \
            [t["function"]["name"] for t in request.tools]
        assert [t["function"].get("description") for t in back.tools] == \
            [t["function"].get("description") for t in request.tools]
        assert [t["function"]["parameters"] for t in back.tools] == \
            [t["function"].get("parameters") or {"type": "object", "properties": {}}
             for t in request.tools]
        assert back.tool_choice == (request.tool_choice if request.tool_choice is not None
                                    or request.parallel_tool_calls is False else None) \
            or (request.tool_choice is None and back.tool_choice == "auto")
        assert back.parallel_tool_calls == (False if request.parallel_tool_calls is False
                                            else None)
    else:
        assert back.tools is None and back.tool_choice is None
    # Sampling and limits: temperature capped at Anthropic's 1; stop always a list; max_tokens
    # required (the model's cap, else a default); n, seed, penalties and formats not carried.
    assert back.temperature == (None if request.temperature is None
                                else min(request.temperature, 1.0))
    assert back.top_p == request.top_p
    assert back.stop == ([request.stop] if isinstance(request.stop, str) else request.stop)
    assert back.user == request.user
    limit = min(filter(None, [request.max_tokens, model.max_output_tokens]), default=None)
    assert back.max_tokens == (limit or DEFAULT_MAX_TOKENS)
    assert back.n is None and back.seed is None and back.response_format is None


# --- Gemini: no way back in, so the body itself is read ----------------------------------------


@FUZZ
@given(request=requests())
def test_gemini_bodies_carry_the_conversation(request: ChatRequest) -> None:
    body = to_generate_request(request, MODEL)
    system = system_text(request)
    assert body.get("systemInstruction", {"parts": [{"text": ""}]})["parts"] == [{"text": system}]
    # Roles: users and tool results are "user" turns, the assistant's "model"; repeated roles
    # are one turn. Items in order: texts, images (inline data URLs only: Gemini cannot fetch a
    # URL, so those are dropped), calls with their arguments, and results by function name (the
    # format has no call ids).
    names = {c[0]: c[1] for m in request.messages for c in calls_of(m)}
    want_roles: list[str] = []
    want_items: list[Any] = []
    for m in request.messages:
        if m.role in ("system", "developer"):
            continue
        role = "model" if m.role == "assistant" else "user"
        before = len(want_items)
        if m.role == "tool":
            try:
                value = orjson.loads(m.text())
            except orjson.JSONDecodeError:
                value = m.text()
            want_items.append(("result", names[m.tool_call_id],
                               value if isinstance(value, dict) else {"result": value}))
        for kind, value in parts(m) if m.role != "tool" else ():
            if kind == "text":
                want_items.append(("text", value))
            elif value.startswith("data:"):
                mime, _, data = value[5:].partition(";base64,")
                want_items.append(("image", mime, data))
        want_items += [("call", name, args) for _, name, args in calls_of(m)]
        if len(want_items) > before and (not want_roles or want_roles[-1] != role):
            want_roles.append(role)  # a message left with nothing to send is no turn
    got_items: list[Any] = []
    for part in (p for turn in body["contents"] for p in turn["parts"]):
        if "text" in part:
            got_items.append(("text", part["text"]))
        elif "inlineData" in part:
            got_items.append(("image", part["inlineData"]["mimeType"], part["inlineData"]["data"]))
        elif "functionCall" in part:
            got_items.append(("call", part["functionCall"]["name"], part["functionCall"]["args"]))
        else:
            got_items.append(("result", part["functionResponse"]["name"],
                              part["functionResponse"]["response"]))
    assert [t["role"] for t in body["contents"]] == want_roles
    assert got_items == want_items
    generation = body.get("generationConfig", {})
    assert generation.get("temperature") == request.temperature
    assert generation.get("maxOutputTokens") == request.max_tokens
    assert generation.get("stopSequences") == (
        [request.stop] if isinstance(request.stop, str) else request.stop)
    assert generation.get("candidateCount", 1) == request.choices
    assert [d["name"] for d in (body.get("tools") or [{"functionDeclarations": []}])[0][
        "functionDeclarations"]] == [t["function"]["name"] for t in request.tools or []]


# --- OpenAI Responses: in through its front door -----------------------------------------------


@FUZZ
@given(request=requests(), instructions=st.one_of(st.none(), TEXT))
def test_a_responses_request_becomes_the_chat_request_it_describes(
        request: ChatRequest, instructions: str | None) -> None:
    # The Responses input for the request's conversation: messages as input_text/input_image
    # (output_text for the assistant), calls as function_call items, results as
    # function_call_output items.
    items: list[dict[str, Any]] = []
    for m in request.messages:
        if m.role == "tool":
            items.append({"type": "function_call_output", "call_id": m.tool_call_id,
                          "output": m.text()})
            continue
        if m.content is not None:
            out = m.role == "assistant"
            items.append({"type": "message", "role": m.role, "content": [
                {"type": "output_text" if out else "input_text", "text": v} if k == "text"
                else {"type": "input_image", "image_url": v} for k, v in parts(m)]})
        items += [{"type": "function_call", "call_id": i, "name": n,
                   "arguments": orjson.dumps(a).decode()} for i, n, a in calls_of(m)]
    body: dict[str, Any] = {"model": "m", "input": items}
    if instructions is not None:
        body["instructions"] = instructions
    if request.max_tokens is not None:
        body["max_output_tokens"] = request.max_tokens
    if request.temperature is not None:
        body["temperature"] = request.temperature
    chat, _ = chat_request(parse_responses(orjson.dumps(body)), [])
    messages = chat.messages
    if instructions is not None:
        assert (messages[0].role, messages[0].text()) == ("system", instructions)
        messages = messages[1:]
    assert [m.role for m in messages] == [m.role for m in request.messages]
    assert [m.text() for m in messages] == [m.text() for m in request.messages]
    assert [calls_of(m) for m in messages] == [calls_of(m) for m in request.messages]
    assert [m.tool_call_id for m in messages] == [m.tool_call_id for m in request.messages]
    assert chat.output_limit == request.max_tokens and chat.temperature == request.temperature


# --- answers -----------------------------------------------------------------------------------


@st.composite
def answers(draw: st.DrawFn) -> dict[str, Any]:
    calls = [(f"call_{i}_{draw(NAME)}", draw(NAME), draw(ARGUMENTS))
             for i in range(draw(st.integers(0, 3)))]
    text = draw(st.one_of(st.just(""), TEXT)) if calls else draw(TEXT)
    return {"text": text, "calls": calls,
            "finish": "tool_calls" if calls else draw(st.sampled_from(["stop", "length"])),
            "input": draw(st.integers(0, 10**7)), "output": draw(st.integers(0, 10**7))}


def wire_answer(kind: str, a: dict[str, Any]) -> dict[str, Any]:
    """The answer ``a`` as the upstream of ``kind`` sends it."""
    if kind == "openai":
        return {"id": "chatcmpl-1", "object": "chat.completion", "model": "up-model",
                "choices": [{"index": 0, "finish_reason": a["finish"], "message": {
                    "role": "assistant", "content": a["text"] or None,
                    **({"tool_calls": [{"id": i, "type": "function", "function": {
                        "name": n, "arguments": orjson.dumps(args).decode()}}
                        for i, n, args in a["calls"]]} if a["calls"] else {})}}],
                "usage": {"prompt_tokens": a["input"], "completion_tokens": a["output"],
                          "total_tokens": a["input"] + a["output"]}}
    if kind == "anthropic":
        content = [{"type": "text", "text": a["text"]}] if a["text"] else []
        content += [{"type": "tool_use", "id": i, "name": n, "input": args}
                    for i, n, args in a["calls"]]
        return {"id": "msg_1", "type": "message", "role": "assistant", "model": "up-model",
                "content": content, "stop_reason": {"stop": "end_turn", "length": "max_tokens",
                                                    "tool_calls": "tool_use"}[a["finish"]],
                "usage": {"input_tokens": a["input"], "output_tokens": a["output"]}}
    parts_ = [{"text": a["text"]}] if a["text"] else []
    parts_ += [{"functionCall": {"name": n, "args": args}} for _, n, args in a["calls"]]
    return {"candidates": [{"content": {"role": "model", "parts": parts_},
                            "finishReason": "MAX_TOKENS" if a["finish"] == "length" else "STOP"}],
            "usageMetadata": {"promptTokenCount": a["input"], "candidatesTokenCount": a["output"]}}


ADAPTERS = {"openai": OpenAIAdapter, "anthropic": AnthropicAdapter, "gemini": GeminiAdapter}


def answer_of(kind: str, body: Any) -> Completion:
    """What the real adapter of ``kind`` makes of an upstream answering 200 with ``body``."""
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json=body)

    async def main() -> Completion:
        adapter = ADAPTERS[kind]("up", HttpProviderSettings(
            kind=kind, base_url="http://upstream.invalid/v1", api_key="sk-fuzz-key"),
            client=httpx.AsyncClient(transport=httpx.MockTransport(handler)))
        try:
            return await adapter.complete(ChatRequest(model="m", messages=[
                {"role": "user", "content": "hello"}]), MODEL)
        finally:
            await adapter.aclose()
    return anyio.run(main)


@pytest.mark.parametrize("kind", sorted(ADAPTERS))
@FUZZ
@given(answer=answers())
def test_an_upstream_answer_leaves_as_the_same_chat_completion(kind: str,
                                                              answer: dict[str, Any]) -> None:
    completion = answer_of(kind, wire_answer(kind, answer))
    out = orjson.loads(completion_json("req_1", completion))
    choice = out["choices"][0]
    assert (choice["message"]["content"] or "") == answer["text"]
    calls = choice["message"].get("tool_calls") or []
    assert [(c["function"]["name"], orjson.loads(c["function"]["arguments"])) for c in calls] == \
        [(n, args) for _, n, args in answer["calls"]]
    if kind == "gemini":  # Gemini sends no call ids: the adapter numbers them
        assert [c["id"] for c in calls] == [f"call_{i}" for i in range(len(calls))]
    else:
        assert [c["id"] for c in calls] == [i for i, _, _ in answer["calls"]]
    assert choice["finish_reason"] == answer["finish"]
    assert (out["usage"]["prompt_tokens"], out["usage"]["completion_tokens"]) == \
        (answer["input"], answer["output"])


@pytest.mark.parametrize("kind", sorted(ADAPTERS))
@FUZZ
@given(body=st.one_of(JSON, st.dictionaries(
    st.sampled_from(["choices", "message", "content", "candidates", "parts", "usage",
                     "usageMetadata", "stop_reason", "finish_reason", "tool_calls", "type"]),
    JSON, min_size=1, max_size=4)))
def test_an_answer_of_any_other_shape_is_a_provider_error(kind: str, body: Any) -> None:
    try:
        answer_of(kind, body)
    except TurnoutError:
        pass


@pytest.mark.parametrize(("kind", "body"), [
    ("openai", {"choices": [1]}),
    ("openai", {"choices": [{"message": {"content": "hi"}}], "usage": {"prompt_tokens": "x"}}),
    ("anthropic", {"content": ["a string where a block belongs"]}),
    ("gemini", {"candidates": [{"content": {"parts": True}}]}),
    ("gemini", {"candidates": [1]}),
], ids=["openai-choice", "openai-usage", "anthropic-block", "gemini-parts", "gemini-candidate"])
def test_an_answer_of_the_wrong_shape_is_unavailable(kind: str, body: Any) -> None:
    """Valid JSON of the wrong shape once leaked AttributeError, TypeError or ValueError."""
    with pytest.raises(ProviderUnavailable, match="unexpected shape"):
        answer_of(kind, body)
