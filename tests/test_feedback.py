"""Feedback on answers: ``Kernel.feedback``, the ``feedback`` hook, ``POST /v1/feedback``, the
``feedback`` rows in SQLite and PostgreSQL (journaled, batched and replayed like request rows),
and what ``turnout stats`` shows of them."""

from __future__ import annotations

import hashlib
import json
import math
import signal
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import httpx
import orjson
import psycopg
import pytest
import structlog
from psycopg import sql

from turnout.adapters.cli import main
from turnout.kernel import errors, hookimpl
from turnout.kernel.types import FEEDBACK_COMMENT_MAX_CHARS, Feedback
from turnout.plugins import record_postgres
from turnout.plugins.record_journal import FeedbackRecord, Journal, encode, read_segment
from turnout.plugins.record_postgres import MIGRATIONS, PostgresSink, connect, migrate
from turnout.plugins.sqlite_recorder import (
    ATTEMPT_COLUMNS,
    COLUMNS,
    FEEDBACK_COLUMNS,
    RecordSettings,
    SQLiteRecorder,
    attempt_rows,
    context_row,
)
from turnout.plugins.stats import render_stats, summarize, summarize_postgres

from .gateway import running_gateway
from .support import ask, kernel_for
from .test_record_postgres import fresh_schema, server_dsn
from .test_sqlite_recorder import SECRET, STATUSES, make_context, rows

ROOT = Path(__file__).resolve().parent.parent
KEY = "tk-feedback-0123456789"


class Scores:
    """Collects what the feedback hook delivers."""

    def __init__(self) -> None:
        self.seen: list[Feedback] = []

    @hookimpl
    def feedback(self, feedback):
        self.seen.append(feedback)


class Broken:
    """A feedback sink that always fails."""

    @hookimpl
    async def feedback(self, feedback):
        raise RuntimeError("the sink is down")


def stand_in(settings: RecordSettings) -> SimpleNamespace:
    """The one thing the recorder reads from the kernel: its settings."""
    return SimpleNamespace(plugin_settings=lambda plugin: settings)


def sqlite_feedback(path: Path) -> list[dict]:
    conn = sqlite3.connect(path)
    conn.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in conn.execute(
            "SELECT * FROM feedback ORDER BY created_at, feedback_id")]
    finally:
        conn.close()


def scored(i: int, request_id: str, score: float, **kw) -> Feedback:
    """A Feedback as the kernel builds it, at a fixed time."""
    return Feedback(request_id=request_id, score=score, created_at=1_700_000_000.0 + i, **kw)


# --- the kernel API and the hook ---------------------------------------------------------------


@pytest.mark.anyio
async def test_the_kernel_checks_feedback_and_names_the_argument_at_fault() -> None:
    kernel, _, _ = kernel_for({"small": ["hi"]}, plugins={"scores": Scores()})
    scores = kernel.plugins.get("scores")
    async with kernel:
        bad = [
            (("", 1), {}, "request_id"), (("   ", 1), {}, "request_id"),
            ((None, 1), {}, "request_id"), ((42, 1), {}, "request_id"),
            (("r" * 129, 1), {}, "request_id"),
            (("req_x", 1.01), {}, "score"), (("req_x", -2), {}, "score"),
            (("req_x", math.nan), {}, "score"), (("req_x", math.inf), {}, "score"),
            (("req_x", True), {}, "score"), (("req_x", "1"), {}, "score"),
            (("req_x", None), {}, "score"),
            (("req_x", 1), {"comment": 5}, "comment"),
            (("req_x", 1), {"source": ""}, "source"), (("req_x", 1), {"source": None}, "source"),
            (("req_x", 1), {"user": ""}, "user"), (("req_x", 1), {"user": "u" * 257}, "user"),
        ]
        for args, kw, param in bad:
            with pytest.raises(errors.BadRequest) as caught:
                await kernel.feedback(*args, **kw)
            assert caught.value.param == param, (args, kw)
            assert caught.value.status == 400
        with pytest.raises(errors.BadRequest, match=r"from -1 \(bad\) through 0 \(neutral\) to "
                                                    r"1 \(good\), not 3"):
            await kernel.feedback("req_x", 3)
        assert scores.seen == [], "nothing bad reaches the hook"

        longest = await kernel.feedback("r" * 128, -1)
        neutral = await kernel.feedback("req_y", 0, comment="", source="slack", user="U123")
        whole = await kernel.feedback("req_z", 1)
    assert (longest.score, longest.source, longest.user, longest.comment) == (-1.0, "api", None,
                                                                              None)
    assert isinstance(longest.score, float)
    assert (neutral.score, neutral.source, neutral.user, neutral.comment) == (0.0, "slack",
                                                                              "U123", None)
    assert scores.seen == [longest, neutral, whole]
    assert len({f.id for f in scores.seen}) == 3 and all(f.id.startswith("fb_")
                                                         for f in scores.seen)


