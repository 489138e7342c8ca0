"""The request record: rows of metadata per request and per attempt, in SQLite (the default) or
PostgreSQL (``record.backend``), and what ``turnout stats`` shows.

A ``requests`` row holds who asked for what, which model answered, what the whole request cost,
how long it took and why the gateway decided as it did; an ``attempts`` row holds one call to one
model (its status, error kind, latency, tokens and cost). Never the messages or the answer. A
``feedback`` row holds one score of an answer (``Kernel.feedback``: who judged, from where, the
score and a scrubbed comment), keyed by its own id and naming the request by its id alone, with
no foreign key: feedback may arrive before its request's row is written, or be about a
sub-request.

The ``record`` hook builds a request's rows on the event loop (redacting only text the cheap
prefilter flags) and appends them as one line to the journal (:mod:`.record_journal`) before the
answer's last byte leaves, so a killed gateway loses no record: the next start replays what the
database is missing; the ``feedback`` hook does the same with a feedback row, a line of its own.
A background thread, the one :class:`RecordWriter` for every database, inserts the rows in
batches, every table in one transaction, so the loop never waits on the database. What differs
between databases is a small :class:`Sink`: :class:`SQLiteSink` here, ``PostgresSink`` in
:mod:`.record_postgres` (connect and create the tables, insert a batch, tell a refusal for now
from a bad row). A batch the database refuses for the moment (locked by another
process, disk full, server unreachable) is retried with backoff, its rows kept; a row that can
never be written (a constraint other than a duplicate) is logged and skipped, alone. A journal
that cannot be written (full disk) raises the ``record_journal_failed`` alert; the rows still go
to the database. The SQLite file is in WAL mode, so ``turnout stats`` can read it while the
gateway writes (rows still only in the journal are not shown yet).
"""

from __future__ import annotations

import hashlib
import queue
import sqlite3
import threading
import time
import warnings
from functools import lru_cache, partial
from pathlib import Path
from typing import Any, Literal, Protocol

import anyio
import orjson
import structlog
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from turnout.kernel.errors import ConfigError
from turnout.kernel.hookspecs import hookimpl
from turnout.kernel.observability import redact
from turnout.kernel.types import Alert, Context, Feedback

from . import record_journal as journal_module
from .record_journal import FeedbackRecord, Journal, encode, read_segment

log = structlog.get_logger("turnout.record")

COLUMNS = ("request_id", "parent_id", "created_at", "client", "requested", "route", "model",
           "provider", "status", "error_kind", "error", "attempts", "input_tokens",
           "output_tokens", "cost_usd", "latency_ms", "overhead_ms", "stream", "decision")
"""The columns of the ``requests`` table, in insert order."""

ATTEMPT_COLUMNS = ("request_id", "n", "created_at", "model", "provider", "status", "error",
                   "latency_ms", "input_tokens", "output_tokens", "cost_usd")
"""The columns of the ``attempts`` table, in insert order: ``n`` is the attempt's 0-based index
within its request, ``created_at`` its request's, ``error`` the error's kind only."""

FEEDBACK_COLUMNS = ("request_id", "created_at", "score", "comment", "source", "feedback_id",
                    "user_id")
"""The columns of the ``feedback`` table, in insert order (PostgreSQL's order too: its first five
came with the schema, ``feedback_id`` and ``user_id`` with migration 2): ``request_id`` is the
request judged, ``created_at`` when the score was given, ``feedback_id`` the key."""

CLIENT_REQUEST_ID_HEADER = "x-request-id"
"""A request id the client (or a load balancer in front) sent: kept in the decision record as
``client_request_id`` (at most :data:`CLIENT_REQUEST_ID_MAX_CHARS` characters), so a record can be
found by the client's id and a request retried on another replica can be told from a new one. The
gateway's own id (the record's key, the answer's ``x-request-id``) is never the client's."""

CLIENT_REQUEST_ID_MAX_CHARS = 128

