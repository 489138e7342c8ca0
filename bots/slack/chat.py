"""Chat: direct messages, mentions and assistant threads, answered through the gateway.

A question is a message in a direct message with the bot, a mention of the bot in a channel, or
a message in one of the bot's assistant threads (the AI app's split view). Every answer goes into
the question's thread; a thread is one conversation, its history kept in the shared store
(:mod:`.history`). The question is asked with :meth:`Kernel.ask_stream` (:meth:`Kernel.ask` with
``[slack] stream = false``), on ``[slack] route`` or the channel's route, as the Slack user's
:class:`~turnout.kernel.types.Caller`: the same pipeline, budgets and rate limits as the HTTP API.

Slack is acknowledged before any of this runs (slack-bolt acks events first when
``process_before_response`` is off), so a slow model never makes Slack deliver again. A
delivery Slack makes again anyway, or one message arriving as two events, is answered once
(:func:`.security.claim`). A gateway refusal (a budget, a rate limit, no route) is answered in
the thread as a short notice; a failure of Slack's API is logged and ends that answer only.

Every answer written is also kept as a turn (:class:`Turn`, ``slack:turn:<request id>`` in the
store, a week): what was asked (the thread's messages as sent), where, which model answered,
what it cost and the decision record, for the buttons under it (:mod:`.buttons`): "Ask a
stronger model" asks the same messages again on another model (:meth:`Chat.rerun`), "Why this
model?" reads the decision.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from dataclasses import dataclass, field, fields
from typing import Any, AsyncIterator, Awaitable, Callable

import orjson
import structlog
from slack_bolt.async_app import AsyncApp
from slack_bolt.context.assistant.thread_context import AssistantThreadContext
from slack_bolt.context.assistant.thread_context_store.async_store import (
    AsyncAssistantThreadContextStore,
)
from slack_bolt.middleware.assistant.async_assistant import AsyncAssistant
from slack_sdk.web.async_client import AsyncWebClient

from turnout.kernel.errors import TurnoutError
from turnout.kernel.observability import scrub
from turnout.kernel.store import StoreError
from turnout.kernel.types import Answer, ChatRequest, new_request_id

from . import history, security
from .formatting import notice
from .reply import FAILURES, Reply, Undeliverable, Where, failure
from .settings import SlackSettings

log = structlog.get_logger("turnout.slack")

THINKING = "is thinking\u2026"
"""The assistant thread's status while an answer is on its way."""

SUGGESTED_PROMPTS = [
    {"title": "Explain something", "message": "Explain how DNS resolution works, step by step."},
    {"title": "Draft a message", "message": "Draft a short, friendly reminder about "
                                            "tomorrow's planning meeting."},
    {"title": "Review code", "message": "Review this function and suggest improvements:\n"},
]
"""Offered when an assistant thread opens."""

TITLE_CHARS = 80
"""Longest assistant thread title, taken from the thread's first question."""

HINT = "Ask me something after the mention, like: what does our error budget policy say?"
"""The answer to a bare mention."""

FAILED = ("The gateway failed while answering; the error is in its log. Try again in a "
          "moment.")
"""The notice for an unexpected failure (never a traceback)."""

DRAIN_S = 10.0
"""How long shutdown waits for answers in progress before cancelling them."""

TURN_TTL_S = history.HISTORY_TTL_S
"""How long an answer's turn is kept for the buttons under it (a week, like a thread's
history)."""

_MENTION = re.compile(r"<@([A-Z0-9]+)(?:\|[^>]*)?>")


@dataclass(frozen=True, slots=True)
class Question:
    """One message to answer: where it is, who asked, and what."""

    team: str | None
    channel: str
    user: str | None
    text: str
    ts: str
    thread_ts: str
    """The conversation: the thread the message is in, or its own ts when it starts one."""
    event_id: str | None
    user_team: str | None = None
    """The asker's own workspace (another one in a channel shared between workspaces)."""
    assistant: bool = False
    """Asked in an assistant thread (the AI app's split view)."""
    mention: bool = False
    """Asked by mentioning the bot."""

    @classmethod
    def of(cls, body: dict[str, Any], event: dict[str, Any], *, text: str | None = None,
           assistant: bool = False, mention: bool = False) -> "Question":
        ts = str(event.get("ts") or "")
        team = body.get("team_id") or event.get("team")
        return cls(team=team, channel=str(event.get("channel") or ""), user=event.get("user"),
                   text=(event.get("text") or "") if text is None else text, ts=ts,
                   thread_ts=str(event.get("thread_ts") or ts), event_id=body.get("event_id"),
                   user_team=event.get("user_team") or event.get("team") or team,
                   assistant=assistant, mention=mention)