@pytest.mark.anyio
async def test_the_hook_gets_the_comment_scrubbed_and_a_failing_sink_fails_no_one() -> None:
    kernel, _, _ = kernel_for({"small": ["hi"]},
                              plugins={"scores": Scores(), "broken": Broken()})
    scores = kernel.plugins.get("scores")
    async with kernel:
        answer = await kernel.ask(ask("hello"))
        with structlog.testing.capture_logs() as logs:
            given = await kernel.feedback(
                answer.request_id, -1, comment=f"wrong, and it printed {SECRET} too",
                user="U1")
        huge = await kernel.feedback(answer.request_id, 0.5, comment="x" * 100_000)
    assert scores.seen == [given, huge]
    assert given.request_id == answer.request_id
    assert given.comment == "wrong, and it printed Bearer [REDACTED] too"
    assert SECRET.split()[1] not in repr(scores.seen)
    assert len(huge.comment) == FEEDBACK_COMMENT_MAX_CHARS + 3 and huge.comment.endswith("...")
    failed = [e for e in logs if e["event"] == "plugin_failed"]
    assert [(e["plugin"], e["hook"]) for e in failed] == [("broken", "feedback")]


# --- over HTTP ---------------------------------------------------------------------------------

FLEET = {
    "providers": {"fleet": {"kind": "simulated"}},
    "models": {"fast": {"provider": "fleet", "input_price": 1.0, "output_price": 2.0}},
    "simulation": {"models": {"fast": {"latency_ms": 1, "jitter": 0, "quality": 1.0}}},
    "server": {"api_keys": [{"name": "team-a",
                             "sha256": hashlib.sha256(KEY.encode()).hexdigest()}]},
}


def test_post_v1_feedback_scores_an_answer_with_the_chat_keys(tmp_path: Path) -> None:
    with running_gateway(FLEET, tmp_path) as gw:
        reply = gw.client(KEY).chat.completions.with_raw_response.create(
            model="fast", messages=[{"role": "user", "content": "hi"}])
        request_id = reply.headers["x-request-id"]
        url = gw.url + "/v1/feedback"
        auth = {"authorization": f"Bearer {KEY}"}

        anonymous = httpx.post(url, json={"request_id": request_id, "score": 1})
        wrong = httpx.post(url, json={"request_id": request_id, "score": 1},
                           headers={"authorization": "Bearer tk-not-a-key-at-all"})
        down = httpx.post(url, headers=auth, json={"request_id": request_id, "score": -1,
                                                   "comment": f"leaks {SECRET}"})
        up = httpx.post(url, headers=auth, json={"request_id": request_id, "score": 1,
                                                 "user": "alice", "source": "web"})
        early = httpx.post(url, headers=auth, json={"request_id": "req_not_seen_yet",
                                                    "score": 0, "comment": None})
        problems = {
            "score": httpx.post(url, headers=auth, json={"request_id": request_id, "score": 2}),
            "score-missing": httpx.post(url, headers=auth, json={"request_id": request_id}),
            "request_id": httpx.post(url, headers=auth, json={"request_id": "", "score": 1}),
            "stars": httpx.post(url, headers=auth, json={"request_id": request_id, "score": 1,
                                                          "stars": 5}),
            "json": httpx.post(url, headers={**auth, "content-type": "application/json"},
                               content=b"{nope"),
            "array": httpx.post(url, headers=auth, json=[request_id, 1]),
            "media": httpx.post(url, headers={**auth, "content-type": "text/plain"},
                                content=b"request_id=1"),
        }
        get = httpx.get(url, headers=auth)
        gw.kernel.plugins.get("record").flush()
        stored = sqlite_feedback(gw.db)

    assert anonymous.status_code == 401 and wrong.status_code == 401
    assert anonymous.json()["error"]["type"] == "authentication_error"
    assert down.status_code == 200, down.text
    body = down.json()
    assert (body["object"], body["request_id"], body["score"], body["recorded"]) == (
        "feedback", request_id, -1.0, True)
    assert body["id"].startswith("fb_")
    assert up.status_code == 200 and early.status_code == 200

    expected = {"score": ("score", 400), "score-missing": ("score", 400),
                "request_id": ("request_id", 400), "stars": ("stars", 400),
                "json": (None, 400), "array": (None, 400), "media": (None, 415)}
    for name, response in problems.items():
        param, status = expected[name]
        assert response.status_code == status, (name, response.text)
        error = response.json()["error"]
        assert error["param"] == param, name
        assert error["type"] == "invalid_request_error" and error["message"], name
    assert "Missing required parameter: 'score'" in problems["score-missing"].json()[
        "error"]["message"]
    assert get.status_code == 405

    by_id = {r["feedback_id"]: r for r in stored}
    assert len(stored) == 3
    first = by_id[body["id"]]
    assert (first["request_id"], first["score"], first["source"], first["user_id"]) == (
        request_id, -1.0, "api", "team-a"), "the key's name judges when the body names no user"
    assert first["comment"] == "leaks Bearer [REDACTED]"
    assert by_id[up.json()["id"]]["user_id"] == "alice"
    assert by_id[up.json()["id"]]["source"] == "web"
    assert by_id[early.json()["id"]]["request_id"] == "req_not_seen_yet", "kept, no foreign key"
    assert SECRET.split()[1] not in json.dumps(stored)


