"""A fake Anthropic Messages API: ``POST /v1/messages``, JSON and SSE answers.

It checks ``x-api-key`` and ``anthropic-version``, rejects unknown top-level fields, system
messages inside ``messages``, a missing ``max_tokens`` and unanswered ``tool_use`` blocks the way
the real API does, and answers with real message objects, the real SSE event sequence
(``message_start`` ... ``message_stop``, with ``ping``) and ``{"type": "error", "error": {...}}``
errors.

With ``thinking`` it checks what the real API checks (a budget of at least 1024 below
``max_tokens``, no ``temperature``/``top_p`` beside it) and answers with a ``thinking`` block
before the text, its tokens counted in ``output_tokens``. A system prompt it has seen before is
read from its cache: ``cache_read_input_tokens``, apart from ``input_tokens``, as the real API
reports them.
"""

from __future__ import annotations

import uuid
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from .script import (
    Behaviour,
    ClientGone,
    EchoRequest,
    Refuse,
    Reply,
    Script,
    Status,
    TooLong,
    city,
    count_tokens,
    pieces,
    sse,
    stream_body,
)

_FIELDS = {"model", "messages", "max_tokens", "system", "temperature", "top_p", "top_k",
           "stop_sequences", "stream", "tools", "tool_choice", "metadata", "thinking",
           "service_tier", "container", "mcp_servers"}

_DEFAULT_ERRORS = {
    400: ("invalid_request_error", "Invalid request."),
    401: ("authentication_error", "invalid x-api-key"),
    403: ("permission_error", "Your API key does not have permission to use the specified "
                              "resource."),
    404: ("not_found_error", "model: not found"),
    413: ("request_too_large", "Request exceeds the maximum allowed number of bytes."),
    429: ("rate_limit_error", "This request would exceed the rate limit for your organization "
                              "of 50 requests per minute."),
    500: ("api_error", "Internal server error"),
    529: ("overloaded_error", "Overloaded"),
}


def error_body(type_: str, message: str) -> dict:
    """An error in Anthropic's format."""
    return {"type": "error", "error": {"type": type_, "message": message},
            "request_id": "req_" + uuid.uuid4().hex[:24]}


def _error(code: int, body: dict, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(body), status_code=code, media_type="application/json",
                    headers=headers)


def _status(behaviour: Status) -> Response:
    if isinstance(behaviour.body, dict):
        body = behaviour.body
    else:
        type_, message = _DEFAULT_ERRORS.get(
            behaviour.code, ("api_error" if behaviour.code >= 500 else "invalid_request_error",
                             f"HTTP {behaviour.code}"))
        body = error_body(type_, behaviour.body or message)
    headers = dict(behaviour.headers or {})
    if behaviour.retry_after is not None:
        headers["retry-after"] = str(behaviour.retry_after)
    return _error(behaviour.code, body, headers)


def _blocks(message: dict[str, Any]) -> list[dict[str, Any]]:
    content = message.get("content")
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    return content if isinstance(content, list) else []


def _text(message: dict[str, Any]) -> str:
    return "\n".join(b.get("text", "") for b in _blocks(message) if b.get("type") == "text")


def _result_text(block: dict[str, Any]) -> str:
    content = block.get("content")
    if isinstance(content, str):
        return content
    return "\n".join(b.get("text", "") for b in content or [] if b.get("type") == "text")


def _invalid(message: str) -> Response:
    return _error(400, error_body("invalid_request_error", message))


