"""The request record survives what the issue measured: a killed gateway, a database locked by
another process, a full disk. Real gateways, real processes killed with SIGKILL, real SQLite
locks and a real device that answers ENOSPC; no mocks."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Callable

import httpx
import orjson
import psycopg
import pytest
import structlog
from psycopg import sql

from turnout.kernel.config import parse
from turnout.kernel.hookspecs import hookimpl
from turnout.kernel.kernel import Kernel
from turnout.kernel.types import Alert, ChatRequest
from turnout.plugins import record_journal, sqlite_recorder
from turnout.plugins.record_journal import Journal, encode
from turnout.plugins.sqlite_recorder import (
    RecordSettings,
    SQLiteRecorder,
    attempt_rows,
    context_row,
)

from .test_record_postgres import fresh_schema, server_dsn
from .test_serve import free_port, turnout, wait_ready
from .test_sqlite_recorder import SECRET, STATUSES, make_context, rows

ROOT = Path(__file__).resolve().parent.parent

def kernel_for(path: Path, **record) -> SimpleNamespace:
    settings = RecordSettings(path=str(path), **record)
    return SimpleNamespace(plugin_settings=lambda plugin: settings)


def journal_files(db: Path) -> list[Path]:
    """The journal's files beside ``db``: the active segment and closed ones."""
    return sorted(p for p in db.parent.iterdir() if p.name.startswith(db.name + ".journal"))


def counts(db: Path, ids: list[str]) -> tuple[dict[str, int], dict[str, int]]:
    """Per request id: its ``requests`` rows, and its ``attempts`` rows."""
    conn = sqlite3.connect(db)
    try:
        found = dict.fromkeys(ids, 0)
        attempts = dict.fromkeys(ids, 0)
        for (rid,) in conn.execute("SELECT request_id FROM requests"):
            if rid in found:
                found[rid] += 1
        for (rid,) in conn.execute("SELECT request_id FROM attempts"):
            if rid in attempts:
                attempts[rid] += 1
        return found, attempts
    finally:
        conn.close()


# --- 1. SIGKILL under load --------------------------------------------------------------------

GATEWAY = """
[providers.fleet]
kind = "simulated"

[models.sim-a]
provider = "fleet"
context_window = 32000
input_price = 0.1
output_price = 0.4

[models.sim-b]
provider = "fleet"
context_window = 32000
input_price = 0.6
output_price = 2.4

[routes.main]
models = ["sim-a", "sim-b"]

[routing]
default = "main"

[simulation]
seed = 11

[simulation.models.sim-a]
latency_ms = 5
jitter = 0
error_rate = 0
rate_limit_rate = 0
quality = 1.0
tokens_per_s = 5000

[simulation.models.sim-b]
latency_ms = 5
jitter = 0
error_rate = 0
rate_limit_rate = 0
quality = 1.0
tokens_per_s = 5000

[record]
path = "{db}"

[logging]
level = "warning"
"""

CLIENTS = 32
MAX_REQUESTS = 4000
"""Most requests one round sends, whatever the timing."""


async def drive(base: str, stop: asyncio.Event, received: list[str], first: asyncio.Event,
                deadline: float) -> None:
    """CLIENTS concurrent clients until ``stop`` (or the deadline, or MAX_REQUESTS); the request
    ids of the answers that arrived whole (a stream: up to ``[DONE]``) go to ``received``."""
    sent = 0

    async def client(n: int, http: httpx.AsyncClient) -> None:
        nonlocal sent
        while not stop.is_set() and sent < MAX_REQUESTS and time.monotonic() < deadline:
            sent += 1
            stream = (sent + n) % 2 == 0
            body = {"model": "auto", "stream": stream, "max_tokens": 8,
                    "messages": [{"role": "user", "content": f"Say hello, client {n}."}]}
            try:
                if stream:
                    async with http.stream("POST", "/v1/chat/completions", json=body) as resp:
                        done = False
                        async for line in resp.aiter_lines():
                            done = done or line.strip() == "data: [DONE]"
                        if resp.status_code == 200 and done:
                            received.append(resp.headers["x-request-id"])
                else:
                    resp = await http.post("/v1/chat/completions", json=body)
                    if resp.status_code == 200:
                        received.append(resp.headers["x-request-id"])
            except httpx.HTTPError:
                return  # the gateway is gone
            first.set()

    limits = httpx.Limits(max_connections=CLIENTS, max_keepalive_connections=CLIENTS)
    async with httpx.AsyncClient(base_url=base, timeout=10, limits=limits) as http:
        await asyncio.gather(*(client(n, http) for n in range(CLIENTS)))


