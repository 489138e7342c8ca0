"""The buttons under every answer: thumbs up or down, "Ask a stronger model", "Why this model?".

Each button carries the answer's request id in its value (never anything secret); what else a
button needs is the answer's turn in the store (:class:`~.chat.Turn`, kept a week).

- **Feedback** (Slack's ``feedback_buttons``): ``Kernel.feedback(request_id, +1 or -1,
  source="slack", user=<Slack user id>)``, kept with the request in the record, where
  experiments and learned routers read it; the user is thanked ephemerally.
- **Ask a stronger model**: the turn's messages (its question with the thread's history as it
  was) asked again on the next tier up (:func:`stronger`), streamed into the thread with its own
  context line and buttons, then a line saying what it cost and how that compares with the first
  answer. Once per answer: a second press within the hour is told it was done.
- **Why this model?**: the decision record made readable (:func:`~.formatting.decision_text`),
  to the user who asked for it (ephemeral).

Slack is acknowledged before any of this (within its 3 seconds); a user outside the allowlists
gets a short refusal, to them alone.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

import structlog
from slack_bolt.async_app import AsyncApp

from turnout.kernel.types import ChatRequest, ModelProfile
from turnout.plugins.fit import fits

from . import security
from .chat import FAILED, Chat, Question, Turn
from .formatting import (
    BAD,
    FEEDBACK_ACTION,
    GOOD,
    STRONGER_ACTION,
    WHY_ACTION,
    decision_text,
    notice,
    rerun_text,
    section_blocks,
)
from .reply import FAILURES, failure

log = structlog.get_logger("turnout.slack")

SCORES = {GOOD: 1, BAD: -1}
"""A feedback button's value prefix -> the score recorded."""

_REQUEST_ID = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")

GONE = ("That answer is more than a week old, or the gateway no longer has its details: ask "
        "the question again.")
REFUSED = "You cannot use Turnout here: {reason}. Ask a Slack admin of the gateway."


@dataclass(frozen=True, slots=True)
class Click:
    """A button pressed: by whom (and their workspace), where, and the button's value."""

    user: str | None
    user_team: str | None
    team: str | None
    channel: str | None
    thread_ts: str | None
    value: str
    action_ts: str

    @classmethod
    def of(cls, body: dict[str, Any], action: dict[str, Any]) -> "Click":
        user = body.get("user") or {}
        container = body.get("container") or {}
        message = body.get("message") or {}
        team = (body.get("team") or {}).get("id") or user.get("team_id")
        return cls(user=user.get("id"), user_team=user.get("team_id") or team, team=team,
                   channel=(body.get("channel") or {}).get("id") or container.get("channel_id"),
                   thread_ts=container.get("thread_ts") or message.get("thread_ts")
                   or container.get("message_ts"),
                   value=str(action.get("value") or ""),
                   action_ts=str(action.get("action_ts") or ""))


def stronger(kernel: Any, turn: Turn, *, stream: bool = True) -> tuple[ModelProfile | None, str]:
    """The model to ask ``turn`` again on: of the models with a higher tier than the one that
    answered, the lowest tier first and the cheapest within it, the first that fits the turn's
    messages (context window, output limit). (None, why) when there is none."""
    first = kernel.models.get(turn.model or "")
    if first is None:
        return None, (f"The model that answered ({turn.model or 'unknown'}) is no longer "
                      "configured, so there is no tier to go up from.")
    higher = sorted((m for m in kernel.models if m.tier > first.tier),
                    key=lambda m: (m.tier, m.input_price + m.output_price, m.name))
    if not higher:
        return None, (f"No model has a higher tier than {first.name} (tier {first.tier}): it "
                      "is already the strongest configured.")
    unfit = []
    for model in higher:
        ctx = kernel.context(ChatRequest(model=model.name, messages=turn.messages,
                                         stream=stream))
        why = fits(ctx, model)
        if why is None:
            return model, ""
        unfit.append(f"{model.name}: {why}")
    return None, ("No model of a higher tier than " + f"{first.name} (tier {first.tier}) fits "
                  "this conversation (" + "; ".join(unfit) + ").")


