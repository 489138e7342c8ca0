"""Alerts in Slack: each alert posted once, updated in place while it lasts, closed when it
resolves, and acknowledged or muted from its buttons.

**Where.** ``alert.channel`` (the ``[[alerts]]`` rule's ``channel``), else ``[slack]
alerts_channel``; with neither the alert is not posted to Slack (logged once). A channel is an
id (``C0123456789``) or a name (``#llm-ops``): ``chat.postMessage`` takes either, and the
message's channel id, from Slack's answer, is what later updates use. No channel list is read,
so the app needs no scope beyond ``chat:write``; the bot must be a member of the channel
(``/invite @Turnout``).

**The lifecycle**, per alert key and episode (an episode is the key and ``alert.started_at``;
the engine gives every opening of an alert its own):

- the first delivery of an episode posts the message (``chat.postMessage``);
- later deliveries (repeats every ``repeat_minutes``, changed figures) edit it in place
  (``chat.update``), never post again;
- the resolve edits it to its resolved form (a ✅ "Resolved after 12 min" header, no buttons)
  and posts a short reply in its thread (which notifies the people following it);
- an episode that opens again later gets a message of its own.

**Kept in the store**, so any replica can update the message: ``slack:alert:<key>`` (JSON: the
episode's ``started_at``, the message's ``channel`` and ``ts``, the alert as last shown,
``resolved_at``, ``acked_by``, ``muted_until``, ``muted_by``), always, whether or not the alert
rules engine is loaded (the budgets plugin raises its alerts without it), for 30 days after its
last change (7 once resolved, or until its mute ends when that is later). Every change to a
key's message is made under the lock ``slack:alert-lock:<key>``, and the post of an episode and
its resolve are each claimed first (``slack:alert-claim:<key>:<started_at>:open|resolved``, a
lock kept 7 days): two replicas delivering the same transition post it once. A claim whose post
failed is given back.

**Buttons.** "Acknowledge" calls ``AlertRules.acknowledge(key, by=<Slack user id>)`` (no more
repeats; the resolve still comes) and shows "Acknowledged by @someone" in place of the button;
"Mute 1h" and "Mute 1d" call ``AlertRules.mute(key, until=now + 1 h or 1 d)`` and show "Muted
until ...". A muted key is not posted or updated until the mute ends (its resolve still closes
its message), whether the engine raised it or not. A button's value is the alert's key, nothing
else. Buttons obey ``[slack] allow_teams`` and ``allow_users`` (not ``allow_channels``, which is
about where the bot answers questions). Slack is acknowledged at once; the work follows.

**Delivery** runs in the kernel's deferred work (no request or tick waits for Slack), one
delivery at a time per alert key, in the order raised. Each Web API call is tried up to
:data:`RETRIES` more times: after a 429, as its ``Retry-After`` says (at most
:data:`RETRY_AFTER_CAP_S`); after a 5xx, a dropped connection or a timeout, after
:data:`BACKOFF_S`, doubling. Slack refusing the call otherwise (``channel_not_found``,
``not_in_channel``, ``message_not_found``...) is not retried. Either way the alert is given up
with ``slack_alert_failed`` in the log: its key, the method and Slack's error code, never a
token or the message. The poster has a Web API client of its own, without slack_sdk's retries,
so this policy is the only one.

The blocks are pure functions of the alert (:func:`alert_blocks`, :func:`alert_message`);
``docs/slack.md`` shows the message of an open alert, and a test compares the two.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
import time
import uuid
from dataclasses import asdict, dataclass, replace
from typing import Any, Awaitable, Callable

import orjson
import structlog
from slack_bolt.async_app import AsyncApp
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from turnout.kernel.observability import scrub
from turnout.kernel.store import Store, StoreError
from turnout.kernel.types import Alert
from turnout.plugins.webhook_alerts import retry_after

from .formatting import escape, money
from .reply import FAILURES, Undeliverable
from .settings import SlackSettings

log = structlog.get_logger("turnout.slack")

ACK_ACTION = "turnout_alert_ack"
"""The ``action_id`` of the Acknowledge button."""

MUTE_ACTIONS = {"turnout_alert_mute_1h": ("Mute 1h", 3600.0),
                "turnout_alert_mute_1d": ("Mute 1d", 86400.0)}
"""The mute buttons: ``action_id`` -> (label, seconds)."""

ACTIONS_BLOCK_ID = "turnout_alert_actions"
"""The ``block_id`` of an alert's buttons."""

