"""A fake OpenAI Chat Completions server: ``POST /v1/chat/completions``, JSON and SSE answers.

It checks the Bearer key, the model and the tool-message ordering the way the real API does, and
answers in the real shapes: ``chat.completion`` objects, ``chat.completion.chunk`` SSE frames
ending with ``data: [DONE]``, a usage-only chunk when ``stream_options.include_usage`` is set, and
errors as ``{"error": {"message", "type", "param", "code"}}``.

Like the real API it answers ``n`` choices (the second and later ones marked ``(2)``, ``(3)``...),
log probabilities when asked, reasoning tokens when ``reasoning_effort`` is set (counted in the
completion tokens) and, for a prompt whose system message it has seen before, that message's
tokens as ``prompt_tokens_details.cached_tokens`` (the real API caches prompt prefixes).
"""

from __future__ import annotations

import base64
import hashlib
import struct
import time
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

_DEFAULT_ERRORS = {
    400: ("invalid_request_error", None, "Invalid request."),
    401: ("invalid_request_error", "invalid_api_key", "Incorrect API key provided."),
    403: ("invalid_request_error", "unsupported_country_region_territory",
          "Country, region, or territory not supported"),
    404: ("invalid_request_error", "model_not_found",
          "The model does not exist or you do not have access to it."),
    429: ("requests", "rate_limit_exceeded",
          "Rate limit reached for requests. Please try again later."),
    500: ("server_error", None,
          "The server had an error while processing your request. Sorry about that!"),
    503: ("server_error", None, "The engine is currently overloaded, please try again later."),
}


def error_body(message: str, type_: str, code: str | None, param: str | None = None) -> dict:
    """An error in OpenAI's format."""
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def _error(code: int, body: dict, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(body), status_code=code, media_type="application/json",
                    headers=headers)


def _status(behaviour: Status) -> Response:
    if isinstance(behaviour.body, dict):
        body = behaviour.body
    else:
        type_, code, message = _DEFAULT_ERRORS.get(
            behaviour.code, ("server_error" if behaviour.code >= 500 else "invalid_request_error",
                             None, f"HTTP {behaviour.code}"))
        body = error_body(behaviour.body or message, type_, code)
    headers = dict(behaviour.headers or {})
    if behaviour.retry_after is not None:
        headers["retry-after"] = str(behaviour.retry_after)
    return _error(behaviour.code, body, headers)


def _text(message: dict[str, Any]) -> str:
    content = message.get("content")
    if isinstance(content, str):
        return content
    return "\n".join(p.get("text", "") for p in content or [] if p.get("type") == "text")


def _check(body: Any) -> Response | None:
    """The real API's 400s for a malformed request, or None when it is acceptable."""
    if not isinstance(body, dict) or not body.get("model"):
        return _error(400, error_body("you must provide a model parameter",
                                      "invalid_request_error", None))
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return _error(400, error_body("'messages' must contain at least one message",
                                      "invalid_request_error", None, "messages"))
    open_calls: set[str] = set()
    for i, message in enumerate(messages):
        if message.get("role") == "assistant":
            open_calls = {c.get("id") for c in message.get("tool_calls") or []}
        elif message.get("role") == "tool":
            if message.get("tool_call_id") not in open_calls:
                return _error(400, error_body(
                    "Invalid parameter: messages with role 'tool' must be a response to a "
                    "preceeding message with 'tool_calls'.", "invalid_request_error", None,
                    f"messages.[{i}].role"))
        else:
            open_calls = set()
    return None


def _answer(body: dict[str, Any], behaviour: Behaviour) -> tuple[str | None, dict | None]:
    """The reply text, or a tool call when tools are offered and the user asks about weather."""
    messages = body["messages"]
    last = messages[-1]
    if last.get("role") == "tool":
        return f"Tool said: {_text(last)}", None
    user = next((_text(m) for m in reversed(messages) if m.get("role") == "user"), "")
    if isinstance(behaviour, Reply) and behaviour.text is not None:
        return behaviour.text, None
    tools = body.get("tools") or []
    if tools and "weather" in user.lower() and body.get("tool_choice") != "none":
        name = tools[0]["function"]["name"]
        return None, {"id": "call_" + uuid.uuid4().hex[:24], "type": "function",
                      "function": {"name": name,
                                   "arguments": orjson.dumps({"location": city(user)}).decode()}}
    if (body.get("response_format") or {}).get("type") in ("json_object", "json_schema"):
        return orjson.dumps({"echo": user}).decode(), None
    return f"Echo: {user}", None


