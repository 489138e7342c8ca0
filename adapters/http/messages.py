"""Anthropic's Messages API as a front door: ``POST /v1/messages`` and
``POST /v1/messages/count_tokens``.

An Anthropic client (the official SDK, a coding agent) points its base URL at Turnout and is
routed to any provider: the request is validated strictly in Anthropic's terms, translated to the
kernel's (OpenAI chat-shaped) request, answered through ``Kernel.ask`` / ``Kernel.ask_stream``
with the caller from the key, exactly like ``/v1/chat/completions`` (routed, budgeted, recorded),
and the answer translated back: a ``message`` object, or Anthropic's SSE events. Every error
leaves in Anthropic's shape, ``{"type": "error", "error": {"type", "message"}}``.

The key is read from ``x-api-key`` or ``Authorization: Bearer``. Translation mirrors the
Anthropic provider adapter (``adapters/providers/anthropic.py``), the other way round:

- ``system`` (a string or text blocks) becomes the system message; ``tool_use`` blocks in an
  assistant turn become ``tool_calls``; ``tool_result`` blocks in a user turn become ``tool``
  messages (``is_error`` kept as an ``Error:`` prefix of the text); images (base64 or URL)
  become ``image_url`` parts; ``cache_control`` marks (on blocks, tools or the whole request)
  are accepted and dropped.
- ``tools`` become function tools; ``tool_choice`` auto/any/tool/none becomes
  auto/required/named/none, ``disable_parallel_tool_use`` becomes ``parallel_tool_calls: false``.
- ``stop_sequences`` (at most 4, what every provider takes), ``temperature``, ``top_p`` and
  ``metadata.user_id`` (the request's user) are carried over.
- ``top_k`` is refused (400) unless a provider lists it in ``passthrough_params``, and then only
  that provider receives it: the other wire formats have no such field.
- ``thinking`` is refused (400) unless it is ``{"type": "disabled"}``; ``thinking`` blocks in
  the history are refused too. Server tools (``web_search``, ``bash``...) and ``document``
  blocks are refused naming what is taken instead.
- ``stop_reason`` comes from the kernel's finish reason: ``end_turn``, ``max_tokens``,
  ``tool_use`` or ``refusal``. The kernel does not say which stop sequence ended an answer, so
  ``stop_sequence`` is always null and an answer cut by one ends with ``end_turn``.

``count_tokens`` counts with the kernel's tokenizer (``kernel/tokens.py``) and calls no upstream.
"""

from __future__ import annotations

import re
import uuid
from typing import Any, Literal

import orjson
import structlog
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from starlette.requests import Request
from starlette.responses import Response

from turnout.kernel.errors import (
    AuthenticationFailed,
    BadRequest,
    TurnoutError,
    clip,
)
from turnout.kernel.request import (
    SchemaInvalid,
    check,
    check_one_of,
    check_schema,
    describe,
)
from turnout.kernel.tokens import count_request
from turnout.kernel.types import Answer, ChatRequest, Chunk, Completion

from . import app
from .parse import json_object
from .wire import error_json

log = structlog.get_logger("turnout.http")

PRIVATE_HEADERS = frozenset({"x-api-key"})
"""Request headers never handed to plugins, besides those chat completions keeps back."""

STRICT = ConfigDict(strict=True, extra="forbid")

# --- the request, in Anthropic's terms ---------------------------------------------------------


class TextBlock(BaseModel):
    model_config = STRICT
    type: Literal["text"]
    text: str
    cache_control: dict[str, Any] | None = None
    citations: list[dict[str, Any]] | None = None


class Base64Source(BaseModel):
    model_config = STRICT
    type: Literal["base64"]
    media_type: Literal["image/jpeg", "image/png", "image/gif", "image/webp"]
    data: str = Field(min_length=1)


class URLSource(BaseModel):
    model_config = STRICT
    type: Literal["url"]
    url: str = Field(min_length=1)


class ImageBlock(BaseModel):
    model_config = STRICT
    type: Literal["image"]
    source: dict[str, Any]
    cache_control: dict[str, Any] | None = None

    @field_validator("source")
    @classmethod
    def _source(cls, v: dict[str, Any]) -> dict[str, Any]:
        check_one_of({"base64": Base64Source, "url": URLSource}, v, "")
        return v


