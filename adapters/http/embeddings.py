"""``POST /v1/embeddings`` in OpenAI's shape, through ``Kernel.embed``.

The body is validated before anything is routed (a 400 in OpenAI's error format naming the
field); the answer is ``{"object": "list", "data": [{"object": "embedding", "index": i,
"embedding": [...]}], "model", "usage"}`` with the same ``x-turnout-*`` headers as chat. With
``encoding_format = "base64"`` each vector is the base64 of its float32 values, little-endian,
as OpenAI sends them (the official SDK asks for that by default and decodes it).
"""

from __future__ import annotations

import base64
import struct
from typing import TYPE_CHECKING, Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from turnout.kernel.embeddings import EmbeddingAnswer, EmbeddingRequest
from turnout.kernel.errors import TurnoutError

from .parse import json_object

if TYPE_CHECKING:
    from .app import Gateway


def encode(vector: list[float], encoding_format: str) -> list[float] | str:
    """A vector as the client asked for it: floats, or base64 of float32 little-endian."""
    if encoding_format == "base64":
        return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")
    return vector


def embeddings_json(request: EmbeddingRequest, result: EmbeddingAnswer) -> dict[str, Any]:
    """The answer in OpenAI's shape; ``model`` is the model that embedded."""
    found = result.embeddings
    tokens = found.usage.input_tokens
    return {"object": "list",
            "data": [{"object": "embedding", "index": i,
                      "embedding": encode(v, request.encoding_format)}
                     for i, v in enumerate(found.vectors)],
            "model": result.answer.model or request.model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}


def parse_embeddings(body: bytes | bytearray) -> EmbeddingRequest:
    """A ``/v1/embeddings`` body as an :class:`EmbeddingRequest`; BadRequest says what is
    wrong."""
    return EmbeddingRequest.parse(json_object(
        body, 'a JSON embeddings request: {"model": "...", "input": "text to embed"}'))


class EmbeddingsAPI:
    """``POST /v1/embeddings`` over a :class:`~turnout.adapters.http.app.Gateway` (its keys,
    body limits, headers and error format)."""

    def __init__(self, gateway: "Gateway") -> None:
        self.gateway = gateway
        self.kernel = gateway.kernel

    async def create(self, http: Request) -> Response:
        from . import app as api  # the API module imports this one

        request_id, explain = api.begin(http)
        try:
            key = await self.gateway.authenticate(http)
            request = parse_embeddings(await self.gateway._body(http))
            headers, caller = api.who_asked(http, key, request.user)
            result = await self.kernel.embed(request, caller=caller, headers=headers,
                                             request_id=request_id)
        except TurnoutError as exc:
            account = getattr(exc, "answer", None)
            return api.error_response(exc, request_id,
                                      api.answer_headers(account, explain) if account else None)
        except Exception as exc:  # noqa: BLE001 - the last guard: never a traceback to the client
            return api.internal_error(exc, request_id)
        return Response(orjson.dumps(embeddings_json(request, result)),
                        media_type="application/json",
                        headers=api.answer_headers(result.answer, explain))