SEVERITIES = {"critical": (":rotating_light:", "Critical"), "warning": (":warning:", "Warning"),
              "info": (":information_source:", "Info")}
"""Severity -> (emoji, name) for the header."""

RESOLVED_EMOJI = ":white_check_mark:"

RETRIES = 3
"""How many times a failed Web API call is tried again (429, 5xx, connection, timeout)."""
BACKOFF_S = 0.5
"""The first wait before a retry without ``Retry-After``; it doubles with each one."""
RETRY_AFTER_CAP_S = 30.0
"""Longest wait before a retry, a 429's ``Retry-After`` included."""
API_TIMEOUT_S = 30
"""Seconds one Web API call may take."""

RECORD = "slack:alert:"
LOCK = "slack:alert-lock:"
CLAIM = "slack:alert-claim:"
OPEN_TTL_S = 30 * 86400.0
"""How long a message's record is kept after its last change while it may still change."""
RESOLVED_TTL_S = 7 * 86400.0
"""How long a resolved alert's record is kept (a late button press finds it)."""
CLAIM_TTL_S = 7 * 86400.0
LOCK_TTL_S = 300.0
"""How long a replica may hold a key's message (its calls, retries included) should it die."""
LOCK_WAIT_S = 120.0
"""How long a delivery or a button waits for another one on the same key."""

HEADER_CHARS = 150
"""Most characters of a header block's text."""
SUMMARY_CHARS = 2900
VALUE_CHARS = 2000
"""Most characters of a button's value: a longer key gets no buttons."""

_USER = re.compile(r"[UW][A-Z0-9]{2,}")


# --- the blocks ----------------------------------------------------------------------------------


def slack_date(ts: float) -> str:
    """Epoch seconds as Slack's date formatting (each reader's own time zone), with a UTC
    fallback for clients that cannot format it."""
    fallback = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(ts))
    return f"<!date^{int(ts)}^{{date_short_pretty}} at {{time}}|{fallback}>"


def span(seconds: float) -> str:
    """A duration for people: ``45 s``, ``12 min``, ``3 h 5 min``, ``2 d 4 h``."""
    seconds = max(seconds, 0.0)
    if seconds < 60:
        return f"{seconds:.0f} s"
    minutes = round(seconds / 60)
    if minutes < 120:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours} h {minutes} min" if minutes else f"{hours} h"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours} h" if hours else f"{days} d"


def _subject(labels: dict[str, str]) -> str:
    if "provider" in labels:
        return f"provider {labels['provider']}"
    if labels.get("route") == "*":
        return "all requests"
    if "route" in labels:
        return f"route {labels['route']}"
    return labels.get("model", "")


def title(alert: Alert) -> str:
    """What the alert is about, in a few words: ``p95 latency of strong``."""
    labels = alert.labels
    subject = _subject(labels)
    if alert.name == "latency_p95":
        return f"p95 latency of {subject}"
    if alert.name in ("error_rate", "fallback_rate"):
        return f"{'Error' if alert.name == 'error_rate' else 'Fallback'} rate of {subject}"
    if alert.name == "provider_down":
        return f"{subject.capitalize()} is down"
    if alert.name == "budget_threshold":
        window = labels.get("window")
        budget = f"the {window} budget" if window else "the budget"
        who = "global" if labels.get("scope") == "global" else \
            " ".join(v for v in (labels.get("scope"), labels.get("match")) if v)
        share = _percent(_number(labels.get("threshold")))
        return f"{share} of {budget} of {who}" if who else f"{share} of {budget}"
    if alert.name == "digest":
        return f"Daily digest {labels.get('day', '')}".strip()
    inner = ", ".join(f"{k}={v}" for k, v in sorted(labels.items()))
    return f"{alert.name} ({inner})" if inner else alert.name


