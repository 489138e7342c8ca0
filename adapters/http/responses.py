"""``POST /v1/responses``: OpenAI's Responses API, served through the same kernel as chat.

A Responses request is translated at the edge into the kernel's chat-shaped request and answered
by ``Kernel.ask`` / ``Kernel.ask_stream``, so it is routed, budgeted, rate limited and recorded
exactly like a chat completion, and reaches every provider kind through that kind's own
translation. What is translated:

- ``input``: a string (one user message) or a list of items: messages (``role`` user, system,
  developer or assistant; content a string or ``input_text``/``input_image``/``input_file``
  parts, ``output_text``/``refusal`` parts for the assistant), ``function_call`` items (the
  assistant's tool calls) and ``function_call_output`` items (tool messages).
- ``instructions``: a system message first (not carried to follow-up turns, as OpenAI does).
- ``tools`` of ``type: function`` become chat tools; built-in tools (``web_search``,
  ``file_search``, ...) are refused with a 400 naming them. ``tool_choice`` likewise.
- ``text.format`` (``text``, ``json_object``, ``json_schema``) becomes ``response_format``.
- ``max_output_tokens``, ``temperature``, ``top_p``, ``user``, ``parallel_tool_calls``,
  ``service_tier`` and ``reasoning.effort`` map to their chat fields; ``metadata`` is echoed on
  the response; ``truncation``, ``include`` (empty) and ``stream_options`` are accepted and have
  no effect; ``background`` responses and ``text.verbosity`` are refused.
- ``previous_response_id``: the conversation of a stored response (its input and its output) is
  put before the new input. Responses are kept (unless ``store`` is false) in the kernel's store
  under ``responses:<id>`` for ``STORE_TTL_S``, so any replica sharing the store (Redis) can
  continue a conversation, and any model may answer the next turn. A stored response can only be
  continued with the gateway key that made it.

Answers are Response objects; streams are the Responses API's typed SSE events
(``response.created`` ... ``response.completed``), and a failure after the first byte is an
``error`` event followed by ``response.failed``, never a quiet end. Bad input is a 400 in
OpenAI's error format before any routing or upstream call.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any, Literal

import orjson
import structlog
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.requests import Request
from starlette.responses import Response

from turnout.kernel.errors import BadRequest, TurnoutError, clip
from turnout.kernel.request import describe
from turnout.kernel.types import ChatRequest, Chunk, Completion, Usage

from .parse import json_object
from .streaming import ClosingStream
from .wire import error_json

if TYPE_CHECKING:
    from turnout.kernel.kernel import Answer, AnswerStream

    from .app import Gateway

log = structlog.get_logger("turnout.http.responses")

STORE_TTL_S = 30 * 24 * 3600.0
"""How long a stored response can be continued with ``previous_response_id``: 30 days, as
OpenAI keeps responses."""

STORE_PREFIX = "responses:"
"""Key prefix of stored responses in the kernel's store."""

BUILTIN_TOOLS = ("web_search", "web_search_preview", "file_search", "computer_use_preview",
                 "code_interpreter", "image_generation", "mcp", "local_shell", "shell",
                 "custom", "apply_patch")
"""Tool types OpenAI runs on its own side; the gateway serves function tools only."""

STRICT = ConfigDict(strict=True, extra="forbid")


class ResponsesRequest(BaseModel):
    """A Responses API request as the edge accepts it (types exactly as OpenAI defines them)."""

    model_config = STRICT

    model: str = Field(min_length=1)
    input: Any
    instructions: str | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: Any = None
    parallel_tool_calls: bool | None = None
    text: dict[str, Any] | None = None
    max_output_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    user: str | None = None
    metadata: dict[str, str] | None = None
    store: bool | None = None
    previous_response_id: str | None = Field(default=None, min_length=1)
    stream: bool | None = None
    stream_options: dict[str, Any] | None = None
    service_tier: str | None = None
    reasoning: dict[str, Any] | None = None
    truncation: Literal["auto", "disabled"] | None = None
    include: list[str] | None = None
    background: bool | None = None


class PreviousResponseNotFound(BadRequest):
    """``previous_response_id`` names no response this key can continue (400, as OpenAI)."""

    code = "previous_response_not_found"


def refuse(message: str, param: str | None) -> BadRequest:
    return BadRequest(message, param=clip(param) if param else None)


