"""The gateway's own overhead: the same client calls a local upstream directly and through Turnout.

Starts ``bench/upstream.py`` (a lean OpenAI-format server) and ``turnout serve`` with one worker,
then drives both with one httpx client: sequential requests (concurrency 1) for latency, and
``--concurrency`` workers for throughput. ``--litellm`` adds LiteLLM's proxy in front of the same
upstream when it is installed (``pip install 'litellm[proxy]'``; run offline with
``LITELLM_LOCAL_MODEL_COST_MAP=True``).

``--state redis`` measures the gateway with shared state at work: a global budget and a global rate
limit in Redis (reserved, settled and counted on every request), the cache asked on every request
(each request is a distinct ``temperature: 0`` prompt, so every one is a cacheable miss: a lookup,
a single-flight lock, and a store of the answer) and the request log in PostgreSQL. The run's
Redis keys and PostgreSQL schema are removed after. Without it: the embedded default (in-process
state, SQLite), no budget, rate limit or cacheable request.

The last line of output is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack, contextmanager
from pathlib import Path

import httpx

HERE = Path(__file__).resolve().parent
BODY = {"model": "bench-model", "max_tokens": 16,
        "messages": [{"role": "user", "content": "What is the answer to everything?"}]}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def process(argv: list[str], ready_url: str, env: dict | None = None, timeout: float = 60):
    """Run a server process until the block ends; wait until ``ready_url`` answers 200.

    Its standard error goes to a temporary file, never a pipe: a pipe nobody reads fills up
    (64 KiB of log lines) and then blocks the server's next write, its event loop with it. The
    file's end is shown when the process fails to start."""
    with tempfile.TemporaryFile() as errors:
        proc = subprocess.Popen(argv, env={**os.environ, **(env or {})},
                                stdout=subprocess.DEVNULL, stderr=errors)

        def said() -> str:
            errors.seek(0)
            return errors.read().decode(errors="replace")[-2000:]

        try:
            deadline = time.monotonic() + timeout
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"{argv[0]} exited: {said()}")
                try:
                    if httpx.get(ready_url, timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{' '.join(argv)} did not become ready at {ready_url}: "
                                       f"{said()}")
                time.sleep(0.1)
            yield proc
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def rss_mb(pid: int) -> float:
    """Resident memory of a process and its children, from /proc."""
    total = 0
    pids = [pid]
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        pids += [int(c) for c in children]
    except OSError:
        pass
    for p in pids:
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return round(total / 1024, 1)


BODIES = itertools.count()


def body(distinct: bool) -> dict:
    """The request: always the same, or (``distinct``) a new ``temperature: 0`` prompt each time,
    which a cache must look up and store but never finds."""
    if not distinct:
        return BODY
    n = next(BODIES)
    return {**BODY, "temperature": 0,
            "messages": [{"role": "user", "content": f"What is the answer to everything? #{n}"}]}


async def drive(url: str, headers: dict, concurrency: int, requests: int,
                distinct: bool = False) -> dict:
    """Send ``requests`` requests with ``concurrency`` workers; latency percentiles and req/s."""
    latencies: list[float] = []
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=30, headers=headers) as client:
        for _ in range(min(50, requests)):  # warm the connection pool
            (await client.post(url, json=body(distinct))).raise_for_status()
        remaining = requests

        async def worker() -> None:
            nonlocal remaining
            while remaining > 0:
                remaining -= 1
                start = time.perf_counter()
                response = await client.post(url, json=body(distinct))
                latencies.append(time.perf_counter() - start)
                if response.status_code != 200:
                    raise RuntimeError(f"{url}: {response.status_code} {response.text[:300]}")

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    latencies.sort()
    return {"p50_ms": 1000 * statistics.median(latencies),
            "p99_ms": 1000 * latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))],
            "rps": requests / elapsed}


