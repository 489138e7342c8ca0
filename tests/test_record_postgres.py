"""The request record in PostgreSQL (``[record] backend = "postgres"``), against a real server.

Needs PostgreSQL at ``TURNOUT_TEST_POSTGRES_DSN`` (default
``postgresql://postgres@127.0.0.1:5432/test``, trust auth). Each test works in a schema of its
own, ``turnout_test_<uuid>``, dropped with CASCADE afterwards. Without a server these tests skip,
except under ``CI=true``, where they fail. A server that goes away is a TCP relay cut in the
middle, the way a client sees a server stop; no mocks.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from pathlib import Path
from types import SimpleNamespace
from typing import Iterator

import httpx
import psycopg
import pytest
import structlog
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from turnout.adapters.cli import main
from turnout.kernel import config as config_module
from turnout.kernel.config import parse
from turnout.kernel.errors import ConfigError, ProviderUnavailable
from turnout.kernel.kernel import Kernel
from turnout.kernel.observability import scrub
from turnout.plugins import sqlite_recorder
from turnout.plugins.record_journal import JournalInUse
from turnout.plugins.record_postgres import MIGRATIONS, PostgresSink, connect, masked, migrate
from turnout.plugins.sqlite_recorder import (
    ATTEMPT_COLUMNS,
    COLUMNS,
    FEEDBACK_COLUMNS,
    RecordSettings,
    SQLiteRecorder,
)
from turnout.plugins.stats import summarize, summarize_postgres

from .support import ROUTING, Scripted, ask, collect
from .test_serve import free_port, turnout, wait_ready
from .test_sqlite_recorder import STATUSES, make_context
from .test_sqlite_recorder import rows as sqlite_rows

ROOT = Path(__file__).resolve().parent.parent

POSTGRES_DSN = os.environ.get("TURNOUT_TEST_POSTGRES_DSN",
                              "postgresql://postgres@127.0.0.1:5432/test")

_server: dict[str, str | None] = {}


# --- the server and a schema per test ----------------------------------------------------------


def server_dsn() -> str:
    """The test server's dsn once it has answered; skips the test without one (fails under
    CI=true, where a missing server is a broken setup, not a reason to test less)."""
    if "error" not in _server:
        try:
            with psycopg.connect(POSTGRES_DSN, connect_timeout=3) as conn:
                conn.execute("SELECT 1")
            _server["error"] = None
        except psycopg.Error as exc:
            _server["error"] = " ".join(str(exc).split())
    if _server["error"] is not None:
        message = (f"no PostgreSQL at {masked(POSTGRES_DSN)} ({_server['error']}); start one "
                   "(e.g. `systemctl start postgresql`, or `docker run -d -p 5432:5432 -e "
                   "POSTGRES_HOST_AUTH_METHOD=trust postgres` and `createdb -h 127.0.0.1 -U "
                   "postgres test`), or point TURNOUT_TEST_POSTGRES_DSN at one")
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return POSTGRES_DSN


@contextlib.contextmanager
def fresh_schema(dsn: str) -> Iterator[str]:
    """A schema name of its own for one test; the schema is dropped (CASCADE) afterwards."""
    name = f"turnout_test_{uuid.uuid4().hex}"
    try:
        yield name
    finally:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(name)))


@pytest.fixture(scope="session")
def postgres_dsn() -> str:
    return server_dsn()


@pytest.fixture
def schema(postgres_dsn: str) -> Iterator[str]:
    with fresh_schema(postgres_dsn) as name:
        yield name


def pg_rows(dsn: str, schema: str, table: str = "requests") -> list[dict]:
    """Every row of ``table`` in ``schema``, as the writer left them, oldest first."""
    order = "created_at, n" if table == "attempts" else "created_at, request_id"
    with psycopg.connect(dsn, row_factory=psycopg.rows.dict_row) as conn:
        return conn.execute(sql.SQL("SELECT * FROM {}.{} ORDER BY " + order).format(
            sql.Identifier(schema), sql.Identifier(table))).fetchall()


def pg_settings(dsn: str, schema: str, tmp_path: Path, **record) -> RecordSettings:
    return RecordSettings(backend="postgres", dsn=dsn, schema=schema,
                          journal=str(tmp_path / "record.journal"), **record)


def stand_in(settings: RecordSettings, **kw) -> SimpleNamespace:
    """The one thing the recorder reads from the kernel: its settings."""
    return SimpleNamespace(plugin_settings=lambda plugin: settings, **kw)


def journal_files(tmp_path: Path) -> list[Path]:
    return sorted(p for p in tmp_path.iterdir() if p.name.startswith("record.journal"))


# --- the schema --------------------------------------------------------------------------------


def test_migrations_apply_once_when_two_replicas_start_together(postgres_dsn, schema) -> None:
    start = threading.Barrier(2)
    applied: list[list[int]] = []

    def replica() -> None:
        conn = connect(postgres_dsn, schema)
        try:
            start.wait(5)
            applied.append(migrate(conn, schema))
        finally:
            conn.close()

    threads = [threading.Thread(target=replica) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    every = list(range(1, len(MIGRATIONS) + 1))
    assert sorted(applied) == [[], every], "one replica applies them, the other finds them done"

    again = PostgresSink(postgres_dsn, schema)
    again.close()
    assert again.migrated == [], "idempotent: a later start applies nothing"
    with psycopg.connect(postgres_dsn) as conn:
        versions = conn.execute(sql.SQL("SELECT version FROM {}.schema_migrations ORDER BY 1")
                                .format(sql.Identifier(schema))).fetchall()
        assert [v for (v,) in versions] == every
        columns = {table: conn.execute(
            "SELECT column_name, data_type FROM information_schema.columns "
            "WHERE table_schema = %s AND table_name = %s ORDER BY ordinal_position",
            [schema, table]).fetchall() for table in ("requests", "attempts", "feedback")}
        indexes = {name for (name,) in conn.execute(
            "SELECT indexname FROM pg_indexes WHERE schemaname = %s", [schema])}
        views = {name for (name,) in conn.execute(
            "SELECT table_name FROM information_schema.views WHERE table_schema = %s", [schema])}
    assert tuple(c for c, _ in columns["requests"]) == COLUMNS
    assert tuple(c for c, _ in columns["attempts"]) == ATTEMPT_COLUMNS
    types = dict(columns["requests"])
    assert (types["created_at"], types["cost_usd"], types["input_tokens"], types["stream"],
            types["decision"]) == ("double precision", "double precision", "bigint", "boolean",
                                   "jsonb")
    assert columns["feedback"] == [("request_id", "text"), ("created_at", "double precision"),
                                   ("score", "double precision"), ("comment", "text"),
                                   ("source", "text"), ("feedback_id", "text"),
                                   ("user_id", "text")]
    assert tuple(c for c, _ in columns["feedback"]) == FEEDBACK_COLUMNS
    assert {"requests_created_at", "requests_model", "attempts_created_at",
            "feedback_request_id", "feedback_feedback_id", "feedback_created_at"} <= indexes
    assert views == {"spend"}


# --- rows --------------------------------------------------------------------------------------


def recording_kernel(record: dict, script: dict) -> Kernel:
    """A real kernel over two scripted models (small, then big, on the route ``chain``), with
    the record plugin configured by ``record``."""
    config = parse({
        "providers": {"p": {"kind": "openai-compatible", "base_url": "http://127.0.0.1:9/v1"}},
        "models": {
            "small": {"provider": "p", "context_window": 2000, "input_price": 1,
                      "output_price": 2},
            "big": {"provider": "p", "context_window": 100_000, "input_price": 10,
                    "output_price": 20},
        },
        "routes": {"chain": {"models": ["small", "big"]}},
        "routing": {"default": "chain"},
        "record": record,
    }, source="test")
    kernel = Kernel(config, builtins={**ROUTING,
                                      "record": "turnout.plugins.sqlite_recorder:SQLiteRecorder"})
    kernel.load_plugins()
    kernel.plugins.register(Scripted(script), name="scripted")
    return kernel


@pytest.mark.anyio
async def test_requests_through_a_real_kernel_land_in_postgres_with_their_attempts(
        postgres_dsn, schema, tmp_path) -> None:
    down = ProviderUnavailable("small is overloaded")
    kernel = recording_kernel(
        {"backend": "postgres", "dsn": postgres_dsn, "schema": schema,
         "journal": str(tmp_path / "record.journal")},
        {"small": [down, down, down, "small answer", ["Hel", "lo"]],
         "big": ["big answer", "big again", ["Big", " stream"]]})
    async with kernel:
        failed_over = await kernel.ask(ask("first"))
        second = await kernel.ask(ask("second"))
        stream = await kernel.ask_stream(ask("third", stream=True))
        await collect(stream)
    ids = [failed_over.request_id, second.request_id, stream.answer.request_id]

    got = {r["request_id"]: r for r in pg_rows(postgres_dsn, schema)}
    assert sorted(got) == sorted(ids)
    first = got[ids[0]]
    assert (first["status"], first["route"], first["model"], first["stream"]) == (
        "ok", "chain", "big", False)
    assert first["attempts"] >= 2, "small failed, big answered"
    assert got[ids[2]]["stream"] is True
    attempts = pg_rows(postgres_dsn, schema, "attempts")
    assert len(attempts) == sum(r["attempts"] for r in got.values())
    for rid, row in got.items():
        mine = [a for a in attempts if a["request_id"] == rid]
        assert [a["n"] for a in mine] == list(range(row["attempts"]))
        # The decision is jsonb: read back as a structure, its attempts the rows' attempts.
        assert [(a["model"], a["status"]) for a in mine] == [
            (a["model"], a["status"]) for a in row["decision"]["attempts"]]
    assert (attempts[0]["model"], attempts[0]["status"], attempts[0]["error"]) == (
        "small", "error", "upstream_unavailable")
    assert journal_files(tmp_path) == [], "a clean stop leaves no journal"


def as_sqlite(row: dict) -> dict:
    """A PostgreSQL row with SQLite's types: the decision as JSON text, stream as 0 or 1."""
    out = dict(row)
    if "decision" in out:
        out["decision"] = json.loads(out["decision"]) if isinstance(out["decision"], str) \
            else out["decision"]
        out["stream"] = int(out["stream"])
    return out


