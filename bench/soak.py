"""Soak: many requests through one gateway process; does memory, descriptors or latency creep?

Starts a local OpenAI-format upstream (this file run with ``--serve-upstream PORT``: raw ASGI
under uvicorn) and one ``turnout serve`` process whose config (written to a temporary directory)
has a route for every strategy: ``fallback``, ``cascade`` (validator ``json``, JSON requests),
``race``, ``ensemble`` (vote), ``critic``, ``chain`` (its second stage asks the fallback route)
and a ``trim`` route whose model's context window is too small for the long conversations sent
to it (the conversation plugin trims them). Requests go round the routes, half of them streamed,
``--concurrency`` at a time; the request log is SQLite in the temporary directory.

Faults are injected on a schedule by the upstream's model ``flaky`` (in every route but critic
and trim): of each 50 calls, one 500, one 429 with ``Retry-After: 0``; of each 50 streams, one cut
mid-answer (the connection closes without ``[DONE]``). The gateway must turn each into a clean
answer (another model, a retry) or a clean error in the API's format.

The cache is off (``[cache] enabled = false``) and every prompt is distinct: a soak should reach
the upstream on every request, and a growing cache would be memory growth by design, not a leak.

RSS and open descriptors of the gateway process (and its children) are read from /proc after
warm-up (the first 5% of requests) and at the end. Latency is per request, in the order sent:
``p50_ms`` and ``p99_ms`` are objects ``{"first": ..., "last": ...}`` over the first and last
10,000 requests (the first and last 10% when fewer than 20,000 are sent), which keeps the
issue's exact field names while giving both windows.

The last line is one JSON object: ``requests``, ``rss_start_mb``, ``rss_end_mb``,
``rss_growth_pct``, ``open_fds_start``, ``open_fds_end``, ``open_fds_growth``, ``errors``
(requests that got neither a clean answer nor a clean error), ``errors_by_kind``,
``error_samples`` (the first 20: request, route, kind, latency, seconds into the run),
``clean_errors`` (by status and type), ``p50_ms``, ``p99_ms``, ``p99_ratio_last_first``,
``window``, ``rps``, ``seconds``, ``by_route``, ``concurrency`` and ``faults_injected`` (what
the upstream injected, by kind).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))

from overhead import free_port, process, rss_mb  # noqa: E402
from upstream import read_body, send_json  # noqa: E402

ROUTES = ("fallback", "cascade", "race", "ensemble", "critic", "chain", "trim")
CRITIC_VERDICT = '{"score": 9, "feedback": "ok"}'
FAULT_PERIOD = 50


# --- the upstream ----------------------------------------------------------------------------


def upstream_app():
    """An OpenAI-format upstream: models ``steady``, ``steady2``, ``tiny`` and ``reviewer`` always
    answer (the reviewer with a JSON verdict, a request asking for JSON with a JSON object); ``flaky``
    fails on the schedule in the module's docstring."""
    import orjson

    calls: collections.Counter[object] = collections.Counter()
    faults: collections.Counter[str] = collections.Counter()

    async def app(scope, receive, send):
        body = await read_body(scope, receive, send)
        if body is None:
            return
        if scope["path"] == "/faults":
            await send_json(send, 200, dict(faults))
            return
        if scope["path"].endswith("/models"):
            await send_json(send, 200, {"object": "list", "data": [{"id": "steady"}]})
            return
        request = orjson.loads(body)
        model, stream = request.get("model", "steady"), bool(request.get("stream"))
        calls[model] += 1
        slot = calls[model] % FAULT_PERIOD
        if stream:  # streams are counted apart, so every 50th stream is cut whatever the mix
            calls[model, "stream"] += 1
        cut = model == "flaky" and stream and calls[model, "stream"] % FAULT_PERIOD == 30
        if model == "flaky" and slot == 10:
            faults["http_500"] += 1
            await send_json(send, 500, {"error": {"message": "injected", "type": "server_error"}})
            return
        if model == "flaky" and slot == 20:
            faults["http_429"] += 1
            await send_json(send, 429, {"error": {"message": "slow down", "type": "rate_limit"}},
                            [(b"retry-after", b"0")])
            return
        if model == "reviewer":
            text = CRITIC_VERDICT
        elif (request.get("response_format") or {}).get("type") == "json_object":
            text = '{"answer": 42}'
        else:
            text = "The answer is 42."
        usage = {"prompt_tokens": 12, "completion_tokens": 6, "total_tokens": 18}
        if not stream:
            await send_json(send, 200, {
                "id": "chatcmpl-soak", "object": "chat.completion", "created": int(time.time()),
                "model": model, "usage": usage,
                "choices": [{"index": 0, "finish_reason": "stop", "logprobs": None,
                             "message": {"role": "assistant", "content": text}}]})
            return
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/event-stream")]})
        half = len(text) // 2
        for piece in (text[:half], text[half:]):
            chunk = {"id": "chatcmpl-soak", "object": "chat.completion.chunk", "model": model,
                     "created": int(time.time()),
                     "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}]}
            await send({"type": "http.response.body", "more_body": True,
                        "body": b"data: " + orjson.dumps(chunk) + b"\n\n"})
            if cut:
                faults["stream_cut"] += 1
                raise ConnectionAbortedError("injected: stream cut mid-answer")
        last = {"id": "chatcmpl-soak", "object": "chat.completion.chunk", "model": model,
                "created": int(time.time()), "usage": usage,
                "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
        await send({"type": "http.response.body",
                    "body": b"data: " + orjson.dumps(last) + b"\n\ndata: [DONE]\n\n"})

    return app


def serve_upstream(port: int) -> None:
    import uvicorn

    uvicorn.run(upstream_app(), host="127.0.0.1", port=port, log_level="critical",
                access_log=False)


# --- the gateway -----------------------------------------------------------------------------


def gateway_config(tmp: Path, upstream: str) -> Path:
    models = "".join(f'\n[models.{m}]\nprovider = "up"\ninput_price = 1.0\noutput_price = 2.0\n'
                     for m in ("flaky", "steady", "steady2", "reviewer"))
    path = tmp / "soak.toml"
    path.write_text(f"""
[providers.up]
kind = "openai-compatible"
base_url = "{upstream}"
{models}
[models.tiny]
provider = "up"
context_window = 400
input_price = 1.0
output_price = 2.0

[routes.fallback]
models = ["flaky", "steady"]

[routes.cascade]
models = ["flaky", "steady"]
strategy = "cascade"
validators = ["json"]

[routes.race]
models = ["flaky", "steady"]
strategy = "race"
race = {{ n = 2 }}

[routes.ensemble]
models = ["steady", "steady2", "flaky"]
strategy = "ensemble"
ensemble = {{ combine = "vote" }}

[routes.critic]
models = ["steady"]
strategy = "critic"
critic = {{ model = "reviewer", max_rounds = 2 }}

[routes.chain]
strategy = "chain"
[[routes.chain.stages]]
name = "draft"
model = "steady"
prompt = "{{input}}"
[[routes.chain.stages]]
name = "polish"
model = "fallback"
prompt = "Polish this: {{draft}}"

[routes.trim]
models = ["tiny"]
history = "trim"

[cache]
enabled = false

[record]
path = "{tmp / 'soak.db'}"

[logging]
level = "warning"
""")
    return path


def open_fds(pid: int) -> int:
    """Open descriptors of a process and its children, from /proc."""
    pids = [pid]
    try:
        pids += [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        pass
    total = 0
    for p in pids:
        try:
            total += len(list(Path(f"/proc/{p}/fd").iterdir()))
        except OSError:
            continue
    return total


# --- the client ------------------------------------------------------------------------------

FILLER = " ".join(["the quick brown fox jumps over the lazy dog"] * 6)


def request_body(i: int) -> tuple[str, dict]:
    """Request ``i``: its route (round robin), streamed every other round, a distinct prompt."""
    route = ROUTES[i % len(ROUTES)]
    body: dict = {"model": route, "max_tokens": 16, "stream": (i // len(ROUTES)) % 2 == 1,
                  "messages": [{"role": "user", "content": f"Question #{i}: what is the answer?"}]}
    if route == "cascade":
        body["response_format"] = {"type": "json_object"}
        body["messages"][0]["content"] += " Answer in JSON."
    elif route == "trim":
        history = []
        for turn in range(8):
            history += [{"role": "user", "content": f"Turn {turn} of #{i}: {FILLER}"},
                        {"role": "assistant", "content": FILLER}]
        body["messages"] = [{"role": "system", "content": "Be brief."}, *history,
                            *body["messages"]]
    return route, body


def is_api_error(payload) -> bool:
    return isinstance(payload, dict) and isinstance(payload.get("error"), dict) \
        and "message" in payload["error"]


async def one(client: httpx.AsyncClient, url: str, body: dict) -> tuple[str, str]:
    """``("ok" | "clean_error" | "error", detail)`` for one request."""
    try:
        if not body["stream"]:
            response = await client.post(url, json=body)
            try:
                payload = response.json()
            except ValueError:
                return "error", f"not_json_{response.status_code}"
            if response.status_code == 200:
                choices = payload.get("choices") or [{}]
                ok = isinstance(choices[0].get("message", {}).get("content"), str)
                return ("ok", "") if ok else ("error", "no_content")
            if response.status_code >= 400 and is_api_error(payload):
                return "clean_error", f"{response.status_code}:{payload['error'].get('type')}"
            return "error", f"status_{response.status_code}"
        async with client.stream("POST", url, json=body) as response:
            if response.status_code != 200:
                raw = await response.aread()
                try:
                    payload = json.loads(raw)
                except ValueError:
                    return "error", f"not_json_{response.status_code}"
                if is_api_error(payload):
                    return "clean_error", f"{response.status_code}:{payload['error'].get('type')}"
                return "error", f"status_{response.status_code}"
            async for line in response.aiter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    return "ok", ""
                try:
                    event = json.loads(data)
                except ValueError:
                    return "error", "bad_sse_json"
                if is_api_error(event):
                    return "clean_error", f"stream:{event['error'].get('type')}"
            return "error", "truncated_stream"
    except httpx.HTTPError as exc:
        return "error", type(exc).__name__


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return round(1000 * ordered[min(len(ordered) - 1, int(q * len(ordered)))], 3)


async def quiet_sample(pid: int) -> tuple[float, int]:
    """RSS (MB) and open descriptors of the gateway once it has finished what it was doing (the
    request log written, cancelled calls closed)."""
    await asyncio.sleep(1.0)
    return rss_mb(pid), open_fds(pid)


async def drive(url: str, total: int, concurrency: int, gateway_pid: int) -> dict:
    latencies: list[float] = [0.0] * total
    outcomes: collections.Counter[str] = collections.Counter()
    errors: collections.Counter[str] = collections.Counter()
    samples: list[dict] = []
    clean: collections.Counter[str] = collections.Counter()
    by_route: dict[str, collections.Counter[str]] = {r: collections.Counter() for r in ROUTES}
    warmup = max(1, total // 20)
    done = 0
    next_i = 0
    started = time.perf_counter()
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=60) as client:
        async def worker(stop: int) -> None:
            nonlocal done, next_i
            while next_i < stop:
                i, next_i = next_i, next_i + 1
                route, body = request_body(i)
                t0 = time.perf_counter()
                kind, detail = await one(client, url, body)
                latencies[i] = time.perf_counter() - t0
                outcomes[kind] += 1
                by_route[route][kind] += 1
                if kind == "error":
                    errors[detail] += 1
                    if len(samples) < 20:
                        samples.append({"i": i, "route": route, "stream": body["stream"],
                                        "kind": detail, "ms": round(1000 * latencies[i]),
                                        "at_s": round(time.perf_counter() - started, 1)})
                elif kind == "clean_error":
                    clean[detail] += 1
                done += 1
                if done % max(1, total // 20) == 0:
                    rate = done / (time.perf_counter() - started)
                    print(f"{done}/{total} requests, {rate:.0f} req/s, errors {sum(errors.values())}"
                          f", rss {rss_mb(gateway_pid)} MB, fds {open_fds(gateway_pid)}",
                          file=sys.stderr, flush=True)

        # Both samples are taken with no request in flight and the client's connections open,
        # so they count the same things: after the warm-up, and after the last request.
        await asyncio.gather(*(worker(warmup) for _ in range(concurrency)))
        paused = time.perf_counter()
        start = await quiet_sample(gateway_pid)
        paused = time.perf_counter() - paused
        await asyncio.gather(*(worker(total) for _ in range(concurrency)))
        elapsed = time.perf_counter() - started - paused
        end = await quiet_sample(gateway_pid)
    window = 10_000 if total >= 20_000 else max(1, total // 10)
    first, last = latencies[:window], latencies[-window:]
    return {
        "requests": total,
        "rss_start_mb": start[0],
        "rss_end_mb": end[0],
        "rss_growth_pct": round(100 * (end[0] - start[0]) / start[0], 2),
        "open_fds_start": start[1],
        "open_fds_end": end[1],
        "open_fds_growth": end[1] - start[1],
        "errors": sum(errors.values()),
        "errors_by_kind": dict(errors),
        "error_samples": samples,
        "clean_errors": dict(clean),
        "p50_ms": {"first": percentile(first, 0.5), "last": percentile(last, 0.5)},
        "p99_ms": {"first": percentile(first, 0.99), "last": percentile(last, 0.99)},
        "p99_ratio_last_first": round(percentile(last, 0.99) / percentile(first, 0.99), 3),
        "window": window,
        "warmup_requests": warmup,
        "rps": round(total / elapsed, 1),
        "seconds": round(elapsed, 1),
        "by_route": {r: dict(c) for r, c in by_route.items()},
        "concurrency": concurrency,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=100_000, help="requests to send in all")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--serve-upstream", type=int, metavar="PORT",
                        help="run only the fault-injecting upstream on PORT (used by the bench)")
    args = parser.parse_args()
    if args.serve_upstream:
        serve_upstream(args.serve_upstream)
        return
    if args.requests < 20:
        parser.error("--requests must be at least 20 (a warm-up and two windows)")
    py = sys.executable
    turnout = shutil.which("turnout", path=str(Path(py).parent)) or "turnout"
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        up_port, gw_port = free_port(), free_port()
        upstream = f"http://127.0.0.1:{up_port}/v1"
        with process([py, str(Path(__file__).resolve()), "--serve-upstream", str(up_port)],
                     f"{upstream}/models"), \
                process([turnout, "serve", "--config", str(gateway_config(tmp, upstream)),
                         "--port", str(gw_port)], f"http://127.0.0.1:{gw_port}/readyz") as gateway:
            figures = asyncio.run(drive(f"http://127.0.0.1:{gw_port}/v1/chat/completions",
                                        args.requests, args.concurrency, gateway.pid))
            figures["faults_injected"] = httpx.get(f"http://127.0.0.1:{up_port}/faults").json()
    print(f"{figures['requests']} requests in {figures['seconds']} s ({figures['rps']} req/s); "
          f"rss {figures['rss_start_mb']} -> {figures['rss_end_mb']} MB "
          f"({figures['rss_growth_pct']}%), fds {figures['open_fds_growth']:+d}, errors "
          f"{figures['errors']}, p99 first {figures['p99_ms']['first']} ms, last "
          f"{figures['p99_ms']['last']} ms", file=sys.stderr)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
