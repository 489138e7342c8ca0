"""The OpenAI Chat Completions request, validated strictly at the edge.

Types are exactly as OpenAI's API defines them: no coercion (``"stream": "yes"`` and
``"max_tokens": true`` are refused), content parts checked by role, tools and response formats
checked in shape, JSON schemas checked to be JSON Schemas, and ``null`` accepted wherever OpenAI's
schema allows it. Unknown top-level fields are kept in ``model_extra`` for the edge to refuse
unless a provider lists them as pass-through (``passthrough_params``); unknown fields inside a
message are refused. Everything here runs before any routing or upstream call.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any, Literal

import jsonschema
import orjson
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from .errors import clip

MAX_NESTING = 64
"""Deepest nesting of objects and arrays a request may have; deeper is refused (the serializers
that pass a request on have limits of their own, and no real request comes near this)."""

MAX_CHOICES = 8
"""Most answers one request may ask for (``n``). Every choice is paid for, and where a provider
cannot answer several at once (Anthropic) each is a call of its own made in parallel, so a cap
keeps one request from turning into a burst of upstream calls that rate limits and budgets,
which count requests, would not see coming."""

STRICT = ConfigDict(strict=True, extra="forbid")
OPEN = ConfigDict(strict=True, extra="allow")


# --- content parts -----------------------------------------------------------------------------


class TextPart(BaseModel):
    model_config = OPEN
    type: Literal["text"]
    text: str


class ImageURL(BaseModel):
    model_config = OPEN
    url: str = Field(min_length=1)
    detail: Literal["auto", "low", "high"] | None = None


class ImagePart(BaseModel):
    model_config = OPEN
    type: Literal["image_url"]
    image_url: ImageURL


class InputAudio(BaseModel):
    model_config = OPEN
    data: str
    format: Literal["wav", "mp3"]


class AudioPart(BaseModel):
    model_config = OPEN
    type: Literal["input_audio"]
    input_audio: InputAudio


class FileRef(BaseModel):
    model_config = OPEN
    file_data: str | None = None
    file_id: str | None = None
    filename: str | None = None


class FilePart(BaseModel):
    model_config = OPEN
    type: Literal["file"]
    file: FileRef


class RefusalPart(BaseModel):
    model_config = OPEN
    type: Literal["refusal"]
    refusal: str


PART_TYPES: dict[str, type[BaseModel]] = {
    "text": TextPart, "image_url": ImagePart, "input_audio": AudioPart, "file": FilePart,
    "refusal": RefusalPart,
}

PARTS_BY_ROLE: dict[str, tuple[str, ...]] = {
    "system": ("text",),
    "developer": ("text",),
    "user": ("text", "image_url", "input_audio", "file"),
    "assistant": ("text", "refusal"),
    "tool": ("text",),
    "function": ("text",),
}
"""The content parts each role may send, as OpenAI's API defines them."""


def describe(error: dict[str, Any]) -> tuple[str, str]:
    """A pydantic error in the client's words: its path (``messages[0].content``) and what was
    expected, with the value sent quoted cut short (objects and arrays not quoted)."""
    path = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error["loc"])
    msg = error["msg"].removeprefix("Value error, ")
    if error["type"] == "missing":
        msg = "this parameter is required"
    elif error["type"] == "extra_forbidden":
        msg = "unknown field"
    got = error.get("input")
    if error["type"] not in ("missing", "extra_forbidden") and not isinstance(got, (dict, list)):
        msg += f" (got {clip(repr(got))})"
    return path.lstrip("."), msg


def check(model: type[BaseModel], value: Any, where: str) -> BaseModel:
    """``value`` validated strictly as ``model``; a ValueError naming the path inside
    ``where`` (``content[0].text``) and what was expected, otherwise."""
    try:
        return model.model_validate(value, strict=True)
    except ValidationError as exc:
        path, msg = describe(exc.errors()[0])
        joined = f"{where}.{path}" if where and path and not path.startswith("[") \
            else f"{where}{path}"
        raise ValueError(f"{joined}: {msg}") from None


def check_one_of(models: dict[str, type[BaseModel]], value: Any, where: str,
                 allowed: tuple[str, ...] | None = None) -> BaseModel:
    """``value`` as the model its ``type`` names among ``models`` (and ``allowed``)."""
    if not isinstance(value, dict):
        raise ValueError(f"{where}: expected an object (got {clip(repr(value))})")
    kind = value.get("type")
    allowed = allowed or tuple(models)
    if kind not in allowed:
        raise ValueError(f"{where}.type: expected one of {', '.join(map(repr, allowed))} "
                         f"(got {clip(repr(kind))})")
    return check(models[kind], value, where)


