"""The request record: SQLite rows of metadata per request and per attempt, and what
``turnout stats`` shows.

A ``requests`` row holds who asked for what, which model answered, what the whole request cost,
how long it took and why the gateway decided as it did; an ``attempts`` row holds one call to one
model (its status, error kind, latency, tokens and cost). Never the messages or the answer. Rows
are built and written by a background thread in batches, both tables in one transaction, so the
loop never waits on the disk. The file is in WAL mode, so ``turnout stats`` can read it while the
gateway writes.
"""

from __future__ import annotations

import queue
import sqlite3
import threading
import time
from functools import lru_cache
from pathlib import Path
from typing import Any

import anyio
import orjson
import structlog
from pydantic import BaseModel, ConfigDict, Field

from turnout.kernel.errors import ConfigError
from turnout.kernel.hookspecs import hookimpl
from turnout.kernel.observability import redact
from turnout.kernel.types import Context

log = structlog.get_logger("turnout.record")

COLUMNS = ("request_id", "parent_id", "created_at", "client", "requested", "route", "model",
           "provider", "status", "error_kind", "error", "attempts", "input_tokens",
           "output_tokens", "cost_usd", "latency_ms", "overhead_ms", "stream", "decision")
"""The columns of the ``requests`` table, in insert order."""

ATTEMPT_COLUMNS = ("request_id", "n", "created_at", "model", "provider", "status", "error",
                   "latency_ms", "input_tokens", "output_tokens", "cost_usd")
"""The columns of the ``attempts`` table, in insert order: ``n`` is the attempt's 0-based index
within its request, ``created_at`` its request's, ``error`` the error's kind only."""

TABLES = {"requests": COLUMNS, "attempts": ATTEMPT_COLUMNS}
"""The tables the writer fills, and their columns in insert order."""

SCHEMA = """
CREATE TABLE IF NOT EXISTS requests (
    request_id    TEXT PRIMARY KEY,
    parent_id     TEXT,
    created_at    REAL NOT NULL,
    client        TEXT,
    requested     TEXT,
    route         TEXT,
    model         TEXT,
    provider      TEXT,
    status        TEXT NOT NULL,
    error_kind    TEXT,
    error         TEXT,
    attempts      INTEGER NOT NULL DEFAULT 0,
    input_tokens  INTEGER NOT NULL DEFAULT 0,
    output_tokens INTEGER NOT NULL DEFAULT 0,
    cost_usd      REAL NOT NULL DEFAULT 0,
    latency_ms    REAL,
    overhead_ms   REAL,
    stream        INTEGER NOT NULL DEFAULT 0,
    decision      TEXT
);
CREATE INDEX IF NOT EXISTS requests_created_at ON requests (created_at);
CREATE INDEX IF NOT EXISTS requests_model ON requests (model);
CREATE TABLE IF NOT EXISTS attempts (
    request_id    TEXT NOT NULL,
    n             INTEGER NOT NULL,
    created_at    REAL NOT NULL,
    model         TEXT,
    provider      TEXT,
    status        TEXT,
    error         TEXT,
    latency_ms    REAL,
    input_tokens  INTEGER,
    output_tokens INTEGER,
    cost_usd      REAL,
    PRIMARY KEY (request_id, n)
);
CREATE INDEX IF NOT EXISTS attempts_created_at ON attempts (created_at);
"""

BATCH_SIZE = 2000
"""Most rows written in one transaction."""

FLUSH_INTERVAL_S = 0.05
"""How long the writer lets rows gather after the first one arrives."""

ROWS_PER_STATEMENT = 500
"""Rows inserted by one multi-row INSERT (SQLite allows 32,766 parameters a statement)."""

Record = tuple[tuple[Any, ...], list[tuple[Any, ...]]]
"""What the writer stores for one request: its ``requests`` row and its ``attempts`` rows."""

_STOP = object()


# --- building a row ----------------------------------------------------------------------------


