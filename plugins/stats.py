"""``turnout stats``: what the request log says, per request and per attempt, and what people
said of the answers (feedback, per model).

Reads the log the ``record`` plugin writes, while the gateway writes: the SQLite file
(read-only), or with ``record.backend = "postgres"`` the record's PostgreSQL schema (one
read-only snapshot, through :func:`turnout.plugins.record_postgres.read_rows`). The command is
registered through the record plugin.

``turnout stats --png FILE`` also draws the log over time (:func:`timeline`, drawn by
:func:`turnout.plugins.charts.stats_png`, the chart the Slack bot's ``/turnout stats`` uploads
too): spend by model per bucket and the requests' latency percentiles. :func:`read_record` is
the one reader of plain columns from either backend that the timeline and ``turnout estimate``
share.
"""

from __future__ import annotations

import argparse
import json
import math
import sqlite3
import time
from pathlib import Path
from typing import Any

import orjson

from turnout.kernel import config as config_module
from turnout.kernel.errors import BadRequest, ConfigError


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
    """Totals, spend and latency percentiles of the request log: per request and per attempt.

    Two views of the same traffic:

    * **Per request** (``requests``, ``ok``, ``errors``, ``cancelled``, ``spend_usd``,
      ``latency_ms``, ``overhead_ms`` and ``by_route``): one count per request a client made, that
      is per top-level ``requests`` row (``parent_id IS NULL``). Sub-requests of multi-call
      strategies are not counted again: their parent's ``cost_usd`` already includes their spend
      and its latency their time. ``spend_usd`` is the whole requests' spend, failed attempts
      included; latency is end to end.
    * **Per attempt** (``attempts`` and ``by_model``): one count per call to a model, from the
      ``attempts`` table, sub-requests' calls included. Each attempt row belongs to exactly one
      request row and a parent's own attempts are only the calls it made itself, so no call is
      counted twice. A model is credited with its own calls only: their success, latency,
      spend and tokens, not those of the fallback that answered after it failed.

    ``since`` (a Unix time) keeps only requests created at or after it, and the attempts of those
    requests. Percentiles use the nearest-rank method, failed requests and attempts included.
    ``by_model`` is sorted by attempts, ``by_route`` by requests (a request without a route has
    route None). A log written before attempts were recorded has no ``attempts`` table:
    ``by_model`` is then empty.

    **Feedback** (``feedback`` and ``feedback_by_model``): the scores given at or after ``since``
    (``Kernel.feedback``, ``POST /v1/feedback``), counted and averaged per model and provider of
    the request judged (its ``requests`` row's; None when that request is not in the log, or
    no model answered it).
    ``feedback_by_model`` is sorted by count, and empty when there is none (a log written before
    feedback was recorded has no ``feedback`` table).
    """
    requests, attempts, feedback = _read_sqlite(path, since)
    return summarize_rows(requests, attempts, feedback, where=path, since=since)


def summarize_postgres(dsn: str, schema: str = "public", *,
                       since: float | None = None) -> dict[str, Any]:
    """:func:`summarize` of a PostgreSQL record (``record.backend = "postgres"``): the same
    figures from the same rows, read in one snapshot from ``schema``; ConfigError when the server
    cannot be reached or holds no record there."""
    from .record_postgres import masked, read_rows

    requests, attempts, feedback = read_rows(dsn, schema, since)
    return summarize_rows(requests, attempts, feedback,
                          where=f"{masked(dsn)} (schema {schema})", since=since)