class ToolUseBlock(BaseModel):
    model_config = STRICT
    type: Literal["tool_use"]
    id: str = Field(min_length=1)
    name: str = Field(min_length=1)
    input: dict[str, Any]
    cache_control: dict[str, Any] | None = None


class ToolResultBlock(BaseModel):
    model_config = STRICT
    type: Literal["tool_result"]
    tool_use_id: str = Field(min_length=1)
    content: str | list[dict[str, Any]] | None = None
    is_error: bool | None = None
    cache_control: dict[str, Any] | None = None

    @field_validator("content")
    @classmethod
    def _text_only(cls, v: str | list[dict[str, Any]] | None) -> str | list[dict[str, Any]] | None:
        for i, block in enumerate(v if isinstance(v, list) else ()):
            if isinstance(block, dict) and block.get("type") == "image":
                raise ValueError(f"[{i}]: images inside a tool_result are not supported; put "
                                 "the image in an image block of the user turn instead")
            check_one_of({"text": TextBlock}, block, f"[{i}]")
        return v


BLOCKS: dict[str, type[BaseModel]] = {"text": TextBlock, "image": ImageBlock,
                                      "tool_use": ToolUseBlock, "tool_result": ToolResultBlock}
BLOCKS_BY_ROLE = {"user": ("text", "image", "tool_result"), "assistant": ("text", "tool_use")}
"""The content blocks each role may send here."""


class InputMessage(BaseModel):
    model_config = STRICT
    role: Literal["user", "assistant"]
    content: str | list[dict[str, Any]]

    @model_validator(mode="after")
    def _blocks_fit_the_role(self) -> "InputMessage":
        if isinstance(self.content, list):
            if not self.content:
                raise ValueError("content: give a string or at least one content block")
            for i, block in enumerate(self.content):
                check_one_of(BLOCKS, block, f"content[{i}]", BLOCKS_BY_ROLE[self.role])
        return self


class ToolDef(BaseModel):
    model_config = STRICT
    name: str = Field(pattern=r"^[a-zA-Z0-9_-]{1,64}$")
    description: str | None = None
    input_schema: dict[str, Any]
    type: Literal["custom"] | None = None
    cache_control: dict[str, Any] | None = None


class ToolChoice(BaseModel):
    model_config = STRICT
    type: Literal["auto", "any", "tool", "none"]
    name: str | None = None
    disable_parallel_tool_use: bool | None = None

    @model_validator(mode="after")
    def _named(self) -> "ToolChoice":
        if self.type == "tool" and not self.name:
            raise ValueError("a tool_choice of type 'tool' needs 'name'")
        return self


class Metadata(BaseModel):
    model_config = STRICT
    user_id: str | None = Field(default=None, max_length=256)


class Conversation(BaseModel):
    """What ``count_tokens`` takes: the model and the conversation."""

    model_config = STRICT
    model: str = Field(min_length=1)
    messages: list[InputMessage] = Field(min_length=1)
    system: str | list[TextBlock] | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: ToolChoice | None = None
    thinking: dict[str, Any] | None = None
    cache_control: dict[str, Any] | None = None

    @field_validator("tools")
    @classmethod
    def _tools(cls, v: list[dict[str, Any]] | None) -> list[dict[str, Any]] | None:
        for i, raw in enumerate(v or ()):
            kind = raw.get("type") if isinstance(raw, dict) else None
            if kind not in (None, "custom"):
                raise ValueError(f"[{i}].type: server tools ({clip(kind)}) are not supported; "
                                 "declare custom tools with name, description and input_schema")
            tool = check(ToolDef, raw, f"[{i}]")
            try:
                check_schema(tool.input_schema)
            except SchemaInvalid as exc:
                raise ValueError(f"[{i}].input_schema{exc.where} is not a valid JSON Schema: "
                                 f"{exc}") from None
        return v

    @field_validator("thinking")
    @classmethod
    def _thinking(cls, v: dict[str, Any] | None) -> dict[str, Any] | None:
        if v is not None and v != {"type": "disabled"}:
            raise ValueError("extended thinking is not supported through Turnout yet; leave "
                             "'thinking' out (or set it to {\"type\": \"disabled\"})")
        return v