def measure(targets: dict[str, tuple[str, dict]], args: argparse.Namespace) -> dict:
    """Latency at concurrency 1 and throughput at ``--concurrency`` for every target, in
    ``--rounds`` interleaved rounds (so drift of the machine hits all alike); medians."""
    runs: dict[str, dict[str, list[dict]]] = {name: {"c1": [], "cN": []} for name in targets}
    distinct = getattr(args, "state", "memory") == "redis"
    for _ in range(args.rounds):
        for name, (url, headers) in targets.items():
            runs[name]["c1"].append(asyncio.run(drive(url, headers, 1, args.requests, distinct)))
        for name, (url, headers) in targets.items():
            runs[name]["cN"].append(asyncio.run(drive(url, headers, args.concurrency,
                                                      args.requests * 2, distinct)))
    return {name: {"p50_ms": statistics.median(r["p50_ms"] for r in run["c1"]),
                   "p99_ms": statistics.median(r["p99_ms"] for r in run["c1"]),
                   "rps": statistics.median(r["rps"] for r in run["cN"])}
            for name, run in runs.items()}


def turnout_config(tmp: Path, upstream: str, shared: str = "") -> Path:
    """The gateway's config; ``shared`` replaces the embedded record and state (``--state``)."""
    path = tmp / "bench.toml"
    record = shared or f'[record]\npath = "{tmp / "bench.db"}"\n'
    path.write_text(f"""
[providers.upstream]
kind = "openai-compatible"
base_url = "{upstream}"

[models.bench-model]
provider = "upstream"
input_price = 1.0
output_price = 2.0

{record}
[logging]
level = "warning"
""")
    return path


def shared_tables(args: argparse.Namespace, prefix: str, schema: str, journal: Path) -> str:
    """``[state]`` in Redis under the key ``prefix`` and ``[record]`` in PostgreSQL in ``schema``,
    journaled to ``journal`` (each process its own): the tables of a gateway whose state is
    shared, for every benchmark that runs one."""
    return f"""
[state]
backend = "redis"
url = "{args.redis}"
key_prefix = "{prefix}"

[record]
backend = "postgres"
dsn = "{args.postgres}"
schema = "{schema}"
journal = "{journal}"
"""


def drop_shared(args: argparse.Namespace, prefix: str, schema: str) -> None:
    """Remove a run's Redis keys (under ``prefix``) and PostgreSQL ``schema``."""
    import psycopg
    import redis

    client = redis.Redis.from_url(args.redis)
    try:
        keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
        for i in range(0, len(keys), 1000):
            client.delete(*keys[i:i + 1000])
    finally:
        client.close()
    with psycopg.connect(args.postgres, autocommit=True) as db:
        db.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def shared_state(args: argparse.Namespace, tmp: Path, run: str) -> str:
    """Config for ``--state redis``: Redis state, the PostgreSQL log, a budget and a rate limit
    that apply to every request and never refuse one."""
    return shared_tables(args, f"turnout-bench:{run}:", f"turnout_bench_{run}",
                         tmp / "bench.journal") + """
[[budgets]]
scope = "global"
limit_usd = 1000000.0
window = "day"

[[rate_limits]]
scope = "global"
rpm = 100000000
tpm = 1000000000000
"""


def litellm_config(tmp: Path, upstream: str) -> Path:
    path = tmp / "litellm.yaml"
    path.write_text(f"""model_list:
  - model_name: bench-model
    litellm_params:
      model: openai/bench-model
      api_base: {upstream}
      api_key: unused
litellm_settings:
  drop_params: true
""")
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=1000,
                        help="requests per round at concurrency 1 (twice as many at --concurrency)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="interleaved rounds over all targets; figures are their medians")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--upstream-delay-ms", type=float, default=0.0,
                        help="the upstream's think time per request (0: pure overhead)")
    parser.add_argument("--litellm", action="store_true", help="add LiteLLM's proxy side by side")
    parser.add_argument("--state", choices=("memory", "redis"), default="memory",
                        help="redis: a budget, a rate limit and the cache in Redis, the log in "
                             "PostgreSQL (see above); memory: the embedded default")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--postgres", default="postgresql://postgres@127.0.0.1:5432/test")
    args = parser.parse_args()
    run = os.urandom(6).hex()
    try:
        run_bench(args, run)
    finally:
        if args.state == "redis":
            drop_shared(args, f"turnout-bench:{run}:", f"turnout_bench_{run}")


