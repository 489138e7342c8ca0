"""OpenAI Chat Completions upstreams: api.openai.com and every server that speaks its protocol.

The canonical request is already in this format, so the adapter only swaps in the upstream model
id, asks streams to report usage, and parses answers and SSE chunks back into kernel types.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Any

import orjson

from turnout.kernel.embeddings import EmbeddingRequest, Embeddings
from turnout.kernel.errors import ContentPolicy, ProviderUnavailable, StreamBroken
from turnout.kernel.types import ChatRequest, Chunk, Completion, ModelProfile, Usage

from .base import ProviderAdapter
from .errors import (
    error_for_status,
    parse_json,
    scrub,
    stream_error,
    unexpected_shape,
)


class OpenAIAdapter(ProviderAdapter):
    """The OpenAI API: ``POST {base_url}/chat/completions`` with Bearer auth."""

    kind = "openai"
    default_base_url = "https://api.openai.com/v1"

    @property
    def url(self) -> str:
        """Where chat completions are posted."""
        return f"{self.base_url}/chat/completions"

    def key_value(self, key: str) -> str:
        return f"Bearer {key}"

    def payload(self, request: ChatRequest, model: ModelProfile, *, stream: bool) -> dict[str, Any]:
        """The request as sent upstream: every field the client gave (unknown ones only when
        ``passthrough_params`` lists them), with the upstream model id (``n``, ``logprobs``,
        ``seed``, ``reasoning_effort`` as given; ``parallel_tool_calls`` only beside tools, as
        the API requires); streams ask for a final usage chunk."""
        payload = request.model_dump(exclude_none=True)
        for extra in request.model_extra or ():
            if extra not in self.config.passthrough_params:
                payload.pop(extra, None)  # unknown to OpenAI's API and not ours to pass on
        payload["model"] = model.upstream
        payload["stream"] = stream
        if not payload.get("tools"):
            payload.pop("parallel_tool_calls", None)  # OpenAI refuses it without tools
        if stream:
            payload["stream_options"] = {**(payload.get("stream_options") or {}),
                                         "include_usage": True}
        else:
            payload.pop("stream_options", None)
        return payload

    async def complete(self, request: ChatRequest, model: ModelProfile) -> Completion:
        """Send a non-streaming request and return the whole answer."""
        body = orjson.dumps(self.payload(request, model, stream=False))
        data = await self.post_json(self.url, body, model)
        with unexpected_shape(self.name, model.name):
            return self._completion(data, model, sent=body)

    def _completion(self, data: Any, model: ModelProfile, *,
                    sent: bytes | None = None) -> Completion:
        if not isinstance(data, dict):
            raise ProviderUnavailable(f"{self.name} sent an answer that is not a JSON object",
                                      provider=self.name, model=model.name)
        if data.get("error") or data.get("object") == "error":
            # Some compatible servers (OpenRouter among them) report failures inside a 200.
            error = data.get("error") if isinstance(data.get("error"), dict) else data
            code = error.get("code")
            status = code if isinstance(code, int) and 400 <= code <= 599 else 502
            raise error_for_status(status, {}, orjson.dumps(data), self.name, model.name,
                                   secrets=self.secrets, sent=sent)
        choices = data.get("choices") or []
        if not choices:
            raise ProviderUnavailable(f"{self.name} sent an answer without choices",
                                      provider=self.name, model=model.name)
        choice = choices[0]
        message = choice.get("message") or {}
        content = message.get("content")
        tool_calls = message.get("tool_calls") or None
        finish = choice.get("finish_reason") or "stop"
        if not content and not tool_calls and (message.get("refusal")
                                               or finish == "content_filter"):
            reason = scrub(message.get("refusal") or "the answer was filtered", self.secrets,
                           sent=sent)
            raise ContentPolicy(f"{self.name} refused: {reason}", provider=self.name,
                                model=model.name)
        others = [_choice(c, model.name, self.name) for c in choices[1:] if isinstance(c, dict)]
        return Completion(content=content, finish_reason=finish, tool_calls=tool_calls,
                          usage=_usage(data.get("usage")), model=model.name, provider=self.name,
                          refusal=message.get("refusal"), logprobs=choice.get("logprobs"),
                          system_fingerprint=data.get("system_fingerprint"),
                          choices=others or None)

    async def stream(self, request: ChatRequest, model: ModelProfile) -> AsyncIterator[Chunk]:
        """Send a streaming request; yield content and tool-call deltas, then one final chunk with
        the finish reason and usage. A stream that ends early or carries an error raises."""
        body = orjson.dumps(self.payload(request, model, stream=True))
        done = False
        finish: str | None = None
        usage: Usage | None = None
        role: str | None = None
        emitted = False
        refusal: list[str] = []
        with unexpected_shape(self.name, model.name, mid_stream=True):
            async with aclosing(self.sse_events(self.url, body, model)) as events:
                async for event in events:
                    if event.data.strip() == "[DONE]":
                        done = True
                        break
                    data = parse_json(event.data, self.name, model.name, mid_stream=True)
                    if not isinstance(data, dict):
                        continue
                    if data.get("error") or data.get("object") == "error":
                        raise stream_error(data, self.name, model.name, secrets=self.secrets,
                                           sent=body)
                    if data.get("usage"):
                        usage = _usage(data["usage"])
                    for choice in data.get("choices") or []:
                        if choice.get("index", 0) != 0:
                            continue
                        delta = choice.get("delta") or {}
                        role = role or delta.get("role")
                        finish = choice.get("finish_reason") or finish
                        if delta.get("refusal"):
                            refusal.append(delta["refusal"])
                        content = delta.get("content") or None
                        tool_calls = delta.get("tool_calls") or None
                        if content is None and tool_calls is None:
                            continue
                        yield Chunk(content=content, tool_calls=tool_calls,
                                    role=None if emitted else role or "assistant",
                                    logprobs=choice.get("logprobs"))
                        emitted = True
            if not done and finish is None:
                raise StreamBroken(f"{self.name} cut the stream before it finished",
                                   provider=self.name, model=model.name)
            if not emitted and (refusal or finish == "content_filter"):
                reason = scrub("".join(refusal) or "the answer was filtered", self.secrets,
                               sent=body)
                raise ContentPolicy(f"{self.name} refused: {reason}", provider=self.name,
                                    model=model.name)
            yield Chunk(finish_reason=finish or "stop", usage=usage,
                        role=None if emitted else role or "assistant")

    async def embed(self, request: EmbeddingRequest, model: ModelProfile) -> Embeddings:
        """``POST {base_url}/embeddings``: the texts as a list, vectors asked as floats (the
        frontend encodes them as the client asked), ``dimensions`` and ``user`` passed on."""
        payload: dict[str, Any] = {"model": model.upstream, "input": list(request.texts),
                                   "encoding_format": "float"}
        if request.dimensions is not None:
            payload["dimensions"] = request.dimensions
        if request.user is not None:
            payload["user"] = request.user
        data = await self.post_json(f"{self.base_url}/embeddings", orjson.dumps(payload), model)
        items = data.get("data") if isinstance(data, dict) else None
        if not isinstance(items, list) or not all(
                isinstance(i, dict) and isinstance(i.get("embedding"), list) for i in items):
            raise ProviderUnavailable(f"{self.name} sent an embeddings answer without a list of "
                                      "vectors in 'data'", provider=self.name, model=model.name)
        items = sorted(items, key=lambda i: i.get("index") or 0)
        usage = data.get("usage") if isinstance(data.get("usage"), dict) else {}
        return Embeddings([i["embedding"] for i in items],
                          Usage(int(usage.get("prompt_tokens") or 0), 0),
                          model=model.name, provider=self.name)


class OpenAICompatibleAdapter(OpenAIAdapter):
    """Servers that speak OpenAI's protocol at another ``base_url``: vLLM, Ollama, llama.cpp,
    OpenRouter. The API key is optional; without one no Authorization header is sent."""

    kind = "openai-compatible"
    default_base_url = None


def _choice(choice: dict[str, Any], model: str, provider: str) -> Completion:
    """A further choice (``n`` > 1) of an OpenAI answer, as a completion without usage."""
    message = choice.get("message") or {}
    return Completion(content=message.get("content"),
                      finish_reason=choice.get("finish_reason") or "stop",
                      tool_calls=message.get("tool_calls") or None, model=model, provider=provider,
                      refusal=message.get("refusal"), logprobs=choice.get("logprobs"))


def _usage(raw: Any) -> Usage:
    """Kernel usage from OpenAI's ``usage`` object (zeros when the server sent none)."""
    if not isinstance(raw, dict):
        return Usage()
    details = {k: v for k, v in raw.items() if k.endswith("_details") and isinstance(v, dict)}
    return Usage(int(raw.get("prompt_tokens") or 0), int(raw.get("completion_tokens") or 0),
                 details or None)
