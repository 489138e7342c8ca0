"""The HTTP edge's limits, from outside: raw sockets against a real ``turnout serve``.

One gateway with short limits serves most tests; the shutdown test starts its own, since it ends
it. Every loop is bounded in count and time, and only 127.0.0.1 is addressed.
"""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import yaml

from turnout.adapters.http import server as edge_server
from turnout.kernel.defaults import embedded

from .test_serve import free_port, wait_ready

HOST = "127.0.0.1"
SLACK_S = 1.0
"""What a timeout may overrun by on a noisy machine (the timers are exact to milliseconds)."""

LIMITS = {"header_timeout_s": 1, "body_timeout_s": 1, "keep_alive_timeout_s": 1,
          "max_connections": 8, "max_headers": 50, "max_header_bytes": 16 * 1024,
          "shutdown_timeout_s": 2}

PROVIDER_KEYS = ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "GEMINI_API_KEY", "TURNOUT_CONFIG")


@dataclass
class Gateway:
    proc: subprocess.Popen
    port: int
    db: Path

    def connect(self) -> socket.socket:
        return socket.create_connection((HOST, self.port), timeout=5)


def start(tmp: Path, server: dict, simulation: dict | None = None) -> Gateway:
    """``turnout serve`` on the embedded defaults with ``server`` settings; ready on return."""
    config = embedded({})
    config["server"] = server
    config["record"] = {"path": str(tmp / "turnout.db")}
    config["logging"] = {"level": "info", "format": "console"}
    for model, settings in (simulation or {}).items():
        config["simulation"]["models"][model].update(settings)
    (tmp / "edge.yaml").write_text(yaml.safe_dump(config))
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in PROVIDER_KEYS}
    env["TURNOUT_PLUGINS"] = ""
    proc = subprocess.Popen([sys.executable, "-m", "turnout.adapters.cli", "serve", "--config",
                             str(tmp / "edge.yaml"), "--port", str(port)], cwd=tmp, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_ready(proc, f"http://{HOST}:{port}")
    return Gateway(proc, port, tmp / "turnout.db")


def stop(gateway: Gateway) -> str:
    """SIGINT, then its standard error (killed if it does not end within 30 s)."""
    if gateway.proc.poll() is None:
        gateway.proc.send_signal(signal.SIGINT)
    try:
        _, stderr = gateway.proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        gateway.proc.kill()
        _, stderr = gateway.proc.communicate()
    return stderr


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    running = start(tmp_path_factory.mktemp("edge"), LIMITS)
    try:
        yield running
    finally:
        stderr = stop(running)
        assert "Traceback" not in stderr, stderr


def read_to_close(sock: socket.socket, limit_s: float) -> tuple[bytes, float, bool]:
    """Everything the server sends until it closes (or resets) the connection, the seconds that
    took, and whether it closed at all within ``limit_s``."""
    started = time.monotonic()
    data = b""
    while (left := limit_s - (time.monotonic() - started)) > 0:
        sock.settimeout(left)
        try:
            part = sock.recv(65536)
        except (ConnectionResetError, BrokenPipeError):
            return data, time.monotonic() - started, True
        except (socket.timeout, TimeoutError):
            break
        if not part:
            return data, time.monotonic() - started, True
        data += part
    return data, time.monotonic() - started, False


def response(data: bytes) -> tuple[int, dict[str, str], bytes]:
    """Status, headers and body of the first HTTP response in ``data``."""
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines[1:] if ": " in line)
    length = int(headers.get("content-length", len(body)))
    return int(lines[0].split()[1]), headers, body[:length]


