"""Faults: two replicas, misbehaving upstreams, a replica stopped mid-run; is anything lost?

Starts two ``turnout serve`` replicas with one config: state (rate windows, budgets, the response
cache, circuit breakers) in Redis under a key prefix of this run's own, the request record in
PostgreSQL in a schema of this run's own (each replica journals to its own file first). Behind
them, three upstreams that speak OpenAI's chat completions protocol:

* ``alpha`` (this file run with ``--serve-upstream PORT``), the first choice of every route, whose
  behaviour the bench switches on a schedule (``POST /mode``);
* ``beta``, the same server left healthy, the fallback;
* ``tarpit``, a socket that listens but never accepts, its backlog already full: every connection
  to it times out (the ``edge`` route tries it first).

Requests (``--concurrency`` at a time, half of them streamed, one in ten a repeated
``temperature: 0`` prompt the cache answers, one in five on a key whose budget runs out during
the run) go through a load balancer in the client: round robin over the replicas that are up; a
request that could not reach a replica (connection refused or dropped before any response byte)
is sent to the other one, as a load balancer does. Every request carries its own ``x-request-id``,
which the record keeps (``client_request_id``), so a request retried on the other replica can be
counted once.

The run is cut into phases of ``--phase-s`` seconds each; in each, ``alpha`` does one thing:

``normal``, ``rate_limit_storm`` (429 with ``Retry-After: 1``), ``server_errors`` (500, 502, 503 in
turn), ``read_timeout`` (no answer within the replicas' 1 s read timeout), ``stream_cut`` (a stream
closed mid-answer, without ``[DONE]``), ``stream_error`` (an error event inside a 200 stream),
``malformed_json`` (a 200 whose body, or whose stream's data, is not JSON), ``slow_drip`` (an answer
trickled out, each gap under the read timeout: it must be answered), ``outage`` (the ``alpha``
process is killed: connections are refused; it is started again when the phase ends, the
``recovery`` phase) and ``replica_restart`` (replica 1 gets SIGTERM, as a deploy or a scale-down
sends it, and is started again once it has exited, the phase lasting until it is back;
``--kill-signal KILL`` kills it instead, see below). Circuit breakers stay on their default
(deployments only, and ``alpha`` has one), so every fault reaches the replicas instead of being
stepped around.

What counts:

* ``answered``: 200 with a whole answer (JSON with content, or a stream that ends ``[DONE]``);
* ``clean_errors``: the API's own error format with a fitting status (4xx, or 502/503/504 for
  upstream failures: never 500), or an error event inside a stream; counted by status and type;
* ``unclean``: everything else: a 500, a body that is not the API's error format, a hang past
  the client's timeout, a stream that stops without ``[DONE]`` or an error event, a connection
  dropped after the request was taken;
* ``records``: the request record's top-level rows of this run, read from PostgreSQL after both
  replicas have stopped; ``duplicate_records``: rows beyond the first with the same
  ``client_request_id``; ``missing_records``: requests sent with no row;
* ``overspend_usd``: the spend recorded on the budgeted key beyond its limit.

With ``--kill-signal KILL`` the replica gets no chance to finish what it holds: what it had
answered is in its journal and reaches PostgreSQL when it starts again, but a stream it was
sending is cut by the operating system, with no process left to send an error event, and is
counted unclean. The default, TERM, is the stop a deploy or an autoscaler sends.

The last line is one JSON object: ``requests``, ``answered``, ``clean_errors``, ``unclean``,
``records``, ``duplicate_records``, ``overspend_usd``, ``p99_ms``, and ``p50_ms``,
``missing_records``, ``clean_errors_by_kind``, ``unclean_by_kind``, ``unclean_samples``,
``retried_on_other_replica``, ``by_phase`` (answered, clean and unclean per phase),
``faults_injected`` (what ``alpha`` did, by kind), ``budget_limit_usd``, ``budget_spent_usd``,
``cache_hits``, ``replica_restarts``, ``kill_signal``, ``seconds``, ``concurrency``.

Needs Redis (``--redis``) and PostgreSQL (``--postgres``); the run's keys and schema are removed
after.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from contextlib import AsyncExitStack, ExitStack, contextmanager
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))

from overhead import drop_shared, free_port, process, shared_tables  # noqa: E402
from upstream import read_body, send_json  # noqa: E402

PHASES = ("normal", "rate_limit_storm", "server_errors", "read_timeout", "stream_cut",
          "stream_error", "malformed_json", "slow_drip", "outage", "recovery", "replica_restart",
          "normal")
"""What ``alpha`` does, phase by phase (``outage``: it is down; ``replica_restart``: it is
healthy while replica 1 is stopped and started again)."""

UPSTREAM_MODES = {"normal", "rate_limit_storm", "server_errors", "read_timeout", "stream_cut",
                  "stream_error", "malformed_json", "slow_drip"}
READ_TIMEOUT_S = 1.0
"""The replicas' read timeout towards the upstreams; ``read_timeout`` waits longer than this,
``slow_drip`` less between two pieces."""
CONNECT_TIMEOUT_S = 0.3
PRICE = 1.0
"""Input and output price of every model, $ per million tokens: a request costs 18 tokens."""
BUDGET_USD = 18 * PRICE / 1e6 * 40
"""The budgeted key's limit: 40 answers' worth, spent well before the run ends."""
KEYS = {"main": "sk-faults-main-key", "capped": "sk-faults-capped-key"}
CACHED_PROMPTS = 5
CLIENT_TIMEOUT_S = 30.0
"""Longer than anything a replica may take (fallbacks included): past it a request hung."""


# --- the upstream ----------------------------------------------------------------------------


def upstream_app():
    """OpenAI's chat completions, answering as ``POST /mode`` last said (see the module's
    docstring); ``GET /faults`` tells what was injected, by kind."""
    import orjson

    state = {"mode": "normal", "calls": 0}
    faults: collections.Counter[str] = collections.Counter()

    def chunk(model: str, delta: dict, finish: str | None = None, usage: dict | None = None):
        payload = {"id": "chatcmpl-faults", "object": "chat.completion.chunk", "model": model,
                   "created": int(time.time()),
                   "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
        if usage:
            payload["usage"] = usage
        return b"data: " + orjson.dumps(payload) + b"\n\n"

    async def app(scope, receive, send):
        body = await read_body(scope, receive, send)
        if body is None:
            return
        path = scope["path"]
        if path == "/mode":
            state["mode"] = orjson.loads(body)["mode"]
            await send_json(send, 200, {"mode": state["mode"]})
            return
        if path == "/faults":
            await send_json(send, 200, dict(faults))
            return
        if path.endswith("/models"):
            await send_json(send, 200, {"object": "list", "data": [{"id": "alpha"}]})
            return
        request = orjson.loads(body)
        model, stream, mode = request.get("model", "alpha"), bool(request.get("stream")), \
            state["mode"]
        state["calls"] += 1
        if mode != "normal" and mode != "slow_drip":
            faults[mode] += 1
        if mode == "rate_limit_storm":
            await send_json(send, 429, {"error": {"message": "slow down", "type": "rate_limit"}},
                            [(b"retry-after", b"1")])
            return
        if mode == "server_errors":
            status = (500, 502, 503)[state["calls"] % 3]
            await send_json(send, status, {"error": {"message": "injected", "type": "server"}})
            return
        if mode == "read_timeout":
            await asyncio.sleep(READ_TIMEOUT_S * 5)
        text = "The answer is 42."
        usage = {"prompt_tokens": 12, "completion_tokens": 6, "total_tokens": 18}
        if mode == "malformed_json" and not stream:
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", b"application/json")]})
            await send({"type": "http.response.body", "body": b'{"choices": [{"index": 0, "mess'})
            return
        if not stream:
            await send_json(send, 200, {
                "id": "chatcmpl-faults", "object": "chat.completion", "created": int(time.time()),
                "model": model, "usage": usage,
                "choices": [{"index": 0, "finish_reason": "stop", "logprobs": None,
                             "message": {"role": "assistant", "content": text}}]})
            return
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/event-stream")]})
        if mode == "malformed_json":
            await send({"type": "http.response.body", "body": b"data: {not json\n\n"})
            return
        pieces = [text[i:i + 4] for i in range(0, len(text), 4)]
        for n, piece in enumerate(pieces):
            await send({"type": "http.response.body", "more_body": True,
                        "body": chunk(model, {"content": piece})})
            if mode == "slow_drip":
                await asyncio.sleep(READ_TIMEOUT_S / 4)
            if n == 1 and mode == "stream_cut":
                raise ConnectionAbortedError("injected: stream cut mid-answer")
            if n == 1 and mode == "stream_error":
                error = {"error": {"message": "injected: overloaded", "type": "server_error"}}
                await send({"type": "http.response.body",
                            "body": b"data: " + orjson.dumps(error) + b"\n\n"})
                return
        await send({"type": "http.response.body",
                    "body": chunk(model, {}, "stop", usage) + b"data: [DONE]\n\n"})

    return app


def serve_upstream(port: int) -> None:
    import uvicorn

    uvicorn.run(upstream_app(), host="127.0.0.1", port=port, log_level="critical",
                access_log=False)


@contextmanager
def tarpit():
    """A listening socket that never accepts, its backlog filled by connections held here: a
    connection to it gets no answer to its SYN and times out. Yields its port."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    held = []
    try:
        for _ in range(4):  # the backlog of listen(0) takes one or two; the rest never connect
            s = socket.socket()
            s.setblocking(False)
            try:
                s.connect(listener.getsockname())
            except BlockingIOError:
                pass
            held.append(s)
        yield listener.getsockname()[1]
    finally:
        for s in held:
            s.close()
        listener.close()