# --- SQLite rows, the journal, replay ----------------------------------------------------------


@pytest.mark.anyio
async def test_feedback_rows_are_written_with_the_requests_and_read_back(tmp_path: Path) -> None:
    path = tmp_path / "record.db"
    settings = RecordSettings(path=str(path))
    contexts = [make_context(i, STATUSES[i % 3], 10.0) for i in range(6)]
    given = [scored(0, contexts[0].request_id, 1.0, user="U1", source="slack"),
             scored(1, contexts[0].request_id, -1.0, comment=f"no: {SECRET}"),
             scored(2, "req_of_another_replica", 0.0)]
    recorder = SQLiteRecorder()
    await recorder.startup(stand_in(settings))
    recorder.feedback(given[2])  # before any request: kept all the same
    for ctx in contexts:
        recorder.record(ctx)
    recorder.feedback(given[0])
    recorder.feedback(given[1])
    assert recorder.flush()
    journal = path.with_name(path.name + ".journal").read_bytes()
    assert journal.count(b"\n") == 9
    assert journal.count(b'{"feedback":') == 3
    assert SECRET.split()[1].encode() not in journal, "the journal holds no secret"
    await recorder.shutdown(stand_in(settings))

    got = sqlite_feedback(path)
    assert [tuple(r[c] for c in FEEDBACK_COLUMNS) for r in got] == [
        (f.request_id, f.created_at, f.score, f.comment and "no: Bearer [REDACTED]", f.source,
         f.id, f.user) for f in given]
    assert len(rows(path)) == 6
    assert not list(tmp_path.glob("record.db.journal*"))

    # A later start creates nothing twice and keeps the rows.
    again = SQLiteRecorder()
    await again.startup(stand_in(settings))
    await again.shutdown(stand_in(settings))
    assert len(sqlite_feedback(path)) == 3


CRASH = """
import os, signal, sys
from types import SimpleNamespace
import anyio
from tests.test_sqlite_recorder import STATUSES, make_context
from turnout.kernel.types import Feedback
from turnout.plugins.sqlite_recorder import RecordSettings, SQLiteRecorder

path, committed, total = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])

async def main():
    settings = RecordSettings(path=path)
    recorder = SQLiteRecorder()
    await recorder.startup(SimpleNamespace(plugin_settings=lambda plugin: settings))
    for i in range(total):
        ctx = make_context(i, STATUSES[i % 3], 10.0)
        recorder.record(ctx)
        score = Feedback(ctx.request_id, 1.0 if i % 2 else -1.0, source="slack", user=f"U{i}")
        recorder.feedback(score)
        print("recorded", ctx.request_id, score.id, flush=True)
        if i + 1 == committed:
            assert recorder.flush()
    os.kill(os.getpid(), signal.SIGKILL)  # before the writer's next commit

anyio.run(main)
"""


