"""``turnout serve --workers N``: refused with the memory store; with Redis, N processes answer on
one port, share one rate limit, a killed worker is replaced, SIGTERM drains them all, and every
worker's answers reach the one SQLite request log through a journal of its own.

Which worker answers is made certain, not left to the scheduler: every worker but one is stopped
(SIGSTOP) while a request is sent on a new connection, so only the one left can accept it. A
request id is ``req_`` + a random prefix drawn once per process + a counter, so the prefix says
which process answered.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import anyio
import httpx
import orjson
import pytest
import structlog

from turnout.adapters import cli
from turnout.adapters.http.workers import journal_for, worker_config
from turnout.kernel.config import parse

from .fakes.server import free_port, serve
from .redis_support import prefix_fixture, redis_url_fixture  # noqa: F401 - the fixtures

REFUSAL = ('turnout: --workers 2 needs a shared store: each worker would keep its own rate '
           'limits, budgets and cache. Set [state] backend = "redis" (and [state] url) in the '
           'config, or run one worker.')
LIMITED, FREE = "sk-workers-limited-0001", "sk-workers-free-0001"


def env() -> dict[str, str]:
    """The test's environment (TURNOUT_PLUGINS empty, from conftest) without provider keys."""
    return {k: v for k, v in os.environ.items()
            if k not in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "GEMINI_API_KEY")}


@pytest.fixture
def structlog_restored() -> Iterator[None]:
    saved = structlog.get_config()
    yield
    structlog.configure(**saved)


# --- refusals, in process ----------------------------------------------------------------------


def test_memory_store_with_two_workers_is_refused_before_anything_starts(
        tmp_path: Path, capsys, structlog_restored) -> None:
    config = tmp_path / "memory.toml"
    config.write_text(f'[state]\nbackend = "memory"\n\n[record]\npath = "{tmp_path / "r.db"}"\n')
    port = free_port()
    assert cli.main(["serve", "--config", str(config), "--port", str(port),
                     "--workers", "2"]) == 2
    err = capsys.readouterr().err
    assert err.strip() == REFUSAL
    assert not (tmp_path / "r.db").exists()  # nothing started: no request log opened


@pytest.mark.parametrize("value, says", [("0", "must be 1 or more"), ("-3", "must be 1 or more"),
                                         ("two", "expected a number of processes or 'auto'")])
def test_workers_must_be_one_or_more(value: str, says: str, capsys) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.parser(cli.plugin_commands()).parse_args(["serve", "--workers", value])
    assert exited.value.code == 2
    assert f"argument --workers: {says}" in capsys.readouterr().err


def test_workers_auto_is_the_core_count() -> None:
    args = cli.parser(cli.plugin_commands()).parse_args(["serve", "--workers", "auto"])
    assert args.workers == (os.cpu_count() or 1)


def test_each_worker_gets_its_own_journal(tmp_path: Path) -> None:
    assert journal_for("/x/turnout.db.journal", 0) == "/x/turnout.db.journal"
    assert journal_for("/x/turnout.db.journal", 2) == "/x/turnout.db.worker2.journal"
    assert journal_for("/x/outbox", 1) == "/x/outbox.worker1"
    config = parse({"state": {"backend": "redis"},
                    "record": {"path": str(tmp_path / "r.db")}}, source="test")
    assert worker_config(config, 0) is config
    assert worker_config(config, 1).section("record")["journal"] == \
        str(tmp_path / "r.db.worker1.journal")
    explicit = parse({"record": {"backend": "postgres", "dsn": "postgresql://u@127.0.0.1/db",
                                 "journal": str(tmp_path / "out.journal")}}, source="test")
    assert worker_config(explicit, 3).section("record")["journal"] == \
        str(tmp_path / "out.worker3.journal")
    none = parse({"record": {"path": ":memory:"}}, source="test")
    assert worker_config(none, 1) is none


# --- real processes ----------------------------------------------------------------------------


