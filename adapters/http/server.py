"""Serving the API with limits at the edge: uvicorn, plus the limits it lacks.

``turnout serve`` runs uvicorn (httptools parser, uvloop when installed), as before. Of the edge's
limits, uvicorn itself offers only the keep-alive idle timeout (``timeout_keep_alive``, armed after
a response). Everything else is added here, in a subclass of its httptools protocol and of its
server:

- a header read timeout: armed when a connection opens and when a later request's first byte
  arrives, disarmed when the request's headers are complete. uvicorn has none: its keep-alive timer
  is only armed after a response and is cancelled by any byte, so a client that never sends, or
  trickles its headers, held the connection forever.
- caps on the size and number of request headers: httptools buffers a header of any size.
- a cap on open connections, checked when a connection is accepted: one over the cap gets an
  immediate 503 and is closed, so it costs a file descriptor for microseconds. uvicorn's
  ``limit_concurrency`` is not that: it counts connections *and* tasks and, at the limit, answers
  503 to every request whose headers complete, those on established connections included, while
  still accepting (and holding) any number of connections that send nothing.
- a shutdown deadline that closes what is left: uvicorn's ``timeout_graceful_shutdown`` cancels
  the tasks but leaves their connections open and does not wait for the cancelled tasks, so the
  kernel could stop before a cancelled request was recorded.
- a connection answered before its request body finished arriving (a 408, 413, 415, 401...) is
  closed, as its rest would otherwise hold the connection after the answer.

The body read timeout lives in the API (``Gateway._parse``), where the body is read. With
``turnout serve --workers N`` every worker process runs this server, with these limits, on the
socket its supervisor bound (see ``workers.py``); ``server.max_connections`` is per worker.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from dataclasses import dataclass
from typing import Any, ClassVar

import httptools
import orjson
import structlog
import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from turnout.kernel.config import Server

log = structlog.get_logger("turnout.http")

LINGER_S = 2.0
"""After refusing a request whose client may still be sending (a 431, a 408), the connection is
half-closed and what arrives is read and dropped for up to this long before it is closed: closing
with unread data makes the kernel send a reset, which can destroy the answer before it is read."""

CANCEL_GRACE_S = 5.0
"""After the shutdown deadline, how long the cancelled requests get to unwind and be recorded."""

FD_RESERVE = 64
"""File descriptors kept for everything but client connections (listeners, the record, logs)."""


@dataclass(frozen=True)
class EdgeLimits:
    """The edge's limits, from ``server.*``."""

    header_timeout_s: float
    keep_alive_timeout_s: float
    max_header_bytes: int
    max_headers: int
    max_connections: int
    shutdown_timeout_s: float

    @classmethod
    def of(cls, server: Server, max_connections: int | None = None) -> "EdgeLimits":
        return cls(header_timeout_s=server.header_timeout_s,
                   keep_alive_timeout_s=server.keep_alive_timeout_s,
                   max_header_bytes=server.max_header_bytes, max_headers=server.max_headers,
                   max_connections=max_connections or server.max_connections,
                   shutdown_timeout_s=server.shutdown_timeout_s)


def error_bytes(status: int, phrase: str, code: str, message: str) -> bytes:
    """A whole HTTP/1.1 response carrying an OpenAI-style JSON error; the connection closes."""
    body = orjson.dumps({"error": {"message": message, "type": "invalid_request_error"
                                   if status < 500 else "server_error", "param": None,
                                   "code": code}})
    return (f"HTTP/1.1 {status} {phrase}\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\nconnection: close\r\n\r\n").encode() + body


class _Refused(Exception):
    """Raised from a parser callback to stop parsing a request that broke a header cap."""


class _Throttled:
    """Logs a repeated event at most once a second, with how many times it happened."""

    def __init__(self, event: str, level: str) -> None:
        self.event, self.level, self.count, self.last = event, level, 0, float("-inf")

    def __call__(self, loop: asyncio.AbstractEventLoop, **fields: Any) -> None:
        self.count += 1
        now = loop.time()
        if now - self.last >= 1.0:
            getattr(log, self.level)(self.event, times=self.count, **fields)
            self.count, self.last = 0, now


class EdgeProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a header read timeout, header caps, a connection cap,
    and no connection left open by a request body that is still arriving after its answer."""

    limits: ClassVar[EdgeLimits]
    over_cap: ClassVar[_Throttled] = _Throttled("connection_refused_over_cap", "warning")
    refusals: ClassVar[dict[str, _Throttled]] = {}
    refused: ClassVar[bytes] = b""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_timer: asyncio.TimerHandle | None = None
        self._linger_timer: asyncio.TimerHandle | None = None
        self._dropping = False  # refused or lingering: whatever arrives is dropped
        self._reading_headers = True  # between requests or inside a request's headers
        self._in_headers = False  # a request has begun and its headers are not complete
        self._headers_completed = 0  # requests whose headers were complete, on this connection
        self._raw_header_bytes = 0  # bytes received while reading headers (one read's slack)
        self._header_bytes = 0  # request line and headers as parsed
        self._header_count = 0
        self._refusal: tuple[int, str, str, str] | None = None

    @classmethod
    def with_limits(cls, limits: EdgeLimits) -> type["EdgeProtocol"]:
        """A protocol class bound to ``limits`` (uvicorn builds protocols from a class)."""
        refused = error_bytes(503, "Service Unavailable", "too_many_connections",
                              f"The gateway has {limits.max_connections} connections open "
                              "(server.max_connections); retry shortly.")
        return type(cls.__name__, (cls,), {"limits": limits, "refused": refused})

    # --- connection ------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        if len(self.connections) >= self.limits.max_connections:
            # Over the cap: answer at once and close; the request is never read.
            self.transport = transport
            self._dropping = True
            transport.write(self.refused)
            transport.close()
            self.over_cap(self.loop, max_connections=self.limits.max_connections)
            return
        super().connection_made(transport)
        self._arm_header_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_header_timer()
        if self._linger_timer is not None:
            self._linger_timer.cancel()
            self._linger_timer = None
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        while data and not self._dropping:
            if not self._reading_headers:
                self._feed(data)
                return
            room = self.limits.max_header_bytes - self._raw_header_bytes
            if len(data) <= room:
                self._raw_header_bytes += len(data)
                self._feed(data)
                return
            # More than the headers may take: feed only what fits; if the headers are not
            # complete within it, they are too large.
            self._raw_header_bytes = self.limits.max_header_bytes
            completed = self._headers_completed
            if room > 0:
                self._feed(data[:room])
            if self._dropping or self.transport.is_closing():
                return
            if self._headers_completed == completed:
                self._refuse(431, "Request Header Fields Too Large", "headers_too_large",
                             f"The request headers exceed {self.limits.max_header_bytes} bytes "
                             "(server.max_header_bytes).")
                return
            data = data[room:]

    def _feed(self, data: bytes) -> None:
        """uvicorn's ``data_received``, with a refused request answered as such, not as a 400."""
        self._unset_keepalive_if_required()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
        except httptools.HttpParserError:
            if self._refusal is not None:
                self._refuse(*self._refusal)
                return
            msg = "Invalid HTTP request received."
            self.logger.warning(msg)
            self.send_400_response(msg)

    # --- parser callbacks ------------------------------------------------------------------

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._header_bytes = self._header_count = 0
        self._in_headers = True
        if self._header_timer is None:  # a later request on a kept-alive connection
            self._arm_header_timer()

    def on_url(self, url: bytes) -> None:
        super().on_url(url)
        self._header_bytes += len(url)
        self._check_headers()

    def on_header(self, name: bytes, value: bytes) -> None:
        super().on_header(name, value)
        self._header_count += 1
        self._header_bytes += len(name) + len(value) + 4
        self._check_headers()

    def _check_headers(self) -> None:
        if self._header_count > self.limits.max_headers:
            self._refusal = (431, "Request Header Fields Too Large", "too_many_headers",
                             f"The request has more than {self.limits.max_headers} headers "
                             "(server.max_headers).")
            raise _Refused
        if self._header_bytes > self.limits.max_header_bytes:
            self._refusal = (431, "Request Header Fields Too Large", "headers_too_large",
                             f"The request headers exceed {self.limits.max_header_bytes} bytes "
                             "(server.max_header_bytes).")
            raise _Refused

    def on_headers_complete(self) -> None:
        self._cancel_header_timer()
        self._reading_headers = self._in_headers = False
        self._headers_completed += 1
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._reading_headers = True
        self._raw_header_bytes = 0
        super().on_message_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        cycle = self.cycle
        if (cycle is not None and cycle.response_complete and cycle.more_body
                and not self.pipeline and not self.transport.is_closing()):
            # Answered before its body finished arriving (a 408, 413, 415, 401...): the rest of
            # the body would keep the connection, byte by byte, after the answer.
            self._linger()

    # --- timers and refusals ---------------------------------------------------------------

    def _arm_header_timer(self) -> None:
        self._header_timer = self.loop.call_later(self.limits.header_timeout_s,
                                                  self._header_timeout)

    def _cancel_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _header_timeout(self) -> None:
        self._header_timer = None
        if self.transport.is_closing() or self._dropping:
            return
        if not self._in_headers:  # nothing of a request arrived: just close
            self.transport.close()
            return
        self._refuse(408, "Request Timeout", "request_timeout",
                     f"The request headers did not arrive within {self.limits.header_timeout_s:g}"
                     " s (server.header_timeout_s).")

    def _refuse(self, status: int, phrase: str, code: str, message: str) -> None:
        """Answer ``status`` (unless another answer is under way) and close the connection."""
        self._cancel_header_timer()
        throttled = self.refusals.setdefault(code, _Throttled("request_refused", "info"))
        throttled(self.loop, status=status, code=code)
        if self.cycle is None or self.cycle.response_complete:
            self.transport.write(error_bytes(status, phrase, code, message))
            self._linger()
        else:  # a pipelined request broke a limit while an answer is being written: cut both
            self._dropping = True
            self.transport.abort()

    def _linger(self) -> None:
        """Half-close after what was written, drop what still arrives, close soon."""
        self._dropping = True
        self._cancel_header_timer()
        if self.flow is not None:
            self.flow.resume_reading()
        if self.transport.can_write_eof():
            self.transport.write_eof()
        # abort, not close: a client that reads nothing must not keep it by a full buffer
        self._linger_timer = self.loop.call_later(LINGER_S, self.transport.abort)


