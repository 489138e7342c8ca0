"""Scaling: throughput of ``turnout serve --workers N`` and of replicas behind a load balancer.

Starts ``bench/upstream.py`` (a lean OpenAI-format server, no think time unless
``--upstream-delay-ms``) and measures requests per second at a fixed concurrency
(``--concurrency`` connections from one httpx client, ``--requests`` requests after a warm-up, the
median of ``--rounds`` runs) of:

- a direct call to the upstream: the baseline;
- the gateway with 1, 2, ... ``--max-workers`` workers (default: the machine's core count), one
  ``turnout serve --workers N`` at a time;
- one and two replicas (``turnout serve`` processes of one worker each, on ports of their own)
  behind a local load balancer: a round-robin TCP proxy written here with asyncio (uvloop when
  installed), run as a process of its own (``python bench/scale.py balance --port P --to
  HOST:PORT ...``), which hands each new connection to the next replica.

Every gateway runs with its state in Redis (``--redis``; a key prefix of this run's own, its keys
removed after), as more than one worker requires, and its request log in one SQLite file per
gateway (the embedded default's backend; every worker or replica writes the same file, each with
a journal of its own). No budget, rate limit or cache is configured: what is measured is the
cost of serving and routing a request, spread over processes.

Efficiency per worker is ``rps(N) / (N * rps(1))``: 1.0 when N workers serve N times what one
does. For the replicas it is the same with the one replica behind the balancer as the unit.
``ratio_to_direct`` is a run's throughput over the baseline's.

**Read the figures for what the machine is.** The load generator (one Python process), the
upstream, the gateway's workers and, for replicas, the balancer all run on the same machine and
share its cores; the supervisor of ``--workers`` only watches and takes no share. On a machine with
two cores, two workers compete with the load generator and the upstream for those two cores, so
the efficiency says how much of the machine the gateway could take, not how it would scale on
cores of its own; the same holds for the balancer's own cost in the replica runs. The numbers are
what they are; ``cores`` in the output says how many there were.

The last line printed is one JSON object: ``baseline_rps``; ``workers``, a list of
``{"workers", "rps", "ratio_to_direct", "efficiency"}``; ``replicas``, a list of
``{"replicas", "rps", "ratio_to_direct", "efficiency"}`` for one and two replicas behind the
balancer; ``requests``, ``concurrency``, ``rounds``, ``cores``, ``upstream_delay_ms`` and
``balancer`` (what balanced).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from contextlib import ExitStack, contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from overhead import HERE, drive, free_port, process  # noqa: E402

BALANCER = "round-robin TCP proxy per connection, asyncio (bench/scale.py balance)"


# --- the load balancer -------------------------------------------------------------------------


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Copy ``reader`` to ``writer`` until end of stream, then pass the end on."""
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except (ConnectionError, OSError):
        writer.close()


async def balance(port: int, backends: list[tuple[str, int]]) -> None:
    """Listen on 127.0.0.1:``port`` and hand each connection to the next of ``backends``, in
    turn, copying bytes both ways until both sides have ended."""
    turn = itertools.cycle(backends)

    async def handle(client_reader: asyncio.StreamReader,
                     client_writer: asyncio.StreamWriter) -> None:
        host, backend_port = next(turn)
        try:
            backend_reader, backend_writer = await asyncio.open_connection(host, backend_port)
        except OSError:
            client_writer.close()
            return
        try:
            await asyncio.gather(_pipe(client_reader, backend_writer),
                                 _pipe(backend_reader, client_writer))
        finally:
            backend_writer.close()
            client_writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", port, backlog=2048)
    async with server:
        await server.serve_forever()


def run_balancer(argv: list[str]) -> None:
    """``balance --port P --to HOST:PORT [--to ...]``: run the balancer until killed."""
    parser = argparse.ArgumentParser(prog="scale.py balance")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--to", action="append", required=True, metavar="HOST:PORT")
    args = parser.parse_args(argv)
    backends = [(host, int(port)) for host, _, port in (to.rpartition(":") for to in args.to)]
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    try:
        asyncio.run(balance(args.port, backends))
    except KeyboardInterrupt:
        pass


# --- the gateways ------------------------------------------------------------------------------


def gateway_config(tmp: Path, name: str, upstream: str, redis_url: str, prefix: str,
                   journal: Path | None = None) -> Path:
    """A gateway's config: Redis state under ``prefix``, the log in ``tmp/<name>.db``
    (``journal``: a replica's own journal, beside the shared file)."""
    path = tmp / f"{name}-{journal.stem if journal else 'gw'}.toml"
    journal_line = f'journal = "{journal}"\n' if journal else ""
    path.write_text(f"""
[providers.upstream]
kind = "openai-compatible"
base_url = "{upstream}"

[models.bench-model]
provider = "upstream"
input_price = 1.0
output_price = 2.0

[state]
backend = "redis"
url = "{redis_url}"
key_prefix = "{prefix}"

[record]
path = "{tmp / f'{name}.db'}"
{journal_line}
[logging]
level = "error"
""")
    return path


