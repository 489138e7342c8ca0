"""The ``[slack]`` table: tokens, where the Slack Web API is, routes, allowlists, user mapping.

Every token may come from the environment alone: a field the table does not set takes its
variable (``SLACK_BOT_TOKEN``, ``SLACK_SIGNING_SECRET``, ``SLACK_APP_TOKEN``,
``TURNOUT_SLACK_API_URL``), so a gateway with no config file still serves Slack. Tokens are
``SecretStr``: the wiring registers them for masking in every log line, record and error.
"""

from __future__ import annotations

import os
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

SLACK_API_URL = "https://slack.com/api/"
"""Slack's Web API, where the bot talks unless ``api_url`` says otherwise."""

ENVIRONMENT = {
    "bot_token": "SLACK_BOT_TOKEN",
    "signing_secret": "SLACK_SIGNING_SECRET",
    "app_token": "SLACK_APP_TOKEN",
    "api_url": "TURNOUT_SLACK_API_URL",
}
"""The variable each field takes its value from when the table does not set it."""


class SlackUser(BaseModel):
    """Who one Slack user asks as: the gateway key, user and team their requests count against."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    key: str | None = Field(default=None, description="Name of the gateway key (as in "
                            "server.api_keys) their requests count against, for key budgets "
                            "and rate limits; a name, never the key itself. Default: none.")
    user: str | None = Field(default=None, description="The user their requests count "
                             "against. Default: their Slack user id.")
    team: str | None = Field(default=None, description="The team their requests count "
                             "against. Default: the Slack workspace (team) id.")


class SlackSettings(BaseModel):
    """The Slack bot: chat with the gateway in Slack (setup: docs/slack.md)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    bot_token: SecretStr | None = Field(
        default=None, description="The bot token (xoxb-...), from the app's OAuth & "
        "Permissions page. Default: $SLACK_BOT_TOKEN. Without it the bot is off.")
    signing_secret: SecretStr | None = Field(
        default=None, description="The app's signing secret (Basic Information), which every "
        "request to POST /slack/events must be signed with. Default: $SLACK_SIGNING_SECRET. "
        "Without it the gateway takes no HTTP events (Socket Mode only).")
    app_token: SecretStr | None = Field(
        default=None, description="An app-level token (xapp-..., scope connections:write) to "
        "receive events over Socket Mode instead of HTTP, for development behind a firewall. "
        "Default: $SLACK_APP_TOKEN.")
    api_url: str = Field(
        default=SLACK_API_URL, min_length=1, description="Base URL of the Slack Web API. "
        "Default: $TURNOUT_SLACK_API_URL, else Slack's.")
    route: str = Field(default="auto", min_length=1, description="The route (or model) every "
                       "question is asked on, unless channel_routes names one for its channel; "
                       "'auto' lets the routers choose.")
    channel_routes: dict[str, str] = Field(
        default_factory=dict, description="Channel id -> the route (or model) questions in "
        "that channel are asked on, e.g. {\"C0123456789\" = \"strong\"}.")
    allow_teams: list[str] = Field(default_factory=list, description="Workspace (team) ids "
                                   "the bot answers in; empty: every workspace it is "
                                   "installed in.")
    allow_channels: list[str] = Field(default_factory=list, description="Channel ids (direct "
                                      "messages included) the bot answers in; empty: all.")
    allow_users: list[str] = Field(default_factory=list, description="Slack user ids the bot "
                                   "answers; empty: everyone in an allowed workspace.")
    users: dict[str, SlackUser] = Field(default_factory=dict, description="Slack user id -> "
                                        "the gateway key, user and team they ask as.")
    history_turns: int = Field(default=20, ge=0, description="Questions and answers of a "
                               "thread sent along with each new question (older ones are "
                               "dropped); a thread's history is kept a week. 0: none.")
    stream: bool = Field(default=True, description="Stream answers as they are written "
                         "(Slack's chat streaming, else a message edited about once a "
                         "second). False: post each answer once, complete.")
    alerts_channel: str | None = Field(
        default=None, min_length=1, description="Where alerts go whose [[alerts]] rule names "
        "no channel (budget alerts without a budget rule, too): a channel id (C0123456789) or "
        "a name (#llm-ops), which Slack resolves when the alert is posted; the bot must be a "
        "member of the channel. Omitted: such alerts are not posted to Slack (logged once).")

    @model_validator(mode="before")
    @classmethod
    def _from_environment(cls, data: Any) -> Any:
        """Fill what the table leaves out from the environment; an empty token is no token."""
        if not isinstance(data, dict):
            return data
        data = dict(data)
        for field, variable in ENVIRONMENT.items():
            if data.get(field) in (None, ""):
                data.pop(field, None)
                value = os.environ.get(variable, "").strip()
                if value:
                    data[field] = value
        return data

    @property
    def enabled(self) -> bool:
        """Whether the bot runs: a bot or an app token is configured."""
        return self.bot_token is not None or self.app_token is not None

    def problem(self) -> str | None:
        """What keeps a configured bot from running, said with what to do; None when it can."""
        if not self.enabled:
            return None
        if self.bot_token is None:
            return ("[slack] app_token (SLACK_APP_TOKEN) is set but no bot token: set "
                    "SLACK_BOT_TOKEN (or [slack] bot_token) to the app's xoxb- token, or "
                    "plugins.disable = [\"slack\"] to turn the bot off")
        if self.signing_secret is None and self.app_token is None:
            return ("[slack] has a bot token but no way to receive events: set "
                    "SLACK_SIGNING_SECRET (or [slack] signing_secret) for the Events API on "
                    "POST /slack/events, or SLACK_APP_TOKEN (or [slack] app_token) for Socket "
                    "Mode; or plugins.disable = [\"slack\"] to turn the bot off")
        return None

    def route_for(self, channel: str) -> str:
        """The route questions asked in ``channel`` go to."""
        return self.channel_routes.get(channel, self.route)