class MessagesRequest(Conversation):
    """A Messages API request."""

    max_tokens: int = Field(ge=1)
    stop_sequences: list[str] | None = Field(default=None, max_length=4)
    stream: bool | None = None
    temperature: float | None = Field(default=None, ge=0, le=1)
    top_p: float | None = Field(default=None, ge=0, le=1)
    top_k: int | None = Field(default=None, ge=0)
    metadata: Metadata | None = None


def parse(body: bytes | bytearray, model: type[Conversation]) -> Conversation:
    """The request in ``body`` as ``model``; BadRequest says what is wrong and where."""
    data = json_object(body, "a JSON Messages API request")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        path, msg = _described(exc)
        raise BadRequest(f"{clip(path)}: {msg}." if path else f"{msg}.",
                         param=clip(path) or None) from None


_TYPE_TAGS = frozenset({"str", "int", "float", "bool", "list", "dict", "none"})
_PATH = re.compile(r"^[\w\[\]\.]+$")


def _described(exc: ValidationError) -> tuple[str, str]:
    """The deepest validation error as one path (``messages[0].content[1].type``) and what was
    expected: union branch tags are dropped from the path, and the path a nested check put at
    the start of its message is joined to it."""
    errors = exc.errors()
    error = dict(max(errors, key=lambda e: len(e["loc"])))  # a union's closest branch
    error["loc"] = tuple(p for p in error["loc"] if not isinstance(p, str) or (
        p not in _TYPE_TAGS and "[" not in p))
    path, msg = describe(error)
    while True:
        head, sep, rest = msg.partition(": ")
        if not sep or not _PATH.match(head):
            return path, msg
        path = f"{path}{head}" if head.startswith("[") or not path else f"{path}.{head}"
        msg = rest


# --- Anthropic's request as the kernel's -------------------------------------------------------


def to_chat_request(request: Conversation, *, passthrough: frozenset[str] = frozenset()
                    ) -> ChatRequest:
    """The kernel's chat request for an Anthropic one; ``passthrough`` is what some provider
    passes through (``top_k`` is refused unless it is there)."""
    messages: list[dict[str, Any]] = []
    system = request.system
    if isinstance(system, list):
        system = [{"type": "text", "text": b.text} for b in system if b.text]
        system = system[0]["text"] if len(system) == 1 else system
    if system:
        messages.append({"role": "system", "content": system})
    for message in request.messages:
        if isinstance(message.content, str):
            messages.append({"role": message.role, "content": message.content})
        elif message.role == "assistant":
            messages.append(_assistant(message.content))
        else:
            messages.extend(_user(message.content))
    data: dict[str, Any] = {"model": request.model, "messages": messages}
    if request.tools:
        data["tools"] = [_function(t) for t in request.tools]
        choice = request.tool_choice
        if choice is not None:
            data["tool_choice"] = {"auto": "auto", "any": "required", "none": "none"}.get(
                choice.type) or {"type": "function", "function": {"name": choice.name}}
            if choice.disable_parallel_tool_use:
                data["parallel_tool_calls"] = False
    if isinstance(request, MessagesRequest):
        data["max_tokens"] = request.max_tokens
        data["stream"] = bool(request.stream)
        for ours, theirs in (("stop", "stop_sequences"), ("temperature", "temperature"),
                             ("top_p", "top_p")):
            if getattr(request, theirs) is not None:
                data[ours] = getattr(request, theirs)
        if request.metadata is not None and request.metadata.user_id:
            data["user"] = request.metadata.user_id
        if request.top_k is not None:
            if "top_k" not in passthrough:
                raise BadRequest("top_k: not every provider Turnout routes to takes it, so it is "
                                 "refused; leave it out, or list it in a provider's "
                                 "providers.NAME.passthrough_params (only that provider then "
                                 "receives it).", param="top_k")
            data["top_k"] = request.top_k
    try:
        return ChatRequest.model_validate(data)
    except ValidationError as exc:  # checked above already; a slip still is the client's 400
        path, msg = describe(exc.errors()[0])
        raise BadRequest(f"{clip(path)}: {msg}.") from None


