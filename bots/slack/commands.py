"""The ``/turnout`` slash command: ``stats``, ``budget``, ``route <prompt>``, ``models``,
``alerts`` (``ack``, ``mute``) and ``help``.

Slack is acknowledged at once; the answer follows through the command's ``response_url``
(ephemeral: only the user who typed it sees it), or ``chat.postEphemeral`` when there is none. A
user outside the allowlists is told they cannot use it, and nothing else.

- ``stats``: spend, requests, success and p50/p95 latency, today (since 00:00 UTC) and over
  the last 7 days, and by model, summarised from the request log by ``plugins/stats.py`` (SQLite
  or PostgreSQL, as ``[record]`` says); then the week's chart, the one ``turnout stats --png``
  draws (:func:`turnout.plugins.charts.stats_png`: spend, or calls, by model per day as stacked
  bars, and the requests' p50/p95/p99 latency per day), uploaded into the channel
  (``files.getUploadURLExternal``, the bytes, ``files.completeUploadExternal``).
- ``budget``: every budget with a text bar of what is spent, and what is left (the admin
  plugin's listing, else the budgets plugin's), and the rate limits.
- ``route <prompt>``: how the prompt would be routed (``Kernel.explain``: route, rule,
  strategy, plan, dropped models, estimated cost), without calling any model.
- ``models``: every model with its provider, tier, prices and context window; the routes.
- ``alerts``: the open alerts (the ``alerts`` plugin's, numbered); ``alerts ack <n or key>``
  acknowledges one, ``alerts mute <n or key> <30m|2h|1d>`` mutes one for that long.

The figures the App Home shows come from here too (:func:`summaries`, :func:`limits`,
:func:`open_alerts`).
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Awaitable, Callable

import anyio
import orjson
import structlog
from slack_bolt.async_app import AsyncApp

from turnout.kernel.errors import ConfigError, TurnoutError
from turnout.kernel.observability import scrub
from turnout.kernel.types import ChatRequest
from turnout.plugins import charts, stats

from . import security
from .chat import FAILED, Chat
from .formatting import (
    alert_lines,
    budget_lines,
    chart_series,
    chart_upload,
    decision_text,
    escape,
    models_text,
    notice,
    rate_limit_lines,
    section_blocks,
    stats_blocks,
    utc,
)
from .reply import FAILURES, failure

log = structlog.get_logger("turnout.slack")

COMMAND = "/turnout"
"""The slash command (the manifest's)."""

DAY_S = 86400.0
WEEK_S = 7 * DAY_S

FLUSH_S = 2.0
"""How long stats wait for the record's writer to put what it holds into the database."""

MAX_BLOCKS = 50
"""Most blocks Slack takes in one message."""

MAX_MUTE_S = 30 * DAY_S
"""Longest mute ``alerts mute`` sets."""

HELP = """*Turnout*: the gateway's figures, from Slack. Only you see the answers.
\u2022 `/turnout stats`: spend, requests, success and p50/p95 latency, today and over the last 7 \
days, by model, with a chart
\u2022 `/turnout budget`: every budget, what is spent and what is left
\u2022 `/turnout route <prompt>`: how a prompt would be routed, without calling a model
\u2022 `/turnout models`: the models with their tiers, prices and context windows
\u2022 `/turnout alerts`: open alerts; `/turnout alerts ack <n>` acknowledges one, \
`/turnout alerts mute <n> <30m|2h|1d>` mutes one
\u2022 `/turnout help`: this"""

ALERTS_HELP = ("`/turnout alerts` lists the open alerts; `/turnout alerts ack <n or key>` "
               "acknowledges one, `/turnout alerts mute <n or key> <30m|2h|1d>` mutes one for "
               "that long.")

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
_QUOTES = str.maketrans({"\u201c": '"', "\u201d": '"', "\u2018": "'", "\u2019": "'"})


class Unavailable(Exception):
    """A figure the gateway cannot give now; the message says why, for the user."""


# --- what the gateway knows (the App Home shows it too) ------------------------------------


def midnight(now: float) -> float:
    """The start of ``now``'s day, UTC."""
    return math.floor(now / DAY_S) * DAY_S


async def summaries(kernel: Any, *since: float) -> list[dict[str, Any]]:
    """The request log summarised by ``plugins/stats.py`` from each time in ``since``, read off
    the event loop (what the record's writer holds is written first, for up to a couple of
    seconds). Raises :class:`Unavailable` when there is no log to read."""
    def read(path: str | None, dsn: str | None, schema: str) -> list[dict[str, Any]]:
        if dsn is not None:
            return [stats.summarize_postgres(dsn, schema, since=when) for when in since]
        return [stats.summarize(path, since=when) for when in since]

    return await _from_log(kernel, read)


async def week_timeline(kernel: Any, now: float) -> dict[str, Any]:
    """The last 7 days of the request log per day (UTC), for the stats chart
    (:func:`turnout.plugins.stats.timeline`); read like :func:`summaries`."""
    def read(path: str | None, dsn: str | None, schema: str) -> dict[str, Any]:
        return stats.timeline(path, dsn=dsn, schema=schema, since=now - WEEK_S, until=now,
                              bucket_s=int(DAY_S))

    return await _from_log(kernel, read)


async def _from_log(kernel: Any, read: Callable[[str | None, str | None, str], Any]) -> Any:
    """``read(path, dsn, schema)`` on the request log ``[record]`` names, off the event loop,
    after the record's writer has written what it holds (for up to :data:`FLUSH_S`). Raises
    :class:`Unavailable` when there is no log to read."""
    recorder = kernel.plugins.get("record")
    settings = kernel.plugin_settings("record") if recorder is not None else None
    if settings is None or not getattr(settings, "enabled", False):
        raise Unavailable("the request log is off ([record] enabled = false, or the record "
                          "plugin is disabled)")
    if settings.backend == "sqlite" and settings.path == ":memory:":
        raise Unavailable("the request log is kept in memory only (record.path = ':memory:')")

    def flushed() -> Any:
        flush = getattr(recorder, "flush", None)
        if flush is not None:
            flush(FLUSH_S)
        if settings.backend == "postgres":
            return read(None, settings.dsn, settings.schema)
        if not Path(settings.path).is_file():
            raise Unavailable("no requests have been recorded yet")
        return read(settings.path, None, "")

    try:
        return await anyio.to_thread.run_sync(flushed)
    except ConfigError as exc:
        log.warning("slack_stats_unreadable", error=scrub(exc.message, limit=300))
        raise Unavailable("the request log cannot be read now; the gateway's log says why") \
            from None


async def limits(kernel: Any) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(budgets, rate limits) with what each has counted in its current window: the admin
    plugin's listing, else the budgets plugin's (budgets with a single figure only)."""
    admin = kernel.plugins.get("admin")
    if admin is not None and hasattr(admin, "show"):
        shown = await admin.show()
        return shown.get("budgets", []), shown.get("rate_limits", [])
    budgets = kernel.plugins.get("budgets")
    if budgets is not None and hasattr(budgets, "remaining"):
        return await budgets.remaining(), []
    return [], []


async def open_alerts(kernel: Any) -> list[dict[str, Any]] | None:
    """The open alerts (the ``alerts`` plugin's index in the store), oldest first, each with
    its key, name, severity, summary, start, and who acknowledged it or until when it is
    muted; None when the plugin is not loaded."""
    from turnout.plugins.alert_rules import INDEX

    engine = kernel.plugins.get("alerts")
    store = kernel.store
    if engine is None or not hasattr(engine, "state") or store is None:
        return None
    raw = await store.get(INDEX)
    try:
        index = orjson.loads(raw) if raw else {}
    except orjson.JSONDecodeError:
        index = {}
    found = []
    for key, entry in (index.items() if isinstance(index, dict) else ()):
        entry = entry if isinstance(entry, dict) else {}
        state = await engine.state(key) or {}
        public = state.get("alert") if isinstance(state.get("alert"), dict) else {}
        found.append({"key": key, "name": entry.get("name") or public.get("name"),
                      "severity": public.get("severity"), "summary": public.get("summary"),
                      "started_at": entry.get("started_at") or state.get("started_at"),
                      "acked_by": state.get("acked_by"),
                      "muted_until": state.get("muted_until")})
    found.sort(key=lambda a: (float(a["started_at"] or 0.0), a["key"]))
    return found


def duration_s(text: str) -> float:
    """Seconds in ``30m``, ``2h``, ``1d`` (``s`` too); ValueError saying how to write one."""
    found = _DURATION.match(text.strip().lower())
    if not found or float(found.group(1)) <= 0:
        raise ValueError(f"`{escape(text)}` is not a duration: write a number and a unit, "
                         "like 30m, 2h or 1d.")
    seconds = float(found.group(1)) * stats.AGE_UNITS[found.group(2)]
    if seconds > MAX_MUTE_S:
        raise ValueError("A mute lasts 30 days at most (30d).")
    return seconds


def unescape(text: str) -> str:
    """A slash command's text as typed: Slack's ``&amp;``, ``&lt;``, ``&gt;`` undone, curly
    quotes made straight (Slack's clients curl them)."""
    return text.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&") \
        .translate(_QUOTES)


# --- the command -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Asked:
    """One ``/turnout``: who typed it, where, the text after the command, how to answer."""

    team: str | None
    channel: str | None
    user: str | None
    text: str
    respond: Callable[..., Awaitable[Any]] | None

    @classmethod
    def of(cls, body: dict[str, Any], respond: Any) -> "Asked":
        return cls(team=body.get("team_id"), channel=body.get("channel_id"),
                   user=body.get("user_id"), text=unescape(str(body.get("text") or "")).strip(),
                   respond=respond if body.get("response_url") else None)


class Commands:
    """The ``/turnout`` listener and its sub-commands."""

    def __init__(self, chat: Chat) -> None:
        self.chat = chat
        self.kernel, self.settings, self.client = chat.kernel, chat.settings, chat.client
        self.subcommands: dict[str, Callable[[Asked, str], Awaitable[None]]] = {
            "stats": self.stats, "budget": self.budget, "budgets": self.budget,
            "route": self.route, "models": self.models, "alerts": self.alerts,
            "help": self.help}

    async def on_command(self, ack: Callable[..., Awaitable[Any]], body: dict,
                         respond: Any = None) -> None:
        """``/turnout ...``: acknowledge, then answer the sub-command (help for an unknown
        one)."""
        await ack()
        asked = Asked.of(body, respond)
        async with self.chat.working(lambda: self.say(asked, notice(FAILED)), team=asked.team,
                                     channel=asked.channel, user=asked.user):
            refused = security.refusal(self.settings, asked.team, asked.channel, asked.user)
            if refused is not None:
                log.info("slack_event_ignored", reason=refused, slack_event="slash_command")
                await self.say(asked, notice(f"You cannot use {COMMAND} here: {refused}. Ask a "
                                             "Slack admin of the gateway."))
                return
            name, _, rest = asked.text.partition(" ")
            run = self.subcommands.get(name.lower())
            if run is None:
                await self.help(asked, name)
                return
            log.info("slack_command", command=COMMAND, subcommand=name.lower())
            await run(asked, rest.strip())

    # --- sub-commands --------------------------------------------------------------------------

    async def help(self, asked: Asked, unknown: str = "") -> None:
        head = (f"`{escape(unknown[:40])}` is not a {COMMAND} command.\n"
                if unknown and unknown.lower() != "help" else "")
        await self.say(asked, head + HELP)

    async def stats(self, asked: Asked, rest: str) -> None:
        """Today's and the week's figures, then the chart of the week."""
        now = time.time()
        try:
            today, week = await summaries(self.kernel, midnight(now), now - WEEK_S)
        except Unavailable as exc:
            await self.say(asked, f"No stats: {escape(str(exc))}.")
            return
        await self.say(asked, "Turnout stats", stats_blocks(today, week))
        _, series = chart_series(week)
        if not series or not asked.channel:
            return
        upload = chart_upload(week, asked.channel)
        try:
            drawn = await week_timeline(self.kernel, now)
            png = await anyio.to_thread.run_sync(
                lambda: charts.stats_png(drawn, title=upload["title"]))
        except ImportError:
            log.warning("slack_chart_skipped", reason="matplotlib is not installed")
            await self.say(asked, "_No chart: matplotlib is not installed on the gateway._")
            return
        except (Unavailable, charts.NoData):
            return  # the log became unreadable since the figures were read: they stand alone
        try:
            await self.client.files_upload_v2(file=png, **upload)
        except FAILURES as exc:
            cause = failure("files.completeUploadExternal", exc)
            log.info("slack_api_failed", method=cause.method, error=cause.error)
            await self.say(asked, notice(
                f"The chart could not be posted here ({cause.error}): invite the bot to this "
                f"channel, or run {COMMAND} stats in a direct message with it."))

    async def budget(self, asked: Asked, rest: str) -> None:
        """Every budget as a bar, and the rate limits."""
        budgets, rate_limits = await limits(self.kernel)
        lines = budget_lines(budgets) or ["_No budgets are configured._"]
        text = "*Budgets* (current window, UTC)\n" + "\n".join(lines)
        if rate_limits:
            text += "\n\n*Rate limits*\n" + "\n".join(rate_limit_lines(rate_limits))
        await self.say(asked, text)

    async def route(self, asked: Asked, prompt: str) -> None:
        """How ``prompt`` would be routed for this user in this channel; no model is called."""
        if not prompt:
            await self.say(asked, f"Give the prompt: `{COMMAND} route what is our on-call "
                                  "policy?`")
            return
        request = ChatRequest(model=self.settings.route_for(asked.channel or ""),
                              messages=[{"role": "user", "content": prompt}])
        caller = security.caller(self.settings, asked.team, asked.user)
        try:
            explained = await self.kernel.explain(self.kernel.context(
                request, caller=caller, client=caller.key or "slack"))
        except TurnoutError as exc:
            await self.say(asked, notice(f"It would not be routed: {scrub(exc.message, limit=500)}"))
            return
        labels = explained.pop("labels", None)
        await self.say(asked, "*How this prompt would be routed* (no model was called)\n"
                       + decision_text(explained, labels=labels))

    async def models(self, asked: Asked, rest: str) -> None:
        """The models, then the routes."""
        models = list(self.kernel.models)
        if not models:
            await self.say(asked, "No models are configured.")
            return
        text = "*Models* (prices in US dollars per million tokens)\n" + models_text(models)
        routes = self.kernel.config.routes
        if routes:
            text += "\n*Routes*\n" + "\n".join(
                f"\u2022 *{escape(name)}*: " + " \u2192 ".join(escape(m) for m in route.models)
                for name, route in sorted(routes.items()))
        await self.say(asked, text)

    async def alerts(self, asked: Asked, rest: str) -> None:
        """List the open alerts, or acknowledge or mute one."""
        now = time.time()
        found = await open_alerts(self.kernel)
        if found is None:
            await self.say(asked, "No alerts: the alerts plugin is not loaded (it is disabled "
                                  "in plugins.disable).")
            return
        words = rest.split()
        if not words:
            if not found:
                await self.say(asked, "No open alerts.")
                return
            await self.say(asked, f"*Open alerts* ({len(found)})\n"
                           + "\n".join(alert_lines(found, now)) + "\n" + ALERTS_HELP)
            return
        verb = words[0].lower()
        if len(words) != {"ack": 2, "mute": 3}.get(verb):
            await self.say(asked, ALERTS_HELP)
            return
        key = self._pick(found, words[1])
        if key is None:
            await self.say(asked, notice(f"There is no open alert {words[1]}: {COMMAND} alerts "
                                         f"lists the {len(found)} open now."))
            return
        engine = self.kernel.plugins.get("alerts")
        # The poster also updates the alert's message in its channel, when one was posted.
        poster = getattr(self.kernel.plugins.get("slack"), "alerts", None)
        user = asked.user or "slack"
        if verb == "ack":
            shown = poster is not None and await poster.acknowledge(key, user)
            if shown or await engine.acknowledge(key, by=user):
                await self.say(asked, f"Acknowledged `{escape(key)}`: it is not posted again "
                                      "while it lasts; its resolution still is.")
            else:
                await self.say(asked, notice(f"No open alert has the key {key}; it may have "
                                             "resolved meanwhile."))
            return
        try:
            seconds = duration_s(words[2])
        except ValueError as exc:
            await self.say(asked, notice(str(exc)))
            return
        until = now + seconds
        if poster is None or not await poster.mute(key, user, seconds):
            await engine.mute(key, until=until)
        log.info("slack_alert_muted", alert=key, until=until)
        still = "" if any(a["key"] == key for a in found) else \
            " (it is not open now: this holds should it open before then)"
        await self.say(asked, f"Muted `{escape(key)}` until {utc(until)}: nothing new is "
                              f"posted for it until then{still}.")

    @staticmethod
    def _pick(found: list[dict[str, Any]], which: str) -> str | None:
        """The key ``which`` names: a number of the list (from 1), or a key; None for a
        number out of range. A key need not be open (a mute can wait for it)."""
        if which.isdigit():
            n = int(which)
            return found[n - 1]["key"] if 1 <= n <= len(found) else None
        return which

    # --- answering -----------------------------------------------------------------------------

    async def say(self, asked: Asked, text: str, blocks: list[dict[str, Any]] | None = None) -> None:
        """Answer the user who typed the command, alone: through the response URL, else
        ``chat.postEphemeral``. ``text`` is mrkdwn (the blocks' fallback when they are given)."""
        blocks = (blocks if blocks is not None else section_blocks(text))[:MAX_BLOCKS]
        if asked.respond is not None:
            sent = await asked.respond(text=text, blocks=blocks, response_type="ephemeral")
            status = getattr(sent, "status_code", 200)
            if status != 200:
                log.info("slack_respond_failed", status=status)
            return
        if not asked.channel or not asked.user:
            return
        try:
            await self.client.chat_postEphemeral(channel=asked.channel, user=asked.user,
                                                 text=text, blocks=blocks)
        except FAILURES as exc:
            raise failure("chat.postEphemeral", exc) from None


def register(app: AsyncApp, chat: Chat) -> None:
    """Listen for ``/turnout``."""
    app.command(COMMAND)(Commands(chat).on_command)
