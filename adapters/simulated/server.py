"""The fleet's OpenAI-format HTTP API as a Starlette app, and its wire helpers: JSON and error
responses, usage, model objects and the SSE frames of a paced stream."""

from __future__ import annotations

import asyncio
import hashlib
import math
import re
import struct
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import orjson
from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from turnout.kernel import tokens
from turnout.kernel.types import ChatRequest

from .answers import Answer, answer
from .dice import Dice
from .settings import SimulatedModel, Simulation

STREAM_BUDGET_S = 3.0
"""Longest time the content of one stream is spread over, whatever the model's speed."""

RETRY_AFTER_S = 1
"""Retry-After (seconds) of simulated rate limits."""


class JSONResponse(Response):
    """A JSON response rendered with orjson."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


def error_response(status: int, message: str, type_: str, code: str | None,
                   param: str | None = None, headers: dict[str, str] | None = None) -> Response:
    """An error in OpenAI's JSON error format."""
    return JSONResponse({"error": {"message": message, "type": type_, "param": param,
                                   "code": code}}, status_code=status, headers=headers)


def _usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def _bad_request(exc: ValidationError) -> Response:
    err = exc.errors()[0]
    param = ".".join(str(p) for p in err["loc"]) or None
    return error_response(400, f"Invalid request: {param or 'body'}: {err['msg']}",
                          "invalid_request_error", "invalid_request", param)


def _message(reply: Any) -> dict[str, Any]:
    """A reply as an assistant message in OpenAI's shape."""
    message: dict[str, Any] = {"role": "assistant", "content": reply.content, "refusal": None}
    if reply.tool_calls:
        message["tool_calls"] = reply.tool_calls
    return message


def fleet_app(settings: Simulation, *, seed: int | None = None) -> Starlette:
    """The fleet as an ASGI app: ``POST /v1/chat/completions``, ``POST /v1/embeddings`` and
    ``GET /v1/models`` for the models of ``settings``, with outcomes drawn from an RNG seeded
    with ``seed`` (embeddings are deterministic and never fail)."""
    dice = Dice(seed)
    models = settings.models

    async def chat(request: Request) -> Response:
        try:
            body = orjson.loads(await request.body())
        except orjson.JSONDecodeError as exc:
            return error_response(400, f"The body is not valid JSON ({exc.msg}).",
                                  "invalid_request_error", "invalid_json")
        if not isinstance(body, dict):
            return error_response(400, "The body must be a JSON object.",
                                  "invalid_request_error", "invalid_request")
        try:
            chat_request = ChatRequest.model_validate(body)
        except ValidationError as exc:
            return _bad_request(exc)
        name = chat_request.model
        behaviour = models.get(name)
        if behaviour is None:
            return error_response(404, f"The model '{name}' does not exist in the simulated "
                                  f"fleet; it serves {sorted(models)}.", "invalid_request_error",
                                  "model_not_found", "model")
        outcome = dice.roll(behaviour)
        header = {"x-sim-latency-ms": f"{outcome.latency_ms:.0f}"}
        if outcome.status == 429:
            header["retry-after"] = str(RETRY_AFTER_S)
            return error_response(429, f"Rate limit reached for {name} (simulated). Please try "
                                  f"again in {RETRY_AFTER_S}s.", "rate_limit_error",
                                  "rate_limit_exceeded", headers=header)
        await asyncio.sleep(outcome.latency_ms / 1000)
        if outcome.status != 200:
            return error_response(outcome.status, f"The server had an error while processing "
                                  f"your request (simulated {outcome.status} from {name}).",
                                  "server_error", None, headers=header)
        reply = answer(name, chat_request, outcome.good, behaviour.quality)
        prompt_tokens = tokens.count_request(chat_request)
        if chat_request.stream:
            include_usage = bool((chat_request.stream_options or {}).get("include_usage"))
            return StreamingResponse(
                _stream(name, reply, prompt_tokens, behaviour, include_usage),
                media_type="text/event-stream",
                headers={**header, "cache-control": "no-cache"})
        # n choices: each of the others is an answer of its own roll of the dice.
        replies = [reply] + [answer(name, chat_request, dice.roll(behaviour).good,
                                    behaviour.quality) for _ in range((chat_request.n or 1) - 1)]
        return JSONResponse({
            "id": _completion_id(), "object": "chat.completion", "created": int(time.time()),
            "model": name, "system_fingerprint": "fp_sim",
            "choices": [{"index": i, "message": _message(r), "logprobs": None,
                         "finish_reason": r.finish_reason} for i, r in enumerate(replies)],
            "usage": _usage(prompt_tokens, sum(r.completion_tokens for r in replies)),
        }, headers=header)

    async def list_models(request: Request) -> Response:
        return JSONResponse({"object": "list", "data": [_model_json(m) for m in models]})

    async def get_model(request: Request) -> Response:
        name = request.path_params["name"]
        if name not in models:
            return error_response(404, f"The model '{name}' does not exist in the simulated "
                                  "fleet.", "invalid_request_error", "model_not_found", "model")
        return JSONResponse(_model_json(name))

    async def http_error(request: Request, exc: Exception) -> Response:
        status = getattr(exc, "status_code", 500)
        return error_response(status, f"{request.method} {request.url.path}: "
                              f"{getattr(exc, 'detail', 'error')}", "invalid_request_error",
                              "not_found" if status == 404 else None)

    async def embed(request: Request) -> Response:
        try:
            body = orjson.loads(await request.body())
        except orjson.JSONDecodeError as exc:
            return error_response(400, f"The body is not valid JSON ({exc.msg}).",
                                  "invalid_request_error", "invalid_json")
        return embeddings_response(body, models)

    return Starlette(routes=[
        Route("/v1/chat/completions", chat, methods=["POST"]),
        Route("/v1/embeddings", embed, methods=["POST"]),
        Route("/v1/models", list_models, methods=["GET"]),
        Route("/v1/models/{name:path}", get_model, methods=["GET"]),
    ], exception_handlers={HTTPException: http_error})