# --- messages ----------------------------------------------------------------------------------


class FunctionCall(BaseModel):
    model_config = OPEN
    name: str
    arguments: str


class ToolCall(BaseModel):
    model_config = OPEN
    id: str
    type: Literal["function"]
    function: FunctionCall


class Message(BaseModel):
    """One chat message in OpenAI format. Content parts stay plain dicts (adapters translate
    them), after they were checked against the parts the role may send."""

    model_config = STRICT

    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None
    refusal: str | None = None
    function_call: dict[str, Any] | None = None
    audio: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _parts_fit_the_role(self) -> "Message":
        if isinstance(self.content, list):
            for i, part in enumerate(self.content):
                check_one_of(PART_TYPES, part, f"content[{i}]", PARTS_BY_ROLE[self.role])
        for i, call in enumerate(self.tool_calls or ()):
            check(ToolCall, call, f"tool_calls[{i}]")
        if self.role == "tool" and not self.tool_call_id:
            raise ValueError("a 'tool' message needs 'tool_call_id'")
        return self

    def text(self) -> str:
        """The message's text, with the text parts of multi-part content joined."""
        if isinstance(self.content, str):
            return self.content
        if not self.content:
            return ""
        return "\n".join(p["text"] for p in self.content if p.get("type") == "text")


# --- tools and formats -------------------------------------------------------------------------


class FunctionDef(BaseModel):
    model_config = OPEN
    name: str = Field(pattern=r"^[a-zA-Z0-9_-]{1,64}$")
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class Tool(BaseModel):
    model_config = OPEN
    type: Literal["function"]
    function: FunctionDef


class NamedFunction(BaseModel):
    model_config = OPEN
    name: str


class NamedToolChoice(BaseModel):
    model_config = OPEN
    type: Literal["function"]
    function: NamedFunction


class JSONSchemaFormat(BaseModel):
    model_config = OPEN
    name: str = Field(pattern=r"^[a-zA-Z0-9_-]{1,64}$")
    description: str | None = None
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None


class TextFormat(BaseModel):
    model_config = OPEN
    type: Literal["text"]


class JSONObjectFormat(BaseModel):
    model_config = OPEN
    type: Literal["json_object"]


class JSONSchemaResponseFormat(BaseModel):
    model_config = OPEN
    type: Literal["json_schema"]
    json_schema: JSONSchemaFormat


RESPONSE_FORMATS: dict[str, type[BaseModel]] = {
    "text": TextFormat, "json_object": JSONObjectFormat, "json_schema": JSONSchemaResponseFormat,
}


class SchemaInvalid(ValueError):
    """A JSON schema in the request is not a valid JSON Schema; ``where`` is its path inside."""

    def __init__(self, message: str, where: str) -> None:
        super().__init__(message)
        self.where = where


def check_schema(schema: dict[str, Any]) -> None:
    """Raise SchemaInvalid when ``schema`` is not a valid JSON Schema (checked once per
    distinct schema)."""
    problem = _schema_problem(orjson.dumps(schema, option=orjson.OPT_SORT_KEYS))
    if problem is not None:
        raise SchemaInvalid(*problem)


@lru_cache(maxsize=512)
def _schema_problem(schema_json: bytes) -> tuple[str, str] | None:
    schema = orjson.loads(schema_json)
    try:
        jsonschema.validators.validator_for(schema).check_schema(schema)
    except jsonschema.exceptions.SchemaError as exc:
        where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in exc.path)
        return exc.message, where
    return None


# --- the request -------------------------------------------------------------------------------


