"""A fake Gemini API (generativelanguage v1beta): ``models/{id}:generateContent`` and
``:streamGenerateContent`` (SSE with ``alt=sse``, else a JSON array).

Like the real API it takes the key from ``x-goog-api-key`` (a wrong key is a 400 with reason
``API_KEY_INVALID``, a missing one a 403), rejects unknown fields with "Invalid JSON payload
received", accepts only the roles ``user`` and ``model`` and the OpenAPI subset of JSON Schema in
function parameters, and answers with ``candidates``, ``usageMetadata`` and google.rpc errors.

Like the real API it answers ``candidateCount`` candidates (the second and later ones marked
``(2)``...), a ``logprobsResult`` per candidate when ``responseLogprobs`` is set, and with a
``thinkingConfig`` budget reports ``thoughtsTokenCount`` apart from ``candidatesTokenCount``; a
system instruction it has seen before counts as ``cachedContentTokenCount`` (within
``promptTokenCount``), as implicit caching does.
"""

from __future__ import annotations

import uuid
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from .openai_server import fake_vector
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

_FIELDS = {"contents", "systemInstruction", "tools", "toolConfig", "generationConfig",
           "safetySettings", "cachedContent"}
_GENERATION = {"temperature", "topP", "topK", "maxOutputTokens", "stopSequences",
               "candidateCount", "responseMimeType", "responseSchema", "seed", "presencePenalty",
               "frequencyPenalty", "responseLogprobs", "logprobs", "thinkingConfig",
               "responseModalities"}
_SCHEMA = {"type", "format", "title", "description", "nullable", "enum", "maxItems", "minItems",
           "properties", "required", "minProperties", "maxProperties", "minLength", "maxLength",
           "pattern", "example", "anyOf", "propertyOrdering", "default", "items", "minimum",
           "maximum"}

_STATUS_NAMES = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED",
                 404: "NOT_FOUND", 429: "RESOURCE_EXHAUSTED", 500: "INTERNAL",
                 503: "UNAVAILABLE", 504: "DEADLINE_EXCEEDED"}
_DEFAULT_MESSAGES = {
    401: "Request had invalid authentication credentials.",
    403: "The caller does not have permission",
    404: "models/unknown is not found for API version v1beta, or is not supported for "
         "generateContent.",
    429: "You exceeded your current quota, please check your plan and billing details.",
    500: "An internal error has occurred. Please retry or report in "
         "https://developers.generativeai.google/guide/troubleshooting",
    503: "The model is overloaded. Please try again later.",
}


def error_body(code: int, message: str, details: list[dict] | None = None) -> dict:
    """An error in Google's format (google.rpc.Status inside ``error``)."""
    error: dict[str, Any] = {"code": code, "message": message,
                             "status": _STATUS_NAMES.get(code, "UNKNOWN")}
    if details:
        error["details"] = details
    return {"error": error}


def _echo_body(behaviour: EchoRequest, code: int, key: str, asked: str) -> dict:
    """An :class:`EchoRequest` error in Google's format, its code text in ``status``."""
    return {"error": {"code": code, "message": behaviour.message(key, asked),
                      "status": behaviour.code(key, asked)}}


def _error(code: int, body: dict, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(body), status_code=code, media_type="application/json",
                    headers=headers)


def _status(behaviour: Status) -> Response:
    details = []
    if behaviour.retry_after is not None:
        # Gemini sends no Retry-After header; it puts the delay in a RetryInfo detail.
        details.append({"@type": "type.googleapis.com/google.rpc.RetryInfo",
                        "retryDelay": f"{behaviour.retry_after}s"})
    if isinstance(behaviour.body, dict):
        body = behaviour.body
    else:
        body = error_body(behaviour.code, behaviour.body or _DEFAULT_MESSAGES.get(
            behaviour.code, f"HTTP {behaviour.code}"), details)
    return _error(behaviour.code, body, behaviour.headers)


def _invalid(message: str) -> Response:
    return _error(400, error_body(400, message))


