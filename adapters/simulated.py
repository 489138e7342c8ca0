"""The simulated model fleet: a local OpenAI-compatible HTTP server with tiers that behave unlike.

Providers of kind ``simulated`` talk to it over real HTTP, so routing, fallbacks and costs can be
seen with no provider keys. Each model of ``[simulation.models]`` has its own latency, error and
rate-limit rates, streaming speed and answer quality; a seeded RNG makes runs reproducible. The
answers are canned text built from the prompt (no language model is involved) and say so.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import random
import re
import socket
import threading
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import orjson
from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from turnout.kernel import tokens
from turnout.kernel.config import SimulatedModel, Simulation
from turnout.kernel.types import ChatRequest

LATENCY_CAP = 5.0
"""A latency draw is capped at this many times the model's median."""

STREAM_BUDGET_S = 3.0
"""Longest time the content of one stream is spread over, whatever the model's speed."""

ERROR_STATUSES = (500, 502, 503)
"""Statuses of simulated upstream failures."""

RETRY_AFTER_S = 1
"""Retry-After (seconds) of simulated rate limits."""

START_TIMEOUT_S = 5.0
"""How long :meth:`Fleet.start` waits for the server to accept connections."""

_UVICORN_LOGGERS = ("uvicorn.error", "uvicorn.access", "uvicorn.asgi")


# --- the draw ---------------------------------------------------------------------------------


@dataclass(slots=True, frozen=True)
class Outcome:
    """What the dice decided for one request: its status, delay and whether the answer is good."""

    status: int
    latency_ms: float
    good: bool


class Dice:
    """The fleet's seeded RNG; every request draws the same number of values in the same order,
    so one seed gives one sequence of outcomes."""

    def __init__(self, seed: int | None) -> None:
        self._rng = random.Random(seed)
        self._lock = threading.Lock()

    def roll(self, model: SimulatedModel) -> Outcome:
        """Draw the outcome of one request to ``model``."""
        with self._lock:
            limited = self._rng.random() < model.rate_limit_rate
            failed = self._rng.random() < model.error_rate
            status = ERROR_STATUSES[self._rng.randrange(len(ERROR_STATUSES))]
            z = self._rng.normalvariate(0.0, 1.0)
            good = self._rng.random() < model.quality
        latency = min(model.latency_ms * math.exp(model.jitter * z), LATENCY_CAP * model.latency_ms)
        if limited:
            return Outcome(429, 0.0, good)
        if failed:
            return Outcome(status, latency / 2, good)
        return Outcome(200, latency, good)


# --- reading the prompt -----------------------------------------------------------------------

_WORD = re.compile(r"[A-Za-z][A-Za-z0-9'_-]{2,}")
_STOPWORDS = frozenset("""
a about above after again all also am an and any are as at be because been before being below
between both but by can could did do does doing down during each few for from further had has
have having he her here hers him his how i if in into is it its itself just me more most my no
nor not now of off on once only or other our ours out over own please same she should so some
such than that the their theirs them then there these they this those through to too under until
up very was we were what when where which while who whom why will with would you your yours
tell give make explain write want need like know answer question following below above help
summarize summary list describe show name compare find create build define translate briefly
short detailed think step using use way ways get best example today thing things many much
""".split())
_LINE_OPTION = re.compile(r"^[ \t]*\(?([A-Ja-j])[.):][ \t]+(\S[^\n]*)$", re.M)
_INLINE_OPTION = re.compile(r"\(([A-J])\)\s*([^()\n]+?)\s*(?=\([A-J]\)|$)", re.M)
_CODE = re.compile(r"```|\bdef |\bclass |\bfunction\b|\bcode\b|\bscript\b|\bregex\b|\bSQL\b", re.I)
_SUMMARY = re.compile(r"\bsummari[sz]e\b|\btl;?dr\b|\bsummary\b", re.I)
_GENERIC_TOOL_WORDS = frozenset("get set list search fetch run do make create update delete find "
                                "lookup look query call tool use read write send".split())


def _digest(*parts: str) -> int:
    """A stable hash (unlike ``hash``, the same in every process)."""
    return int.from_bytes(hashlib.sha256("\x00".join(parts).encode()).digest()[:8], "big")