def context_row(ctx: Context) -> tuple[Any, ...]:
    """The ``requests`` row of a finished request, in :data:`COLUMNS` order; metadata only."""
    attempts = ctx.attempts
    last = attempts[-1] if attempts else None
    completion = ctx.completion
    model = last.model if last else (completion.model if completion else None)
    provider = last.provider if last else (completion.provider if completion else None)
    error = ctx.error
    if error is None:
        error_kind = error_text = None
    else:
        error_kind = ctx.error_kind
        error_text = redact(str(error)) or None
    decision = {**ctx.decision, "attempts": [a.as_dict() for a in attempts],
                "labels": ctx.labels}
    return (
        ctx.request_id,
        ctx.parent.request_id if ctx.parent is not None else None,
        ctx.created_at,
        ctx.client,
        ctx.request.model,
        ctx.route,
        model,
        provider,
        ctx.status,
        error_kind,
        error_text,
        ctx.attempt_count,
        ctx.input_tokens,
        ctx.output_tokens,
        ctx.spend_usd,
        ctx.latency_s * 1000,
        ctx.overhead_s * 1000,
        int(ctx.request.stream),
        # One pattern pass over the serialised decision: masks secret-looking values and
        # '"api_key": "..."'-style fields alike, at a fraction of a recursive walk's cost.
        redact(orjson.dumps(decision, default=str, option=orjson.OPT_NON_STR_KEYS).decode()),
    )


def attempt_rows(ctx: Context) -> list[tuple[Any, ...]]:
    """The ``attempts`` rows of a finished request, one per call it made, in
    :data:`ATTEMPT_COLUMNS` order; the error's kind only (``upstream_timeout``), never its text."""
    return [
        (ctx.request_id, n, ctx.created_at, a.model, a.provider, a.status, _error_kind(a.error),
         a.latency_s * 1000, a.usage.input_tokens, a.usage.output_tokens, a.cost_usd)
        for n, a in enumerate(ctx.attempts)]


def _error_kind(error: str | None) -> str | None:
    """The kind of an attempt's error: its text before the first ':' (``kind: detail``)."""
    if not error:
        return None
    # Redacted in case a plugin wrote an error without the 'kind:' prefix.
    return redact(error.partition(":")[0].strip()) or None


# --- writing -----------------------------------------------------------------------------------


def _connect(path: str) -> sqlite3.Connection:
    """Open (creating if needed) the record at ``path`` with its schema, for the writer thread."""
    if path != ":memory:":
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    try:
        conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA busy_timeout=5000")
        conn.executescript(SCHEMA)
    except sqlite3.Error as exc:
        raise ConfigError(f"record.path: cannot open the request log {path!r}: {exc}; "
                          "choose a writable path or set record.enabled = false") from None
    return conn


class RecordWriter:
    """A thread that takes rows from a queue and inserts them in batches, one commit per batch."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.conn = _connect(path)
        self.written = 0
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._closed = False
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="turnout-record-writer",
                                        daemon=True)
        self._thread.start()

    def put(self, ctx: Context) -> bool:
        """Enqueue a finished request; False (and a warning) if the writer has been closed.

        The row is built in the writer thread, off the request's path: a finished context is
        not changed any more.
        """
        with self._lock:
            if not self._closed:
                self._queue.put(ctx)
                return True
        log.warning("record_dropped", request_id=ctx.request_id,
                    reason="the request log is closed")
        return False

    def close(self, timeout: float | None = None) -> None:
        """Write every row already enqueued, then close the database. Blocks until done."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._queue.put(_STOP)
        self._thread.join(timeout)

    def flush(self, timeout: float = 10) -> bool:
        """Block until every row enqueued before this call is written; False on timeout."""
        done = threading.Event()
        with self._lock:
            if self._closed:
                return True
            self._queue.put(done)
        return done.wait(timeout)

    def _run(self) -> None:
        try:
            stop = False
            while not stop:
                batch = [self._queue.get()]
                # Let rows gather before writing: one wake-up and one commit per interval under
                # load, instead of one per request competing with the event loop for the GIL.
                time.sleep(FLUSH_INTERVAL_S)
                while len(batch) < BATCH_SIZE:
                    try:
                        batch.append(self._queue.get_nowait())
                    except queue.Empty:
                        break
                records = [record for item in batch if isinstance(item, Context)
                           and (record := self._record(item)) is not None]
                if records:
                    self._write(records)
                for marker in batch:
                    if marker is _STOP:
                        stop = True
                    elif isinstance(marker, threading.Event):
                        marker.set()
        finally:
            self.conn.close()

    def _record(self, ctx: Context) -> Record | None:
        try:
            return context_row(ctx), attempt_rows(ctx)
        except Exception as exc:  # noqa: BLE001 - one bad context must not stop the writer
            log.error("record_write_failed", request_id=ctx.request_id,
                      error=f"cannot build the row: {type(exc).__name__}: {exc}", path=self.path)
            return None

    def _write(self, records: list[Record]) -> None:
        try:
            with self.conn:
                self.conn.execute("BEGIN")
                _insert(self.conn, "requests", [row for row, _ in records])
                _insert(self.conn, "attempts", [a for _, attempts in records for a in attempts])
            self.written += len(records)
            return
        except sqlite3.Error:
            pass  # the transaction rolled back: write request by request to find the bad ones
        for row, attempts in records:
            # A request and its attempts in one transaction: both are written, or neither.
            try:
                with self.conn:
                    self.conn.execute("BEGIN")
                    _insert(self.conn, "requests", [row])
                    _insert(self.conn, "attempts", attempts)
                self.written += 1
            except sqlite3.Error as exc:
                reason = ("a request with this id is already recorded"
                          if getattr(exc, "sqlite_errorname", "") == "SQLITE_CONSTRAINT_PRIMARYKEY"
                          else str(exc))
                log.error("record_write_failed", request_id=row[0], error=reason,
                          path=self.path)