TABLES = {"requests": COLUMNS, "attempts": ATTEMPT_COLUMNS, "feedback": FEEDBACK_COLUMNS}
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
CREATE TABLE IF NOT EXISTS feedback (
    request_id    TEXT NOT NULL,
    created_at    REAL NOT NULL,
    score         REAL NOT NULL,
    comment       TEXT,
    source        TEXT,
    feedback_id   TEXT NOT NULL PRIMARY KEY,
    user_id       TEXT
);
CREATE INDEX IF NOT EXISTS feedback_request_id ON feedback (request_id);
CREATE INDEX IF NOT EXISTS feedback_created_at ON feedback (created_at);
"""

BATCH_SIZE = 2000
"""Most rows written in one transaction."""

FLUSH_INTERVAL_S = 0.05
"""How long the writer lets rows gather after the first one arrives."""

ROWS_PER_STATEMENT = 500
"""Rows inserted by one multi-row INSERT (SQLite allows 32,766 parameters a statement)."""

BUSY_TIMEOUT_MS = 5000
"""How long one transaction waits for another connection's lock before its batch is retried."""

RETRY_FIRST_S = 0.05
"""The first pause before a refused batch is retried; it doubles up to ``record.retry_max_s``."""

CLOSE_RETRY_S = 5.0
"""At shutdown, how long the writer keeps retrying a database that refuses rows; then it leaves
them in the journal, for the next start to write."""

_TRANSIENT = frozenset({3, 5, 6, 7, 8, 9, 10, 13, 14, 15})
"""SQLite's primary result codes that say the database cannot take rows for now, not that a row
is wrong: PERM, BUSY, LOCKED, NOMEM, READONLY, INTERRUPT, IOERR, FULL, CANTOPEN, PROTOCOL."""

Record = tuple[tuple[Any, ...], list[tuple[Any, ...]]]
"""What the writer stores for one request: its ``requests`` row and its ``attempts`` rows. (For
one score of an answer it stores a :class:`~.record_journal.FeedbackRecord`: its row.)"""

_STOP = object()


class _Unjournaled(tuple):
    """A record whose journal line could not be written: lost if the process dies before the
    database has it."""

    __slots__ = ()


class _UnjournaledFeedback(FeedbackRecord, _Unjournaled):
    """A feedback record whose journal line could not be written."""

    __slots__ = ()


class _Closed:
    """Queue marker: every record of this closed journal segment is before it in the queue."""

    __slots__ = ("segment",)

    def __init__(self, segment: Path) -> None:
        self.segment = segment


class _GiveUp(Exception):
    """The writer stops retrying: it is shutting down and the database still refuses rows."""


# --- building a row ----------------------------------------------------------------------------


def context_row(ctx: Context) -> tuple[Any, ...]:
    """The ``requests`` row of a finished request, in :data:`COLUMNS` order; metadata only."""
    attempts = ctx.attempts
    last = ctx.answering
    completion = ctx.completion
    model = last.model if last else (completion.model if completion else None)
    provider = last.provider if last else (completion.provider if completion else None)
    error = ctx.error
    if error is None:
        error_kind = error_text = None
    else:
        error_kind = ctx.error_kind
        error_text = redact(str(error)) or None
    if ctx.children:  # the totals include the sub-requests'
        spend, input_tokens, output_tokens = ctx.spend_usd, ctx.input_tokens, ctx.output_tokens
        count = ctx.attempt_count
    else:  # the same sums, in one pass: this runs on the event loop
        spend, input_tokens, output_tokens = 0, 0, 0
        for a in attempts:
            spend += a.cost_usd
            input_tokens += a.usage.input_tokens
            output_tokens += a.usage.output_tokens
        count = len(attempts)
    decision = {**ctx.decision, "attempts": [a.as_dict() for a in attempts],
                "labels": ctx.labels}
    client_request_id = ctx.headers.get(CLIENT_REQUEST_ID_HEADER) if ctx.parent is None else None
    if client_request_id:
        decision["client_request_id"] = client_request_id[:CLIENT_REQUEST_ID_MAX_CHARS]
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
        count,
        input_tokens,
        output_tokens,
        spend,
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


def feedback_row(feedback: Feedback) -> FeedbackRecord:
    """The ``feedback`` row of one score, in :data:`FEEDBACK_COLUMNS` order. The comment, source
    and user are redacted here too: a plugin may fire the hook with a Feedback of its own."""
    return FeedbackRecord((feedback.request_id, feedback.created_at, float(feedback.score),
                           redact(feedback.comment), redact(feedback.source), feedback.id,
                           redact(feedback.user)))