def _clip(text: str, limit: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def _gist(text: str) -> str:
    """The first line or sentence of a message, short enough to quote."""
    first = next((line for line in text.splitlines() if line.strip()), "")
    sentence = re.split(r"(?<=[.?!])\s", first.strip(), maxsplit=1)[0]
    return _clip(sentence, 90) or "(an empty message)"


def _keywords(text: str, limit: int = 3) -> list[str]:
    seen: dict[str, str] = {}
    for word in _WORD.findall(text):
        low = word.lower()
        if low not in _STOPWORDS and low not in seen:
            seen[low] = word
    return list(seen.values())[:limit]


def _options(text: str) -> list[tuple[str, str]]:
    """Multiple-choice options (``A. ...`` lines or inline ``(A) ...``), in order from A."""
    for pattern in (_LINE_OPTION, _INLINE_OPTION):
        found: dict[str, str] = {}
        for letter, label in pattern.findall(text):
            found.setdefault(letter.upper(), label.strip())
        options = []
        for i in range(len(found)):
            letter = chr(ord("A") + i)
            if letter not in found:
                break
            options.append((letter, found[letter]))
        if len(options) >= 2:
            return options
    return []


def _last_user(request: ChatRequest) -> str:
    return next((m.text() for m in reversed(request.messages) if m.role == "user"), "")


# --- composing the answer ---------------------------------------------------------------------


@dataclass(slots=True)
class Answer:
    """The simulated answer to one request, before the wire format."""

    content: str | None
    tool_calls: list[dict[str, Any]] | None
    finish_reason: str
    completion_tokens: int


def _listing(words: list[str]) -> str:
    if not words:
        return "the topic"
    if len(words) == 1:
        return words[0]
    return ", ".join(words[:-1]) + " and " + words[-1]


def _choice(prompt: str, options: list[tuple[str, str]], good: bool) -> tuple[str, str]:
    """The option a good answer picks (stable per prompt), or a different one for a poor answer."""
    right = _digest("choice", prompt) % len(options)
    if good:
        return options[right]
    return options[(right + 1 + _digest("wrong", prompt) % (len(options) - 1)) % len(options)]


def _text(model: str, request: ChatRequest, good: bool) -> str:
    """A readable, obviously simulated reply derived from the prompt."""
    tag = f"[{model}]"
    last = request.messages[-1]
    prompt = _last_user(request)
    gist, words = _gist(prompt), _keywords(prompt)
    options = _options(prompt)
    if options:
        letter, label = _choice(prompt, options, good)
        return f"{tag} Answer: {letter}. {label}"
    if last.role == "tool":
        tool = last.name or "tool"
        return (f"{tag} Based on the {tool} result ({_clip(last.text(), 120)}), here is the "
                f"simulated answer to \"{gist}\".")
    if not good:
        return f"{tag} Hmm, {words[0] if words else 'that'}? Hard to say; maybe look it up."
    if _SUMMARY.search(prompt):
        return (f"{tag} Summary (simulated): the text is {len(prompt.split())} words about "
                f"{_listing(words)}. Its main point comes first, then the supporting details. "
                "No language model was called to write this.")
    if _CODE.search(prompt):
        name = re.sub(r"\W+", "_", (words[0] if words else "solution").lower()).strip("_")
        return (f"{tag} A sketch (simulated) for \"{gist}\":\n```python\n"
                f"def {name or 'solution'}():\n    ...  # the real implementation goes here\n```\n"
                "No language model was called to write this.")
    return (f"{tag} Simulated answer to \"{gist}\". A real model would now cover "
            f"{_listing(words)}: what each is, how they relate, and a short example. "
            "No language model was called to write this.")


def _instance(schema: Any, hints: dict[str, Any], default: Any, depth: int = 0) -> Any:
    """A value matching a (simple) JSON schema, filled from ``hints`` by property name."""
    if not isinstance(schema, dict) or depth > 8:
        return default
    if "const" in schema:
        return schema["const"]
    if schema.get("enum"):
        return schema["enum"][0]
    for key in ("anyOf", "oneOf", "allOf"):
        if schema.get(key):
            return _instance(schema[key][0], hints, default, depth + 1)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "object" or (kind is None and "properties" in schema):
        return {name: _instance(sub, hints, hints.get(name, default), depth + 1)
                for name, sub in (schema.get("properties") or {}).items()}
    if kind == "array":
        count = max(1, int(schema.get("minItems", 1)))
        if schema.get("maxItems") == 0:
            return []
        return [_instance(schema.get("items"), hints, default, depth + 1) for _ in range(count)]
    if kind == "string":
        text = default if isinstance(default, str) else str(default)
        text = text[: schema["maxLength"]] if "maxLength" in schema else text
        return text.ljust(int(schema.get("minLength", 0)), ".")
    if kind in ("integer", "number"):
        value = schema.get("minimum", schema.get("exclusiveMinimum", 0) + 1)
        value = min(value, schema.get("maximum", value))
        return int(value) if kind == "integer" else float(value)
    if kind == "boolean":
        return True
    if kind == "null":
        return None
    return default


def _json_text(model: str, request: ChatRequest, good: bool) -> str:
    """A JSON object answer when good; a truncated, unparseable one when poor."""
    prompt = _last_user(request)
    options = _options(prompt)
    short = _choice(prompt, options, True)[0] if options else \
        f"Simulated answer about {_listing(_keywords(prompt))}."
    obj: Any = {"answer": short, "model": model, "simulated": True}
    spec = request.response_format or {}
    schema = (spec.get("json_schema") or {}).get("schema") if spec.get("type") == "json_schema" \
        else None
    if schema:
        hints = {"model": model, "simulated": True}
        hints.update(dict.fromkeys(("answer", "choice", "option", "letter"), short))
        obj = _instance(schema, hints, short)
    text = orjson.dumps(obj).decode()
    if good:
        return text
    return text[: max(1, len(text) // 2)]


def _tool_for(request: ChatRequest) -> dict[str, Any] | None:
    """The function tool a model would call for this request, if any."""
    tools = [t for t in request.tools or []
             if isinstance(t, dict) and (t.get("function") or {}).get("name")]
    choice = request.tool_choice
    if not tools or choice == "none":
        return None
    if isinstance(choice, dict):
        wanted = (choice.get("function") or {}).get("name")
        return next((t for t in tools if t["function"]["name"] == wanted), None)
    if choice == "required":
        prompt = _last_user(request).lower()
        return next((t for t in tools if _mentions(prompt, t["function"]["name"])), tools[0])
    if request.messages[-1].role != "user":
        return None
    prompt = request.messages[-1].text().lower()
    return next((t for t in tools if _mentions(prompt, t["function"]["name"])), None)


def _mentions(prompt: str, name: str) -> bool:
    """True when the prompt names the tool, or a telling word of its name ('weather')."""
    if name.lower() in prompt:
        return True
    parts = re.findall(r"[A-Z]?[a-z]+|[A-Z]+(?![a-z])|\d+", name)
    return any(len(p) > 2 and p.lower() not in _GENERIC_TOOL_WORDS
               and re.search(rf"\b{re.escape(p.lower())}", prompt) for p in parts)


def _tool_call(model: str, request: ChatRequest, tool: dict[str, Any]) -> dict[str, Any]:
    function = tool["function"]
    prompt = _last_user(request)
    names = re.findall(r"(?<=[\w,;:] )[A-Z][a-zA-Z-]+", prompt)
    value = names[-1] if names else (_keywords(prompt, 1) or ["example"])[0]
    arguments = _instance(function.get("parameters") or {"type": "object"}, {}, value)
    if not isinstance(arguments, dict):
        arguments = {}
    call_id = "call_" + format(_digest(model, prompt, function["name"]), "016x")
    return {"id": call_id, "type": "function",
            "function": {"name": function["name"], "arguments": orjson.dumps(arguments).decode()}}


def _truncate(text: str, limit: int) -> str:
    """The longest word-prefix of ``text`` of at most ``limit`` tokens."""
    pieces = re.findall(r"\s*\S+", text)
    lo, hi = 0, len(pieces)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if tokens.count("".join(pieces[:mid])) <= limit:
            lo = mid
        else:
            hi = mid - 1
    return "".join(pieces[:lo])


def answer(model: str, request: ChatRequest, good: bool) -> Answer:
    """What ``model`` answers to ``request``: a tool call, JSON or text, shaped by quality,
    ``stop`` and the output limit."""
    tool = _tool_for(request)
    if tool is not None:
        call = _tool_call(model, request, tool)
        used = tokens.count(call["function"]["name"]) + tokens.count(call["function"]["arguments"])
        return Answer(None, [call], "tool_calls", used)
    text = _json_text(model, request, good) if request.wants_json else _text(model, request, good)
    finish = "stop"
    stops = [request.stop] if isinstance(request.stop, str) else request.stop or []
    cuts = [text.find(s) for s in stops if s and s in text]
    if cuts:
        text = text[: min(cuts)]
    limit = request.output_limit
    if limit is not None and tokens.count(text) > limit:
        text, finish = _truncate(text, limit), "length"
    return Answer(text, None, finish, tokens.count(text))


# --- the HTTP app -----------------------------------------------------------------------------


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


def fleet_app(settings: Simulation, *, seed: int | None = None) -> Starlette:
    """The fleet as an ASGI app: ``POST /v1/chat/completions`` and ``GET /v1/models`` for the
    models of ``settings``, with outcomes drawn from an RNG seeded with ``seed``."""
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
        reply = answer(name, chat_request, outcome.good)
        prompt_tokens = tokens.count_request(chat_request)
        if chat_request.stream:
            include_usage = bool((chat_request.stream_options or {}).get("include_usage"))
            return StreamingResponse(
                _stream(name, reply, prompt_tokens, behaviour, include_usage),
                media_type="text/event-stream",
                headers={**header, "cache-control": "no-cache"})
        message: dict[str, Any] = {"role": "assistant", "content": reply.content,
                                   "refusal": None}
        if reply.tool_calls:
            message["tool_calls"] = reply.tool_calls
        return JSONResponse({
            "id": _completion_id(), "object": "chat.completion", "created": int(time.time()),
            "model": name, "system_fingerprint": "fp_sim",
            "choices": [{"index": 0, "message": message, "logprobs": None,
                         "finish_reason": reply.finish_reason}],
            "usage": _usage(prompt_tokens, reply.completion_tokens),
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

    return Starlette(routes=[
        Route("/v1/chat/completions", chat, methods=["POST"]),
        Route("/v1/models", list_models, methods=["GET"]),
        Route("/v1/models/{name:path}", get_model, methods=["GET"]),
    ], exception_handlers={HTTPException: http_error})


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


# --- running it -------------------------------------------------------------------------------


class _QuietThread(logging.Filter):
    """Drops uvicorn's info lines logged from the fleet's thread (startup, access lines)."""

    def __init__(self, thread_name: str) -> None:
        super().__init__()
        self.thread_name = thread_name

    def filter(self, record: logging.LogRecord) -> bool:
        return record.threadName != self.thread_name or record.levelno >= logging.WARNING


class Fleet:
    """Serves :func:`fleet_app` with uvicorn on a background thread with its own event loop, so
    the simulated delays never block the caller's loop. A context manager: start on enter, stop
    on exit."""

    def __init__(self, settings: Simulation, seed: int | None = None) -> None:
        self.settings = settings
        self.seed = seed
        self.url: str | None = None
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self._filter: _QuietThread | None = None
        self._failure: BaseException | None = None

    def start(self) -> str:
        """Start serving and return the base URL (``http://HOST:PORT/v1``) once connections are
        accepted; raise RuntimeError when it does not come up within a few seconds."""
        if self.url is not None:
            return self.url
        import uvicorn

        sock = self._bind()
        port = sock.getsockname()[1]
        config = uvicorn.Config(fleet_app(self.settings, seed=self.seed), lifespan="off",
                                log_config=None, log_level=None, access_log=True, ws="none",
                                timeout_graceful_shutdown=1, server_header=False)
        self._server = uvicorn.Server(config)
        name = f"turnout-sim-fleet-{port}"
        self._filter = _QuietThread(name)
        for logger in _UVICORN_LOGGERS:
            logging.getLogger(logger).addFilter(self._filter)
        self._failure = None
        self._thread = threading.Thread(target=self._serve, args=(sock,), name=name, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                why = f": {self._failure!r}" if self._failure else \
                    f" within {START_TIMEOUT_S:.0f} s"
                self.stop()
                sock.close()
                raise RuntimeError(f"the simulated fleet did not start on "
                                   f"{self.settings.host}:{port}{why}")
            time.sleep(0.005)
        host = self.settings.host
        host = "127.0.0.1" if host in ("0.0.0.0", "") else "[::1]" if host == "::" else \
            f"[{host}]" if ":" in host else host
        self.url = f"http://{host}:{port}/v1"
        return self.url

    def _bind(self) -> socket.socket:
        host, port = self.settings.host, self.settings.port
        try:
            family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
            sock = socket.socket(family, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
        except OSError as exc:
            raise RuntimeError(f"the simulated fleet cannot listen on {host}:{port}: "
                               f"{exc.strerror or exc}") from None
        return sock

    def _serve(self, sock: socket.socket) -> None:
        try:
            self._server.run(sockets=[sock])
        except BaseException as exc:  # noqa: BLE001 - reported by start()
            self._failure = exc

    def stop(self) -> None:
        """Stop serving and wait for the thread to end; safe to call more than once."""
        server, thread = self._server, self._thread
        self._server = self._thread = None
        self.url = None
        if server is not None:
            server.should_exit = True
        if thread is not None:
            thread.join(timeout=5)
            if thread.is_alive() and server is not None:
                server.force_exit = True
                thread.join(timeout=2)
        if self._filter is not None:
            for logger in _UVICORN_LOGGERS:
                logging.getLogger(logger).removeFilter(self._filter)
            self._filter = None

    def __enter__(self) -> Fleet:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