class _CancelledByDeadline(logging.Filter):
    """Drops uvicorn's "Exception in ASGI application" for requests cancelled on purpose by the
    shutdown deadline (they are recorded as cancelled; the traceback would only alarm)."""

    def __init__(self, server: "EdgeServer") -> None:
        super().__init__()
        self.server = server

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not (self.server.cutting and isinstance(exc, asyncio.CancelledError))


class EdgeServer(uvicorn.Server):
    """uvicorn's server with a shutdown deadline that ends what is left.

    On SIGTERM or SIGINT the listener closes and idle connections close, as in uvicorn; requests
    in flight get ``shutdown_timeout_s`` to finish. Past it their connections are closed (aborted),
    their tasks cancelled, and the server waits (up to ``CANCEL_GRACE_S``) for the cancelled
    requests to unwind, so the kernel records each one as ``cancelled`` before it stops.
    """

    def __init__(self, config: uvicorn.Config, limits: EdgeLimits) -> None:
        super().__init__(config)
        self.limits = limits
        self.cutting = False

    async def shutdown(self, sockets: list[Any] | None = None) -> None:
        for server in self.servers:
            server.close()
        for sock in sockets or []:
            sock.close()
        state = self.server_state
        for connection in list(state.connections):
            connection.shutdown()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.limits.shutdown_timeout_s
        while (state.connections or state.tasks) and not self.force_exit \
                and loop.time() < deadline:
            await asyncio.sleep(0.05)
        if state.connections or state.tasks:
            await self._cut()
        if not self.force_exit:
            await self.lifespan.shutdown()

    async def _cut(self) -> None:
        state = self.server_state
        tasks = list(state.tasks)
        log.warning("shutdown_deadline_passed", deadline_s=self.limits.shutdown_timeout_s,
                    connections=len(state.connections), requests=len(tasks))
        self.cutting = True
        for connection in list(state.connections):
            transport = getattr(connection, "transport", None)
            if transport is not None:
                transport.abort()
        for task in tasks:
            task.cancel("turnout: server.shutdown_timeout_s passed")
        if tasks:
            await asyncio.wait(tasks, timeout=CANCEL_GRACE_S)


