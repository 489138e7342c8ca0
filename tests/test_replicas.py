"""The replica proof, small: bench/replicas.py runs two gateways over the real Redis and
PostgreSQL, and both the budget and the RPM limit admit exactly their limit, with a record of
every request."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from .redis_support import redis_url_fixture  # noqa: F401 - the fixture
from .test_record_postgres import server_dsn

BENCH = Path(__file__).resolve().parent.parent / "bench" / "replicas.py"


@pytest.mark.slow
def test_two_replicas_admit_exactly_one_budget_and_one_rate_limit(redis_url: str) -> None:
    dsn = server_dsn()
    done = subprocess.run([sys.executable, str(BENCH), "--n", "4", "--rpm", "5", "--factor", "10",
                           "--redis", redis_url, "--postgres", dsn],
                          capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    assert figures["replicas"] == 2 and "unexpected_statuses" not in figures
    assert (figures["requests"], figures["admitted"], figures["expected"]) == (40, 4, 4)
    assert figures["overspend_usd"] == 0 and figures["records"] == 40
    assert (figures["rate_limit_requests"], figures["rate_limit_admitted"],
            figures["rate_limit_expected"], figures["rate_limit_records"]) == (50, 5, 5, 50)