def parse_responses(body: bytes | bytearray) -> ResponsesRequest:
    """The Responses request in ``body``; BadRequest says what is wrong and where."""
    data = json_object(body, 'a JSON Responses API request ({"model": "...", "input": "..."})')
    try:
        request = ResponsesRequest.model_validate(data)
    except ValidationError as exc:
        param, msg = describe(exc.errors()[0])
        if msg == "unknown field" and "." not in param:
            raise refuse(f"Unrecognized request argument supplied: {clip(param)}.", param) \
                from None
        raise refuse(f"Invalid value for '{clip(param)}': {msg}.", param) from None
    if request.background:
        raise refuse("Background responses are not served by the gateway; leave 'background' "
                     "unset or false.", "background")
    if request.include:
        raise refuse(f"Invalid value for 'include': the gateway adds no extra output "
                     f"({clip(request.include[0])}); send an empty list or leave it out.",
                     "include")
    return request


# --- input items → chat messages ---------------------------------------------------------------

PART_ROLES = {"input_text": ("user", "system", "developer", "assistant"),
              "input_image": ("user",), "input_file": ("user",),
              "output_text": ("assistant",), "refusal": ("assistant",)}
"""The content parts each role may send."""


def _text_of(part: dict, where: str, key: str = "text") -> str:
    value = part.get(key)
    if not isinstance(value, str):
        raise refuse(f"Invalid value for '{where}.{key}': expected a string "
                     f"(got {clip(repr(value))}).", f"{where}.{key}")
    return value


def chat_part(part: Any, role: str, where: str) -> dict:
    """One Responses content part as a chat content part."""
    kind = part.get("type") if isinstance(part, dict) else None
    if kind not in PART_ROLES or role not in PART_ROLES[kind]:
        allowed = [k for k, roles in PART_ROLES.items() if role in roles]
        raise refuse(f"Invalid value for '{where}.type': a '{role}' message takes "
                     f"{', '.join(map(repr, allowed))} parts (got {clip(repr(kind))}).",
                     f"{where}.type")
    if kind in ("input_text", "output_text"):
        return {"type": "text", "text": _text_of(part, where)}
    if kind == "refusal":
        return {"type": "refusal", "refusal": _text_of(part, where, "refusal")}
    if kind == "input_image":
        url = part.get("image_url")
        if not isinstance(url, str) or not url:
            raise refuse(f"Invalid value for '{where}.image_url': send the image as a URL or a "
                         "data: URL (the gateway keeps no uploaded files, so file_id is not "
                         "served).", f"{where}.image_url")
        image = {"url": url}
        if part.get("detail") is not None:
            image["detail"] = part["detail"]
        return {"type": "image_url", "image_url": image}
    file = {k: part[k] for k in ("file_data", "file_id", "filename") if part.get(k) is not None}
    if part.get("file_url") is not None or not file:
        raise refuse(f"Invalid value for '{where}': send the file as 'file_data' (base64) with "
                     "'filename', or a 'file_id'; 'file_url' is not served.", where)
    return {"type": "file", "file": file}


ITEM_FIELDS = {"message": {"type", "role", "content", "id", "status"},
               "function_call": {"type", "call_id", "name", "arguments", "id", "status"},
               "function_call_output": {"type", "call_id", "output", "id", "status"}}
"""The fields each input item may carry."""


def chat_messages(items: Any) -> list[dict]:
    """The ``input`` of a Responses request as chat messages: consecutive function calls (and
    the assistant text before them) form one assistant message with ``tool_calls``."""
    if isinstance(items, str):
        return [{"role": "user", "content": items}]
    if not isinstance(items, list) or not items:
        raise refuse(f"Invalid value for 'input': send a string or a non-empty list of items "
                     f"(got {clip(repr(items))}).", "input")
    messages: list[dict] = []
    for i, item in enumerate(items):
        where = f"input[{i}]"
        if not isinstance(item, dict):
            raise refuse(f"Invalid value for '{where}': expected an object (got "
                         f"{clip(repr(item))}).", where)
        kind = item.get("type", "message")
        extra = sorted(set(item) - ITEM_FIELDS.get(kind, set(item)))
        if extra:
            raise refuse(f"Invalid value for '{where}.{clip(extra[0])}': unknown field.",
                         f"{where}.{extra[0]}")
        if kind == "message":
            messages.append(_message(item, where))
        elif kind == "function_call":
            call = {"id": _text_of(item, where, "call_id"), "type": "function",
                    "function": {"name": _text_of(item, where, "name"),
                                 "arguments": _text_of(item, where, "arguments")}}
            last = messages[-1] if messages else None
            if last is not None and last["role"] == "assistant" and "refusal" not in last:
                last.setdefault("tool_calls", []).append(call)
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            messages.append({"role": "tool", "tool_call_id": _text_of(item, where, "call_id"),
                             "content": _tool_output(item.get("output"), where)})
        else:
            raise refuse(f"Invalid value for '{where}.type': the gateway takes 'message', "
                         f"'function_call' and 'function_call_output' items (got "
                         f"{clip(repr(kind))}).", f"{where}.type")
    return messages


