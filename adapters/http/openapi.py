"""``GET /openapi.json``: the gateway's OpenAPI 3.1 document, served without a key.

Request schemas are derived from the pydantic models the endpoints validate with (chat
completions, Responses, Messages and count_tokens); embeddings and feedback, validated by hand,
have their schemas written here. Response schemas are minimal but accurate: the fields the
gateway always sends, typed as it sends them, extra fields allowed. Errors carry each API's
shape: OpenAI's ``{"error": {...}}`` everywhere but ``/v1/messages``, which answers in
Anthropic's ``{"type": "error", "error": {...}}``. Routes plugins register are listed too,
tagged ``plugin``, with the plugin's name and no schema (the gateway does not know it).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from turnout.kernel.kernel import Kernel
from turnout.kernel.request import ChatRequest

from .messages import Conversation, MessagesRequest
from .responses import ResponsesRequest

SCHEMAS = "#/components/schemas/"

ERROR_STATUSES = ("400", "401", "404", "408", "413", "415", "429", "500", "502", "503", "504")
"""What a request to an endpoint that asks an upstream may end in, besides 200."""

LOCAL_STATUSES = ("400", "401", "404", "408", "413", "415", "500")
"""What a request answered by the gateway alone (count_tokens: an unknown model; feedback: an
unknown request id) may end in."""


def ref(name: str) -> dict[str, str]:
    return {"$ref": SCHEMAS + name}


def model_schema(model: type[BaseModel], prefix: str, into: dict[str, Any]) -> dict[str, str]:
    """``model``'s JSON Schema as a component named ``prefix + model name``; the models it uses
    become components with the same prefix (so two APIs' ``Message`` models do not collide)."""
    schema = model.model_json_schema(ref_template=SCHEMAS + prefix + "{model}")
    for name, sub in schema.pop("$defs", {}).items():
        into[prefix + name] = sub
    into[prefix + model.__name__] = schema
    return ref(prefix + model.__name__)


def obj(required: dict[str, Any], optional: dict[str, Any] | None = None) -> dict[str, Any]:
    """An object schema whose ``required`` properties must be present; others are allowed."""
    return {"type": "object", "required": list(required),
            "properties": {**required, **(optional or {})}}


STRING = {"type": "string"}
INTEGER = {"type": "integer"}
NULLABLE_STRING = {"type": ["string", "null"]}

HAND_WRITTEN: dict[str, Any] = {
    "EmbeddingRequest": {
        "type": "object", "additionalProperties": False, "required": ["model", "input"],
        "properties": {
            "model": {"type": "string", "minLength": 1},
            "input": {"oneOf": [
                {"type": "string", "minLength": 1},
                {"type": "array", "minItems": 1, "maxItems": 2048,
                 "items": {"type": "string", "minLength": 1}}]},
            "encoding_format": {"enum": ["float", "base64", None]},
            "dimensions": {"type": ["integer", "null"], "minimum": 1},
            "user": NULLABLE_STRING}},
    "FeedbackRequest": {
        "type": "object", "additionalProperties": False, "required": ["request_id", "score"],
        "properties": {
            "request_id": {"type": "string", "minLength": 1},
            "score": {"type": "number", "minimum": -1, "maximum": 1},
            "comment": NULLABLE_STRING, "user": NULLABLE_STRING, "source": NULLABLE_STRING}},
    "OpenAIError": obj({"error": obj(
        {"message": STRING, "type": STRING},
        {"param": NULLABLE_STRING, "code": NULLABLE_STRING})}),
    "AnthropicError": obj({"type": {"const": "error"},
                           "error": obj({"type": STRING, "message": STRING})}),
    "ChatCompletion": obj({
        "id": STRING, "object": {"const": "chat.completion"}, "created": INTEGER, "model": STRING,
        "choices": {"type": "array", "items": obj({
            "index": INTEGER,
            "message": obj({"role": {"const": "assistant"}},
                           {"content": NULLABLE_STRING, "refusal": NULLABLE_STRING}),
            "finish_reason": NULLABLE_STRING})}},
        {"usage": obj({"prompt_tokens": INTEGER, "completion_tokens": INTEGER,
                       "total_tokens": INTEGER})}),
    "Response": obj({"id": STRING, "object": {"const": "response"}, "created_at": INTEGER,
                     "status": STRING, "model": STRING, "output": {"type": "array"}}),
    "Message": obj({
        "id": STRING, "type": {"const": "message"}, "role": {"const": "assistant"},
        "model": STRING, "content": {"type": "array", "items": obj({"type": STRING})},
        "stop_reason": NULLABLE_STRING, "stop_sequence": NULLABLE_STRING,
        "usage": obj({"input_tokens": INTEGER, "output_tokens": INTEGER})}),
    "TokenCount": obj({"input_tokens": INTEGER}),
    "EmbeddingList": obj({
        "object": {"const": "list"}, "model": STRING,
        "data": {"type": "array", "items": obj({
            "object": {"const": "embedding"}, "index": INTEGER,
            "embedding": {"oneOf": [{"type": "array", "items": {"type": "number"}}, STRING]}})},
        "usage": obj({"prompt_tokens": INTEGER, "total_tokens": INTEGER})}),
    "Model": obj({"id": STRING, "object": {"const": "model"}, "created": INTEGER,
                  "owned_by": STRING}),
    "ModelList": obj({"object": {"const": "list"}, "data": {"type": "array", "items": ref("Model")}}),
    "Feedback": obj({"object": {"const": "feedback"}, "id": STRING, "request_id": STRING,
                     "score": {"type": "number"}, "recorded": {"const": True}}),
    "Health": obj({"status": {"const": "ok"}}),
    "Ready": obj({"status": {"const": "ready"}, "models": INTEGER}),
    "Starting": obj({"status": {"const": "starting"}}),
}


EVENT = obj({"data": STRING}, {"event": STRING, "id": STRING})
"""One server-sent event of a streamed answer, the schema of each event (how schemathesis
reads an event stream's schema in OpenAPI 3.1): its ``data`` is a JSON chunk or event in the
API's streaming shape (chat completions end with ``[DONE]``); Responses and Messages events also
carry their ``event`` name."""


def json_body(schema: dict[str, Any]) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}