async def load_then_kill(server: subprocess.Popen, base: str, after_s: float) -> list[str]:
    """Drive the gateway, SIGKILL it ``after_s`` seconds after the first answer, and return the
    ids of every answer a client received whole."""
    received: list[str] = []
    stop, first = asyncio.Event(), asyncio.Event()
    driver = asyncio.create_task(drive(base, stop, received, first, time.monotonic() + 15))
    await asyncio.wait_for(first.wait(), 10)
    await asyncio.sleep(after_s)
    server.send_signal(signal.SIGKILL)
    server.wait(10)
    stop.set()
    await asyncio.wait_for(driver, 15)
    return received


def stop_cleanly(server: subprocess.Popen) -> str:
    server.send_signal(signal.SIGINT)
    _, stderr = server.communicate(timeout=30)
    assert server.returncode == 0, stderr
    return stderr


Counts = Callable[[list[str]], tuple[dict[str, int], dict[str, int], dict[str, int]]]
"""Per request id: its ``requests`` rows, its ``attempts`` rows, and the attempts its row
declares."""


def sqlite_counts(db: Path) -> Counts:
    def of(ids: list[str]) -> tuple[dict[str, int], dict[str, int], dict[str, int]]:
        found, attempts = counts(db, ids)
        conn = sqlite3.connect(db)
        try:
            declared = dict(conn.execute("SELECT request_id, attempts FROM requests"))
        finally:
            conn.close()
        return found, attempts, declared

    return of


def kill_rounds(config: Path, db: Path, record_counts: Counts) -> None:
    """Three rounds of: a gateway on ``config`` under load, SIGKILLed, then started again and
    stopped cleanly; after each, every answered request has exactly one record with its
    attempts, and no journal is left (``db`` names the journal: ``<db>.journal``)."""
    dice = random.Random(20240607)
    missing_before_replay = 0
    total = 0
    for round_ in range(3):
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        server = turnout("serve", "--port", str(port), "--config", str(config), cwd=ROOT)
        try:
            wait_ready(server, base)
            received = asyncio.run(load_then_kill(server, base, dice.uniform(0.5, 1.5)))
        finally:
            if server.poll() is None:
                server.kill()
            server.communicate(timeout=10)
        assert received, f"round {round_}: no answer arrived before the kill"
        total += len(received)
        journaled = {orjson.loads(line)[0][0] for p in journal_files(db)
                     for line in p.read_bytes().splitlines()}
        assert set(received) <= journaled, (
            f"round {round_}: answered before their record reached the journal: "
            f"{sorted(set(received) - journaled)}")
        found, _, _ = record_counts(received)
        missing_before_replay += sum(1 for n in found.values() if n == 0)

        port = free_port()
        server = turnout("serve", "--port", str(port), "--config", str(config), cwd=ROOT)
        try:
            wait_ready(server, f"http://127.0.0.1:{port}")  # the journal is replayed at start
        finally:
            stderr = stop_cleanly(server)
        assert "Traceback" not in stderr

        found, attempts, declared = record_counts(received)
        assert [rid for rid, n in found.items() if n != 1] == [], (
            f"round {round_}: answered requests without exactly one record")
        assert all(attempts[rid] == declared[rid] >= 1 for rid in received), (
            "every answered request has its attempt rows")
        assert journal_files(db) == [], "a clean stop leaves no journal behind"
    # How many answered requests only the journal had (the issue measured 4-7%); not asserted,
    # a kill can fall between two commits. tests below replay such rows deterministically.
    print(f"{missing_before_replay} of {total} answered requests were replayed from the journal")


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_sigkill_under_load_loses_no_answered_request(tmp_path: Path) -> None:
    db = tmp_path / "record.db"
    config = tmp_path / "gateway.toml"
    config.write_text(GATEWAY.format(db=db))
    kill_rounds(config, db, sqlite_counts(db))


POSTGRES_RECORD = """backend = "postgres"
dsn = "{dsn}"
schema = "{schema}"
journal = "{db}.journal"
"""
"""The ``[record]`` keys of :data:`GATEWAY` for PostgreSQL; the journal where SQLite's would be."""