def split(records: list[Any]) -> tuple[list[Record], list[FeedbackRecord]]:
    """A batch's requests (each a row with its attempts' rows) and its feedback rows."""
    requests: list[Record] = []
    feedback: list[FeedbackRecord] = []
    for record in records:
        (feedback if isinstance(record, FeedbackRecord) else requests).append(record)
    return requests, feedback


def _about(record: Any) -> dict[str, Any]:
    """What a log line names a record by: its request's id, and a feedback row's own."""
    if isinstance(record, FeedbackRecord):
        return {"request_id": record[0], "feedback_id": record[5]}
    return {"request_id": record[0][0]}


def _error_kind(error: str | None) -> str | None:
    """The kind of an attempt's error: its text before the first ':' (``kind: detail``)."""
    if not error:
        return None
    # Redacted in case a plugin wrote an error without the 'kind:' prefix.
    return redact(error.partition(":")[0].strip()) or None


# --- the databases -----------------------------------------------------------------------------


class Sink(Protocol):
    """One database the record writer fills: all the writer needs to know about it.

    The writer (batches, backoff, journal segments, replay, shutdown) is one for every database. A
    sink connects and creates its tables when it is made, raising ConfigError that says what to
    fix when it cannot; then, from the writer thread only, inserts batches and judges failures.
    """

    where: str
    """What logs name: the file, or the server (its password masked) and schema."""

    errors: tuple[type[Exception], ...]
    """What :meth:`insert` raises for a batch it did not commit."""

    def insert(self, records: list[Any], replay: bool) -> int:
        """Insert the ``requests`` and ``attempts`` rows of ``records`` (and the ``feedback``
        rows, the :class:`~.record_journal.FeedbackRecord` among them) in one transaction; with
        ``replay``, rows whose primary key is there already are skipped (ON CONFLICT DO NOTHING).
        Returns the ``requests`` and ``feedback`` rows inserted."""
        ...

    def transient(self, exc: Exception) -> bool:
        """True when the database cannot take rows for now (locked, full, unreachable), so the
        batch is retried; False when a row in it is wrong."""
        ...

    def duplicate(self, exc: Exception) -> bool:
        """True when ``exc`` says a request (or feedback) with this id is recorded already."""
        ...

    def reason(self, exc: Exception) -> str:
        """``exc`` in one line for a log: what the database said, without the rows."""
        ...

    def close(self) -> None:
        """Close the connection (the writer thread calls it last)."""
        ...


def _connect(path: str) -> sqlite3.Connection:
    """Open (creating if needed) the record at ``path`` with its schema, for the writer thread."""
    if path != ":memory:":
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    try:
        conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute(f"PRAGMA busy_timeout={int(BUSY_TIMEOUT_MS)}")
        conn.executescript(SCHEMA)
    except sqlite3.Error as exc:
        raise ConfigError(f"record.path: cannot open the request log {path!r}: {exc}; "
                          "choose a writable path or set record.enabled = false") from None
    return conn


def _transient(exc: sqlite3.Error) -> bool:
    """True when the database refused for now (locked, full, unavailable), not the rows."""
    code = getattr(exc, "sqlite_errorcode", None)
    return code is not None and (code & 0xFF) in _TRANSIENT


class SQLiteSink:
    """The record in one SQLite file (WAL): ``record.backend = "sqlite"``."""

    errors: tuple[type[Exception], ...] = (sqlite3.Error,)

    def __init__(self, path: str) -> None:
        self.where = path
        self.conn = _connect(path)

    def insert(self, records: list[Any], replay: bool) -> int:
        """Insert ``records`` in one transaction (``BEGIN IMMEDIATE``); the request and
        feedback rows inserted."""
        conn = self.conn
        if conn.in_transaction:  # left open by a failed rollback
            conn.execute("ROLLBACK")
        requests, feedback = split(records)
        conn.execute("BEGIN IMMEDIATE")
        try:
            inserted = _insert(conn, "requests", [row for row, _ in requests], replay)
            _insert(conn, "attempts", [a for _, attempts in requests for a in attempts], replay)
            inserted += _insert(conn, "feedback", feedback, replay)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                try:
                    conn.execute("ROLLBACK")
                except sqlite3.Error:
                    pass
            raise
        return inserted

    def transient(self, exc: Exception) -> bool:
        """SQLite's result codes for a database that cannot take rows for now."""
        return isinstance(exc, sqlite3.Error) and _transient(exc)

    def duplicate(self, exc: Exception) -> bool:
        """A primary-key violation: the request (or feedback) is recorded already."""
        return getattr(exc, "sqlite_errorname", "") == "SQLITE_CONSTRAINT_PRIMARYKEY"

    def reason(self, exc: Exception) -> str:
        """SQLite's message, or its result code's name."""
        return str(exc) or getattr(exc, "sqlite_errorname", type(exc).__name__)

    def close(self) -> None:
        """Close the file."""
        self.conn.close()


