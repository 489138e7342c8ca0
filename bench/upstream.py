"""A lean OpenAI-format upstream for benchmarks: a fixed answer after an optional delay.

Raw ASGI under uvicorn, so the upstream costs as little as possible and the benchmark measures
the gateway, not this server. Run: ``python bench/upstream.py --port 9000 --delay-ms 0``.
"""

from __future__ import annotations

import argparse
import asyncio
import time

import orjson
import uvicorn


async def read_body(scope, receive, send) -> bytes | None:
    """The body of an HTTP request, read whole; None for the ASGI lifespan, answered here until
    the server shuts down."""
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return None
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            return body


async def send_json(send, status: int, payload: dict, headers=()) -> None:
    """A whole JSON answer."""
    data = orjson.dumps(payload)
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(data)).encode()), *headers]})
    await send({"type": "http.response.body", "body": data})


def app_with_delay(delay_s: float):
    async def app(scope, receive, send):
        body = await read_body(scope, receive, send)
        if body is None:
            return
        if scope["path"].endswith("/models"):
            payload = {"object": "list", "data": [{"id": "bench-model", "object": "model"}]}
        else:
            model = orjson.loads(body).get("model", "bench-model") if body else "bench-model"
            if delay_s:
                await asyncio.sleep(delay_s)
            payload = {
                "id": "chatcmpl-bench", "object": "chat.completion", "created": int(time.time()),
                "model": model,
                "choices": [{"index": 0, "finish_reason": "stop", "logprobs": None,
                             "message": {"role": "assistant", "content": "The answer is 42."}}],
                "usage": {"prompt_tokens": 12, "completion_tokens": 6, "total_tokens": 18},
            }
        await send_json(send, 200, payload)

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--delay-ms", type=float, default=0.0)
    args = parser.parse_args()
    uvicorn.run(app_with_delay(args.delay_ms / 1000), host="127.0.0.1", port=args.port,
                log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
