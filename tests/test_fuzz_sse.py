"""Property-based tests of the provider adapters' stream parsers: OpenAI chat chunks, Anthropic
Messages events and Gemini ``streamGenerateContent`` (``adapters/providers/*.py``).

Each test drives a real adapter (``stream``) over an in-process transport that plays exact bytes:
a generated answer (text pieces, tool calls with their arguments split anywhere, usage, finish
reason) framed as server-sent events with comments, keep-alives, multi-line data and any of the
three line endings, then cut into chunks at arbitrary byte boundaries (inside a line ending, a
field name or a UTF-8 character). The stream, read to its end with the kernel's own assembler,
gives back exactly the answer it was made from. Broken streams (cut short, a payload that is not
JSON, an error event inside the 200, any JSON value where an event belongs) end in the kernel's
StreamBroken or another project error, never a raw exception or a hang.

Examples are derandomized (the same ones on every run); ``@example`` cases once failed.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import anyio
import httpx
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from turnout.adapters.providers.anthropic import AnthropicAdapter
from turnout.adapters.providers.base import ProviderAdapter
from turnout.adapters.providers.gemini import GeminiAdapter
from turnout.adapters.providers.openai import OpenAIAdapter
from turnout.adapters.providers.settings import HttpProviderSettings
from turnout.kernel.errors import StreamBroken, TurnoutError
from turnout.kernel.kernel import _whole
from turnout.kernel.types import ChatRequest, Completion, ModelProfile, Step

from .strategies import JSON

FUZZ = settings(max_examples=60, deadline=None, derandomize=True, database=None)

MODEL = ModelProfile(name="m", provider="up", upstream="up-model")
REQUEST = ChatRequest(model="m", messages=[{"role": "user", "content": "hello"}], stream=True)
ADAPTERS = {"openai": OpenAIAdapter, "anthropic": AnthropicAdapter, "gemini": GeminiAdapter}
KINDS = sorted(ADAPTERS)

# --- the answer a stream carries ---------------------------------------------------------------


@dataclass
class Call:
    id: str
    name: str
    arguments: dict[str, Any]
    pieces: list[str]
    """``arguments`` as JSON text, cut where the upstream cut it."""


@dataclass
class Source:
    texts: list[str]
    calls: list[Call]
    finish: str
    """The finish reason the kernel should report."""
    input_tokens: int
    output_tokens: int
    cached: int = 0
    extra: dict[str, int] = field(default_factory=dict)
    """Provider-specific usage parts (Anthropic cache writes, Gemini thoughts)."""


def cut(text: str, points: list[int]) -> list[str]:
    """``text`` in pieces at ``points`` (each piece non-empty)."""
    at = sorted({p % len(text) for p in points if p % len(text)}) if text else []
    return [text[a:b] for a, b in zip([0, *at], [*at, len(text)])]


@st.composite
def calls(draw: st.DrawFn) -> list[Call]:
    found = []
    for i in range(draw(st.integers(0, 3))):
        arguments = draw(st.dictionaries(st.text(max_size=6), JSON, max_size=3))
        text = orjson.dumps(arguments).decode()
        found.append(Call(id=f"call_{draw(st.from_regex(r'[A-Za-z0-9]{4,12}', fullmatch=True))}"
                          f"_{i}",
                          name=draw(st.from_regex(r"[a-zA-Z_][a-zA-Z0-9_-]{0,20}",
                                                  fullmatch=True)),
                          arguments=arguments,
                          pieces=cut(text, draw(st.lists(st.integers(0, 10**6), max_size=6)))))
    return found


@st.composite
def sources(draw: st.DrawFn, kind: str) -> Source:
    texts = draw(st.lists(st.text(min_size=1, max_size=12), max_size=6))
    found = draw(calls())
    if found:
        finish = "tool_calls"
    else:
        finish = draw(st.sampled_from(["stop", "length"]))
    extra = {}
    if kind == "anthropic":
        extra = {"cache_creation_input_tokens": draw(st.integers(0, 10**6))}
    elif kind == "gemini":
        extra = {"thoughtsTokenCount": draw(st.integers(0, 10**6))}
    return Source(texts=texts, calls=found, finish=finish,
                  input_tokens=draw(st.integers(0, 10**7)), output_tokens=draw(st.integers(0, 10**7)),
                  cached=draw(st.integers(0, 10**6)), extra=extra)


# --- the source as each provider's events ------------------------------------------------------

Event = tuple[str | None, Any]
"""An SSE event: its ``event:`` name (None: no such line) and its data (JSON-encoded, or sent as
is when it is ``bytes``)."""


def openai_events(src: Source) -> list[Event]:
    def chunk(delta: dict[str, Any], finish: str | None = None) -> Event:
        return None, {"id": "chatcmpl-1", "object": "chat.completion.chunk", "model": "up-model",
                      "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
    events = [chunk({"role": "assistant", "content": ""})]
    events += [chunk({"content": t}) for t in src.texts]
    for i, call in enumerate(src.calls):
        events.append(chunk({"tool_calls": [{"index": i, "id": call.id, "type": "function",
                                             "function": {"name": call.name, "arguments": ""}}]}))
        events += [chunk({"tool_calls": [{"index": i, "function": {"arguments": p}}]})
                   for p in call.pieces]
    events.append(chunk({}, src.finish))
    events.append((None, {"id": "chatcmpl-1", "object": "chat.completion.chunk", "choices": [],
                          "usage": {"prompt_tokens": src.input_tokens,
                                    "completion_tokens": src.output_tokens,
                                    "total_tokens": src.input_tokens + src.output_tokens}}))
    events.append((None, b"[DONE]"))
    return events


def anthropic_events(src: Source) -> list[Event]:
    def ev(kind: str, **data: Any) -> Event:
        return kind, {"type": kind, **data}
    events = [ev("message_start", message={
        "id": "msg_1", "type": "message", "role": "assistant", "content": [], "model": "up-model",
        "stop_reason": None, "usage": {"input_tokens": src.input_tokens, "output_tokens": 1,
                                       "cache_read_input_tokens": src.cached, **src.extra}})]
    index = 0
    if src.texts:
        events.append(ev("content_block_start", index=0,
                         content_block={"type": "text", "text": ""}))
        events.append(ev("ping"))
        events += [ev("content_block_delta", index=0, delta={"type": "text_delta", "text": t})
                   for t in src.texts]
        events.append(ev("content_block_stop", index=0))
        index = 1
    for call in src.calls:
        events.append(ev("content_block_start", index=index, content_block={
            "type": "tool_use", "id": call.id, "name": call.name, "input": {}}))
        events += [ev("content_block_delta", index=index,
                      delta={"type": "input_json_delta", "partial_json": p})
                   for p in (call.pieces if call.arguments else [])]
        events.append(ev("content_block_stop", index=index))
        index += 1
    stop = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use"}[src.finish]
    events.append(ev("message_delta", delta={"stop_reason": stop, "stop_sequence": None},
                     usage={"output_tokens": src.output_tokens}))
    events.append(ev("message_stop"))
    return events


def gemini_events(src: Source) -> list[Event]:
    usage = {"promptTokenCount": src.input_tokens, "candidatesTokenCount": src.output_tokens,
             "cachedContentTokenCount": src.cached, **src.extra}
    parts: list[dict[str, Any]] = [{"text": t} for t in src.texts]
    parts += [{"functionCall": {"name": c.name, "args": c.arguments}} for c in src.calls]
    events: list[Event] = []
    for i, part in enumerate(parts or [{"text": ""}]):
        candidate: dict[str, Any] = {"content": {"role": "model", "parts": [part]}, "index": 0}
        last = i == max(len(parts), 1) - 1
        if last:
            candidate["finishReason"] = "MAX_TOKENS" if src.finish == "length" else "STOP"
        events.append((None, {"candidates": [candidate], "modelVersion": "up-model",
                              **({"usageMetadata": usage} if last else {})}))
    return events


EVENTS = {"openai": openai_events, "anthropic": anthropic_events, "gemini": gemini_events}


def terminal(kind: str, events: list[Event]) -> int:
    """The index of the event that finishes the answer: a stream cut before it is broken."""
    if kind == "openai":
        return next(i for i, (_, d) in enumerate(events)
                    if isinstance(d, dict) and (d.get("choices") or [{}])[0].get("finish_reason"))
    return len(events) - 1


@dataclass
class Framing:
    eol: str
    comments: list[bool]
    multiline: list[bool]
    named: bool


@st.composite
def framings(draw: st.DrawFn, count: int) -> Framing:
    return Framing(eol=draw(st.sampled_from(["\n", "\r\n", "\r"])),
                   comments=draw(st.lists(st.booleans(), min_size=count + 1, max_size=count + 1)),
                   multiline=draw(st.lists(st.booleans(), min_size=count, max_size=count)),
                   named=draw(st.booleans()))


def frame(events: list[Event], how: Framing) -> tuple[bytes, list[int]]:
    """The events as an SSE byte stream, and the offset where each event's closing blank line
    starts (a stream cut before it never delivers the event)."""
    eol = how.eol.encode()
    out = bytearray()
    ends = []
    for i, (name, data) in enumerate(events):
        if how.comments[i]:
            out += b": keep-alive" + eol + eol  # a comment-only block, as proxies send
        if name is not None and (how.named or name == "error"):
            out += b"event: " + name.encode() + eol
        if isinstance(data, bytes):
            payload = data
        elif how.multiline[i]:
            payload = orjson.dumps(data, option=orjson.OPT_INDENT_2)
        else:
            payload = orjson.dumps(data)
        for line in payload.split(b"\n"):
            out += b"data: " + line + eol
        if how.multiline[i]:
            out += b"id: " + str(i).encode() + eol + b"retry: 1000" + eol
        ends.append(len(out))
        out += eol
    if how.comments[-1]:
        out += b":" + eol + eol
    return bytes(out), ends


def pieces(body: bytes, points: list[int]) -> list[bytes]:
    at = sorted({p % len(body) for p in points if p % len(body)}) if body else []
    return [body[a:b] for a, b in zip([0, *at], [*at, len(body)])]


# --- playing bytes through a real adapter ------------------------------------------------------


def adapter(kind: str, chunks: list[bytes]) -> ProviderAdapter:
    """An adapter of ``kind`` whose upstream answers 200 with ``chunks``, one read each."""
    async def body() -> AsyncIterator[bytes]:
        for chunk in chunks:
            yield chunk

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers={"content-type": "text/event-stream"}, content=body())

    client = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    settings_ = HttpProviderSettings(kind=kind, base_url="http://upstream.invalid/v1",
                                     api_key="sk-fuzz-key")
    return ADAPTERS[kind]("up", settings_, client=client)


def read(kind: str, chunks: list[bytes]) -> Completion:
    """The whole answer the adapter streams for ``chunks``, assembled by the kernel; a stream
    that does not end within 10 s fails the test instead of hanging it."""
    async def main() -> Completion:
        provider = adapter(kind, chunks)
        try:
            with anyio.fail_after(10):
                return await _whole(provider.stream(REQUEST, MODEL), Step(MODEL))
        finally:
            await provider.aclose()
    return anyio.run(main)


def expected_usage(kind: str, src: Source) -> tuple[int, int]:
    if kind == "anthropic":
        return (src.input_tokens + src.cached + src.extra["cache_creation_input_tokens"],
                src.output_tokens)
    if kind == "gemini":
        return src.input_tokens, src.output_tokens + src.extra["thoughtsTokenCount"]
    return src.input_tokens, src.output_tokens


@st.composite
def streams(draw: st.DrawFn, kind: str) -> tuple[Source, list[Event], Framing, list[int]]:
    src = draw(sources(kind))
    events = EVENTS[kind](src)
    return (src, events, draw(framings(len(events))),
            draw(st.lists(st.integers(0, 10**6), max_size=40)))


@pytest.mark.parametrize("kind", KINDS)
@FUZZ
@given(data=st.data())
def test_a_stream_cut_anywhere_gives_back_the_answer_it_carries(kind: str,
                                                                data: st.DataObject) -> None:
    src, events, how, points = data.draw(streams(kind))
    body, _ = frame(events, how)
    completion = read(kind, pieces(body, points))
    assert (completion.content or "") == "".join(src.texts)
    got = completion.tool_calls or []
    assert [c["function"]["name"] for c in got] == [c.name for c in src.calls]
    assert [orjson.loads(c["function"]["arguments"]) for c in got] == \
        [c.arguments for c in src.calls]
    if kind == "gemini":  # Gemini sends no call ids: the adapter numbers them
        assert [c["id"] for c in got] == [f"call_{i}" for i in range(len(src.calls))]
    else:
        assert [c["id"] for c in got] == [c.id for c in src.calls]
        assert ["".join(c.pieces) if c.pieces and (kind == "openai" or c.arguments) else "{}"
                for c in src.calls] == [c["function"]["arguments"] for c in got]
    assert completion.finish_reason == src.finish
    usage = completion.usage
    assert (usage.input_tokens, usage.output_tokens) == expected_usage(kind, src)
    if kind != "openai":
        assert usage.cached_tokens == src.cached


# --- broken streams ----------------------------------------------------------------------------

ERRORS = {
    "openai": (None, {"error": {"message": "The server had an error", "type": "server_error",
                                "code": None}}),
    "anthropic": ("error", {"type": "error", "error": {"type": "overloaded_error",
                                                       "message": "Overloaded"}}),
    "gemini": (None, {"error": {"code": 500, "message": "Internal error",
                                "status": "INTERNAL"}}),
}
NOT_JSON = st.text(min_size=1, max_size=20).filter(
    lambda s: s.strip() and s.strip() != "[DONE]" and "\n" not in s and "\r" not in s
    and not _is_json(s))


def _is_json(text: str) -> bool:
    try:
        orjson.loads(text)
    except orjson.JSONDecodeError:
        return False
    return True


@pytest.mark.parametrize("kind", KINDS)
@FUZZ
@given(data=st.data())
def test_a_broken_stream_ends_in_stream_broken(kind: str, data: st.DataObject) -> None:
    src, events, how, points = data.draw(streams(kind))
    end = terminal(kind, events)
    where = data.draw(st.integers(0, end))
    damage = data.draw(st.sampled_from(["cut", "not json", "error event"]))
    if damage == "not json":
        events[where] = (events[where][0], data.draw(NOT_JSON).encode())
    elif damage == "error event":
        events.insert(where, ERRORS[kind])
        how.comments.insert(where, False)
        how.multiline.insert(where, False)
    body, ends = frame(events, how)
    if damage == "cut":  # anywhere before the finishing event is whole
        body = body[:data.draw(st.integers(0, ends[end] - 1))]
    with pytest.raises(StreamBroken):
        read(kind, pieces(body, points))


@pytest.mark.parametrize("kind", KINDS)
@FUZZ
@given(data=st.data())
def test_any_json_where_an_event_belongs_fails_cleanly_or_is_ignored(
        kind: str, data: st.DataObject) -> None:
    src, events, how, points = data.draw(streams(kind))
    where = data.draw(st.integers(0, len(events) - 1))
    junk = data.draw(st.one_of(JSON, _shaped(kind)))
    events[where] = (events[where][0], junk)
    body, _ = frame(events, how)
    try:
        read(kind, pieces(body, points))
    except TurnoutError:
        pass


def _shaped(kind: str) -> st.SearchStrategy[Any]:
    """Objects with the keys an event has, holding values of any type."""
    keys = {"openai": ["choices", "usage", "error", "object"],
            "anthropic": ["type", "message", "content_block", "delta", "index", "usage"],
            "gemini": ["candidates", "usageMetadata", "promptFeedback", "error"]}[kind]
    inner = {"openai": ["index", "delta", "finish_reason", "content", "tool_calls", "function",
                        "prompt_tokens"],
             "anthropic": ["type", "text", "partial_json", "stop_reason", "output_tokens",
                           "input_tokens", "usage", "id", "name"],
             "gemini": ["content", "parts", "text", "functionCall", "finishReason",
                        "promptTokenCount", "blockReason", "args"]}[kind]
    value = st.recursive(
        JSON, lambda v: st.one_of(st.lists(v, max_size=2),
                                  st.dictionaries(st.sampled_from(inner), v, max_size=3)),
        max_leaves=6)
    event_type = st.sampled_from(["message_start", "content_block_start", "content_block_delta",
                                  "content_block_stop", "message_delta", "ping"])
    return st.dictionaries(st.sampled_from(keys), st.one_of(value, event_type), min_size=1,
                           max_size=3)


@pytest.mark.parametrize(("kind", "event"), [
    ("openai", (None, {"choices": ["a string where a choice belongs"]})),
    ("openai", (None, {"choices": [], "usage": {"prompt_tokens": [1]}})),
    ("anthropic", ("content_block_start", {"type": "content_block_start", "content_block": "x"})),
    ("anthropic", ("message_delta", {"type": "message_delta", "delta": {"stop_reason": [1]}})),
    ("gemini", (None, {"candidates": [{"content": "x"}]})),
    ("gemini", (None, {"candidates": [{"finishReason": ["STOP"]}]})),
], ids=["openai-choice", "openai-usage", "anthropic-block", "anthropic-stop", "gemini-content",
        "gemini-finish"])
def test_an_event_of_the_wrong_shape_is_a_broken_stream(kind: str, event: Event) -> None:
    """Valid JSON of the wrong shape once leaked AttributeError or TypeError from the parser."""
    src = Source(texts=["hi"], calls=[], finish="stop", input_tokens=1, output_tokens=1,
                 extra={"cache_creation_input_tokens": 0, "thoughtsTokenCount": 0})
    events = EVENTS[kind](src)
    events.insert(len(events) - 1, event)
    body, _ = frame(events, Framing("\n", [False] * (len(events) + 1), [False] * len(events),
                                    True))
    with pytest.raises(StreamBroken, match="unexpected shape"):
        read(kind, [body])
