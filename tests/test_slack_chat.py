"""The Slack bot end to end: signed Events API requests to a real gateway, answers through the
pipeline, written by the real slack_sdk client into a local fake of Slack's Web API.

The bot works after it has acknowledged Slack, so every test waits for what the fake receives
(polling with a deadline). A test that expects no answer waits for the answer to a later
question instead: by then the first was long handled.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import anyio
import httpx
import pytest
import structlog

from turnout.bots.slack.plugin import SlackBot
from turnout.bots.slack.settings import SlackSettings

from .fakes.slack_server import BOT_USER, TEAM, TOKEN
from .gateway import running_gateway
from .redis_support import prefix_fixture, redis_url_fixture  # noqa: F401
from .slack_support import (  # noqa: F401 - the fixtures module_slack and slack
    ANSWER,
    CONFIG,
    SECRET,
    Upstream,
    ask,
    config,
    context_of,
    deliver,
    envelope,
    message,
    module_slack_fixture,
    slack_fixture,
)
from .support import settings_kernel

pytestmark = pytest.mark.timeout(60)

# --- the Events API --------------------------------------------------------------------------


def test_url_verification_is_answered_with_the_challenge(tmp_path: Path, slack) -> None:
    with running_gateway(config(slack), tmp_path) as gw:
        payload = {"token": "x", "challenge": "3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P",
                   "type": "url_verification"}
        response = deliver(gw, payload)
    assert response.status_code == 200
    assert response.json() == {"challenge": payload["challenge"]}


def test_a_direct_message_is_streamed_once_with_the_context_line(tmp_path: Path, slack) -> None:
    upstream = Upstream()
    with running_gateway(config(slack), tmp_path, plugins={"upstream": upstream}) as gw:
        event = message("What is the capital of France?")
        payload = ask(gw, event)
        (answer,) = slack.finished("D0DM", event["ts"])
        again = deliver(gw, payload, retry=1)  # Slack delivering the same event again
        assert again.status_code == 200
        later = message("And of Italy?")
        ask(gw, later)
        slack.finished("D0DM", later["ts"])
    assert len(slack.thread("D0DM", event["ts"])) == 1, "a retried delivery is not answered"
    assert len(upstream.asked) == 2
    assert upstream.asked[0] == ("small", [("user", "What is the capital of France?")])
    assert answer.streamed and answer.text == "".join(ANSWER)
    line = context_of(answer)
    assert line.startswith("*small* \u00b7 route chain \u00b7 fallback \u00b7 $0.0000")
    assert line.endswith(" ms") or line.endswith(" s")
    start = slack.of("chat.startStream")[0].params
    assert (start["channel"], start["thread_ts"]) == ("D0DM", event["ts"])
    assert start["recipient_user_id"] == "U0ANN" and start["recipient_team_id"] == TEAM
    assert slack.of("auth.test"), "bolt asked who the bot is"
    rows = gw.rows()
    assert [r["status"] for r in rows] == ["ok", "ok"]


def test_the_stream_starts_appends_and_stops(tmp_path: Path, slack) -> None:
    parts = [f"word{i} " for i in range(8)]
    upstream = Upstream(parts, delay=0.2)
    with running_gateway(config(slack), tmp_path, plugins={"upstream": upstream}) as gw:
        event = message("Count for me")
        ask(gw, event)
        (answer,) = slack.finished("D0DM", event["ts"])
    methods = [c.method for c in slack.of("chat.startStream", "chat.appendStream",
                                          "chat.stopStream")]
    assert methods[0] == "chat.startStream" and methods[-1] == "chat.stopStream"
    assert 1 <= methods.count("chat.appendStream") <= 5, methods
    assert answer.text == "".join(parts)
    stop = slack.of("chat.stopStream")[0].params
    assert [b["type"] for b in stop["blocks"]] == ["context", "context_actions", "actions"]
    appends = [c.at for c in slack.of("chat.startStream", "chat.appendStream")]
    assert all(b - a >= 0.45 for a, b in zip(appends, appends[1:])), "appends are batched"


def test_without_streaming_the_answer_is_posted_and_edited_at_most_once_a_second(
        tmp_path: Path, slack) -> None:
    slack.streaming = False  # chat.startStream answers method_not_supported
    parts = [f"part{i} " for i in range(10)]
    upstream = Upstream(parts, delay=0.25)
    with running_gateway(config(slack), tmp_path, plugins={"upstream": upstream}) as gw:
        event = message("Say it slowly", channel="C0GENERAL", kind="app_mention")
        event["text"] = f"<@{BOT_USER}> Say it slowly"
        ask(gw, event)
        (answer,) = slack.finished("C0GENERAL", event["ts"])
    assert [c.method for c in slack.of("chat.startStream")] == ["chat.startStream"]
    writes = slack.of("chat.postMessage", "chat.update")
    assert writes[0].method == "chat.postMessage" and len(writes) >= 3
    assert all(c.method == "chat.update" for c in writes[1:])
    gaps = [b.at - a.at for a, b in zip(writes, writes[1:-1])]
    assert all(gap >= 0.9 for gap in gaps), gaps  # the last edit (the footer) goes at once
    assert not answer.streamed and answer.edits >= 2
    assert [b["type"] for b in answer.blocks] == ["section", "context", "context_actions",
                                                  "actions"]
    assert answer.blocks[0]["text"] == {"type": "mrkdwn", "text": "".join(parts).strip()}
    assert upstream.asked[0][1] == [("user", "Say it slowly")]


def long_answer(chars: int) -> list[str]:
    """Paragraphs and a code block adding up to about ``chars`` characters, in chunks."""
    paragraph = "Lorem ipsum dolor sit amet, consectetur adipiscing elit. " * 10
    code = "```python\n" + "\n".join(f"value_{i} = {i}" for i in range(120)) + "\n```"
    parts, size = [], 0
    while size < chars:
        piece = (code if len(parts) % 7 == 3 else paragraph.strip()) + "\n\n"
        parts.append(piece)
        size += len(piece)
    return parts


def test_a_long_answer_continues_in_further_messages(tmp_path: Path, slack) -> None:
    parts = long_answer(30_000)
    with running_gateway(config(slack), tmp_path, plugins={"upstream": Upstream(parts)}) as gw:
        event = message("Tell me everything")
        ask(gw, event)
        slack.finished("D0DM", event["ts"])
    messages = slack.thread("D0DM", event["ts"])
    assert len(messages) == 3 and all(m.streamed and not m.streaming for m in messages)
    assert all(len(m.text) <= 12_000 for m in messages)
    assert all(m.text.count("```") % 2 == 0 for m in messages), "no message cut inside code"
    assert [bool(m.blocks) for m in messages] == [False, False, True]
    assert " ".join(m.text for m in messages).split() == "".join(parts).split()


def test_a_long_posted_answer_continues_in_further_messages(tmp_path: Path, slack) -> None:
    slack.streaming = False
    parts = long_answer(50_000)
    with running_gateway(config(slack), tmp_path, plugins={"upstream": Upstream(parts)}) as gw:
        event = message("Tell me everything")
        ask(gw, event)
        slack.finished("D0DM", event["ts"])
    messages = slack.thread("D0DM", event["ts"])
    assert len(messages) == 2 and not any(m.streamed for m in messages)
    assert all(len(m.text) <= 40_000 for m in messages)
    for m in messages:
        sections = [b["text"]["text"] for b in m.blocks if b["type"] == "section"]
        assert all(len(text) <= 3000 and text.count("```") % 2 == 0 for text in sections)
        assert len(m.blocks) <= 50
    assert [b["type"] for b in messages[0].blocks if b["type"] != "section"] == []
    assert [b["type"] for b in messages[1].blocks[-3:]] == ["context", "context_actions",
                                                            "actions"]


def test_a_mention_is_asked_without_the_bots_own_mention(tmp_path: Path, slack) -> None:
    upstream = Upstream()
    with running_gateway(config(slack), tmp_path, plugins={"upstream": upstream}) as gw:
        event = message(f"<@{BOT_USER}> what does <@U0CAROL> think?", channel="C0GENERAL",
                        kind="app_mention")
        ask(gw, event)
        slack.finished("C0GENERAL", event["ts"])
        bare = message(f"<@{BOT_USER}>", channel="C0GENERAL", kind="app_mention")
        ask(gw, bare)
        hint = slack.wait(lambda: slack.thread("C0GENERAL", bare["ts"]), what="a hint")
    assert upstream.asked == [("small", [("user", "what does <@U0CAROL> think?")])]
    assert "Ask me something" in hint[0].text


def test_a_threads_second_turn_carries_the_first(tmp_path: Path, slack) -> None:
    upstream = Upstream(["Paris."])
    with running_gateway(config(slack), tmp_path, plugins={"upstream": upstream}) as gw:
        first = message("Capital of France?")
        ask(gw, first)
        slack.finished("D0DM", first["ts"])
        second = message("And its population?", thread_ts=first["ts"])
        ask(gw, second)
        slack.finished("D0DM", first["ts"], count=2)
    assert upstream.asked[1][1] == [("user", "Capital of France?"), ("assistant", "Paris."),
                                    ("user", "And its population?")]
    # Both turns are one conversation (what experiments keyed on conversations go by).
    conversations = {h["x-turnout-conversation"] for h in upstream.headers}
    assert conversations == {f"slack:D0DM:{first['ts']}"}
    status = slack.of("assistant.threads.setStatus")
    assert status and status[0].params["thread_ts"] == first["ts"]
    assert status[0].params["status"] == "is thinking\u2026"


def test_an_assistant_thread_gets_prompts_a_title_and_a_status(tmp_path: Path, slack) -> None:
    upstream = Upstream()
    with running_gateway(config(slack), tmp_path, plugins={"upstream": upstream}) as gw:
        thread_ts = "1800000999.000100"
        started = {"type": "assistant_thread_started", "event_ts": thread_ts,
                   "assistant_thread": {"user_id": "U0ANN", "channel_id": "D0DM",
                                        "thread_ts": thread_ts,
                                        "context": {"channel_id": "C0GENERAL", "team_id": TEAM,
                                                    "enterprise_id": None}}}
        ask(gw, started)
        prompts = slack.wait(lambda: slack.of("assistant.threads.setSuggestedPrompts"),
                             what="suggested prompts")
        changed = {"type": "assistant_thread_context_changed", "event_ts": thread_ts,
                   "assistant_thread": {**started["assistant_thread"],
                                        "context": {"channel_id": "C0OTHER", "team_id": TEAM}}}
        ask(gw, changed)
        question = message("Plan my week", thread_ts=thread_ts)
        ask(gw, question)
        slack.finished("D0DM", thread_ts)
    assert prompts[0].params["thread_ts"] == thread_ts and len(prompts[0].params["prompts"]) == 3
    (title,) = slack.of("assistant.threads.setTitle")
    assert title.params["title"] == "Plan my week"
    assert slack.of("assistant.threads.setStatus")
    assert upstream.asked[0][1] == [("user", "Plan my week")]
    assert not slack.of("conversations.replies", "chat.update"), \
        "the thread's context is kept in the gateway's store, not in Slack"


def test_a_channel_route_and_the_non_streaming_mode(tmp_path: Path, slack) -> None:
    upstream = Upstream()
    settings = config(slack, channel_routes={"C0STRONG": "strong"}, stream=False)
    with running_gateway(settings, tmp_path, plugins={"upstream": upstream}) as gw:
        event = message(f"<@{BOT_USER}> hard question", channel="C0STRONG", kind="app_mention")
        ask(gw, event)
        (answer,) = slack.finished("C0STRONG", event["ts"])
    assert upstream.asked[0][0] == "big"
    assert "route strong" in context_of(answer)
    assert [c.method for c in slack.of("chat.postMessage", "chat.update",
                                       "chat.startStream")] == ["chat.postMessage"]
    assert answer.blocks[0]["text"]["text"] == "Paris is the capital of *France*."


def test_a_stream_cut_short_says_so_and_is_not_remembered(tmp_path: Path, slack) -> None:
    from turnout.kernel.errors import ProviderUnavailable

    upstream = Upstream(["Half an ", ProviderUnavailable("upstream went away", provider="p")])
    with running_gateway(config(slack), tmp_path, plugins={"upstream": upstream}) as gw:
        first = message("Tell me a story")
        ask(gw, first)
        (cut,) = slack.finished("D0DM", first["ts"])
        upstream.parts = ["Fine."]
        second = message("Again?", thread_ts=first["ts"])
        ask(gw, second)
        slack.finished("D0DM", first["ts"], count=2)
    assert cut.text.startswith("Half an \n\n_The answer was cut short: ")
    assert "upstream went away" in cut.text and "Traceback" not in cut.text
    assert context_of(cut).startswith("*small*")
    assert upstream.asked[-1][1] == [("user", "Again?")], "a broken answer is not history"


# --- security --------------------------------------------------------------------------------


def test_a_bad_or_stale_signature_is_refused_and_reaches_nothing(tmp_path: Path, slack) -> None:
    upstream = Upstream()
    with running_gateway(config(slack), tmp_path, plugins={"upstream": upstream}) as gw:
        payload = envelope(message("forged"))
        forged = deliver(gw, payload, secret="not-the-signing-secret")
        stale = deliver(gw, payload, timestamp=int(time.time()) - 600)
        unsigned = httpx.post(gw.url + "/slack/events", json=payload)
        assert forged.status_code == stale.status_code == unsigned.status_code == 401
        assert slack.of() == [], "refused before bolt asked Slack anything"
        genuine = message("genuine")
        ask(gw, genuine)
        slack.finished("D0DM", genuine["ts"])
    assert slack.thread("D0DM", payload["event"]["ts"]) == []
    assert upstream.asked == [("small", [("user", "genuine")])]


def test_an_event_from_outside_the_allowlists_is_acknowledged_and_not_answered(
        tmp_path: Path, slack) -> None:
    upstream = Upstream()
    settings = config(slack, allow_channels=["C0OPEN", "D0DM"], allow_users=["U0ANN"])
    with running_gateway(settings, tmp_path, plugins={"upstream": upstream}) as gw:
        closed = message(f"<@{BOT_USER}> hi", channel="C0CLOSED", kind="app_mention")
        stranger = message("hi", user="U0MALLORY")
        ask(gw, closed)
        ask(gw, stranger)
        other = envelope(message("hi"), team="T0ELSEWHERE")
        assert deliver(gw, other).status_code == 200
        allowed = message(f"<@{BOT_USER}> hi", channel="C0OPEN", kind="app_mention")
        ask(gw, allowed)
        slack.finished("C0OPEN", allowed["ts"])
    assert slack.thread("C0CLOSED", closed["ts"]) == []
    assert slack.thread("D0DM", stranger["ts"]) == []
    assert len(upstream.asked) == 2, "only the allowed mention and the other team's DM asked"


def test_allow_teams_keeps_other_workspaces_out(tmp_path: Path, slack) -> None:
    upstream = Upstream()
    with running_gateway(config(slack, allow_teams=[TEAM]), tmp_path,
                         plugins={"upstream": upstream}) as gw:
        other = message("hi")
        assert deliver(gw, envelope(other, team="T0ELSEWHERE")).status_code == 200
        ours = message("hi")
        ask(gw, ours)
        slack.finished("D0DM", ours["ts"])
    assert slack.thread("D0DM", other["ts"]) == [] and len(upstream.asked) == 1


def test_a_budget_refusal_is_a_readable_notice_in_the_thread(tmp_path: Path, slack) -> None:
    upstream = Upstream()
    settings = {**config(slack, users={"U0ANN": {"team": "research", "user": "ann"}}),
                "budgets": [{"scope": "team", "match": "research", "limit_usd": 0.0}]}
    with running_gateway(settings, tmp_path, plugins={"upstream": upstream}) as gw:
        refused = message("Expensive question")
        ask(gw, refused)
        (notice,) = slack.wait(lambda: slack.thread("D0DM", refused["ts"]), what="a notice")
        bob = message("Cheap question", user="U0BOB")
        ask(gw, bob)
        slack.finished("D0DM", bob["ts"])
        rows = gw.rows()
    assert notice.text.startswith(":warning: ") and "budget" in notice.text
    assert "research" in notice.text and "Traceback" not in notice.text
    assert not notice.streamed and notice.blocks == []
    assert upstream.asked == [("small", [("user", "Cheap question")])]
    assert sorted(r["status"] for r in rows) == ["error", "ok"]


def test_a_slack_api_failure_is_logged_and_the_bot_goes_on(tmp_path: Path, slack) -> None:
    upstream = Upstream()
    slack.rate_limit("chat.postMessage", times=2, retry_after=0)
    with structlog.testing.capture_logs() as logs, \
            running_gateway(config(slack, stream=False), tmp_path,
                            plugins={"upstream": upstream}) as gw:
        lost = message("first")
        ask(gw, lost)
        slack.wait(lambda: any(e["event"] == "slack_api_failed" for e in logs),
                   what="the failure logged")
        kept = message("second")
        ask(gw, kept)
        slack.finished("D0DM", kept["ts"])
    failed = [e for e in logs if e["event"] == "slack_api_failed"]
    assert failed[0]["method"] == "chat.postMessage" and failed[0]["error"] == "ratelimited"
    assert slack.thread("D0DM", lost["ts"]) == []
    text = repr(logs) + repr([c.params for c in slack.of()]) + repr(slack.messages)
    assert TOKEN not in text and SECRET not in text


def test_a_rate_limited_call_is_retried_after_retry_after(tmp_path: Path, slack) -> None:
    slack.rate_limit("chat.startStream", times=1, retry_after=1)
    with running_gateway(config(slack), tmp_path, plugins={"upstream": Upstream()}) as gw:
        event = message("hello")
        ask(gw, event)
        (answer,) = slack.finished("D0DM", event["ts"])
    starts = slack.of("chat.startStream")
    assert len(starts) == 2 and starts[1].at - starts[0].at >= 1.0
    assert answer.text == "".join(ANSWER)


def test_slack_is_acknowledged_before_the_answer_is_written(tmp_path: Path, slack) -> None:
    upstream = Upstream(first=1.5)
    with running_gateway(config(slack), tmp_path, plugins={"upstream": upstream}) as gw:
        event = message("slow one")
        started = time.monotonic()
        ask(gw, event)
        acked = time.monotonic() - started
        written_then = slack.of("chat.startStream", "chat.postMessage")
        slack.finished("D0DM", event["ts"])
    assert acked < 1.0 and written_then == []


# --- configuration ---------------------------------------------------------------------------


def test_the_environment_alone_configures_the_bot(tmp_path: Path, slack, monkeypatch) -> None:
    monkeypatch.setenv("SLACK_BOT_TOKEN", TOKEN)
    monkeypatch.setenv("SLACK_SIGNING_SECRET", SECRET)
    monkeypatch.setenv("TURNOUT_SLACK_API_URL", slack.api_url)
    with running_gateway(CONFIG, tmp_path, plugins={"upstream": Upstream()}) as gw:
        event = message("from the environment")
        ask(gw, event)
        slack.finished("D0DM", event["ts"])


def test_without_slack_configured_the_route_says_how_to_configure_it(tmp_path: Path,
                                                                      monkeypatch) -> None:
    for name in ("SLACK_BOT_TOKEN", "SLACK_SIGNING_SECRET", "SLACK_APP_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    with running_gateway(CONFIG, tmp_path) as gw:
        response = httpx.post(gw.url + "/slack/events", json={"type": "url_verification"})
    assert response.status_code == 404
    error = response.json()["error"]
    assert error["code"] == "not_found" and "SLACK_BOT_TOKEN" in error["message"]
    assert "SLACK_SIGNING_SECRET" in error["message"]


def test_a_bot_token_without_a_way_to_receive_events_stops_startup(monkeypatch) -> None:
    from turnout.kernel.errors import ConfigError

    for name in ("SLACK_SIGNING_SECRET", "SLACK_APP_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SLACK_BOT_TOKEN", TOKEN)
    with pytest.raises(ConfigError, match="SLACK_SIGNING_SECRET"):
        asyncio.run(SlackBot().startup(settings_kernel(SlackSettings())))


@pytest.mark.anyio
async def test_an_app_token_starts_socket_mode(monkeypatch) -> None:
    from slack_bolt.adapter.socket_mode.async_handler import AsyncSocketModeHandler

    connected, closed = [], []

    async def connect(self):
        connected.append(self.app_token)

    async def close(self):
        closed.append(True)

    monkeypatch.setattr(AsyncSocketModeHandler, "connect_async", connect)
    monkeypatch.setattr(AsyncSocketModeHandler, "close_async", close)
    monkeypatch.delenv("SLACK_SIGNING_SECRET", raising=False)
    monkeypatch.setenv("SLACK_BOT_TOKEN", TOKEN)
    monkeypatch.setenv("SLACK_APP_TOKEN", "xapp-1-A0TURNOUT-socket-mode-token")
    plugin = SlackBot()
    await plugin.startup(settings_kernel(SlackSettings()))
    assert isinstance(plugin.socket, AsyncSocketModeHandler)
    for _ in range(100):
        if connected:
            break
        await anyio.sleep(0.01)
    assert connected == ["xapp-1-A0TURNOUT-socket-mode-token"]
    response = await plugin.events(_request())
    assert response.status_code == 404 and b"Socket Mode" in response.body
    await plugin.shutdown()
    assert closed == [True] and plugin.socket is None


def _request():
    from starlette.requests import Request

    async def receive():
        return {"type": "http.request", "body": b"{}", "more_body": False}

    return Request({"type": "http", "method": "POST", "path": "/slack/events", "headers": [],
                    "query_string": b""}, receive)


def test_settings_come_from_the_environment_when_the_table_leaves_them_out(monkeypatch) -> None:
    monkeypatch.setenv("SLACK_BOT_TOKEN", "xoxb-from-env")
    monkeypatch.setenv("TURNOUT_SLACK_API_URL", "http://127.0.0.1:9/api/")
    monkeypatch.delenv("SLACK_APP_TOKEN", raising=False)
    from_env = SlackSettings()
    assert from_env.bot_token.get_secret_value() == "xoxb-from-env"
    assert from_env.api_url == "http://127.0.0.1:9/api/" and from_env.app_token is None
    table = SlackSettings.model_validate({"bot_token": "xoxb-from-table", "app_token": ""})
    assert table.bot_token.get_secret_value() == "xoxb-from-table" and table.app_token is None
    assert "xoxb" not in repr(table)
    monkeypatch.delenv("TURNOUT_SLACK_API_URL")
    assert SlackSettings().api_url == "https://slack.com/api/"


def test_the_manifest_asks_for_what_the_bot_uses() -> None:
    import yaml

    manifest = yaml.safe_load((Path(__file__).resolve().parent.parent / "bots" / "slack"
                               / "manifest.yml").read_text())
    settings = manifest["settings"]
    assert sorted(settings["event_subscriptions"]["bot_events"]) == [
        "app_home_opened", "app_mention", "assistant_thread_context_changed",
        "assistant_thread_started", "message.im"]
    assert set(manifest["oauth_config"]["scopes"]["bot"]) == {
        "app_mentions:read", "assistant:write", "chat:write", "commands", "files:write",
        "im:history", "im:read", "im:write"}
    urls = [settings["event_subscriptions"]["request_url"],
            settings["interactivity"]["request_url"],
            manifest["features"]["slash_commands"][0]["url"]]
    assert all(url == "https://GATEWAY/slack/events" for url in urls)
    assert settings["interactivity"]["is_enabled"] is True
    assert manifest["features"]["slash_commands"][0]["command"] == "/turnout"
    assert "assistant_view" in manifest["features"]
    assert manifest["features"]["app_home"]["messages_tab_enabled"] is True
    assert manifest["features"]["app_home"]["home_tab_enabled"] is True


# --- replicas --------------------------------------------------------------------------------


def test_a_retry_on_another_replica_is_not_answered_again(tmp_path: Path, slack, redis_url,
                                                          prefix) -> None:
    upstream = Upstream(first=0.3)
    settings = {**config(slack), "state": {"backend": "redis", "url": redis_url,
                                           "key_prefix": prefix}}
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    with running_gateway(settings, tmp_path / "a", plugins={"upstream": upstream}) as a, \
            running_gateway(settings, tmp_path / "b", plugins={"upstream": upstream}) as b:
        first = message("Capital of France?")
        payload = envelope(first)
        assert deliver(a, payload).status_code == 200
        assert deliver(b, payload, retry=1).status_code == 200
        slack.finished("D0DM", first["ts"])
        second = message("And its population?", thread_ts=first["ts"])
        assert deliver(b, envelope(second)).status_code == 200
        slack.finished("D0DM", first["ts"], count=2)
    assert len(slack.thread("D0DM", first["ts"])) == 2
    assert len(upstream.asked) == 2
    assert upstream.asked[1][1][:2] == [("user", "Capital of France?"),
                                        ("assistant", "".join(ANSWER))], \
        "the other replica read the thread's history from the shared store"
