"""The App Home tab: what the gateway spends and watches, at a glance.

On ``app_home_opened`` (the Home tab), ``views.publish`` the user's home view
(:func:`~.formatting.home_view`): spend today (UTC) with requests and p95 latency, every budget
as a text bar, the top models of the day by spend, and the open alerts, from the same sources as
``/turnout`` (:mod:`.commands`). A user outside the allowlists sees a short notice instead.
"""

from __future__ import annotations

import time
from typing import Any

import structlog
from slack_bolt.async_app import AsyncApp

from . import security
from .chat import Chat
from .commands import Unavailable, limits, midnight, open_alerts, summaries
from .formatting import escape, home_view
from .reply import FAILURES, failure

log = structlog.get_logger("turnout.slack")

REFUSED = "Turnout is not available to you here ({reason}). Ask a Slack admin of the gateway."


class Home:
    """The ``app_home_opened`` listener."""

    def __init__(self, chat: Chat) -> None:
        self.chat = chat
        self.kernel, self.settings, self.client = chat.kernel, chat.settings, chat.client

    async def on_home_opened(self, body: dict, event: dict) -> None:
        """Publish the home view when the Home tab (not the Messages tab) is opened."""
        if event.get("tab", "home") != "home" or not event.get("user"):
            return
        user = str(event["user"])
        team = body.get("team_id")
        async with self.chat.working(team=team, channel=event.get("channel"), user=user):
            refused = security.refusal(self.settings, team, event.get("channel"), user)
            if refused is not None:
                log.info("slack_event_ignored", reason=refused, slack_event="app_home_opened")
                await self.publish(user, {"type": "home", "blocks": [
                    {"type": "section", "text": {"type": "mrkdwn",
                                                 "text": escape(REFUSED.format(reason=refused))}}]})
                return
            await self.publish(user, await self.view())

    async def view(self, now: float | None = None) -> dict[str, Any]:
        """The home view as it stands now."""
        now = time.time() if now is None else now
        today, note = None, None
        try:
            (today,) = await summaries(self.kernel, midnight(now))
        except Unavailable as exc:
            note = str(exc)
        budgets, _ = await limits(self.kernel)
        alerts = await open_alerts(self.kernel) or []
        return home_view(today, budgets, alerts, now, note=note)

    async def publish(self, user: str, view: dict[str, Any]) -> None:
        try:
            await self.client.views_publish(user_id=user, view=view)
        except FAILURES as exc:
            raise failure("views.publish", exc) from None


def register(app: AsyncApp, chat: Chat) -> None:
    """Listen for the Home tab being opened."""
    app.event("app_home_opened")(Home(chat).on_home_opened)