def _insert(conn: sqlite3.Connection, table: str, rows: list[Any], replay: bool = False) -> int:
    """Insert ``rows`` into ``table`` (one of :data:`TABLES`), many rows a statement; with
    ``replay``, rows already there are skipped. Returns the rows inserted."""
    inserted = 0
    for start in range(0, len(rows), ROWS_PER_STATEMENT):
        chunk = rows[start:start + ROWS_PER_STATEMENT]
        # One statement for many rows: sqlite3 releases the GIL around every step, and a step
        # per row would make the event loop hand the GIL back and forth.
        inserted += conn.execute(_insert_many(table, len(chunk), replay),
                                 [value for row in chunk for value in row]).rowcount
    return inserted


_KEYS = {"requests": "request_id", "attempts": "request_id, n", "feedback": "feedback_id"}


@lru_cache(maxsize=32)
def _insert_many(table: str, count: int, replay: bool = False) -> str:
    """An INSERT of ``count`` rows into ``table``; for replay, a no-op on rows already there
    (their primary key; any other constraint still fails)."""
    columns = TABLES[table]
    row = f"({', '.join('?' for _ in columns)})"
    conflict = f" ON CONFLICT ({_KEYS[table]}) DO NOTHING" if replay else ""
    return (f"INSERT INTO {table} ({', '.join(columns)}) VALUES {', '.join([row] * count)}"
            f"{conflict}")


# --- writing -----------------------------------------------------------------------------------


