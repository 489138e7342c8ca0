"""A fake Slack Web API: ``POST /api/<method>``, form or JSON bodies, Slack's answer shapes.

It checks the bot token the way Slack does (``Authorization: Bearer``, or a ``token`` form field;
``{"ok": false, "error": "not_authed"}`` or ``"invalid_auth"``), answers ``{"ok": true, ...}``
with the fields the real methods return (``auth.test``, ``chat.postMessage``, ``chat.update``,
``chat.startStream``, ``chat.appendStream``, ``chat.stopStream``,
``assistant.threads.setStatus``, ``setSuggestedPrompts``, ``setTitle``, ``chat.postEphemeral``,
``views.publish``, ``files.getUploadURLExternal``, ``files.completeUploadExternal``),
``unknown_method`` for anything else, and keeps the messages it was sent (posted, edited,
streamed) so tests can read a thread as a user would see it.

Beside the Web API it serves what Slack hands out URLs for: ``POST /upload/<file id>`` (the
``upload_url`` of ``files.getUploadURLExternal``: the bytes are kept, see :attr:`FakeSlack.files`)
and ``POST /respond/<name>`` (a slash command's or a button's ``response_url``: what the app
answers is kept, see :meth:`FakeSlack.responses`; :meth:`FakeSlack.response_url` makes one).

Every call is recorded (method, params, when) before it is answered. Switches: ``streaming =
False`` makes ``chat.startStream`` answer ``{"ok": false, "error": "method_not_supported"}``
as a workspace without streaming does; :meth:`FakeSlack.rate_limit` answers a method 429 with
``Retry-After`` (and ``{"ok": false, "error": "ratelimited"}``) the next few times;
``closed_channels`` answers ``files.completeUploadExternal`` into them ``not_in_channel``.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from .server import serve

TEAM = "T0TURNOUT"
BOT_USER = "U0BOT"
BOT_ID = "B0BOT"
TOKEN = "xoxb-0000-1111-turnout-test-token"


@dataclass
class Call:
    """One Web API call: the method, its parameters (JSON fields decoded), when it came."""

    method: str
    params: dict[str, Any]
    at: float


@dataclass
class Message:
    """A message as the thread shows it: its text (Markdown for streams, else mrkdwn), blocks,
    and whether a stream is still writing it."""

    channel: str
    ts: str
    thread_ts: str | None
    text: str = ""
    blocks: list[dict] = field(default_factory=list)
    streaming: bool = False
    streamed: bool = False
    edits: int = 0


@dataclass
class Upload:
    """A file being uploaded: what ``files.getUploadURLExternal`` was told, the bytes POSTed to
    its upload URL, and where ``files.completeUploadExternal`` shared it."""

    id: str
    filename: str
    length: int
    alt_txt: str | None = None
    data: bytes | None = None
    title: str | None = None
    channel: str | None = None
    completed: bool = False


class FakeSlack:
    """The fake's state: calls received, messages, switches. Thread-safe (the server runs in
    its own thread)."""

    def __init__(self, token: str = TOKEN) -> None:
        self.token = token
        self.calls: list[Call] = []
        self.messages: dict[tuple[str, str], Message] = {}
        self.streaming = True
        self.stream_error = "method_not_supported"
        self._limits: Counter[str] = Counter()
        self._retry_after = 1
        self._lock = threading.Lock()
        self._ts = itertools.count(1)
        self._ids = itertools.count(1)
        self.files: dict[str, Upload] = {}
        """Uploads by file id."""
        self.views: dict[str, dict] = {}
        """The home view last published for each user."""
        self.closed_channels: set[str] = set()
        self._responses: list[tuple[str, dict]] = []
        self.url = ""
        """The server's base URL, once serving."""

    @property
    def api_url(self) -> str:
        """What ``TURNOUT_SLACK_API_URL`` should say."""
        return self.url + "/api/"

    def reset(self) -> None:
        with self._lock:
            self.calls.clear()
            self.messages.clear()
            self._limits.clear()
            self.files.clear()
            self.views.clear()
            self._responses.clear()
            self.closed_channels.clear()
        self.streaming = True

    def response_url(self, name: str) -> str:
        """A ``response_url`` to hand the app in a slash command or interaction payload."""
        return f"{self.url}/respond/{name}"

    def responses(self, name: str | None = None) -> list[dict]:
        """What the app POSTed to response URLs (to ``name``'s only, when given), in order."""
        with self._lock:
            return [body for hook, body in self._responses if name is None or hook == name]

    def rate_limit(self, method: str, times: int = 1, retry_after: int = 1) -> None:
        """Answer ``method`` 429 the next ``times`` times."""
        with self._lock:
            self._limits[method] += times
            self._retry_after = retry_after

    # --- reading what happened ---------------------------------------------------------------

    def of(self, *methods: str) -> list[Call]:
        """The calls of these methods (all calls when none named), in order."""
        with self._lock:
            return [c for c in self.calls if not methods or c.method in methods]

    def thread(self, channel: str, thread_ts: str) -> list[Message]:
        """The bot's messages in a thread, oldest first."""
        with self._lock:
            return sorted((m for m in self.messages.values()
                           if m.channel == channel and m.thread_ts == thread_ts),
                          key=lambda m: float(m.ts))

    def wait(self, until: Callable[[], Any], timeout: float = 10.0, what: str = "") -> Any:
        """Poll ``until()`` until it is truthy; its value, or AssertionError after ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            found = until()
            if found:
                return found
            if time.monotonic() > deadline:
                raise AssertionError(f"the fake Slack never got {what or 'what was awaited'}; "
                                     f"calls: {[c.method for c in self.of()]}")
            time.sleep(0.02)

    def finished(self, channel: str, thread_ts: str, count: int = 1) -> list[Message]:
        """Wait for ``count`` finished answers (messages with a context block) in a thread."""
        def done() -> list[Message] | None:
            found = [m for m in self.thread(channel, thread_ts)
                     if any(b.get("type") == "context" for b in m.blocks) and not m.streaming]
            return found if len(found) >= count else None
        return self.wait(done, what=f"{count} finished answer(s) in {channel}/{thread_ts}")

    # --- the API -----------------------------------------------------------------------------

    def _next_ts(self) -> str:
        return f"{1_700_000_000 + next(self._ts)}.000100"

    def answer(self, method: str, params: dict[str, Any], token: str | None) -> tuple[int, dict,
                                                                                      dict]:
        """(status, body, headers) for one call."""
        with self._lock:
            self.calls.append(Call(method, params, time.monotonic()))
            if self._limits[method] > 0:
                self._limits[method] -= 1
                return 429, {"ok": False, "error": "ratelimited"}, {
                    "Retry-After": str(self._retry_after)}
        if not token:
            return 200, {"ok": False, "error": "not_authed"}, {}
        if token != self.token:
            return 200, {"ok": False, "error": "invalid_auth"}, {}
        handler = getattr(self, "_" + method.replace(".", "_"), None)
        if handler is None:
            return 200, {"ok": False, "error": "unknown_method", "req_method": method}, {}
        with self._lock:
            return 200, handler(params), {}

    def _auth_test(self, params: dict) -> dict:
        return {"ok": True, "url": "https://turnout-test.slack.com/", "team": "Turnout Test",
                "user": "turnout", "team_id": TEAM, "user_id": BOT_USER, "bot_id": BOT_ID,
                "is_enterprise_install": False}

    def _chat_postMessage(self, params: dict) -> dict:
        channel = params.get("channel")
        if not channel:
            return {"ok": False, "error": "channel_not_found"}
        if not params.get("text") and not params.get("blocks"):
            return {"ok": False, "error": "no_text"}
        ts = self._next_ts()
        message = Message(channel, ts, params.get("thread_ts"), params.get("text") or "",
                          list(params.get("blocks") or []))
        self.messages[(channel, ts)] = message
        return {"ok": True, "channel": channel, "ts": ts, "message": self._shape(message)}

    def _chat_update(self, params: dict) -> dict:
        message = self.messages.get((params.get("channel"), params.get("ts")))
        if message is None:
            return {"ok": False, "error": "message_not_found"}
        if "text" in params:
            message.text = params["text"]
        if "blocks" in params:
            message.blocks = list(params["blocks"] or [])
        message.streaming = False
        message.edits += 1
        return {"ok": True, "channel": message.channel, "ts": message.ts, "text": message.text,
                "message": self._shape(message)}

    def _chat_startStream(self, params: dict) -> dict:
        if not self.streaming:
            return {"ok": False, "error": self.stream_error}
        channel = params.get("channel")
        if not channel:
            return {"ok": False, "error": "channel_not_found"}
        if not params.get("thread_ts"):
            return {"ok": False, "error": "invalid_arguments"}
        ts = self._next_ts()
        message = Message(channel, ts, params["thread_ts"], _markdown(params), streaming=True,
                          streamed=True)
        self.messages[(channel, ts)] = message
        return {"ok": True, "channel": channel, "ts": ts}

    def _chat_appendStream(self, params: dict) -> dict:
        message = self.messages.get((params.get("channel"), params.get("ts")))
        if message is None:
            return {"ok": False, "error": "message_not_found"}
        if not message.streaming:
            return {"ok": False, "error": "message_not_in_streaming_state"}
        message.text += _markdown(params)
        return {"ok": True, "channel": message.channel, "ts": message.ts}

    def _chat_stopStream(self, params: dict) -> dict:
        message = self.messages.get((params.get("channel"), params.get("ts")))
        if message is None:
            return {"ok": False, "error": "message_not_found"}
        if not message.streaming:
            return {"ok": False, "error": "message_not_in_streaming_state"}
        message.text += _markdown(params)
        message.blocks = list(params.get("blocks") or [])
        message.streaming = False
        return {"ok": True, "channel": message.channel, "ts": message.ts,
                "message": self._shape(message)}

    def _chat_postEphemeral(self, params: dict) -> dict:
        if not params.get("channel"):
            return {"ok": False, "error": "channel_not_found"}
        if not params.get("user"):
            return {"ok": False, "error": "user_not_in_channel"}
        if not params.get("text") and not params.get("blocks"):
            return {"ok": False, "error": "no_text"}
        return {"ok": True, "message_ts": self._next_ts()}

    def _views_publish(self, params: dict) -> dict:
        view = params.get("view")
        if not params.get("user_id"):
            return {"ok": False, "error": "invalid_arguments"}
        if not isinstance(view, dict) or view.get("type") != "home" \
                or not isinstance(view.get("blocks"), list) or len(view["blocks"]) > 100:
            return {"ok": False, "error": "invalid_arguments"}
        self.views[params["user_id"]] = view
        return {"ok": True, "view": {**view, "id": f"V{next(self._ids):08d}"}}

    def _files_getUploadURLExternal(self, params: dict) -> dict:
        filename, length = params.get("filename"), str(params.get("length") or "")
        if not filename or not length.isdigit() or int(length) <= 0:
            return {"ok": False, "error": "invalid_arguments"}
        file_id = f"F{next(self._ids):08d}"
        self.files[file_id] = Upload(file_id, filename, int(length), params.get("alt_txt"))
        return {"ok": True, "upload_url": f"{self.url}/upload/{file_id}", "file_id": file_id}

    def _files_completeUploadExternal(self, params: dict) -> dict:
        files = params.get("files")
        if not isinstance(files, list) or not files:
            return {"ok": False, "error": "invalid_arguments"}
        channel = params.get("channel_id")
        if channel in self.closed_channels:
            return {"ok": False, "error": "not_in_channel"}
        done = []
        for entry in files:
            upload = self.files.get(entry.get("id")) if isinstance(entry, dict) else None
            if upload is None or upload.data is None:
                return {"ok": False, "error": "file_not_found"}
            upload.title, upload.channel, upload.completed = entry.get("title"), channel, True
            done.append({"id": upload.id, "name": upload.filename, "title": upload.title,
                         "size": len(upload.data)})
        return {"ok": True, "files": done}

    def upload(self, file_id: str, data: bytes) -> tuple[int, str]:
        """The bytes POSTed to an upload URL: (status, body) as Slack's file servers answer."""
        with self._lock:
            self.calls.append(Call("(upload)", {"file_id": file_id, "bytes": len(data)},
                                   time.monotonic()))
            upload = self.files.get(file_id)
            if upload is None:
                return 404, "Not Found"
            upload.data = data
            return 200, f"OK - {len(data)}"

    def respond(self, name: str, body: dict) -> None:
        """A POST to the response URL ``name``."""
        with self._lock:
            self.calls.append(Call("(respond)", {"name": name, **body}, time.monotonic()))
            self._responses.append((name, body))

    def _assistant_threads_setStatus(self, params: dict) -> dict:
        return {"ok": True}

    def _assistant_threads_setSuggestedPrompts(self, params: dict) -> dict:
        return {"ok": True}

    def _assistant_threads_setTitle(self, params: dict) -> dict:
        return {"ok": True}

    @staticmethod
    def _shape(message: Message) -> dict:
        return {"type": "message", "user": BOT_USER, "bot_id": BOT_ID, "text": message.text,
                "ts": message.ts, "thread_ts": message.thread_ts, "blocks": message.blocks}