def _number(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _percent(value: float | None) -> str:
    return "?" if value is None else f"{value * 100:.3g}%"


def _ms(value: float) -> str:
    return f"{value:,.0f} ms"


def _count(value: float) -> str:
    return f"{int(value):,}"


def _code(value: Any) -> str:
    return f"`{escape(str(value))}`"


FIGURES: list[tuple[str, str, Callable[[Any], str]]] = [
    ("p95_ms", "p95 latency", _ms),
    ("above_ms", "Bound", _ms),
    ("rate", "Rate", _percent),
    ("above", "Bound", _percent),
    ("errors", "Server errors", _count),
    ("fallbacks", "Fallbacks", _count),
    ("requests", "Requests", _count),
    ("window_s", "Window", span),
    ("failures", "Failures in a row", _count),
    ("after_failures", "Opens after", _count),
    ("last_error", "Last error", _code),
    ("spend_usd", "Spend", money),
    ("threshold", "Threshold", _percent),
]
"""The figures shown from ``alert.details``, in order: (key, label, format)."""

NUMERIC = {key for key, _, fmt in FIGURES if fmt is not _code}


def figures(alert: Alert) -> list[tuple[str, str]]:
    """The alert's figures as (label, mrkdwn value), from its details (a budget alert's
    threshold and window from its labels); unknown or empty ones left out."""
    details = dict(alert.details)
    if alert.name == "budget_threshold":
        details.setdefault("threshold", alert.labels.get("threshold"))
    out: list[tuple[str, str]] = []
    for key, label, fmt in FIGURES:
        value = details.get(key)
        if key in NUMERIC:
            value = _number(value)
        if value is None or value == "":
            continue
        out.append((label, fmt(value)))
    if alert.name == "budget_threshold" and alert.labels.get("window"):
        out.append(("Budget window", escape(alert.labels["window"])))
    return out[:10]


def action_text(alert: Alert) -> str | None:
    """What the gateway does while the alert lasts, for people: ``Shifting traffic away from
    strong``; None when nothing."""
    labels, action = alert.labels, alert.action
    if not action:
        return None
    if action == "shift_traffic":
        if "provider" in labels:
            return f"Shifting traffic away from every model of provider {labels['provider']}"
        return f"Shifting traffic away from {labels.get('model') or _subject(labels)}"
    if action == "enable_cache":
        return f"Answering repeated requests of {_subject(labels)} from the cache"
    if action == "downgrade":
        return "Trying the cheapest model first while this budget's spend stays high"
    return f"Action: {action}"


def _header(alert: Alert, resolved_at: float | None) -> str:
    if alert.resolved:
        lasted = span((resolved_at or alert.started_at) - alert.started_at)
        text = f"{RESOLVED_EMOJI} Resolved after {lasted}: {title(alert)}"
    else:
        emoji, name = SEVERITIES.get(alert.severity, SEVERITIES["warning"])
        text = f"{emoji} {name}: {title(alert)}"
    return text if len(text) <= HEADER_CHARS else text[:HEADER_CHARS - 1] + "\u2026"


def _who(user: str) -> str:
    """A Slack user as a mention when it looks like a user id, else as text."""
    return f"<@{user}>" if _USER.fullmatch(user) else escape(user)


def _context(*texts: str) -> dict[str, Any]:
    return {"type": "context", "elements": [{"type": "mrkdwn", "text": t} for t in texts]}


def _button(action_id: str, label: str, key: str, primary: bool = False) -> dict[str, Any]:
    button: dict[str, Any] = {"type": "button", "action_id": action_id,
                              "text": {"type": "plain_text", "text": label}, "value": key}
    if primary:
        button["style"] = "primary"
    return button


def alert_blocks(alert: Alert, *, resolved_at: float | None = None, acked_by: str | None = None,
                 muted_until: float | None = None, now: float | None = None) -> list[dict]:
    """The alert's message as Block Kit: the severity and what it is about as a header, the
    summary, the figures, the action while it lasts, when it started (and who acknowledged or
    muted it), and, while it lasts, the Acknowledge (until someone has) and mute buttons. A
    resolved alert's header says how long it lasted, and it has no buttons. ``muted_until`` is
    shown while later than ``now``."""
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": _header(alert, resolved_at),
                                    "emoji": True}},
        {"type": "section", "text": {"type": "mrkdwn",
                                     "text": escape(scrub(alert.summary, limit=SUMMARY_CHARS))
                                     or "(no summary)"}},
    ]
    shown = figures(alert)
    if shown:
        blocks.append({"type": "section", "fields": [
            {"type": "mrkdwn", "text": f"*{label}*\n{value}"} for label, value in shown]})
    doing = action_text(alert)
    if doing and not alert.resolved:
        blocks.append(_context(f":arrows_counterclockwise: {escape(doing)}"))
    when = [f"Started {slack_date(alert.started_at)}"]
    if alert.resolved and resolved_at is not None:
        when.append(f"Resolved {slack_date(resolved_at)}")
    blocks.append(_context(" \u00b7 ".join(when) + f" \u00b7 {_code(alert.key)}"))
    status = []
    if acked_by:
        status.append(f":eyes: Acknowledged by {_who(acked_by)}")
    if muted_until is not None and not alert.resolved and (now is None or muted_until > now):
        status.append(f":mute: Muted until {slack_date(muted_until)}")
    if status:
        blocks.append(_context(*status))
    if not alert.resolved and alert.name != "digest" and len(alert.key) <= VALUE_CHARS:
        buttons = [] if acked_by else [_button(ACK_ACTION, "Acknowledge", alert.key, True)]
        buttons += [_button(action_id, label, alert.key)
                    for action_id, (label, _) in MUTE_ACTIONS.items()]
        blocks.append({"type": "actions", "block_id": ACTIONS_BLOCK_ID, "elements": buttons})
    return blocks