def _message(item: dict, where: str) -> dict:
    role = item.get("role")
    if role not in ("user", "system", "developer", "assistant"):
        raise refuse(f"Invalid value for '{where}.role': expected 'user', 'system', 'developer' "
                     f"or 'assistant' (got {clip(repr(role))}).", f"{where}.role")
    content = item.get("content")
    if isinstance(content, str):
        return {"role": role, "content": content}
    if not isinstance(content, list):
        raise refuse(f"Invalid value for '{where}.content': expected a string or a list of "
                     f"content parts (got {clip(repr(content))}).", f"{where}.content")
    parts = [chat_part(p, role, f"{where}.content[{j}]") for j, p in enumerate(content)]
    refusals = [p["refusal"] for p in parts if p["type"] == "refusal"]
    if refusals:  # chat keeps an assistant's refusal beside its content, not as a part
        texts = [p for p in parts if p["type"] != "refusal"]
        return {"role": role, "content": texts or None, "refusal": "\n".join(refusals)}
    return {"role": role, "content": parts}


def _tool_output(output: Any, where: str) -> str:
    if isinstance(output, str):
        return output
    if isinstance(output, list) and all(isinstance(p, dict) and p.get("type") == "input_text"
                                        for p in output):
        return "\n".join(_text_of(p, f"{where}.output[{j}]") for j, p in enumerate(output))
    raise refuse(f"Invalid value for '{where}.output': expected a string or a list of "
                 "'input_text' parts (a tool's images or files are not served).",
                 f"{where}.output")


# --- tools, tool choice, text format ------------------------------------------------------------


def chat_tools(tools: list[dict[str, Any]]) -> list[dict]:
    out = []
    for i, tool in enumerate(tools):
        kind = tool.get("type")
        if kind != "function":
            hint = "it runs on OpenAI's side, which the gateway is not" \
                if kind in BUILTIN_TOOLS else "the gateway serves function tools only"
            raise refuse(f"Invalid value for 'tools[{i}].type': tool type {clip(repr(kind))} is "
                         f"not served ({hint}); define it as a 'function' tool your code runs.",
                         f"tools[{i}].type")
        extra = sorted(set(tool) - {"type", "name", "description", "parameters", "strict"})
        if extra:
            raise refuse(f"Invalid value for 'tools[{i}].{clip(extra[0])}': unknown field.",
                         f"tools[{i}].{extra[0]}")
        out.append({"type": "function",
                    "function": {k: tool[k] for k in ("name", "description", "parameters",
                                                      "strict") if tool.get(k) is not None}})
    return out


def chat_tool_choice(choice: Any) -> str | dict:
    if choice in ("none", "auto", "required"):
        return choice
    if isinstance(choice, dict) and choice.get("type") == "function" \
            and isinstance(choice.get("name"), str) and set(choice) == {"type", "name"}:
        return {"type": "function", "function": {"name": choice["name"]}}
    raise refuse("Invalid value for 'tool_choice': expected 'none', 'auto', 'required' or "
                 '{"type": "function", "name": "..."} (built-in tools are not served).',
                 "tool_choice")