class Buttons:
    """The listeners of the buttons under an answer (slack-bolt passes what each names)."""

    def __init__(self, chat: Chat) -> None:
        self.chat = chat
        self.kernel, self.settings, self.client = chat.kernel, chat.settings, chat.client

    # --- listeners -----------------------------------------------------------------------------

    async def on_feedback(self, ack: Callable[..., Awaitable[Any]], body: dict,
                          action: dict) -> None:
        """Thumbs up or down: record the score with the request, thank the user."""
        await ack()
        click = Click.of(body, action)
        async with self._working(click):
            if not await self._allowed(click):
                return
            kind, _, request_id = click.value.partition(":")
            score = SCORES.get(kind)
            if score is None or not _REQUEST_ID.match(request_id):
                log.info("slack_action_ignored", action=FEEDBACK_ACTION, reason="bad value")
                return
            await self.kernel.feedback(request_id, score, source="slack", user=click.user)
            log.info("slack_feedback_recorded", request_id=request_id, score=score)
            thanks = ("Thanks: your :thumbsup: is recorded with this answer." if score > 0 else
                      "Thanks: your :thumbsdown: is recorded with this answer; "
                      "\"Ask a stronger model\" tries again one tier up.")
            await self._ephemeral(click, thanks)

    async def on_stronger(self, ack: Callable[..., Awaitable[Any]], body: dict,
                          action: dict) -> None:
        """Ask a stronger model: the same turn again, one tier up, in the thread."""
        await ack()
        click = Click.of(body, action)
        async with self._working(click):
            turn = await self._turn(click)
            if turn is None:
                return
            model, why = stronger(self.kernel, turn, stream=self.settings.stream)
            if model is None:
                await self._ephemeral(click, why, turn)
                return
            claim = f"slack:rerun:{turn.request_id}"
            if not await security.claim(self.kernel.store, [claim]):
                await self._ephemeral(click, "This answer was already asked again on a stronger "
                                      "model; its answer is in the thread.", turn)
                return
            log.info("slack_rerun", request_id=turn.request_id, model=model.name)
            question = Question(team=turn.team, channel=turn.channel, user=click.user,
                                text=turn.question, ts=click.action_ts,
                                thread_ts=turn.thread_ts, event_id=None,
                                user_team=click.user_team)
            answer = await self.chat.rerun(question, turn.messages, model.name)
            if answer is None:
                return  # refused: the notice is in the thread
            first = self.kernel.models.get(turn.model or "")
            text = rerun_text(turn.model or "-", first.tier if first else 0, turn.cost_usd,
                              answer.model or model.name, model.tier, answer.cost_usd)
            await self._post(turn, text)

    async def on_why(self, ack: Callable[..., Awaitable[Any]], body: dict,
                     action: dict) -> None:
        """Why this model: the answer's decision record, to the user who asked."""
        await ack()
        click = Click.of(body, action)
        async with self._working(click):
            turn = await self._turn(click)
            if turn is None:
                return
            text = decision_text(turn.decision, model=turn.model, attempts=turn.attempts,
                                 cost_usd=turn.cost_usd, request_id=turn.request_id)
            await self._ephemeral(click, text, turn)

    # --- helpers -------------------------------------------------------------------------------

    def _working(self, click: Click) -> Any:
        return self.chat.working(lambda: self._ephemeral(click, notice(FAILED)),
                                 team=click.team, channel=click.channel, user=click.user)

    async def _allowed(self, click: Click) -> bool:
        """Whether the allowlists let ``click`` in; if not, it is told so, alone."""
        refused = security.refusal(self.settings, click.team, click.channel, click.user)
        if refused is None:
            return True
        log.info("slack_event_ignored", reason=refused, slack_event="block_actions")
        await self._ephemeral(click, notice(REFUSED.format(reason=refused)))
        return False

    async def _turn(self, click: Click) -> Turn | None:
        """The turn the pressed button is about (after the allowlists); None when there is
        none to act on (said to the user)."""
        if not await self._allowed(click):
            return None
        store = self.kernel.store
        if store is None or not _REQUEST_ID.match(click.value):
            log.info("slack_action_ignored", reason="no store" if store is None else "bad value")
            return None
        turn = Turn.loads(await store.get(Turn.key(click.value)))
        if turn is None:
            await self._ephemeral(click, GONE)
        return turn

    async def _ephemeral(self, click: Click, text: str, turn: Turn | None = None) -> None:
        """Say ``text`` (mrkdwn) to the user who pressed, alone, in the answer's thread."""
        channel = turn.channel if turn is not None else click.channel
        thread = turn.thread_ts if turn is not None else click.thread_ts
        if not channel or not click.user:
            return
        try:
            await self.client.chat_postEphemeral(channel=channel, user=click.user, text=text,
                                                 blocks=section_blocks(text), thread_ts=thread)
        except FAILURES as exc:
            raise failure("chat.postEphemeral", exc) from None

    async def _post(self, turn: Turn, text: str) -> None:
        """Say ``text`` (mrkdwn) in the turn's thread, for everyone in it."""
        try:
            await self.client.chat_postMessage(channel=turn.channel, thread_ts=turn.thread_ts,
                                               text=text)
        except FAILURES as exc:
            raise failure("chat.postMessage", exc) from None


def register(app: AsyncApp, chat: Chat) -> None:
    """Listen for the buttons under answers: feedback, a stronger model, why this model."""
    buttons = Buttons(chat)
    app.action(FEEDBACK_ACTION)(buttons.on_feedback)
    app.action(STRONGER_ACTION)(buttons.on_stronger)
    app.action(WHY_ACTION)(buttons.on_why)
