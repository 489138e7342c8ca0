"""``turnout stats``: the summary of a request log filled by the recorder, its text report, and
the log over time with its chart (``--png``)."""

from __future__ import annotations

import json
import math
import sqlite3
import struct
from pathlib import Path
from types import SimpleNamespace

import pytest

from turnout.kernel.errors import ConfigError, ProviderUnavailable
from turnout.kernel.types import Attempt, ChatRequest, Completion, Context, Usage
from turnout.plugins.charts import NoData, stats_png
from turnout.plugins.sqlite_recorder import RecordSettings, SQLiteRecorder
from turnout.plugins.stats import (
    bucket_for,
    open_log,
    render_stats,
    summarize,
    timeline,
    timeline_rows,
)

from .fakes import Script, openai_app, serve
from .gateway import running_gateway

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



# --- over time, and the chart (turnout stats --png) ----------------------------------------------


@pytest.mark.anyio
async def test_the_timeline_buckets_spend_calls_and_latency(log_path: str) -> None:
    # TRAFFIC's 25 requests were made one second apart from BASE_TIME: one minute bucket or two.
    drawn = timeline(log_path)
    assert drawn["bucket_s"] == 60
    first = math.floor(BASE_TIME / 60) * 60
    assert drawn["starts"][0] == first
    assert sum(drawn["requests"]) == 25
    by_model = {m["model"]: m for m in drawn["by_model"]}
    assert [m["model"] for m in drawn["by_model"]] == ["large", "small"], "by spend"
    for model, (latencies, _, cost) in TRAFFIC.items():
        assert sum(by_model[model]["attempts"]) == len(latencies)
        assert sum(by_model[model]["spend_usd"]) == pytest.approx(cost * len(latencies))
    # Per bucket, the requests' latency percentiles are those of the requests made in it.
    made = [BASE_TIME + n for n in range(25)]
    every = [v for lat, _, _ in TRAFFIC.values() for v in lat]
    for i, start in enumerate(drawn["starts"]):
        inside = [lat for t, lat in zip(made, every) if start <= t < start + 60]
        assert drawn["requests"][i] == len(inside)
        assert drawn["latency_ms"]["p95"][i] == (pytest.approx(nearest_rank(inside, 95))
                                                 if inside else None)
    # A span given: a day in hours, a week in days; buckets are aligned on their size.
    day = timeline(log_path, since=BASE_TIME - 86400 + 1, until=BASE_TIME + 30)
    assert day["bucket_s"] == 3600 and len(day["starts"]) == 25
    assert sum(day["requests"]) == 25 and day["requests"][-1] == 25
    assert timeline(log_path, since=BASE_TIME - 7 * 86400)["bucket_s"] == 86400
    assert bucket_for(0, 30 * 60) == 300


def test_the_empty_timeline_is_no_chart() -> None:
    empty = timeline_rows([], [], where="nowhere.db", since=BASE_TIME)
    assert empty["starts"] == [] and empty["by_model"] == []
    with pytest.raises(NoData, match="no requests recorded in nowhere.db in that span"):
        stats_png(empty)


PNG = b"\x89PNG\r\n\x1a\n"


def png_size(data: bytes) -> tuple[int, int]:
    """Width and height from a PNG's IHDR chunk."""
    assert data.startswith(PNG) and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def gateway_log(tmp_path: Path, traffic: list[tuple[str, str]]) -> Path:
    """A request log filled by a real gateway answering ``traffic`` (model, prompt) through a
    fake OpenAI upstream; two priced models."""
    key = "sk-stats"
    with serve(openai_app(Script(), api_key=key)) as url:
        config = {"providers": {"up": {"kind": "openai", "base_url": url + "/v1", "api_key": key}},
                  "models": {"mini": {"provider": "up", "input_price": 1, "output_price": 2},
                             "maxi": {"provider": "up", "input_price": 10, "output_price": 30}}}
        with running_gateway(config, tmp_path) as gw:
            client = gw.client(timeout=20)
            for model, prompt in traffic:
                client.chat.completions.create(model=model,
                                               messages=[{"role": "user", "content": prompt}])
            gw.kernel.plugins.get("record").flush()
            return gw.db


def test_stats_png_draws_the_log(tmp_path: Path, capsys) -> None:
    from turnout.adapters.cli import main

    one = gateway_log(tmp_path / "one", [("mini", "hello"), ("maxi", "What is 2 + 2?")])
    two = gateway_log(tmp_path / "two", [("maxi", f"Question {n}?") for n in range(4)])
    capsys.readouterr()  # the gateways' own log lines
    drawn = []
    for db in (one, two):
        out = db.with_suffix(".png")
        assert main(["stats", "--db", str(db), "--png", str(out)]) == 0
        said = capsys.readouterr()
        assert "Per attempt, by model" in said.out, "the text report is printed as before"
        assert f"chart written to {out}" in said.err
        drawn.append(out.read_bytes())
    assert all(png_size(data) == (900, 640) for data in drawn)
    assert drawn[0] != drawn[1], "two logs, two charts"
    # The file is the shared chart function's drawing of the log's timeline.
    assert drawn[0] == stats_png(timeline(str(one)),
                                 title=f"Requests in {one}, the whole log")

    assert main(["stats", "--db", str(one), "--json", "--since", "1h", "--png",
                 str(tmp_path / "hour.png")]) == 0
    said = capsys.readouterr()
    assert json.loads(said.out)["requests"] == 2, "stdout stays JSON"
    assert (tmp_path / "hour.png").read_bytes().startswith(PNG)


def test_stats_png_of_an_empty_log_says_so(tmp_path: Path, capsys) -> None:
    from turnout.adapters.cli import main

    empty = gateway_log(tmp_path, [])
    capsys.readouterr()  # the gateway's own log lines
    out = tmp_path / "empty.png"
    assert main(["stats", "--db", str(empty), "--png", str(out)]) == 1
    said = capsys.readouterr()
    assert said.out.startswith("No requests recorded in")
    assert f"no chart drawn: no requests recorded in {empty}" in said.err
    assert not out.exists()