def _insert(conn: sqlite3.Connection, table: str, rows: list[tuple[Any, ...]]) -> None:
    """Insert ``rows`` into ``table`` (one of :data:`TABLES`), many rows a statement."""
    for start in range(0, len(rows), ROWS_PER_STATEMENT):
        chunk = rows[start:start + ROWS_PER_STATEMENT]
        # One statement for many rows: sqlite3 releases the GIL around every step, and a step
        # per row would make the event loop hand the GIL back and forth.
        conn.execute(_insert_many(table, len(chunk)), [value for row in chunk for value in row])


@lru_cache(maxsize=16)
def _insert_many(table: str, count: int) -> str:
    """An INSERT of ``count`` rows into ``table``."""
    columns = TABLES[table]
    row = f"({', '.join('?' for _ in columns)})"
    return f"INSERT INTO {table} ({', '.join(columns)}) VALUES {', '.join([row] * count)}"


class RecordSettings(BaseModel):
    """The request log: the ``[record]`` table."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = Field(default=True, description="Record every request.")
    path: str = Field(default="turnout.db", description="SQLite file (WAL); ':memory:' for none "
                      "on disk.")


class SQLiteRecorder:
    """The ``record`` plugin: writes one row per finished request (and one per attempt) to
    ``record.path``. A row's cost, tokens and attempts include its sub-requests'."""

    name = "record"
    Settings = RecordSettings

    def __init__(self) -> None:
        self.writer: RecordWriter | None = None

    @hookimpl
    async def startup(self, kernel: Any) -> None:
        """Open the request log and start its writer, unless ``record.enabled`` is false."""
        settings: RecordSettings = kernel.plugin_settings(self)
        if not settings.enabled or self.writer is not None:
            return
        self.writer = await anyio.to_thread.run_sync(RecordWriter, settings.path)

    @hookimpl
    def register_commands(self, register) -> None:
        """``turnout stats``: spend, latency and success per request and per attempt."""
        from . import stats

        register("stats", stats.run, help="spend, latency and success per request and per "
                 "attempt, from the request log", arguments=stats.arguments)

    @hookimpl
    def record(self, ctx: Context) -> None:
        """Queue the finished request for the writer; no I/O, not even the row, on the loop."""
        if self.writer is not None:
            self.writer.put(ctx)

    def flush(self, timeout: float = 10) -> bool:
        """Block until every row recorded so far is on disk (tests, ``turnout stats`` in-process)."""
        return self.writer.flush(timeout) if self.writer is not None else True

    @hookimpl
    async def shutdown(self, kernel: Any) -> None:
        """Write what is queued and close the log, off the event loop."""
        writer, self.writer = self.writer, None
        if writer is not None:
            await anyio.to_thread.run_sync(writer.close, abandon_on_cancel=False)
