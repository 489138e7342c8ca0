"""``bench/cascade.py``: replays weak/strong outcomes through the kernel's cascade and reports
cost saved and quality against always-strong; checked on a tiny data set worked out by hand."""

from __future__ import annotations

import csv
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from turnout.kernel import tokens

BENCH = Path(__file__).resolve().parent.parent / "bench" / "cascade.py"
REAL = BENCH.parent.parent.parent / "shared" / "data" / "routellm" / "mmlu"

# (weak correct, strong correct) per prompt, over two files. Tally: both right 7, weak only 3,
# strong only 5, neither 3; 18 prompts: weak right 10, strong right 12, either right 15.
FILES = {
    "a_first.csv": "TT TF FT FF TT TT FT TF FT TT",
    "b_second.csv": "FF TT FT TT TF FT TT FF",
}
N, STRONG_RIGHT, EITHER_RIGHT, WEAK_WRONG = 18, 12, 15, 8


def prompt(i: int) -> str:
    return f"Which answer is right for question {i}?"


@pytest.fixture
def tiny(tmp_path: Path) -> Path:
    """The data above as CSVs in the RouteLLM format (header: prompt, weak, strong)."""
    i = 10
    for name, outcomes in FILES.items():
        with (tmp_path / name).open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["prompt", "weak/model", "strong/model"])
            for pair in outcomes.split():
                writer.writerow([prompt(i), *("True" if c == "T" else "False" for c in pair)])
                i += 1
    (tmp_path / "notes.txt").write_text("not a CSV: ignored")
    # Every prompt has the same length in tokens, so a call costs the same on every row and the
    # cost figures below follow from counts alone.
    assert len({tokens.count(prompt(j)) for j in range(10, i)}) == 1
    return tmp_path


def run(*args: str) -> tuple[list[dict], dict]:
    """Run the bench; the per-pair JSON lines and the last line."""
    done = subprocess.run([sys.executable, str(BENCH), *args], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    pairs = [json.loads(line) for line in lines[:-1] if line.startswith("{")]
    return pairs, json.loads(lines[-1])


def test_perfect_and_recall_zero_validators_match_the_hand_worked_figures(tiny: Path) -> None:
    # Prices equal in and out, so a call costs price x (the same tokens) on every row: always-
    # strong pays 10 per row; the cascade pays 1 per row plus 10 per escalated row.
    pairs, last = run("--eval", str(tiny), "--limit", "200", "--pairs", "1.0:1.0,0.9:0.0",
                      "--weak-price", "1", "--strong-price", "10")
    perfect, blind = last["pairs"]
    assert pairs == last["pairs"]  # printed one by one as well
    assert last["n"] == N and perfect["n"] == N and blind["n"] == N
    assert last["cost_saved_pct"] == perfect["cost_saved_pct"]
    assert last["quality_ratio"] == perfect["quality_ratio"]

    assert perfect["strong_accuracy"] == pytest.approx(STRONG_RIGHT / N, abs=1e-6)
    assert perfect["weak_accuracy"] == pytest.approx(10 / N, abs=1e-6)
    # The perfect validator escalates exactly the weak model's wrong answers: the cascade is
    # right wherever either model is.
    assert perfect["accuracy"] == pytest.approx(EITHER_RIGHT / N, abs=1e-6)
    assert perfect["quality_ratio"] == pytest.approx(EITHER_RIGHT / STRONG_RIGHT, abs=1e-6)
    assert perfect["escalated_pct"] == pytest.approx(100 * WEAK_WRONG / N, abs=1e-4)
    assert perfect["cost_saved_pct"] == pytest.approx(
        100 * (1 - (N * 1 + WEAK_WRONG * 10) / (N * 10)), abs=1e-4)
    assert perfect["observed_precision"] == 1.0 and perfect["observed_recall"] == 1.0

    # Recall 0 passes nothing: every request pays for both models and gets the strong answer.
    assert blind["escalated_pct"] == 100.0
    assert blind["quality_ratio"] == 1.0
    assert blind["cost_saved_pct"] == pytest.approx(-10.0, abs=1e-4)
    assert blind["cost_saved_pct"] < 0


def test_limit_and_seed(tiny: Path) -> None:
    _, first = run("--eval", str(tiny), "--limit", "10", "--pairs", "0.8:0.8", "--seed", "3")
    _, again = run("--eval", str(tiny), "--limit", "10", "--pairs", "0.8:0.8", "--seed", "3")
    assert first["n"] == 10
    assert first["pairs"] == again["pairs"]  # the validator's draws are seeded


def test_a_missing_data_directory_says_what_to_pass(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, str(BENCH), "--eval", str(tmp_path / "nowhere")],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert "--eval" in done.stderr and "nowhere" in done.stderr


def test_the_rate_of_passing_wrong_answers_gives_the_asked_precision(monkeypatch) -> None:
    spec = importlib.util.spec_from_file_location("bench_cascade", BENCH)
    bench = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, bench)  # its dataclasses look themselves up
    spec.loader.exec_module(bench)
    for precision, recall, base in ((0.9, 0.9, 0.5), (0.95, 0.6, 0.7), (0.8, 1.0, 0.3)):
        q = bench.pass_wrong(precision, recall, base)
        assert 0 <= q <= 1
        assert recall * base / (recall * base + q * (1 - base)) == pytest.approx(precision)
    assert bench.pass_wrong(0.5, 1.0, 0.9) == 1.0  # below what the data allows: capped
    assert bench.pass_wrong(1.0, 0.7, 0.6) == 0.0


@pytest.mark.skipif(not REAL.is_dir(), reason="the RouteLLM data is not beside the repository")
def test_real_data_quick_run() -> None:
    _, last = run("--eval", str(REAL), "--limit", "300", "--pairs", "1.0:1.0,0.9:0.9,0.9:0.0")
    perfect, middling, blind = last["pairs"]
    assert last["n"] == 300 and all(p["n"] == 300 for p in last["pairs"])
    assert perfect["escalated_pct"] == pytest.approx(100 * (1 - perfect["weak_accuracy"]),
                                                     abs=1e-3)
    assert perfect["quality_ratio"] >= 1.0 and perfect["cost_saved_pct"] > 0
    assert middling["accuracy"] <= perfect["accuracy"]
    assert blind["quality_ratio"] == 1.0 and blind["cost_saved_pct"] < 0