def row_key(row: dict) -> tuple:
    """A row's primary key: its request id, and for an attempt its index."""
    return row["request_id"], row.get("n", 0)


@pytest.mark.anyio
async def test_postgres_holds_what_sqlite_holds_and_stats_agree(postgres_dsn, schema,
                                                               tmp_path) -> None:
    contexts = [make_context(i, STATUSES[i % 3], latency_ms=10.0 * (i + 1)) for i in range(90)]
    contexts[5].parent = contexts[4]
    db = tmp_path / "same.db"
    for settings in (RecordSettings(path=str(db)), pg_settings(postgres_dsn, schema, tmp_path)):
        recorder = SQLiteRecorder()
        await recorder.startup(stand_in(settings))
        for ctx in contexts:
            recorder.record(ctx)
        await recorder.shutdown(stand_in(settings))

    for table in ("requests", "attempts"):
        local = [as_sqlite(r) for r in sqlite_rows(db, table)]
        remote = [as_sqlite(r) for r in pg_rows(postgres_dsn, schema, table)]
        assert sorted(remote, key=row_key) == sorted(local, key=row_key), table
    assert len(pg_rows(postgres_dsn, schema, "attempts")) == sum(len(c.attempts)
                                                                 for c in contexts)

    local, remote = summarize(str(db)), summarize_postgres(postgres_dsn, schema)
    assert remote.pop("path") == f"{postgres_dsn} (schema {schema})"
    local.pop("path")
    assert remote == local
    assert remote["requests"] == 89, "the sub-request is not a request again"
    with psycopg.connect(postgres_dsn) as conn:
        spent, requests = conn.execute(sql.SQL("SELECT sum(cost_usd), sum(requests) FROM {}.spend")
                                       .format(sql.Identifier(schema))).fetchone()
    assert (spent, requests) == (pytest.approx(remote["spend_usd"]), remote["requests"])