def alert_text(alert: Alert, *, resolved_at: float | None = None) -> str:
    """The message's plain text (what notifications and screen readers show)."""
    if alert.resolved:
        lasted = span((resolved_at or alert.started_at) - alert.started_at)
        head = f"Resolved after {lasted}"
    else:
        head = SEVERITIES.get(alert.severity, SEVERITIES["warning"])[1]
    return f"{head}: {escape(scrub(alert.summary, limit=1000))}"


def alert_message(alert: Alert, **state: Any) -> dict[str, Any]:
    """``{"text": ..., "blocks": [...]}`` for the alert (``state`` as :func:`alert_blocks`
    takes it)."""
    return {"text": alert_text(alert, resolved_at=state.get("resolved_at")),
            "blocks": alert_blocks(alert, **state)}


def resolved_reply(alert: Alert, resolved_at: float) -> str:
    """The short reply in the message's thread when the alert resolves."""
    lasted = span(resolved_at - alert.started_at)
    return f"{RESOLVED_EMOJI} Resolved after {lasted}: {escape(scrub(alert.summary, limit=1000))}"


# --- what is kept of a message ---------------------------------------------------------------------


def public(alert: Alert) -> dict[str, Any]:
    """The alert's fields, as kept with its message (to show it again after a button)."""
    return {"name": alert.name, "severity": alert.severity, "summary": alert.summary,
            "labels": dict(alert.labels), "resolved": alert.resolved, "key": alert.key,
            "channel": alert.channel, "action": alert.action, "started_at": alert.started_at,
            "details": dict(alert.details)}


