"""The ``slack`` plugin: the Slack bot, served by ``turnout serve`` whenever Slack is configured.

Configured by ``[slack]`` (:class:`~.settings.SlackSettings`) or by the environment alone
(``SLACK_BOT_TOKEN``, ``SLACK_SIGNING_SECRET``, ``SLACK_APP_TOKEN``, ``TURNOUT_SLACK_API_URL``).
With a bot token and a signing secret it takes Slack's HTTP requests (the Events API, slash
commands, interactivity) on ``POST /slack/events``; with an app token it also connects over
Socket Mode at startup. With neither token it does nothing, and ``/slack/events`` answers 404
saying how to configure Slack. The route is registered while plugins load, before any settings
are read, so it always exists; what it does is decided at startup.

It is also an alert sink: its ``alert`` hook hands each alert to :class:`~.alerts.AlertPoster`
(posted once, updated in place, resolved; acknowledged and muted from its buttons), through the
kernel's deferred work, so nothing that raised an alert waits for Slack.
"""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

import structlog
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from turnout.kernel.errors import BodyTooLarge, ConfigError, NotFound, TurnoutError
from turnout.kernel.hookspecs import hookimpl
from turnout.kernel.observability import scrub
from turnout.kernel.types import Alert

from .settings import SlackSettings

log = structlog.get_logger("turnout.slack")

EVENTS_PATH = "/slack/events"
"""Where Slack sends events, slash commands and interactivity (the app's Request URLs)."""

MAX_BODY_BYTES = 1_000_000
"""Largest request accepted on :data:`EVENTS_PATH` (Slack's payloads are a few kilobytes)."""

RECONNECT_S = (1.0, 2.0, 5.0, 10.0, 30.0, 60.0)
"""Waits between Socket Mode connection attempts at startup; the last one repeats."""

NOT_CONFIGURED = ("The Slack bot is not configured: set SLACK_BOT_TOKEN and SLACK_SIGNING_SECRET "
                  "in the gateway's environment (or bot_token and signing_secret under [slack]) "
                  "and restart it; docs/slack.md has the whole setup.")

SOCKET_ONLY = ("The Slack bot takes its events over Socket Mode (SLACK_APP_TOKEN) and has no "
               "signing secret to check HTTP requests with: set SLACK_SIGNING_SECRET (or [slack] "
               "signing_secret) to receive them here.")


class Starting(TurnoutError):
    """The gateway has not started yet (503)."""

    status = 503
    code = "starting"


class SlackBot:
    """The Slack bot as a plugin: its settings, its HTTP route, its lifetime."""

    name = "slack"
    Settings = SlackSettings

    def __init__(self) -> None:
        self.kernel: Any = None
        self.settings: SlackSettings | None = None
        self.bot: Any = None
        """The running bot (:class:`~.app.SlackApp`), None when Slack is not configured."""
        self.socket: Any = None
        """The Socket Mode client when ``app_token`` is set."""
        self._connecting: asyncio.Task | None = None
        self.alerts: Any = None
        """The alert poster (:class:`~.alerts.AlertPoster`) while the bot runs."""

    @hookimpl
    def register_http_routes(self, register) -> None:
        """``POST /slack/events``."""
        register(EVENTS_PATH, self.events, methods=("POST",))

    @hookimpl
    async def startup(self, kernel: Any) -> None:
        """Build the bot when a token is configured (and connect Socket Mode when an app
        token is); otherwise do nothing. A configuration that cannot work stops startup,
        saying what to set."""
        self.kernel = kernel
        self.settings = kernel.plugin_settings(self) or SlackSettings()
        if not self.settings.enabled:
            return
        problem = self.settings.problem()
        if problem is not None:
            raise ConfigError(problem)
        from .alerts import AlertPoster
        from .app import build_app, socket_mode

        self.bot = build_app(kernel, self.settings)
        self.alerts = AlertPoster(kernel, self.settings)
        modes = ["events API on POST " + EVENTS_PATH] if self.settings.signing_secret else []
        if self.settings.app_token is not None:
            self.socket = socket_mode(self.bot, self.settings.app_token.get_secret_value())
            self._connecting = asyncio.create_task(self._connect(), name="slack-socket-mode")
            modes.append("socket mode")
        log.info("slack_bot_started", receives=", ".join(modes), route=self.settings.route,
                 streaming=self.settings.stream)

    @hookimpl
    def alert(self, alert: Alert) -> None:
        """Hand the alert to the poster (deferred, in order per key); returns at once. Does
        nothing while the bot is off."""
        if self.alerts is not None:
            self.alerts.submit(alert)

    async def _connect(self) -> None:
        """Connect Socket Mode, trying again while Slack cannot be reached (the gateway's API
        serves meanwhile); once connected, slack_sdk reconnects by itself."""
        for attempt in itertools.count():
            try:
                await self.socket.connect_async()
                log.info("slack_socket_mode_connected")
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - retried: Slack may be out of reach now
                wait = RECONNECT_S[min(attempt, len(RECONNECT_S) - 1)]
                log.warning("slack_socket_mode_failed", error_type=type(exc).__name__,
                            error=scrub(exc, limit=200), retry_in_s=wait)
                await asyncio.sleep(wait)

    @hookimpl
    async def shutdown(self) -> None:
        """Stop Socket Mode, let answers in progress finish (a few seconds at most)."""
        if self._connecting is not None:
            self._connecting.cancel()
            await asyncio.gather(self._connecting, return_exceptions=True)
            self._connecting = None
        if self.socket is not None:
            try:
                await self.socket.close_async()
            except Exception as exc:  # noqa: BLE001 - closing must not keep the rest open
                log.warning("slack_socket_mode_close_failed", error_type=type(exc).__name__)
            self.socket = None
        if self.bot is not None:
            await self.bot.chat.drain()

    async def events(self, request: Request) -> Response:
        """Slack's requests: verified and dispatched by slack-bolt (401 for a bad or stale
        signature, before anything else runs); 404 while Slack is not configured."""
        try:
            self._check(request)
            return await self.bot.handler.handle(request)
        except TurnoutError as exc:
            return JSONResponse(exc.to_openai(), status_code=exc.status)
        except Exception as exc:  # noqa: BLE001 - the last guard: never a traceback to Slack
            log.error("slack_request_failed", error_type=type(exc).__name__,
                      error=scrub(exc, limit=300))
            error = TurnoutError("The gateway failed while taking a Slack request; see its log.")
            return JSONResponse(error.to_openai(), status_code=500)

    def _check(self, request: Request) -> None:
        """Raise unless the bot takes HTTP requests now and this one is of a sane size."""
        if self.settings is None:
            raise Starting("The gateway is starting; retry in a moment.")
        if self.bot is None:
            raise NotFound(NOT_CONFIGURED)
        if self.settings.signing_secret is None:
            raise NotFound(SOCKET_ONLY)
        size = request.headers.get("content-length")
        if size is not None and size.isdigit() and int(size) > MAX_BODY_BYTES:
            raise BodyTooLarge(f"A Slack request is at most {MAX_BODY_BYTES} bytes; this one "
                               f"is {size}.")
