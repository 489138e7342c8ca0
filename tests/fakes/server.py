"""Run an ASGI app with uvicorn on a free local port, in a background thread, for one test scope."""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Literal

import uvicorn


def _not_deliberate(record: logging.LogRecord) -> bool:
    """Keep log records except those of exceptions an app raised on purpose (``quiet = True``),
    such as a fake dropping a connection mid-stream."""
    exc = record.exc_info[1] if record.exc_info else None
    return not getattr(exc, "quiet", False)


logging.getLogger("uvicorn.error").addFilter(_not_deliberate)


def free_port() -> int:
    """A local TCP port nothing listens on right now (for connection-refused tests)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def serve(app: Any, *, lifespan: Literal["auto", "on", "off"] = "auto",
          startup_timeout: float = 10.0, shutdown_timeout: float = 2.0) -> Iterator[str]:
    """Serve ``app`` on 127.0.0.1 and yield its base URL ``http://127.0.0.1:PORT``.

    The socket is bound before the server starts, so the port cannot be taken in between; the
    server runs its own event loop in a daemon thread. ``lifespan`` "auto" runs the app's startup
    and shutdown when it has them (a gateway app starts its kernel that way; the fakes have none).
    On exit, handlers still running after ``shutdown_timeout`` seconds are cancelled.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                            log_config=None, lifespan=lifespan,
                            timeout_graceful_shutdown=shutdown_timeout)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]},
                              name=f"local-server-{port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + startup_timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            thread.join(timeout=shutdown_timeout + 1)
            sock.close()
            raise RuntimeError(f"the server on port {port} did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=shutdown_timeout + 5)
        sock.close()