@dataclass(slots=True)
class Posted:
    """An alert's message as kept at ``slack:alert:<key>``: where it is, the episode and the
    alert it shows, and who acknowledged or muted it."""

    started_at: float
    channel: str
    ts: str
    alert: dict[str, Any]
    resolved_at: float | None = None
    acked_by: str | None = None
    muted_until: float | None = None
    muted_by: str | None = None

    def shown(self) -> Alert:
        """The alert the message shows."""
        return Alert(**self.alert)

    def message(self, now: float) -> dict[str, Any]:
        return alert_message(self.shown(), resolved_at=self.resolved_at, acked_by=self.acked_by,
                             muted_until=self.muted_until, now=now)

    def muted(self, now: float) -> bool:
        return self.muted_until is not None and self.muted_until > now

    def ttl(self, now: float) -> float:
        keep = RESOLVED_TTL_S if self.resolved_at is not None else OPEN_TTL_S
        return keep + max((self.muted_until or 0.0) - now, 0.0)

    @classmethod
    def load(cls, raw: bytes | None) -> "Posted | None":
        if not raw:
            return None
        try:
            found = orjson.loads(raw)
            return cls(**found) if isinstance(found, dict) else None
        except (orjson.JSONDecodeError, TypeError):
            log.error("slack_alert_record_unreadable")
            return None


# --- the poster ----------------------------------------------------------------------------------


def alert_client(settings: SlackSettings) -> AsyncWebClient:
    """A Web API client for alerts: the bot token and ``api_url``, and no retries of its own
    (the poster's policy is the only one)."""
    token = settings.bot_token.get_secret_value() if settings.bot_token is not None else None
    return AsyncWebClient(token=token, base_url=settings.api_url, timeout=API_TIMEOUT_S,
                          logger=logging.getLogger("turnout.slack"), retry_handlers=[])