EMBEDDING_DIMENSIONS = 256
"""Length of the fleet's vectors when the request sets no ``dimensions``."""


def embedding(text: str, dimensions: int = EMBEDDING_DIMENSIONS) -> list[float]:
    """A deterministic unit vector for ``text``: the same text always gives the same vector,
    different texts (almost surely) different ones. Components come from SHA-256 of the text
    and a block counter, mapped to [-1, 1], then normalised."""
    seed = text.encode()
    raw: list[float] = []
    block = 0
    while len(raw) < dimensions:
        digest = hashlib.sha256(seed + block.to_bytes(4, "big")).digest()
        raw += [v / 32767.5 - 1.0 for v in struct.unpack(">16H", digest)]
        block += 1
    raw = raw[:dimensions]
    norm = math.sqrt(sum(v * v for v in raw)) or 1.0
    return [v / norm for v in raw]


def embeddings_response(body: Any, models: dict[str, SimulatedModel]) -> Response:
    """``POST /v1/embeddings`` of the fleet: OpenAI's request and answer shape, float vectors
    from :func:`embedding`, tokens counted as the gateway counts them."""
    if not isinstance(body, dict):
        return error_response(400, "The body must be a JSON object.", "invalid_request_error",
                              "invalid_request")
    name = body.get("model")
    if name not in models:
        return error_response(404, f"The model '{name}' does not exist in the simulated fleet; "
                              f"it serves {sorted(models)}.", "invalid_request_error",
                              "model_not_found", "model")
    texts = body.get("input")
    texts = [texts] if isinstance(texts, str) else texts
    if not isinstance(texts, list) or not texts or not all(
            isinstance(t, str) and t for t in texts):
        return error_response(400, "input must be a non-empty string or list of non-empty "
                              "strings.", "invalid_request_error", "invalid_request", "input")
    dimensions = body.get("dimensions") or EMBEDDING_DIMENSIONS
    if isinstance(dimensions, bool) or not isinstance(dimensions, int) or dimensions < 1:
        return error_response(400, "dimensions must be a positive integer.",
                              "invalid_request_error", "invalid_request", "dimensions")
    counted = sum(tokens.count(t) for t in texts)
    return JSONResponse({
        "object": "list", "model": name,
        "data": [{"object": "embedding", "index": i, "embedding": embedding(t, dimensions)}
                 for i, t in enumerate(texts)],
        "usage": {"prompt_tokens": counted, "total_tokens": counted}})


def _completion_id() -> str:
    return "chatcmpl-sim" + uuid.uuid4().hex[:20]


def _model_json(name: str) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": 0, "owned_by": "turnout-simulation"}


async def _stream(model: str, reply: Answer, prompt_tokens: int, behaviour: SimulatedModel,
                  include_usage: bool) -> AsyncIterator[bytes]:
    """SSE frames of one streamed answer, content paced at the model's tokens per second."""
    base = {"id": _completion_id(), "object": "chat.completion.chunk",
            "created": int(time.time()), "model": model, "system_fingerprint": "fp_sim"}
    extra = {"usage": None} if include_usage else {}

    def frame(delta: dict[str, Any], finish: str | None = None) -> bytes:
        return b"data: " + orjson.dumps({**base, "choices": [
            {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
            **extra}) + b"\n\n"

    yield frame({"role": "assistant", "content": "", "refusal": None})
    if reply.tool_calls:
        pieces = []
        for i, call in enumerate(reply.tool_calls):
            yield frame({"tool_calls": [{"index": i, "id": call["id"], "type": "function",
                                         "function": {"name": call["function"]["name"],
                                                      "arguments": ""}}]})
            pieces += [(i, p) for p in re.findall(r".{1,12}", call["function"]["arguments"],
                                                  re.S)]
        delay = min(reply.completion_tokens / behaviour.tokens_per_s, STREAM_BUDGET_S) \
            / max(1, len(pieces))
        for i, piece in pieces:
            await asyncio.sleep(delay)
            yield frame({"tool_calls": [{"index": i, "function": {"arguments": piece}}]})
    else:
        pieces = re.findall(r"\s*\S+", reply.content or "")
        delay = min(reply.completion_tokens / behaviour.tokens_per_s, STREAM_BUDGET_S) \
            / max(1, len(pieces))
        for piece in pieces:
            await asyncio.sleep(delay)
            yield frame({"content": piece})
    yield frame({}, reply.finish_reason)
    if include_usage:
        yield b"data: " + orjson.dumps({**base, "choices": [], "usage": _usage(
            prompt_tokens, reply.completion_tokens)}) + b"\n\n"
    yield b"data: [DONE]\n\n"
