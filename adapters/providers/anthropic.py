"""Anthropic's Messages API, translated to and from the canonical OpenAI format.

Requests: system and developer messages become the top-level ``system``; assistant tool calls
become ``tool_use`` blocks and tool messages ``tool_result`` blocks in a user turn; tools, tool
choice, stop sequences and images are carried over; JSON mode, which the API lacks, becomes an
instruction in the system prompt. Answers and SSE events come back as OpenAI-shaped completions
and chunks.

The OpenAI fields the API has no equivalent for: ``n`` > 1 is served by that many calls made in
parallel (their usage summed); ``reasoning_effort`` turns on extended thinking with the budget of
:data:`THINKING_BUDGETS` (``max_tokens`` raised by the budget, so the answer keeps its room;
``temperature`` and ``top_p`` left out, as the API requires; thinking blocks are not returned);
``logprobs`` and ``seed`` are dropped (the API has neither: the answer then carries no logprobs,
which the HTTP edge reports in ``x-turnout-dropped`` and a ``logprobs`` validator with
``require = true`` fails); ``parallel_tool_calls: false`` becomes
``disable_parallel_tool_use``. Cache reads come back as ``prompt_tokens_details.cached_tokens``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import aclosing
from dataclasses import replace
from typing import Any

import anyio
import orjson

from turnout.kernel.errors import (
    ContentPolicy,
    ProviderBadRequest,
    ProviderUnavailable,
    StreamBroken,
)
from turnout.kernel.types import ChatRequest, Chunk, Completion, Message, ModelProfile, Usage

from .base import ProviderAdapter, append_turn
from .errors import (
    parse_json,
    stream_error,
    unexpected_shape,
)

DEFAULT_VERSION = "2023-06-01"
"""The ``anthropic-version`` header sent when the config gives no ``api_version``."""

DEFAULT_MAX_TOKENS = 4096
"""Anthropic requires ``max_tokens``; used when neither the request nor the model sets one."""

_STOP_REASONS = {"end_turn": "stop", "stop_sequence": "stop", "pause_turn": "stop",
                 "max_tokens": "length", "model_context_window_exceeded": "length",
                 "tool_use": "tool_calls"}

THINKING_BUDGETS = {"minimal": 1024, "low": 2048, "medium": 4096, "high": 16384}
"""``budget_tokens`` of extended thinking for each ``reasoning_effort`` (1024 is the API's
least)."""

JSON_INSTRUCTION = ("Answer with one JSON value only: no prose before or after it and no code "
                    "fences.")


class AnthropicAdapter(ProviderAdapter):
    """Anthropic: ``POST {base_url}/v1/messages`` with ``x-api-key`` and ``anthropic-version``."""

    kind = "anthropic"
    default_base_url = "https://api.anthropic.com"
    key_header = "x-api-key"

    @property
    def url(self) -> str:
        """Where messages are posted."""
        return f"{self.base_url}/v1/messages"

    def fixed_headers(self) -> dict[str, str]:
        return {"anthropic-version": self.config.api_version or DEFAULT_VERSION}

    def payload(self, request: ChatRequest, model: ModelProfile, *, stream: bool) -> dict[str, Any]:
        """The Messages API body for ``request``, with the fields ``passthrough_params`` lets
        through at its top level (``top_k``, say)."""
        try:
            return {**to_messages_request(request, model, stream=stream),
                    **self.passed_through(request)}
        except ValueError as exc:
            raise ProviderBadRequest(f"{self.name} cannot take this request: {exc}",
                                     provider=self.name, model=model.name) from None

    async def complete(self, request: ChatRequest, model: ModelProfile) -> Completion:
        """Send a non-streaming request and return the whole answer; for ``n`` answers, ``n``
        requests in parallel (the API answers one at a time), their usage summed. One failing
        fails them all."""
        if request.choices == 1:
            return await self._complete_one(request, model)
        single = request.model_copy(update={"n": None})
        answers: list[Completion | None] = [None] * request.choices

        async def one(i: int) -> None:
            answers[i] = await self._complete_one(single, model)

        try:
            async with anyio.create_task_group() as group:
                for i in range(request.choices):
                    group.start_soon(one, i)
        except BaseExceptionGroup as failed:  # the first call to fail stands for them all
            raise _first(failed) from None
        first, *others = [a for a in answers if a is not None]
        usage = first.usage
        for other in others:
            usage = usage + other.usage
        return replace(first, usage=usage,
                       choices=[replace(o, usage=Usage()) for o in others] or None)

    async def _complete_one(self, request: ChatRequest, model: ModelProfile) -> Completion:
        body = orjson.dumps(self.payload(request, model, stream=False))
        data = await self.post_json(self.url, body, model)
        if not isinstance(data, dict) or not isinstance(data.get("content"), list):
            raise ProviderUnavailable(f"{self.name} sent an answer that is not a message",
                                      provider=self.name, model=model.name)
        if data.get("stop_reason") == "refusal":
            raise _refusal(self.name, model.name)
        with unexpected_shape(self.name, model.name):
            return to_completion(data, model=model.name, provider=self.name)

    async def stream(self, request: ChatRequest, model: ModelProfile) -> AsyncIterator[Chunk]:
        """Send a streaming request; translate Anthropic's events into OpenAI-style chunks, the
        last one carrying the finish reason and usage. A stream ending before ``message_stop``,
        or carrying an ``error`` event, raises."""
        body = orjson.dumps(self.payload(request, model, stream=True))
        stopped = emitted = False
        input_tokens = output_tokens = 0
        cached = 0
        stop_reason: str | None = None
        tools: dict[int, int] = {}      # content block index -> tool call index
        has_args: dict[int, bool] = {}  # content block index -> any argument text seen
        with unexpected_shape(self.name, model.name, mid_stream=True):
            async with aclosing(self.sse_events(self.url, body, model)) as events:
                async for event in events:
                    data = parse_json(event.data, self.name, model.name, mid_stream=True)
                    if not isinstance(data, dict):
                        continue
                    kind = data.get("type") or event.event
                    if kind == "error" or event.event == "error":
                        raise stream_error(data, self.name, model.name, secrets=self.secrets,
                                           sent=body)
                    chunk: Chunk | None = None
                    if kind == "message_start":
                        usage = (data.get("message") or {}).get("usage") or {}
                        input_tokens = _input_tokens(usage)
                        cached = int(usage.get("cache_read_input_tokens") or 0)
                        output_tokens = int(usage.get("output_tokens") or 0)
                    elif kind == "content_block_start":
                        block = data.get("content_block") or {}
                        if block.get("type") == "tool_use":
                            index = tools[data.get("index", 0)] = len(tools)
                            has_args[data.get("index", 0)] = False
                            chunk = Chunk(tool_calls=[{
                                "index": index, "id": block.get("id"), "type": "function",
                                "function": {"name": block.get("name", ""), "arguments": ""}}])
                        elif block.get("type") == "text" and block.get("text"):
                            chunk = Chunk(content=block["text"])
                    elif kind == "content_block_delta":
                        delta = data.get("delta") or {}
                        if delta.get("type") == "text_delta" and delta.get("text"):
                            chunk = Chunk(content=delta["text"])
                        elif delta.get("type") == "input_json_delta" and delta.get("partial_json"):
                            block_index = data.get("index", 0)
                            if block_index in tools:
                                has_args[block_index] = True
                                chunk = Chunk(tool_calls=[{
                                    "index": tools[block_index],
                                    "function": {"arguments": delta["partial_json"]}}])
                    elif kind == "content_block_stop":
                        block_index = data.get("index", 0)
                        if block_index in tools and not has_args[block_index]:
                            # A tool called without input: OpenAI clients expect "{}".
                            chunk = Chunk(tool_calls=[{"index": tools[block_index],
                                                       "function": {"arguments": "{}"}}])
                    elif kind == "message_delta":
                        stop_reason = (data.get("delta") or {}).get("stop_reason") or stop_reason
                        usage = data.get("usage") or {}
                        if usage.get("output_tokens") is not None:  # cumulative; 0 is a count
                            output_tokens = int(usage["output_tokens"])
                        if usage.get("input_tokens") is not None:
                            input_tokens = _input_tokens(usage)
                        if stop_reason == "refusal" and not emitted:
                            raise _refusal(self.name, model.name)
                    elif kind == "message_stop":
                        stopped = True
                        break
                    if chunk is not None:
                        if not emitted:
                            chunk.role = "assistant"
                        emitted = True
                        yield chunk
            if not stopped:
                raise StreamBroken(f"{self.name} cut the stream before message_stop",
                                   provider=self.name, model=model.name)
            finish = "content_filter" if stop_reason == "refusal" else _STOP_REASONS.get(
                stop_reason or "end_turn", "stop")
            yield Chunk(finish_reason=finish, usage=Usage(input_tokens, output_tokens,
                                                          _details(cached)),
                        role=None if emitted else "assistant")


# --- translation -------------------------------------------------------------------------------


def to_messages_request(request: ChatRequest, model: ModelProfile, *,
                        stream: bool = False) -> dict[str, Any]:
    """Translate an OpenAI chat request into an Anthropic Messages API body.

    Raises ValueError for what cannot be expressed (tool-call arguments that are not JSON, a
    forced tool choice with extended thinking).
    """
    system: list[str] = []
    turns: list[dict[str, Any]] = []
    for message in request.messages:
        if message.role in ("system", "developer"):
            if message.text():
                system.append(message.text())
        elif message.role == "tool":
            append_turn(turns, "content", "user", [{
                "type": "tool_result", "tool_use_id": message.tool_call_id,
                "content": _tool_result_content(message)}])
        elif message.role == "assistant":
            blocks = _content_blocks(message.content)
            for call in message.tool_calls or []:
                blocks.append(_tool_use(call))
            append_turn(turns, "content", "assistant", blocks)
        else:  # user, and the legacy "function" role read as plain user text
            append_turn(turns, "content", "user", _content_blocks(message.content))
    for turn in turns:
        if len(turn["content"]) == 1 and turn["content"][0]["type"] == "text":
            turn["content"] = turn["content"][0]["text"]

    if request.wants_json:
        system.append(_json_instruction(request.response_format or {}))
    limit = request.output_limit
    if limit and model.max_output_tokens:
        limit = min(limit, model.max_output_tokens)
    body: dict[str, Any] = {"model": model.upstream, "messages": turns,
                            "max_tokens": limit or model.max_output_tokens or DEFAULT_MAX_TOKENS}
    thinking = _thinking(request, model)
    if thinking:
        body["thinking"] = thinking
        body["max_tokens"] += thinking["budget_tokens"]
        if model.max_output_tokens:
            body["max_tokens"] = min(body["max_tokens"], model.max_output_tokens)
    if system:
        body["system"] = "\n\n".join(system)
    if request.temperature is not None and not thinking:
        # Anthropic's range is 0..1 where OpenAI's is 0..2; higher values are capped, not refused.
        body["temperature"] = min(request.temperature, 1.0)
    if request.top_p is not None and not thinking:
        body["top_p"] = request.top_p
    if request.stop:
        body["stop_sequences"] = [request.stop] if isinstance(request.stop, str) else request.stop
    if request.user:
        body["metadata"] = {"user_id": request.user}
    tools = [_tool(t) for t in request.tools or [] if t.get("type", "function") == "function"]
    if tools:
        body["tools"] = tools
        choice = _tool_choice(request.tool_choice)
        if getattr(request, "parallel_tool_calls", None) is False:
            choice = {**(choice or {"type": "auto"}), "disable_parallel_tool_use": True}
        if thinking and choice and choice["type"] in ("any", "tool"):
            raise ValueError("a required or named tool_choice cannot be combined with "
                             "reasoning_effort (extended thinking only allows 'auto' or 'none')")
        if choice:
            body["tool_choice"] = choice
    if stream:
        body["stream"] = True
    return body


def to_completion(data: dict[str, Any], *, model: str, provider: str) -> Completion:
    """Translate an Anthropic message into a completion in OpenAI form."""
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    for block in data.get("content") or []:
        if block.get("type") == "text":
            texts.append(block.get("text", ""))
        elif block.get("type") == "tool_use":
            arguments = orjson.dumps(block.get("input") or {}).decode()
            calls.append({"id": block.get("id"), "type": "function",
                          "function": {"name": block.get("name", ""), "arguments": arguments}})
    usage = data.get("usage") or {}
    return Completion(
        content="".join(texts) if texts or not calls else None,
        finish_reason=_STOP_REASONS.get(data.get("stop_reason") or "end_turn", "stop"),
        tool_calls=calls or None,
        usage=Usage(_input_tokens(usage), int(usage.get("output_tokens") or 0),
                    _details(int(usage.get("cache_read_input_tokens") or 0))),
        model=model, provider=provider)


def _content_blocks(content: str | list[dict[str, Any]] | None) -> list[dict[str, Any]]:
    """OpenAI message content as Anthropic blocks: text and images; empty text is dropped."""
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    blocks: list[dict[str, Any]] = []
    for part in content or []:
        if part.get("type") == "text" and part.get("text"):
            blocks.append({"type": "text", "text": part["text"]})
        elif part.get("type") == "image_url":
            image = _image(part.get("image_url"))
            if image:
                blocks.append(image)
    return blocks


def _image(ref: Any) -> dict[str, Any] | None:
    """An ``image_url`` part as an Anthropic image block (data URLs inline, others by URL)."""
    url = ref.get("url") if isinstance(ref, dict) else ref
    if not isinstance(url, str) or not url:
        return None
    if url.startswith("data:"):
        header, _, data = url[5:].partition(",")
        media_type, _, encoding = header.partition(";")
        if encoding != "base64" or not data:
            return None
        return {"type": "image", "source": {"type": "base64", "media_type": media_type,
                                            "data": data}}
    return {"type": "image", "source": {"type": "url", "url": url}}


def _tool_result_content(message: Message) -> str | list[dict[str, Any]]:
    if isinstance(message.content, list):
        return [b for b in _content_blocks(message.content) if b["type"] == "text"]
    return message.content or ""


def _tool_use(call: dict[str, Any]) -> dict[str, Any]:
    fn = call.get("function") or {}
    arguments = fn.get("arguments") or "{}"
    try:
        value = orjson.loads(arguments) if isinstance(arguments, str) else arguments
    except orjson.JSONDecodeError:
        raise ValueError(f"the arguments of tool call {call.get('id')!r} are not JSON") from None
    if not isinstance(value, dict):
        raise ValueError(f"the arguments of tool call {call.get('id')!r} are not a JSON object")
    return {"type": "tool_use", "id": call.get("id"), "name": fn.get("name", ""), "input": value}


def _tool(tool: dict[str, Any]) -> dict[str, Any]:
    fn = tool.get("function") or {}
    out: dict[str, Any] = {"name": fn.get("name", ""),
                           "input_schema": fn.get("parameters") or {"type": "object",
                                                                    "properties": {}}}
    if fn.get("description"):
        out["description"] = fn["description"]
    return out


def _tool_choice(choice: str | dict[str, Any] | None) -> dict[str, Any] | None:
    if choice is None:
        return None
    if isinstance(choice, dict):
        name = (choice.get("function") or {}).get("name")
        return {"type": "tool", "name": name} if name else None
    return {"auto": {"type": "auto"}, "none": {"type": "none"},
            "required": {"type": "any"}}.get(choice)


def _json_instruction(response_format: dict[str, Any]) -> str:
    if response_format.get("type") == "json_schema":
        schema = (response_format.get("json_schema") or {}).get("schema")
        if schema:
            return (JSON_INSTRUCTION + " It must validate against this JSON Schema:\n"
                    + orjson.dumps(schema).decode())
    return JSON_INSTRUCTION


def _thinking(request: ChatRequest, model: ModelProfile) -> dict[str, Any] | None:
    """Extended thinking for the request's ``reasoning_effort`` (None without one): the effort's
    budget, at most half the model's ``max_output_tokens`` so the answer keeps room."""
    if request.reasoning_effort is None:
        return None
    budget = THINKING_BUDGETS[request.reasoning_effort]
    if model.max_output_tokens:
        budget = min(budget, model.max_output_tokens // 2)
    if budget < THINKING_BUDGETS["minimal"]:
        raise ValueError(f"reasoning_effort needs max_output_tokens of at least "
                         f"{2 * THINKING_BUDGETS['minimal']} (extended thinking takes 1024 tokens "
                         f"or more); this model has {model.max_output_tokens}")
    return {"type": "enabled", "budget_tokens": budget}


def _details(cached: int) -> dict[str, Any] | None:
    """Anthropic's cache reads in OpenAI's ``prompt_tokens_details``; None without any."""
    return {"prompt_tokens_details": {"cached_tokens": cached}} if cached else None


def _input_tokens(usage: dict[str, Any]) -> int:
    """Prompt tokens: Anthropic counts cache writes and reads apart from ``input_tokens``."""
    return sum(int(usage.get(k) or 0) for k in (
        "input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens"))


def _first(group: BaseExceptionGroup) -> BaseException:
    """The first error inside a task group's (possibly nested) exception group."""
    error: BaseException = group
    while isinstance(error, BaseExceptionGroup):
        error = error.exceptions[0]
    return error


def _refusal(provider: str, model: str) -> ContentPolicy:
    return ContentPolicy(f"{provider} refused to answer (stop_reason 'refusal')",
                         provider=provider, model=model)