def responses(ok: dict[str, Any], errors: tuple[str, ...], error: str = "OpenAIError",
              stream: bool = False) -> dict[str, Any]:
    content = json_body(ok)
    if stream:
        content["text/event-stream"] = {"schema": EVENT}
    out: dict[str, Any] = {"200": {"description": "The answer.", "content": content}}
    for status in errors:
        out[status] = {"description": "An error, in the API's error shape.",
                       "content": json_body(ref(error))}
    return out


BEARER = [{"bearer": []}]
"""Security of the OpenAI-style endpoints: ``Authorization: Bearer <key>``."""


QUESTION = [{"role": "user", "content": "How do volcanoes form?"}]
EXAMPLES: dict[str, dict[str, Any]] = {
    "createChatCompletion": {"model": "auto", "messages": QUESTION},
    "createResponse": {"model": "auto", "input": "How do volcanoes form?"},
    "createMessage": {"model": "auto", "max_tokens": 256, "messages": QUESTION},
    "countMessageTokens": {"model": "auto", "messages": QUESTION},
    "createEmbedding": {"model": "auto", "input": "How do volcanoes form?"},
    "createFeedback": {"request_id": "req_0123456789abcdef", "score": 1, "comment": "Clear."},
}
"""A request each operation answers (``auto`` names whatever models are configured)."""


def post(summary: str, body: dict[str, Any], answers: dict[str, Any], op: str,
         security: list | None = None) -> dict[str, Any]:
    content = json_body(body)
    example = EXAMPLES.get(op.removesuffix("Unversioned"))
    if example is not None:
        content["application/json"]["example"] = example
    return {"post": {"operationId": op, "summary": summary, "security": security or BEARER,
                     "requestBody": {"required": True, "content": content},
                     "responses": answers}}