def _check(body: Any) -> Response | None:
    """The real API's 400s for a malformed request, or None when it is acceptable."""
    if not isinstance(body, dict):
        return _invalid("request body must be a JSON object")
    for key in body:
        if key not in _FIELDS:
            return _invalid(f"{key}: Extra inputs are not permitted")
    if not body.get("model"):
        return _invalid("model: Field required")
    if not isinstance(body.get("max_tokens"), int):
        return _invalid("max_tokens: Field required")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return _invalid("messages: Field required")
    for i, message in enumerate(messages):
        role = message.get("role")
        if role not in ("user", "assistant"):
            return _invalid(f"messages.{i}.role: Unexpected role \"{role}\". The Messages API "
                            "accepts a top-level `system` parameter, not \"system\" as an input "
                            "message role.")
        blocks = _blocks(message)
        if not blocks:
            return _invalid(f"messages.{i}: all messages must have non-empty content")
        for block in blocks:
            if block.get("type") == "text" and not block.get("text"):
                return _invalid(f"messages.{i}: text content blocks must be non-empty")
        uses = [b["id"] for b in blocks if b.get("type") == "tool_use"]
        if uses:
            following = _blocks(messages[i + 1]) if i + 1 < len(messages) else []
            answered = {b.get("tool_use_id") for b in following if b.get("type") == "tool_result"}
            missing = [u for u in uses if u not in answered]
            if missing:
                return _invalid(f"messages.{i}: `tool_use` ids were found without `tool_result` "
                                f"blocks immediately after: {', '.join(missing)}. Each `tool_use` "
                                "block must have a corresponding `tool_result` block in the next "
                                "message.")
        results = [b.get("tool_use_id") for b in blocks if b.get("type") == "tool_result"]
        if results:
            before = _blocks(messages[i - 1]) if i else []
            asked = {b.get("id") for b in before if b.get("type") == "tool_use"}
            if any(r not in asked for r in results):
                return _invalid(f"messages.{i}.content: unexpected `tool_use_id` found in "
                                "`tool_result` blocks. Each `tool_result` block must have a "
                                "corresponding `tool_use` block in the previous message.")
            kinds = [b.get("type") for b in blocks]
            if kinds.index("tool_result") != 0 or "tool_result" in kinds[len(results):]:
                return _invalid(f"messages.{i}: tool_result blocks must come first in the "
                                "content of a user message")
    return None


def _answer(body: dict[str, Any], behaviour: Behaviour) -> tuple[str, dict | None]:
    """Reply text, and a tool_use block when tools are offered and the user asks about weather."""
    messages = body["messages"]
    results = [b for b in _blocks(messages[-1]) if b.get("type") == "tool_result"]
    if results:
        return "Tool said: " + "; ".join(_result_text(b) for b in results), None
    user = next((_text(m) for m in reversed(messages) if m.get("role") == "user"), "")
    if isinstance(behaviour, Reply) and behaviour.text is not None:
        return behaviour.text, None
    tools = body.get("tools") or []
    choice = (body.get("tool_choice") or {}).get("type")
    if tools and "weather" in user.lower() and choice != "none":
        return "Let me check.", {"type": "tool_use", "id": "toolu_" + uuid.uuid4().hex[:24],
                                 "name": tools[0]["name"], "input": {"location": city(user)}}
    return f"Echo: {user}", None


def _thinking_problem(body: dict[str, Any]) -> str | None:
    """The real API's 400 for extended thinking it cannot run, or None."""
    thinking = body.get("thinking")
    if not thinking or thinking.get("type") != "enabled":
        return None
    budget = thinking.get("budget_tokens")
    if not isinstance(budget, int) or budget < 1024:
        return "thinking.enabled.budget_tokens: Input should be greater than or equal to 1024"
    if body["max_tokens"] <= budget:
        return "`max_tokens` must be greater than `thinking.budget_tokens`."
    if body.get("temperature") not in (None, 1):
        return "`temperature` may only be set to 1 when thinking is enabled."
    if body.get("top_p") is not None and body["top_p"] < 0.95:
        return "`top_p` must be unset or at least 0.95 when thinking is enabled."
    return None