def openai_error(data: bytes, status: int, code: str) -> dict:
    """The OpenAI-style error in a response of ``status``; fails if it is not one."""
    assert data, "the server closed the connection without an answer"
    got, headers, body = response(data)
    assert got == status, data[:500]
    assert headers["content-type"].startswith("application/json")
    error = json.loads(body)["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error" and error["param"] is None
    assert error["code"] == code, error
    return error


HEALTH = b"GET /healthz HTTP/1.1\r\nHost: gateway\r\n\r\n"


def get_health(sock: socket.socket) -> int:
    """Send a health check on ``sock`` and return its status, leaving the connection open."""
    sock.sendall(HEALTH)
    data = b""
    deadline = time.monotonic() + 5
    while b"\r\n\r\n" not in data or not data.endswith(b"}"):
        assert time.monotonic() < deadline, data
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        part = sock.recv(65536)
        assert part, f"closed after {data!r}"
        data += part
    return response(data)[0]


# --- timeouts ------------------------------------------------------------------------------------


@pytest.mark.slow
def test_idle_connection_is_closed_at_the_header_timeout(gateway: Gateway) -> None:
    with gateway.connect() as sock:
        data, took, closed = read_to_close(sock, LIMITS["header_timeout_s"] + 3)
    assert closed, "an idle connection was held past the header timeout"
    assert data == b""  # nothing of a request came: closed without an answer
    assert LIMITS["header_timeout_s"] - 0.2 <= took <= LIMITS["header_timeout_s"] + SLACK_S


@pytest.mark.slow
def test_kept_alive_connection_is_closed_at_the_keep_alive_timeout(gateway: Gateway) -> None:
    with gateway.connect() as sock:
        assert get_health(sock) == 200
        data, took, closed = read_to_close(sock, LIMITS["keep_alive_timeout_s"] + 3)
    assert closed and data == b""
    assert took <= LIMITS["keep_alive_timeout_s"] + SLACK_S


@pytest.mark.slow
@pytest.mark.parametrize("earlier_requests", [0, 1], ids=["first request", "kept-alive"])
def test_slow_headers_get_408_and_a_closed_connection_at_the_header_timeout(
        gateway: Gateway, earlier_requests: int) -> None:
    """A byte every 0.3 s: the header timeout counts from the connection's opening (first
    request) or the request's first byte (a later one), not from the last byte."""
    trickle = b"GET /healthz HTTP/1.1\r\nHost: gateway\r\nX-Slow: " + b"s" * 40
    with gateway.connect() as sock:
        for _ in range(earlier_requests):
            assert get_health(sock) == 200
        started = time.monotonic()
        answer = b""
        for byte in trickle:  # at most 58 bytes, and 8 s
            if time.monotonic() - started > 8:
                break
            try:
                sock.sendall(bytes([byte]))
            except (BrokenPipeError, ConnectionResetError):
                break
            if select.select([sock], [], [], 0.3)[0]:
                answer, _, closed = read_to_close(sock, 3)
                break
        took = time.monotonic() - started
    assert answer, f"the headers were still being accepted after {took:.1f} s"
    openai_error(answer, 408, "request_timeout")
    assert closed
    assert took <= LIMITS["header_timeout_s"] + SLACK_S


@pytest.mark.slow
def test_slow_body_gets_408_json_at_the_body_timeout_and_the_connection_closes(
        gateway: Gateway) -> None:
    with gateway.connect() as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: gateway\r\n"
                     b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"mo")
        started = time.monotonic()
        sock.settimeout(LIMITS["body_timeout_s"] + 3)
        first = sock.recv(65536)
        took = time.monotonic() - started
        # the rest of the answer (if any), then the close: at once, not at the keep-alive
        # timeout, since the unread body would otherwise keep the connection
        rest, closing, closed = read_to_close(sock, 3)
    error = openai_error(first + rest, 408, "request_timeout")
    assert "server.body_timeout_s" in error["message"]
    assert LIMITS["body_timeout_s"] - 0.2 <= took <= LIMITS["body_timeout_s"] + SLACK_S
    assert closed and closing < 0.5


# --- caps ----------------------------------------------------------------------------------------


def test_connections_over_the_cap_get_503_at_once_while_open_ones_are_served(
        gateway: Gateway) -> None:
    time.sleep(0.3)  # connections of earlier tests are closed by now
    cap = LIMITS["max_connections"]
    established = gateway.connect()
    extras: list[socket.socket] = []
    try:
        assert get_health(established) == 200
        started = time.monotonic()
        extras = [gateway.connect() for _ in range(cap - 1)]  # the cap is reached: 8 open
        over = [gateway.connect() for _ in range(3)]
        for sock in over:
            try:
                sock.sendall(HEALTH)
            except (BrokenPipeError, ConnectionResetError):
                pass  # closed already; what it said is still in the receive buffer
            data, took, closed = read_to_close(sock, 3)
            assert closed and took < 0.5
            got, headers, body = response(data)
            assert got == 503 and headers["connection"] == "close"
            assert json.loads(body)["error"]["code"] == "too_many_connections"
            sock.close()
        # the established connection is unaffected (its keep-alive has not run out)
        assert get_health(established) == 200
        assert time.monotonic() - started < LIMITS["header_timeout_s"], "too slow to be meaningful"
    finally:
        established.close()
        for sock in extras:
            sock.close()
    # once they are closed, new connections are served again
    deadline = time.monotonic() + 3
    while True:
        with gateway.connect() as sock:
            try:
                if get_health(sock) == 200:
                    break
            except AssertionError:
                pass
        assert time.monotonic() < deadline, "no connection was served after the extras closed"
        time.sleep(0.05)


def refusal(gateway: Gateway, request: bytes) -> bytes:
    """Send ``request`` whole (the server may stop reading it) and return what came back."""
    with gateway.connect() as sock:
        try:
            sock.sendall(request)
        except (BrokenPipeError, ConnectionResetError):
            pass
        data, _, closed = read_to_close(sock, 5)
    assert closed, "the connection was held open"
    return data


