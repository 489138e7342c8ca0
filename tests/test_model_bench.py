"""``turnout bench models``: the suite checks itself, the command runs it against local
OpenAI-format upstreams whose answers the tests control, writes the matrix (JSON, Markdown, PNG,
quality.toml), and the quality it measures seeds the score router."""

from __future__ import annotations

import contextlib
import io
import json
import tomllib
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
import structlog

from turnout.adapters import cli
from turnout.kernel.config import parse
from turnout.kernel.kernel import Kernel
from turnout.kernel.types import Completion
from turnout.plugins import sandbox
from turnout.plugins.model_bench import runner, suite

from .fakes import Script, Status, count_tokens, openai_app, serve

SANDBOXED = not sandbox.support().missing()
"""Whether this machine can run the code checks (else the command skips the code tasks)."""

TASKS = [t for t in suite.TASKS if SANDBOXED or t != "code"]

REFERENCE = {item.prompt: item for item in suite.SUITE}

SLOPPY_WRONG = ("reasoning", "translation", "creative")
"""The task types the sloppy model gets wrong; it answers the others as the reference does."""

NON_ANSWER = "Hmm, that one? Hard to say; maybe look it up."
"""What a model that does not know says (the simulated fleet's poor answer, in its words)."""


def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """``turnout ARGS`` in this process; the logging it configures is put back afterwards."""
    capsys.readouterr()
    logging = structlog.get_config()
    try:
        status = cli.main(list(args))
    finally:
        structlog.configure(**logging)
    out = capsys.readouterr()
    return status, out.out, out.err


# --- the suite checks itself ---------------------------------------------------------------------


def judge_all(answer_of) -> dict[str, tuple[bool, str]]:
    """Every item's verdict on ``answer_of(item)``, by the gateway's own validators."""
    config = parse({"providers": {"p": {"kind": "openai-compatible",
                                        "base_url": "http://127.0.0.1:9/v1"}},
                    "models": {"m": {"provider": "p"}}}, source="test")
    kernel = Kernel(config)
    kernel.load_plugins()
    items = list(suite.SUITE)
    checks = runner.Checks(kernel, items)
    model = kernel.models.get("m")

    async def main() -> dict[str, tuple[bool, str]]:
        return {item.id: await checks.judge(item, model, Completion(content=answer_of(item)))
                for item in items}

    return anyio.run(main)


def test_suite_covers_the_seven_task_types_with_five_to_eight_items_each() -> None:
    from turnout.kernel.labels import TASKS as LABELS

    assert list(suite.TASKS) == list(LABELS)[:7]
    counts = {t: len(suite.items([t])) for t in suite.TASKS}
    assert all(5 <= n <= 8 for n in counts.values()), counts
    assert len({item.id for item in suite.SUITE}) == len(suite.SUITE)


@pytest.mark.skipif(not SANDBOXED, reason="the code checks need the code validator's sandbox")
def test_every_reference_answer_passes_its_check() -> None:
    verdicts = judge_all(lambda item: item.reference)
    assert {k: v for k, v in verdicts.items() if not v[0]} == {}


def test_no_check_passes_a_non_answer_and_no_right_answer_is_in_its_prompt() -> None:
    hedged = judge_all(lambda item: NON_ANSWER)
    assert [k for k, (ok, _) in hedged.items() if ok] == []
    echoed = judge_all(lambda item: item.prompt)
    answered_by_echo = [k for k, (ok, _) in echoed.items() if ok]
    # Repeating the prompt may meet a creative or chat item's form; it never answers the others.
    assert all(k.split("-")[0] in ("creative", "chat") for k in answered_by_echo), answered_by_echo


def test_math_checks_read_the_last_number_of_the_answer() -> None:
    answers = {"math-1": "17 × 23 = 391", "math-4": "The sum is 5,050.",
               "math-3": "x = 9.0", "math-2": "27 pens are 9 sets of 3, so $18 and 0 cents"}
    verdicts = judge_all(lambda item: answers.get(item.id, ""))
    assert [verdicts[k][0] for k in answers] == [True, True, True, False]


# --- the command against local upstreams -----------------------------------------------------------


def answer(model: str, prompt: str):
    """The fleet the tests control: ``right`` answers every item as its reference does,
    ``sloppy`` only the task types outside :data:`SLOPPY_WRONG`, ``broken`` fails with 500."""
    item = REFERENCE[prompt]
    if model == "broken":
        return Status(500)
    if model == "sloppy" and item.task in SLOPPY_WRONG:
        return NON_ANSWER
    return item.reference


CONFIG = """\
[providers.local]
kind = "openai-compatible"
base_url = "{url}/v1"

[models.right]
provider = "local"
input_price = 3
output_price = 15

[models.sloppy]
provider = "local"
input_price = 0.1
output_price = 0.4

[models.broken]
provider = "local"
input_price = 1
output_price = 2

[models.vectors]
provider = "local"
capabilities = ["embeddings"]

[routes.scored]
models = ["broken", "right", "sloppy"]
router = "score"
"""


