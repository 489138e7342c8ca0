"""A request body as a validated ChatRequest, or a 400 in OpenAI's words; nothing else gets in.

Runs before any routing or upstream call: the JSON must decode to an object, nest no deeper than
``MAX_NESTING``, and validate strictly against the request model (see ``kernel/request.py``).
Values the client sent are quoted cut short, so a huge value is not echoed back.
"""

from __future__ import annotations

import orjson
from pydantic import ValidationError

from turnout.kernel.errors import BadRequest, clip
from turnout.kernel.request import MAX_NESTING, describe, too_deep
from turnout.kernel.types import ChatRequest


def json_object(body: bytes | bytearray, send: str) -> dict:
    """The JSON object a front door got in ``body``: BadRequest when the body is empty (``send``
    says what to send instead), not JSON, not an object, or nested more than MAX_NESTING levels
    deep (checked before any model walks it)."""
    if not body:
        raise BadRequest(f"The request body is empty; send {send}.")
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"The request body is not valid JSON ({exc.msg} at position "
                         f"{exc.pos}).") from None
    if not isinstance(data, dict):
        raise BadRequest("The request body must be a JSON object.")
    deep = too_deep(data)
    if deep is not None:
        raise BadRequest(f"The request nests objects and arrays more than {MAX_NESTING} levels "
                         f"deep (at '{clip(deep)}').", param=clip(deep))
    return data


def parse_request(body: bytes | bytearray) -> ChatRequest:
    """The chat request in ``body``; BadRequest says what is wrong and where."""
    data = json_object(body, "a JSON chat completion request")
    try:
        return ChatRequest.model_validate(data)
    except ValidationError as exc:
        message, param = validation_message(exc)
        raise BadRequest(message, param=param) from None


def validation_message(exc: ValidationError) -> tuple[str, str | None]:
    """The first pydantic error as an OpenAI-style message and param."""
    param, msg = describe(exc.errors()[0])
    return f"Invalid value for '{clip(param)}': {msg}.", clip(param) if param else None