def _assistant(blocks: list[dict[str, Any]]) -> dict[str, Any]:
    texts = [b["text"] for b in blocks if b["type"] == "text" and b["text"]]
    calls = [{"id": b["id"], "type": "function",
              "function": {"name": b["name"], "arguments": orjson.dumps(b["input"]).decode()}}
             for b in blocks if b["type"] == "tool_use"]
    message: dict[str, Any] = {"role": "assistant",
                               "content": "\n\n".join(texts) if texts else None}
    if calls:
        message["tool_calls"] = calls
    return message


def _user(blocks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A user turn's blocks as messages, in order: tool results as tool messages, the rest as
    user messages of text and image parts."""
    out: list[dict[str, Any]] = []
    parts: list[dict[str, Any]] = []
    for block in blocks:
        if block["type"] == "tool_result":
            if parts:
                out.append({"role": "user", "content": parts})
                parts = []
            out.append({"role": "tool", "tool_call_id": block["tool_use_id"],
                        "content": _result_text(block)})
        elif block["type"] == "text":
            parts.append({"type": "text", "text": block["text"]})
        else:
            source = block["source"]
            url = source["url"] if source["type"] == "url" else \
                f"data:{source['media_type']};base64,{source['data']}"
            parts.append({"type": "image_url", "image_url": {"url": url}})
    if parts:
        out.append({"role": "user", "content": parts})
    return out


def _result_text(block: dict[str, Any]) -> str:
    content = block.get("content")
    text = content if isinstance(content, str) else \
        "\n".join(b["text"] for b in content or [])
    return f"Error: {text}" if block.get("is_error") else text


def _function(tool: dict[str, Any]) -> dict[str, Any]:
    fn: dict[str, Any] = {"name": tool["name"], "parameters": tool["input_schema"]}
    if tool.get("description"):
        fn["description"] = tool["description"]
    return {"type": "function", "function": fn}


# --- the kernel's answer, in Anthropic's terms -------------------------------------------------

STOP_REASONS = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use",
                "function_call": "tool_use", "content_filter": "refusal"}
"""The kernel's finish reasons as Anthropic's stop reasons."""


def message_id(request_id: str) -> str:
    """The ``msg_`` id of an answer, from the request id (its record's key)."""
    return "msg_" + request_id.removeprefix("req_")


def _tool_input(arguments: Any) -> dict[str, Any]:
    try:
        value = orjson.loads(arguments) if isinstance(arguments, str) else arguments
    except orjson.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}


def message_json(request_id: str, model: str, completion: Completion) -> dict[str, Any]:
    """A ``message`` object for a whole answer."""
    content: list[dict[str, Any]] = []
    text = completion.content or (completion.refusal if completion.content is None else "")
    if text:
        content.append({"type": "text", "text": text})
    for call in completion.tool_calls or []:
        fn = call.get("function") or {}
        content.append({"type": "tool_use", "id": call.get("id") or _tool_id(),
                        "name": fn.get("name", ""), "input": _tool_input(fn.get("arguments"))})
    return {"id": message_id(request_id), "type": "message", "role": "assistant",
            "model": model, "content": content,
            "stop_reason": STOP_REASONS.get(completion.finish_reason, "end_turn"),
            "stop_sequence": None,
            "usage": {"input_tokens": completion.usage.input_tokens,
                      "output_tokens": completion.usage.output_tokens}}


def _tool_id() -> str:
    return "toolu_" + uuid.uuid4().hex[:24]


ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 402: "billing_error",
               403: "permission_error", 404: "not_found_error", 413: "request_too_large",
               429: "rate_limit_error", 503: "overloaded_error", 504: "timeout_error"}
"""Anthropic's error type for a status; other 4xx are ``invalid_request_error``, other 5xx
``api_error``."""