@dataclass(frozen=True, slots=True)
class Turn:
    """One answer as the buttons under it need it: the messages asked (the thread's history
    and the question), where it was written, and the gateway's account of it."""

    request_id: str
    messages: list[dict[str, str]]
    team: str | None
    channel: str
    thread_ts: str
    model: str | None
    route: str | None
    cost_usd: float
    attempts: int
    decision: dict[str, Any] = field(default_factory=dict)

    @staticmethod
    def key(request_id: str) -> str:
        """The store key of the turn of ``request_id``."""
        return f"slack:turn:{request_id}"

    def dumps(self) -> bytes:
        return orjson.dumps({f.name: getattr(self, f.name) for f in fields(self)}, default=str)

    @classmethod
    def loads(cls, raw: bytes | None) -> "Turn | None":
        """The turn stored as ``raw``; None for nothing, or a value that is not one."""
        if not raw:
            return None
        try:
            found = orjson.loads(raw)
            return cls(**{f.name: found[f.name] for f in fields(cls)})
        except (orjson.JSONDecodeError, KeyError, TypeError):
            return None

    @property
    def question(self) -> str:
        """The last question in the turn's messages."""
        return next((m["content"] for m in reversed(self.messages) if m["role"] == "user"), "")


@dataclass(frozen=True, slots=True)
class Said:
    """What :meth:`Chat._ask` wrote: the text to remember in the thread's history (None for a
    refusal or an answer cut short) and the gateway's account (None when refused)."""

    text: str | None
    answer: Answer | None


def strip_mention(text: str, bot_user_id: str | None) -> str:
    """The question in a mention: the bot's own mention taken out (every mention at the start
    when the bot's id is unknown), other mentions kept."""
    if bot_user_id:
        text = _MENTION.sub(lambda m: "" if m.group(1) == bot_user_id else m.group(0), text)
    else:
        text = re.sub(r"^\s*(?:<@[A-Z0-9]+(?:\|[^>]*)?>\s*)+", "", text)
    return text.strip()


class ThreadContexts(AsyncAssistantThreadContextStore):
    """Which channel an assistant thread's user is looking at, kept in the shared store (not
    in message metadata: no extra Slack calls, and every replica sees it)."""

    TTL_S = history.HISTORY_TTL_S

    def __init__(self, kernel: Any) -> None:
        self.kernel = kernel

    async def save(self, *, channel_id: str, thread_ts: str, context: dict[str, str]) -> None:
        await self.kernel.store.set(f"slack:assistant:{channel_id}:{thread_ts}",
                                    orjson.dumps(context), ttl_s=self.TTL_S)

    async def find(self, *, channel_id: str, thread_ts: str) -> AssistantThreadContext | None:
        raw = await self.kernel.store.get(f"slack:assistant:{channel_id}:{thread_ts}")
        if not raw:
            return None
        found = orjson.loads(raw)
        return AssistantThreadContext(found) if isinstance(found, dict) and \
            found.get("channel_id") else None