def chat_format(text: dict[str, Any]) -> dict | None:
    extra = sorted(set(text) - {"format", "verbosity"})
    if extra:
        raise refuse(f"Invalid value for 'text.{clip(extra[0])}': unknown field.",
                     f"text.{extra[0]}")
    if text.get("verbosity") is not None:
        raise refuse("Invalid value for 'text.verbosity': not served by the gateway (no provider "
                     "kind has an equivalent); leave it out.", "text.verbosity")
    fmt = text.get("format")
    if fmt is None:
        return None
    if not isinstance(fmt, dict):
        raise refuse("Invalid value for 'text.format': expected an object with 'type' 'text', "
                     "'json_object' or 'json_schema'.", "text.format")
    if fmt.get("type") != "json_schema":
        return dict(fmt)
    schema = {k: fmt[k] for k in ("name", "schema", "strict", "description") if k in fmt}
    extra = sorted(set(fmt) - {"type", *schema})
    if extra:
        raise refuse(f"Invalid value for 'text.format.{clip(extra[0])}': unknown field.",
                     f"text.format.{extra[0]}")
    return {"type": "json_schema", "json_schema": schema}


def chat_request(request: ResponsesRequest, history: list[dict]) -> tuple[ChatRequest, list[dict]]:
    """The kernel's request for ``request`` after the stored ``history``, and the new turn's
    messages (what a follow-up continues, without the instructions)."""
    turn = chat_messages(request.input)
    messages = ([{"role": "system", "content": request.instructions}]
                if request.instructions else []) + history + turn
    fields: dict[str, Any] = {"model": request.model, "messages": messages}
    for name, value in (("max_completion_tokens", request.max_output_tokens),
                        ("temperature", request.temperature), ("top_p", request.top_p),
                        ("user", request.user), ("parallel_tool_calls", request.parallel_tool_calls),
                        ("service_tier", request.service_tier)):
        if value is not None:
            fields[name] = value
    if request.tools:
        fields["tools"] = chat_tools(request.tools)
    if request.tool_choice is not None:
        fields["tool_choice"] = chat_tool_choice(request.tool_choice)
    if request.text:
        fmt = chat_format(request.text)
        if fmt is not None:
            fields["response_format"] = fmt
    effort = (request.reasoning or {}).get("effort")
    if effort is not None:
        fields["reasoning_effort"] = effort
    try:
        return ChatRequest.model_validate(fields), turn
    except ValidationError as exc:
        param, msg = describe(exc.errors()[0])
        inner = INNER_PATH.match(msg)
        if inner:  # a nested check names its path in the message: move it to the param
            sub = inner.group(1)
            param += sub if sub[0] in ".[" else "." + sub
            msg = msg[len(sub):].removeprefix(": ").lstrip().removeprefix("is ")
        param = responses_path(param)
        raise refuse(f"Invalid value for '{clip(param)}': {msg}.", param) from None


INNER_PATH = re.compile(r"^([\w.\[\]-]+?)(?=: | is not a valid JSON Schema)")
"""The path a nested check puts at the start of its message (``[0].function.name: ...``)."""

CHAT_PATHS = [(re.compile(p), r) for p, r in (
    (r"^tools(\[\d+\])\.function", r"tools\1"),
    (r"^tool_choice\.function", "tool_choice"),
    (r"^response_format\.json_schema", "text.format"),
    (r"^response_format", "text.format"),
    (r"^messages.*", "input"),
    (r"^max_completion_tokens", "max_output_tokens"),
    (r"^reasoning_effort", "reasoning.effort"),
)]
"""Where a chat field came from in the Responses request, for error messages."""


def responses_path(path: str) -> str:
    """A path in the kernel's chat request as the path the client sent."""
    for pattern, replacement in CHAT_PATHS:
        path, found = pattern.subn(replacement, path, count=1)
        if found:
            break
    return path


# --- the response object -----------------------------------------------------------------------


def response_id(request_id: str) -> str:
    """The response's id: the request's own (its record row), as ``resp_...``."""
    return "resp_" + request_id.removeprefix("req_")


def item_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


def usage_json(usage: Usage | None) -> dict:
    usage = usage or Usage()
    details = usage.details or {}
    cached = (details.get("prompt_tokens_details") or {}).get("cached_tokens") or 0
    reasoning = (details.get("completion_tokens_details") or {}).get("reasoning_tokens") or 0
    return {"input_tokens": usage.input_tokens, "output_tokens": usage.output_tokens,
            "total_tokens": usage.total_tokens,
            "input_tokens_details": {"cached_tokens": cached},
            "output_tokens_details": {"reasoning_tokens": reasoning}}


