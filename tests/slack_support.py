"""What the Slack bot's end-to-end tests share: the signing secret, a scripted upstream, the
fake Slack fixtures, and signed Events API deliveries (moved here from test_slack_chat.py)."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from typing import Any

import anyio
import httpx
import pytest

from turnout.kernel.hookspecs import hookimpl
from turnout.kernel.types import Chunk, Completion, Usage

from .fakes.slack_server import BOT_USER, TEAM, TOKEN, FakeSlack, fake_slack
from .gateway import Gateway

SECRET = "8f14e45fceea167a5a36dedd4bea2543"
"""The app's signing secret in these tests."""

ANSWER = ["Paris ", "is the ", "capital ", "of **France**."]
"""What the upstream says, chunk by chunk."""

CONFIG = {
    "providers": {"p": {"kind": "openai-compatible", "base_url": "http://127.0.0.1:9/v1"}},
    "models": {"small": {"provider": "p", "input_price": 1, "output_price": 2},
               "big": {"provider": "p", "input_price": 10, "output_price": 20}},
    "routes": {"chain": {"models": ["small", "big"]}, "strong": {"models": ["big"]}},
    "routing": {"default": "chain"},
}
"""Two models; the Upstream plugin answers for both (the provider is never reached)."""


class Upstream:
    """Answers every step with ``parts``: a stream of them (``delay`` seconds apart, ``first``
    before the first), or all at once for a request that does not stream; keeps what each
    request asked: its model and its messages."""

    def __init__(self, parts: list[str] | None = None, delay: float = 0.0,
                 first: float = 0.0) -> None:
        self.parts = list(parts or ANSWER)
        self.delay, self.first = delay, first
        self.asked: list[tuple[str, list[tuple[str, str]]]] = []
        self.headers: list[dict[str, str]] = []

    @hookimpl
    def call(self, ctx, step):
        self.asked.append((step.model.name,
                           [(m.role, m.content) for m in ctx.request.messages]))
        self.headers.append(dict(ctx.headers))
        if not ctx.request.stream:
            return Completion(content="".join(self.parts), usage=Usage(12, len(self.parts)))
        return self._stream()

    async def _stream(self):
        await anyio.sleep(self.first)
        for i, part in enumerate(self.parts):
            if i and self.delay:
                await anyio.sleep(self.delay)
            if isinstance(part, Exception):
                raise part
            yield Chunk(content=part)
        yield Chunk(finish_reason="stop", usage=Usage(12, len(self.parts)))


@pytest.fixture(scope="module", name="module_slack")
def module_slack_fixture():
    with fake_slack() as fake:
        yield fake


@pytest.fixture(name="slack")
def slack_fixture(module_slack: FakeSlack) -> FakeSlack:
    module_slack.reset()
    return module_slack


def config(fake: FakeSlack, **slack: Any) -> dict:
    """The gateway config with ``[slack]`` pointed at the fake."""
    return {**CONFIG, "slack": {"bot_token": TOKEN, "signing_secret": SECRET,
                                "api_url": fake.api_url, **slack}}


def sign(body: bytes, secret: str = SECRET, timestamp: int | None = None) -> dict[str, str]:
    """Slack's request signature headers for ``body``."""
    stamp = str(int(time.time()) if timestamp is None else timestamp)
    digest = hmac.new(secret.encode(), f"v0:{stamp}:".encode() + body, hashlib.sha256)
    return {"x-slack-request-timestamp": stamp, "x-slack-signature": "v0=" + digest.hexdigest(),
            "content-type": "application/json"}


_ids = iter(range(1, 1_000_000))


def message(text: str, *, channel: str = "D0DM", user: str = "U0ANN", ts: str | None = None,
            thread_ts: str | None = None, kind: str = "message") -> dict:
    """A message event (``kind`` message or app_mention), ``channel_type`` im for a D channel."""
    event = {"type": kind, "channel": channel, "user": user, "text": text, "team": TEAM,
             "ts": ts or f"{1_800_000_000 + next(_ids)}.000200"}
    if kind == "message" and channel.startswith("D"):
        event["channel_type"] = "im"
    if thread_ts:
        event["thread_ts"] = thread_ts
    event["event_ts"] = event["ts"]
    return event


def envelope(event: dict, event_id: str | None = None, team: str = TEAM) -> dict:
    """An Events API delivery of ``event``."""
    return {"token": "unused-verification-token", "team_id": team, "api_app_id": "A0TURNOUT",
            "event": event, "type": "event_callback",
            "event_id": event_id or f"Ev{next(_ids):08d}", "event_time": int(time.time()),
            "authorizations": [{"enterprise_id": None, "team_id": team, "user_id": BOT_USER,
                                "is_bot": True, "is_enterprise_install": False}]}


def deliver(gateway: Gateway, payload: dict, *, retry: int | None = None, secret: str = SECRET,
            timestamp: int | None = None) -> httpx.Response:
    """POST a signed delivery to /slack/events."""
    body = json.dumps(payload).encode()
    headers = sign(body, secret, timestamp)
    if retry is not None:
        headers.update({"x-slack-retry-num": str(retry), "x-slack-retry-reason": "http_timeout"})
    return httpx.post(gateway.url + "/slack/events", content=body, headers=headers, timeout=10)


