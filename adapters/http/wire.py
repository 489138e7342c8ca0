"""Turnout's answers in the OpenAI Chat Completions wire format (JSON and SSE frames)."""

from __future__ import annotations

import time

import orjson

from turnout.kernel.errors import TurnoutError
from turnout.kernel.observability import scrub
from turnout.kernel.types import Chunk, Completion, Usage


def usage_json(usage: Usage) -> dict:
    """OpenAI's ``usage`` object, with the provider's token breakdowns where it sent them."""
    out = {"prompt_tokens": usage.input_tokens, "completion_tokens": usage.output_tokens,
           "total_tokens": usage.total_tokens}
    if usage.details:
        out.update(usage.details)
    return out


def error_json(error: TurnoutError) -> dict:
    """The OpenAI-format error body for ``error`` as a client gets it, JSON or SSE: its message,
    code, type and param pass through the one scrubber
    (:func:`~turnout.kernel.observability.scrub`), so a secret registered after the error was
    made, or text an error class did not scrub itself, never reaches the client."""
    body = error.to_openai()
    inner = body.get("error")
    if isinstance(inner, dict):
        for field in ("message", "code", "type", "param"):
            if isinstance(inner.get(field), str):
                inner[field] = scrub(inner[field])
    return body


def error_bytes(error: TurnoutError) -> bytes:
    """:func:`error_json` serialised: the body of the API's JSON error responses."""
    return orjson.dumps(error_json(error))


def completion_json(request_id: str, completion: Completion) -> bytes:
    """A ``chat.completion`` object with one choice per answer (``n`` of them: the completion and
    its ``choices``); ``refusal`` is always present (OpenAI's schema requires it), and the
    upstream's ``logprobs`` and ``system_fingerprint`` pass through."""
    answers = [completion, *(completion.choices or ())]
    answer = {
        "id": "chatcmpl-" + request_id.removeprefix("req_"),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": completion.model,
        "choices": [choice_json(i, c) for i, c in enumerate(answers)],
        "usage": usage_json(completion.usage),
    }
    if completion.system_fingerprint is not None:
        answer["system_fingerprint"] = completion.system_fingerprint
    return orjson.dumps(answer)


def choice_json(index: int, completion: Completion) -> dict:
    """One entry of ``choices``: the answer as an assistant message, its logprobs and finish
    reason."""
    message: dict = {"role": "assistant", "content": completion.content,
                     "refusal": completion.refusal}
    if completion.tool_calls:
        message["tool_calls"] = completion.tool_calls
    return {"index": index, "message": message, "logprobs": completion.logprobs,
            "finish_reason": completion.finish_reason}


class ChunkFramer:
    """Turns kernel chunks into ``chat.completion.chunk`` SSE frames for one response."""

    __slots__ = ("id", "created", "model", "include_usage", "usage")

    def __init__(self, request_id: str, model: str, include_usage: bool) -> None:
        self.id = "chatcmpl-" + request_id.removeprefix("req_")
        self.created = int(time.time())
        self.model = model
        self.include_usage = include_usage
        self.usage: Usage | None = None

    def frame(self, chunk: Chunk) -> bytes:
        if chunk.usage is not None:
            self.usage = chunk.usage
        if chunk.content is None and chunk.tool_calls is None and chunk.finish_reason is None \
                and chunk.role is None:
            return b""
        delta: dict = {}
        if chunk.role:
            delta["role"] = chunk.role
        if chunk.content is not None:
            delta["content"] = chunk.content
        if chunk.tool_calls:
            delta["tool_calls"] = chunk.tool_calls
        return self._sse({"id": self.id, "object": "chat.completion.chunk",
                          "created": self.created, "model": self.model,
                          "choices": [{"index": 0, "delta": delta, "logprobs": chunk.logprobs,
                                       "finish_reason": chunk.finish_reason}]})

    def end(self) -> bytes:
        """The usage chunk (when asked for) and ``[DONE]``."""
        tail = b""
        if self.include_usage:
            tail = self._sse({"id": self.id, "object": "chat.completion.chunk",
                              "created": self.created, "model": self.model, "choices": [],
                              "usage": usage_json(self.usage or Usage())})
        return tail + b"data: [DONE]\n\n"

    @staticmethod
    def error(error: TurnoutError) -> bytes:
        """An explicit error event (scrubbed, :func:`error_json`); the stream ends after it,
        without ``[DONE]``."""
        return ChunkFramer._sse(error_json(error))

    @staticmethod
    def _sse(obj: dict) -> bytes:
        return b"data: " + orjson.dumps(obj) + b"\n\n"