class RecordWriter:
    """Journals each finished request's rows on the caller's thread, and inserts them through
    ``sink`` from a thread in batches, one commit per batch; replays the journal at start.

    ``journal`` is the journal's path; None for none (an in-memory database)."""

    def __init__(self, sink: Sink, journal: str | None = None, *,
                 retry_max_s: float = 5.0) -> None:
        self.sink = sink
        self.path = sink.where
        """What the logs name: the database's file, or its server and schema."""
        self.written = 0
        """Request and feedback rows inserted (replayed ones included)."""
        self.retry_max_s = retry_max_s
        self.alerts: list[Alert] = []
        """Journal alerts (failed, then resolved) for the recorder to deliver; see take_alerts."""
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._closed = False
        self._closing_at: float | None = None
        self._lock = threading.Lock()
        """Held while a record is journaled and queued, and while a segment is closed and its
        marker queued: the queue keeps the journal's order (see record_journal)."""
        self._journal_failing = False
        self._delayed_since: float | None = None
        self._delay = RETRY_FIRST_S
        self._rotate_after = 0.0
        self.journal = None if journal is None else Journal(journal)
        leftovers: list[Path] = []
        if self.journal is not None:
            try:
                leftovers = self.journal.start()  # JournalInUse (another holder) goes up
            except OSError as exc:
                self._journal_failed(exc)
                try:
                    leftovers = self.journal.segments()
                except OSError:
                    leftovers = []
        self._thread = threading.Thread(target=self._run, args=(leftovers,),
                                        name="turnout-record-writer", daemon=True)
        self._thread.start()

    # --- on the event loop ----------------------------------------------------------------------

    def put(self, ctx: Context) -> bool:
        """Build the request's rows, append them to the journal and queue them for the writer;
        False (and a log line) if the rows cannot be built or the writer has been closed.

        A journal that cannot be written is logged and raises an alert (see :attr:`alerts`);
        the rows are queued all the same.
        """
        try:
            record: tuple[Any, ...] = (context_row(ctx), attempt_rows(ctx))
            line = encode(record) if self.journal is not None else b""
        except Exception as exc:  # noqa: BLE001 - one bad context must not fail the request
            log.error("record_write_failed", request_id=ctx.request_id,
                      error=f"cannot build the row: {type(exc).__name__}: {exc}", path=self.path)
            return False
        return self._enqueue(record, line)

    def put_feedback(self, feedback: Feedback) -> bool:
        """As :meth:`put`, for one score of an answer: its row is journaled and queued like a
        request's, and written in the same batches."""
        try:
            record = feedback_row(feedback)
            line = encode(record) if self.journal is not None else b""
        except Exception as exc:  # noqa: BLE001 - one bad score must not fail its caller
            log.error("record_write_failed", request_id=feedback.request_id,
                      feedback_id=feedback.id,
                      error=f"cannot build the row: {type(exc).__name__}: {exc}", path=self.path)
            return False
        return self._enqueue(record, line)

    def _enqueue(self, record: tuple[Any, ...], line: bytes) -> bool:
        """Append ``line`` to the journal and queue ``record``, under the lock that keeps the
        queue in the journal's order; False (and a log line) when the writer is closed."""
        with self._lock:
            if not self._closed:
                if self.journal is not None:
                    try:
                        self.journal.append(line)
                    except OSError as exc:
                        self._journal_failed(exc)
                        record = (_UnjournaledFeedback(record)
                                  if isinstance(record, FeedbackRecord) else _Unjournaled(record))
                    else:
                        if self._journal_failing:
                            self._journal_restored()
                self._queue.put(record)
                return True
        log.warning("record_dropped", **_about(record), reason="the request log is closed")
        return False

    def take_alerts(self) -> list[Alert]:
        """The journal alerts raised since the last call."""
        alerts, self.alerts = self.alerts, []
        return alerts

    def _journal_failed(self, exc: OSError) -> None:
        if self._journal_failing:
            return
        self._journal_failing = True
        assert self.journal is not None
        where = str(self.journal.path)
        log.error("record_journal_failed", path=where, error=str(exc),
                  consequence="requests are recorded, but lost if the gateway dies before the "
                  "database has them")
        self.alerts.append(Alert(
            name="record_journal_failed", severity="critical", labels={"path": where},
            summary=f"cannot write the request record's journal {where}: {exc}. Requests are "
                    "still recorded, but those not yet in the database are lost if the gateway "
                    "dies; free space on its disk or fix its permissions."))

    def _journal_restored(self) -> None:
        self._journal_failing = False
        assert self.journal is not None
        where = str(self.journal.path)
        log.info("record_journal_restored", path=where)
        self.alerts.append(Alert(name="record_journal_failed", severity="critical",
                                 summary=f"the request record's journal {where} is written again",
                                 labels={"path": where}, resolved=True))

    # --- from any thread ------------------------------------------------------------------------

    def close(self, timeout: float | None = None) -> None:
        """Write every row already enqueued, then close the database. Blocks until done; if the
        database refuses rows for :data:`CLOSE_RETRY_S`, they are left in the journal."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._closing_at = time.monotonic()
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

    # --- the writer thread ----------------------------------------------------------------------

    def _run(self, leftovers: list[Path]) -> None:
        clean = False
        try:
            if not self._replay(leftovers):
                self._abandon([])
                return
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
                records = [item for item in batch if isinstance(item, tuple)]
                if records and self._write(records) is None:
                    self._abandon(batch)
                    return
                for marker in batch:
                    if marker is _STOP:
                        stop = True
                    elif isinstance(marker, threading.Event):
                        marker.set()
                    elif isinstance(marker, _Closed):
                        # Every record queued before the marker, that is every line of the
                        # segment, is committed (or was unwritable): the segment can go.
                        _delete(marker.segment)
                if not stop:
                    self._rotate()
            clean = True
        finally:
            if self.journal is not None:
                with self._lock:
                    # Clean: everything appended was queued before _STOP and is committed.
                    self.journal.close(discard=clean)
            self.sink.close()

    def _rotate(self) -> None:
        """Close the active journal segment when it is large or old enough (see record_journal)."""
        journal = self.journal
        if journal is None or not journal.size:
            return
        now = time.monotonic()
        if now < self._rotate_after or (journal.size < journal_module.SEGMENT_BYTES
                                        and now - journal.opened_at < journal_module.SEGMENT_AGE_S):
            return
        with self._lock:
            try:
                closed = journal.rotate()
            except OSError as exc:
                log.warning("record_journal_rotate_failed", path=str(journal.path),
                            error=str(exc))
                self._rotate_after = now + journal_module.SEGMENT_AGE_S
                return
            if closed is not None:
                self._queue.put(_Closed(closed))

    def _replay(self, segments: list[Path]) -> bool:
        """Insert what the journal segments hold and the database lacks, then delete them;
        False if the writer gave up (shutting down with the database unavailable)."""
        for segment in segments:
            lines = scores = inserted = 0
            chunk: list[Any] = []
            try:
                for record in read_segment(segment, len(COLUMNS), len(ATTEMPT_COLUMNS),
                                           len(FEEDBACK_COLUMNS)):
                    chunk.append(record)
                    lines += 1
                    scores += isinstance(record, FeedbackRecord)
                    if len(chunk) == BATCH_SIZE:
                        done = self._write(chunk, replay=True)
                        if done is None:
                            return False
                        inserted += done
                        chunk = []
            except OSError as exc:
                log.error("record_journal_unreadable", path=str(segment), error=str(exc))
                continue
            if chunk:
                done = self._write(chunk, replay=True)
                if done is None:
                    return False
                inserted += done
            log.info("record_replayed", path=str(segment), requests=lines - scores,
                     feedback=scores, inserted=inserted, already_recorded=lines - inserted)
            _delete(segment)
        return True

    def _write(self, records: list[Any], *, replay: bool = False) -> int | None:
        """Commit ``records``, each a request's row with its attempts' rows or a feedback row;
        returns the request and feedback rows inserted, once each record is committed or found
        unwritable (logged and skipped).

        A batch the database refuses for now is retried with backoff until it is written; None
        only when the writer gives up at shutdown. Replayed records that are already in the
        database are no-ops; a live one is a duplicate, logged. A retried batch is written as a
        replay: the connection may have been lost while its commit was under way, after the
        server had it.
        """
        inserted = 0
        pending = records
        try:
            while pending:
                try:
                    inserted += self.sink.insert(pending, replay)
                    pending = []
                except self.sink.errors as exc:
                    if self.sink.transient(exc):
                        self._wait(exc, len(pending))
                        replay = True
                        continue
                    # A bad row fails the whole batch: write request by request to find it.
                    pending, done = self._one_by_one(pending, replay)
                    inserted += done
                    replay = replay or bool(pending)
        except _GiveUp:
            return None
        if self._delayed_since is not None:
            log.info("record_write_resumed", path=self.path,
                     delayed_s=round(time.monotonic() - self._delayed_since, 3))
            self._delayed_since = None
        self.written += inserted
        return inserted

    def _one_by_one(self, records: list[Any], replay: bool) -> tuple[list[Any], int]:
        """Commit each record alone, logging and skipping those that cannot be written; stops at
        a refusal for now and returns the records left (after waiting), and the rows inserted."""
        inserted = 0
        for i, record in enumerate(records):
            try:
                inserted += self.sink.insert([record], replay)
            except self.sink.errors as exc:
                if self.sink.transient(exc):
                    self._wait(exc, len(records) - i)
                    return records[i:], inserted
                what = "feedback" if isinstance(record, FeedbackRecord) else "a request"
                reason = (f"{what} with this id is already recorded"
                          if self.sink.duplicate(exc) else self.sink.reason(exc))
                log.error("record_write_failed", **_about(record), error=reason, path=self.path)
        return [], inserted

    def _wait(self, exc: Exception, rows: int) -> None:
        """Pause before retrying a refused batch; logs once per episode. Raises _GiveUp once the
        writer has been closing for :data:`CLOSE_RETRY_S`."""
        now = time.monotonic()
        if self._delayed_since is None:
            self._delayed_since, self._delay = now, RETRY_FIRST_S
            log.warning("record_write_delayed", path=self.path, rows=rows,
                        reason=self.sink.reason(exc),
                        consequence="rows are kept and retried until the database takes them")
        pause = self._delay
        if self._closing_at is not None:
            left = self._closing_at + CLOSE_RETRY_S - now
            if left <= 0:
                raise _GiveUp
            pause = min(pause, left)
        time.sleep(pause)
        self._delay = min(self._delay * 2, self.retry_max_s)

    def _abandon(self, batch: list[Any]) -> None:
        """Shutting down with the database still refusing: report what is left where."""
        left = [item for item in batch if isinstance(item, tuple)]
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if isinstance(item, tuple):
                left.append(item)
            elif isinstance(item, threading.Event):
                item.set()
        for item in batch:
            if isinstance(item, threading.Event):
                item.set()
        lost = sum(1 for item in left if isinstance(item, _Unjournaled))
        log.warning("record_write_deferred", path=self.path, rows=len(left) - lost,
                    journal=str(self.journal.path) if self.journal else None,
                    reason="the database refused them until shutdown; they are in the journal "
                    "and are written at the next start")
        if lost:
            log.error("record_dropped", path=self.path, rows=lost,
                      reason="neither the database nor the journal took them")


def _delete(segment: Path) -> None:
    try:
        segment.unlink(missing_ok=True)
    except OSError as exc:  # replayed again at the next start: harmless, rows are not doubled
        log.warning("record_journal_not_deleted", path=str(segment), error=str(exc))


# --- settings and the plugin -------------------------------------------------------------------

with warnings.catch_warnings():
    # ``schema`` is the config's word (record.schema); pydantic warns that the field hides the
    # deprecated ``BaseModel.schema()``, which nothing here calls.
    warnings.filterwarnings("ignore", message='Field name "schema"', category=UserWarning)

    class RecordSettings(BaseModel):
        """The request log: the ``[record]`` table."""

        model_config = ConfigDict(extra="forbid", frozen=True)

        enabled: bool = Field(default=True, description="Record every request.")
        backend: Literal["sqlite", "postgres"] = Field(
            default="sqlite", description="Where the rows go: 'sqlite', the file record.path of "
            "this gateway; or 'postgres', the server record.dsn, which every replica can share.")
        path: str = Field(default="turnout.db", description="SQLite file (WAL); ':memory:' for "
                          "none on disk. With backend 'postgres' only its folder is used, for "
                          "the default journal.")
        dsn: str | None = Field(
            default=None, validate_default=True, repr=False, description="With backend "
            "'postgres' (required then): the server, as postgresql://USER[:PASSWORD]@HOST:PORT/"
            "DATABASE or 'host=... dbname=...'. Its password is masked in every log and error; "
            "better keep it out of the file (${VAR}, PGPASSWORD or ~/.pgpass).")
        schema: str = Field(
            default="public", min_length=1, max_length=63, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
            description="With backend 'postgres': the schema of the record's tables (requests, "
            "attempts, feedback, the spend view and schema_migrations), created if missing; "
            "every statement runs with search_path set to it.")
        journal: str | None = Field(
            default=None, description="Append-only file each request's rows reach before the "
            "answer's last byte leaves; what the database lacks after a crash is replayed from "
            "it at the next start. Each gateway, each replica, needs its own: one held by a "
            "running gateway cannot be opened by another. Unset: '<path>.journal' with sqlite "
            "(none for ':memory:'); with postgres 'turnout-record-<server and schema "
            "hash>-<server.port>.journal' in record.path's folder, so that gateways on one "
            "machine differ. Closed segments beside it are '<journal>.N'.")
        retry_max_s: float = Field(
            default=5.0, gt=0, description="Longest pause between retries of rows the database "
            "refuses for now (locked by another process, disk full, server unreachable): they "
            "wait, in memory and in the journal, and are not dropped.")

        @field_validator("dsn")
        @classmethod
        def _dsn_with_postgres(cls, dsn: str | None, info: ValidationInfo) -> str | None:
            """A dsn goes with backend 'postgres', and only with it; its password becomes a
            secret, masked wherever it would show."""
            if "backend" not in info.data:  # the backend itself is wrong: reported on its own
                return dsn
            postgres = info.data["backend"] == "postgres"
            if dsn is None and postgres:
                raise ValueError('required with backend = "postgres": where the server is, e.g. '
                                 '"postgresql://postgres@127.0.0.1:5432/turnout"')
            if dsn is not None and not postgres:
                raise ValueError('set, but backend is "sqlite": set backend = "postgres" to '
                                 "record there, or remove dsn")
            if dsn is None:
                return None
            from .record_postgres import check_dsn

            return check_dsn(dsn)

        def journal_path(self, port: int | None = None) -> str | None:
            """The journal's path: ``record.journal``, else the default of the backend (see the
            field); ``port`` is the gateway's ``server.port``. None: no journal (':memory:')."""
            if self.journal is not None:
                return self.journal
            if self.backend == "sqlite":
                return None if self.path == ":memory:" else f"{self.path}.journal"
            from .record_postgres import server_identity

            digest = hashlib.sha256(f"{server_identity(self.dsn or '')}|{self.schema}".encode())
            name = f"turnout-record-{digest.hexdigest()[:12]}"
            if port:
                name += f"-{port}"
            return str(Path(self.path).with_name(f"{name}.journal"))


