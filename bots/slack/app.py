"""The bot's slack-bolt app: the Web API client, the ``AsyncApp``, and what it listens for.

:func:`build_app` makes one per gateway at startup. Listeners are registered in one place, at
the end of :func:`build_app`: each feature module has a ``register(app, ...)`` (chat's is
:func:`.chat.register`); add a module's there to give the bot more to do (buttons under an
answer, slash commands, the App Home tab).

The app acknowledges events before its listeners run (``process_before_response=False``, so
within Slack's 3 seconds however long an answer takes) and checks every HTTP request's signature
and timestamp (slack-bolt's request verification: 401 for a bad or stale one). The Web API client
is slack_sdk's ``AsyncWebClient`` on ``[slack] api_url``, retrying once after a 429 as Slack's
``Retry-After`` says.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from slack_bolt.adapter.starlette.async_handler import AsyncSlackRequestHandler
from slack_bolt.async_app import AsyncApp
from slack_sdk.http_retry.builtin_async_handlers import (
    AsyncConnectionErrorRetryHandler,
    AsyncRateLimitErrorRetryHandler,
)
from slack_sdk.web.async_client import AsyncWebClient

from . import alerts, buttons, chat, commands, home
from .settings import SlackSettings

LOGGER = "turnout.slack"
"""The standard-library logger slack-bolt and slack_sdk write to (the gateway's log)."""

API_TIMEOUT_S = 30
"""Seconds a Slack Web API call may take."""


@dataclass(slots=True)
class SlackApp:
    """What :func:`build_app` made: the bolt app, its Web API client, the HTTP handler that
    serves ``POST /slack/events``, and the chat that answers."""

    app: AsyncApp
    client: AsyncWebClient
    handler: AsyncSlackRequestHandler
    chat: chat.Chat


def web_client(settings: SlackSettings) -> AsyncWebClient:
    """The Slack Web API client: the bot token, ``api_url``, one retry after a 429 or a
    dropped connection."""
    token = settings.bot_token.get_secret_value() if settings.bot_token is not None else None
    return AsyncWebClient(
        token=token, base_url=settings.api_url, timeout=API_TIMEOUT_S,
        logger=logging.getLogger(LOGGER),
        retry_handlers=[AsyncConnectionErrorRetryHandler(max_retry_count=1),
                        AsyncRateLimitErrorRetryHandler(max_retry_count=1)])


def bolt_logger() -> logging.Logger:
    """slack-bolt's own logger, at warning and up: at info it writes the body of a request
    whose signature it refused (text anyone could send) into the log."""
    logger = logging.getLogger(LOGGER + ".bolt")
    logger.setLevel(logging.WARNING)
    return logger


def build_app(kernel: Any, settings: SlackSettings) -> SlackApp:
    """The bot for ``kernel`` with ``settings`` (a bot token set): the app, with every
    listener registered."""
    client = web_client(settings)
    secret = settings.signing_secret.get_secret_value() if settings.signing_secret else ""
    app = AsyncApp(client=client, signing_secret=secret, name="turnout",
                   process_before_response=False, logger=bolt_logger())
    answers = chat.Chat(kernel, settings, client)
    # Listeners, one register() per feature module.
    chat.register(app, answers)
    buttons.register(app, answers)
    commands.register(app, answers)
    home.register(app, answers)
    alerts.register(app, kernel, settings)
    return SlackApp(app=app, client=client, handler=AsyncSlackRequestHandler(app),
                    chat=answers)


def socket_mode(built: SlackApp, app_token: str) -> Any:
    """The Socket Mode client for ``built`` (development: events over a WebSocket Slack
    opens, no public URL needed); not connected yet."""
    from slack_bolt.adapter.socket_mode.async_handler import AsyncSocketModeHandler

    return AsyncSocketModeHandler(built.app, app_token, logger=logging.getLogger(LOGGER),
                                  web_client=built.client)