@pytest.mark.anyio
async def test_a_bad_row_is_skipped_alone_a_duplicate_is_logged_and_nul_is_kept_out(
        postgres_dsn, schema, tmp_path) -> None:
    settings = pg_settings(postgres_dsn, schema, tmp_path)
    recorder = SQLiteRecorder()
    await recorder.startup(stand_in(settings))
    good, twice, other, odd = (make_context(i, "error", 10) for i in range(4))
    broken = make_context(9, "error", 10)
    broken.status = None  # requests.status is NOT NULL
    odd.client = "team\x00a"  # PostgreSQL text cannot hold NUL; SQLite and the journal can
    odd.decision["note"] = "nul \x00 here"
    with structlog.testing.capture_logs() as logs:
        for ctx in (good, twice, broken, twice, other, odd):  # one batch: then one by one
            recorder.record(ctx)
        await recorder.shutdown(stand_in(settings))

    written = {good.request_id, twice.request_id, other.request_id, odd.request_id}
    got = {r["request_id"]: r for r in pg_rows(postgres_dsn, schema)}
    assert got.keys() == written
    attempts = pg_rows(postgres_dsn, schema, "attempts")
    assert len(attempts) == 8 and {a["request_id"] for a in attempts} == written
    failures = {e["request_id"]: e["error"] for e in logs if e["event"] == "record_write_failed"}
    assert failures.keys() == {broken.request_id, twice.request_id}
    assert failures[twice.request_id] == "a request with this id is already recorded"
    assert failures[broken.request_id] == ('null value in column "status" of relation '
                                           '"requests" violates not-null constraint')
    assert got[odd.request_id]["client"] == "team\ufffda"
    assert got[odd.request_id]["decision"]["note"] == "nul \ufffd here"


