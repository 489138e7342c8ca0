"""When the shared store is down: ``serve`` says which and how to start it; while serving,
limits fail closed with a clear 503, nothing already answered is lost, and service comes back
with the store."""

from __future__ import annotations

import socket
import threading
from pathlib import Path

import httpx

from .gateway import running_gateway
from .redis_support import prefix_fixture, redis_url_fixture  # noqa: F401 - fixtures
from .support import Scripted, user
from .test_serve import free_port, turnout


class Proxy:
    """A TCP relay to ``target`` on a port of its own, which a test can cut and restore, as a
    network failure between the gateway and Redis would."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.port = free_port()
        self.sockets: list[socket.socket] = []
        self.listener: socket.socket | None = None
        self.up()

    def up(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self.listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def down(self) -> None:
        """Stop listening and cut every open connection."""
        for s in [self.listener, *self.sockets]:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()
        self.sockets.clear()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            server = socket.create_connection(self.target)
            self.sockets += [client, server]
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for s in (source, sink):
                try:
                    s.close()
                except OSError:
                    pass


def test_serve_says_the_store_is_down_and_how_to_start_it(tmp_path: Path) -> None:
    port = free_port()  # nothing listens there
    config = tmp_path / "gateway.toml"
    config.write_text(f'[state]\nbackend = "redis"\nurl = "redis://127.0.0.1:{port}/0"\n'
                      f'[record]\npath = "{tmp_path / "record.db"}"\n')
    server = turnout("serve", "--config", str(config), "--port", str(free_port()),
                     cwd=tmp_path)
    _, stderr = server.communicate(timeout=60)
    assert server.returncode == 3
    assert (f"turnout: cannot start: the Redis store at redis://127.0.0.1:{port}/0 cannot be "
            "reached") in stderr
    assert "redis-server" in stderr and "Traceback" not in stderr


def test_limits_fail_closed_while_the_store_is_down_and_recover(
        tmp_path: Path, redis_url: str, prefix: str) -> None:
    host, _, rest = redis_url.removeprefix("redis://").partition(":")
    proxy = Proxy((host, int(rest.split("/")[0])))
    upstream = Scripted({"m": ["first", "second"]})
    config = {"providers": {"p": {"kind": "openai-compatible", "base_url": "http://127.0.0.1:9/v1"}},
              "models": {"m": {"provider": "p", "input_price": 1, "output_price": 1}},
              "state": {"backend": "redis", "url": f"redis://127.0.0.1:{proxy.port}/0",
                        "key_prefix": prefix, "socket_timeout_s": 0.5},
              "budgets": [{"scope": "global", "limit_usd": 10}],
              "rate_limits": [{"scope": "global", "rpm": 1000}]}
    body = {"model": "m", "messages": [user("hi")]}
    with running_gateway(config, tmp_path, plugins={"upstream": upstream}) as gw:
        first = httpx.post(gw.url + "/v1/chat/completions", json=body, timeout=10)
        proxy.down()
        refused = httpx.post(gw.url + "/v1/chat/completions", json=body, timeout=10)
        proxy.up()
        again = httpx.post(gw.url + "/v1/chat/completions", json=body, timeout=10)
        rows = gw.rows()
    proxy.down()
    assert first.status_code == 200 and first.json()["choices"][0]["message"]["content"] == "first"
    assert refused.status_code == 503
    error = refused.json()["error"]
    assert error["code"] == "store_unavailable"
    assert f"the Redis store at redis://127.0.0.1:{proxy.port}/0" in error["message"]
    assert again.status_code == 200 and again.json()["choices"][0]["message"]["content"] == \
        "second"
    assert upstream.calls == ["m", "m"], "nothing is sent upstream while limits cannot be held"
    assert [r["status"] for r in rows] == ["ok", "error", "ok"]
    assert rows[1]["error_kind"] == "store_unavailable"