@pytest.mark.anyio
async def test_a_killed_writer_leaves_requests_and_feedback_that_replay_exactly_once(
        tmp_path: Path) -> None:
    path = tmp_path / "crash.db"
    child = subprocess.run([sys.executable, "-c", textwrap.dedent(CRASH), str(path), "10", "30"],
                           cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert child.returncode == -signal.SIGKILL, child.stderr
    printed = [line.split()[1:] for line in child.stdout.splitlines()
               if line.startswith("recorded ")]
    ids, scores = [p[0] for p in printed], [p[1] for p in printed]
    assert len(ids) == 30
    assert len(sqlite_feedback(path)) == 10, "the rest died with the process"
    journal = b"".join(p.read_bytes() for p in tmp_path.glob("crash.db.journal*"))
    assert journal.count(b"\n") == 60 and journal.count(b'{"feedback":') == 30

    settings = RecordSettings(path=str(path))
    for start in range(2):
        with structlog.testing.capture_logs() as logs:
            recorder = SQLiteRecorder()
            await recorder.startup(stand_in(settings))
            await recorder.shutdown(stand_in(settings))
        assert sorted(r["request_id"] for r in rows(path)) == sorted(ids), f"start {start}"
        got = sqlite_feedback(path)
        assert sorted(r["feedback_id"] for r in got) == sorted(scores), f"start {start}"
        assert {r["feedback_id"]: (r["request_id"], r["user_id"]) for r in got} == {
            s: (rid, f"U{i}") for i, (rid, s) in enumerate(zip(ids, scores))}
        replayed = [(e["requests"], e["feedback"], e["inserted"], e["already_recorded"])
                    for e in logs if e["event"] == "record_replayed"]
        assert replayed == ([(30, 30, 40, 20)] if start == 0 else [])
        assert not [e for e in logs if e["event"] in ("record_write_failed", "record_dropped")]
        assert not list(tmp_path.glob("crash.db.journal*"))


@pytest.mark.anyio
async def test_a_journal_written_before_feedback_existed_still_replays(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    contexts = [make_context(i, STATUSES[i % 3], 10.0) for i in range(5)]
    # The line format as it was: orjson of [requests_row, [attempts_row, ...]], nothing else.
    old_lines = [orjson.dumps([list(context_row(c)), [list(a) for a in attempt_rows(c)]],
                              option=orjson.OPT_APPEND_NEWLINE) for c in contexts]
    assert old_lines == [encode((context_row(c), attempt_rows(c))) for c in contexts], \
        "a request's line is unchanged"
    segment = tmp_path / "old.db.journal.1"
    segment.write_bytes(b"".join(old_lines))
    assert [r for r in read_segment(segment, len(COLUMNS), len(ATTEMPT_COLUMNS),
                                    len(FEEDBACK_COLUMNS))] == [
        (orjson.loads(line)[0], orjson.loads(line)[1]) for line in old_lines]

    settings = RecordSettings(path=str(path))
    with structlog.testing.capture_logs() as logs:
        recorder = SQLiteRecorder()
        await recorder.startup(stand_in(settings))
        await recorder.shutdown(stand_in(settings))
    assert [r["request_id"] for r in rows(path)] == [c.request_id for c in contexts]
    assert len(rows(path, "attempts")) == sum(len(c.attempts) for c in contexts)
    assert [(e["requests"], e["feedback"], e["inserted"]) for e in logs
            if e["event"] == "record_replayed"] == [(5, 0, 5)]
    assert not [e for e in logs if e["event"] == "record_journal_corrupt"]
    assert not segment.exists()


def test_feedback_lines_that_cannot_be_read_are_skipped_alone(tmp_path: Path) -> None:
    segment = tmp_path / "x.journal.1"
    good = scored(0, "req_a", 1.0, comment="fine")
    row = (good.request_id, good.created_at, good.score, good.comment, good.source, good.id,
           good.user)
    segment.write_bytes(b"".join([
        b'{"feedback": [1, 2]}\n',                        # other columns
        b'{"feedback": [1, 2, 3, 4, 5, 6, 7], "x": 1}\n',  # other keys
        b'{"score": 1}\n',                                 # not feedback at all
        encode(FeedbackRecord(row)),
        b'{"feedback": ["req_b", 1.0, 1.0, nu',           # cut short by a power loss
    ]))
    with structlog.testing.capture_logs() as logs:
        read = list(read_segment(segment, len(COLUMNS), len(ATTEMPT_COLUMNS),
                                 len(FEEDBACK_COLUMNS)))
    assert read == [FeedbackRecord(row)] and isinstance(read[0], FeedbackRecord)
    assert [e["line"] for e in logs if e["event"] == "record_journal_corrupt"] == [1, 2, 3, 5]


@pytest.mark.anyio
async def test_a_duplicate_feedback_id_is_logged_and_the_batch_still_written(
        tmp_path: Path) -> None:
    path = tmp_path / "dup.db"
    settings = RecordSettings(path=str(path))
    once = scored(0, "req_a", 1.0)
    other = scored(1, "req_b", -1.0)
    recorder = SQLiteRecorder()
    await recorder.startup(stand_in(settings))
    with structlog.testing.capture_logs() as logs:
        for feedback in (once, once, other):
            recorder.feedback(feedback)
        await recorder.shutdown(stand_in(settings))
    assert sorted(r["feedback_id"] for r in sqlite_feedback(path)) == sorted([once.id, other.id])
    failures = [(e["feedback_id"], e["error"]) for e in logs
                if e["event"] == "record_write_failed"]
    assert failures == [(once.id, "feedback with this id is already recorded")]


# --- PostgreSQL --------------------------------------------------------------------------------


def pg_feedback(dsn: str, schema: str) -> list[dict]:
    with psycopg.connect(dsn, row_factory=psycopg.rows.dict_row) as conn:
        return conn.execute(sql.SQL("SELECT * FROM {}.feedback ORDER BY created_at").format(
            sql.Identifier(schema))).fetchall()


@pytest.mark.anyio
async def test_postgres_feedback_lands_with_its_user_after_migration_2_applied_once(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    dsn = server_dsn()
    with fresh_schema(dsn) as schema:
        # A record made before migration 2, holding a score written by hand then.
        conn = connect(dsn, schema)
        try:
            monkeypatch.setattr(record_postgres, "MIGRATIONS", MIGRATIONS[:1])
            assert migrate(conn, schema) == [1]
            conn.execute("INSERT INTO feedback (request_id, created_at, score, comment, source) "
                         "VALUES ('req_old', 1, 0.5, 'by hand', 'sql')")
            monkeypatch.undo()
            assert migrate(conn, schema) == [2]
            assert migrate(conn, schema) == []
        finally:
            conn.close()
        first = PostgresSink(dsn, schema)
        first.close()
        assert first.migrated == [], "applied once"

        settings = RecordSettings(backend="postgres", dsn=dsn, schema=schema,
                                  journal=str(tmp_path / "record.journal"))
        contexts = [make_context(i, STATUSES[i % 3], 10.0) for i in range(4)]
        given = [scored(10, contexts[0].request_id, 1.0, user="U1", source="slack"),
                 scored(11, contexts[1].request_id, -1.0, comment=f"no \x00 {SECRET}",
                        user="team-a"),
                 scored(12, "req_not_recorded", 0.0)]
        recorder = SQLiteRecorder()
        await recorder.startup(stand_in(settings))
        for ctx in contexts:
            recorder.record(ctx)
        for feedback in given:
            recorder.feedback(feedback)
        await recorder.shutdown(stand_in(settings))

        got = pg_feedback(dsn, schema)
        assert [(r["request_id"], r["score"], r["source"], r["user_id"], r["feedback_id"])
                for r in got] == [("req_old", 0.5, "sql", None, None)] + [
            (f.request_id, f.score, f.source, f.user, f.id) for f in given]
        assert got[2]["comment"] == "no \ufffd Bearer [REDACTED]"

        # Replay: a segment holding a score already written and a new one; each lands once.
        late = scored(13, contexts[2].request_id, 1.0, user="U2")
        journal = Journal(str(tmp_path / "record.journal"))
        journal.start()
        for feedback in (given[0], late):
            journal.append(encode(FeedbackRecord((
                feedback.request_id, feedback.created_at, feedback.score, feedback.comment,
                feedback.source, feedback.id, feedback.user))))
        journal.close(discard=False)
        with structlog.testing.capture_logs() as logs:
            recorder = SQLiteRecorder()
            await recorder.startup(stand_in(settings))
            await recorder.shutdown(stand_in(settings))
        assert [r["feedback_id"] for r in pg_feedback(dsn, schema)] == [
            None, *(f.id for f in given), late.id]
        assert [(e["feedback"], e["inserted"], e["already_recorded"]) for e in logs
                if e["event"] == "record_replayed"] == [(2, 1, 1)]

        # fast answered contexts 0 and 2, strong failed context 1; req_old and req_not_recorded
        # have no request row.
        summary = summarize_postgres(dsn, schema)
        assert summary["feedback"] == 5
        assert [(m["model"], m["feedback"], m["mean_score"])
                for m in summary["feedback_by_model"]] == [
            ("fast", 2, 1.0), (None, 2, 0.25), ("strong", 1, -1.0)]


# --- turnout stats -----------------------------------------------------------------------------


async def feedback_log(path: Path, settings: RecordSettings | None = None) -> list[Feedback]:
    """A log of six requests (fast answered the ok ones, strong failed the errors) and scores:
    fast +1, +1, -1; strong -1; one for a request not in the log."""
    settings = settings or RecordSettings(path=str(path))
    contexts = [make_context(i, STATUSES[i % 3], 10.0) for i in range(6)]
    ok = [c for c in contexts if c.status == "ok"]
    failed = [c for c in contexts if c.status == "error"]
    given = [scored(0, ok[0].request_id, 1.0), scored(1, ok[1].request_id, 1.0),
             scored(2, ok[0].request_id, -1.0, comment="changed my mind"),
             scored(3, failed[0].request_id, -1.0), scored(4, "req_elsewhere", 0.5)]
    recorder = SQLiteRecorder()
    await recorder.startup(stand_in(settings))
    for ctx in contexts:
        recorder.record(ctx)
    for feedback in given:
        recorder.feedback(feedback)
    await recorder.shutdown(stand_in(settings))
    return given


@pytest.mark.anyio
async def test_stats_shows_feedback_per_model(tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "record.db"
    await feedback_log(path)
    summary = summarize(str(path))
    assert summary["feedback"] == 5
    assert summary["feedback_by_model"] == [
        {"model": "fast", "provider": "sim", "feedback": 3, "mean_score": pytest.approx(1 / 3)},
        {"model": "strong", "provider": "sim", "feedback": 1, "mean_score": -1.0},
        {"model": None, "provider": None, "feedback": 1, "mean_score": 0.5}]
    recent = summarize(str(path), since=1_700_000_000.0 + 3)
    assert [(m["model"], m["feedback"]) for m in recent["feedback_by_model"]] == [
        ("strong", 1), (None, 1)], "scores given since then"

    lines = render_stats(summary).splitlines()
    title = lines.index("Feedback, by model answering (5 scores)")
    assert title > lines.index("Per attempt, by model (8 attempts)")
    header, fast, strong, unknown = lines[title + 1:title + 5]
    assert header.split() == ["model", "scores", "mean", "score"]
    assert fast.split() == ["fast", "3", "+0.33"] and strong.split() == ["strong", "1", "-1.00"]
    assert unknown.split() == ["(none)", "1", "+0.50"]
    assert len(header) == len(fast), "one width per column, numbers right-aligned"

    capsys.readouterr()
    assert main(["stats", "--db", str(path), "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["feedback"] == 5 and printed["feedback_by_model"][0]["feedback"] == 3
    assert main(["stats", "--db", str(path)]) == 0
    assert "Feedback, by model answering (5 scores)" in capsys.readouterr().out


@pytest.mark.anyio
async def test_stats_without_feedback_shows_no_feedback_section(tmp_path: Path) -> None:
    path = tmp_path / "plain.db"
    settings = RecordSettings(path=str(path))
    recorder = SQLiteRecorder()
    await recorder.startup(stand_in(settings))
    recorder.record(make_context(0, "ok", 10.0))
    await recorder.shutdown(stand_in(settings))
    summary = summarize(str(path))
    assert (summary["feedback"], summary["feedback_by_model"]) == (0, [])
    assert "Feedback" not in render_stats(summary)

    # A log from before feedback was recorded has no feedback table: none, not an error.
    conn = sqlite3.connect(path)
    with conn:
        conn.execute("DROP TABLE feedback")
    conn.close()
    assert summarize(str(path))["feedback_by_model"] == []


@pytest.mark.anyio
async def test_stats_agree_on_feedback_in_sqlite_and_postgres(tmp_path: Path) -> None:
    dsn = server_dsn()
    with fresh_schema(dsn) as schema:
        path = tmp_path / "same.db"
        await feedback_log(path)
        await feedback_log(path, RecordSettings(backend="postgres", dsn=dsn, schema=schema,
                                                journal=str(tmp_path / "pg.journal")))
        local, remote = summarize(str(path)), summarize_postgres(dsn, schema)
    local.pop("path")
    remote.pop("path")
    assert remote == local
    assert remote["feedback"] == 5
