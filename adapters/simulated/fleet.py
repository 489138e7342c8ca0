"""Running the fleet: :class:`Fleet` serves :func:`~.server.fleet_app` with uvicorn on a thread of
its own, so the simulated delays never block the caller's event loop."""

from __future__ import annotations

import logging
import socket
import threading
import time
from typing import Any

from .server import fleet_app
from .settings import Simulation

START_TIMEOUT_S = 5.0
"""How long :meth:`Fleet.start` waits for the server to accept connections."""

_UVICORN_LOGGERS = ("uvicorn.error", "uvicorn.access", "uvicorn.asgi")


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