class Chat:
    """Answers questions from Slack through the kernel; one per gateway."""

    def __init__(self, kernel: Any, settings: SlackSettings, client: AsyncWebClient) -> None:
        self.kernel = kernel
        self.settings = settings
        self.client = client
        self.busy: set[asyncio.Task] = set()
        """Answers in progress, for shutdown to wait for."""

    # --- listeners (slack-bolt passes what each names) -----------------------------------------

    async def on_message(self, body: dict, event: dict) -> None:
        """``message.im``: a message in a direct message with the bot, outside an assistant
        thread (those come through the assistant middleware). Everything else is ignored:
        edits, deletions, other bots, channel messages (those are asked by mention)."""
        if event.get("channel_type") != "im" or event.get("bot_id") \
                or event.get("subtype") not in (None, "file_share"):
            return
        await self.answer(Question.of(body, event))

    async def on_mention(self, body: dict, event: dict, context: Any) -> None:
        """``app_mention``: the bot named in a channel message or thread."""
        if str(event.get("channel") or "").startswith("D") or event.get("bot_id"):
            return  # a mention in a direct message arrives as message.im too
        text = strip_mention(event.get("text") or "", getattr(context, "bot_user_id", None))
        await self.answer(Question.of(body, event, text=text, mention=True))

    async def on_assistant_message(self, body: dict, event: dict,
                                   set_status: Callable[..., Awaitable[Any]] | None = None,
                                   set_title: Callable[..., Awaitable[Any]] | None = None) -> None:
        """A message in an assistant thread (or any thread of a direct message)."""
        await self.answer(Question.of(body, event, assistant=True), status=set_status,
                          title=set_title)

    async def on_thread_started(self, body: dict, event: dict,
                                set_suggested_prompts: Callable[..., Awaitable[Any]]) -> None:
        """``assistant_thread_started``: offer a few prompts to begin with."""
        thread = event.get("assistant_thread") or {}
        refused = security.refusal(self.settings, body.get("team_id"),
                                   thread.get("channel_id"), thread.get("user_id"))
        if refused is not None:
            log.info("slack_event_ignored", reason=refused, slack_event="assistant_thread_started")
            return
        await self._quietly("assistant.threads.setSuggestedPrompts", set_suggested_prompts(
            prompts=SUGGESTED_PROMPTS, title="Ask anything; Turnout picks the model."))

    # --- answering -----------------------------------------------------------------------------

    async def answer(self, question: Question, *,
                     status: Callable[..., Awaitable[Any]] | None = None,
                     title: Callable[..., Awaitable[Any]] | None = None) -> None:
        """Answer ``question`` in its thread, once, if the allowlists let it in. Never raises:
        whatever fails is logged (and, where Slack can still be reached, said in the
        thread)."""
        async with self.working(lambda: self._notice(question, FAILED), team=question.team,
                                channel=question.channel, user=question.user):
            await self._answer(question, status, title)

    @contextlib.asynccontextmanager
    async def working(self, on_failure: Callable[[], Awaitable[Any]] | None = None, *,
                      team: str | None = None, channel: str | None = None,
                      user: str | None = None) -> AsyncIterator[None]:
        """Run the body as work shutdown waits for (:meth:`drain`), logged with the Slack
        team, channel and user. It never raises: a failed Slack call is logged; anything else
        is logged and ``on_failure`` says so to the user (a failure of that is logged too)."""
        task = asyncio.current_task()
        if task is not None:
            self.busy.add(task)
        try:
            with structlog.contextvars.bound_contextvars(slack_team=team, slack_channel=channel,
                                                         slack_user=user):
                yield
        except asyncio.CancelledError:
            raise
        except Undeliverable as exc:
            log.warning("slack_api_failed", method=exc.method, error=exc.error)
        except Exception as exc:  # noqa: BLE001 - the last guard: one answer fails, not the bot
            log.error("slack_answer_failed", error_type=type(exc).__name__,
                      error=scrub(exc, limit=300))
            if on_failure is not None:
                try:
                    await on_failure()
                except Undeliverable as again:
                    log.info("slack_api_failed", method=again.method, error=again.error)
                except Exception as again:  # noqa: BLE001 - said as far as Slack lets us
                    log.info("slack_api_failed", error_type=type(again).__name__,
                             error=scrub(again, limit=200))
        finally:
            if task is not None:
                self.busy.discard(task)

    async def _answer(self, question: Question, status: Callable[..., Awaitable[Any]] | None,
                      title: Callable[..., Awaitable[Any]] | None) -> None:
        refused = security.refusal(self.settings, question.team, question.channel,
                                   question.user)
        if refused is not None:
            log.info("slack_event_ignored", reason=refused)
            return
        store = self.kernel.store
        if store is None:
            log.warning("slack_event_dropped", reason="the gateway has not started")
            return
        keys = security.claim_keys(question.team, question.channel, question.ts,
                                   question.event_id)
        if not await security.claim(store, keys):
            log.info("slack_event_duplicate", event_id=question.event_id)
            return
        if not question.text.strip():
            if question.mention:
                await self._notice(question, HINT, warn=False)
            return
        key = history.thread_key(question.team, question.channel, question.thread_ts)
        async with history.turn(store, key):
            before = await history.load(store, key) if self.settings.history_turns else []
            if question.assistant:
                if title is not None and not before:
                    await self._quietly("assistant.threads.setTitle",
                                        title(_title(question.text)))
                if status is not None:
                    await self._quietly("assistant.threads.setStatus", status(THINKING))
            asked = [*before, {"role": "user", "content": question.text}]
            said = await self._ask(question, asked)
            if said.text is not None and self.settings.history_turns:
                await history.save(store, key, [*asked, {"role": "assistant",
                                                         "content": said.text}],
                                   self.settings.history_turns)

    async def rerun(self, question: Question, messages: list[dict[str, str]],
                    model: str) -> Answer | None:
        """Ask ``messages`` again on ``model`` for ``question``'s user and write the answer
        into ``question``'s thread, streamed, with its own context line and buttons (the
        thread's history is left as it was). The gateway's account of it; None when the gateway
        refused (said in the thread). Raises what :meth:`working` guards against."""
        return (await self._ask(question, messages, model=model)).answer

    async def _ask(self, question: Question, messages: list[dict[str, str]], *,
                   model: str | None = None) -> Said:
        """Ask the gateway (on ``model``, else the channel's route) and write the answer into
        the thread, then keep its turn for the buttons under it."""
        route = model or self.settings.route_for(question.channel)
        request = ChatRequest(model=route, messages=messages)
        caller = security.caller(self.settings, question.team, question.user)
        request_id = new_request_id()
        where = Where(question.channel, question.thread_ts, question.user_team, question.user)
        reply = Reply(self.client, where, stream=self.settings.stream)
        # The thread is the conversation (experiments keyed on it keep it on one arm).
        headers = {"x-turnout-conversation": f"slack:{question.channel}:{question.thread_ts}"}
        with structlog.contextvars.bound_contextvars(request_id=request_id):
            try:
                if not self.settings.stream:
                    answer: Answer = await self.kernel.ask(
                        request, caller=caller, headers=headers, client=caller.key or "slack",
                        request_id=request_id)
                    await reply.whole(answer.content or "", answer)
                    await self._keep(question, messages, answer)
                    return Said(answer.content, answer)
                stream = await self.kernel.ask_stream(
                    request, caller=caller, headers=headers, client=caller.key or "slack",
                    request_id=request_id)
            except TurnoutError as exc:
                log.info("slack_request_refused", error=exc.code)
                await self._notice(question, exc.message)
                return Said(None, None)
            note = None
            try:
                async for chunk in stream:
                    if chunk.content:
                        await reply.add(chunk.content)
            except TurnoutError as exc:  # the stream broke after it had started
                note = f"The answer was cut short: {scrub(exc.message, limit=300)}"
            except Undeliverable:
                raise
            except Exception as exc:  # noqa: BLE001 - end the message cleanly, log the rest
                log.error("slack_answer_failed", error_type=type(exc).__name__,
                          error=scrub(exc, limit=300))
                note = "The answer was cut short: the gateway failed; its log has the details."
            finally:
                await stream.aclose()
            answer = stream.answer
            await reply.finish(answer, note=note)
            await self._keep(question, messages, answer)
            return Said(reply.text if note is None else None, answer)

    async def _keep(self, question: Question, messages: list[dict[str, str]],
                    answer: Answer) -> None:
        """Keep the turn of an answer written, for the buttons under it; a store that fails
        costs the buttons, not the answer."""
        turn = Turn(request_id=answer.request_id, messages=messages, team=question.team,
                    channel=question.channel, thread_ts=question.thread_ts, model=answer.model,
                    route=answer.route, cost_usd=answer.cost_usd, attempts=answer.attempts,
                    decision=dict(answer.decision))
        try:
            await self.kernel.store.set(Turn.key(turn.request_id), turn.dumps(),
                                        ttl_s=TURN_TTL_S)
        except StoreError as exc:
            log.warning("slack_turn_not_kept", error=exc.message)

    # --- small things --------------------------------------------------------------------------

    async def _notice(self, question: Question, message: str, *, warn: bool = True) -> None:
        """Say ``message`` in the question's thread (a refusal, a failure, a hint)."""
        text = notice(scrub(message, limit=1000)) if warn else message
        try:
            await self.client.chat_postMessage(channel=question.channel,
                                               thread_ts=question.thread_ts, text=text)
        except FAILURES as exc:
            raise failure("chat.postMessage", exc) from None

    async def _quietly(self, method: str, call: Awaitable[Any]) -> None:
        """Make a Slack call the answer does not depend on (a status, a title, a notice);
        a failure is logged, not raised."""
        try:
            await call
        except FAILURES as exc:
            cause = failure(method, exc)
            log.info("slack_api_failed", method=cause.method, error=cause.error)
        except Undeliverable as exc:
            log.info("slack_api_failed", method=exc.method, error=exc.error)

    async def drain(self, timeout: float = DRAIN_S) -> None:
        """Wait up to ``timeout`` seconds for answers in progress, then cancel the rest."""
        pending = {task for task in self.busy if not task.done()}
        if not pending:
            return
        _, late = await asyncio.wait(pending, timeout=timeout)
        for task in late:
            task.cancel()
        if late:
            await asyncio.wait(late, timeout=1.0)
            log.warning("slack_answers_cancelled", count=len(late))


def _title(text: str) -> str:
    line = " ".join(text.split())
    return line if len(line) <= TITLE_CHARS else line[:TITLE_CHARS - 1].rstrip() + "\u2026"


def register(app: AsyncApp, chat: Chat) -> None:
    """Listen for questions: the assistant middleware (assistant threads: prompts, status,
    title) first, then mentions and direct messages."""
    assistant = AsyncAssistant(thread_context_store=ThreadContexts(chat.kernel))
    assistant.thread_started(chat.on_thread_started)
    assistant.user_message(chat.on_assistant_message)
    app.use(assistant)
    app.event("app_mention")(chat.on_mention)
    app.event("message")(chat.on_message)
