"""Who may ask, as whom they ask, and that each question is answered once.

Request signatures and timestamps are checked by slack-bolt before anything here runs (a bad or
stale one gets 401 and reaches no listener). What is left for the bot:

- the allowlists: workspaces, channels and users (``[slack] allow_*``; empty lists allow all);
  an event from outside them is acknowledged and left unanswered;
- the mapping of a Slack user to the gateway's :class:`~turnout.kernel.types.Caller`, so budgets
  and rate limits count what they ask;
- claims in the shared store: Slack delivers an event again when it thinks the first delivery
  failed (``X-Slack-Retry-Num``, same ``event_id``), and one message may arrive as two events
  (a mention in a direct message); each is claimed before it is answered, on whichever replica
  gets it first, and the others drop it.
"""

from __future__ import annotations

import uuid
from typing import Iterable

from turnout.kernel.store import Store
from turnout.kernel.types import Caller

from .settings import SlackSettings

CLAIM_TTL_S = 3600.0
"""How long a claimed event or message stays claimed: Slack's retries come within minutes."""


def refusal(settings: SlackSettings, team: str | None, channel: str | None,
            user: str | None) -> str | None:
    """Why the bot may not answer in this workspace, channel or for this user (the allowlist
    that leaves it out), or None when it may."""
    for allowed, value, what in ((settings.allow_teams, team, "team"),
                                 (settings.allow_channels, channel, "channel"),
                                 (settings.allow_users, user, "user")):
        if allowed and value not in allowed:
            return f"{what} not in [slack] allow_{what}s"
    return None


def caller(settings: SlackSettings, team: str | None, user: str | None) -> Caller:
    """Who a Slack user asks as: ``[slack.users."U…"]`` when set, else the user's Slack id and
    the workspace's id, with no gateway key."""
    mapped = settings.users.get(user or "")
    if mapped is None:
        return Caller(key=None, user=user, team=team)
    return Caller(key=mapped.key, user=mapped.user or user, team=mapped.team or team)


def claim_keys(team: str | None, channel: str, ts: str, event_id: str | None) -> list[str]:
    """The store keys that stand for one question: its event, and its message."""
    keys = [f"slack:event:{event_id}"] if event_id else []
    keys.append(f"slack:message:{team or '-'}:{channel}:{ts}")
    return keys


async def claim(store: Store, keys: Iterable[str]) -> bool:
    """Claim every key for this delivery; False when another delivery (here or on another
    replica) holds one of them already. Claims are never released: they expire."""
    token = uuid.uuid4().hex
    for key in keys:
        if not await store.try_lock(key, token, CLAIM_TTL_S):
            return False
    return True