def error_body(error: TurnoutError, request_id: str | None = None) -> dict[str, Any]:
    """Anthropic's error body for ``error``, its message scrubbed like every error the API
    sends (:func:`~turnout.adapters.http.wire.error_json`)."""
    message = error_json(error)["error"]["message"]
    kind = ERROR_TYPES.get(error.status) or ("api_error" if error.status >= 500
                                             else "invalid_request_error")
    body: dict[str, Any] = {"type": "error", "error": {"type": kind, "message": message}}
    if request_id:
        body["request_id"] = request_id
    return body


def error_response(error: TurnoutError, request_id: str | None = None,
                   headers: dict[str, str] | None = None) -> Response:
    """Anthropic's JSON error with its status, x-request-id and Retry-After for rate limits."""
    return app.error_response(error, request_id, headers,
                              body=orjson.dumps(error_body(error, request_id)))


def _sse(event: str, data: dict[str, Any]) -> bytes:
    return b"event: " + event.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


class EventFramer:
    """Turns kernel chunks into Anthropic's SSE events for one answer: ``message_start`` and
    ``ping`` before the first content, a ``content_block_start`` / ``content_block_delta``... /
    ``content_block_stop`` run per text or tool_use block, then ``message_delta`` (stop reason,
    usage) and ``message_stop``; a failure is an ``error`` event."""

    def __init__(self, request_id: str, model: str, input_tokens: int) -> None:
        self.request_id = request_id
        self.model = model
        self.input_tokens = input_tokens
        self.started = False
        self.blocks = 0             # content blocks opened so far
        self.open: str | None = None  # the open block's kind: text or tool_use
        self.tools: dict[int, int] = {}  # the kernel's tool call index -> content block index
        self.stop_reason = "end_turn"
        self.output_tokens = 0

    def frame(self, chunk: Chunk) -> bytes:
        out: list[bytes] = []
        if not self.started:
            self.started = True
            out += [_sse("message_start", {"type": "message_start", "message": {
                "id": message_id(self.request_id), "type": "message", "role": "assistant",
                "model": self.model, "content": [], "stop_reason": None, "stop_sequence": None,
                "usage": {"input_tokens": self.input_tokens, "output_tokens": 0}}}),
                _sse("ping", {"type": "ping"})]
        if chunk.usage is not None:
            self.input_tokens = chunk.usage.input_tokens or self.input_tokens
            self.output_tokens = chunk.usage.output_tokens
        if chunk.content:
            if self.open != "text":
                out += self._start({"type": "text", "text": ""})
            out.append(self._delta({"type": "text_delta", "text": chunk.content}))
        for call in chunk.tool_calls or ():
            fn = call.get("function") or {}
            index = call.get("index", 0)
            if index not in self.tools:
                out += self._start({"type": "tool_use", "id": call.get("id") or _tool_id(),
                                    "name": fn.get("name") or "", "input": {}})
                self.tools[index] = self.blocks - 1
            if fn.get("arguments"):
                out.append(self._delta({"type": "input_json_delta",
                                        "partial_json": fn["arguments"]}, self.tools[index]))
        if chunk.finish_reason:
            self.stop_reason = STOP_REASONS.get(chunk.finish_reason, "end_turn")
        return b"".join(out)

    def end(self) -> bytes:
        """The open block's stop, ``message_delta`` and ``message_stop``."""
        out = [self.frame(Chunk())] if not self.started else []
        out += self._stop()
        out.append(_sse("message_delta", {
            "type": "message_delta",
            "delta": {"stop_reason": self.stop_reason, "stop_sequence": None},
            "usage": {"input_tokens": self.input_tokens, "output_tokens": self.output_tokens}}))
        out.append(_sse("message_stop", {"type": "message_stop"}))
        return b"".join(out)

    def error(self, error: TurnoutError) -> bytes:
        """An ``error`` event (scrubbed); the stream ends after it, without ``message_stop``."""
        return _sse("error", error_body(error, self.request_id))

    def _start(self, block: dict[str, Any]) -> list[bytes]:
        out = self._stop()
        out.append(_sse("content_block_start", {"type": "content_block_start",
                                                "index": self.blocks, "content_block": block}))
        self.blocks += 1
        self.open = block["type"]
        return out

    def _stop(self) -> list[bytes]:
        if self.open is None:
            return []
        self.open = None
        return [_sse("content_block_stop", {"type": "content_block_stop",
                                            "index": self.blocks - 1})]

    def _delta(self, delta: dict[str, Any], index: int | None = None) -> bytes:
        return _sse("content_block_delta", {"type": "content_block_delta",
                                            "index": self.blocks - 1 if index is None else index,
                                            "delta": delta})


