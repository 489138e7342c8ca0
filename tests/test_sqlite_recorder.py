"""The SQLite request record: rows from real contexts, batched writes, redaction, no doubles."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from types import SimpleNamespace

import anyio
import pytest
import structlog

from turnout.kernel.errors import ProviderTimeout
from turnout.kernel.types import Attempt, ChatRequest, Completion, Context, Usage, Verdict
from turnout.plugins import sqlite_recorder
from turnout.plugins.sqlite_recorder import (
    ATTEMPT_COLUMNS,
    COLUMNS,
    RecordSettings,
    SQLiteRecorder,
)
from turnout.plugins.stats import summarize

PROMPT = "PRIVATE-PROMPT-do-not-store"
ANSWER = "PRIVATE-ANSWER-do-not-store"
SECRET = "Bearer sk-abcdefgh12345678"


def kernel_for(path: Path, **record) -> SimpleNamespace:
    """The one thing the recorder reads from the kernel: its settings."""
    settings = RecordSettings(path=str(path), **record)
    return SimpleNamespace(plugin_settings=lambda plugin: settings)


def make_context(i: int, status: str, latency_ms: float) -> Context:
    """A finished request as the kernel leaves it, with one or two attempts."""
    ctx = Context(request=ChatRequest(model="auto", stream=i % 2 == 1,
                                      messages=[{"role": "user", "content": PROMPT}]),
                  client="team-a" if i % 4 else "team-b", route="general",
                  labels={"task": "chat", "prompt_tokens": 9},
                  decision={"route": "general", "plan": ["fast", "strong"]})
    ctx.created_at = 1_700_000_000.0 + i
    ctx.started = 1000.0
    ctx.ended = 1000.0 + latency_ms / 1000
    ctx.upstream_s = latency_ms / 1000 * 0.9
    first = Attempt(model="fast", provider="sim", started=1000.0, latency_s=0.01,
                    usage=Usage(10 + i, 0), cost_usd=0.001)
    ctx.attempts.append(first)
    if status == "ok":
        first.status, first.usage = "ok", Usage(10 + i, 5 + i)
        first.verdicts = [Verdict(ok=True, validator="json")]
        ctx.completion = Completion(content=ANSWER, usage=first.usage, model="fast",
                                    provider="sim", cost_usd=first.cost_usd)
    elif status == "error":
        first.status, first.error = "error", "upstream_timeout: fast did not answer"
        second = Attempt(model="strong", provider="sim", started=1000.2, status="error",
                         error=f"upstream_timeout: {SECRET}", usage=Usage(3, 0), cost_usd=0.002)
        ctx.attempts.append(second)
        ctx.error = ProviderTimeout(f"strong timed out; upstream said {SECRET}",
                                    provider="sim", model="strong")
    else:
        first.status = "streaming"
        ctx.error = anyio.get_cancelled_exc_class()()
    ctx.status = status
    return ctx


def rows(path: Path, table: str = "requests") -> list[dict]:
    conn = sqlite3.connect(path)
    conn.row_factory = sqlite3.Row
    order = "created_at, n" if table == "attempts" else "created_at"
    try:
        return [dict(r) for r in conn.execute(f"SELECT * FROM {table} ORDER BY {order}")]
    finally:
        conn.close()


STATUSES = ("ok", "error", "cancelled")


@pytest.mark.anyio
async def test_records_every_request_once_with_metadata_only(tmp_path: Path) -> None:
    path = tmp_path / "log" / "turnout.db"
    kernel = kernel_for(path)
    recorder = SQLiteRecorder()
    await recorder.startup(kernel)
    contexts = [make_context(i, STATUSES[i % 3], latency_ms=10.0 * (i + 1)) for i in range(200)]
    for ctx in contexts:
        recorder.record(ctx)
    assert recorder.flush()
    # The journal holds every request until a clean shutdown removes it: check it while it is
    # there (the files read at the end below no longer include it).
    journal = path.with_name(path.name + ".journal").read_bytes()
    assert journal.count(b"\n") == 200
    await recorder.shutdown(kernel)

    got = rows(path)
    assert len(got) == 200
    assert [r["request_id"] for r in got] == [c.request_id for c in contexts]
    assert sum(r["input_tokens"] for r in got) == sum(
        a.usage.input_tokens for c in contexts for a in c.attempts)
    assert sum(r["output_tokens"] for r in got) == sum(
        a.usage.output_tokens for c in contexts for a in c.attempts)
    assert sum(r["cost_usd"] for r in got) == pytest.approx(sum(c.spend_usd for c in contexts))
    assert sum(r["attempts"] for r in got) == sum(len(c.attempts) for c in contexts)

    by_status = {s: [r for r in got if r["status"] == s] for s in STATUSES}
    assert {s: len(v) for s, v in by_status.items()} == {"ok": 67, "error": 67, "cancelled": 66}
    assert {r["error_kind"] for r in by_status["ok"]} == {None}
    assert {r["error_kind"] for r in by_status["error"]} == {"upstream_timeout"}
    assert {r["error_kind"] for r in by_status["cancelled"]} == {"cancelled"}
    assert {r["model"] for r in by_status["ok"]} == {"fast"}
    assert {r["model"] for r in by_status["error"]} == {"strong"}, "the last model attempted"

    row = got[4]  # i = 4: an error, streamed = False, client team-b
    ctx = contexts[4]
    assert (row["client"], row["requested"], row["route"], row["provider"], row["stream"],
            row["parent_id"], row["created_at"]) == ("team-b", "auto", "general", "sim", 0, None,
                                                     ctx.created_at)
    assert row["latency_ms"] == pytest.approx(50.0)
    assert row["overhead_ms"] == pytest.approx(5.0)
    assert row["error"] == "strong timed out; upstream said Bearer [REDACTED]"
    decision = json.loads(row["decision"])
    assert decision["plan"] == ["fast", "strong"]
    assert decision["labels"] == {"task": "chat", "prompt_tokens": 9}
    assert [a["model"] for a in decision["attempts"]] == ["fast", "strong"]
    assert decision["attempts"][1]["error"] == "upstream_timeout: Bearer [REDACTED]"

    everything = journal + path.read_bytes() + b"".join(
        p.read_bytes() for p in path.parent.iterdir() if p != path)
    for private in (PROMPT, ANSWER, "sk-abcdefgh12345678"):
        assert private.encode() not in everything
        assert all(private not in str(v) for r in got for v in r.values())


class _Note:
    """An object a plugin might leave in the decision record."""

    def __str__(self) -> str:
        return f"probe used {SECRET}"


@pytest.mark.anyio
async def test_objects_in_the_decision_are_stored_as_redacted_text(tmp_path: Path) -> None:
    path = tmp_path / "obj.db"
    recorder = SQLiteRecorder()
    await recorder.startup(kernel_for(path))
    ctx = make_context(0, "ok", 10)
    ctx.decision.update(note=_Note(), scores={1: 0.5}, headers={"x-api-key": "k-secret-1"})
    recorder.record(ctx)
    await recorder.shutdown(kernel_for(path))
    (row,) = rows(path)
    decision = json.loads(row["decision"])
    assert decision["note"] == "probe used Bearer [REDACTED]"
    assert decision["scores"] == {"1": 0.5}
    assert decision["headers"] == {"x-api-key": "[REDACTED]"}


@pytest.mark.anyio
async def test_sub_requests_keep_their_parent(tmp_path: Path) -> None:
    path = tmp_path / "t.db"
    recorder = SQLiteRecorder()
    await recorder.startup(kernel_for(path))
    parent = make_context(0, "ok", 10)
    child = make_context(1, "ok", 5)
    child.parent = parent
    recorder.record(child)
    recorder.record(parent)
    await recorder.shutdown(kernel_for(path))
    assert {r["request_id"]: r["parent_id"] for r in rows(path)} == {
        parent.request_id: None, child.request_id: parent.request_id}


@pytest.mark.anyio
async def test_the_clients_request_id_is_kept_on_the_top_level_row_only(tmp_path: Path) -> None:
    path = tmp_path / "t.db"
    recorder = SQLiteRecorder()
    await recorder.startup(kernel_for(path))
    parent, child, plain = make_context(0, "ok", 10), make_context(1, "ok", 5), \
        make_context(2, "ok", 5)
    parent.headers = child.headers = {"x-request-id": "lb-" + "7" * 200}
    child.parent = parent
    for ctx in (parent, child, plain):
        recorder.record(ctx)
    await recorder.shutdown(kernel_for(path))
    kept = {r["request_id"]: json.loads(r["decision"]).get("client_request_id")
            for r in rows(path)}
    assert kept == {parent.request_id: ("lb-" + "7" * 200)[:128], child.request_id: None,
                    plain.request_id: None}


@pytest.mark.anyio
async def test_a_second_record_of_the_same_request_is_an_error_not_a_double(tmp_path) -> None:
    path = tmp_path / "dup.db"
    kernel = kernel_for(path)
    recorder = SQLiteRecorder()
    await recorder.startup(kernel)
    ctx, other = make_context(0, "ok", 10), make_context(1, "error", 20)
    with structlog.testing.capture_logs() as logs:
        recorder.record(ctx)
        recorder.record(ctx)
        recorder.record(other)
        await recorder.shutdown(kernel)
    assert sorted(r["request_id"] for r in rows(path)) == sorted([ctx.request_id,
                                                                  other.request_id])
    failures = [e for e in logs if e["event"] == "record_write_failed"]
    assert len(failures) == 1
    assert failures[0]["request_id"] == ctx.request_id
    assert failures[0]["log_level"] == "error"


@pytest.mark.anyio
async def test_records_after_shutdown_are_reported_not_silently_lost(tmp_path: Path) -> None:
    path = tmp_path / "late.db"
    recorder = SQLiteRecorder()
    await recorder.startup(kernel_for(path))
    writer = recorder.writer
    await recorder.shutdown(kernel_for(path))
    late = make_context(0, "ok", 10)
    with structlog.testing.capture_logs() as logs:
        assert writer.put(late) is False
    assert [(e["event"], e["request_id"]) for e in logs] == [("record_dropped", late.request_id)]
    assert rows(path) == []


@pytest.mark.anyio
async def test_disabled_record_writes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "off.db"
    recorder = SQLiteRecorder()
    await recorder.startup(kernel_for(path, enabled=False))
    recorder.record(make_context(0, "ok", 10))
    await recorder.shutdown(kernel_for(path, enabled=False))
    assert recorder.writer is None
    assert not path.exists()
    assert list(tmp_path.iterdir()) == [], "no journal either"


@pytest.mark.anyio
async def test_flush_waits_for_every_row_recorded_before_it(tmp_path: Path) -> None:
    path = tmp_path / "flush.db"
    kernel = kernel_for(path)
    recorder = SQLiteRecorder()
    await recorder.startup(kernel)
    try:
        for i in range(50):
            recorder.record(make_context(i, "ok", 10))
        assert recorder.flush()
        assert len(rows(path)) == 50
    finally:
        await recorder.shutdown(kernel)


@pytest.mark.anyio
async def test_file_is_wal_and_indexed_and_summary_percentiles(tmp_path: Path) -> None:
    path = tmp_path / "p.db"
    kernel = kernel_for(path)
    recorder = SQLiteRecorder()
    await recorder.startup(kernel)
    latencies = [float(v) for v in range(1, 101)]          # 1..100 ms, all on model "fast"
    for i, latency in enumerate(reversed(latencies)):
        recorder.record(make_context(i * 3, "ok", latency))
    await recorder.shutdown(kernel)

    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        indexes = {r[1] for r in conn.execute("PRAGMA index_list(requests)")}
        columns = [r[1] for r in conn.execute("PRAGMA table_info(requests)")]
        attempt_indexes = {r[1] for r in conn.execute("PRAGMA index_list(attempts)")}
        attempt_columns = [r[1] for r in conn.execute("PRAGMA table_info(attempts)")]
        attempt_key = [r[1] for r in sorted(conn.execute("PRAGMA table_info(attempts)"),
                                             key=lambda r: r[5]) if r[5]]
    finally:
        conn.close()
    assert {"requests_created_at", "requests_model"} <= indexes
    assert tuple(columns) == COLUMNS
    assert "attempts_created_at" in attempt_indexes
    assert tuple(attempt_columns) == ATTEMPT_COLUMNS
    assert attempt_key == ["request_id", "n"]

    summary = summarize(str(path))
    assert summary["latency_ms"] == {"p50": 50.0, "p95": 95.0, "p99": 99.0}
    (general,) = summary["by_route"]
    assert (general["route"], general["requests"], general["success_rate"]) == ("general", 100,
                                                                               1.0)
    assert (general["p50_ms"], general["p95_ms"]) == (50.0, 95.0)
    # Per attempt: every request made one 10 ms call to "fast".
    (fast,) = summary["by_model"]
    assert (fast["model"], fast["attempts"], fast["success_rate"]) == ("fast", 100, 1.0)
    assert (fast["p50_ms"], fast["p95_ms"], fast["p99_ms"]) == (10.0, 10.0, 10.0)
    assert summary["overhead_ms"] == {"p50": pytest.approx(5.0), "p99": pytest.approx(9.9)}


@pytest.mark.anyio
async def test_a_row_that_cannot_be_built_is_logged_and_the_rest_written(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "bad.db"
    bad = make_context(1, "ok", 10)
    real = sqlite_recorder.context_row

    def row(ctx):
        if ctx is bad:
            raise ValueError("unencodable")
        return real(ctx)

    monkeypatch.setattr(sqlite_recorder, "context_row", row)
    recorder = SQLiteRecorder()
    await recorder.startup(kernel_for(path))
    with structlog.testing.capture_logs() as logs:
        for ctx in (make_context(0, "ok", 10), bad, make_context(2, "ok", 10)):
            recorder.record(ctx)
        assert recorder.flush()
    await recorder.shutdown(kernel_for(path))
    assert len(rows(path)) == 2
    assert any(e["event"] == "record_write_failed" and e["request_id"] == bad.request_id
               and "unencodable" in e["error"] for e in logs)


@pytest.mark.anyio
async def test_every_attempt_is_a_row_with_its_error_kind_only(tmp_path: Path) -> None:
    path = tmp_path / "attempts.db"
    recorder = SQLiteRecorder()
    await recorder.startup(kernel_for(path))
    contexts = [make_context(i, STATUSES[i % 3], latency_ms=10.0) for i in range(600)]
    for ctx in contexts:
        recorder.record(ctx)
    await recorder.shutdown(kernel_for(path))

    got = rows(path, "attempts")
    assert len(got) == sum(len(c.attempts) for c in contexts), "more than one INSERT's worth"
    assert sum(r["attempts"] for r in rows(path)) == len(got)
    failed = contexts[1]  # an error: a timeout on "fast", then one on "strong"
    assert [r for r in got if r["request_id"] == failed.request_id] == [
        {"request_id": failed.request_id, "n": 0, "created_at": failed.created_at,
         "model": "fast", "provider": "sim", "status": "error", "error": "upstream_timeout",
         "latency_ms": pytest.approx(10.0), "input_tokens": 11, "output_tokens": 0,
         "cost_usd": pytest.approx(0.001)},
        {"request_id": failed.request_id, "n": 1, "created_at": failed.created_at,
         "model": "strong", "provider": "sim", "status": "error", "error": "upstream_timeout",
         "latency_ms": 0.0, "input_tokens": 3, "output_tokens": 0,
         "cost_usd": pytest.approx(0.002)}]
    assert {r["status"] for r in got if r["request_id"] == contexts[2].request_id} == {
        "streaming"}, "as the context left it"
    assert {r["error"] for r in got} == {None, "upstream_timeout"}
    assert b"sk-abcdefgh12345678" not in path.read_bytes()


@pytest.mark.anyio
async def test_a_request_that_cannot_be_written_leaves_no_attempt_rows(tmp_path: Path) -> None:
    path = tmp_path / "orphans.db"
    kernel = kernel_for(path)
    recorder = SQLiteRecorder()
    await recorder.startup(kernel)
    good, twice, other = (make_context(i, "error", 10) for i in range(3))
    broken = make_context(3, "error", 10)
    broken.status = None  # requests.status is NOT NULL: its row fails, its attempts would not
    with structlog.testing.capture_logs() as logs:
        for ctx in (good, twice, broken, twice, other):  # one batch: it falls back to one by one
            recorder.record(ctx)
        await recorder.shutdown(kernel)

    written = {good.request_id, twice.request_id, other.request_id}
    assert {r["request_id"] for r in rows(path)} == written
    got = rows(path, "attempts")
    assert len(got) == 6, "two attempts each, no doubles"
    assert {r["request_id"] for r in got} == written, "no attempts without their request"
    failures = {e["request_id"]: e["error"] for e in logs if e["event"] == "record_write_failed"}
    assert failures.keys() == {broken.request_id, twice.request_id}
    assert failures[twice.request_id] == "a request with this id is already recorded"
    assert "NOT NULL constraint failed: requests.status" in failures[broken.request_id]