def postgres_counts(dsn: str, schema: str) -> Counts:
    def of(ids: list[str]) -> tuple[dict[str, int], dict[str, int], dict[str, int]]:
        found, attempts = dict.fromkeys(ids, 0), dict.fromkeys(ids, 0)
        with psycopg.connect(dsn) as conn:
            conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(schema)))
            declared = dict(conn.execute("SELECT request_id, attempts FROM requests"
                                         " WHERE request_id = ANY(%s)", [ids]).fetchall())
            for table, tally in (("requests", found), ("attempts", attempts)):
                for rid, n in conn.execute(sql.SQL("SELECT request_id, count(*) FROM {} WHERE "
                                                   "request_id = ANY(%s) GROUP BY 1").format(
                                                       sql.Identifier(table)), [ids]):
                    tally[rid] = n
        return found, attempts, declared

    return of


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_sigkill_under_load_loses_no_answered_request_in_postgres(tmp_path: Path) -> None:
    dsn = server_dsn()
    db = tmp_path / "record.db"  # not written: it names the journal
    config = tmp_path / "gateway.toml"
    with fresh_schema(dsn) as schema:
        config.write_text(GATEWAY.replace('path = "{db}"\n', POSTGRES_RECORD).format(
            db=db, dsn=dsn, schema=schema))
        kill_rounds(config, db, postgres_counts(dsn, schema))
        assert not db.exists()


# --- 2. a locked database -------------------------------------------------------------------


@pytest.mark.anyio
async def test_a_locked_database_delays_rows_and_drops_none(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sqlite_recorder, "BUSY_TIMEOUT_MS", 100)
    path = tmp_path / "locked.db"
    kernel = kernel_for(path, retry_max_s=0.2)
    recorder = SQLiteRecorder()
    await recorder.startup(kernel)
    contexts = [make_context(i, STATUSES[i % 3], 10) for i in range(60)]
    holder = sqlite3.connect(path, isolation_level=None)
    with structlog.testing.capture_logs() as logs:
        holder.execute("BEGIN EXCLUSIVE")
        locked_at = time.monotonic()
        for i, ctx in enumerate(contexts):  # across several batches, all while it is locked
            recorder.record(ctx)
            if i % 10 == 9:
                await asyncio.sleep(0.1)
        assert not recorder.flush(timeout=0.3), "nothing can be written while it is locked"
        await asyncio.sleep(2.0 - (time.monotonic() - locked_at))  # held 2 s: 20 busy timeouts
        holder.execute("ROLLBACK")
        holder.close()
        assert recorder.flush(timeout=5)
        await recorder.shutdown(kernel)

    assert sorted(r["request_id"] for r in rows(path)) == sorted(c.request_id for c in contexts)
    assert len(rows(path, "attempts")) == sum(len(c.attempts) for c in contexts)
    events = [e["event"] for e in logs]
    assert events.count("record_write_delayed") == 1, "once per episode, not per retry"
    assert events.count("record_write_resumed") == 1
    assert "record_write_failed" not in events and "record_dropped" not in events
    (delayed,) = [e for e in logs if e["event"] == "record_write_delayed"]
    assert "locked" in delayed["reason"] and delayed["log_level"] == "warning"


@pytest.mark.anyio
async def test_shutdown_with_the_database_locked_leaves_rows_for_the_next_start(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sqlite_recorder, "BUSY_TIMEOUT_MS", 50)
    monkeypatch.setattr(sqlite_recorder, "CLOSE_RETRY_S", 0.5)
    path = tmp_path / "stuck.db"
    kernel = kernel_for(path, retry_max_s=0.1)
    recorder = SQLiteRecorder()
    await recorder.startup(kernel)
    contexts = [make_context(i, "ok", 10) for i in range(5)]
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    with structlog.testing.capture_logs() as logs:
        for ctx in contexts:
            recorder.record(ctx)
        started = time.monotonic()
        await recorder.shutdown(kernel)
    assert time.monotonic() - started < 3, "shutdown gives up after CLOSE_RETRY_S"
    holder.execute("ROLLBACK")
    holder.close()
    assert rows(path) == []
    (deferred,) = [e for e in logs if e["event"] == "record_write_deferred"]
    assert deferred["rows"] == 5
    assert journal_files(path), "the rows wait in the journal"

    again = SQLiteRecorder()
    await again.startup(kernel_for(path))
    await again.shutdown(kernel_for(path))
    assert sorted(r["request_id"] for r in rows(path)) == sorted(c.request_id for c in contexts)
    assert journal_files(path) == []


