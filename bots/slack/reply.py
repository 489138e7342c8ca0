"""Writing one answer into its thread while it is being written.

Streamed through Slack's methods for AI apps (``chat.startStream``, ``chat.appendStream``,
``chat.stopStream``, via slack_sdk's ``chat_stream`` helper), Markdown as the model writes it,
a batch at most every :data:`STREAM_INTERVAL_S`. Where Slack refuses to start a stream (the
workspace, the channel or the app cannot stream), the answer is posted instead
(``chat.postMessage``) and edited as it grows (``chat.update``) at most every
:data:`UPDATE_INTERVAL_S`, as mrkdwn in section blocks. Either way a long answer continues in
further messages of the thread, cut cleanly (:func:`~.formatting.take`), and the last one ends
with the context line.

Every Slack call that fails raises :class:`Undeliverable` (after the one fallback above): the
caller stops the answer, logs it and moves on.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

import aiohttp
import structlog
from slack_sdk.errors import SlackApiError, SlackClientError
from slack_sdk.web.async_chat_stream import AsyncChatStream
from slack_sdk.web.async_client import AsyncWebClient

from turnout.kernel.types import Answer

from .formatting import (
    EMPTY_ANSWER,
    MESSAGE_CHARS,
    STREAM_MESSAGE_CHARS,
    close_code,
    footer_blocks,
    section_blocks,
    split_text,
    take,
    to_mrkdwn,
)

log = structlog.get_logger("turnout.slack")

STREAM_INTERVAL_S = 0.5
"""Least time between two appends to a streamed answer."""

UPDATE_INTERVAL_S = 1.0
"""Least time between two edits of a posted answer (Slack's chat.update allows about one a
second per channel, with bursts)."""

HOLD_BACK = 16
"""Characters a streamed message keeps unsent near its limit until the answer ends or
outgrows it: room to close a code block where the message has to be cut inside one."""

FAILURES = (SlackClientError, aiohttp.ClientError, TimeoutError)
"""What a Slack Web API call raises when it fails: Slack's error answer, the connection."""


class Undeliverable(Exception):
    """A Slack Web API call failed; ``method`` names it, ``error`` is Slack's error code (or
    the connection failure's kind): never a token, never the message."""

    def __init__(self, method: str, error: str) -> None:
        super().__init__(f"{method}: {error}")
        self.method = method
        self.error = error


def failure(method: str, exc: BaseException) -> Undeliverable:
    """The :class:`Undeliverable` for ``exc`` raised by the Web API call ``method``."""
    if isinstance(exc, SlackApiError) and exc.response is not None:
        code = exc.response.get("error")
        return Undeliverable(method, str(code or f"HTTP {exc.response.status_code}"))
    return Undeliverable(method, type(exc).__name__)


@dataclass(frozen=True, slots=True)
class Where:
    """Where an answer goes: the channel, the thread, and who asked (a stream into a channel
    names its recipient: the user and the user's own workspace)."""

    channel: str
    thread_ts: str
    team: str | None
    user: str | None


class _Streamed:
    """The answer streamed, one message per :data:`STREAM_MESSAGE_CHARS` of Markdown."""

    interval = STREAM_INTERVAL_S

    def __init__(self, client: AsyncWebClient, where: Where) -> None:
        self.client, self.where = client, where
        self.text = ""
        """Markdown of the current message and what follows it, not all sent yet."""
        self.sent = ""
        """What of ``text`` the current message has."""
        self.stream: AsyncChatStream | None = None
        self.started = False
        """Whether any message was streamed (after that, a failure is not a fallback)."""

    async def flush(self) -> None:
        await self._overflow()
        upto = min(len(self.text), STREAM_MESSAGE_CHARS - HOLD_BACK)
        if upto > len(self.sent):
            await self._send(self.text[len(self.sent):upto])
            self.sent = self.text[:upto]

    async def finish(self, footer: list[dict[str, Any]]) -> None:
        """Send the rest with the footer in the call that ends the stream."""
        await self._overflow()
        rest = self.text[len(self.sent):]
        if self.stream is None and not rest:
            rest = EMPTY_ANSWER
        await self._stop(footer, rest)

    async def _overflow(self) -> None:
        """End the current message where the text outgrows it; the rest starts the next."""
        while len(self.text) > STREAM_MESSAGE_CHARS:
            head, rest = take(self.text, STREAM_MESSAGE_CHARS, start=len(self.sent))
            more = head[len(self.sent):] if head.startswith(self.sent) else ""
            if self.stream is not None or more:
                await self._stop(None, more)
            self.text, self.sent = rest, ""

    async def _open(self) -> AsyncChatStream:
        if self.stream is None:
            self.stream = await self.client.chat_stream(
                channel=self.where.channel, thread_ts=self.where.thread_ts,
                recipient_team_id=self.where.team, recipient_user_id=self.where.user,
                buffer_size=1)
        return self.stream

    async def _send(self, markdown: str) -> None:
        if not markdown:
            return
        method = "chat.appendStream" if self.stream is not None else "chat.startStream"
        try:
            await (await self._open()).append(markdown_text=markdown)
        except FAILURES as exc:
            self._failed(method, exc)
        self.started = True

    async def _stop(self, footer: list[dict[str, Any]] | None, markdown: str = "") -> None:
        """End the current message (starting it first when nothing was sent yet)."""
        method = "chat.stopStream" if self.stream is not None else "chat.startStream"
        try:
            await (await self._open()).stop(markdown_text=markdown or None, blocks=footer)
        except FAILURES as exc:
            self._failed(method, exc)
        finally:
            self.stream = None
        self.started = True

    def _failed(self, method: str, exc: BaseException) -> None:
        """Raise what the failure means: before any message was streamed, that Slack refuses
        streams here (fall back); after, that the answer cannot be delivered."""
        self.stream = None
        if not self.started:
            raise StreamRefused(failure(method, exc)) from None
        raise failure(method, exc) from None


