"""The fault proof, small: bench/faults.py runs two gateways over the real Redis and PostgreSQL
against upstreams that misbehave phase by phase (429 storms, 5xx, read and connect timeouts, cut
and broken streams, malformed JSON, a slow drip, an outage) while one replica is stopped and
started again; every request gets an answer or a clean error, and exactly one record."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from .redis_support import redis_url_fixture  # noqa: F401 - the fixture
from .test_record_postgres import server_dsn

BENCH = Path(__file__).resolve().parent.parent / "bench" / "faults.py"
FIELDS = {"requests", "answered", "clean_errors", "unclean", "records", "duplicate_records",
          "overspend_usd", "p99_ms"}
FAULTS = {"rate_limit_storm", "server_errors", "read_timeout", "stream_cut", "stream_error",
          "malformed_json"}


@pytest.mark.slow
def test_every_fault_gets_a_clean_answer_and_exactly_one_record(redis_url: str) -> None:
    done = subprocess.run([sys.executable, str(BENCH), "--phase-s", "1.5", "--concurrency", "8",
                           "--redis", redis_url, "--postgres", server_dsn()],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    assert FIELDS <= set(figures)
    assert figures["unclean"] == 0, (figures["unclean_by_kind"], figures["unclean_samples"])
    assert figures["requests"] == figures["answered"] + figures["clean_errors"]
    assert figures["records"] == figures["requests"] and figures["missing_records"] == 0
    assert figures["duplicate_records"] == 0
    assert figures["overspend_usd"] == 0
    # The faults happened: each kind reached the replicas, the budget ran out (clean 429s), the
    # cache answered, a replica was stopped and started again, and the load balancer had to
    # send requests to the other replica meanwhile or not (both are fine: none may be lost).
    assert FAULTS <= set(figures["faults_injected"]), figures["faults_injected"]
    assert figures["clean_errors_by_kind"].get("429:budget_exceeded", 0) > 0
    assert 0 < figures["budget_spent_usd"] <= figures["budget_limit_usd"]
    assert figures["cache_hits"] > 0 and figures["replica_restarts"] == 1
    assert all(sum(phase.values()) > 0 for phase in figures["by_phase"].values()), figures
    assert not any(kind.startswith("500") for kind in figures["clean_errors_by_kind"])
