"""How a fake upstream answers: a FIFO of behaviours, one per request, and a log of what it got.

Tests push behaviours (``Status(429, retry_after=2)``, ``CutStream(after_chunks=2)``...) before a
call; each request the fake accepts takes the next one, and an empty script answers normally.
The helpers here are shared by the three provider fakes so they fail in the same ways.
"""

from __future__ import annotations

import re
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import anyio
import orjson


@dataclass
class Reply:
    """Answer normally; ``text`` replaces the default echo of the last user message."""

    text: str | None = None


@dataclass
class Status:
    """Answer with an error status in the provider's own error format.

    ``body``: a dict is sent verbatim as JSON, a string becomes the error message, None gives the
    provider's usual message for ``code``. ``retry_after`` is sent the provider's way (a
    ``Retry-After`` header, or Gemini's ``RetryInfo``); ``headers`` are added as given.
    """

    code: int
    body: dict[str, Any] | str | None = None
    retry_after: float | str | None = None
    headers: dict[str, str] | None = None


@dataclass
class Delay:
    """Wait ``seconds`` before doing ``then`` (headers included, so a client read timeout fires)."""

    seconds: float
    then: "Behaviour" = field(default_factory=Reply)


@dataclass
class CutStream:
    """Stream ``after_chunks`` content chunks, then stop without the provider's terminator.

    ``abrupt`` drops the connection mid-body instead of ending the HTTP response cleanly.
    """

    after_chunks: int = 1
    abrupt: bool = False


@dataclass
class ErrorInStream:
    """Answer 200 and stream ``after_chunks`` chunks, then the provider's in-stream error event."""

    after_chunks: int = 1
    message: str = "The server is overloaded."


@dataclass
class EchoRequest:
    """Fail like a careless upstream whose error quotes the request back: the credential it
    received (the key, without its ``Bearer`` scheme), the prompt (the last user message) and
    ``leak`` (anything else it knows: a gateway key a chained gateway passed on, say), in the
    error's message and in its code field (OpenAI ``code``, Anthropic ``type``, Gemini
    ``status``).

    ``status`` is the HTTP status of the error answer. With ``after_chunks`` set, a streaming
    request is answered 200 instead, with that many chunks and then the provider's in-stream
    error event carrying the same message and code.
    """

    status: int = 400
    after_chunks: int | None = None
    leak: str = ""

    def message(self, credential: str, prompt: str) -> str:
        """The error message: every piece of the request quoted in full."""
        return (f"Could not process the request from {credential} with input '{prompt}' "
                f"{self.leak}").strip()

    def code(self, credential: str, prompt: str) -> str:
        """The error code: the same pieces run together."""
        return ":".join(p for p in (credential, self.leak, prompt) if p)

    def streams(self, stream: bool) -> bool:
        """True when a request (``stream``: a streaming one) is answered with a 200 stream that
        fails inside."""
        return self.after_chunks is not None and stream


@dataclass
class Refuse:
    """Refuse on content-policy grounds, the way the provider really does it."""


@dataclass
class TooLong:
    """Reject the prompt as too long for the context window, with the provider's real error."""


Behaviour = Reply | Status | Delay | CutStream | ErrorInStream | EchoRequest | Refuse | TooLong
"""Anything a script can hold."""


class Received(NamedTuple):
    """One request a fake accepted: path (with query string), lower-cased headers, JSON body."""

    path: str
    headers: dict[str, str]
    body: Any


class Span(NamedTuple):
    """One call a fake handled: the model asked for, when it arrived and when its answer was
    settled (after any ``Delay``), by ``time.monotonic()``, and whether the client hung up
    before the answer (``gone``: the gateway cancelled the call)."""

    model: str
    prompt: str
    start: float
    end: float
    gone: bool

    def overlaps(self, other: "Span") -> bool:
        """Whether the two calls were in flight at the same time."""
        return self.start < other.end and other.start < self.end


Answerer = Callable[[str, str], "Behaviour | str | None"]
"""``answer(model, prompt)``: how a fake answers a request when nothing is queued, from the
model asked for and the last user message: a behaviour, a text (``Reply(text)``) or None (the
fake's normal answer)."""