def fit_connections(max_connections: int) -> tuple[int, str | None]:
    """``max_connections``, fitted to the open-files limit: each connection may hold two file
    descriptors (the client's and an upstream's), plus ``FD_RESERVE``. The soft limit is raised
    towards the hard one when it is too low; if it still is, the cap is lowered. Returns the cap
    and, when it changed anything, a note saying what."""
    try:
        import resource
    except ImportError:  # not on Unix
        return max_connections, None
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = 2 * max_connections + FD_RESERVE
    if soft == resource.RLIM_INFINITY or soft >= need:
        return max_connections, None
    target = need if hard == resource.RLIM_INFINITY else min(need, hard)
    if target > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            note = f"raised the open-files limit from {soft} to {target}"
            soft = target
        except (ValueError, OSError):
            note = None
        if soft >= need:
            return max_connections, note
    fitted = max(1, (soft - FD_RESERVE) // 2)
    return fitted, (f"server.max_connections lowered from {max_connections} to {fitted}: the "
                    f"open-files limit is {soft} (raise it with ulimit -n)")


def build(app: Any, server: Server, max_connections: int,
          server_class: type[EdgeServer] = EdgeServer, **kwargs: Any) -> EdgeServer:
    """An edge server for ``app`` with the limits of ``server`` (its connection cap
    ``max_connections``, already fitted); ``server_class`` and ``kwargs``: a subclass and its
    own arguments (a worker's, see ``workers.py``)."""
    limits = EdgeLimits.of(server, max_connections)
    config = uvicorn.Config(app, host=server.host, port=server.port, log_level="warning",
                            access_log=False, log_config=None, lifespan="on",
                            http=EdgeProtocol.with_limits(limits),
                            timeout_keep_alive=limits.keep_alive_timeout_s,  # type: ignore[arg-type]
                            timeout_graceful_shutdown=limits.shutdown_timeout_s,  # type: ignore[arg-type]
                            limit_concurrency=None)
    return server_class(config, limits, **kwargs)


def run(edge: EdgeServer, sockets: list[Any] | None = None) -> bool:
    """Serve until SIGINT or SIGTERM, on ``sockets`` when given (bound by a supervisor), else
    on the address of its config; returns after the graceful shutdown whether it had started
    (False: the lifespan or the bind failed)."""
    quiet = _CancelledByDeadline(edge)
    uvicorn_log = logging.getLogger("uvicorn.error")
    uvicorn_log.addFilter(quiet)
    try:
        edge.run(sockets=sockets)
    except KeyboardInterrupt:  # SIGINT re-raised by uvicorn after its graceful shutdown
        pass
    finally:
        uvicorn_log.removeFilter(quiet)
    return edge.started


def serve(app: Any, server: Server) -> None:
    """Serve ``app`` on ``server.host:server.port`` with the edge's limits until SIGINT or
    SIGTERM, in this process; returns after the graceful shutdown (``turnout serve --workers N``
    runs several processes instead: see ``workers.py``)."""
    max_connections, note = fit_connections(server.max_connections)
    if note:
        print(f"turnout: {note}", file=sys.stderr, flush=True)
    if not run(build(app, server, max_connections)):
        sys.exit(3)  # uvicorn's STARTUP_FAILURE: the lifespan or the bind failed