# --- a crash, and a server that goes away ------------------------------------------------------

CRASH = """
import os, signal, sys
from types import SimpleNamespace
import anyio
from tests.test_sqlite_recorder import STATUSES, make_context
from turnout.plugins.sqlite_recorder import RecordSettings, SQLiteRecorder

dsn, schema, journal, committed, total = sys.argv[1:4] + [int(a) for a in sys.argv[4:6]]

async def main():
    settings = RecordSettings(backend="postgres", dsn=dsn, schema=schema, journal=journal)
    recorder = SQLiteRecorder()
    await recorder.startup(SimpleNamespace(plugin_settings=lambda plugin: settings))
    for i in range(total):
        ctx = make_context(i, STATUSES[i % 3], 10.0)
        recorder.record(ctx)
        print("recorded", ctx.request_id, flush=True)
        if i + 1 == committed:
            assert recorder.flush()
    os.kill(os.getpid(), signal.SIGKILL)  # before the writer's next commit

anyio.run(main)
"""


@pytest.mark.anyio
async def test_a_crashed_writer_is_replayed_into_postgres_exactly_once(postgres_dsn, schema,
                                                                      tmp_path) -> None:
    journal = tmp_path / "record.journal"
    child = subprocess.run([sys.executable, "-c", textwrap.dedent(CRASH), postgres_dsn, schema,
                            str(journal), "10", "40"], cwd=ROOT, capture_output=True, text=True,
                           timeout=60)
    assert child.returncode == -signal.SIGKILL, child.stderr
    ids = [line.split()[1] for line in child.stdout.splitlines() if line.startswith("recorded ")]
    assert len(ids) == 40
    assert len(pg_rows(postgres_dsn, schema)) == 10, "the rest died with the process"
    assert b"".join(p.read_bytes() for p in journal_files(tmp_path)).count(b"\n") == 40

    settings = pg_settings(postgres_dsn, schema, tmp_path)
    for start in range(2):
        with structlog.testing.capture_logs() as logs:
            recorder = SQLiteRecorder()
            await recorder.startup(stand_in(settings))
            await recorder.shutdown(stand_in(settings))
        got = pg_rows(postgres_dsn, schema)
        assert sorted(r["request_id"] for r in got) == sorted(ids), f"start {start}"
        assert len(pg_rows(postgres_dsn, schema, "attempts")) == sum(r["attempts"] for r in got)
        assert journal_files(tmp_path) == []
        replayed = [(e["requests"], e["inserted"], e["already_recorded"])
                    for e in logs if e["event"] == "record_replayed"]
        assert replayed == ([(40, 30, 10)] if start == 0 else [])
        assert not [e for e in logs if e["event"] in ("record_write_failed", "record_dropped")]


class Relay:
    """A TCP relay to the test server, on a port of its own, that can be cut and restored: cut,
    its connections close and nothing listens, as a client sees a server stop."""

    def __init__(self, dsn: str) -> None:
        params = conninfo_to_dict(dsn)
        self.target = (params.get("host") or "127.0.0.1", int(params.get("port") or 5432))
        self.port = free_port()
        self.dsn = make_conninfo(dsn, host="127.0.0.1", port=str(self.port))
        self._sockets: list[socket.socket] = []
        self._listener: socket.socket | None = None
        self._stop = threading.Event()

    def start(self) -> None:
        self._stop.clear()
        self._listener = socket.create_server(("127.0.0.1", self.port))
        self._listener.settimeout(0.05)
        threading.Thread(target=self._accept, args=(self._listener,), daemon=True).start()

    def cut(self) -> None:
        self._stop.set()
        for sock in [self._listener, *self._sockets]:
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()
        self._listener, self._sockets = None, []

    def _accept(self, listener: socket.socket) -> None:
        while not self._stop.is_set():
            try:
                client, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            client.settimeout(None)
            upstream = socket.create_connection(self.target)
            self._sockets += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)