# --- the endpoints -----------------------------------------------------------------------------


class MessagesAPI:
    """The Messages API handlers, served by the gateway ``gateway`` (its kernel, keys and body
    limits)."""

    def __init__(self, gateway: "app.Gateway") -> None:
        self.gateway = gateway
        self.kernel = gateway.kernel

    async def create(self, http: Request) -> Response:
        """``POST /v1/messages``: an answer as a ``message``, or Anthropic's SSE events."""
        request_id, explain = app.begin(http)
        try:
            key = await self.authenticate(http)
            asked = parse(await self.gateway._body(http), MessagesRequest)
            request = to_chat_request(asked, passthrough=self.kernel.wiring.passthrough)
            headers, caller = app.who_asked(http, key, request.user, PRIVATE_HEADERS)
            if request.stream:
                chunks = await self.kernel.ask_stream(request, caller=caller, headers=headers,
                                                      request_id=request_id)
                answer = chunks.answer
                framer = EventFramer(request_id, answer.model or "", count_request(request))
                sent = app.answer_headers(answer, explain)
                sent.pop(app.COST_HEADER)
                return app.EventStream(chunks, framer, {**sent, "cache-control": "no-cache"})
            answer = await self.kernel.ask(request, caller=caller, headers=headers,
                                           request_id=request_id)
        except TurnoutError as exc:
            account: Answer | None = getattr(exc, "answer", None)
            return error_response(exc, request_id,
                                  app.answer_headers(account, explain) if account else None)
        except Exception as exc:  # noqa: BLE001 - the last guard: never a traceback to the client
            return self._internal(exc, request_id)
        body = message_json(request_id, answer.model or "", answer.completion or Completion(None))
        return Response(orjson.dumps(body), media_type="application/json",
                        headers=app.answer_headers(answer, explain))

    async def count_tokens(self, http: Request) -> Response:
        """``POST /v1/messages/count_tokens``: ``{"input_tokens": n}`` by the kernel's
        tokenizer; the model must be one the gateway serves; no upstream is called."""
        try:
            await self.authenticate(http)
            asked = parse(await self.gateway._body(http), Conversation)
            request = to_chat_request(asked)
            self.kernel.context(request)  # an unknown model is a 404, as Anthropic's
        except TurnoutError as exc:
            return error_response(exc)
        except Exception as exc:  # noqa: BLE001 - the last guard: never a traceback to the client
            return self._internal(exc, None)
        return Response(orjson.dumps({"input_tokens": count_request(request)}),
                        media_type="application/json")

    async def authenticate(self, http: Request):
        """The key sent as ``x-api-key`` (or ``Authorization: Bearer``), checked like chat's;
        a failure is logged and counted as there."""
        api_key = (http.headers.get("x-api-key") or "").strip()
        authorization = f"Bearer {api_key}" if api_key else http.headers.get("authorization")
        try:
            return await self.gateway.keys.check(authorization)
        except AuthenticationFailed as exc:
            self.kernel.counters["auth_failed"] += 1
            log.warning("auth_failed", reason=exc.message, path=http.url.path,
                        peer=http.client.host if http.client else None)
            if not authorization:
                raise AuthenticationFailed("Missing API key: send it as 'x-api-key: YOUR_KEY' "
                                           "(or 'Authorization: Bearer YOUR_KEY').") from None
            raise

    @staticmethod
    def _internal(exc: BaseException, request_id: str | None) -> Response:
        log.error("internal_error", error_type=type(exc).__name__, error=str(exc), exc_info=exc)
        return error_response(TurnoutError(
            "The gateway failed unexpectedly; the request id is in x-request-id. See the "
            "gateway log for details."), request_id)
