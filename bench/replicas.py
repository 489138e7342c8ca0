"""Replica proof: two gateways sharing one Redis and one PostgreSQL admit exactly one limit.

Starts ``bench/upstream.py`` (every answer: 6 completion tokens) and two ``turnout serve``
processes with the same config: state in Redis (a key prefix of this run's own), the request log
in PostgreSQL (a schema of this run's own), a budget on the key ``ci`` that pays for exactly
``--n`` requests (input free, 6 output tokens at a fixed price, ``max_tokens`` 6, so the worst
case reserved is the real cost), and an RPM limit on the key ``rl``. Then it fires
``--factor`` × N concurrent requests with ``ci`` and as many × RPM with ``rl``, alternating between
the replicas, stops both gateways (SIGTERM: they drain and flush), and counts.

The last line is one JSON object: ``requests`` (sent with ``ci``), ``admitted`` (answered 200),
``expected`` (N), ``overspend_usd`` (what the answered requests cost beyond the budget, from the
request log), ``records`` (request-log rows of ``ci``'s requests: one per request sent,
refusals included), ``rate_limit_requests``, ``rate_limit_admitted``, ``rate_limit_expected``
and ``rate_limit_records``. Exact means ``admitted == expected``, ``overspend_usd == 0``,
``records == requests``, and the same for the rate limit.

Needs Redis (``--redis``, default redis://127.0.0.1:6379/0) and PostgreSQL (``--postgres``,
default postgresql://postgres@127.0.0.1:5432/test); the run's keys and schema are removed after.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import sys
import tempfile
import uuid
from contextlib import ExitStack
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))

from overhead import HERE, drop_shared, free_port, process, shared_tables  # noqa: E402

PRICE = 1.0
"""Output price, $ per million tokens; the upstream answers 6 tokens, so a request costs
``6 * PRICE / 1e6``."""
ANSWER_TOKENS = 6
COST = ANSWER_TOKENS * PRICE / 1e6
KEYS = {"ci": "sk-bench-budget-key", "rl": "sk-bench-rate-key"}


def config(tmp: Path, replica: int, upstream: str, args, prefix: str, schema: str) -> Path:
    path = tmp / f"replica{replica}.toml"
    path.write_text(f"""
[server]
api_keys = [{{ name = "ci", key = "{KEYS['ci']}" }}, {{ name = "rl", key = "{KEYS['rl']}" }}]

[providers.upstream]
kind = "openai-compatible"
base_url = "{upstream}"

[models.bench-model]
provider = "upstream"
input_price = 0.0
output_price = {PRICE}

{shared_tables(args, prefix, schema, tmp / f'replica{replica}.journal')}
[[budgets]]
scope = "key"
match = "ci"
limit_usd = {args.n * COST!r}
window = "total"

[[rate_limits]]
scope = "key"
match = "rl"
rpm = {args.rpm}

[logging]
level = "warning"
""")
    return path


async def fire(urls: list[str], key: str, count: int) -> list[int]:
    """``count`` concurrent requests with ``key``, alternating between ``urls``; status codes."""
    body = {"model": "bench-model", "max_tokens": ANSWER_TOKENS,
            "messages": [{"role": "user", "content": "What is the answer to everything?"}]}
    limits = httpx.Limits(max_connections=count, max_keepalive_connections=count)
    async with httpx.AsyncClient(timeout=60, limits=limits,
                                 headers={"authorization": f"Bearer {key}"}) as client:
        async def one(i: int) -> int:
            response = await client.post(urls[i % len(urls)], json=body)
            return response.status_code

        return list(await asyncio.gather(*(one(i) for i in range(count))))


def log_rows(dsn: str, schema: str) -> dict[str, tuple[int, float]]:
    """Request-log rows and the spend of the answered ones, by client."""
    import psycopg

    with psycopg.connect(dsn) as db:
        rows = db.execute(
            f'SELECT client, count(*), coalesce(sum(cost_usd) FILTER (WHERE status = \'ok\'), 0) '
            f'FROM "{schema}".requests WHERE parent_id IS NULL GROUP BY client').fetchall()
    return {client: (count, float(spent)) for client, count, spent in rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=50, help="requests the budget pays for")
    parser.add_argument("--rpm", type=int, default=50, help="the rate limit, requests a minute")
    parser.add_argument("--factor", type=int, default=10,
                        help="requests fired per admitted one (at least 10 for the proof)")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--postgres", default="postgresql://postgres@127.0.0.1:5432/test")
    args = parser.parse_args()

    py = sys.executable
    turnout = shutil.which("turnout", path=str(Path(py).parent)) or "turnout"
    run = uuid.uuid4().hex[:12]
    prefix, schema = f"turnout-bench:{run}:", f"turnout_bench_{run}"
    try:
        with tempfile.TemporaryDirectory() as tmpdir:
            tmp = Path(tmpdir)
            with ExitStack() as stack:
                up_port = free_port()
                upstream = f"http://127.0.0.1:{up_port}/v1"
                stack.enter_context(process([py, str(HERE / "upstream.py"), "--port",
                                             str(up_port)], f"{upstream}/models"))
                urls = []
                for replica in (1, 2):
                    port = free_port()
                    stack.enter_context(process(
                        [turnout, "serve", "--config",
                         str(config(tmp, replica, upstream, args, prefix, schema)),
                         "--port", str(port)], f"http://127.0.0.1:{port}/readyz"))
                    urls.append(f"http://127.0.0.1:{port}/v1/chat/completions")
                budget = asyncio.run(fire(urls, KEYS["ci"], args.factor * args.n))
                limited = asyncio.run(fire(urls, KEYS["rl"], args.factor * args.rpm))
            # The gateways have stopped (SIGTERM): everything they answered is in the log.
            rows = log_rows(args.postgres, schema)
    finally:
        drop_shared(args, prefix, schema)
    records, spent = rows.get("ci", (0, 0.0))
    figures = {
        "requests": len(budget),
        "admitted": budget.count(200),
        "expected": args.n,
        "refused": budget.count(429),
        "overspend_usd": round(max(spent - args.n * COST, 0.0), 12),
        "records": records,
        "rate_limit_requests": len(limited),
        "rate_limit_admitted": limited.count(200),
        "rate_limit_expected": args.rpm,
        "rate_limit_records": rows.get("rl", (0, 0.0))[0],
        "replicas": len(urls),
    }
    others = sorted({code for code in budget + limited if code not in (200, 429)})
    if others:
        figures["unexpected_statuses"] = others
    print(f"budget      {figures['admitted']} of {figures['requests']} admitted, expected "
          f"{figures['expected']}; overspend ${figures['overspend_usd']}; "
          f"{figures['records']} records")
    print(f"rate limit  {figures['rate_limit_admitted']} of {figures['rate_limit_requests']} "
          f"admitted, expected {figures['rate_limit_expected']}; "
          f"{figures['rate_limit_records']} records")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