@contextmanager
def gateway(argv: list[str], log: Path, timeout: float = 120):
    """Run ``turnout serve`` until the block ends (SIGTERM, then its drain); wait for its banner,
    which it prints once its kernel, or every worker's, has started: measuring while a worker
    is still starting would give the workers that serve the connections it never sees."""
    with open(log, "w+b") as errors:
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=errors)
        try:
            deadline = time.monotonic() + timeout
            while b"turnout: serving on" not in log.read_bytes():
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"{' '.join(argv)} did not start: "
                                       f"{log.read_bytes().decode(errors='replace')[-2000:]}")
                time.sleep(0.1)
            yield proc
        finally:
            proc.terminate()
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def throughput(url: str, args: argparse.Namespace) -> float:
    """Requests per second at ``--concurrency``: the median of ``--rounds`` runs."""
    return statistics.median(
        asyncio.run(drive(url, {}, args.concurrency, args.requests))["rps"]
        for _ in range(args.rounds))


def row(kind: str, n: int, rps: float, unit: float, baseline: float) -> dict:
    """One result: ``n`` workers or replicas, their rps, the ratio to the direct call and the
    efficiency against ``unit`` (the rps of one)."""
    return {kind: n, "rps": round(rps, 1), "ratio_to_direct": round(rps / baseline, 3),
            "efficiency": round(rps / (n * unit), 3)}


def run_bench(args: argparse.Namespace, prefix: str) -> dict:
    py = sys.executable
    turnout = shutil.which("turnout", path=str(Path(py).parent)) or "turnout"
    with tempfile.TemporaryDirectory() as tmpdir, ExitStack() as stack:
        tmp = Path(tmpdir)
        up_port = free_port()
        upstream = f"http://127.0.0.1:{up_port}/v1"
        stack.enter_context(process(
            [py, str(HERE / "upstream.py"), "--port", str(up_port),
             "--delay-ms", str(args.upstream_delay_ms)], f"{upstream}/models"))
        baseline = throughput(f"{upstream}/chat/completions", args)
        print(f"direct            {baseline:8.0f} req/s", flush=True)

        workers: list[dict] = []
        for n in range(1, args.max_workers + 1):
            port = free_port()
            config = gateway_config(tmp, f"workers{n}", upstream, args.redis, prefix)
            with gateway([turnout, "serve", "--config", str(config), "--port", str(port),
                          "--workers", str(n)], tmp / f"workers{n}.log"):
                rps = throughput(f"http://127.0.0.1:{port}/v1/chat/completions", args)
            workers.append(row("workers", n, rps, workers[0]["rps"] if workers else rps,
                               baseline))
            print(f"{n} worker{'s' if n > 1 else ' '}         {rps:8.0f} req/s   ratio "
                  f"{workers[-1]['ratio_to_direct']:.2f}   efficiency "
                  f"{workers[-1]['efficiency']:.2f}", flush=True)

        replicas: list[dict] = []
        for n in (1, 2):
            with ExitStack() as group:
                backends = []
                for i in range(n):
                    port = free_port()
                    config = gateway_config(tmp, f"replicas{n}", upstream, args.redis, prefix,
                                            journal=tmp / f"replicas{n}-r{i}.journal")
                    group.enter_context(gateway(
                        [turnout, "serve", "--config", str(config), "--port", str(port)],
                        tmp / f"replicas{n}-r{i}.log"))
                    backends += ["--to", f"127.0.0.1:{port}"]
                lb_port = free_port()
                group.enter_context(process(
                    [py, str(Path(__file__).resolve()), "balance", "--port", str(lb_port),
                     *backends], f"http://127.0.0.1:{lb_port}/readyz"))
                rps = throughput(f"http://127.0.0.1:{lb_port}/v1/chat/completions", args)
            replicas.append(row("replicas", n, rps, replicas[0]["rps"] if replicas else rps,
                                baseline))
            print(f"{n} replica{'s' if n > 1 else ' '} (lb)   {rps:8.0f} req/s   ratio "
                  f"{replicas[-1]['ratio_to_direct']:.2f}   efficiency "
                  f"{replicas[-1]['efficiency']:.2f}", flush=True)
    return {"baseline_rps": round(baseline, 1), "workers": workers, "replicas": replicas,
            "requests": args.requests, "concurrency": args.concurrency, "rounds": args.rounds,
            "cores": os.cpu_count(), "upstream_delay_ms": args.upstream_delay_ms,
            "balancer": BALANCER}


def cleanup(redis_url: str, prefix: str) -> None:
    """Remove the run's Redis keys."""
    import redis

    client = redis.Redis.from_url(redis_url)
    try:
        keys = list(client.scan_iter(match=prefix + "*", count=1000))
        for i in range(0, len(keys), 1000):
            client.delete(*keys[i:i + 1000])
    finally:
        client.close()


def main() -> None:
    if sys.argv[1:2] == ["balance"]:
        run_balancer(sys.argv[2:])
        return
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=3000,
                        help="requests per run, after a warm-up of 50")
    parser.add_argument("--concurrency", type=int, default=32,
                        help="requests in flight at once (one connection each)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="runs per target; its figure is their median")
    parser.add_argument("--max-workers", type=int, default=os.cpu_count() or 1,
                        help="measure 1, 2, ... this many workers (default: the core count)")
    parser.add_argument("--upstream-delay-ms", type=float, default=0.0,
                        help="the upstream's think time per request (0: pure serving cost)")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0",
                        help="the Redis every gateway keeps its state in")
    args = parser.parse_args()
    if min(args.requests, args.concurrency, args.rounds, args.max_workers) < 1:
        parser.error("--requests, --concurrency, --rounds and --max-workers must be 1 or more")
    prefix = f"turnout-bench:{uuid.uuid4().hex[:12]}:"
    try:
        figures = run_bench(args, prefix)
    finally:
        cleanup(args.redis, prefix)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