def test_a_megabyte_of_headers_is_refused_with_431(gateway: Gateway) -> None:
    data = refusal(gateway, b"GET /healthz HTTP/1.1\r\nHost: gateway\r\nX-Big: "
                   + b"b" * 1_000_000 + b"\r\n\r\n")
    openai_error(data, 431, "headers_too_large")


def test_ten_thousand_headers_are_refused_with_431(gateway: Gateway) -> None:
    headers = b"".join(b"X-%d: v\r\n" % i for i in range(10_000))
    data = refusal(gateway, b"GET /healthz HTTP/1.1\r\nHost: gateway\r\n" + headers + b"\r\n")
    openai_error(data, 431, "too_many_headers")


def test_headers_within_the_caps_are_served(gateway: Gateway) -> None:
    headers = {f"x-h{i}": "v" * 100 for i in range(LIMITS["max_headers"] - 5)}
    assert httpx.get(f"http://{HOST}:{gateway.port}/healthz", headers=headers).status_code == 200


def test_a_body_that_is_not_json_gets_415(gateway: Gateway) -> None:
    url = f"http://{HOST}:{gateway.port}/v1/chat/completions"
    body = json.dumps({"model": "auto", "messages": [{"role": "user", "content": "hi"}]})
    refused = httpx.post(url, content=body, headers={"content-type": "text/plain"})
    assert refused.status_code == 415
    assert refused.json()["error"]["code"] == "unsupported_media_type"
    served = httpx.post(url, content=body,
                        headers={"content-type": "application/json; charset=utf-8"}, timeout=30)
    assert served.status_code != 415, served.text


# --- shutdown ------------------------------------------------------------------------------------


@pytest.mark.slow
def test_sigterm_ends_unfinished_requests_at_the_shutdown_deadline(tmp_path: Path) -> None:
    """A request in the kernel (a 30 s model) and one whose body never finishes: at the deadline
    both connections are closed without an answer and the process exits; the first is recorded
    as cancelled. The second never reached the kernel (its body never came), so it is not
    recorded at all."""
    deadline_s = 1.5
    gateway = start(tmp_path, {**LIMITS, "shutdown_timeout_s": deadline_s, "body_timeout_s": 60,
                               "header_timeout_s": 10},
                    {"sim-large": {"latency_ms": 30_000, "jitter": 0, "error_rate": 0,
                                   "rate_limit_rate": 0}})
    try:
        body = json.dumps({"model": "sim-large",
                           "messages": [{"role": "user", "content": "Take your time."}]}).encode()
        in_kernel, unfinished = gateway.connect(), gateway.connect()
        in_kernel.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: gateway\r\n"
                          b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                          % (len(body), body))
        unfinished.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: gateway\r\n"
                           b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{")
        time.sleep(0.5)  # the first is with the fleet by now
        assert gateway.proc.poll() is None
        sent = time.monotonic()
        gateway.proc.send_signal(signal.SIGTERM)
        answered, closed_at, closed = read_to_close(in_kernel, deadline_s + 5)
        assert closed and answered == b"", answered[:300]
        assert deadline_s - 0.2 <= closed_at <= deadline_s + SLACK_S
        answered, _, closed = read_to_close(unfinished, 1)
        assert closed and answered == b"", answered[:300]
        in_kernel.close()
        unfinished.close()
        gateway.proc.wait(timeout=deadline_s + 10)
        exited_at = time.monotonic() - sent
    finally:
        stderr = stop(gateway)
    # the simulated fleet's own shutdown (its uvicorn waits 1 s for the call it is serving)
    # comes on top of the deadline
    assert exited_at <= deadline_s + 3, stderr
    assert "shutdown_deadline_passed" in stderr and "Traceback" not in stderr, stderr
    with sqlite3.connect(gateway.db) as db:
        rows = db.execute("SELECT requested, status FROM requests").fetchall()
    assert rows == [("sim-large", "cancelled")]


# --- the open-files limit ------------------------------------------------------------------------


def test_the_connection_cap_fits_the_open_files_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    resource = pytest.importorskip("resource")
    limits = {"now": (256, 256)}
    monkeypatch.setattr(resource, "getrlimit", lambda _: limits["now"])

    def setrlimit(_, value: tuple[int, int]) -> None:
        if value[0] > limits["now"][1]:
            raise ValueError("over the hard limit")
        limits["now"] = value

    monkeypatch.setattr(resource, "setrlimit", setrlimit)
    cap, note = edge_server.fit_connections(1000)
    assert cap == (256 - edge_server.FD_RESERVE) // 2 and "lowered from 1000" in note
    limits["now"] = (1024, 1 << 20)
    cap, note = edge_server.fit_connections(1000)
    assert cap == 1000 and limits["now"][0] == 2064 and "raised" in note
    assert edge_server.fit_connections(100) == (100, None)