def run_bench(args: argparse.Namespace, run: str) -> None:

    py = sys.executable
    turnout = shutil.which("turnout", path=str(Path(py).parent)) or "turnout"
    figures: dict = {}
    with tempfile.TemporaryDirectory() as tmpdir, ExitStack() as stack:
        tmp = Path(tmpdir)
        up_port, gw_port = free_port(), free_port()
        upstream = f"http://127.0.0.1:{up_port}/v1"
        stack.enter_context(process(
            [py, str(HERE / "upstream.py"), "--port", str(up_port),
             "--delay-ms", str(args.upstream_delay_ms)], f"{upstream}/models"))
        gateway = stack.enter_context(process(
            [turnout, "serve", "--config", str(turnout_config(
                tmp, upstream, shared_state(args, tmp, run) if args.state == "redis" else "")),
             "--port", str(gw_port)], f"http://127.0.0.1:{gw_port}/readyz"))

        targets = {"direct": (f"{upstream}/chat/completions", {}),
                   "turnout": (f"http://127.0.0.1:{gw_port}/v1/chat/completions", {})}
        if args.litellm:
            targets.update(start_litellm(tmp, upstream, stack))
        m = measure(targets, args)
        direct, through = m["direct"], m["turnout"]
        figures = {
            "direct_p50_ms": round(direct["p50_ms"], 3),
            "turnout_p50_ms": round(through["p50_ms"], 3),
            "overhead_p50_ms": round(through["p50_ms"] - direct["p50_ms"], 3),
            "overhead_p99_ms": round(through["p99_ms"] - direct["p99_ms"], 3),
            "direct_rps": round(direct["rps"], 1),
            "turnout_rps": round(through["rps"], 1),
            "throughput_ratio": round(through["rps"] / direct["rps"], 3),
            "rss_mb": rss_mb(gateway.pid),
            "concurrency": args.concurrency,
            "rounds": args.rounds,
            "upstream_delay_ms": args.upstream_delay_ms,
            "state": args.state,
        }
        if "litellm" in m:
            lite = m["litellm"]
            figures.update({
                "litellm_p50_ms": round(lite["p50_ms"], 3),
                "litellm_overhead_p50_ms": round(lite["p50_ms"] - direct["p50_ms"], 3),
                "litellm_overhead_p99_ms": round(lite["p99_ms"] - direct["p99_ms"], 3),
                "litellm_rps": round(lite["rps"], 1),
                "litellm_throughput_ratio": round(lite["rps"] / direct["rps"], 3),
            })
        elif args.litellm:
            figures["litellm_skipped"] = "litellm is not installed (pip install 'litellm[proxy]')"
    print(f"direct      p50 {figures['direct_p50_ms']:.3f} ms   {figures['direct_rps']:.0f} req/s"
          f" at concurrency {args.concurrency}")
    print(f"turnout     p50 {figures['turnout_p50_ms']:.3f} ms   {figures['turnout_rps']:.0f} "
          f"req/s   overhead p50 {figures['overhead_p50_ms']:.3f} ms, p99 "
          f"{figures['overhead_p99_ms']:.3f} ms, ratio {figures['throughput_ratio']:.2f}")
    if "litellm_overhead_p50_ms" in figures:
        print(f"litellm     p50 {figures['litellm_p50_ms']:.3f} ms   {figures['litellm_rps']:.0f} "
              f"req/s   overhead p50 {figures['litellm_overhead_p50_ms']:.3f} ms, ratio "
              f"{figures['litellm_throughput_ratio']:.2f}")
    elif args.litellm:
        print(f"litellm     not measured: {figures['litellm_skipped']}")
    print(json.dumps(figures))


def start_litellm(tmp: Path, upstream: str, stack: ExitStack) -> dict[str, tuple[str, dict]]:
    """LiteLLM's proxy, one worker, in front of the same upstream; none if not installed."""
    litellm = (shutil.which("litellm", path=str(Path(sys.executable).parent))
               or shutil.which("litellm"))
    if litellm is None:
        return {}
    port = free_port()
    master_key = "sk-" + os.urandom(16).hex()  # the proxy refuses to start without one
    stack.enter_context(process(
        [litellm, "--config", str(litellm_config(tmp, upstream)), "--port", str(port),
         "--num_workers", "1"], f"http://127.0.0.1:{port}/health/liveliness",
        env={"LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_LOG": "ERROR",
             "LITELLM_MASTER_KEY": master_key}, timeout=180))
    return {"litellm": (f"http://127.0.0.1:{port}/v1/chat/completions",
                        {"Authorization": f"Bearer {master_key}"})}


if __name__ == "__main__":
    main()