@pytest.fixture(scope="module")
def fleet() -> Iterator[tuple[str, Script]]:
    script = Script(answer=answer)
    with serve(openai_app(script, api_key=None)) as url:
        yield url, script


@pytest.fixture(scope="module")
def benched(fleet, tmp_path_factory) -> dict:
    """One run of the command over the three models, its files and what it printed."""
    url, script = fleet
    folder = tmp_path_factory.mktemp("bench")
    config = folder / "gateway.toml"
    config.write_text(CONFIG.format(url=url))
    out = folder / "out"
    logging = structlog.get_config()  # capsys is per test: this module-wide run captures itself
    stdout, stderr = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            status = cli.main(["bench", "models", "--config", str(config), "--out", str(out),
                               "--concurrency", "6"])
    finally:
        structlog.configure(**logging)
    return {"status": status, "out": out, "config": config, "stdout": stdout.getvalue(),
            "stderr": stderr.getvalue(), "requests": list(script.requests),
            "matrix": json.loads((out / "matrix.json").read_text())}


def test_the_matrix_shows_right_sloppy_and_broken_models(benched) -> None:
    assert benched["status"] == 0
    found = benched["matrix"]
    assert found["tasks"] == TASKS
    assert list(found["models"]) == ["right", "sloppy", "broken"]
    assert found["skipped"]["models"] == {
        "vectors": "an embedding model: it does not answer chat requests"}
    quality = {name: {t: cell["quality"] for t, cell in row["quality"].items()}
               for name, row in found["models"].items()}
    assert quality["right"] == dict.fromkeys(TASKS, 1.0)
    assert quality["sloppy"] == {t: 0.0 if t in SLOPPY_WRONG else 1.0 for t in TASKS}
    assert quality["broken"] == dict.fromkeys(TASKS, 0.0)
    for row in found["models"].values():
        assert {t: c["n"] for t, c in row["quality"].items()} == \
            {t: len(suite.items([t])) for t in TASKS}
    sloppy = found["models"]["sloppy"]["quality"]["translation"]["failures"][0]
    assert sloppy["error"] is None and sloppy["reason"].startswith("regex: the answer does not")


def test_a_failing_model_counts_its_errors_and_has_no_latency_or_cost(benched) -> None:
    broken = benched["matrix"]["models"]["broken"]
    calls = sum(len(suite.items([t])) for t in TASKS)
    assert broken["errors"] == {"upstream_unavailable": calls}
    assert broken["latency_ms"] == {"p50": None, "p95": None}
    assert broken["cost_per_1k_usd"] is None
    assert all(c["errors"] == c["n"] for c in broken["quality"].values())
    right = benched["matrix"]["models"]["right"]
    assert right["errors"] == {} and 0 < right["latency_ms"]["p50"] <= right["latency_ms"]["p95"]


def test_cost_per_1000_requests_comes_from_the_usage_and_the_prices(benched) -> None:
    items = [i for i in suite.SUITE if i.task in TASKS]
    # The fake counts a token per whitespace-separated word, of the prompt and of the answer.
    usage = {"right": [(count_tokens(i.prompt), count_tokens(i.reference)) for i in items],
             "sloppy": [(count_tokens(i.prompt), count_tokens(
                 NON_ANSWER if i.task in SLOPPY_WRONG else i.reference)) for i in items]}
    prices = {"right": (3, 15), "sloppy": (0.1, 0.4)}
    for name, calls in usage.items():
        pin, pout = prices[name]
        mean = sum(i * pin + o * pout for i, o in calls) / 1e6 / len(calls)
        row = benched["matrix"]["models"][name]
        assert row["cost_per_1k_usd"] == pytest.approx(mean * 1000, rel=1e-6)
        assert row["tokens"] == {"input": sum(i for i, _ in calls),
                                 "output": sum(o for _, o in calls)}


def test_each_model_is_asked_by_itself_with_the_items_schema_for_extraction(benched) -> None:
    sent = benched["requests"]
    per_model = {m: [r for r in sent if r.body["model"] == m] for m in ("right", "sloppy",
                                                                        "broken", "vectors")}
    calls = sum(len(suite.items([t])) for t in TASKS)
    assert {m: len(r) for m, r in per_model.items()} == {"right": calls, "sloppy": calls,
                                                         "broken": calls, "vectors": 0}
    extraction = next(i for i in suite.SUITE if i.task == "extraction")
    asked = next(r.body for r in per_model["right"]
                 if r.body["messages"][0]["content"] == extraction.prompt)
    # The schema sent types the fields; the answer is not given away in it.
    assert asked["response_format"]["json_schema"]["schema"] == extraction.schema
    assert "const" not in json.dumps(asked["response_format"])