class Script:
    """A thread-safe FIFO of behaviours, the list of requests received and the calls' spans.

    With ``answer`` (see :data:`Answerer`), a request finding the queue empty is answered from
    its model and prompt, so one fake can play a whole fleet whose answers depend on both."""

    def __init__(self, *behaviours: Behaviour, answer: Answerer | None = None) -> None:
        self._queue: deque[Behaviour] = deque(behaviours)
        self._lock = threading.Lock()
        self.requests: list[Received] = []
        self.answer = answer
        self.spans: list[Span] = []

    def push(self, *behaviours: Behaviour) -> "Script":
        """Queue behaviours for the next requests, in order."""
        with self._lock:
            self._queue.extend(behaviours)
        return self

    def next(self, model: str = "", prompt: str = "") -> Behaviour:
        """The behaviour for the request being handled: the next queued, else what ``answer``
        says for ``model`` and ``prompt``, else a normal answer."""
        with self._lock:
            if self._queue:
                return self._queue.popleft()
        found = self.answer(model, prompt) if self.answer is not None else None
        if found is None:
            return Reply()
        return Reply(found) if isinstance(found, str) else found

    async def settle(self, model: str, prompt: str,
                     disconnected: Callable[[], Awaitable[bool]] | None = None) -> Behaviour:
        """:func:`settle` the next behaviour for ``model`` and ``prompt``, logging the call's
        span (and, when the client hung up during a ``Delay``, that it was gone)."""
        start = time.monotonic()
        try:
            behaviour = await settle(self.next(model, prompt), disconnected)
        except ClientGone:
            with self._lock:
                self.spans.append(Span(model, prompt, start, time.monotonic(), True))
            raise
        with self._lock:
            self.spans.append(Span(model, prompt, start, time.monotonic(), False))
        return behaviour

    def record(self, path: str, headers: dict[str, str], body: Any) -> None:
        """Log a received request."""
        with self._lock:
            self.requests.append(Received(path, headers, body))

    @property
    def last(self) -> Received:
        """The most recent request received."""
        with self._lock:
            return self.requests[-1]

    @property
    def pending(self) -> int:
        """Behaviours not consumed yet."""
        with self._lock:
            return len(self._queue)

    def reset(self) -> None:
        """Forget queued behaviours and received requests (between tests sharing one server)."""
        with self._lock:
            self._queue.clear()
            self.requests.clear()
            self.spans.clear()


class CutConnection(Exception):
    """Raised inside a streaming body to make the server drop the connection mid-response."""

    quiet = True


class ClientGone(Exception):
    """The client hung up while the fake was still delaying its answer."""


async def settle(behaviour: Behaviour,
                 disconnected: Callable[[], Awaitable[bool]] | None = None) -> Behaviour:
    """Sleep through any ``Delay`` wrappers and return the behaviour underneath.

    With ``disconnected`` (e.g. Starlette's ``request.is_disconnected``) the wait stops as soon as
    the client has gone, raising :class:`ClientGone`, so a timed-out test leaves no handler behind.
    """
    while isinstance(behaviour, Delay):
        deadline = anyio.current_time() + behaviour.seconds
        while (left := deadline - anyio.current_time()) > 0:
            await anyio.sleep(min(left, 0.05))
            if disconnected is not None and await disconnected():
                raise ClientGone
        behaviour = behaviour.then
    return behaviour


def count_tokens(text: str) -> int:
    """The fakes' token count: whitespace-separated words (good enough to check plumbing)."""
    return len(text.split())


def pieces(text: str) -> list[str]:
    """``text`` split into stream chunks, one word (with its trailing space) each."""
    return re.findall(r"\S+\s*", text) or [text]


def city(text: str) -> str:
    """The place a weather question asks about: the word after 'in', else the last word."""
    words = re.findall(r"[A-Za-z][\w-]*", text)
    for i, word in enumerate(words[:-1]):
        if word.lower() == "in":
            return words[i + 1]
    return words[-1] if words else "nowhere"


def sse(data: Any, event: str | None = None) -> bytes:
    """One server-sent event; ``data`` is JSON-encoded unless it is already a string."""
    payload = data if isinstance(data, str) else orjson.dumps(data).decode()
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {payload}\n\n".encode()


async def stream_body(head: Iterable[bytes], body: list[bytes], tail: Iterable[bytes],
                      behaviour: Behaviour, error: bytes) -> AsyncIterator[bytes]:
    """Frames of a streamed answer, honouring ``CutStream``, ``ErrorInStream`` and a streaming
    ``EchoRequest``.

    ``head`` opens the stream, ``body`` holds the content chunks, ``tail`` finishes it (finish
    reason, usage, terminator); ``error`` is the provider's in-stream error event.
    """
    for frame in head:
        yield frame
    if isinstance(behaviour, (CutStream, ErrorInStream, EchoRequest)):
        body = body[:behaviour.after_chunks]
    for frame in body:
        await anyio.sleep(0)
        yield frame
    if isinstance(behaviour, CutStream):
        if behaviour.abrupt:
            raise CutConnection("dropping the connection on purpose")
        return
    if isinstance(behaviour, (ErrorInStream, EchoRequest)):
        yield error
        return
    for frame in tail:
        yield frame