def anthropic_app(script: Script, api_key: str = "sk-ant-test") -> Starlette:
    """The fake Anthropic API, accepting only ``api_key``."""
    seen_systems: set[str] = set()

    async def messages(request: Request) -> Response:
        try:
            body = orjson.loads(await request.body())
        except orjson.JSONDecodeError:
            return _invalid("There was an issue with your request body: not valid JSON")
        script.record(request.url.path, dict(request.headers), body)
        key = request.headers.get("x-api-key")
        if not key:
            return _error(401, error_body("authentication_error", "x-api-key header is required"))
        if key != api_key:
            return _error(401, error_body("authentication_error", "invalid x-api-key"))
        if not request.headers.get("anthropic-version"):
            return _invalid("anthropic-version: header is required")
        invalid = _check(body)
        if invalid is not None:
            return invalid
        problem = _thinking_problem(body)
        if problem:
            return _invalid(problem)
        asked = next((_text(m) for m in reversed(body["messages"]) if m.get("role") == "user"),
                      "")
        try:
            behaviour = await script.settle(body["model"], asked, request.is_disconnected)
        except ClientGone:
            return Response(status_code=499)
        if isinstance(behaviour, Status):
            return _status(behaviour)
        if isinstance(behaviour, EchoRequest) and not behaviour.streams(bool(body.get("stream"))):
            return _error(behaviour.status, error_body(behaviour.code(key, asked),
                                                       behaviour.message(key, asked)))
        if isinstance(behaviour, TooLong):
            return _invalid("prompt is too long: 208310 tokens > 200000 maximum")
        system = body.get("system") or ""
        if isinstance(system, list):
            system = "\n".join(b.get("text", "") for b in system)
        prompt = count_tokens(system) + sum(count_tokens(_text(m) + " ".join(
            _result_text(b) for b in _blocks(m) if b.get("type") == "tool_result"))
            for m in body["messages"])
        cached = count_tokens(system) if system and system in seen_systems else 0
        seen_systems.add(system)
        prompt -= cached  # input_tokens leaves out what was read from the cache
        thought = f"Thinking about: {asked}" if body.get("thinking") else ""
        if isinstance(behaviour, Refuse):
            # Claude's safety classifiers do not answer with an HTTP error: the message ends
            # with stop_reason "refusal" (and, here, no content).
            text, call, stop = "", None, "refusal"
        else:
            text, call = _answer(body, behaviour)
            stop = "tool_use" if call else "end_turn"
        output = count_tokens(text) + count_tokens(thought) + (
            count_tokens(orjson.dumps(call["input"]).decode()) + 1 if call else 0)
        ident = "msg_" + uuid.uuid4().hex[:24]
        if not body.get("stream"):
            content = ([{"type": "thinking", "thinking": thought, "signature": "sig"}]
                       if thought else []) \
                + ([{"type": "text", "text": text}] if text else []) + ([call] if call else [])
            return Response(orjson.dumps({
                "id": ident, "type": "message", "role": "assistant", "model": body["model"],
                "content": content, "stop_reason": stop, "stop_sequence": None,
                "usage": {"input_tokens": prompt, "output_tokens": output,
                          "cache_creation_input_tokens": 0,
                          "cache_read_input_tokens": cached}}),
                media_type="application/json")
        head = [sse({"type": "message_start", "message": {
            "id": ident, "type": "message", "role": "assistant", "model": body["model"],
            "content": [], "stop_reason": None, "stop_sequence": None,
            "usage": {"input_tokens": prompt, "output_tokens": 1,
                      "cache_creation_input_tokens": 0, "cache_read_input_tokens": cached}}},
            "message_start")]
        frames: list[bytes] = []
        index = 0
        if thought:
            head.append(sse({"type": "content_block_start", "index": 0, "content_block": {
                "type": "thinking", "thinking": "", "signature": ""}}, "content_block_start"))
            head.append(sse({"type": "content_block_delta", "index": 0, "delta": {
                "type": "thinking_delta", "thinking": thought}}, "content_block_delta"))
            head.append(sse({"type": "content_block_delta", "index": 0, "delta": {
                "type": "signature_delta", "signature": "sig"}}, "content_block_delta"))
            head.append(sse({"type": "content_block_stop", "index": 0}, "content_block_stop"))
            index = 1
        if text:
            head.append(sse({"type": "content_block_start", "index": index,
                             "content_block": {"type": "text", "text": ""}}, "content_block_start"))
            head.append(sse({"type": "ping"}, "ping"))
            frames += [sse({"type": "content_block_delta", "index": index,
                            "delta": {"type": "text_delta", "text": part}}, "content_block_delta")
                       for part in pieces(text)]
            frames.append(sse({"type": "content_block_stop", "index": index},
                              "content_block_stop"))
            index += 1
        if call:
            frames.append(sse({"type": "content_block_start", "index": index, "content_block": {
                "type": "tool_use", "id": call["id"], "name": call["name"], "input": {}}},
                "content_block_start"))
            arguments = orjson.dumps(call["input"]).decode()
            frames += [sse({"type": "content_block_delta", "index": index,
                            "delta": {"type": "input_json_delta", "partial_json": part}},
                           "content_block_delta")
                       for part in ["", *(arguments[i:i + 8] for i in range(0, len(arguments), 8))]]
            frames.append(sse({"type": "content_block_stop", "index": index},
                              "content_block_stop"))
        tail = [sse({"type": "message_delta", "delta": {"stop_reason": stop,
                                                        "stop_sequence": None},
                     "usage": {"output_tokens": output}}, "message_delta"),
                sse({"type": "message_stop"}, "message_stop")]
        if isinstance(behaviour, EchoRequest):
            error = sse(error_body(behaviour.code(key, asked), behaviour.message(key, asked)),
                        "error")
        else:
            error = sse({"type": "error", "error": {"type": "overloaded_error",
                                                    "message": getattr(behaviour, "message", "")}},
                        "error")
        return StreamingResponse(stream_body(head, frames, tail, behaviour, error),
                                 media_type="text/event-stream")

    return Starlette(routes=[Route("/v1/messages", messages, methods=["POST"])])
