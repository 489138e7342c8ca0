"""The OpenAI-compatible HTTP API: ``/v1/chat/completions``, ``/v1/models``, health, and
``/v1/feedback`` (scores on answers).

Every error leaves in OpenAI's JSON error format with its proper status; malformed or
out-of-range input is refused with a 4xx before any upstream is called.
"""

from __future__ import annotations

import contextlib
import sys
from typing import AsyncIterator

import anyio
import orjson
import structlog
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from turnout.kernel.config import ApiKey
from turnout.kernel.errors import (
    AuthenticationFailed,
    BadRequest,
    BodyTooLarge,
    ClientGone,
    ConfigError,
    NotFound,
    ProviderRateLimited,
    RateLimited,
    RequestTimeout,
    TurnoutError,
    UnknownModel,
    UnsupportedMediaType,
    clip,
)
from turnout.kernel.kernel import AUTO, AnswerStream, Kernel
from turnout.kernel.types import Answer, Caller, ChatRequest, new_request_id

from .auth import KeyRing
from .embeddings import EmbeddingsAPI
from .messages import MessagesAPI
from .openapi import OpenAPI
from .parse import parse_request
from .responses import ResponsesAPI
from .streaming import ClosingStream
from .wire import ChunkFramer, completion_json, error_bytes

log = structlog.get_logger("turnout.http")

EXPLAIN_HEADER = "x-turnout-explain"
"""Request header: when set to 1, the response carries the decision record in x-turnout-decision."""

USER_HEADER = "x-turnout-user"
"""Request header naming the end user (budgets and rate limits by user) when the body's ``user``
field does not."""

PRIVATE_HEADERS = frozenset({"authorization", "cookie", "proxy-authorization"})
"""Request headers never handed to plugins (``ctx.headers``)."""


def error_response(error: TurnoutError, request_id: str | None = None,
                   headers: dict[str, str] | None = None, body: bytes | None = None) -> Response:
    """An error with its status, x-request-id and Retry-After for rate limits; ``body`` is the
    front door's own JSON error (default: OpenAI's)."""
    headers = dict(headers or {})
    if request_id:
        headers["x-request-id"] = request_id
    retry_after = getattr(error, "retry_after", None)
    if isinstance(error, (RateLimited, ProviderRateLimited)) and retry_after is not None:
        headers["retry-after"] = str(max(1, round(retry_after)))
    return Response(error_bytes(error) if body is None else body, status_code=error.status,
                    media_type="application/json", headers=headers)


def internal_error(exc: BaseException, request_id: str | None) -> Response:
    log.error("internal_error", error_type=type(exc).__name__, error=str(exc), exc_info=exc)
    return error_response(TurnoutError(
        "The gateway failed unexpectedly; the request id is in x-request-id. See the gateway "
        "log for details."), request_id)


class EventStream(ClosingStream):
    """A chat completion streamed as SSE frames (the kernel's stream closed however it ends)."""

    def __init__(self, chunks: AnswerStream, framer: ChunkFramer, headers: dict[str, str]) -> None:
        super().__init__(self._frames(chunks, framer), chunks, headers)

    @staticmethod
    async def _frames(chunks: AnswerStream, framer: ChunkFramer) -> AsyncIterator[bytes]:
        try:
            async for chunk in chunks:
                frame = framer.frame(chunk)
                if frame:
                    yield frame
        except TurnoutError as exc:
            yield framer.error(exc)
            return
        except Exception as exc:  # noqa: BLE001 - still an explicit error event, never a quiet end
            log.error("stream_failed", error_type=type(exc).__name__, exc_info=exc)
            yield framer.error(TurnoutError("The gateway failed while streaming."))
            return
        yield framer.end()


COST_HEADER = "x-turnout-cost-usd"
DROPPED_HEADER = "x-turnout-dropped"
"""Names the fields the request asked for that the answering provider could not honour
(``logprobs`` from Anthropic): the answer came without them."""


def answer_headers(answer: Answer, explain: bool) -> dict[str, str]:
    """The ``x-turnout-*`` headers of an answer (or of a failed request's account)."""
    headers = {
        "x-request-id": answer.request_id,
        "x-turnout-route": answer.route or "",
        "x-turnout-model": answer.model or "",
        "x-turnout-provider": answer.provider or "",
        "x-turnout-strategy": answer.strategy or "",
        "x-turnout-attempts": str(answer.attempts),
        COST_HEADER: f"{answer.cost_usd:.8f}",
        **answer.headers,
    }
    if explain:
        headers["x-turnout-decision"] = orjson.dumps(answer.decision, default=str).decode()
    return headers