def gated_upstream(arrived: threading.Event, gate: threading.Event):
    """An OpenAI-format upstream; a prompt of "hold" is answered only once ``gate`` is set
    (``arrived`` says it is being held)."""
    async def app(scope, receive, send):
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                kind = message["type"].rpartition(".")[2]
                await send({"type": f"lifespan.{kind}.complete"})
                if kind == "shutdown":
                    return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        request = orjson.loads(body) if body else {}
        if scope["path"].endswith("/chat/completions"):
            if request["messages"][-1]["content"] == "hold":
                arrived.set()
                await anyio.to_thread.run_sync(gate.wait, 60)
            payload = {"id": "chatcmpl-w", "object": "chat.completion", "created": 0,
                       "model": request["model"],
                       "choices": [{"index": 0, "finish_reason": "stop", "logprobs": None,
                                    "message": {"role": "assistant", "content": "ok"}}],
                       "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}}
        else:
            payload = {"object": "list", "data": [{"id": "m", "object": "model"}]}
        data = orjson.dumps(payload)
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(data)).encode())]})
        await send({"type": "http.response.body", "body": data})

    return app


def write_config(tmp_path: Path, upstream: str, redis_url: str, prefix: str,
                 state: str = "redis") -> Path:
    path = tmp_path / "workers.toml"
    path.write_text(f"""
[server]
api_keys = [{{ name = "limited", key = "{LIMITED}" }}, {{ name = "free", key = "{FREE}" }}]
shutdown_timeout_s = 60

[providers.up]
kind = "openai-compatible"
base_url = "{upstream}/v1"

[models.m]
provider = "up"

[state]
backend = "{state}"
url = "{redis_url}"
key_prefix = "{prefix}"

[record]
path = "{tmp_path / 'record.db'}"

[[rate_limits]]
scope = "key"
match = "limited"
rpm = 3

[logging]
level = "warning"
""")
    return path