REASONING_TOKENS = {"minimal": 0, "low": 8, "medium": 32, "high": 128}
"""Reasoning tokens the fake reports for each ``reasoning_effort``."""


def openai_app(script: Script, api_key: str | None = "sk-test") -> Starlette:
    """The fake OpenAI API; with ``api_key=None`` it accepts any or no key (like a local vLLM)."""
    seen_systems: set[str] = set()

    async def chat_completions(request: Request) -> Response:
        try:
            body = orjson.loads(await request.body())
        except orjson.JSONDecodeError:
            return _error(400, error_body("We could not parse the JSON body of your request.",
                                          "invalid_request_error", None))
        path = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        script.record(path, dict(request.headers), body)
        if api_key is not None:
            auth = request.headers.get("authorization", "")
            if not auth.startswith("Bearer "):
                return _error(401, error_body(
                    "You didn't provide an API key. You need to provide your API key in an "
                    "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY)",
                    "invalid_request_error", None))
            if auth.removeprefix("Bearer ") != api_key:
                # The real API quotes the key it got, partly masked for long keys.
                return _error(401, error_body(
                    f"Incorrect API key provided: {auth.removeprefix('Bearer ')}. You can find "
                    "your API key at https://platform.openai.com/account/api-keys.",
                    "invalid_request_error", "invalid_api_key"))
        invalid = _check(body)
        if invalid is not None:
            return invalid
        asked = next((_text(m) for m in reversed(body["messages"]) if m.get("role") == "user"),
                      "")
        try:
            behaviour = await script.settle(body["model"], asked, request.is_disconnected)
        except ClientGone:
            return Response(status_code=499)
        if isinstance(behaviour, Status):
            return _status(behaviour)
        credential = request.headers.get("authorization", "").removeprefix("Bearer ")
        if isinstance(behaviour, EchoRequest) and not behaviour.streams(bool(body.get("stream"))):
            return _error(behaviour.status, error_body(
                behaviour.message(credential, asked),
                "server_error" if behaviour.status >= 500 else "invalid_request_error",
                behaviour.code(credential, asked)))
        if isinstance(behaviour, TooLong):
            return _error(400, error_body(
                "This model's maximum context length is 128000 tokens. However, your messages "
                "resulted in 130512 tokens. Please reduce the length of the messages.",
                "invalid_request_error", "context_length_exceeded", "messages"))
        if isinstance(behaviour, Refuse):
            # What OpenAI answers when its safety system rejects a prompt outright.
            return _error(400, error_body(
                "Your request was rejected as a result of our safety system. Your prompt may "
                "contain text that is not allowed by our safety system.",
                "invalid_request_error", "content_policy_violation"))
        text, call = _answer(body, behaviour)
        n = body.get("n") or 1
        texts = [text if i == 0 or text is None else f"{text} ({i + 1})" for i in range(n)]
        prompt = sum(count_tokens(_text(m)) for m in body["messages"])
        reasoning = REASONING_TOKENS.get(body.get("reasoning_effort") or "minimal", 0)
        completion = sum(count_tokens(t or "") for t in texts) + n * reasoning + (
            n * (count_tokens(call["function"]["arguments"]) + 1) if call else 0)
        system = next((_text(m) for m in body["messages"] if m.get("role") == "system"), "")
        cached = count_tokens(system) if system in seen_systems else 0
        seen_systems.add(system)
        usage = {"prompt_tokens": prompt, "completion_tokens": completion,
                 "total_tokens": prompt + completion,
                 "prompt_tokens_details": {"cached_tokens": cached},
                 "completion_tokens_details": {"reasoning_tokens": n * reasoning}}

        def logprobs_of(answer: str | None) -> dict | None:
            # Asked for, log probabilities come back as OpenAI shapes them (one entry per word).
            if not body.get("logprobs"):
                return None
            top = body.get("top_logprobs") or 0
            return {"content": [{"token": w, "logprob": -0.25, "bytes": list(w.encode()),
                                 "top_logprobs": [{"token": w, "logprob": -0.25,
                                                   "bytes": list(w.encode())}][:top]}
                                for w in (answer or "").split()[:3]], "refusal": None}

        ident = "chatcmpl-" + uuid.uuid4().hex[:24]
        meta = {"id": ident, "created": int(time.time()), "model": body["model"],
                "system_fingerprint": "fp_fake"}
        finish = "tool_calls" if call else "stop"
        if not body.get("stream"):
            message: dict[str, Any] = {"role": "assistant", "content": text, "refusal": None}
            if call:
                message["tool_calls"] = [call]
            choices = [{"index": i, "message": {**message, "content": t},
                        "logprobs": logprobs_of(t), "finish_reason": finish}
                       for i, t in enumerate(texts)]
            return Response(orjson.dumps({
                **meta, "object": "chat.completion", "choices": choices,
                "usage": usage}), media_type="application/json")
        with_usage = bool((body.get("stream_options") or {}).get("include_usage"))

        def chunk(delta: dict, finish_reason: str | None = None) -> bytes:
            frame = {**meta, "object": "chat.completion.chunk",
                     "choices": [{"index": 0, "delta": delta, "logprobs": None,
                                  "finish_reason": finish_reason}]}
            if with_usage:
                frame["usage"] = None
            return sse(frame)

        head = [chunk({"role": "assistant", "content": "", "refusal": None})]
        if call:
            arguments = call["function"]["arguments"]
            body_frames = [chunk({"tool_calls": [{
                "index": 0, "id": call["id"], "type": "function",
                "function": {"name": call["function"]["name"], "arguments": ""}}]})]
            body_frames += [chunk({"tool_calls": [{"index": 0, "function": {"arguments": part}}]})
                            for part in (arguments[i:i + 8] for i in range(0, len(arguments), 8))]
        else:
            body_frames = [chunk({"content": part}) for part in pieces(text or "")]
        tail = [chunk({}, finish)]
        if with_usage:
            tail.append(sse({**meta, "object": "chat.completion.chunk", "choices": [],
                             "usage": usage}))
        tail.append(sse("[DONE]"))
        if isinstance(behaviour, EchoRequest):
            error = sse(error_body(behaviour.message(credential, asked), "server_error",
                                   behaviour.code(credential, asked)))
        else:
            error = sse({"error": {"message": getattr(behaviour, "message", "error"),
                                   "type": "server_error", "param": None, "code": None}})
        return StreamingResponse(stream_body(head, body_frames, tail, behaviour, error),
                                 media_type="text/event-stream")

    return Starlette(routes=[Route("/v1/chat/completions", chat_completions, methods=["POST"]),
                             Route("/v1/embeddings", embeddings_endpoint(script, api_key),
                                   methods=["POST"])])