# --- 3. replay exactly once -------------------------------------------------------------------

CRASH = """
import os, signal, sys
from types import SimpleNamespace
import anyio
from tests.test_sqlite_recorder import STATUSES, make_context
from turnout.plugins import record_journal
from turnout.plugins.sqlite_recorder import RecordSettings, SQLiteRecorder

path, committed, total = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
record_journal.SEGMENT_BYTES = int(sys.argv[4])
pause_every, pause_s = int(sys.argv[5]), float(sys.argv[6])

async def main():
    settings = RecordSettings(path=path)
    recorder = SQLiteRecorder()
    await recorder.startup(SimpleNamespace(plugin_settings=lambda plugin: settings))
    for i in range(total):
        ctx = make_context(i, STATUSES[i % 3], 10.0)
        recorder.record(ctx)
        print("recorded", ctx.request_id, flush=True)
        if i + 1 == committed:
            assert recorder.flush()
        elif i % pause_every == pause_every - 1:
            await anyio.sleep(pause_s)  # batches commit, segments close and go, meanwhile
    os.kill(os.getpid(), signal.SIGKILL)  # before the writer's next commit

anyio.run(main)
"""


def recorded(stdout: str) -> list[str]:
    """The request ids a child printed (its log lines go to stdout too)."""
    return [line.split()[1] for line in stdout.splitlines() if line.startswith("recorded ")]