def _read_sqlite(path: str, since: float | None) -> tuple[list[Any], list[Any], list[Any]]:
    """The top-level requests and every attempt created at or after ``since``, and every score
    given since then with its request's model and provider, from the SQLite log at ``path`` in
    one snapshot (no attempts or feedback from a log that predates them)."""
    window = (since if since is not None else -math.inf,)
    conn = open_log(path)
    try:
        conn.execute("BEGIN")  # one snapshot for every query, while the gateway writes
        requests = conn.execute(
            "SELECT route, status, cost_usd, latency_ms, overhead_ms FROM requests "
            "WHERE created_at >= ? AND parent_id IS NULL", window).fetchall()
        tables = {name for (name,) in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table'")}
        if "attempts" in tables:
            attempts = conn.execute(
                "SELECT model, provider, status, cost_usd, latency_ms, input_tokens, "
                "output_tokens FROM attempts WHERE created_at >= ?", window).fetchall()
        else:
            attempts = []
        if "feedback" in tables:
            feedback = conn.execute(
                "SELECT r.model, r.provider, f.score FROM feedback f "
                "LEFT JOIN requests r ON r.request_id = f.request_id "
                "WHERE f.created_at >= ? AND f.score IS NOT NULL", window).fetchall()
        else:
            feedback = []
    finally:
        conn.close()
    return requests, attempts, feedback


def summarize_rows(requests: list[Any], attempts: list[Any], feedback: list[Any] | None = None,
                   *, where: str, since: float | None = None) -> dict[str, Any]:
    """The figures of :func:`summarize` from rows already read: ``requests`` as (route, status,
    cost_usd, latency_ms, overhead_ms) of top-level requests, ``attempts`` as (model, provider,
    status, cost_usd, latency_ms, input_tokens, output_tokens), ``feedback`` as (model,
    provider, score) of each score; ``where`` names the log."""
    latencies: list[float] = []
    overheads: list[float] = []
    counts = {"ok": 0, "error": 0, "cancelled": 0}
    spend = 0.0
    per_route: dict[str | None, _Group] = {}
    for route, status, cost, latency, overhead in requests:
        counts[status] = counts.get(status, 0) + 1
        spend += cost or 0.0
        per_route.setdefault(route, _Group()).add(status, cost, latency)
        if latency is not None:
            latencies.append(latency)
        if overhead is not None:
            overheads.append(overhead)
    by_route = [{"route": route, "requests": g.count, **g.figures((50, 95))}
                for route, g in per_route.items()]
    by_route.sort(key=lambda r: (-r["requests"], r["route"] is None, r["route"] or ""))

    per_model: dict[tuple[str | None, str | None], _Group] = {}
    for model, provider, status, cost, latency, tokens_in, tokens_out in attempts:
        group = per_model.setdefault((model, provider), _Group())
        group.add(status, cost, latency)
        group.input_tokens += tokens_in or 0
        group.output_tokens += tokens_out or 0
    by_model = [{"model": model, "provider": provider, "attempts": g.count,
                 **g.figures((50, 95, 99)), "input_tokens": g.input_tokens,
                 "output_tokens": g.output_tokens}
                for (model, provider), g in per_model.items()]
    by_model.sort(key=lambda m: (-m["attempts"], m["model"] or "", m["provider"] or ""))

    scores: dict[tuple[str | None, str | None], list[float]] = {}
    feedback = feedback or []
    for model, provider, score in feedback:
        scores.setdefault((model, provider), []).append(score)
    feedback_by_model = [{"model": model, "provider": provider, "feedback": len(given),
                          "mean_score": round(sum(given) / len(given), 6)}
                         for (model, provider), given in scores.items()]
    feedback_by_model.sort(key=lambda m: (-m["feedback"], m["model"] is None, m["model"] or "",
                                          m["provider"] or ""))

    latencies.sort()
    overheads.sort()
    return {
        "path": where, "since": since, "requests": len(requests), "ok": counts["ok"],
        "errors": counts["error"], "cancelled": counts["cancelled"],
        "spend_usd": round(spend, 8),
        "latency_ms": {f"p{p}": _ms(percentile(latencies, p)) for p in (50, 95, 99)},
        "overhead_ms": {f"p{p}": _ms(percentile(overheads, p)) for p in (50, 99)},
        "by_route": by_route,
        "attempts": len(attempts), "by_model": by_model,
        "feedback": len(feedback), "feedback_by_model": feedback_by_model,
    }


class _Group:
    """Running figures of a group of requests or attempts: a route's, a model's."""

    __slots__ = ("count", "ok", "spend", "latencies", "input_tokens", "output_tokens")

    def __init__(self) -> None:
        self.count = self.ok = self.input_tokens = self.output_tokens = 0
        self.spend = 0.0
        self.latencies: list[float] = []

    def add(self, status: str | None, cost: float | None, latency: float | None) -> None:
        self.count += 1
        self.ok += status == "ok"
        self.spend += cost or 0.0
        if latency is not None:
            self.latencies.append(latency)

    def figures(self, percentiles: tuple[int, ...]) -> dict[str, Any]:
        """``ok``, ``success_rate``, ``spend_usd`` and the ``pNN_ms`` latency percentiles."""
        ordered = sorted(self.latencies)
        return {"ok": self.ok, "success_rate": self.ok / self.count,
                "spend_usd": round(self.spend, 8),
                **{f"p{p}_ms": _ms(percentile(ordered, p)) for p in percentiles}}


def _fmt_ms(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value / 1000:.2f} s" if value >= 1000 else f"{value:.1f} ms"


def _table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> list[str]:
    """Plain-text table lines: the first column left-aligned, the others (numbers) right."""
    table = [header, *rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    return ["  ".join([row[0].ljust(widths[0])]
                      + [c.rjust(w) for c, w in zip(row[1:], widths[1:])]).rstrip()
            for row in table]


def render_stats(summary: dict[str, Any]) -> str:
    """The summary from :func:`summarize` as a plain-text report: per request, with a table per
    route, then per attempt, with a table per model, then, where there is any, the feedback per
    model."""
    where = summary.get("path") or "the request log"
    since = summary.get("since")
    window = (f" since {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(since))}"
              if since is not None else "")
    if not summary["requests"] and not summary.get("attempts") and not summary.get("feedback"):
        return f"No requests recorded in {where}{window}."
    lat, over = summary["latency_ms"], summary["overhead_ms"]
    lines = [
        f"Requests in {where}{window}",
        "",
        "Per request",
        f"  {summary['requests']:,} requests: {summary['ok']:,} ok, {summary['errors']:,} errors"
        f", {summary.get('cancelled', 0):,} cancelled; spend ${summary['spend_usd']:.6f}",
        f"  latency p50 {_fmt_ms(lat['p50'])}, p95 {_fmt_ms(lat['p95'])}, "
        f"p99 {_fmt_ms(lat['p99'])}; gateway overhead p50 {_fmt_ms(over['p50'])}, "
        f"p99 {_fmt_ms(over['p99'])}",
        "",
    ]
    if summary.get("by_route"):
        lines += _table(
            ("route", "requests", "success", "spend $", "p50", "p95"),
            [(r["route"] or "(none)", f"{r['requests']:,}", f"{r['success_rate'] * 100:.1f}%",
              f"{r['spend_usd']:.6f}", _fmt_ms(r["p50_ms"]), _fmt_ms(r["p95_ms"]))
             for r in summary["by_route"]])
        lines.append("")
    by_model = summary.get("by_model") or []
    lines.append(f"Per attempt, by model ({summary.get('attempts', 0):,} attempts)")
    if by_model:
        lines += _table(
            ("model", "attempts", "success", "spend $", "p50", "p95", "p99", "in tokens",
             "out tokens"),
            [(m["model"] or "(none)", f"{m['attempts']:,}", f"{m['success_rate'] * 100:.1f}%",
              f"{m['spend_usd']:.6f}", _fmt_ms(m["p50_ms"]), _fmt_ms(m["p95_ms"]),
              _fmt_ms(m["p99_ms"]), f"{m['input_tokens']:,}", f"{m['output_tokens']:,}")
             for m in by_model])
    else:
        lines.append("  no per-attempt data in this log")
    by_feedback = summary.get("feedback_by_model") or []
    if by_feedback:
        lines += ["", f"Feedback, by model answering ({summary.get('feedback', 0):,} scores)"]
        lines += _table(
            ("model", "scores", "mean score"),
            [(m["model"] or "(none)", f"{m['feedback']:,}",
              f"{m['mean_score']:+.2f}") for m in by_feedback])
    return "\n".join(lines)


AGE_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_age(text: str) -> float:
    """Seconds in an age such as ``30m``, ``24h`` or ``7d``."""
    number, unit = text[:-1], text[-1:]
    try:
        return float(number) * AGE_UNITS[unit]
    except (ValueError, KeyError):
        raise BadRequest(f"--since {text!r}: write a number and a unit (s, m, h, d), "
                         "e.g. 24h") from None


def arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``turnout stats``."""
    parser.add_argument("--config", help="config file (for record.backend, record.path or "
                        "record.dsn); provider secrets need not be set")
    record_arguments(parser)
    parser.add_argument("--since", metavar="AGE", help="only requests newer than AGE: 30m, 24h, "
                        "7d")
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.add_argument("--png", metavar="FILE", help="also draw a chart into FILE (PNG): spend "
                        "by model over time and the requests' p50/p95/p99 latency, per minute, "
                        "hour, day... as the span (--since, else the whole log) asks")


def run(args: argparse.Namespace) -> int:
    """``turnout stats``: print the summary of the request log: ``--db`` or ``--dsn`` if given,
    else the one the config's ``[record]`` names; with ``--png``, draw its chart too (1 when
    there is nothing to draw, said on standard error)."""
    now = time.time()
    since = now - parse_age(args.since) if args.since else None
    path, dsn, schema = record_location(args)
    if dsn is not None:
        summary = summarize_postgres(dsn, schema, since=since)
    else:
        summary = summarize(path, since=since)
    print(json.dumps(summary, indent=2) if args.json else render_stats(summary))
    if getattr(args, "png", None):
        return draw_png(args.png, timeline(path, dsn=dsn, schema=schema, since=since,
                                           until=now if since is not None else None))
    return 0


def draw_png(file: str, drawn: dict[str, Any]) -> int:
    """Write the chart of ``drawn`` (a :func:`timeline`) to ``file``; 1, and a line on standard
    error saying why, when the log holds nothing to draw."""
    from .charts import stats_png, write

    return write("stats", file, lambda: stats_png(drawn, title=_chart_title(drawn)))


def _chart_title(drawn: dict[str, Any]) -> str:
    since = drawn.get("since")
    when = (f"since {time.strftime('%Y-%m-%d %H:%M', time.gmtime(since))} UTC"
            if since is not None else "the whole log")
    return f"Requests in {drawn.get('path') or 'the request log'}, {when}"


# --- the log over time ---------------------------------------------------------------------------

BUCKETS_S = (60, 300, 900, 3600, 6 * 3600, 86400, 7 * 86400)
"""The bucket sizes a timeline chooses from: a minute, 5 and 15 minutes, an hour, 6 hours, a day,
a week. Buckets are aligned on multiples of their size since the Unix epoch (days start at
00:00 UTC)."""

MAX_BUCKETS = 25
"""Most buckets a timeline has when it chooses their size (24 hours in hours, 7 days in days)."""


def bucket_for(start: float, end: float) -> int:
    """The smallest of :data:`BUCKETS_S` that covers ``start`` to ``end`` in at most
    :data:`MAX_BUCKETS` aligned buckets."""
    for size in BUCKETS_S:
        if math.floor(end / size) - math.floor(start / size) + 1 <= MAX_BUCKETS:
            return size
    return BUCKETS_S[-1]


def read_record(path: str | None, *, dsn: str | None = None, schema: str = "public",
                since: float | None = None, requests: str,
                attempts: str | None = None) -> tuple[list[tuple], list[tuple]]:
    """Plain columns of the record, in one read-only snapshot: ``requests`` (column names,
    comma-separated) of the top-level requests and ``attempts`` of every attempt (sub-requests'
    included) created at or after ``since``; from the SQLite log at ``path``, or from PostgreSQL
    (``dsn``, ``schema``) when ``dsn`` is given. A JSON column (``decision``) comes back as text
    from SQLite and decoded from PostgreSQL: read it with :func:`json_column`. A SQLite log
    written before attempts were recorded gives no attempts."""
    window = (since if since is not None else -math.inf,)
    top = f"SELECT {requests} FROM requests WHERE created_at >= {{}} AND parent_id IS NULL"
    every = f"SELECT {attempts} FROM attempts WHERE created_at >= {{}}" if attempts else None
    if dsn is not None:
        from .record_postgres import snapshot

        with snapshot(dsn, schema) as conn:
            found = conn.execute(top.format("%s"), window).fetchall()
            tried = conn.execute(every.format("%s"), window).fetchall() if every else []
        return found, tried
    conn = open_log(path or "")
    try:
        conn.execute("BEGIN")  # one snapshot for both queries, while the gateway writes
        found = conn.execute(top.format("?"), window).fetchall()
        tables = {name for (name,) in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table'")}
        tried = conn.execute(every.format("?"), window).fetchall() \
            if every and "attempts" in tables else []
    except sqlite3.DatabaseError as exc:
        raise ConfigError(f"{path!r}: cannot read the request log ({exc})") from None
    finally:
        conn.close()
    return found, tried


def location(path: str | None, dsn: str | None, schema: str) -> str:
    """How messages name the record: the SQLite path, or the masked DSN and the schema."""
    if dsn is None:
        return path or "the request log"
    from .record_postgres import masked

    return f"{masked(dsn)} (schema {schema})"


def timeline(path: str | None, *, dsn: str | None = None, schema: str = "public",
             since: float | None = None, until: float | None = None,
             bucket_s: int | None = None) -> dict[str, Any]:
    """The log over time: spend and calls by model, and requests and their latency percentiles,
    per bucket. Read like :func:`summarize` (``path``, or ``dsn`` and ``schema``); see
    :func:`timeline_rows` for the figures."""
    requests, attempts = read_record(path, dsn=dsn, schema=schema, since=since,
                                     requests="created_at, latency_ms",
                                     attempts="created_at, model, cost_usd")
    return timeline_rows(requests, attempts, where=location(path, dsn, schema), since=since,
                         until=until, bucket_s=bucket_s)


def timeline_rows(requests: list[Any], attempts: list[Any], *, where: str,
                  since: float | None = None, until: float | None = None,
                  bucket_s: int | None = None) -> dict[str, Any]:
    """:func:`timeline` from rows already read: ``requests`` as (created_at, latency_ms) of
    top-level requests, ``attempts`` as (created_at, model, cost_usd) of every attempt.

    The span runs from ``since`` (else the first row) to ``until`` (else the last row), in
    buckets of ``bucket_s`` seconds (else :func:`bucket_for` the span). ``starts`` holds each
    bucket's start (Unix time); per bucket: ``requests`` (top-level, counted once each),
    ``latency_ms`` p50/p95/p99 of their end-to-end latency (nearest rank; None where a bucket has
    none), and in ``by_model`` each model's ``spend_usd`` and ``attempts`` (each call credited to
    its own model, as in :func:`summarize`'s ``by_model``), models by total spend, then calls.
    Empty lists when there are no rows."""
    times = [float(t) for t, *_ in (*requests, *attempts)]
    base = {"path": where, "since": since, "until": until, "bucket_s": bucket_s, "starts": [],
            "requests": [], "latency_ms": {"p50": [], "p95": [], "p99": []}, "by_model": []}
    if not times:
        return base
    start = since if since is not None else min(times)
    end = max(until if until is not None else max(times), max(times))
    size = bucket_s or bucket_for(start, end)
    first = math.floor(start / size)
    count = math.floor(end / size) - first + 1

    def slot(at: float) -> int:
        return min(max(math.floor(float(at) / size) - first, 0), count - 1)

    latencies: list[list[float]] = [[] for _ in range(count)]
    per_request = [0] * count
    for created, latency in requests:
        n = slot(created)
        per_request[n] += 1
        if latency is not None:
            latencies[n].append(float(latency))
    spend: dict[str, list[float]] = {}
    calls: dict[str, list[int]] = {}
    for created, model, cost in attempts:
        name = model or "(none)"
        n = slot(created)
        spend.setdefault(name, [0.0] * count)[n] += cost or 0.0
        calls.setdefault(name, [0] * count)[n] += 1
    for found in latencies:
        found.sort()
    by_model = [{"model": name, "spend_usd": [round(v, 10) for v in spend[name]],
                 "attempts": calls[name]} for name in spend]
    by_model.sort(key=lambda m: (-sum(m["spend_usd"]), -sum(m["attempts"]), m["model"]))
    return {**base, "bucket_s": size, "starts": [(first + i) * size for i in range(count)],
            "requests": per_request,
            "latency_ms": {f"p{p}": [_ms(percentile(found, p)) for found in latencies]
                           for p in (50, 95, 99)},
            "by_model": by_model}


def record_arguments(parser: argparse.ArgumentParser) -> None:
    """``--db``, ``--dsn`` and ``--schema``: where a command reads the record instead of where the
    config's ``[record]`` says (:func:`record_location`)."""
    parser.add_argument("--db", help="SQLite record file (default: record.path)")
    parser.add_argument("--dsn", help="PostgreSQL record to read instead (default: record.dsn "
                        "when record.backend is postgres)")
    parser.add_argument("--schema", help="its schema (default: record.schema, public)")


def record_location(args: argparse.Namespace) -> tuple[str | None, str | None, str]:
    """Where a command reads the record: ``(path, None, "")`` for SQLite or ``(None, dsn,
    schema)`` for PostgreSQL, from ``--db``, or ``--dsn`` and ``--schema``, else the config's
    ``[record]`` (``--config``, ``TURNOUT_CONFIG``, the embedded defaults)."""
    path, dsn, schema = args.db, getattr(args, "dsn", None), getattr(args, "schema", None)
    if path is None and dsn is None:
        settings = _record_settings(args.config)
        if settings.backend == "postgres":
            dsn, schema = settings.dsn, schema or settings.schema
        else:
            path = settings.path
    elif dsn is not None:
        dsn = _checked_dsn(dsn)
    return (None, dsn, schema or "public") if dsn is not None else (path, None, "")


def json_column(value: Any) -> Any:
    """A JSON column as read: SQLite gives text, PostgreSQL decoded values (None when the text
    is not JSON)."""
    if isinstance(value, (str, bytes)):
        try:
            return orjson.loads(value)
        except orjson.JSONDecodeError:
            return None
    return value


def _record_settings(config_path: str | None) -> Any:
    """The config's ``[record]`` table, validated; secrets elsewhere in it need not be set."""
    from pydantic import ValidationError

    from .sqlite_recorder import RecordSettings

    config = config_module.load(config_path, lenient_env=True, references=False)
    try:
        return RecordSettings.model_validate(config.section("record") or {})
    except ValidationError as exc:
        found = "; ".join(f"record.{'.'.join(map(str, e['loc']))}: {e['msg']}"
                          for e in exc.errors())
        raise ConfigError(f"{config.source or 'config'}: {found}; fix [record] (turnout config check "
                          "lists every problem)") from None


def _checked_dsn(dsn: str) -> str:
    """``--dsn`` once it parses, its password then masked wherever it would show."""
    from .record_postgres import check_dsn

    try:
        return check_dsn(dsn)
    except ValueError as exc:
        raise ConfigError(f"--dsn: {exc}") from None