def message_item(text: str | None, refusal: str | None, status: str = "completed",
                 id: str | None = None) -> dict:
    content = []
    if text:
        content.append({"type": "output_text", "text": text, "annotations": [], "logprobs": []})
    if refusal:
        content.append({"type": "refusal", "refusal": refusal})
    return {"type": "message", "id": id or item_id("msg"), "role": "assistant",
            "status": status, "content": content}


def call_item(call: dict, status: str = "completed", id: str | None = None) -> dict:
    function = call.get("function") or {}
    return {"type": "function_call", "id": id or item_id("fc"), "call_id": call.get("id") or "",
            "name": function.get("name") or "", "arguments": function.get("arguments") or "",
            "status": status}


def output_items(completion: Completion) -> list[dict]:
    items = [message_item(completion.content, completion.refusal)] \
        if completion.content or completion.refusal else []
    return items + [call_item(c) for c in completion.tool_calls or ()]


INCOMPLETE = {"length": "max_output_tokens", "content_filter": "content_filter"}
"""Chat finish reasons that make a response ``incomplete``, and the reason it gives."""


def response_json(request: ResponsesRequest, rid: str, created: float, model: str,
                  output: list[dict], status: str, usage: Usage | None,
                  finish: str | None = None, error: dict | None = None) -> dict:
    """A Response object as OpenAI's SDK reads it."""
    if status == "completed" and finish in INCOMPLETE:
        status = "incomplete"
    tools = [{"strict": True, **t} for t in request.tools or ()]
    optional = {"user": request.user, "reasoning": request.reasoning,
                "service_tier": request.service_tier,
                "usage": usage_json(usage) if status not in ("in_progress", "failed") or usage
                else None}
    return {**{k: v for k, v in optional.items() if v is not None},
        "id": rid, "object": "response", "created_at": int(created), "status": status,
        "error": error, "model": model, "output": output,
        "incomplete_details": {"reason": INCOMPLETE[finish]} if status == "incomplete" else None,
        "instructions": request.instructions, "metadata": request.metadata or {},
        "parallel_tool_calls": request.parallel_tool_calls is not False,
        "temperature": request.temperature, "top_p": request.top_p,
        "tool_choice": request.tool_choice if request.tool_choice is not None else "auto",
        "tools": tools, "text": request.text or {"format": {"type": "text"}},
        "max_output_tokens": request.max_output_tokens,
        "previous_response_id": request.previous_response_id,
        "store": request.store is not False, "truncation": request.truncation or "disabled",
        "background": False,
    }


def assistant_message(output: list[dict]) -> list[dict]:
    """The output items as the chat message a follow-up turn continues."""
    text = "".join(p["text"] for item in output if item["type"] == "message"
                   for p in item["content"] if p["type"] == "output_text")
    refusal = "".join(p["refusal"] for item in output if item["type"] == "message"
                      for p in item["content"] if p["type"] == "refusal")
    calls = [{"id": item["call_id"], "type": "function",
              "function": {"name": item["name"], "arguments": item["arguments"]}}
             for item in output if item["type"] == "function_call"]
    if not text and not refusal and not calls:
        return []
    message: dict[str, Any] = {"role": "assistant", "content": text or None}
    if refusal:
        message["refusal"] = refusal
    if calls:
        message["tool_calls"] = calls
    return [message]


# --- the endpoint ------------------------------------------------------------------------------


