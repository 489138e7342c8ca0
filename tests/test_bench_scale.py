"""The scaling bench, small: bench/scale.py measures the direct call, the gateway with one and two
workers and one and two replicas behind its balancer, and ends with its JSON line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from .redis_support import redis_url_fixture  # noqa: F401 - the fixture

BENCH = Path(__file__).resolve().parent.parent / "bench" / "scale.py"


@pytest.mark.slow
def test_scale_bench_reports_workers_and_replicas_against_the_direct_call(
        redis_url: str) -> None:
    done = subprocess.run([sys.executable, str(BENCH), "--requests", "60", "--concurrency", "4",
                           "--rounds", "1", "--max-workers", "2", "--redis", redis_url],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    assert (figures["requests"], figures["concurrency"], figures["rounds"]) == (60, 4, 1)
    assert figures["cores"] >= 1 and figures["baseline_rps"] > 0 and figures["balancer"]
    assert [w["workers"] for w in figures["workers"]] == [1, 2]
    assert [r["replicas"] for r in figures["replicas"]] == [1, 2]
    for runs, unit in ((figures["workers"], "workers"), (figures["replicas"], "replicas")):
        one = runs[0]["rps"]
        assert one > 0 and runs[0]["efficiency"] == 1.0
        for run in runs:
            assert run["rps"] > 0
            assert run["ratio_to_direct"] == pytest.approx(
                run["rps"] / figures["baseline_rps"], rel=0.01, abs=2e-3)
            assert run["efficiency"] == pytest.approx(
                run["rps"] / (run[unit] * one), rel=0.01, abs=2e-3)