def test_the_markdown_png_and_quality_toml_are_written_and_printed(benched) -> None:
    out = benched["out"]
    table = (out / "matrix.md").read_text()
    lines = table.splitlines()
    assert lines[0] == "| " + " | ".join(["model", *TASKS, "p50 ms", "p95 ms", "$/1k"]) + " |"
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
            for line in lines[2:5]}
    assert rows["right"][:len(TASKS)] == ["1.00"] * len(TASKS)
    assert rows["broken"][:len(TASKS)] == ["0.00"] * len(TASKS)
    assert rows["broken"][len(TASKS):] == ["-", "-", "-"]
    assert "- broken: " in table and "upstream_unavailable" in table
    png = (out / "matrix.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 10_000
    seeded = tomllib.loads((out / "quality.toml").read_text())
    assert seeded["models"]["right"]["quality"] == dict.fromkeys(TASKS, 1.0)
    assert seeded["models"]["sloppy"]["quality"] == {
        t: 0.0 if t in SLOPPY_WRONG else 1.0 for t in TASKS}
    printed = benched["stdout"]
    assert table.strip() in printed
    for name in ("matrix.json", "matrix.md", "matrix.png", "quality.toml"):
        assert f"wrote {out / name}" in printed


def pasted(config: str, fragment: str) -> str:
    """``config`` with each ``quality`` line of ``fragment`` pasted under its model's table,
    as docs/routing.md says to."""
    lines = config.splitlines()
    table = None
    for line in fragment.splitlines():
        if line.startswith("[models."):
            table = line
        elif line.startswith("quality = ") and table is not None:
            lines.insert(lines.index(table) + 1, line)
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize(("prompt", "task", "best"), [
    ("Translate into French: \"Good night, see you tomorrow.\"", "translation", "right"),
    ("Write a Python function that reverses a linked list.", "code", "sloppy"),
])
def test_the_quality_it_measured_seeds_the_score_router(benched, capsys, prompt, task,
                                                         best) -> None:
    config = benched["config"]
    seeded = config.with_name(f"seeded-{task}.toml")
    seeded.write_text(pasted(config.read_text(), (benched["out"] / "quality.toml").read_text()))
    status, out, _ = run_cli(capsys, "route", "--explain", prompt, "--model", "scored",
                             "--config", str(seeded), "--json")
    assert status == 0
    decision = json.loads(out)
    assert decision["labels"]["task"] == task
    # translation: only right answers well; code: both do, and sloppy is cheaper. broken, which
    # answered nothing, comes last either way.
    assert decision["plan"][0] == best and decision["plan"][-1] == "broken"
    assert decision["router"]["scores"]["right"] > decision["router"]["scores"]["broken"]


def test_only_the_models_and_tasks_asked_for(fleet, tmp_path: Path, capsys) -> None:
    url, _ = fleet
    config = tmp_path / "gateway.toml"
    config.write_text(CONFIG.format(url=url))
    status, out, _ = run_cli(capsys, "bench", "models", "--config", str(config), "--models",
                             "sloppy", "--tasks", "math,translation", "--repeat", "2",
                             "--out", str(tmp_path / "out"))
    assert status == 0
    found = json.loads((tmp_path / "out" / "matrix.json").read_text())
    assert list(found["models"]) == ["sloppy"] and found["tasks"] == ["math", "translation"]
    cells = found["models"]["sloppy"]["quality"]
    assert (cells["math"]["quality"], cells["math"]["n"]) == (1.0, 2 * len(suite.items(["math"])))
    assert cells["translation"]["quality"] == 0.0
    status, _, err = run_cli(capsys, "bench", "models", "--config", str(config), "--models",
                             "nope", "--out", str(tmp_path / "none"))
    assert status == 2 and "--models names 'nope'" in err and "right, sloppy" in err
    assert not (tmp_path / "none").exists()


# --- on the embedded defaults ------------------------------------------------------------------


@pytest.mark.slow
def test_smoke_on_the_embedded_defaults(tmp_path: Path, capsys,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    for key in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "GEMINI_API_KEY"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.chdir(tmp_path)
    status, out, _ = run_cli(capsys, "bench", "models", "--repeat", "1", "--concurrency", "32")
    assert status == 0
    found = json.loads((tmp_path / "model-bench" / "matrix.json").read_text())
    assert found["config"] == "<embedded default>"
    assert list(found["models"]) == ["sim-small", "sim-flaky", "sim-medium", "sim-large"]
    assert list(found["skipped"]["models"]) == ["sim-embed"]
    for row in found["models"].values():
        assert all(0 <= c["quality"] <= 1 for c in row["quality"].values())
        # Canned text writes no working code and does no arithmetic.
        assert row["quality"]["math"]["quality"] == 0.0
        if SANDBOXED:
            assert row["quality"]["code"]["quality"] == 0.0
    assert sorted(p.name for p in (tmp_path / "model-bench").iterdir()) == [
        "matrix.json", "matrix.md", "matrix.png", "quality.toml"]
    assert "| sim-large |" in out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model-bench"]  # no record written
