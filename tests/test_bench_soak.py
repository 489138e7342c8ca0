"""``bench/soak.py``: a short soak through one real gateway process, every strategy, streams and
injected faults; the last line carries the issue's fields with sane values."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench" / "soak.py"
FIELDS = {"requests", "rss_start_mb", "rss_end_mb", "rss_growth_pct", "open_fds_growth", "errors",
          "p50_ms", "p99_ms"}
ROUTES = {"fallback", "cascade", "race", "ensemble", "critic", "chain", "trim"}


@pytest.mark.slow
def test_a_short_soak_reports_every_field_and_no_unclean_answer() -> None:
    done = subprocess.run([sys.executable, str(BENCH), "--requests", "600", "--concurrency", "8"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    figures = json.loads(done.stdout.splitlines()[-1])
    assert FIELDS <= set(figures)
    assert figures["requests"] == 600
    assert figures["errors"] == 0, figures["errors_by_kind"]
    assert figures["window"] == 60  # under 20,000 requests: the first and last 10%
    for name in ("p50_ms", "p99_ms"):
        assert set(figures[name]) == {"first", "last"}
        assert all(v > 0 for v in figures[name].values())
    assert 0 < figures["p50_ms"]["first"] <= figures["p99_ms"]["first"]
    assert 0 < figures["p50_ms"]["last"] <= figures["p99_ms"]["last"]
    assert figures["rss_start_mb"] > 10 and figures["rss_end_mb"] > 10
    assert figures["rss_growth_pct"] == pytest.approx(
        100 * (figures["rss_end_mb"] - figures["rss_start_mb"]) / figures["rss_start_mb"], abs=0.01)
    assert figures["open_fds_growth"] == figures["open_fds_end"] - figures["open_fds_start"]
    assert figures["open_fds_growth"] <= 5, figures
    # Faults of every kind were injected, and the gateway turned each into a clean outcome.
    assert set(figures["faults_injected"]) == {"http_500", "http_429", "stream_cut"}, figures
    assert all(n > 0 for n in figures["faults_injected"].values())
    # Every strategy's route answered its share, and every request is accounted for.
    by_route = figures["by_route"]
    assert set(by_route) == ROUTES
    assert all(route.get("ok", 0) > 0 for route in by_route.values()), by_route
    assert sum(sum(route.values()) for route in by_route.values()) == 600
    assert sum(by_route[r].get("clean_error", 0) for r in ROUTES) == sum(
        figures["clean_errors"].values())