def open_sink(settings: RecordSettings) -> Sink:
    """The sink of ``record.backend``, connected and with its tables; ConfigError when the
    database cannot be opened, saying what to fix."""
    if settings.backend == "postgres":
        from .record_postgres import PostgresSink

        return PostgresSink(settings.dsn or "", settings.schema)
    return SQLiteSink(settings.path)


def open_writer(settings: RecordSettings, port: int | None = None) -> RecordWriter:
    """A running writer for ``settings``: its sink opened, its journal taken and replaying
    (``port``: the gateway's, for the default journal's name)."""
    sink = open_sink(settings)
    try:
        return RecordWriter(sink, settings.journal_path(port), retry_max_s=settings.retry_max_s)
    except BaseException:
        sink.close()
        raise


def _server_port(kernel: Any) -> int | None:
    """The port the gateway serves on; None for a stand-in kernel without a config."""
    server = getattr(getattr(kernel, "config", None), "server", None)
    return getattr(server, "port", None)


class SQLiteRecorder:
    """The ``record`` plugin: writes one row per finished request (and one per attempt) to the
    database of ``record.backend``, SQLite (``record.path``) or PostgreSQL (``record.dsn``). A
    row's cost, tokens and attempts include its sub-requests'."""

    name = "record"
    Settings = RecordSettings

    def __init__(self) -> None:
        self.writer: RecordWriter | None = None
        self.kernel: Any = None

    @hookimpl
    async def startup(self, kernel: Any) -> None:
        """Open the request log (creating or migrating its tables), replay its journal and start
        its writer, unless ``record.enabled`` is false."""
        settings: RecordSettings = kernel.plugin_settings(self)
        if not settings.enabled or self.writer is not None:
            return
        self.kernel = kernel
        self.writer = await anyio.to_thread.run_sync(partial(
            open_writer, settings, _server_port(kernel)))
        if self.writer.alerts:  # the journal could not be opened
            await self._alert()

    @hookimpl
    def register_commands(self, register) -> None:
        """``turnout stats``: spend, latency and success per request and per attempt."""
        from . import stats

        register("stats", stats.run, help="spend, latency and success per request and per "
                 "attempt, from the request log", arguments=stats.arguments)

    @hookimpl
    def record(self, ctx: Context) -> Any:
        """Journal the finished request's rows and queue them for the writer: one write to the
        page cache on the loop, the database off it.

        Returns None, or, when the journal has just failed or recovered, the coroutine that
        delivers the alert: the kernel awaits what a hook returns, so the common path stays a
        plain call.
        """
        writer = self.writer
        if writer is None:
            return None
        writer.put(ctx)
        return self._alert() if writer.alerts else None

    @hookimpl
    def feedback(self, feedback: Feedback) -> Any:
        """Journal one score of an answer and queue its row for the writer, as :meth:`record`
        does a request's; kept whether or not the request is recorded (yet)."""
        writer = self.writer
        if writer is None:
            return None
        writer.put_feedback(feedback)
        return self._alert() if writer.alerts else None

    async def _alert(self) -> None:
        writer = self.writer
        deliver = getattr(self.kernel, "alert", None)
        for alert in writer.take_alerts() if writer is not None else ():
            if deliver is not None:
                await deliver(alert)

    def flush(self, timeout: float = 10) -> bool:
        """Block until every row recorded so far is in the database (tests, ``turnout stats``
        in-process)."""
        return self.writer.flush(timeout) if self.writer is not None else True

    @hookimpl
    async def shutdown(self, kernel: Any) -> None:
        """Write what is queued and close the log, off the event loop."""
        writer, self.writer = self.writer, None
        if writer is not None:
            await anyio.to_thread.run_sync(writer.close, abandon_on_cancel=False)