def crash_recording(path: Path, committed: int, total: int,
                    segment_bytes: int = record_journal.SEGMENT_BYTES, pause_every: int = 100,
                    pause_s: float = 0.0) -> list[str]:
    """Record ``total`` requests in a child process (the first ``committed`` flushed to the
    database, a pause of ``pause_s`` every ``pause_every``) and SIGKILL it right after the last;
    the ids it recorded."""
    child = subprocess.run([sys.executable, "-c", textwrap.dedent(CRASH), str(path),
                            str(committed), str(total), str(segment_bytes), str(pause_every),
                            str(pause_s)], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert child.returncode == -signal.SIGKILL, child.stderr
    ids = recorded(child.stdout)
    assert len(ids) == total
    return ids


@pytest.mark.anyio
async def test_a_crashed_recorder_is_replayed_exactly_once(tmp_path: Path) -> None:
    path = tmp_path / "crash.db"
    ids = crash_recording(path, committed=10, total=40)
    assert len(rows(path)) == 10, "the rest died with the process, before its commit"
    journal = b"".join(p.read_bytes() for p in journal_files(path))
    assert journal.count(b"\n") == 40, "every recorded request is one journal line"
    assert SECRET.split()[1].encode() not in journal, "the journal holds no secret"
    assert b"Bearer [REDACTED]" in journal

    for start in range(2):
        with structlog.testing.capture_logs() as logs:
            recorder = SQLiteRecorder()
            await recorder.startup(kernel_for(path))
            assert recorder.flush()
            assert journal_files(path) == [path.with_name(path.name + ".journal")], (
                "replayed segments are deleted once committed")
            await recorder.shutdown(kernel_for(path))
        got = rows(path)
        assert sorted(r["request_id"] for r in got) == sorted(ids), f"start {start}"
        assert len(rows(path, "attempts")) == sum(r["attempts"] for r in got)
        assert journal_files(path) == [], "compacted: nothing left to replay"
        replayed = [e for e in logs if e["event"] == "record_replayed"]
        if start == 0:
            assert [(e["requests"], e["inserted"], e["already_recorded"])
                    for e in replayed] == [(40, 30, 10)]
        else:
            assert replayed == []
        assert not [e for e in logs if e["event"] in ("record_write_failed", "record_dropped")]

    assert [r["decision"] for r in got if r["request_id"] == ids[1]][0].count(
        "Bearer [REDACTED]") == 1, "replayed rows are the rows the writer would have written"


@pytest.mark.anyio
async def test_journal_segments_outlive_no_row_across_rotations_and_a_crash(
        tmp_path: Path) -> None:
    """Segments closed after every batch, while requests keep coming (some land in a segment
    while the batch before them commits): killed mid-stream, every recorded request is in the
    database once after the next start."""
    path = tmp_path / "rotating.db"
    ids = crash_recording(path, committed=0, total=3000, segment_bytes=1, pause_every=10,
                          pause_s=0.001)
    before = {r["request_id"] for r in rows(path)}
    assert 0 < len(before) < len(ids), "several batches committed, the last ones not"
    assert journal_files(path)
    recorder = SQLiteRecorder()
    await recorder.startup(kernel_for(path))
    await recorder.shutdown(kernel_for(path))
    assert sorted(r["request_id"] for r in rows(path)) == sorted(ids)
    assert journal_files(path) == []


ROTATE = """
import os, signal, sqlite3, sys, time
from types import SimpleNamespace
import anyio
from tests.test_sqlite_recorder import make_context
from turnout.plugins import record_journal, sqlite_recorder
from turnout.plugins.sqlite_recorder import RecordSettings, SQLiteRecorder

path = sys.argv[1]
record_journal.SEGMENT_BYTES = 1  # close the segment after every batch
sqlite_recorder.BUSY_TIMEOUT_MS = 20

async def main():
    settings = RecordSettings(path=path, retry_max_s=0.02)
    recorder = SQLiteRecorder()
    await recorder.startup(SimpleNamespace(plugin_settings=lambda plugin: settings))
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    for i in range(40):
        ctx = make_context(i, "ok", 10.0)
        recorder.record(ctx)
        print("recorded", ctx.request_id, flush=True)
        if i == 19:
            await anyio.sleep(0.2)  # the writer holds the first 20 as its batch, retrying
    holder.execute("ROLLBACK")  # the first batch commits; its segment, with all 40, closes
    while sqlite3.connect(path).execute("SELECT count(*) FROM requests").fetchone()[0] < 20:
        time.sleep(0.001)
    time.sleep(0.005)
    os.kill(os.getpid(), signal.SIGKILL)  # before the second batch (the writer sleeps 50 ms)

anyio.run(main)
"""


@pytest.mark.anyio
async def test_a_closed_segment_stays_until_the_rows_after_the_batch_commit(
        tmp_path: Path) -> None:
    """The segment closed after a batch holds rows that came in while the batch was being
    written; killed before those are committed, they are replayed from it."""
    path = tmp_path / "closed.db"
    child = subprocess.run([sys.executable, "-c", textwrap.dedent(ROTATE), str(path)], cwd=ROOT,
                           capture_output=True, text=True, timeout=60)
    assert child.returncode == -signal.SIGKILL, child.stderr
    ids = recorded(child.stdout)
    assert len(ids) == 40
    assert len(rows(path)) == 20, "killed between the two batches"
    recorder = SQLiteRecorder()
    await recorder.startup(kernel_for(path))
    await recorder.shutdown(kernel_for(path))
    assert sorted(r["request_id"] for r in rows(path)) == sorted(ids)
    assert journal_files(path) == []


@pytest.mark.anyio
async def test_a_torn_journal_line_is_skipped_and_the_rest_replayed(tmp_path: Path) -> None:
    path = tmp_path / "torn.db"
    contexts = [make_context(i, "ok", 10) for i in range(3)]
    journal = Journal(str(path) + ".journal")
    journal.start()
    lines = [encode((context_row(c), attempt_rows(c))) for c in contexts]
    for line in (lines[0], lines[1][:40], lines[2]):  # the middle one cut short
        journal.append(line if line.endswith(b"\n") else line + b"\n")
    journal.close(discard=False)
    with structlog.testing.capture_logs() as logs:
        recorder = SQLiteRecorder()
        await recorder.startup(kernel_for(path))
        await recorder.shutdown(kernel_for(path))
    assert {r["request_id"] for r in rows(path)} == {contexts[0].request_id,
                                                      contexts[2].request_id}
    assert [(e["event"], e["line"]) for e in logs if e["event"] == "record_journal_corrupt"] == [
        ("record_journal_corrupt", 2)]


@pytest.mark.anyio
async def test_replay_writes_a_request_with_its_attempts_or_neither(tmp_path: Path) -> None:
    path = tmp_path / "pairs.db"
    good, bad, other = (make_context(i, "error", 10) for i in range(3))
    journal = Journal(str(path) + ".journal")
    journal.start()
    for ctx in (good, bad, other):
        attempts = attempt_rows(ctx)
        if ctx is bad:  # its request row is fine, its second attempt row is not (n NOT NULL)
            attempts[1] = (*attempts[1][:1], None, *attempts[1][2:])
        journal.append(encode((context_row(ctx), attempts)))
    journal.close(discard=False)
    with structlog.testing.capture_logs() as logs:
        recorder = SQLiteRecorder()
        await recorder.startup(kernel_for(path))
        await recorder.shutdown(kernel_for(path))
    assert {r["request_id"] for r in rows(path)} == {good.request_id, other.request_id}
    assert {r["request_id"] for r in rows(path, "attempts")} == {good.request_id,
                                                                 other.request_id}
    assert len(rows(path, "attempts")) == 4
    (failed,) = [e for e in logs if e["event"] == "record_write_failed"]
    assert failed["request_id"] == bad.request_id and "attempts.n" in failed["error"]
    assert journal_files(path) == [], "an unwritable row does not keep its segment forever"


# --- 4. a full disk ---------------------------------------------------------------------------


class Alerts:
    def __init__(self) -> None:
        self.alerts: list[Alert] = []

    @hookimpl
    def alert(self, alert: Alert) -> None:
        self.alerts.append(alert)


def simulated(db: Path, journal: str) -> dict:
    return {
        "providers": {"fleet": {"kind": "simulated"}},
        "models": {"sim-a": {"provider": "fleet", "context_window": 32000, "input_price": 0.1,
                             "output_price": 0.4}},
        "routes": {"main": {"models": ["sim-a"]}},
        "routing": {"default": "main"},
        "simulation": {"seed": 3, "models": {"sim-a": {
            "latency_ms": 5, "jitter": 0, "error_rate": 0, "rate_limit_rate": 0,
            "quality": 1.0, "tokens_per_s": 5000}}},
        "record": {"path": str(db), "journal": journal},
        "logging": {"level": "warning"},
    }


@pytest.mark.anyio
@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full (ENOSPC on write)")
async def test_a_full_disk_journal_raises_one_alert_and_rows_still_reach_the_database(
        tmp_path: Path) -> None:
    db = tmp_path / "full.db"
    kernel = Kernel(parse(simulated(db, "/dev/full"), source="test"))
    catcher = Alerts()
    kernel.plugins.register(catcher, name="catcher")
    kernel.load_plugins()
    ids = []
    with structlog.testing.capture_logs() as logs:
        async with kernel:
            for _ in range(3):
                answer = await kernel.ask(ChatRequest(
                    model="auto", messages=[{"role": "user", "content": "Say hello."}]))
                ids.append(answer.request_id)
            stream = await kernel.ask_stream(ChatRequest(
                model="auto", messages=[{"role": "user", "content": "Say hello."}]))
            async for _ in stream:
                pass
            ids.append(stream.answer.request_id)
    assert [(a.name, a.severity, a.resolved, a.labels) for a in catcher.alerts] == [
        ("record_journal_failed", "critical", False, {"path": "/dev/full"})], "once an episode"
    assert "No space left on device" in catcher.alerts[0].summary
    failed = [e for e in logs if e["event"] == "record_journal_failed"]
    assert len(failed) == 1 and failed[0]["log_level"] == "error"
    assert sorted(r["request_id"] for r in rows(db)) == sorted(ids)
    assert os.path.exists("/dev/full"), "a device is never renamed or deleted"


@pytest.mark.anyio
@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full (ENOSPC on write)")
async def test_the_journal_alert_resolves_when_the_journal_is_written_again(
        tmp_path: Path) -> None:
    path = tmp_path / "recover.db"
    alerts: list[Alert] = []

    async def deliver(alert: Alert) -> None:
        alerts.append(alert)

    settings = RecordSettings(path=str(path))
    kernel = SimpleNamespace(plugin_settings=lambda plugin: settings, alert=deliver)
    recorder = SQLiteRecorder()
    await recorder.startup(kernel)
    journal = recorder.writer.journal
    real, full = journal.fd, os.open("/dev/full", os.O_WRONLY | os.O_APPEND)
    contexts = [make_context(i, "ok", 10) for i in range(6)]
    try:
        journal.fd = full  # the disk fills up
        for ctx in contexts[:3]:
            result = recorder.record(ctx)
            if result is not None:
                await result  # what the kernel does with an awaitable a hook returns
        journal.fd = real  # space again
        for ctx in contexts[3:]:
            result = recorder.record(ctx)
            if result is not None:
                await result
    finally:
        os.close(full)
    kept = journal.path.read_bytes()
    await recorder.shutdown(kernel)
    assert [(a.name, a.resolved) for a in alerts] == [("record_journal_failed", False),
                                                      ("record_journal_failed", True)]
    assert kept.count(b"\n") == 3, "the lines written after the disk had space again"
    assert len(rows(path)) == 6