FAKE_DIMENSIONS = 16
"""Length of the fakes' vectors when a request sets no dimensions."""


def fake_vector(text: str, dimensions: int | None = None) -> list[float]:
    """A deterministic vector for ``text`` (from SHA-256 of it), ``dimensions`` long."""
    digest = hashlib.sha256(text.encode()).digest()
    size = dimensions or FAKE_DIMENSIONS
    return [round(digest[i % len(digest)] / 255 - 0.5, 6) for i in range(size)]


def embeddings_endpoint(script: Script, api_key: str | None):
    """``POST /v1/embeddings`` of the fake OpenAI API: the same key check as chat, the script's
    behaviours (``Status`` for an error), and fake vectors; base64 when asked."""

    async def embeddings(request: Request) -> Response:
        try:
            body = orjson.loads(await request.body())
        except orjson.JSONDecodeError:
            return _error(400, error_body("We could not parse the JSON body of your request.",
                                          "invalid_request_error", None))
        script.record(request.url.path, dict(request.headers), body)
        if api_key is not None and request.headers.get("authorization") != f"Bearer {api_key}":
            return _error(401, error_body("Incorrect API key provided.", "invalid_request_error",
                                          "invalid_api_key"))
        texts = body.get("input") if isinstance(body, dict) else None
        texts = [texts] if isinstance(texts, str) else texts
        if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
            return _error(400, error_body("'input' must be a string or an array of strings.",
                                          "invalid_request_error", None, "input"))
        behaviour = await script.settle(body.get("model", ""), texts[0])
        if isinstance(behaviour, Status):
            return _status(behaviour)
        base64_wanted = body.get("encoding_format") == "base64"
        data = []
        for i, text in enumerate(texts):
            vector = fake_vector(text, body.get("dimensions"))
            data.append({"object": "embedding", "index": i, "embedding": base64.b64encode(
                struct.pack(f"<{len(vector)}f", *vector)).decode() if base64_wanted else vector})
        used = sum(count_tokens(t) for t in texts)
        return Response(orjson.dumps({"object": "list", "data": data, "model": body["model"],
                                      "usage": {"prompt_tokens": used, "total_tokens": used}}),
                        media_type="application/json")

    return embeddings