def _schema_problem(schema: Any, where: str) -> str | None:
    if isinstance(schema, list):
        for i, sub in enumerate(schema):
            problem = _schema_problem(sub, f"{where}[{i}]")
            if problem:
                return problem
        return None
    if not isinstance(schema, dict):
        return None
    for key, value in schema.items():
        if key not in _SCHEMA:
            return f"{where}: Unknown name \"{key}\": Cannot find field."
        if key == "properties" and isinstance(value, dict):
            if not value and schema.get("type") == "object":
                return f"{where}.properties: should be non-empty for OBJECT type"
            for name, sub in value.items():
                problem = _schema_problem(sub, f"{where}.properties[{name}]")
                if problem:
                    return problem
        elif key in ("items", "anyOf"):
            problem = _schema_problem(value, f"{where}.{key}")
            if problem:
                return problem
    return None


def _check(body: Any) -> Response | None:
    """The real API's 400s for a malformed request, or None when it is acceptable."""
    if not isinstance(body, dict):
        return _invalid("Invalid JSON payload received.")
    for key in body:
        if key not in _FIELDS:
            return _invalid(f"Invalid JSON payload received. Unknown name \"{key}\": "
                            "Cannot find field.")
    for key in body.get("generationConfig") or {}:
        if key not in _GENERATION:
            return _invalid(f"Invalid JSON payload received. Unknown name \"{key}\" at "
                            "'generation_config': Cannot find field.")
    contents = body.get("contents")
    if not isinstance(contents, list) or not contents:
        return _invalid("* GenerateContentRequest.contents: contents is not specified")
    for i, content in enumerate(contents):
        if content.get("role") not in ("user", "model"):
            return _invalid("Please use a valid role: user, model.")
        parts = content.get("parts")
        if not isinstance(parts, list) or not parts:
            return _invalid(f"* GenerateContentRequest.contents[{i}].parts: contents.parts must "
                            "not be empty.")
        for part in parts:
            response = part.get("functionResponse")
            if response is not None and (not response.get("name")
                                         or not isinstance(response.get("response"), dict)):
                return _invalid(f"* GenerateContentRequest.contents[{i}]: functionResponse "
                                "needs a name and a response object")
    for tool in body.get("tools") or []:
        for j, declaration in enumerate(tool.get("functionDeclarations") or []):
            problem = _schema_problem(declaration.get("parameters"),
                                      f"tools[0].function_declarations[{j}].parameters")
            if problem:
                return _invalid(f"Invalid JSON payload received. {problem}")
    schema = (body.get("generationConfig") or {}).get("responseSchema")
    problem = _schema_problem(schema, "generation_config.response_schema")
    if problem:
        return _invalid(f"Invalid JSON payload received. {problem}")
    return None


def _text(content: dict[str, Any]) -> str:
    return "".join(p.get("text", "") for p in content.get("parts") or [])


def _answer(body: dict[str, Any], behaviour: Behaviour) -> tuple[str, dict | None]:
    """Reply text, or a functionCall when tools are offered and the user asks about weather."""
    contents = body["contents"]
    responses = [p["functionResponse"] for p in contents[-1]["parts"] if "functionResponse" in p]
    if responses:
        return "Tool said: " + "; ".join(
            f"{r['name']}={orjson.dumps(r['response']).decode()}" for r in responses), None
    user = next((_text(c) for c in reversed(contents) if c["role"] == "user"), "")
    if isinstance(behaviour, Reply) and behaviour.text is not None:
        return behaviour.text, None
    declarations = [d for t in body.get("tools") or [] for d in t.get("functionDeclarations", [])]
    mode = ((body.get("toolConfig") or {}).get("functionCallingConfig") or {}).get("mode")
    if declarations and "weather" in user.lower() and mode != "NONE":
        return "", {"name": declarations[0]["name"], "args": {"location": city(user)}}
    if (body.get("generationConfig") or {}).get("responseMimeType") == "application/json":
        return orjson.dumps({"echo": user}).decode(), None
    return f"Echo: {user}", None