def count(dsn: str, schema: str) -> int:
    with psycopg.connect(dsn) as conn:
        return conn.execute(sql.SQL("SELECT count(*) FROM {}.requests").format(
            sql.Identifier(schema))).fetchone()[0]


@pytest.mark.anyio
async def test_postgres_going_away_while_serving_delays_rows_and_loses_none(
        postgres_dsn, schema, tmp_path) -> None:
    relay = Relay(postgres_dsn)
    relay.start()
    settings = pg_settings(relay.dsn, schema, tmp_path, retry_max_s=0.2)
    recorder = SQLiteRecorder()
    contexts = [make_context(i, STATUSES[i % 3], 10) for i in range(50)]
    try:
        await recorder.startup(stand_in(settings))
        with structlog.testing.capture_logs() as logs:
            for ctx in contexts[:20]:
                recorder.record(ctx)
            assert recorder.flush()
            relay.cut()
            for ctx in contexts[20:]:
                recorder.record(ctx)
            assert not recorder.flush(timeout=1.0), "nothing can be written while it is gone"
            assert count(postgres_dsn, schema) == 20
            assert b"".join(p.read_bytes() for p in journal_files(tmp_path)).count(b"\n") >= 30
            relay.start()
            assert recorder.flush(timeout=10)
        await recorder.shutdown(stand_in(settings))
    finally:
        relay.cut()
    assert sorted(r["request_id"] for r in pg_rows(postgres_dsn, schema)) == sorted(
        c.request_id for c in contexts)
    assert len(pg_rows(postgres_dsn, schema, "attempts")) == sum(len(c.attempts)
                                                                 for c in contexts)
    events = [e["event"] for e in logs]
    assert events.count("record_write_delayed") == 1 and events.count("record_write_resumed") == 1
    assert "record_write_failed" not in events and "record_dropped" not in events
    (delayed,) = [e for e in logs if e["event"] == "record_write_delayed"]
    assert delayed["path"] == f"{masked(relay.dsn)} (schema {schema})"


