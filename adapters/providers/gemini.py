"""Google's Gemini API (generativelanguage), translated to and from the canonical OpenAI format.

Requests: system messages become ``systemInstruction``; user and assistant turns become
``contents`` with roles ``user`` and ``model``; tool calls and tool results become
``functionCall`` and ``functionResponse`` parts; tools, tool choice, sampling options and JSON mode
go to ``tools``, ``toolConfig`` and ``generationConfig``. Safety blocks are content-policy errors.

OpenAI's other fields: ``n`` becomes ``candidateCount`` (each candidate a choice), ``seed`` is
passed as is, ``logprobs``/``top_logprobs`` become ``responseLogprobs``/``logprobs`` and the
``logprobsResult`` comes back in OpenAI's ``logprobs`` shape, ``reasoning_effort`` becomes
``thinkingConfig.thinkingBudget`` (:data:`THINKING_BUDGETS`); ``parallel_tool_calls`` has no
equivalent and is dropped. ``cachedContentTokenCount`` and ``thoughtsTokenCount`` come back as
OpenAI's cached and reasoning token details; thoughts are billed as output, so counted in it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Any

import orjson

from turnout.kernel.embeddings import EmbeddingRequest, Embeddings
from turnout.kernel.errors import ContentPolicy, ProviderUnavailable, StreamBroken
from turnout.kernel.types import ChatRequest, Chunk, Completion, ModelProfile, Usage

from .base import ProviderAdapter, append_turn
from .errors import (
    parse_json,
    stream_error,
    unexpected_shape,
)

THINKING_BUDGETS = {"minimal": 512, "low": 1024, "medium": 8192, "high": 24576}
"""``thinkingBudget`` for each ``reasoning_effort`` (within what every Gemini 2.5 model takes)."""

_FINISH = {"STOP": "stop", "MAX_TOKENS": "length"}
_BLOCKED = {"SAFETY", "RECITATION", "PROHIBITED_CONTENT", "BLOCKLIST", "SPII", "IMAGE_SAFETY"}
"""Finish reasons that mean the answer was withheld on content grounds."""

# The subset of OpenAPI schema fields Gemini accepts in function parameters and responseSchema;
# anything else (additionalProperties, $schema, $ref...) makes it answer 400.
_SCHEMA_KEYS = {"type", "format", "title", "description", "nullable", "enum", "maxItems",
                "minItems", "properties", "required", "minProperties", "maxProperties",
                "minLength", "maxLength", "pattern", "example", "anyOf", "propertyOrdering",
                "default", "items", "minimum", "maximum"}


class GeminiAdapter(ProviderAdapter):
    """Gemini: ``POST {base_url}/models/{id}:generateContent`` (or ``:streamGenerateContent``)
    with the key in ``x-goog-api-key``."""

    kind = "gemini"
    default_base_url = "https://generativelanguage.googleapis.com/v1beta"
    def url(self, model: ModelProfile, *, stream: bool) -> str:
        """The endpoint for ``model``; streams ask for SSE framing."""
        upstream = model.upstream.removeprefix("models/")
        if stream:
            return f"{self.base_url}/models/{upstream}:streamGenerateContent?alt=sse"
        return f"{self.base_url}/models/{upstream}:generateContent"

    key_header = "x-goog-api-key"
    """The key travels in a header, never in the URL, so it cannot leak through URL logging."""

    def payload(self, request: ChatRequest, model: ModelProfile) -> dict[str, Any]:
        """The generateContent body for ``request``; the fields ``passthrough_params`` lets
        through go into ``generationConfig`` as the client named them (``topK``, say)."""
        body = to_generate_request(request, model)
        extra = self.passed_through(request)
        if extra:
            body["generationConfig"] = {**body.get("generationConfig", {}), **extra}
        return body

    async def complete(self, request: ChatRequest, model: ModelProfile) -> Completion:
        """Send a non-streaming request and return the whole answer."""
        body = orjson.dumps(self.payload(request, model))
        data = await self.post_json(self.url(model, stream=False), body, model)
        if not isinstance(data, dict):
            raise ProviderUnavailable(f"{self.name} sent an answer that is not a JSON object",
                                      provider=self.name, model=model.name)
        with unexpected_shape(self.name, model.name):
            self._check_blocked(data, model)
            candidates = data.get("candidates") or []
            if not candidates:
                raise ProviderUnavailable(f"{self.name} sent an answer without candidates",
                                          provider=self.name, model=model.name)
            self._check_finish(candidates[0].get("finishReason"), model)
            first, *others = [self._choice(c, model) for c in candidates if isinstance(c, dict)]
            first.usage = _usage(data.get("usageMetadata"))
            first.choices = others or None
            return first

    def _choice(self, candidate: dict[str, Any], model: ModelProfile) -> Completion:
        """One candidate as a completion (without usage: the answer's covers every one)."""
        text, calls = _parts((candidate.get("content") or {}).get("parts") or [])
        tool_calls = [_tool_call(call, i) for i, call in enumerate(calls)] or None
        return Completion(content=text if text or not tool_calls else None,
                          finish_reason=_finish(candidate.get("finishReason"), bool(tool_calls)),
                          tool_calls=tool_calls, model=model.name, provider=self.name,
                          logprobs=openai_logprobs(candidate.get("logprobsResult")))

    async def stream(self, request: ChatRequest, model: ModelProfile) -> AsyncIterator[Chunk]:
        """Send a streaming request; yield text and tool-call deltas, then a final chunk with the
        finish reason and usage. A stream without a finish reason, or with an error, raises."""
        body = orjson.dumps(self.payload(request, model))
        emitted = False
        finish: str | None = None
        usage = Usage()
        calls = 0
        with unexpected_shape(self.name, model.name, mid_stream=True):
            async with aclosing(self.sse_events(self.url(model, stream=True), body, model)) as events:
                async for event in events:
                    data = parse_json(event.data, self.name, model.name, mid_stream=True)
                    if isinstance(data, list) and data:
                        data = data[0]
                    if not isinstance(data, dict):
                        continue
                    if data.get("error"):
                        raise stream_error(data, self.name, model.name, secrets=self.secrets,
                                           sent=body)
                    if not emitted:
                        self._check_blocked(data, model)
                    if data.get("usageMetadata"):
                        usage = _usage(data["usageMetadata"])
                    for candidate in (data.get("candidates") or [])[:1]:
                        text, found = _parts((candidate.get("content") or {}).get("parts") or [])
                        deltas = [{"index": calls + i, **_tool_call(c, calls + i)}
                                  for i, c in enumerate(found)]
                        calls += len(found)
                        if candidate.get("finishReason"):
                            finish = candidate["finishReason"]
                            if not emitted and not text and not deltas:
                                self._check_finish(finish, model)
                        if text or deltas:
                            yield Chunk(content=text or None, tool_calls=deltas or None,
                                        role=None if emitted else "assistant",
                                        logprobs=openai_logprobs(candidate.get("logprobsResult")))
                            emitted = True
            if finish is None:
                raise StreamBroken(f"{self.name} cut the stream before its finish reason",
                                   provider=self.name, model=model.name)
            yield Chunk(finish_reason="content_filter" if finish in _BLOCKED
                        else _finish(finish, calls > 0), usage=usage,
                        role=None if emitted else "assistant")

    def _check_blocked(self, data: dict[str, Any], model: ModelProfile) -> None:
        """Raise ContentPolicy when the prompt itself was blocked (``promptFeedback``)."""
        reason = (data.get("promptFeedback") or {}).get("blockReason")
        if reason:
            raise ContentPolicy(f"{self.name} blocked the prompt ({reason})",
                                provider=self.name, model=model.name)

    def _check_finish(self, reason: str | None, model: ModelProfile) -> None:
        """Raise ContentPolicy when the answer was withheld (finish reason SAFETY and the like)."""
        if reason in _BLOCKED:
            raise ContentPolicy(f"{self.name} withheld the answer (finishReason {reason})",
                                provider=self.name, model=model.name)

    async def embed(self, request: EmbeddingRequest, model: ModelProfile) -> Embeddings:
        """``POST {base_url}/models/{id}:batchEmbedContents``: one ``embedContent`` request per
        text (``outputDimensionality`` from ``dimensions``). Gemini reports no token usage for
        embeddings, so the kernel counts the input."""
        upstream = model.upstream.removeprefix("models/")
        one: dict[str, Any] = {"model": f"models/{upstream}"}
        if request.dimensions is not None:
            one["outputDimensionality"] = request.dimensions
        body = orjson.dumps({"requests": [{**one, "content": {"parts": [{"text": text}]}}
                                          for text in request.texts]})
        data = await self.post_json(f"{self.base_url}/models/{upstream}:batchEmbedContents",
                                    body, model)
        found = data.get("embeddings") if isinstance(data, dict) else None
        if not isinstance(found, list) or not all(
                isinstance(e, dict) and isinstance(e.get("values"), list) for e in found):
            raise ProviderUnavailable(f"{self.name} sent an embeddings answer without a list of "
                                      "'embeddings' with 'values'", provider=self.name,
                                      model=model.name)
        return Embeddings([e["values"] for e in found], Usage(), model=model.name,
                          provider=self.name)


# --- translation -------------------------------------------------------------------------------


def to_generate_request(request: ChatRequest, model: ModelProfile) -> dict[str, Any]:
    """Translate an OpenAI chat request into a Gemini ``generateContent`` body."""
    system: list[str] = []
    contents: list[dict[str, Any]] = []
    names: dict[str, str] = {}  # tool call id -> function name, for the tool results
    for message in request.messages:
        if message.role in ("system", "developer"):
            if message.text():
                system.append(message.text())
        elif message.role == "tool":
            name = names.get(message.tool_call_id or "") or message.name or "function"
            append_turn(contents, "parts", "user", [{"functionResponse": {
                "name": name, "response": _tool_response(message.text())}}])
        elif message.role == "assistant":
            parts = _content_parts(message.content)
            for call in message.tool_calls or []:
                fn = call.get("function") or {}
                names[call.get("id") or ""] = fn.get("name", "")
                parts.append({"functionCall": {"name": fn.get("name", ""),
                                               "args": _arguments(fn.get("arguments"))}})
            append_turn(contents, "parts", "model", parts)
        else:
            append_turn(contents, "parts", "user", _content_parts(message.content))

    body: dict[str, Any] = {"contents": contents}
    if system:
        body["systemInstruction"] = {"parts": [{"text": "\n\n".join(system)}]}
    declarations = [_declaration(t) for t in request.tools or []
                    if t.get("type", "function") == "function"]
    if declarations:
        body["tools"] = [{"functionDeclarations": declarations}]
        config = _calling_config(request.tool_choice)
        if config:
            body["toolConfig"] = {"functionCallingConfig": config}
    generation = _generation_config(request, model)
    if generation:
        body["generationConfig"] = generation
    return body


def _content_parts(content: str | list[dict[str, Any]] | None) -> list[dict[str, Any]]:
    """OpenAI message content as Gemini parts: text, and images given as data URLs."""
    if isinstance(content, str):
        return [{"text": content}] if content else []
    parts: list[dict[str, Any]] = []
    for part in content or []:
        if part.get("type") == "text" and part.get("text"):
            parts.append({"text": part["text"]})
        elif part.get("type") == "image_url":
            ref = part.get("image_url")
            url = ref.get("url") if isinstance(ref, dict) else ref
            if isinstance(url, str) and url.startswith("data:"):
                header, _, data = url[5:].partition(",")
                mime, _, encoding = header.partition(";")
                if encoding == "base64" and data:
                    parts.append({"inlineData": {"mimeType": mime, "data": data}})
    return parts


def _arguments(arguments: Any) -> dict[str, Any]:
    """Tool-call arguments (an OpenAI JSON string) as the object Gemini expects."""
    if isinstance(arguments, dict):
        return arguments
    try:
        value = orjson.loads(arguments or "{}")
    except orjson.JSONDecodeError:
        return {"arguments": arguments}
    return value if isinstance(value, dict) else {"value": value}


def _tool_response(text: str) -> dict[str, Any]:
    """A tool message's content as a ``functionResponse.response`` object."""
    try:
        value = orjson.loads(text) if text else None
    except orjson.JSONDecodeError:
        value = text
    return value if isinstance(value, dict) else {"result": value}


def _declaration(tool: dict[str, Any]) -> dict[str, Any]:
    fn = tool.get("function") or {}
    out: dict[str, Any] = {"name": fn.get("name", "")}
    if fn.get("description"):
        out["description"] = fn["description"]
    params = fn.get("parameters")
    if params and (params.get("properties") or params.get("type") != "object"):
        out["parameters"] = gemini_schema(params)
    return out


def gemini_schema(schema: Any) -> Any:
    """A JSON Schema cut down to the OpenAPI subset Gemini accepts; ``["T", "null"]`` types become
    ``nullable`` and ``const`` becomes a one-value ``enum``."""
    if isinstance(schema, list):
        return [gemini_schema(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key == "type" and isinstance(value, list):
            kinds = [v for v in value if v != "null"]
            if kinds:
                out["type"] = kinds[0]
            if "null" in value:
                out["nullable"] = True
        elif key == "const":
            out["enum"] = [value]
        elif key == "properties" and isinstance(value, dict):
            out[key] = {name: gemini_schema(sub) for name, sub in value.items()}
        elif key in ("items", "anyOf"):
            out[key] = gemini_schema(value)
        elif key in _SCHEMA_KEYS:
            out[key] = value
    return out


def _calling_config(choice: str | dict[str, Any] | None) -> dict[str, Any] | None:
    if isinstance(choice, dict):
        name = (choice.get("function") or {}).get("name")
        return {"mode": "ANY", "allowedFunctionNames": [name]} if name else None
    mode = {"auto": "AUTO", "none": "NONE", "required": "ANY"}.get(choice or "")
    return {"mode": mode} if mode else None


def _generation_config(request: ChatRequest, model: ModelProfile) -> dict[str, Any]:
    config: dict[str, Any] = {}
    if request.temperature is not None:
        config["temperature"] = request.temperature
    if request.top_p is not None:
        config["topP"] = request.top_p
    limit = request.output_limit
    if limit and model.max_output_tokens:
        limit = min(limit, model.max_output_tokens)
    if limit:
        config["maxOutputTokens"] = limit
    if request.stop:
        config["stopSequences"] = [request.stop] if isinstance(request.stop, str) else request.stop
    if request.seed is not None:
        config["seed"] = request.seed
    if request.presence_penalty is not None:
        config["presencePenalty"] = request.presence_penalty
    if request.frequency_penalty is not None:
        config["frequencyPenalty"] = request.frequency_penalty
    if request.choices > 1:
        config["candidateCount"] = request.choices
    if request.logprobs:
        config["responseLogprobs"] = True
        if request.top_logprobs:
            config["logprobs"] = request.top_logprobs
    if request.reasoning_effort is not None:
        config["thinkingConfig"] = {"thinkingBudget": THINKING_BUDGETS[request.reasoning_effort]}
    if request.wants_json:
        config["responseMimeType"] = "application/json"
        fmt = request.response_format or {}
        schema = (fmt.get("json_schema") or {}).get("schema") if fmt.get("type") == "json_schema" \
            else None
        if schema:
            config["responseSchema"] = gemini_schema(schema)
    return config


def _parts(parts: list[dict[str, Any]]) -> tuple[str, list[dict[str, Any]]]:
    """The answer text (thoughts left out) and the function calls of a candidate's parts."""
    texts = [p["text"] for p in parts if isinstance(p.get("text"), str) and not p.get("thought")]
    calls = [p["functionCall"] for p in parts if isinstance(p.get("functionCall"), dict)]
    return "".join(texts), calls


def _tool_call(call: dict[str, Any], index: int) -> dict[str, Any]:
    """A Gemini ``functionCall`` as an OpenAI tool call; Gemini sends no id, so one is made."""
    return {"id": call.get("id") or f"call_{index}", "type": "function",
            "function": {"name": call.get("name", ""),
                         "arguments": orjson.dumps(call.get("args") or {}).decode()}}


def _finish(reason: str | None, has_calls: bool) -> str:
    if has_calls and reason in (None, "STOP"):
        return "tool_calls"
    return _FINISH.get(reason or "STOP", "stop")


def _usage(meta: Any) -> Usage:
    """Kernel usage from ``usageMetadata``: thinking tokens are billed as output, so counted in
    it and reported as reasoning tokens; cached prompt tokens as cached tokens."""
    if not isinstance(meta, dict):
        return Usage()
    thoughts = int(meta.get("thoughtsTokenCount") or 0)
    cached = int(meta.get("cachedContentTokenCount") or 0)
    details: dict[str, Any] = {}
    if cached:
        details["prompt_tokens_details"] = {"cached_tokens": cached}
    if thoughts:
        details["completion_tokens_details"] = {"reasoning_tokens": thoughts}
    return Usage(int(meta.get("promptTokenCount") or 0),
                 int(meta.get("candidatesTokenCount") or 0) + thoughts, details or None)


def openai_logprobs(result: Any) -> dict[str, Any] | None:
    """Gemini's ``logprobsResult`` in OpenAI's ``logprobs`` shape (``content``: each chosen token
    with its log probability and its ``top_logprobs``); None when there is none."""
    if not isinstance(result, dict) or not isinstance(result.get("chosenCandidates"), list):
        return None
    tops = result.get("topCandidates") or []
    content = []
    for i, chosen in enumerate(result["chosenCandidates"]):
        top = tops[i].get("candidates") or [] if i < len(tops) and isinstance(tops[i], dict) \
            else []
        content.append({**_token(chosen), "top_logprobs": [_token(t) for t in top]})
    return {"content": content, "refusal": None}


def _token(entry: dict[str, Any]) -> dict[str, Any]:
    token = str(entry.get("token") or "")
    return {"token": token, "logprob": float(entry.get("logProbability") or 0.0),
            "bytes": list(token.encode())}
