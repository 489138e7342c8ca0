"""The request record: one SQLite row of metadata per request, and what ``turnout stats`` shows.

A row holds who asked for what, which model answered, what it cost, how long it took and why the
gateway decided as it did; never the messages or the answer. Rows are built on the event loop
(cheap) and written by a background thread in batches, so the loop never waits on the disk. The
file is in WAL mode, so ``turnout stats`` can read it while the gateway writes.
"""

from __future__ import annotations

import math
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

from turnout.kernel.errors import ConfigError
from turnout.kernel.hookspecs import hookimpl
from turnout.kernel.observability import redact
from turnout.kernel.types import Context

log = structlog.get_logger("turnout.record")

COLUMNS = ("request_id", "parent_id", "created_at", "client", "requested", "route", "model",
           "provider", "status", "error_kind", "error", "attempts", "input_tokens",
           "output_tokens", "cost_usd", "latency_ms", "overhead_ms", "stream", "decision")
"""The columns of the ``requests`` table, in insert order."""

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
"""

BATCH_SIZE = 2000
"""Most rows written in one transaction."""

FLUSH_INTERVAL_S = 0.05
"""How long the writer lets rows gather after the first one arrives."""

_ROW = f"({', '.join('?' for _ in COLUMNS)})"
_INSERT = f"INSERT INTO requests ({', '.join(COLUMNS)}) VALUES {_ROW}"
ROWS_PER_STATEMENT = 500
"""Rows inserted by one multi-row INSERT (SQLite allows 32,766 parameters a statement)."""

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
        len(attempts),
        sum(a.usage.input_tokens for a in attempts),
        sum(a.usage.output_tokens for a in attempts),
        ctx.spend_usd,
        ctx.latency_s * 1000,
        ctx.overhead_s * 1000,
        int(ctx.request.stream),
        # One pattern pass over the serialised decision: masks secret-looking values and
        # '"api_key": "..."'-style fields alike, at a fraction of a recursive walk's cost.
        redact(orjson.dumps(decision, default=str, option=orjson.OPT_NON_STR_KEYS).decode()),
    )


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
                rows = [row for item in batch if isinstance(item, Context)
                        and (row := self._row(item)) is not None]
                if rows:
                    self._write(rows)
                for marker in batch:
                    if marker is _STOP:
                        stop = True
                    elif isinstance(marker, threading.Event):
                        marker.set()
        finally:
            self.conn.close()

    def _row(self, ctx: Context) -> tuple[Any, ...] | None:
        try:
            return context_row(ctx)
        except Exception as exc:  # noqa: BLE001 - one bad context must not stop the writer
            log.error("record_write_failed", request_id=ctx.request_id,
                      error=f"cannot build the row: {type(exc).__name__}: {exc}", path=self.path)
            return None

    def _write(self, rows: list[tuple[Any, ...]]) -> None:
        try:
            with self.conn:
                self.conn.execute("BEGIN")
                for start in range(0, len(rows), ROWS_PER_STATEMENT):
                    chunk = rows[start:start + ROWS_PER_STATEMENT]
                    # One statement for many rows: sqlite3 releases the GIL around every step,
                    # and a step per row would make the event loop hand the GIL back and forth.
                    self.conn.execute(_insert_many(len(chunk)),
                                      [value for row in chunk for value in row])
            self.written += len(rows)
            return
        except sqlite3.Error:
            pass  # the transaction rolled back: write row by row to find and log the bad ones
        for row in rows:
            try:
                with self.conn:
                    self.conn.execute("BEGIN")
                    self.conn.execute(_INSERT, row)
                self.written += 1
            except sqlite3.Error as exc:
                reason = ("a request with this id is already recorded"
                          if isinstance(exc, sqlite3.IntegrityError) else str(exc))
                log.error("record_write_failed", request_id=row[0], error=reason,
                          path=self.path)


@lru_cache(maxsize=8)
def _insert_many(count: int) -> str:
    """An INSERT of ``count`` rows."""
    return _INSERT + (", " + _ROW) * (count - 1)


class SQLiteRecorder:
    """The ``record`` plugin: writes one row per finished request to ``record.path``."""

    def __init__(self) -> None:
        self.writer: RecordWriter | None = None

    @hookimpl
    async def startup(self, kernel: Any) -> None:
        """Open the request log and start its writer, unless ``record.enabled`` is false."""
        settings = kernel.config.record
        if not settings.enabled or self.writer is not None:
            return
        self.writer = await anyio.to_thread.run_sync(RecordWriter, settings.path)

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


# --- reading -----------------------------------------------------------------------------------


def open_log(path: str) -> sqlite3.Connection:
    """Open the request log read-only; raises ConfigError when nothing has been recorded there."""
    file = Path(path)
    if path == ":memory:" or not file.is_file():
        raise ConfigError(
            f"no requests have been recorded at {path!r} yet (no such file). Start the gateway "
            "with [record] enabled, or point at another request log with --db PATH (or "
            "record.path in the config).")
    conn = sqlite3.connect(f"{file.resolve().as_uri()}?mode=ro", uri=True)
    try:
        conn.execute("SELECT 1 FROM requests LIMIT 1")
    except sqlite3.DatabaseError as exc:
        conn.close()
        raise ConfigError(f"{path!r} is not a Turnout request log ({exc}); point at the "
                          "record.path of the gateway with --db PATH") from None
    return conn


def percentile(ordered: list[float], p: float) -> float | None:
    """The nearest-rank ``p``-th percentile of an ascending list; None when it is empty."""
    if not ordered:
        return None
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def summarize(path: str, *, since: float | None = None) -> dict[str, Any]:
    """Totals, spend and latency percentiles of the request log, overall and per model.

    ``since`` (a Unix time) keeps only requests created at or after it. Percentiles use the
    nearest-rank method over every request (failed ones included); models are sorted by requests.
    """
    conn = open_log(path)
    try:
        rows = conn.execute(
            "SELECT model, status, cost_usd, latency_ms, overhead_ms, input_tokens, output_tokens "
            "FROM requests WHERE created_at >= ?",
            (since if since is not None else -math.inf,)).fetchall()
    finally:
        conn.close()
    per_model: dict[str | None, dict[str, Any]] = {}
    latencies: list[float] = []
    overheads: list[float] = []
    counts = {"ok": 0, "error": 0, "cancelled": 0}
    spend = 0.0
    for model, status, cost, latency, overhead, tokens_in, tokens_out in rows:
        counts[status] = counts.get(status, 0) + 1
        spend += cost or 0.0
        entry = per_model.setdefault(model, {"requests": 0, "ok": 0, "spend_usd": 0.0,
                                             "latencies": [], "input_tokens": 0,
                                             "output_tokens": 0})
        entry["requests"] += 1
        entry["ok"] += status == "ok"
        entry["spend_usd"] += cost or 0.0
        entry["input_tokens"] += tokens_in or 0
        entry["output_tokens"] += tokens_out or 0
        if latency is not None:
            entry["latencies"].append(latency)
            latencies.append(latency)
        if overhead is not None:
            overheads.append(overhead)
    by_model = []
    for model, entry in per_model.items():
        lat = sorted(entry["latencies"])
        by_model.append({
            "model": model, "requests": entry["requests"],
            "success_rate": entry["ok"] / entry["requests"],
            "spend_usd": round(entry["spend_usd"], 8),
            "p50_ms": _ms(percentile(lat, 50)), "p95_ms": _ms(percentile(lat, 95)),
            "p99_ms": _ms(percentile(lat, 99)),
            "input_tokens": entry["input_tokens"], "output_tokens": entry["output_tokens"]})
    by_model.sort(key=lambda m: (-m["requests"], m["model"] or ""))
    latencies.sort()
    overheads.sort()
    return {
        "path": path, "since": since, "requests": len(rows), "ok": counts["ok"],
        "errors": counts["error"], "cancelled": counts["cancelled"],
        "spend_usd": round(spend, 8), "by_model": by_model,
        "latency_ms": {f"p{p}": _ms(percentile(latencies, p)) for p in (50, 95, 99)},
        "overhead_ms": {f"p{p}": _ms(percentile(overheads, p)) for p in (50, 99)},
    }


def _fmt_ms(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value / 1000:.2f} s" if value >= 1000 else f"{value:.1f} ms"


def render_stats(summary: dict[str, Any]) -> str:
    """The summary from :func:`summarize` as a plain-text report with a table per model."""
    where = summary.get("path") or "the request log"
    since = summary.get("since")
    window = (f" since {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(since))}"
              if since is not None else "")
    if not summary["requests"]:
        return f"No requests recorded in {where}{window}."
    lat, over = summary["latency_ms"], summary["overhead_ms"]
    lines = [
        f"Requests in {where}{window}",
        f"  {summary['requests']:,} requests: {summary['ok']:,} ok, {summary['errors']:,} errors"
        f", {summary.get('cancelled', 0):,} cancelled; spend ${summary['spend_usd']:.6f}",
        f"  latency p50 {_fmt_ms(lat['p50'])}, p95 {_fmt_ms(lat['p95'])}, "
        f"p99 {_fmt_ms(lat['p99'])}; gateway overhead p50 {_fmt_ms(over['p50'])}, "
        f"p99 {_fmt_ms(over['p99'])}",
        "",
    ]
    header = ("model", "requests", "success", "spend $", "p50", "p95", "p99", "in tokens",
              "out tokens")
    table = [header] + [
        (m["model"] or "(none)", f"{m['requests']:,}", f"{m['success_rate'] * 100:.1f}%",
         f"{m['spend_usd']:.6f}", _fmt_ms(m["p50_ms"]), _fmt_ms(m["p95_ms"]),
         _fmt_ms(m["p99_ms"]), f"{m['input_tokens']:,}", f"{m['output_tokens']:,}")
        for m in summary["by_model"]]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for row in table:
        cells = [row[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(row[1:], widths[1:])]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)