def build(kernel: Kernel | None = None) -> dict[str, Any]:
    """The OpenAPI 3.1 document of the API, with the routes ``kernel``'s plugins registered."""
    schemas: dict[str, Any] = dict(HAND_WRITTEN)
    chat = model_schema(ChatRequest, "Chat", schemas)
    chat_answers = responses(ref("ChatCompletion"), ERROR_STATUSES, stream=True)
    paths: dict[str, Any] = {
        "/v1/chat/completions": post("Create a chat completion (OpenAI).", chat, chat_answers,
                                     "createChatCompletion"),
        "/chat/completions": post("The same as /v1/chat/completions.", chat, chat_answers,
                                  "createChatCompletionUnversioned"),
        "/v1/responses": post(
            "Create a response (OpenAI Responses API).",
            model_schema(ResponsesRequest, "Responses", schemas),
            responses(ref("Response"), ERROR_STATUSES, stream=True), "createResponse"),
        "/v1/messages": post(
            "Create a message (Anthropic Messages API).",
            model_schema(MessagesRequest, "Messages", schemas),
            responses(ref("Message"), ERROR_STATUSES, "AnthropicError", stream=True),
            "createMessage", [{"x-api-key": []}, {"bearer": []}]),
        "/v1/messages/count_tokens": post(
            "Count a conversation's input tokens (Anthropic Messages API).",
            model_schema(Conversation, "Messages", schemas),
            responses(ref("TokenCount"), LOCAL_STATUSES, "AnthropicError"),
            "countMessageTokens", [{"x-api-key": []}, {"bearer": []}]),
        "/v1/embeddings": post("Create embeddings (OpenAI).", ref("EmbeddingRequest"),
                               responses(ref("EmbeddingList"), ERROR_STATUSES),
                               "createEmbedding"),
        "/v1/feedback": post("Score an answer, from -1 (bad) to 1 (good).",
                             ref("FeedbackRequest"),
                             responses(ref("Feedback"), LOCAL_STATUSES),
                             "createFeedback"),
        "/v1/models": {"get": {"operationId": "listModels", "summary": "List models and routes.",
                               "security": BEARER,
                               "responses": responses(ref("ModelList"), ("401",))}},
        "/v1/models/{model_id}": {"get": {
            "operationId": "retrieveModel", "summary": "One model, route or 'auto'.",
            "security": BEARER,
            "parameters": [{"name": "model_id", "in": "path", "required": True,
                            "schema": {"type": "string", "minLength": 1}}],
            "responses": responses(ref("Model"), ("401", "404"))}},
        "/healthz": {"get": {"operationId": "health", "summary": "The process is up.",
                             "security": [], "responses": responses(ref("Health"), ())}},
        "/readyz": {"get": {
            "operationId": "ready", "summary": "The kernel has started.", "security": [],
            "responses": {"200": {"description": "Ready.", "content": json_body(ref("Ready"))},
                          "503": {"description": "Starting.",
                                  "content": json_body(ref("Starting"))}}}},
        "/openapi.json": {"get": {
            "operationId": "openapi", "summary": "This document.", "security": [],
            "responses": {"200": {"description": "The OpenAPI document.",
                                  "content": json_body({"type": "object"})}}}},
    }
    if kernel is not None:
        for path, route in kernel.http_routes.items():
            owner = kernel.http_routes.owners[path]
            paths[path] = {method.lower(): {
                "operationId": f"{owner}:{method.lower()}:{path}", "tags": ["plugin"],
                "summary": f"Served by the plugin {owner!r}.",
                "responses": {"default": {"description": f"As the plugin {owner!r} answers."}}}
                for method in route.methods}
    return {
        "openapi": "3.1.0",
        "info": {"title": "Turnout", "version": "1",
                 "description": "An LLM gateway speaking OpenAI's and Anthropic's APIs."},
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "x-api-key": {"type": "apiKey", "in": "header", "name": "x-api-key"}}},
        "security": BEARER,
    }


class OpenAPI:
    """The handler of ``GET /openapi.json``; the document is built on first request (after the
    plugins registered their routes) and kept."""

    def __init__(self, kernel: Kernel) -> None:
        self.kernel = kernel
        self.document: dict[str, Any] | None = None

    async def serve(self, http: Request) -> Response:
        if self.document is None:
            self.document = build(self.kernel)
        return JSONResponse(self.document)