class ResponsesAPI:
    """``POST /v1/responses`` over a :class:`~turnout.adapters.http.app.Gateway` (its keys,
    body limits, headers and error format)."""

    def __init__(self, gateway: "Gateway") -> None:
        self.gateway = gateway
        self.kernel = gateway.kernel

    async def create(self, http: Request) -> Response:
        from . import app as api  # the API module imports this one

        request_id, explain = api.begin(http)
        try:
            key = await self.gateway.authenticate(http)
            request = parse_responses(await self.gateway._body(http))
            owner = key.name if key else None
            history = await self.history(request.previous_response_id, owner)
            chat, turn = chat_request(request, history)
            headers, caller = api.who_asked(http, key, request.user)
            conversation = Conversation(self, request, response_id(request_id), owner,
                                        history + turn)
            if request.stream:
                chunks = await self.kernel.ask_stream(chat, caller=caller, headers=headers,
                                                      request_id=request_id)
                out = dict(api.answer_headers(chunks.answer, explain))
                out.pop(api.COST_HEADER)
                return ResponseEvents(chunks, conversation, out)
            answer = await self.kernel.ask(chat, caller=caller, headers=headers,
                                           request_id=request_id)
            body = await conversation.finish(answer.model or chat.model,
                                             output_items(answer.completion), "completed",
                                             answer.completion.usage,
                                             answer.completion.finish_reason)
        except TurnoutError as exc:
            account = getattr(exc, "answer", None)
            return api.error_response(exc, request_id,
                                      api.answer_headers(account, explain) if account else None)
        except Exception as exc:  # noqa: BLE001 - the last guard: never a traceback to the client
            return api.internal_error(exc, request_id)
        return Response(orjson.dumps(body), media_type="application/json",
                        headers=api.answer_headers(answer, explain))

    async def history(self, previous: str | None, owner: str | None) -> list[dict]:
        """The chat messages of the stored response ``previous`` (its input and its output)."""
        if previous is None:
            return []
        raw = await self.kernel.store.get(STORE_PREFIX + previous)
        stored = orjson.loads(raw) if raw is not None else None
        if stored is None or stored.get("owner") != owner:
            raise PreviousResponseNotFound(
                f"Previous response with id '{clip(previous)}' not found. It may have expired "
                f"(responses are kept {STORE_TTL_S / 86400:g} days), been made with "
                "store=false or with another key; send the whole conversation as 'input' "
                "instead.", param="previous_response_id")
        return stored["messages"]


class Conversation:
    """One response's conversation: builds its Response object and, unless ``store`` is false,
    keeps it for follow-ups. A store that fails is logged; the answer still goes out."""

    def __init__(self, api: ResponsesAPI, request: ResponsesRequest, rid: str,
                 owner: str | None, messages: list[dict]) -> None:
        self.api, self.request, self.id, self.owner = api, request, rid, owner
        self.messages = messages
        self.created = time.time()

    def json(self, model: str, output: list[dict], status: str, usage: Usage | None = None,
             finish: str | None = None, error: dict | None = None) -> dict:
        return response_json(self.request, self.id, self.created, model, output, status, usage,
                             finish, error)

    async def finish(self, model: str, output: list[dict], status: str, usage: Usage | None,
                     finish: str | None) -> dict:
        if self.request.store is not False:
            value = orjson.dumps({"owner": self.owner,
                                  "messages": self.messages + assistant_message(output)})
            try:
                await self.api.kernel.store.set(STORE_PREFIX + self.id, value, ttl_s=STORE_TTL_S)
            except Exception as exc:  # noqa: BLE001 - the answer was paid for: it still goes out
                log.warning("response_not_stored", response_id=self.id,
                            error_type=type(exc).__name__, error=str(exc))
        return self.json(model, output, status, usage, finish)


class ResponseEvents(ClosingStream):
    """A response streamed as the Responses API's typed SSE events (the kernel's stream closed
    however it ends)."""

    def __init__(self, chunks: "AnswerStream", conversation: Conversation,
                 headers: dict[str, str]) -> None:
        super().__init__(self._events(chunks, conversation), chunks,
                         {**headers, "cache-control": "no-cache"})

    @staticmethod
    async def _events(chunks: "AnswerStream", conversation: Conversation) -> AsyncIterator[bytes]:
        events = EventBuilder(conversation, chunks.answer)
        for frame in events.start():
            yield frame
        try:
            async for chunk in chunks:
                for frame in events.chunk(chunk):
                    yield frame
        except Exception as exc:  # noqa: BLE001 - an explicit error event, never a quiet end
            error = exc if isinstance(exc, TurnoutError) else \
                TurnoutError("The gateway failed while streaming.")
            if not isinstance(exc, TurnoutError):
                log.error("stream_failed", error_type=type(exc).__name__, exc_info=exc)
            for frame in events.fail(error, chunks.answer):
                yield frame
            return
        for frame in await events.end(chunks.answer):
            yield frame


