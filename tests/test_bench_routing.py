"""``bench/routing.py``: every router scored on prompts of subjects it was not trained on, with
the random and oracle rows, the JSON fields the issue names, and the best router last."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench" / "routing.py"
REAL = BENCH.parent.parent.parent / "shared" / "data" / "routellm" / "mmlu"
FIELDS = {"router", "n", "apgr", "cpt50", "cpt80", "strong_share_at_95"}


@pytest.fixture(scope="module")
def split(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Train on twelve subjects, evaluate on five others."""
    if not REAL.is_dir():
        pytest.skip(f"the RouteLLM outcomes are not at {REAL}")
    files = sorted(REAL.glob("*.csv"))
    root = tmp_path_factory.mktemp("routing")
    train, test = root / "train", root / "eval"
    train.mkdir()
    test.mkdir()
    for path in files[:12]:
        shutil.copy(path, train)
    for path in files[-5:]:
        shutil.copy(path, test)
    return train, test


def bench(*argv: str) -> list[dict]:
    done = subprocess.run([sys.executable, str(BENCH), *argv], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    print(done.stdout)
    return [json.loads(line) for line in done.stdout.splitlines()]


def test_every_router_is_scored_with_random_and_oracle_and_the_best_last(split) -> None:
    train, test = split
    lines = bench("--train", str(train), "--eval", str(test), "--limit", "80")
    rows, last = lines[:-1], lines[-1]
    assert [r["router"] for r in rows] == ["random", "oracle", "difficulty", "learned"]
    assert all(set(r) == FIELDS for r in lines)
    assert {r["n"] for r in rows} == {5 * 80}
    by = {r["router"]: r for r in rows}
    assert by["random"]["apgr"] == 0.5 and by["random"]["cpt50"] == pytest.approx(0.5, abs=0.01)
    for name in ("difficulty", "learned"):
        assert by["oracle"]["apgr"] > by[name]["apgr"] > 0
        assert by["oracle"]["strong_share_at_95"] < by[name]["strong_share_at_95"] <= 1
        assert 0 <= by[name]["cpt50"] <= by[name]["cpt80"] <= 1
    assert last == max((by["difficulty"], by["learned"]), key=lambda r: r["apgr"])


def test_one_router_alone(split) -> None:
    train, test = split
    lines = bench("--train", str(train), "--eval", str(test), "--limit", "40", "--router", "learned")
    assert [r["router"] for r in lines] == ["random", "oracle", "learned", "learned"]


def test_folds_by_subject_hold_each_subject_out_once(split) -> None:
    train, _ = split
    lines = bench("--folds", "3", "--data", str(train), "--limit", "40", "--seed", "1")
    per_fold = [r for r in lines[:-1] if "fold" in r]
    means = [r for r in lines[:-1] if "folds" in r]
    assert len(per_fold) == 3 * 4 and [r["router"] for r in means] == ["random", "oracle",
                                                                        "difficulty", "learned"]
    learned = [r for r in per_fold if r["router"] == "learned"]
    assert sum(r["n"] for r in learned) == 12 * 40          # every prompt evaluated exactly once
    assert means[-1]["apgr"] == pytest.approx(sum(r["apgr"] for r in learned) / 3, abs=1e-4)
    assert lines[-1] == max(means[2:], key=lambda r: r["apgr"])


def test_a_training_prompt_that_is_also_an_evaluation_prompt_is_dropped(tmp_path: Path) -> None:
    """The same question in two subjects' files: the fold that evaluates one trains on neither."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("routing_bench", BENCH)
    routing = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(routing)
    prompts = ["q1", "q2", "shared", "q3", "shared", "q4"]
    assert routing.unseen([0, 1, 2, 3], prompts, [4, 5]) == [0, 1, 3]
    assert routing.unseen([0, 1], prompts, [4, 5]) == [0, 1]