def _logprobs_result(text: str, top: int) -> dict:
    """A ``logprobsResult`` for ``text``: one chosen candidate per word (up to three)."""
    words = text.split()[:3]
    chosen = [{"token": w, "tokenId": i, "logProbability": -0.5} for i, w in enumerate(words)]
    return {"chosenCandidates": chosen,
            "topCandidates": [{"candidates": [c][:top]} for c in chosen]}


def gemini_app(script: Script, api_key: str = "AIza-test-key") -> Starlette:
    """The fake Gemini API, accepting only ``api_key``."""
    seen_systems: set[str] = set()

    async def models(request: Request) -> Response:
        target = request.path_params["target"]
        model, _, method = target.partition(":")
        if method not in ("generateContent", "streamGenerateContent"):
            return _error(404, error_body(404, f"Method not found: {method or target}"))
        try:
            body = orjson.loads(await request.body())
        except orjson.JSONDecodeError:
            return _invalid("Invalid JSON payload received.")
        path = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        script.record(path, dict(request.headers), body)
        if request.query_params.get("key"):
            return _invalid("this fake wants the key in the x-goog-api-key header, not the URL")
        key = request.headers.get("x-goog-api-key")
        if not key:
            return _error(403, error_body(
                403, "Method doesn't allow unregistered callers (callers without established "
                "identity). Please use API Key or other form of API consumer identity to call "
                "this API."))
        if key != api_key:
            return _error(400, error_body(400, "API key not valid. Please pass a valid API key.", [
                {"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "API_KEY_INVALID",
                 "domain": "googleapis.com",
                 "metadata": {"service": "generativelanguage.googleapis.com"}}]))
        invalid = _check(body)
        if invalid is not None:
            return invalid
        asked = next((_text(c) for c in reversed(body["contents"]) if c["role"] == "user"), "")
        try:
            behaviour = await script.settle(model, asked, request.is_disconnected)
        except ClientGone:
            return Response(status_code=499)
        if isinstance(behaviour, Status):
            return _status(behaviour)
        stream = method == "streamGenerateContent"
        if isinstance(behaviour, EchoRequest) and not behaviour.streams(stream):
            return _error(behaviour.status, _echo_body(behaviour, behaviour.status, key, asked))
        if isinstance(behaviour, TooLong):
            return _invalid("The input token count (1200000) exceeds the maximum number of "
                            "tokens allowed (1048576).")
        system = _text(body.get("systemInstruction") or {})
        prompt = count_tokens(system) + sum(count_tokens(_text(c)) for c in body["contents"])
        meta = {"modelVersion": model, "responseId": uuid.uuid4().hex[:22]}
        if isinstance(behaviour, Refuse):
            # Gemini answers 200 with no candidates and the reason in promptFeedback.
            blocked = {"promptFeedback": {"blockReason": "SAFETY", "safetyRatings": [
                {"category": "HARM_CATEGORY_DANGEROUS_CONTENT", "probability": "HIGH"}]},
                "usageMetadata": {"promptTokenCount": prompt, "totalTokenCount": prompt}, **meta}
            if not stream:
                return Response(orjson.dumps(blocked), media_type="application/json")
            return StreamingResponse(iter([sse(blocked)]), media_type="text/event-stream")
        text, call = _answer(body, behaviour)
        config = body.get("generationConfig") or {}
        count = config.get("candidateCount") or 1
        texts = [text if i == 0 or not text else f"{text} ({i + 1})" for i in range(count)]
        output = sum(count_tokens(t) for t in texts) + count * (
            count_tokens(orjson.dumps(call["args"]).decode()) + 1 if call else 0)
        thoughts = min((config.get("thinkingConfig") or {}).get("thinkingBudget") or 0, 40)
        usage = {"promptTokenCount": prompt, "candidatesTokenCount": output,
                 "totalTokenCount": prompt + output + thoughts}
        if thoughts:
            usage["thoughtsTokenCount"] = thoughts
        if system and system in seen_systems:
            usage["cachedContentTokenCount"] = count_tokens(system)
        seen_systems.add(system)

        def frame(parts: list[dict], finish: str | None = None, final: bool = False) -> dict:
            candidate: dict[str, Any] = {"content": {"parts": parts, "role": "model"},
                                         "index": 0}
            if finish:
                candidate["finishReason"] = finish
            return {"candidates": [candidate], "usageMetadata": usage if final else {
                "promptTokenCount": prompt, "totalTokenCount": prompt}, **meta}

        if not stream:
            answer = frame([], "STOP", final=True)
            answer["candidates"] = []
            for i, t in enumerate(texts):
                parts = ([{"text": t}] if t else []) + ([{"functionCall": call}] if call else [])
                candidate = {"content": {"parts": parts, "role": "model"}, "index": i,
                             "finishReason": "STOP"}
                if config.get("responseLogprobs"):
                    candidate["logprobsResult"] = _logprobs_result(t, config.get("logprobs") or 0)
                answer["candidates"].append(candidate)
            return Response(orjson.dumps(answer), media_type="application/json")
        chunks = [[{"text": part}] for part in pieces(text)] if text else []
        if call:
            chunks.append([{"functionCall": call}])
        frames = [frame(parts) for parts in chunks[:-1]]
        last = frame(chunks[-1] if chunks else [], "STOP", final=True)
        if request.query_params.get("alt") != "sse":
            # Without alt=sse the real API streams one JSON array of the same objects.
            return Response(orjson.dumps([*frames, last]), media_type="application/json")
        if isinstance(behaviour, EchoRequest):
            error = sse(_echo_body(behaviour, 500, key, asked))
        else:
            error = sse(error_body(500, getattr(behaviour, "message", "error")))
        return StreamingResponse(stream_body([], [sse(f) for f in frames], [sse(last)], behaviour,
                                             error), media_type="text/event-stream")

    return Starlette(routes=[
        Route("/v1beta/models/{model}:batchEmbedContents", batch_embed(script, api_key),
              methods=["POST"]),
        Route("/v1beta/models/{target}", models, methods=["POST"])])