class ChatRequest(BaseModel):
    """An OpenAI Chat Completions request, validated at the edge before any upstream is called.

    Every field OpenAI's API defines is declared, so anything in ``model_extra`` is unknown to it:
    the edge refuses those unless a configured provider passes them through.
    """

    model_config = OPEN

    model: str = Field(min_length=1)
    messages: list[Message] = Field(min_length=1)
    stream: bool | None = False
    stream_options: dict[str, Any] | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    n: int | None = Field(default=None, ge=1, le=MAX_CHOICES)
    stop: str | list[str] | None = None
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    seed: int | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    response_format: dict[str, Any] | None = None
    user: str | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    logit_bias: dict[str, int] | None = None
    metadata: dict[str, str] | None = None
    store: bool | None = None
    modalities: list[Literal["text", "audio"]] | None = None
    audio: dict[str, Any] | None = None
    prediction: dict[str, Any] | None = None
    reasoning_effort: Literal["minimal", "low", "medium", "high"] | None = None
    service_tier: str | None = None
    functions: list[dict[str, Any]] | None = None
    function_call: str | dict[str, Any] | None = None

    @field_validator("stream", mode="after")
    @classmethod
    def _null_stream_is_false(cls, v: bool | None) -> bool:
        return bool(v)

    @field_validator("stop")
    @classmethod
    def _stop_limit(cls, v: str | list[str] | None) -> str | list[str] | None:
        if isinstance(v, list) and len(v) > 4:
            raise ValueError("at most 4 stop sequences")
        return v

    @field_validator("tools")
    @classmethod
    def _tools_shape(cls, v: list[dict[str, Any]] | None) -> list[dict[str, Any]] | None:
        for i, raw in enumerate(v or ()):
            tool = check(Tool, raw, f"[{i}]")
            if tool.function.parameters is not None:
                try:
                    check_schema(tool.function.parameters)
                except SchemaInvalid as exc:
                    raise ValueError(f"[{i}].function.parameters{exc.where} is not a valid "
                                     f"JSON Schema: {exc}") from None
        return v

    @field_validator("tool_choice")
    @classmethod
    def _tool_choice_shape(cls, v: str | dict[str, Any] | None) -> str | dict[str, Any] | None:
        if isinstance(v, str) and v not in ("none", "auto", "required"):
            raise ValueError(f"expected 'none', 'auto', 'required' or an object naming a function "
                             f"(got {clip(repr(v))})")
        if isinstance(v, dict):
            check(NamedToolChoice, v, "")
        return v

    @field_validator("response_format")
    @classmethod
    def _format_shape(cls, v: dict[str, Any] | None) -> dict[str, Any] | None:
        if v is None:
            return v
        parsed = check_one_of(RESPONSE_FORMATS, v, "")
        schema = getattr(getattr(parsed, "json_schema", None), "schema_", None)
        if schema is not None:
            try:
                check_schema(schema)
            except SchemaInvalid as exc:
                raise ValueError(f"json_schema.schema{exc.where} is not a valid JSON Schema: "
                                 f"{exc}") from None
        return v

    @field_validator("n")
    @classmethod
    def _n_not_streamed(cls, v: int | None, info: ValidationInfo) -> int | None:
        if v is not None and v > 1 and info.data.get("stream"):
            raise ValueError(f"n = {v} cannot be streamed here; ask for one choice per stream, "
                             "or for n choices without stream")
        return v

    @field_validator("top_logprobs")
    @classmethod
    def _top_needs_logprobs(cls, v: int | None, info: ValidationInfo) -> int | None:
        if v is not None and not info.data.get("logprobs"):
            raise ValueError("top_logprobs needs logprobs = true (it says how many alternatives "
                             "to return for each token of the logprobs it asks for)")
        return v

    @property
    def choices(self) -> int:
        """How many answers the caller asked for (``n``, 1 when unset)."""
        return self.n or 1

    @property
    def output_limit(self) -> int | None:
        """The caller's cap on output tokens, whichever field carried it."""
        return self.max_completion_tokens or self.max_tokens

    @property
    def wants_json(self) -> bool:
        """True when the caller asked for JSON mode or a JSON schema."""
        return bool(self.response_format) and self.response_format.get("type") in (
            "json_object", "json_schema")

    def prompt_text(self) -> str:
        """Every message's text, joined; what classifiers and token counters read."""
        return "\n".join(m.text() for m in self.messages)


def too_deep(value: Any, limit: int = MAX_NESTING) -> str | None:
    """The path of the first place in a decoded JSON value nested deeper than ``limit``, or
    None. Iterative, so a hostile body cannot exhaust the stack."""
    stack: list[tuple[Any, int, str]] = [(value, 1, "")]
    while stack:
        node, depth, path = stack.pop()
        if isinstance(node, dict):
            if depth > limit:
                return path or "(body)"
            stack.extend((v, depth + 1, f"{path}.{k}" if path else str(k))
                         for k, v in node.items() if isinstance(v, (dict, list)))
        elif isinstance(node, list):
            if depth > limit:
                return path or "(body)"
            stack.extend((v, depth + 1, f"{path}[{i}]") for i, v in enumerate(node)
                         if isinstance(v, (dict, list)))
    return None