def ask(gateway: Gateway, event: dict, **kw: Any) -> dict:
    """Deliver ``event``; it must be acknowledged at once. The delivery sent."""
    payload = envelope(event, **kw)
    response = deliver(gateway, payload)
    assert response.status_code == 200, response.text
    return payload


def context_of(message) -> str:
    (block,) = [b for b in message.blocks if b["type"] == "context"]
    return block["elements"][0]["text"]


# --- interactivity and slash commands (form bodies) ------------------------------------------


def post_form(gateway: Gateway, fields: dict[str, str]) -> httpx.Response:
    """POST a signed form body to /slack/events, as Slack sends interactivity and commands."""
    from urllib.parse import urlencode

    body = urlencode(fields).encode()
    headers = {**sign(body), "content-type": "application/x-www-form-urlencoded"}
    return httpx.post(gateway.url + "/slack/events", content=body, headers=headers, timeout=10)


def button(message, action_id: str, which: str = "positive_button") -> tuple[str, str]:
    """(element type, value) of the button ``action_id`` under ``message`` (a fake Slack
    message); ``which`` picks a feedback button."""
    for block in message.blocks:
        for element in block.get("elements") or []:
            if element.get("action_id") == action_id:
                if element["type"] == "feedback_buttons":
                    return element["type"], element[which]["value"]
                return element["type"], element["value"]
    raise AssertionError(f"no {action_id} under the message; blocks: {message.blocks}")


def press(gateway: Gateway, message, action_id: str, *, user: str = "U0ANN",
          which: str = "positive_button", team: str = TEAM,
          value: str | None = None) -> httpx.Response:
    """Press a button under ``message``, as user ``user``: a signed ``block_actions``
    interaction (``value`` overrides the button's); it must be acknowledged."""
    kind, found = button(message, action_id, which) if value is None else ("button", value)
    payload = {
        "type": "block_actions", "api_app_id": "A0TURNOUT", "token": "unused-verification-token",
        "team": {"id": team, "domain": "turnout-test"},
        "user": {"id": user, "username": user.lower(), "team_id": team},
        "container": {"type": "message", "message_ts": message.ts,
                      "channel_id": message.channel, "is_ephemeral": False,
                      "thread_ts": message.thread_ts},
        "channel": {"id": message.channel, "name": "a-channel"},
        "message": {"type": "message", "ts": message.ts, "thread_ts": message.thread_ts,
                    "text": message.text, "blocks": message.blocks, "user": BOT_USER},
        "trigger_id": f"{next(_ids)}.{next(_ids)}.abcdef",
        "actions": [{"type": kind, "action_id": action_id, "block_id": "b", "value": found,
                     "action_ts": f"{time.time():.6f}"}],
    }
    response = post_form(gateway, {"payload": json.dumps(payload)})
    assert response.status_code == 200, response.text
    return response


def command(gateway: Gateway, fake: FakeSlack, text: str, *, user: str = "U0ANN",
            channel: str = "D0DM", team: str = TEAM,
            response_url: bool = True) -> str:
    """Type ``/turnout <text>`` as ``user`` in ``channel``; it must be acknowledged. The name of
    the response URL handed over (read its answers with ``fake.responses(name)``)."""
    name = f"cmd{next(_ids)}"
    fields = {"token": "unused-verification-token", "team_id": team,
              "team_domain": "turnout-test", "channel_id": channel, "channel_name": "a-channel",
              "user_id": user, "user_name": user.lower(), "command": "/turnout", "text": text,
              "api_app_id": "A0TURNOUT", "is_enterprise_install": "false",
              "trigger_id": f"{next(_ids)}.abcdef"}
    if response_url:
        fields["response_url"] = fake.response_url(name)
    response = post_form(gateway, fields)
    assert response.status_code == 200, response.text
    return name


def texts(blocks: list[dict]) -> str:
    """Every text in ``blocks`` (sections, fields, context, headers), one per line."""
    found: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "text" and isinstance(value, str):
                    found.append(value)
                else:
                    walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(blocks)
    return "\n".join(found)


def ephemerals(fake: FakeSlack, user: str, count: int = 1) -> list[str]:
    """Wait for ``count`` ephemeral messages to ``user``; their texts."""
    def found() -> list[str] | None:
        said = [c.params.get("text") or "" for c in fake.of("chat.postEphemeral")
                if c.params.get("user") == user]
        return said if len(said) >= count else None
    return fake.wait(found, what=f"{count} ephemeral message(s) to {user}")


class LoopCatcher:
    """A plugin that keeps the gateway's event loop at startup, to run coroutines on it (the
    store, the alerts engine) from the test's thread."""

    def __init__(self) -> None:
        self.loop: Any = None

    @hookimpl
    async def startup(self, kernel) -> None:
        import asyncio

        self.loop = asyncio.get_running_loop()

    def run(self, coroutine: Any, timeout: float = 10.0) -> Any:
        import asyncio

        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)