class StreamRefused(Exception):
    """Slack refused to start a stream: post and edit instead."""

    def __init__(self, cause: Undeliverable) -> None:
        super().__init__(str(cause))
        self.cause = cause


class _Posted:
    """The answer posted and edited, one message per :data:`MESSAGE_CHARS` of mrkdwn."""

    interval = UPDATE_INTERVAL_S

    def __init__(self, client: AsyncWebClient, where: Where, text: str = "") -> None:
        self.client, self.where = client, where
        self.text = text
        """Markdown of every message this writer keeps."""
        self.shown: list[tuple[str, list[dict[str, Any]]]] = []
        """(ts, blocks) of each message posted, as last written."""

    async def flush(self, footer: list[dict[str, Any]] | None = None) -> None:
        pieces = split_text(to_mrkdwn(self.text), MESSAGE_CHARS)
        for i, piece in enumerate(pieces):
            blocks = section_blocks(piece)
            if footer is not None and i == len(pieces) - 1:
                blocks += footer
            if i < len(self.shown):
                ts, before = self.shown[i]
                if blocks != before:
                    await self._call("chat.update", self.client.chat_update,
                                     channel=self.where.channel, ts=ts, text=piece or " ",
                                     blocks=blocks)
                    self.shown[i] = (ts, blocks)
                continue
            found = await self._call("chat.postMessage", self.client.chat_postMessage,
                                     channel=self.where.channel,
                                     thread_ts=self.where.thread_ts, text=piece or " ",
                                     blocks=blocks)
            self.shown.append((str(found["ts"]), blocks))

    async def finish(self, footer: list[dict[str, Any]]) -> None:
        await self.flush(footer)

    @staticmethod
    async def _call(method: str, call: Callable[..., Any], **kwargs: Any) -> Any:
        try:
            return await call(**kwargs)
        except FAILURES as exc:
            raise failure(method, exc) from None


class Reply:
    """One answer, written into its thread as it arrives: :meth:`add` text, then
    :meth:`finish` with the request's account for the context line."""

    def __init__(self, client: AsyncWebClient, where: Where, *, stream: bool = True,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.writer: _Streamed | _Posted = (_Streamed(client, where) if stream
                                            else _Posted(client, where))
        self.client, self.where, self.clock = client, where, clock
        self.text = ""
        """The whole answer so far, as Markdown."""
        self.last: float | None = None

    @property
    def streamed(self) -> bool:
        """Whether the answer goes through Slack's streaming methods (so far)."""
        return isinstance(self.writer, _Streamed)

    async def add(self, markdown: str) -> None:
        """Add text; it is written out now unless the last write was too recent."""
        self.text += markdown
        self.writer.text += markdown
        now = self.clock()
        if self.last is not None and now - self.last < self.writer.interval:
            return
        self.last = now
        await self._write(lambda: self.writer.flush())

    async def whole(self, markdown: str, answer: Answer) -> None:
        """Write a complete answer at once (no streaming): posted, with its context line."""
        self.writer = _Posted(self.client, self.where, markdown)
        self.text = markdown
        await self.finish(answer)

    async def finish(self, answer: Answer, note: str | None = None) -> None:
        """Write what is left, ``note`` (in italics, after the text) and the context line."""
        if note:
            extra = close_code(self.text)
            extra += f"\n\n_{note}_" if self.text else f"_{note}_"
            self.text += extra
            self.writer.text += extra
        footer = footer_blocks(answer)
        await self._write(lambda: self.writer.finish(footer))

    async def _write(self, write: Callable[[], Awaitable[None]]) -> None:
        """Run ``write`` on the current writer; when Slack refuses to start a stream, go on
        posting and editing instead, and run it again."""
        try:
            await write()
        except StreamRefused as refused:
            log.info("slack_stream_refused", error=refused.cause.error,
                     fallback="chat.postMessage")
            self.writer = _Posted(self.client, self.where, self.writer.text)
            await write()