class EventBuilder:
    """Kernel chunks in, Responses API events out, each with its ``sequence_number``."""

    def __init__(self, conversation: Conversation, answer: "Answer") -> None:
        self.conversation = conversation
        self.model = answer.model or conversation.request.model
        self.seq = 0
        self.output: list[dict] = []
        self.message: dict | None = None
        self.calls: dict[int, int] = {}
        """A chat tool call's index → its item's place in ``output``."""
        self.usage: Usage | None = None
        self.finish: str | None = None

    def event(self, kind: str, **fields: Any) -> bytes:
        body = {"type": kind, "sequence_number": self.seq, **fields}
        self.seq += 1
        return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(body) + b"\n\n"

    def start(self) -> list[bytes]:
        snapshot = self.conversation.json(self.model, [], "in_progress")
        return [self.event("response.created", response=snapshot),
                self.event("response.in_progress", response=snapshot)]

    def chunk(self, chunk: Chunk) -> list[bytes]:
        frames: list[bytes] = []
        if chunk.usage is not None:
            self.usage = chunk.usage
        if chunk.finish_reason is not None:
            self.finish = chunk.finish_reason
        if chunk.content:
            if self.message is None:
                frames += self._open_message()
            part = self.message["content"][0]
            part["text"] += chunk.content
            frames.append(self.event("response.output_text.delta", item_id=self.message["id"],
                                     output_index=self.output.index(self.message),
                                     content_index=0, delta=chunk.content, logprobs=[]))
        for call in chunk.tool_calls or ():
            frames += self._call_delta(call)
        return frames

    def _open_message(self) -> list[bytes]:
        self.message = message_item(None, None, "in_progress")
        self.output.append(self.message)
        index = len(self.output) - 1
        part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
        frames = [self.event("response.output_item.added", output_index=index,
                             item=orjson.loads(orjson.dumps(self.message)))]
        self.message["content"].append(part)
        frames.append(self.event("response.content_part.added", item_id=self.message["id"],
                                 output_index=index, content_index=0, part=dict(part)))
        return frames

    def _close_message(self) -> list[bytes]:
        if self.message is None:
            return []
        item, self.message = self.message, None
        index, part = self.output.index(item), item["content"][0]
        item["status"] = "completed"
        return [self.event("response.output_text.done", item_id=item["id"], output_index=index,
                           content_index=0, text=part["text"], logprobs=[]),
                self.event("response.content_part.done", item_id=item["id"], output_index=index,
                           content_index=0, part=part),
                self.event("response.output_item.done", output_index=index, item=item)]

    def _call_delta(self, call: dict) -> list[bytes]:
        frames = self._close_message()
        index = call.get("index", 0)
        function = call.get("function") or {}
        if index not in self.calls:
            item = call_item({"id": call.get("id"), "function": {"name": function.get("name")}},
                             "in_progress")
            self.output.append(item)
            self.calls[index] = len(self.output) - 1
            frames.append(self.event("response.output_item.added", output_index=self.calls[index],
                                     item=dict(item)))
        item = self.output[self.calls[index]]
        if call.get("id") and not item["call_id"]:
            item["call_id"] = call["id"]
        if function.get("name") and not item["name"]:
            item["name"] = function["name"]
        if function.get("arguments"):
            item["arguments"] += function["arguments"]
            frames.append(self.event("response.function_call_arguments.delta", item_id=item["id"],
                                     output_index=self.calls[index],
                                     delta=function["arguments"]))
        return frames

    async def end(self, answer: "Answer") -> list[bytes]:
        frames = self._close_message()
        for index in self.calls.values():
            item = self.output[index]
            item["status"] = "completed"
            frames += [self.event("response.function_call_arguments.done", item_id=item["id"],
                                  output_index=index, name=item["name"],
                                  arguments=item["arguments"]),
                       self.event("response.output_item.done", output_index=index, item=item)]
        usage = self.usage or Usage(answer.input_tokens, answer.output_tokens)
        body = await self.conversation.finish(answer.model or self.model, self.output,
                                              "completed", usage, self.finish)
        kind = "response.incomplete" if body["status"] == "incomplete" else "response.completed"
        return frames + [self.event(kind, response=body)]

    def fail(self, error: TurnoutError, answer: "Answer") -> list[bytes]:
        """The ``error`` event and ``response.failed``: the stream broke after the first byte."""
        inner = error_json(error)["error"]
        body = self.conversation.json(answer.model or self.model, self.output, "failed",
                                      error={"code": "server_error", "message": inner["message"]})
        return [self.event("error", code=inner["code"], message=inner["message"],
                           param=inner["param"]),
                self.event("response.failed", response=body)]
