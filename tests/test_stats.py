"""``turnout stats``: the summary of a request log filled by the recorder, and its text report."""

from __future__ import annotations

import math
import sqlite3
from pathlib import Path
from types import SimpleNamespace

import pytest

from turnout.kernel.config import parse
from turnout.kernel.errors import ConfigError, ProviderUnavailable
from turnout.kernel.types import Attempt, ChatRequest, Completion, Context, Usage
from turnout.plugins.sqlite_recorder import SQLiteRecorder, open_log, render_stats, summarize

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
    kernel = SimpleNamespace(config=parse({"record": {"path": str(path)}}, source="test"))
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
    assert [m["model"] for m in summary["by_model"]] == ["small", "large"], "by requests, desc"
    for entry in summary["by_model"]:
        latencies, failures, cost = TRAFFIC[entry["model"]]
        assert entry["requests"] == len(latencies)
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