# --- the replicas ----------------------------------------------------------------------------


def gateway_config(tmp: Path, replica: int, ports: dict[str, int], args, prefix: str,
                   schema: str) -> Path:
    providers = "".join(f"""
[providers.{name}]
kind = "openai-compatible"
base_url = "http://127.0.0.1:{port}/v1"
timeout = {{ connect = {CONNECT_TIMEOUT_S}, read = {READ_TIMEOUT_S} }}
""" for name, port in ports.items())
    models = "".join(f"""
[models.{name}]
provider = "{name}"
input_price = {PRICE}
output_price = {PRICE}
""" for name in ports)
    path = tmp / f"replica{replica}.toml"
    path.write_text(f"""
[server]
api_keys = [{{ name = "main", key = "{KEYS['main']}" }},
            {{ name = "capped", key = "{KEYS['capped']}" }}]
{providers}{models}
[routes.main]
models = ["alpha", "beta"]

[routes.edge]
models = ["tarpit", "alpha", "beta"]

{shared_tables(args, prefix, schema, tmp / f'replica{replica}.journal')}
[[budgets]]
scope = "key"
match = "capped"
limit_usd = {BUDGET_USD!r}
window = "total"

[logging]
level = "error"
""")
    return path


class Replica:
    """A server process (a replica, or ``alpha``) that can be stopped and started again on its
    port; ready once ``ready`` answers 200. Its standard error is appended to ``log`` (a file, never
    a pipe nobody reads, which would fill and block the server's event loop)."""

    def __init__(self, argv: list[str], port: int, log: Path, ready: str = "/readyz") -> None:
        self.argv, self.port, self.log, self.ready = argv, port, log, ready
        self.url = f"http://127.0.0.1:{port}"
        self.proc: subprocess.Popen | None = None
        self.up = False

    def start(self, timeout: float = 60) -> None:
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(self.argv, stdout=subprocess.DEVNULL, stderr=log)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                said = self.log.read_text(errors="replace")[-2000:]
                raise RuntimeError(f"{self.argv[1]} exited: {said}")
            try:
                if httpx.get(f"{self.url}{self.ready}", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.argv[1]} on {self.port} did not become ready")
            time.sleep(0.05)
        self.up = True

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> None:
        """Signal the process and wait for it to exit. Until it has, it still counts as up: the
        load balancer learns that it is going from its refused and closed connections, as a real
        one does, not from this."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.up = False


# --- the client ------------------------------------------------------------------------------


def request_body(i: int) -> tuple[str, dict]:
    """Request ``i``: its key, and a body (route, streamed or not, a cached prompt or a new
    one)."""
    key = "capped" if i % 5 == 4 else "main"
    body: dict = {"model": "edge" if i % 8 == 3 else "main", "max_tokens": 6,
                  "stream": (i // 2) % 2 == 1,
                  "messages": [{"role": "user", "content": f"Question #{i}: what is the answer?"}]}
    if i % 10 == 7:
        body["temperature"] = 0
        body["messages"][0]["content"] = f"Cached question {i % CACHED_PROMPTS}?"
    return key, body


def is_api_error(payload) -> bool:
    return isinstance(payload, dict) and isinstance(payload.get("error"), dict) \
        and isinstance(payload["error"].get("message"), str)


class NotDelivered(Exception):
    """The request never reached a replica, or was dropped before any response byte: a load
    balancer sends it to another replica."""


def judge_error(status: int, payload) -> tuple[str, str]:
    if not is_api_error(payload):
        return "unclean", f"not_api_error_{status}"
    kind = f"{status}:{payload['error'].get('type')}"
    if status == 500 or status < 400:
        return "unclean", kind
    return "clean_error", kind


async def once(client: httpx.AsyncClient, url: str, key: str, body: dict,
               request_id: str) -> tuple[str, str, bool]:
    """``(outcome, detail, cache_hit)`` of one try at one replica. Raises NotDelivered when the
    replica could not be reached or closed the connection before the status line: it did not
    take the request, so it is safe to send elsewhere (``duplicate_records`` would show it if
    that were ever wrong)."""
    headers = {"authorization": f"Bearer {KEYS[key]}", "x-request-id": request_id}
    async with AsyncExitStack() as stack:
        try:
            response = await stack.enter_async_context(
                client.stream("POST", url, json=body, headers=headers))
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.RemoteProtocolError,
                httpx.ReadError, httpx.WriteError) as exc:
            raise NotDelivered(type(exc).__name__) from None
        except httpx.HTTPError as exc:
            return "unclean", f"before_answer_{type(exc).__name__}", False
        hit = response.headers.get("x-turnout-cache") == "hit"
        try:
            if response.status_code != 200 or not body["stream"]:
                raw = await response.aread()
                try:
                    payload = json.loads(raw)
                except ValueError:
                    return "unclean", f"not_json_{response.status_code}", hit
                if response.status_code != 200:
                    return (*judge_error(response.status_code, payload), hit)
                choices = payload.get("choices") or [{}]
                ok = isinstance(choices[0].get("message", {}).get("content"), str)
                return ("answered", "", hit) if ok else ("unclean", "no_content", hit)
            async for line in response.aiter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    return "answered", "", hit
                try:
                    event = json.loads(data)
                except ValueError:
                    return "unclean", "bad_sse_json", hit
                if is_api_error(event):
                    return "clean_error", f"stream:{event['error'].get('type')}", hit
            return "unclean", "truncated_stream", hit
        except httpx.TimeoutException as exc:
            return "unclean", f"hang_{type(exc).__name__}", hit
        except httpx.HTTPError as exc:
            return "unclean", f"cut_{type(exc).__name__}", hit


class Run:
    """The client side: the load balancer, the schedule, and the counts."""

    def __init__(self, args, replicas: list[Replica], alpha: dict, run_id: str) -> None:
        self.args, self.replicas, self.alpha, self.run_id = args, replicas, alpha, run_id
        self.outcomes: collections.Counter[str] = collections.Counter()
        self.clean: collections.Counter[str] = collections.Counter()
        self.unclean: collections.Counter[str] = collections.Counter()
        self.samples: list[dict] = []
        self.by_phase = {f"{n}:{p}": collections.Counter() for n, p in enumerate(PHASES)}
        self.latencies: list[float] = []
        self.retried = 0
        self.restarts = 0
        self.restarting = False
        self.faults: collections.Counter[str] = collections.Counter()
        self.cache_hits = 0
        self.over = False
        self.next_i = 0
        self.phase = 0
        self.turn = 0

    def pick(self, avoid: Replica | None) -> Replica | None:
        up = [r for r in self.replicas if r.up and r is not avoid] or \
             [r for r in self.replicas if r.up]
        if not up:
            return None
        self.turn += 1
        return up[self.turn % len(up)]

    async def one(self, client: httpx.AsyncClient, i: int) -> tuple[str, str, bool]:
        key, body = request_body(i)
        request_id = f"faults-{self.run_id}-{i}"
        tried: Replica | None = None
        for attempt in range(20):
            replica = self.pick(tried)
            if replica is None:
                await asyncio.sleep(0.05)
                continue
            try:
                return await once(client, f"{replica.url}/v1/chat/completions", key, body,
                                  request_id)
            except NotDelivered:
                tried = replica
                self.retried += 1
                await asyncio.sleep(0.01 * attempt)
        return "unclean", "no_replica_took_it", False

    async def worker(self, client: httpx.AsyncClient) -> None:
        """Send requests, one at a time, until the last phase ends; each is counted in the phase
        it started in."""
        while not self.over:
            i, self.next_i = self.next_i, self.next_i + 1
            phase = self.phase
            t0 = time.perf_counter()
            kind, detail, hit = await self.one(client, i)
            self.latencies.append(time.perf_counter() - t0)
            self.outcomes[kind] += 1
            self.by_phase[f"{phase}:{PHASES[phase]}"][kind] += 1
            self.cache_hits += hit
            if kind == "clean_error":
                self.clean[detail] += 1
            elif kind == "unclean":
                self.unclean[detail] += 1
                if len(self.samples) < 20:
                    self.samples.append({"i": i, "phase": PHASES[phase], "kind": detail,
                                         "stream": request_body(i)[1]["stream"]})

    async def enter(self, client: httpx.AsyncClient, phase: int) -> None:
        """Make ``alpha`` (and the replicas) do what phase ``phase`` says."""
        name, before = PHASES[phase], PHASES[phase - 1] if phase else None
        self.phase = phase
        if before == "outage":
            await asyncio.to_thread(self.alpha["start"])
        if name == "outage":
            self.faults.update((await client.get(f"{self.alpha['url']}/faults")).json())
            await asyncio.to_thread(self.alpha["stop"])
            return
        mode = name if name in UPSTREAM_MODES else "normal"
        await client.post(f"{self.alpha['url']}/mode", json={"mode": mode})
        if name == "replica_restart":
            self.restarting = True
            asyncio.get_running_loop().create_task(self.restart(self.replicas[0]))

    async def restart(self, replica: Replica) -> None:
        """Stop ``replica`` with the chosen signal while requests keep coming, and start it
        again."""
        sig = signal.SIGKILL if self.args.kill_signal == "KILL" else signal.SIGTERM
        try:
            await asyncio.to_thread(replica.stop, sig)
            await asyncio.to_thread(replica.start)
            self.restarts += 1
        finally:
            self.restarting = False

    async def drive(self) -> dict:
        """Run every phase for ``--phase-s`` seconds (the replica restart until the replica is
        back, and at least that long) with ``--concurrency`` requests in flight throughout."""
        limits = httpx.Limits(max_connections=2 * self.args.concurrency,
                              max_keepalive_connections=2 * self.args.concurrency)
        started = time.perf_counter()
        async with httpx.AsyncClient(limits=limits, timeout=CLIENT_TIMEOUT_S) as client:
            workers = [asyncio.create_task(self.worker(client))
                       for _ in range(self.args.concurrency)]
            for phase in range(len(PHASES)):
                await self.enter(client, phase)
                await asyncio.sleep(self.args.phase_s)
                while self.restarting:
                    await asyncio.sleep(0.1)
                print(f"phase {PHASES[phase]:<17} {dict(self.by_phase[f'{phase}:{PHASES[phase]}'])}",
                      file=sys.stderr, flush=True)
            self.over = True
            await asyncio.gather(*workers)
            self.faults.update((await client.get(f"{self.alpha['url']}/faults")).json())
        ordered = sorted(self.latencies)
        return {"seconds": round(time.perf_counter() - started, 1),
                "p50_ms": round(1000 * ordered[len(ordered) // 2], 1),
                "p99_ms": round(1000 * ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))],
                                1)}


def read_records(dsn: str, schema: str) -> dict[str, list]:
    """Top-level record rows of this run by the client's request id: [client, status, cost]."""
    import psycopg

    rows: dict[str, list] = collections.defaultdict(list)
    with psycopg.connect(dsn) as db:
        for client_id, client, status, cost in db.execute(
                f"SELECT decision::json->>'client_request_id', client, status, cost_usd "
                f'FROM "{schema}".requests WHERE parent_id IS NULL'):
            rows[client_id].append((client, status, float(cost)))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--phase-s", type=float, default=5.0,
                        help="seconds each phase lasts (the run takes about 12 times this)")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--kill-signal", choices=("TERM", "KILL"), default="TERM",
                        help="how replica 1 is stopped in the replica_restart phase")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--postgres", default="postgresql://postgres@127.0.0.1:5432/test")
    parser.add_argument("--serve-upstream", type=int, metavar="PORT",
                        help="run only the scheduled upstream on PORT (used by the bench)")
    args = parser.parse_args()
    if args.serve_upstream:
        serve_upstream(args.serve_upstream)
        return
    if args.phase_s <= 0:
        parser.error("--phase-s must be above 0")
    py = sys.executable
    turnout = shutil.which("turnout", path=str(Path(py).parent)) or "turnout"
    run_id = uuid.uuid4().hex[:12]
    prefix, schema = f"turnout-faults:{run_id}:", f"turnout_faults_{run_id}"
    try:
        with tempfile.TemporaryDirectory() as tmpdir, ExitStack() as stack:
            tmp = Path(tmpdir)
            alpha_port, beta_port = free_port(), free_port()
            upstream_argv = [py, str(Path(__file__).resolve()), "--serve-upstream"]
            stack.enter_context(process([*upstream_argv, str(beta_port)],
                                        f"http://127.0.0.1:{beta_port}/v1/models"))
            alpha = Replica([*upstream_argv, str(alpha_port)], alpha_port, tmp / "alpha.log",
                            ready="/v1/models")
            alpha.start()
            stack.callback(alpha.stop)
            ports = {"alpha": alpha_port, "beta": beta_port,
                     "tarpit": stack.enter_context(tarpit())}
            replicas = []
            for n in (1, 2):
                port = free_port()
                replica = Replica([turnout, "serve", "--config",
                                   str(gateway_config(tmp, n, ports, args, prefix, schema)),
                                   "--port", str(port)], port, tmp / f"replica{n}.log")
                replica.start()
                stack.callback(replica.stop)
                replicas.append(replica)
            run = Run(args, replicas, {"url": alpha.url, "start": alpha.start,
                                       "stop": lambda: alpha.stop(signal.SIGKILL)}, run_id)
            timing = asyncio.run(run.drive())
            for replica in replicas:  # SIGTERM: they drain and flush the record
                replica.stop()
            rows = read_records(args.postgres, schema)
    finally:
        drop_shared(args, prefix, schema)
    ours = {k: v for k, v in rows.items() if k and k.startswith(f"faults-{run_id}-")}
    records = sum(len(v) for v in ours.values())
    capped_spent = sum(cost for v in ours.values() for client, status, cost in v
                       if client == "capped")
    figures = {
        "requests": run.next_i,
        "answered": run.outcomes["answered"],
        "clean_errors": run.outcomes["clean_error"],
        "unclean": run.outcomes["unclean"],
        "records": records,
        "duplicate_records": records - len(ours),
        "missing_records": run.next_i - len(ours),
        "overspend_usd": round(max(capped_spent - BUDGET_USD, 0.0), 12),
        "p99_ms": timing["p99_ms"],
        "p50_ms": timing["p50_ms"],
        "clean_errors_by_kind": dict(run.clean),
        "unclean_by_kind": dict(run.unclean),
        "unclean_samples": run.samples,
        "retried_on_other_replica": run.retried,
        "by_phase": {k: dict(v) for k, v in run.by_phase.items()},
        "faults_injected": dict(run.faults),
        "replica_restarts": run.restarts,
        "budget_limit_usd": round(BUDGET_USD, 12),
        "budget_spent_usd": round(capped_spent, 12),
        "cache_hits": run.cache_hits,
        "kill_signal": args.kill_signal,
        "seconds": timing["seconds"],
        "concurrency": args.concurrency,
    }
    print(f"{figures['requests']} requests in {figures['seconds']} s: {figures['answered']} "
          f"answered, {figures['clean_errors']} clean errors, {figures['unclean']} unclean; "
          f"{figures['records']} records ({figures['duplicate_records']} duplicate, "
          f"{figures['missing_records']} missing); overspend ${figures['overspend_usd']}; "
          f"p99 {figures['p99_ms']} ms", file=sys.stderr)
    print(json.dumps(figures))



if __name__ == "__main__":
    main()