@contextmanager
def supervisor(config: Path, port: int, workers: int = 2) -> Iterator[subprocess.Popen]:
    """``turnout serve --workers N`` until the block ends (then SIGKILL if still running)."""
    proc = subprocess.Popen([sys.executable, "-m", "turnout.adapters.cli", "serve", "--config",
                             str(config), "--port", str(port), "--workers", str(workers)],
                            env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
        for pid in worker_pids(proc.pid) if proc.poll() is None else ():
            os.kill(pid, signal.SIGKILL)


def worker_pids(parent: int) -> list[int]:
    """The worker processes of a supervisor (its spawned children, not multiprocessing's
    resource tracker), from /proc."""
    try:
        children = Path(f"/proc/{parent}/task/{parent}/children").read_text().split()
    except OSError:
        return []
    pids = []
    for child in children:
        try:
            cmdline = Path(f"/proc/{child}/cmdline").read_bytes()
        except OSError:
            continue
        if b"spawn_main" in cmdline:
            pids.append(int(child))
    return sorted(pids)


def wait_ready(proc: subprocess.Popen, base: str, workers: int) -> list[int]:
    """Wait for the banner, which the supervisor prints once every worker serves; the workers'
    pids. (The lines before it are kept in ``proc.before``.)"""
    proc.before = []  # type: ignore[attr-defined]
    for line in proc.stderr:
        proc.before.append(line)  # type: ignore[attr-defined]
        if line.startswith("turnout: serving on") and base in line:
            assert f"; {workers} worker processes" in line
            pids = worker_pids(proc.pid)
            assert len(pids) == workers, pids
            return pids
    raise AssertionError("".join(proc.before))  # type: ignore[attr-defined]


@contextmanager
def only(worker: int, others: list[int]) -> Iterator[None]:
    """Every worker in ``others`` stopped (SIGSTOP), so that only ``worker`` accepts."""
    stopped = [pid for pid in others if pid != worker]
    for pid in stopped:
        os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        for pid in stopped:
            os.kill(pid, signal.SIGCONT)


def ask(base: str, key: str, prompt: str = "hello") -> httpx.Response:
    """One chat request on a new connection."""
    return httpx.post(base + "/v1/chat/completions", timeout=60,
                      headers={"authorization": f"Bearer {key}"},
                      json={"model": "m", "messages": [{"role": "user", "content": prompt}]})


def process_of(response: httpx.Response) -> str:
    """The per-process prefix of the answer's request id."""
    request_id = response.headers["x-request-id"]
    assert request_id.startswith("req_")
    return request_id[4:-12]


@pytest.mark.slow
def test_two_workers_answer_on_one_port_share_a_rate_limit_and_a_dead_one_is_replaced(
        tmp_path: Path, redis_url: str, prefix: str) -> None:
    arrived, gate = threading.Event(), threading.Event()
    gate.set()
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with serve(gated_upstream(arrived, gate)) as upstream, \
            supervisor(write_config(tmp_path, upstream, redis_url, prefix), port) as proc:
        first, second = wait_ready(proc, base, 2)

        with only(first, [first, second]):
            by_first = [ask(base, LIMITED), ask(base, LIMITED)]
        with only(second, [first, second]):
            by_second = [ask(base, LIMITED), ask(base, LIMITED)]
        assert [r.status_code for r in by_first + by_second] == [200, 200, 200, 429]
        # Two processes answered: each pair carries one prefix, and the prefixes differ.
        assert process_of(by_first[0]) == process_of(by_first[1])
        assert process_of(by_second[0]) == process_of(by_second[1])
        assert process_of(by_first[0]) != process_of(by_second[0])
        # The limit is the store's, not a worker's: the second worker admitted one, not three.
        assert by_second[1].json()["error"]["code"] == "rate_limited"

        os.kill(first, signal.SIGKILL)
        while len(pids := worker_pids(proc.pid)) != 2 or first in pids:
            assert proc.poll() is None, proc.stderr.read()
            time.sleep(0.1)
        (replacement,) = set(pids) - {second}
        with only(replacement, pids):
            answered = ask(base, FREE)  # waits in the socket's queue until it serves
        assert answered.status_code == 200
        assert process_of(answered) not in {process_of(by_first[0]), process_of(by_second[0])}
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr
    assert '"worker_died"' in stderr and "SIGKILL" in stderr


@pytest.mark.slow
def test_sigterm_drains_every_worker_and_each_answer_reaches_the_one_sqlite_log(
        tmp_path: Path, redis_url: str, prefix: str) -> None:
    arrived, gate = threading.Event(), threading.Event()
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    held: list[httpx.Response] = []
    with serve(gated_upstream(arrived, gate)) as upstream, \
            supervisor(write_config(tmp_path, upstream, redis_url, prefix), port) as proc:
        pids = wait_ready(proc, base, 2)
        # Each worker's journal is its own file, held while it runs.
        assert (tmp_path / "record.db.journal").exists()
        assert (tmp_path / "record.db.worker1.journal").exists()
        answers = []
        for pid in pids:
            with only(pid, pids):
                answers += [ask(base, FREE) for _ in range(3)]
        assert [r.status_code for r in answers] == [200] * 6
        assert len({process_of(r) for r in answers}) == 2

        holder = threading.Thread(target=lambda: held.append(ask(base, FREE, "hold")))
        holder.start()
        assert arrived.wait(60)
        proc.send_signal(signal.SIGTERM)
        # Draining: no worker accepts any more (the connection is refused), while the held
        # request is still in flight.
        while True:
            try:
                httpx.get(base + "/healthz", timeout=2)
            except httpx.ConnectError:
                break
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        assert holder.is_alive() and proc.poll() is None
        gate.set()
        holder.join(60)
        _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr
    assert held and held[0].status_code == 200 and held[0].json()["choices"][0]["message"][
        "content"] == "ok"
    answered = {r.headers["x-request-id"] for r in [*answers, *held]}
    with sqlite3.connect(tmp_path / "record.db") as db:
        recorded = {row[0] for row in db.execute("SELECT request_id FROM requests")}
    assert answered <= recorded
    assert not list(tmp_path.glob("*.journal*")), "a clean stop leaves no journal"
    assert "Traceback" not in stderr and "JournalInUse" not in stderr


def test_a_port_in_use_stops_the_supervisor_before_any_worker(tmp_path: Path) -> None:
    import socket

    config = write_config(tmp_path, "http://127.0.0.1:9", "redis://127.0.0.1:6379/0", "x:")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run([sys.executable, "-m", "turnout.adapters.cli", "serve", "--config",
                               str(config), "--port", str(port), "--workers", "2"], env=env(),
                              capture_output=True, text=True, timeout=120)
    assert done.returncode == 3
    assert f"cannot listen on 127.0.0.1:{port}" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.slow
def test_workers_that_cannot_start_stop_the_supervisor_instead_of_looping(
        tmp_path: Path) -> None:
    nowhere = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    config = write_config(tmp_path, "http://127.0.0.1:9", nowhere, "x:")
    done = subprocess.run([sys.executable, "-m", "turnout.adapters.cli", "serve", "--config",
                           str(config), "--port", str(free_port()), "--workers", "2"], env=env(),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 3
    assert "cannot be reached" in done.stderr
    assert "exited before it served" in done.stderr
    assert done.stderr.count('"worker_failed_to_start"') == 1  # not started again
