"""``turnout stats``: the summary of a request log filled by the recorder, and its text report."""

from __future__ import annotations

import math
import sqlite3
from pathlib import Path
from types import SimpleNamespace

import pytest

from turnout.kernel.errors import ConfigError, ProviderUnavailable
from turnout.kernel.types import Attempt, ChatRequest, Completion, Context, Usage
from turnout.plugins.sqlite_recorder import RecordSettings, SQLiteRecorder
from turnout.plugins.stats import open_log, render_stats, summarize

# model -> (latencies in ms, how many of them failed, cost per request)
TRAFFIC = {
    "small": ([float(v) for v in range(10, 210, 10)], 2, 0.0001),   # 20 requests
    "large": ([250.0, 400.0, 900.0, 1200.0, 15000.0], 1, 0.02),     # 5 requests
}
BASE_TIME = 1_700_000_000.0


def nearest_rank(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[math.ceil(p / 100 * len(ordered)) - 1]


def finished(model: str, latency_ms: float, failed: bool, cost: float, n: int) -> Context:
    ctx = Context(request=ChatRequest(model=model, messages=[{"role": "user", "content": "hi"}]),
                  route=None, client="ops")
    ctx.created_at = BASE_TIME + n
    ctx.started, ctx.ended = 50.0, 50.0 + latency_ms / 1000
    ctx.upstream_s = (latency_ms - 2.0) / 1000
    attempt = Attempt(model=model, provider="sim", started=50.0, latency_s=latency_ms / 1000,
                      usage=Usage(100, 0 if failed else 20), cost_usd=cost)
    ctx.attempts.append(attempt)
    if failed:
        attempt.status, attempt.error = "error", "upstream_unavailable: 503"
        ctx.error, ctx.status = ProviderUnavailable("503 from upstream"), "error"
    else:
        attempt.status = "ok"
        ctx.completion = Completion(content="x", usage=attempt.usage, model=model,
                                    provider="sim", cost_usd=cost)
        ctx.status = "ok"
    return ctx


@pytest.fixture
async def log_path(tmp_path: Path) -> str:
    """A request log with the TRAFFIC above, written by the real recorder."""
    path = tmp_path / "stats.db"
    settings = RecordSettings(path=str(path))
    kernel = SimpleNamespace(plugin_settings=lambda plugin: settings)
    recorder = SQLiteRecorder()
    await recorder.startup(kernel)
    n = 0
    for model, (latencies, failures, cost) in TRAFFIC.items():
        for i, latency in enumerate(latencies):
            recorder.record(finished(model, latency, i < failures, cost, n))
            n += 1
    await recorder.shutdown(kernel)
    return str(path)


@pytest.mark.anyio
async def test_summary_totals_and_per_model_figures(log_path: str) -> None:
    summary = summarize(log_path)
    total = sum(len(lat) for lat, _, _ in TRAFFIC.values())
    failed = sum(f for _, f, _ in TRAFFIC.values())
    assert (summary["requests"], summary["ok"], summary["errors"]) == (total, total - failed,
                                                                       failed)
    assert summary["spend_usd"] == pytest.approx(
        sum(len(lat) * cost for lat, _, cost in TRAFFIC.values()))
    # One attempt per request here, so the per-attempt figures of a model are its requests'.
    assert summary["attempts"] == total
    assert [m["model"] for m in summary["by_model"]] == ["small", "large"], "by attempts, desc"
    for entry in summary["by_model"]:
        latencies, failures, cost = TRAFFIC[entry["model"]]
        assert (entry["provider"], entry["attempts"]) == ("sim", len(latencies))
        assert entry["ok"] == len(latencies) - failures
        assert entry["success_rate"] == pytest.approx(1 - failures / len(latencies))
        assert entry["spend_usd"] == pytest.approx(cost * len(latencies))
        assert entry["input_tokens"] == 100 * len(latencies)
        assert entry["output_tokens"] == 20 * (len(latencies) - failures)
        for p in (50, 95, 99):
            assert entry[f"p{p}_ms"] == pytest.approx(nearest_rank(latencies, p))
    every = [v for lat, _, _ in TRAFFIC.values() for v in lat]
    assert summary["latency_ms"] == {f"p{p}": pytest.approx(nearest_rank(every, p))
                                     for p in (50, 95, 99)}
    assert summary["overhead_ms"] == {"p50": pytest.approx(2.0), "p99": pytest.approx(2.0)}
    (no_route,) = summary["by_route"]
    assert no_route == {"route": None, "requests": total, "ok": total - failed,
                        "success_rate": pytest.approx((total - failed) / total),
                        "spend_usd": pytest.approx(summary["spend_usd"]),
                        "p50_ms": pytest.approx(nearest_rank(every, 50)),
                        "p95_ms": pytest.approx(nearest_rank(every, 95))}


@pytest.mark.anyio
async def test_since_keeps_only_recent_requests(log_path: str) -> None:
    recent = summarize(log_path, since=BASE_TIME + 20)   # the 5 "large" requests
    assert recent["requests"] == 5
    assert [m["model"] for m in recent["by_model"]] == ["large"]
    assert summarize(log_path, since=BASE_TIME + 10_000)["requests"] == 0


@pytest.mark.anyio
async def test_render_stats_is_a_readable_table(log_path: str) -> None:
    text = render_stats(summarize(log_path))
    lines = text.splitlines()
    assert "25 requests: 22 ok, 3 errors" in text
    header = next(line for line in lines if line.startswith("model"))
    small = next(line for line in lines if line.startswith("small"))
    large = next(line for line in lines if line.startswith("large"))
    assert len(header.split()) >= 9
    assert "90.0%" in small and "80.0%" in large
    assert "15.00 s" in large, "p99 of the large model, in seconds"
    assert lines.index(small) < lines.index(large)
    empty = summarize(log_path, since=BASE_TIME + 10_000)
    assert render_stats(empty).startswith("No requests recorded in")


@pytest.mark.anyio
async def test_the_log_is_opened_read_only(log_path: str) -> None:
    conn = open_log(log_path)
    try:
        with pytest.raises(sqlite3.OperationalError, match="readonly"):
            conn.execute("DELETE FROM requests")
    finally:
        conn.close()


def test_missing_log_says_how_to_point_at_another(tmp_path: Path) -> None:
    missing = str(tmp_path / "nowhere.db")
    with pytest.raises(ConfigError) as info:
        summarize(missing)
    message = str(info.value)
    assert "no requests have been recorded" in message
    assert missing in message
    assert "--db" in message
    assert not Path(missing).exists(), "looking must not create the file"


def test_a_file_that_is_not_a_request_log_is_refused(tmp_path: Path) -> None:
    other = tmp_path / "other.db"
    sqlite3.connect(other).execute("CREATE TABLE t (x)").connection.close()
    with pytest.raises(ConfigError, match="not a Turnout request log"):
        summarize(str(other))


# --- per request and per attempt ---------------------------------------------------------------


def request(model: str, route: str | None, latency_ms: float, *calls: tuple) -> Context:
    """A finished request whose attempts are ``calls``: (model, latency ms, error or None, cost);
    ok when its last call succeeded, ``model`` being what the client asked for."""
    ctx = Context(request=ChatRequest(model=model, messages=[{"role": "user", "content": "hi"}]),
                  route=route, client="ops")
    ctx.started, ctx.ended = 50.0, 50.0 + latency_ms / 1000
    ctx.upstream_s = sum(c[1] for c in calls) / 1000
    for name, ms, error, cost in calls:
        attempt = Attempt(model=name, provider=f"{name}-co", started=50.0, latency_s=ms / 1000,
                          usage=Usage(100, 0 if error else 30), cost_usd=cost,
                          status="error" if error else "ok", error=error)
        ctx.attempts.append(attempt)
    last = ctx.attempts[-1]
    if last.error:
        ctx.error, ctx.status = ProviderUnavailable("503 from upstream"), "error"
    else:
        ctx.completion = Completion(content="x", usage=last.usage, model=last.model,
                                    provider=last.provider, cost_usd=last.cost_usd)
        ctx.status = "ok"
    return ctx


async def write_log(path: Path, *contexts: Context) -> str:
    """``contexts`` recorded through the real recorder, in that order."""
    settings = RecordSettings(path=str(path))
    kernel = SimpleNamespace(plugin_settings=lambda plugin: settings)
    recorder = SQLiteRecorder()
    await recorder.startup(kernel)
    for ctx in contexts:
        recorder.record(ctx)
    await recorder.shutdown(kernel)
    return str(path)


@pytest.mark.anyio
async def test_a_fallback_is_credited_per_attempt_to_each_model_and_once_per_request(
        tmp_path: Path) -> None:
    ctx = request("auto", "general", 520.0,
                  ("a", 300.0, "upstream_unavailable: 503 from upstream", 0.001),
                  ("b", 200.0, None, 0.003))
    summary = summarize(await write_log(tmp_path / "fallback.db", ctx))

    # Per request: one request, answered, costing both calls.
    assert (summary["requests"], summary["ok"], summary["errors"]) == (1, 1, 0)
    assert summary["spend_usd"] == pytest.approx(0.004)
    assert summary["latency_ms"]["p50"] == pytest.approx(520.0)
    assert summary["by_route"] == [
        {"route": "general", "requests": 1, "ok": 1, "success_rate": 1.0,
         "spend_usd": pytest.approx(0.004), "p50_ms": pytest.approx(520.0),
         "p95_ms": pytest.approx(520.0)}]

    # Per attempt: A failed once, B succeeded once; each has its own latency, spend and tokens.
    assert summary["attempts"] == 2
    a, b = summary["by_model"]
    assert a == {"model": "a", "provider": "a-co", "attempts": 1, "ok": 0, "success_rate": 0.0,
                 "spend_usd": pytest.approx(0.001), "p50_ms": pytest.approx(300.0),
                 "p95_ms": pytest.approx(300.0), "p99_ms": pytest.approx(300.0),
                 "input_tokens": 100, "output_tokens": 0}
    assert b == {"model": "b", "provider": "b-co", "attempts": 1, "ok": 1, "success_rate": 1.0,
                 "spend_usd": pytest.approx(0.003), "p50_ms": pytest.approx(200.0),
                 "p95_ms": pytest.approx(200.0), "p99_ms": pytest.approx(200.0),
                 "input_tokens": 100, "output_tokens": 30}

    lines = render_stats(summary).splitlines()
    per_request, per_attempt = lines.index("Per request"), lines.index(
        "Per attempt, by model (2 attempts)")
    assert "1 requests: 1 ok, 0 errors, 0 cancelled; spend $0.004000" in lines[per_request + 1]
    route = next(line for line in lines if line.startswith("general"))
    assert route.split() == ["general", "1", "100.0%", "0.004000", "520.0", "ms", "520.0", "ms"]
    row_a = next(line for line in lines if line.startswith("a "))
    row_b = next(line for line in lines if line.startswith("b "))
    assert per_request < lines.index(route) < per_attempt < lines.index(row_a) < lines.index(row_b)
    assert row_a.split()[1:4] == ["1", "0.0%", "0.001000"] and "300.0 ms" in row_a
    assert row_b.split()[1:4] == ["1", "100.0%", "0.003000"] and "200.0 ms" in row_b
    header = next(line for line in lines if line.startswith("model"))
    assert header.split()[:2] == ["model", "attempts"]
    assert len(header) == len(row_a), "one width per column, numbers right-aligned"


@pytest.mark.anyio
async def test_sub_requests_are_not_requests_again_but_their_attempts_count(
        tmp_path: Path) -> None:
    parent = request("auto", "panel", 900.0, ("judge", 100.0, None, 0.002))
    children = [request("auto", "member", 400.0, ("a", 300.0, None, 0.01)),
                request("auto", "member", 500.0, ("b", 450.0, "upstream_timeout: slow", 0.0),
                        ("c", 40.0, None, 0.02))]
    for child in children:
        child.parent = parent
    # Sub-requests end (and are recorded) before their parent.
    summary = summarize(await write_log(tmp_path / "panel.db", *children, parent))

    assert (summary["requests"], summary["ok"], summary["errors"]) == (1, 1, 0)
    assert summary["spend_usd"] == pytest.approx(parent.spend_usd), "the top-level row's spend"
    assert summary["latency_ms"]["p99"] == pytest.approx(900.0)
    assert [(r["route"], r["requests"]) for r in summary["by_route"]] == [("panel", 1)]

    assert summary["attempts"] == 4, "the parent's own call and its sub-requests' three"
    assert {m["model"]: (m["attempts"], m["ok"], m["spend_usd"]) for m in summary["by_model"]} \
        == {"judge": (1, 1, pytest.approx(0.002)), "a": (1, 1, pytest.approx(0.01)),
            "b": (1, 0, 0.0), "c": (1, 1, pytest.approx(0.02))}


OLD_SCHEMA = """
CREATE TABLE requests (
    request_id TEXT PRIMARY KEY, parent_id TEXT, created_at REAL NOT NULL, client TEXT,
    requested TEXT, route TEXT, model TEXT, provider TEXT, status TEXT NOT NULL,
    error_kind TEXT, error TEXT, attempts INTEGER NOT NULL DEFAULT 0,
    input_tokens INTEGER NOT NULL DEFAULT 0, output_tokens INTEGER NOT NULL DEFAULT 0,
    cost_usd REAL NOT NULL DEFAULT 0, latency_ms REAL, overhead_ms REAL,
    stream INTEGER NOT NULL DEFAULT 0, decision TEXT);
CREATE INDEX requests_created_at ON requests (created_at);
CREATE INDEX requests_model ON requests (model);
"""
"""The request log as the version before per-attempt rows wrote it."""


@pytest.mark.anyio
async def test_a_log_from_before_attempts_were_recorded_still_summarizes(
        tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    conn = sqlite3.connect(path)
    with conn:
        conn.executescript(OLD_SCHEMA)
        conn.executemany(
            "INSERT INTO requests (request_id, created_at, route, model, status, attempts, "
            "cost_usd, latency_ms, overhead_ms) VALUES (?, ?, 'general', 'b', ?, 2, 0.5, ?, 1)",
            [("old-1", BASE_TIME, "ok", 100.0), ("old-2", BASE_TIME + 1, "error", 300.0)])
    conn.close()

    old = summarize(str(path))
    assert (old["requests"], old["ok"], old["errors"], old["spend_usd"]) == (2, 1, 1, 1.0)
    assert old["latency_ms"]["p99"] == 300.0
    assert [(r["route"], r["requests"]) for r in old["by_route"]] == [("general", 2)]
    assert (old["attempts"], old["by_model"]) == (0, [])
    text = render_stats(old)
    assert "2 requests: 1 ok, 1 errors" in text
    assert "no per-attempt data in this log" in text

    # The new writer adds the attempts table to the old file and keeps its rows.
    new = request("auto", "general", 520.0, ("a", 300.0, "upstream_unavailable: 503", 0.001),
                  ("b", 200.0, None, 0.003))
    new.created_at = BASE_TIME + 2
    mixed = summarize(await write_log(path, new))
    assert (mixed["requests"], mixed["attempts"]) == (3, 2)
    assert [m["model"] for m in mixed["by_model"]] == ["a", "b"]