def batch_embed(script: Script, api_key: str):
    """``POST /v1beta/models/{model}:batchEmbedContents`` of the fake Gemini API: the key in
    ``x-goog-api-key``, each request naming ``models/{model}``, ``outputDimensionality``
    honoured, the script's behaviours (``Status`` for an error); no usage, as Gemini sends
    none."""

    async def embed(request: Request) -> Response:
        model = request.path_params["model"]
        try:
            body = orjson.loads(await request.body())
        except orjson.JSONDecodeError:
            return _invalid("Invalid JSON payload received.")
        script.record(request.url.path, dict(request.headers), body)
        if request.headers.get("x-goog-api-key") != api_key:
            return _invalid("API key not valid. Please pass a valid API key.")
        asks = body.get("requests") if isinstance(body, dict) else None
        if not isinstance(asks, list) or not asks:
            return _invalid("* BatchEmbedContentsRequest.requests: must not be empty")
        texts = []
        for i, ask in enumerate(asks):
            if not isinstance(ask, dict) or ask.get("model") != f"models/{model}":
                return _invalid(f"* BatchEmbedContentsRequest.requests[{i}].model: must be "
                                f"models/{model}")
            parts = (ask.get("content") or {}).get("parts") or []
            if not parts or not all(isinstance(p, dict) and isinstance(p.get("text"), str)
                                    for p in parts):
                return _invalid(f"* BatchEmbedContentsRequest.requests[{i}].content: must "
                                "have text parts")
            texts.append(("".join(p["text"] for p in parts), ask.get("outputDimensionality")))
        behaviour = await script.settle(model, texts[0][0])
        if isinstance(behaviour, Status):
            return _status(behaviour)
        return Response(orjson.dumps({"embeddings": [{"values": fake_vector(t, d)}
                                                     for t, d in texts]}),
                        media_type="application/json")

    return embed