class AlertPoster:
    """Posts alerts to Slack and keeps their messages up to date (the module says how); one for
    the plugin's deliveries, one for the buttons, both over the shared store."""

    def __init__(self, kernel: Any, settings: SlackSettings,
                 client: AsyncWebClient | None = None, *,
                 sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep) -> None:
        self.kernel = kernel
        self.settings = settings
        self.client = client if client is not None else alert_client(settings)
        self.sleep = sleep
        self.retries, self.backoff_s, self.cap_s = RETRIES, BACKOFF_S, RETRY_AFTER_CAP_S
        self._tails: dict[str, asyncio.Future] = {}
        """Alert key -> the end of the last delivery handed over for it (deliveries of a key
        wait for the one before)."""
        self._said_no_channel = False

    # --- the engine, the clock, the channel ---------------------------------------------------

    def engine(self) -> Any:
        """The alert rules engine (the ``alerts`` plugin), or None when it is not loaded."""
        plugins = getattr(self.kernel, "plugins", None)
        found = plugins.get("alerts") if plugins is not None else None
        return found if hasattr(found, "acknowledge") and hasattr(found, "mute") else None

    def now(self) -> float:
        """Epoch seconds, on the engine's clock when it is loaded (so a mute, a resolve's
        duration and the engine agree), else the system's."""
        clock = getattr(self.engine(), "clock", None)
        return float(clock()) if callable(clock) else time.time()

    def channel_for(self, alert: Alert) -> str | None:
        """Where the alert goes: its own channel, else ``[slack] alerts_channel``; None (said
        once in the log) when neither is set."""
        channel = (alert.channel or self.settings.alerts_channel or "").strip()
        if channel:
            return channel
        if not self._said_no_channel:
            self._said_no_channel = True
            log.warning("slack_alert_no_channel", alert=alert.key,
                        hint="alerts without a channel are not posted to Slack: set [slack] "
                        "alerts_channel, or channel in the [[alerts]] rule")
        return None

    # --- delivery -------------------------------------------------------------------------------

    def submit(self, alert: Alert) -> None:
        """Hand the alert's delivery to the kernel's deferred work and return at once; it runs
        after every delivery of the same key handed over before it."""
        alert = replace(alert, labels=dict(alert.labels), details=dict(alert.details))
        before = self._tails.get(alert.key)
        done: asyncio.Future = asyncio.get_running_loop().create_future()
        self._tails[alert.key] = done
        self.kernel.defer(self._in_turn, alert, before, done)

    async def _in_turn(self, alert: Alert, before: asyncio.Future | None,
                       done: asyncio.Future) -> None:
        try:
            if before is not None:
                await before
            await self.deliver(alert)
        finally:
            if not done.done():
                done.set_result(None)
            if self._tails.get(alert.key) is done:
                del self._tails[alert.key]

    async def deliver(self, alert: Alert) -> bool:
        """Post the alert, update its message, or close it, as the module says; True when Slack
        shows it as it should (or another replica saw to it, or a mute holds it back on
        purpose: nothing is left to do). Never raises: failures are logged."""
        channel = self.channel_for(alert)
        store: Store | None = getattr(self.kernel, "store", None)
        if channel is None:
            return False
        if store is None:
            log.warning("slack_alert_dropped", alert=alert.key, reason="the gateway has not "
                        "started (no store yet)")
            return False
        try:
            async with store.lock(LOCK + alert.key, ttl_s=LOCK_TTL_S, wait_s=LOCK_WAIT_S):
                return await self._deliver(store, alert, channel)
        except Undeliverable as exc:
            self._failed(alert.key, exc)
        except StoreError as exc:
            log.warning("slack_alert_store_unavailable", alert=alert.key, error=exc.message)
        return False

    async def _deliver(self, store: Store, alert: Alert, channel: str) -> bool:
        now = self.now()
        posted = Posted.load(await store.get(RECORD + alert.key))
        if not alert.resolved and posted is not None and posted.muted(now):
            log.info("slack_alert_muted", alert=alert.key, until=posted.muted_until)
            return True
        if posted is not None and posted.started_at == alert.started_at:
            if posted.resolved_at is not None:
                return True  # closed already: a late repeat, or the resolve delivered twice
            return await self._update(store, posted, alert, now)
        transition = "resolved" if alert.resolved else "open"
        claimed = await self._claim(store, alert, transition)
        if claimed is None:
            return True
        try:
            await self._post(store, alert, channel, now, posted)
        except Undeliverable:
            await store.unlock(claimed[0], claimed[1])  # let a later delivery try again
            raise
        return True

    async def _claim(self, store: Store, alert: Alert,
                     transition: str) -> tuple[str, str] | None:
        """Claim one transition of one episode for this delivery; None when another delivery
        (here or on another replica) has it."""
        key = f"{CLAIM}{alert.key}:{alert.started_at!r}:{transition}"
        token = uuid.uuid4().hex
        if await store.try_lock(key, token, CLAIM_TTL_S):
            return key, token
        log.info("slack_alert_duplicate", alert=alert.key, transition=transition)
        return None

    async def _post(self, store: Store, alert: Alert, channel: str, now: float,
                    before: Posted | None) -> None:
        """The episode's first message (a resolve whose opening was never posted is posted
        resolved); the key's mute carries over."""
        posted = Posted(started_at=alert.started_at, channel=channel, ts="", alert=public(alert),
                        resolved_at=now if alert.resolved else None,
                        muted_until=before.muted_until if before is not None else None,
                        muted_by=before.muted_by if before is not None else None)
        message = posted.message(now)
        found = await self.call("chat.postMessage", channel=channel, text=message["text"],
                                blocks=message["blocks"], unfurl_links=False)
        posted.channel, posted.ts = str(found.get("channel") or channel), str(found["ts"])
        await self._keep(store, alert.key, posted, now)
        log.info("slack_alert_posted", alert=alert.key, resolved=alert.resolved)

    async def _update(self, store: Store, posted: Posted, alert: Alert, now: float) -> bool:
        """Show the alert's latest delivery in its message; a resolve also replies in the
        thread."""
        if not alert.resolved and public(alert) == posted.alert:
            return True  # nothing new to show (the same delivery, on another replica)
        if alert.resolved and await self._claim(store, alert, "resolved") is None:
            return True
        posted.alert = public(alert)
        if alert.resolved:
            posted.resolved_at = now
        await self._show(posted, now)
        await self._keep(store, alert.key, posted, now)
        if alert.resolved:
            await self.call("chat.postMessage", channel=posted.channel, thread_ts=posted.ts,
                            text=resolved_reply(alert, now))
        log.info("slack_alert_updated", alert=alert.key, resolved=alert.resolved)
        return True

    async def _show(self, posted: Posted, now: float) -> None:
        message = posted.message(now)
        await self.call("chat.update", channel=posted.channel, ts=posted.ts,
                        text=message["text"], blocks=message["blocks"])

    @staticmethod
    async def _keep(store: Store, key: str, posted: Posted, now: float) -> None:
        await store.set(RECORD + key, orjson.dumps(asdict(posted)), ttl_s=posted.ttl(now))

    async def posted(self, key: str) -> Posted | None:
        """What is kept of the alert ``key``'s message, or None."""
        store = getattr(self.kernel, "store", None)
        return Posted.load(await store.get(RECORD + key)) if store is not None else None

    # --- the buttons ----------------------------------------------------------------------------

    async def acknowledge(self, key: str, user: str) -> bool:
        """Acknowledge the alert in the engine (when loaded) and show who did in its message,
        without the Acknowledge button; False when there is no open alert's message to
        update."""

        async def change(posted: Posted, engine: Any) -> None:
            if engine is not None:
                await engine.acknowledge(key, by=user)
            posted.acked_by = user

        return await self._press(key, "acknowledge", change)

    async def mute(self, key: str, user: str, seconds: float) -> bool:
        """Mute the key for ``seconds`` in the engine (when loaded) and in its message, which
        says until when; False when there is no open alert's message to update."""

        async def change(posted: Posted, engine: Any) -> None:
            until = self.now() + seconds
            if engine is not None:
                await engine.mute(key, until=until)
            posted.muted_until, posted.muted_by = until, user

        return await self._press(key, "mute", change)

    async def _press(self, key: str, what: str,
                     change: Callable[[Posted, Any], Awaitable[None]]) -> bool:
        """Apply a button to the alert ``key`` and its message, if Slack shows an open alert
        under that key (a key nothing was posted for is left alone, in the engine too)."""
        store = getattr(self.kernel, "store", None)
        if store is None:
            return False
        try:
            async with store.lock(LOCK + key, ttl_s=LOCK_TTL_S, wait_s=LOCK_WAIT_S):
                posted = Posted.load(await store.get(RECORD + key))
                if posted is None or posted.resolved_at is not None:
                    log.info("slack_alert_button_ignored", alert=key, button=what,
                             reason="no open alert's message under this key")
                    return False
                await change(posted, self.engine())
                now = self.now()
                await self._keep(store, key, posted, now)
                await self._show(posted, now)
        except Undeliverable as exc:
            self._failed(key, exc)
            return False
        except StoreError as exc:
            log.warning("slack_alert_store_unavailable", alert=key, error=exc.message)
            return False
        log.info("slack_alert_button", alert=key, button=what)
        return True

    # --- one Web API call -------------------------------------------------------------------------

    async def call(self, method: str, **params: Any) -> Any:
        """Call ``method`` (``chat.postMessage``, ``chat.update``) with the retry policy the
        module describes; Slack's answer, or :class:`~.reply.Undeliverable` once it gives up."""
        send = getattr(self.client, method.replace(".", "_"))
        problem = ""
        for attempt in range(self.retries + 1):
            wait = min(self.backoff_s * 2 ** attempt, self.cap_s)
            try:
                return await send(**params)
            except SlackApiError as exc:
                status = getattr(exc.response, "status_code", 200)
                code = _error_code(exc)
                problem = code or f"HTTP {status}"
                if status == 429:
                    asked = retry_after(_header_value(exc.response, "retry-after"))
                    wait = min(asked, self.cap_s) if asked is not None else wait
                elif status < 500:
                    raise Undeliverable(method, problem) from None
            except FAILURES as exc:
                problem = type(exc).__name__
            if attempt < self.retries:
                log.info("slack_alert_retry", method=method, error=problem, wait_s=wait)
                await self.sleep(wait)
        raise Undeliverable(method, f"{problem} after {self.retries + 1} attempts")

    @staticmethod
    def _failed(key: str, exc: Undeliverable) -> None:
        hints = {"channel_not_found": "check the channel's id or name (the rule's channel or "
                 "[slack] alerts_channel)",
                 "not_in_channel": "invite the bot to the channel (/invite @Turnout)",
                 "is_archived": "the channel is archived: name another one"}
        log.error("slack_alert_failed", alert=key, method=exc.method, error=exc.error,
                  hint=hints.get(exc.error, "the alert's message was given up; the gateway's "
                                 "other alert sinks still have it"))