@pytest.mark.anyio
async def test_a_shutdown_while_postgres_is_gone_leaves_rows_for_the_next_start(
        postgres_dsn, schema, tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(sqlite_recorder, "CLOSE_RETRY_S", 0.5)
    relay = Relay(postgres_dsn)
    relay.start()
    settings = pg_settings(relay.dsn, schema, tmp_path, retry_max_s=0.1)
    contexts = [make_context(i, "ok", 10) for i in range(5)]
    try:
        recorder = SQLiteRecorder()
        await recorder.startup(stand_in(settings))
        relay.cut()
        with structlog.testing.capture_logs() as logs:
            for ctx in contexts:
                recorder.record(ctx)
            started = time.monotonic()
            await recorder.shutdown(stand_in(settings))
        assert time.monotonic() - started < 5, "shutdown gives up after CLOSE_RETRY_S"
        (deferred,) = [e for e in logs if e["event"] == "record_write_deferred"]
        assert deferred["rows"] == 5 and journal_files(tmp_path)
        assert count(postgres_dsn, schema) == 0

        relay.start()
        again = SQLiteRecorder()
        await again.startup(stand_in(settings))
        await again.shutdown(stand_in(settings))
    finally:
        relay.cut()
    assert sorted(r["request_id"] for r in pg_rows(postgres_dsn, schema)) == sorted(
        c.request_id for c in contexts)
    assert journal_files(tmp_path) == []


# --- start-up and configuration ----------------------------------------------------------------


@pytest.mark.anyio
async def test_an_unreachable_postgres_at_start_says_which_and_what_to_do(tmp_path) -> None:
    password = f"pw-{uuid.uuid4().hex}"
    port = free_port()  # nothing listens there
    settings = RecordSettings(backend="postgres",
                              dsn=f"postgresql://turnout:{password}@127.0.0.1:{port}/turnout",
                              journal=str(tmp_path / "record.journal"))
    with pytest.raises(ConfigError) as caught:
        await SQLiteRecorder().startup(stand_in(settings))
    message = str(caught.value)
    assert f"cannot reach PostgreSQL at postgresql://turnout:***@127.0.0.1:{port}/turnout" \
        in message
    assert "Start the server" in message and "fix record.dsn" in message
    assert password not in message
    assert list(tmp_path.iterdir()) == [], "no journal taken, no lock left"

    kernel = recording_kernel({"backend": "postgres", "dsn": settings.dsn,
                               "journal": settings.journal}, {})
    with pytest.raises(ConfigError, match="cannot reach PostgreSQL"):
        await kernel.start()


CONTRACT = """
[record]
backend = "postgres"                       # "sqlite" (default) or "postgres"
dsn = "postgresql://postgres@127.0.0.1:5432/turnout"
"""


def problems(record: dict) -> str:
    """What loading the built-in plugins says of a ``[record]`` table; '' when it is valid."""
    try:
        Kernel(parse({"record": record}, source="gateway.toml")).load_plugins()
    except ConfigError as exc:
        return str(exc)
    return ""


def test_config_names_the_backend_and_the_dsn(tmp_path) -> None:
    path = tmp_path / "gateway.toml"
    path.write_text(CONTRACT)
    kernel = Kernel(config_module.load(path))
    kernel.load_plugins()
    settings = kernel.plugin_settings("record")
    assert (settings.backend, settings.dsn, settings.schema) == (
        "postgres", "postgresql://postgres@127.0.0.1:5432/turnout", "public")
    assert RecordSettings().backend == "sqlite", "sqlite stays the default"

    assert "record.backend" in problems({"backend": "mysql"})
    missing = problems({"backend": "postgres"})
    assert "record.dsn" in missing and "required with backend" in missing
    assert "remove dsn" in problems({"dsn": "postgresql://127.0.0.1/turnout"})
    assert "must start with postgresql://" in problems({"backend": "postgres",
                                                        "dsn": "mysql://127.0.0.1/turnout"})
    assert "not a PostgreSQL connection string" in problems({"backend": "postgres",
                                                             "dsn": "nonsense"})
    assert "record.schema" in problems({"backend": "postgres", "dsn": "dbname=turnout",
                                        "schema": "drop table; --"})
    assert problems({"backend": "postgres", "dsn": "host=127.0.0.1 dbname=turnout",
                     "schema": "tenant_7"}) == ""


def test_the_dsn_password_is_a_secret_from_validation_on() -> None:
    password = f"pw-{uuid.uuid4().hex}"
    dsn = f"postgresql://turnout:{password}@db.internal:5432/turnout?sslmode=require"
    settings = RecordSettings(backend="postgres", dsn=dsn)
    assert password not in scrub(f"connecting with {settings.dsn}")
    assert password not in repr(settings)
    assert masked(dsn) == "postgresql://turnout:***@db.internal:5432/turnout?sslmode=require"
    other = f"pw-{uuid.uuid4().hex}"
    keywords = f"host=db.internal password={other} dbname=turnout"
    RecordSettings(backend="postgres", dsn=keywords)
    assert masked(keywords) == "host=db.internal password=[REDACTED] dbname=turnout"
    assert masked("host=h password='a b c' dbname=d") == "host=h password=[REDACTED] dbname=d"
    assert other not in scrub(f"failed: {keywords}")


def test_default_journals_differ_per_gateway(tmp_path) -> None:
    def journal(port: int | None, **record) -> str | None:
        base = {"backend": "postgres", "dsn": "postgresql://postgres@127.0.0.1:5432/turnout",
                "path": str(tmp_path / "turnout.db")}
        return RecordSettings(**{**base, **record}).journal_path(port)

    assert journal(4000) != journal(4001), "two gateways on one machine, two ports"
    assert journal(4000) == journal(4000), "the same gateway finds its journal after a restart"
    assert journal(4000) != journal(4000, schema="other")
    assert journal(4000) != journal(4000, dsn="postgresql://postgres@10.0.0.9:5432/turnout")
    assert Path(journal(4000)).parent == tmp_path and journal(4000).endswith("-4000.journal")
    assert journal(4000, journal="/var/lib/turnout/a.journal") == "/var/lib/turnout/a.journal"
    assert RecordSettings(path="x/t.db").journal_path(4000) == "x/t.db.journal", "sqlite as ever"
    assert RecordSettings(path=":memory:").journal_path(4000) is None


@pytest.mark.anyio
async def test_one_journal_cannot_serve_two_recorders(postgres_dsn, schema, tmp_path) -> None:
    settings = pg_settings(postgres_dsn, schema, tmp_path)
    first, second = SQLiteRecorder(), SQLiteRecorder()
    await first.startup(stand_in(settings))
    try:
        with pytest.raises(JournalInUse) as caught:
            await second.startup(stand_in(settings))
        assert "record.journal" in str(caught.value) and "its own" in str(caught.value)
        assert second.writer is None
    finally:
        await first.shutdown(stand_in(settings))
    await second.startup(stand_in(settings))  # free again once the first let go
    await second.shutdown(stand_in(settings))
    assert list(tmp_path.iterdir()) == [], "neither journal nor lock file left"


# --- turnout stats -----------------------------------------------------------------------------


@pytest.mark.anyio
async def test_stats_reads_the_postgres_record(postgres_dsn, schema, tmp_path, capsys) -> None:
    settings = pg_settings(postgres_dsn, schema, tmp_path)
    recorder = SQLiteRecorder()
    await recorder.startup(stand_in(settings))
    for i in range(6):
        recorder.record(make_context(i, STATUSES[i % 3], 10.0))
    await recorder.shutdown(stand_in(settings))
    config = tmp_path / "gateway.toml"
    config.write_text(f'[record]\nbackend = "postgres"\ndsn = "{postgres_dsn}"\n'
                      f'schema = "{schema}"\n')

    capsys.readouterr()  # the recorder's own log lines
    assert main(["stats", "--config", str(config), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert (summary["requests"], summary["ok"], summary["errors"], summary["cancelled"]) == (
        6, 2, 2, 2)
    assert main(["stats", "--dsn", postgres_dsn, "--schema", schema]) == 0
    assert "6 requests: 2 ok, 2 errors, 2 cancelled" in capsys.readouterr().out

    assert main(["stats", "--dsn", postgres_dsn, "--schema", f"{schema}_none"]) == 2
    err = capsys.readouterr().err
    assert "no requests have been recorded in schema" in err and "--dsn" in err
    assert main(["stats", "--dsn", "nonsense"]) == 2
    assert "--dsn: not a PostgreSQL connection string" in capsys.readouterr().err
    config.write_text('[record]\nbackend = "postgres"\n')
    assert main(["stats", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert "record.dsn" in err and "required with backend" in err


# --- two gateways on one machine ---------------------------------------------------------------

GATEWAY = """
[providers.fleet]
kind = "simulated"

[models.sim-a]
provider = "fleet"
context_window = 32000

[routes.main]
models = ["sim-a"]

[routing]
default = "main"

[simulation.models.sim-a]
latency_ms = 5
jitter = 0
error_rate = 0
rate_limit_rate = 0

[record]
backend = "postgres"
dsn = "{dsn}"
schema = "{schema}"

[logging]
level = "warning"
"""


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_two_gateways_on_one_machine_share_the_database_not_the_journal(
        postgres_dsn, schema, tmp_path) -> None:
    """Two replicas from one config file, in one folder, on two ports: each takes a default
    journal of its own, and both record into the one schema."""
    config = tmp_path / "gateway.toml"
    config.write_text(GATEWAY.format(dsn=postgres_dsn, schema=schema))
    servers, ids = [], []
    try:
        for _ in range(2):
            port = free_port()
            server = turnout("serve", "--port", str(port), "--config", str(config), cwd=tmp_path)
            servers.append((server, f"http://127.0.0.1:{port}"))
        for server, base in servers:
            wait_ready(server, base)
        journals = sorted(p.name for p in tmp_path.iterdir() if p.name.endswith(".journal"))
        assert len(journals) == 2, f"one default journal per gateway: {journals}"
        for _, base in servers:
            for n in range(3):
                resp = httpx.post(base + "/v1/chat/completions", timeout=10, json={
                    "model": "auto", "messages": [{"role": "user", "content": f"hello {n}"}]})
                assert resp.status_code == 200, resp.text
                ids.append(resp.headers["x-request-id"])
    finally:
        for server, _ in servers:
            if server.poll() is None:
                server.send_signal(signal.SIGINT)
            _, stderr = server.communicate(timeout=30)
            assert "Traceback" not in stderr, stderr
    assert sorted(r["request_id"] for r in pg_rows(postgres_dsn, schema)) == sorted(ids)
    assert [p.name for p in tmp_path.iterdir() if "journal" in p.name] == []