def _markdown(params: dict) -> str:
    """The Markdown a streaming call carries: ``markdown_text`` and ``markdown_text`` chunks."""
    text = params.get("markdown_text") or ""
    for chunk in params.get("chunks") or []:
        if isinstance(chunk, dict) and chunk.get("type") == "markdown_text":
            text += chunk.get("text") or ""
    return text


_JSON_FIELDS = ("blocks", "chunks", "prompts", "metadata", "attachments", "files", "view")


async def _params(request: Request) -> tuple[dict[str, Any], str | None]:
    """The call's parameters (form or JSON body, query string) and the token it carried."""
    raw = await request.body()
    media = request.headers.get("content-type", "").split(";")[0].strip()
    params: dict[str, Any] = dict(request.query_params)
    if media == "application/json" and raw:
        params.update(orjson.loads(raw))
    elif raw:
        params.update(parse_qsl(raw.decode(), keep_blank_values=True))
    for name in _JSON_FIELDS:
        if isinstance(params.get(name), str):
            params[name] = orjson.loads(params[name])
    auth = request.headers.get("authorization", "")
    token = auth.removeprefix("Bearer ").strip() if auth.startswith("Bearer ") else None
    return params, token or params.pop("token", None)


def slack_app(fake: FakeSlack) -> Starlette:
    """The fake as an ASGI app."""

    async def api(request: Request) -> Response:
        params, token = await _params(request)
        status, body, headers = fake.answer(request.path_params["method"], params, token)
        return Response(orjson.dumps(body), status_code=status, headers=headers,
                        media_type="application/json")

    async def upload(request: Request) -> Response:
        status, body = fake.upload(request.path_params["file_id"], await request.body())
        return Response(body, status_code=status, media_type="text/plain")

    async def respond(request: Request) -> Response:
        fake.respond(request.path_params["name"], orjson.loads(await request.body() or b"{}"))
        return Response(orjson.dumps({"ok": True}), media_type="application/json")

    return Starlette(routes=[Route("/api/{method}", api, methods=["POST", "GET"]),
                             Route("/upload/{file_id}", upload, methods=["POST"]),
                             Route("/respond/{name}", respond, methods=["POST"])])


@contextmanager
def fake_slack(token: str = TOKEN) -> Iterator[FakeSlack]:
    """A running fake Slack; its ``api_url`` is where the bot should talk."""
    fake = FakeSlack(token)
    with serve(slack_app(fake)) as url:
        fake.url = url
        yield fake