def _error_code(exc: SlackApiError) -> str:
    response = exc.response
    try:
        code = response.get("error") if response is not None else None
    except (AttributeError, TypeError):
        code = None
    return scrub(str(code), limit=100) if code else ""


def _header_value(response: Any, name: str) -> str | None:
    headers = getattr(response, "headers", None) or {}
    for key, value in dict(headers).items():
        if str(key).lower() == name:
            return value[0] if isinstance(value, list) and value else str(value)
    return None


# --- the listeners ---------------------------------------------------------------------------------


class AlertButtons:
    """The alert buttons' listeners (slack-bolt passes what each names)."""

    def __init__(self, poster: AlertPoster) -> None:
        self.poster = poster

    def allowed(self, body: dict[str, Any]) -> str | None:
        """The Slack user who pressed, when ``allow_teams`` and ``allow_users`` let them; else
        None (logged)."""
        settings = self.poster.settings
        user = (body.get("user") or {}).get("id")
        team = (body.get("team") or {}).get("id") or (body.get("user") or {}).get("team_id")
        if not isinstance(user, str) or not user:
            return None
        if (settings.allow_teams and team not in settings.allow_teams) or \
                (settings.allow_users and user not in settings.allow_users):
            log.info("slack_event_ignored", reason="alert button pressed from outside "
                     "[slack] allow_teams or allow_users")
            return None
        return user

    async def on_ack(self, ack: Callable[..., Awaitable[Any]], body: dict,
                     action: dict) -> None:
        """Acknowledge: answer Slack, then acknowledge the alert and update its message."""
        await ack()
        user = self.allowed(body)
        if user is not None and action.get("value"):
            await self.poster.acknowledge(str(action["value"]), user)

    async def on_mute(self, ack: Callable[..., Awaitable[Any]], body: dict,
                      action: dict) -> None:
        """Mute 1h or 1d: answer Slack, then mute the key and update its message."""
        await ack()
        user = self.allowed(body)
        found = MUTE_ACTIONS.get(str(action.get("action_id")))
        if user is not None and found is not None and action.get("value"):
            await self.poster.mute(str(action["value"]), user, found[1])


def register(app: AsyncApp, kernel: Any, settings: SlackSettings) -> None:
    """Listen for the alert buttons: Acknowledge, Mute 1h, Mute 1d."""
    buttons = AlertButtons(AlertPoster(kernel, settings))
    app.action(ACK_ACTION)(buttons.on_ack)
    app.action(re.compile("^(" + "|".join(map(re.escape, MUTE_ACTIONS)) + ")$"))(buttons.on_mute)