class Gateway:
    """The HTTP handlers, bound to one kernel."""

    def __init__(self, kernel: Kernel) -> None:
        self.kernel = kernel
        server = kernel.config.server
        self.keys = KeyRing(server.api_keys, store=lambda: kernel.store, open=server.open)
        self.max_body = kernel.config.server.max_body_bytes

    async def chat_completions(self, http: Request) -> Response:
        request_id, explain = begin(http)
        try:
            key = await self.authenticate(http)
            request = await self._parse(http)
            headers, caller = who_asked(http, key, request.user)
            if request.stream:
                chunks = await self.kernel.ask_stream(request, caller=caller, headers=headers,
                                                      request_id=request_id)
                return self._event_stream(request, chunks, explain)
            answer = await self.kernel.ask(request, caller=caller, headers=headers,
                                           request_id=request_id)
        except TurnoutError as exc:
            account = getattr(exc, "answer", None)
            return error_response(exc, request_id,
                                  answer_headers(account, explain) if account else None)
        except Exception as exc:  # noqa: BLE001 - the last guard: never a traceback to the client
            return internal_error(exc, request_id)
        sent = answer_headers(answer, explain)
        if request.logprobs and answer.completion.logprobs is None:
            sent[DROPPED_HEADER] = "logprobs"  # the answering provider returns none
        return Response(completion_json(request_id, answer.completion),
                        media_type="application/json", headers=sent)

    async def authenticate(self, http: Request) -> ApiKey | None:
        """The key that was sent, a config key or one made at run time (None when the gateway
        needs none); a failure is logged (why, from where, never the key) and counted
        (``kernel.counters["auth_failed"]``) before it is raised."""
        try:
            return await self.keys.check(http.headers.get("authorization"))
        except AuthenticationFailed as exc:
            self.kernel.counters["auth_failed"] += 1
            log.warning("auth_failed", reason=exc.message, path=http.url.path,
                        peer=http.client.host if http.client else None)
            raise

    async def _parse(self, http: Request) -> ChatRequest:
        return parse_request(await self._body(http))

    async def _body(self, http: Request) -> bytearray:
        """The request body, checked to be JSON and read within ``server.max_body_bytes`` and
        ``server.body_timeout_s``."""
        media = (http.headers.get("content-type") or "").split(";", 1)[0].strip().lower()
        if media and media != "application/json" and not media.endswith("+json"):
            raise UnsupportedMediaType(f"The request body must be JSON (Content-Type: "
                                       f"application/json), not '{clip(media)}'.")
        declared = http.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body:
            raise BodyTooLarge(f"The request body is {declared} bytes; the limit is "
                               f"{self.max_body} (server.max_body_bytes).")
        body = bytearray()
        deadline = self.kernel.config.server.body_timeout_s
        try:
            with anyio.fail_after(deadline):  # a body trickled byte by byte must not hold on
                async for part in http.stream():
                    body += part
                    if len(body) > self.max_body:
                        raise BodyTooLarge(f"The request body exceeds {self.max_body} bytes "
                                           "(server.max_body_bytes).")
        except TimeoutError:
            raise RequestTimeout(f"The request body did not arrive within {deadline:g} s "
                                 f"(server.body_timeout_s); {len(body)} bytes came.") from None
        except ClientDisconnect:  # gone mid-body: nobody to answer, nothing went wrong here
            raise ClientGone("The client closed the connection before its request body was "
                             "complete.") from None
        return body

    @staticmethod
    def _event_stream(request: ChatRequest, chunks: AnswerStream, explain: bool) -> Response:
        answer = chunks.answer  # as it stands at the first chunk: no cost yet
        include_usage = bool((request.stream_options or {}).get("include_usage"))
        framer = ChunkFramer(answer.request_id, answer.model or "", include_usage)
        headers = answer_headers(answer, explain)
        headers.pop(COST_HEADER)
        return EventStream(chunks, framer, {**headers, "cache-control": "no-cache"})

    async def models(self, http: Request) -> Response:
        try:
            await self.authenticate(http)
        except TurnoutError as exc:
            return error_response(exc)
        return JSONResponse({"object": "list", "data": self.model_cards()})

    def model_cards(self) -> list[dict]:
        """What ``/v1/models`` lists: ``auto``, every route and every model, in OpenAI's shape."""
        data = [{"id": AUTO, "object": "model", "created": 0, "owned_by": "turnout"}]
        data += [{"id": name, "object": "model", "created": 0, "owned_by": "turnout"}
                 for name in self.kernel.config.routes]
        data += [{"id": m.name, "object": "model", "created": 0, "owned_by": m.provider}
                 for m in self.kernel.models]
        return data

    async def model(self, http: Request) -> Response:
        """``GET /v1/models/{id}``: one entry of the list; an unknown id is a 404 in OpenAI's
        shape (``model_not_found``)."""
        name = http.path_params["model_id"]
        try:
            await self.authenticate(http)
            card = next((c for c in self.model_cards() if c["id"] == name), None)
            if card is None:
                raise UnknownModel(f"The model '{clip(name)}' does not exist; GET /v1/models "
                                   "lists the models, routes and 'auto'.", param="model")
        except TurnoutError as exc:
            return error_response(exc)
        return JSONResponse(card)

    FEEDBACK_FIELDS = frozenset({"request_id", "score", "comment", "user", "source"})
    """What a ``POST /v1/feedback`` body may hold."""

    async def feedback(self, http: Request) -> Response:
        """``POST /v1/feedback``: score an answer, ``{"request_id": "req_...", "score": 1,
        "comment": "..."}`` (score from -1 bad to 1 good; ``comment``, ``user`` and ``source``
        optional), through ``Kernel.feedback``, which keeps it with the request's record. The
        same keys as chat; the key's name is who judged when the body names no ``user``."""
        try:
            key = await self.authenticate(http)
            body = await self._feedback_body(http)
            given = await self.kernel.feedback(
                body["request_id"], body["score"], comment=body.get("comment"),
                source=body["source"] if body.get("source") is not None else "api",
                user=body.get("user") or (key.name if key else None))
        except TurnoutError as exc:
            return error_response(exc)
        except Exception as exc:  # noqa: BLE001 - the last guard: never a traceback to the client
            return internal_error(exc, None)
        return JSONResponse({"object": "feedback", "id": given.id,
                             "request_id": given.request_id, "score": given.score,
                             "recorded": True})

    async def _feedback_body(self, http: Request) -> dict:
        """The JSON object of a feedback request, read within the body limits of chat
        (``server.max_body_bytes``, ``server.body_timeout_s``); BadRequest names what is wrong."""
        body = await self._body(http)
        try:
            data = orjson.loads(body) if body else None
        except orjson.JSONDecodeError as exc:
            raise BadRequest(f"The request body is not valid JSON ({exc.msg} at position "
                             f"{exc.pos}).") from None
        if not isinstance(data, dict):
            raise BadRequest('The request body must be a JSON object: {"request_id": "req_...", '
                             '"score": 1, "comment": "..."}.')
        unknown = sorted(data.keys() - self.FEEDBACK_FIELDS)
        if unknown:
            raise BadRequest(f"Unrecognized request argument supplied: {clip(unknown[0])}. "
                             f"Feedback takes {', '.join(sorted(self.FEEDBACK_FIELDS))}.",
                             param=clip(unknown[0]))
        for name in ("request_id", "score"):
            if data.get(name) is None:
                raise BadRequest(f"Missing required parameter: '{name}'.", param=name)
        return data

    async def healthz(self, http: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(self, http: Request) -> Response:
        if not self.kernel.started:
            return JSONResponse({"status": "starting"}, status_code=503)
        return JSONResponse({"status": "ready", "models": len(self.kernel.models)})


def who_asked(http: Request, key: ApiKey | None, user: str | None,
              private: frozenset[str] = frozenset()) -> tuple[dict[str, str], Caller]:
    """The request's headers plugins may read (never credentials or cookies, nor ``private``),
    and who asked: the gateway ``key``, the user (the body's ``user``, else ``x-turnout-user``,
    else the key's owner) and the key's team."""
    headers = {name: value for name, value in http.headers.items()
               if name not in PRIVATE_HEADERS and name not in private}
    caller = Caller(key=key.name if key else None,
                    user=user or headers.get(USER_HEADER) or (key.user if key else None),
                    team=key.team if key else None)
    return headers, caller


def begin(http: Request) -> tuple[str, bool]:
    """A request arriving at any front door: its id (ours, never the client's: it keys the
    record), bound to the log context, and whether it asked for the decision record
    (``x-turnout-explain: 1``)."""
    request_id = new_request_id()
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(request_id=request_id)
    return request_id, http.headers.get(EXPLAIN_HEADER) == "1"


async def _http_error(request: Request, exc: HTTPException) -> Response:
    if exc.status_code == 404:
        return error_response(NotFound(f"No endpoint {request.method} {request.url.path}; "
                                       "the API serves /v1/chat/completions, /v1/responses, "
                                       "/v1/messages, /v1/embeddings, /v1/models and "
                                       "/v1/feedback."))
    error = TurnoutError(str(exc.detail))
    error.status, error.type, error.code = exc.status_code, "invalid_request_error", "http_error"
    return error_response(error)


async def _unexpected(request: Request, exc: Exception) -> Response:
    return internal_error(exc, None)


def create_app(kernel: Kernel, *, manage_kernel: bool = True) -> Starlette:
    """The ASGI app: the API and the routes plugins registered; with ``manage_kernel`` its
    lifespan starts and stops the kernel. Loads the kernel's plugins if that has not happened."""
    if not kernel.loaded:
        kernel.load_plugins()
    gateway = Gateway(kernel)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette):
        if manage_kernel:
            await kernel.start()
        try:
            yield
        finally:
            if manage_kernel:
                await kernel.stop()

    routes = [
        Route("/v1/chat/completions", gateway.chat_completions, methods=["POST"]),
        Route("/chat/completions", gateway.chat_completions, methods=["POST"]),
        Route("/v1/models", gateway.models, methods=["GET"]),
        Route("/v1/models/{model_id:path}", gateway.model, methods=["GET"]),
        Route("/v1/responses", ResponsesAPI(gateway).create, methods=["POST"]),
        Route("/v1/messages", MessagesAPI(gateway).create, methods=["POST"]),
        Route("/v1/messages/count_tokens", MessagesAPI(gateway).count_tokens, methods=["POST"]),
        Route("/v1/embeddings", EmbeddingsAPI(gateway).create, methods=["POST"]),
        Route("/v1/feedback", gateway.feedback, methods=["POST"]),
        Route("/healthz", gateway.healthz, methods=["GET"]),
        Route("/readyz", gateway.readyz, methods=["GET"]),
        Route("/openapi.json", OpenAPI(kernel).serve, methods=["GET"]),
    ]
    taken = {route.path for route in routes}
    for path, extra in kernel.http_routes.items():
        if path in taken:
            raise ConfigError(f"plugin {kernel.http_routes.owners[path]!r} registered HTTP route "
                              f"{path!r}, which the API serves itself; choose another path")
        routes.append(Route(path, extra.endpoint, methods=list(extra.methods)))
    return Starlette(
        routes=routes,
        exception_handlers={HTTPException: _http_error, Exception: _unexpected},
        lifespan=lifespan,
    )


class Served:
    """The app as ``turnout serve`` runs it: the kernel starts and stops with the server, and a
    start that fails (a store or database down, a provider that cannot be built) is said in one
    line on standard error, with what to do, instead of a traceback; the server then exits."""

    def __init__(self, kernel: Kernel, banner: str = "") -> None:
        self.kernel = kernel
        self.banner = banner
        """Said on standard error once the kernel has started."""
        self.app = create_app(kernel, manage_kernel=False)

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "lifespan":
            await self.app(scope, receive, send)
            return
        await receive()  # lifespan.startup
        try:
            await self.kernel.start()
        except TurnoutError as exc:
            print(f"turnout: cannot start: {exc.message}", file=sys.stderr, flush=True)
            await self.kernel.stop()
            await send({"type": "lifespan.startup.failed", "message": ""})
            return
        if self.banner:
            print(self.banner, file=sys.stderr, flush=True)
        await send({"type": "lifespan.startup.complete"})
        await receive()  # lifespan.shutdown
        await self.kernel.stop()
        await send({"type": "lifespan.shutdown.complete"})
