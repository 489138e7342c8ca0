"""Alerts in Slack: the blocks an alert is shown as, the poster's retry policy, and, end to end
through a real gateway into the fake Slack Web API, alerts opened, updated in place, resolved,
acknowledged and muted from their buttons, one post per transition across two replicas, a 429
waited out, and a budget alert delivered too.

The alert rules run on a fake clock (the built-in engine is replaced by one on that clock, with
no timer); the tests move the clock and call ``tick()`` on the gateway's own event loop, then
wait for the kernel's deferred work, where deliveries run.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest
import structlog
from slack_sdk.errors import SlackApiError

from turnout.bots.slack.alerts import (
    ACK_ACTION,
    ACTIONS_BLOCK_ID,
    AlertPoster,
    alert_blocks,
    alert_message,
    figures,
    slack_date,
    span,
    title,
)
from turnout.bots.slack.reply import Undeliverable
from turnout.bots.slack.settings import SlackSettings
from turnout.kernel.hookspecs import hookimpl
from turnout.kernel.types import Alert
from turnout.plugins.alert_rules import AlertRules

from .fakes.slack_server import TEAM, TOKEN, FakeSlack
from .gateway import Gateway, running_gateway
from .redis_support import prefix_fixture, redis_url_fixture  # noqa: F401 - redis_url, prefix
from .slack_support import (  # noqa: F401 - the fixtures module_slack and slack
    SECRET,
    Upstream,
    command,
    config,
    module_slack_fixture,
    sign,
    slack_fixture,
)
from .store_contract import FakeClock
from .test_alert_rules import FAST_MS, LATENCY, SLOW_MS, T0, finished, minutes

pytestmark = pytest.mark.timeout(60)

DOC = Path(__file__).resolve().parent.parent / "docs" / "slack.md"

RULE = {**LATENCY, "for_minutes": 1, "repeat_minutes": 2, "action": "shift_traffic"}
"""p95 latency of ``small`` over 1000 ms for a minute, repeated every 2 minutes, to #llm-ops."""

KEY = 'latency_p95{above_ms="1000",model="small"}'

MUTE_1H = "turnout_alert_mute_1h"


# --- helpers -------------------------------------------------------------------------------------


class OnLoop:
    """Runs coroutines on the gateway's own event loop (its server thread), from the test."""

    def __init__(self) -> None:
        self.loop: asyncio.AbstractEventLoop | None = None

    @hookimpl
    def startup(self, kernel) -> None:
        self.loop = asyncio.get_running_loop()

    def run(self, coro, timeout: float = 30.0) -> Any:
        assert self.loop is not None, "the gateway has not started"
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def start(self, coro) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)


class Replica:
    """One running gateway with the alert rules on ``clock``: its engine, its loop."""

    def __init__(self, gateway: Gateway, engine: AlertRules, on: OnLoop) -> None:
        self.gw, self.engine, self.on = gateway, engine, on

    @property
    def kernel(self):
        return self.gw.kernel

    def minutes(self, clock: FakeClock, n: int, **kw: Any) -> None:
        """``n`` minutes of requests (as test_alert_rules' ``minutes``), a tick each, then wait
        for the deliveries."""
        self.on.run(self._minutes(clock, n, **kw))

    async def _minutes(self, clock: FakeClock, n: int, **kw: Any) -> None:
        await minutes(self.engine, clock, n, **kw)
        await self.kernel.idle()

    def fire(self, alert: Alert) -> None:
        """Raise ``alert`` through the kernel (every sink) and wait for its delivery."""
        self.on.run(self.raised(alert))

    async def raised(self, alert: Alert) -> None:
        """Raise ``alert`` and wait for its delivery, on the gateway's loop."""
        await self.kernel.alert(alert)
        await self.kernel.idle()

    def state(self, key: str = KEY) -> dict | None:
        return self.on.run(self.engine.state(key))


def alert_config(fake: FakeSlack, rules: list[dict], **slack: Any) -> dict:
    """The Slack chat tests' config with ``[[alerts]]`` rules, run by the test's own engine."""
    return {**config(fake, **slack), "alerts": rules, "plugins": {"disable": ["alerts"]}}


class running_replica:  # noqa: N801 - used like running_gateway
    """A gateway for ``settings`` whose alert rules read ``clock``."""

    def __init__(self, settings: dict, tmp_path: Path, clock: FakeClock, **plugins: Any) -> None:
        self.engine = AlertRules(clock=clock, tick_s=None)
        self.on = OnLoop()
        self.running = running_gateway(settings, tmp_path, plugins={
            "alerts": self.engine, "on_loop": self.on, **plugins})

    def __enter__(self) -> Replica:
        return Replica(self.running.__enter__(), self.engine, self.on)

    def __exit__(self, *exc: Any) -> None:
        self.running.__exit__(*exc)


def press(gateway: Gateway, action_id: str, value: str, *, user: str = "U0ANN",
          channel: str = "#llm-ops", ts: str = "1.0") -> httpx.Response:
    """A signed ``block_actions`` interactivity payload (``payload=<json>``, form encoded), as
    Slack sends when someone presses a button."""
    payload = {
        "type": "block_actions", "api_app_id": "A0TURNOUT", "token": "unused-verification-token",
        "team": {"id": TEAM, "domain": "turnout-test"},
        "user": {"id": user, "username": "ann", "name": "ann", "team_id": TEAM},
        "container": {"type": "message", "message_ts": ts, "channel_id": channel,
                      "is_ephemeral": False},
        "channel": {"id": channel, "name": channel.lstrip("#")},
        "message": {"type": "message", "ts": ts, "text": "an alert"},
        "trigger_id": "1111.2222.abcd", "response_url": "https://hooks.slack.invalid/actions/1",
        "actions": [{"type": "button", "action_id": action_id, "block_id": ACTIONS_BLOCK_ID,
                     "value": value, "action_ts": f"{time.time():.6f}",
                     "text": {"type": "plain_text", "text": action_id}}],
    }
    body = urlencode({"payload": json.dumps(payload)}).encode()
    headers = {**sign(body), "content-type": "application/x-www-form-urlencoded"}
    return httpx.post(gateway.url + "/slack/events", content=body, headers=headers, timeout=10)


def posts(slack: FakeSlack, *, top: bool = True) -> list:
    """The chat.postMessage calls that started a message (``top``) or replied in a thread."""
    return [c for c in slack.of("chat.postMessage") if bool(c.params.get("thread_ts")) != top]


def header(blocks: list[dict]) -> str:
    return blocks[0]["text"]["text"]


def buttons(blocks: list[dict]) -> list[str]:
    found = [b for b in blocks if b["type"] == "actions"]
    return [e["action_id"] for e in found[0]["elements"]] if found else []


def context_texts(blocks: list[dict]) -> str:
    return " | ".join(e["text"] for b in blocks if b["type"] == "context" for e in b["elements"])


# --- the blocks (pure) -----------------------------------------------------------------------------


def latency_alert(**kw: Any) -> Alert:
    fields = dict(
        name="latency_p95", severity="warning",
        summary="p95 latency of model 'strong' is 9121 ms, over 8000 ms for 5 min",
        labels={"model": "strong", "above_ms": "8000"}, channel="#llm-ops",
        action="shift_traffic", started_at=1_750_000_000.0,
        details={"p95_ms": 9120.5, "above_ms": 8000, "requests": 240, "window_s": 60.0})
    fields.update(kw)
    return Alert(**fields)


def test_an_open_alert_shows_severity_summary_figures_action_start_and_buttons() -> None:
    alert = latency_alert()
    blocks = alert_blocks(alert)
    assert [b["type"] for b in blocks] == ["header", "section", "section", "context", "context",
                                           "actions"]
    assert header(blocks) == ":warning: Warning: p95 latency of strong"
    assert blocks[1]["text"]["text"].startswith("p95 latency of model 'strong' is 9121 ms")
    assert [f["text"] for f in blocks[2]["fields"]] == [
        "*p95 latency*\n9,120 ms", "*Bound*\n8,000 ms", "*Requests*\n240", "*Window*\n1 min"]
    assert "Shifting traffic away from strong" in blocks[3]["elements"][0]["text"]
    assert "Started <!date^1750000000^{date_short_pretty} at {time}|2025-06-15 15:06 UTC>" \
        in blocks[4]["elements"][0]["text"]
    actions = blocks[5]
    assert actions["block_id"] == ACTIONS_BLOCK_ID
    assert [(e["text"]["text"], e["value"]) for e in actions["elements"]] == [
        ("Acknowledge", alert.key), ("Mute 1h", alert.key), ("Mute 1d", alert.key)]
    assert actions["elements"][0]["style"] == "primary"


def test_resolved_acknowledged_and_muted_alerts_look_so() -> None:
    resolved = alert_blocks(latency_alert(resolved=True), resolved_at=1_750_000_000.0 + 720)
    assert header(resolved) == ":white_check_mark: Resolved after 12 min: p95 latency of strong"
    assert buttons(resolved) == [] and "Shifting traffic" not in context_texts(resolved)
    assert "Resolved <!date^1750000720^" in context_texts(resolved)

    acked = alert_blocks(latency_alert(), acked_by="U0ANN")
    assert "Acknowledged by <@U0ANN>" in context_texts(acked)
    assert buttons(acked) == [MUTE_1H, "turnout_alert_mute_1d"]

    muted = alert_blocks(latency_alert(), muted_until=T0 + 3600, now=T0)
    assert f"Muted until {slack_date(T0 + 3600)}" in context_texts(muted)
    assert "Muted" not in context_texts(alert_blocks(latency_alert(), muted_until=T0, now=T0))
    assert "<@" not in context_texts(alert_blocks(latency_alert(), acked_by="<!channel>"))


def test_other_kinds_get_their_own_titles_and_figures() -> None:
    down = Alert("provider_down", "critical", "provider 'p' is down", {"provider": "p"},
                 details={"failures": 5, "after_failures": 5,
                          "last_error": "upstream_unavailable"}, action="shift_traffic")
    assert header(alert_blocks(down)) == ":rotating_light: Critical: Provider p is down"
    assert figures(down) == [("Failures in a row", "5"), ("Opens after", "5"),
                             ("Last error", "`upstream_unavailable`")]
    budget = Alert("budget_threshold", "warning", "80% of the day budget of team 'a' is spent",
                   {"scope": "team", "match": "a", "window": "day", "threshold": "0.8"})
    assert title(budget) == "80% of the day budget of team a"
    assert figures(budget) == [("Threshold", "80%"), ("Budget window", "day")]
    rate = Alert("error_rate", "warning", "errors", {"route": "*", "above": "0.2"},
                 details={"rate": 0.3125, "above": 0.2, "errors": 25, "requests": 80})
    assert title(rate) == "Error rate of all requests"
    assert figures(rate)[:2] == [("Rate", "31.2%"), ("Bound", "20%")]
    digest = Alert("digest", "info", "Last 24 h", {"day": "2025-06-16"},
                   details={"requests": 10, "errors": 1, "spend_usd": 0.5, "p95_ms": None})
    assert buttons(alert_blocks(digest)) == [], "nothing to acknowledge in a digest"
    assert ("Spend", "$0.50") in figures(digest)


def test_spans_read_like_people_write_them() -> None:
    assert [span(s) for s in (45, 720, 3 * 3600 + 300, 2 * 86400 + 4 * 3600)] == [
        "45 s", "12 min", "3 h 5 min", "2 d 4 h"]


def test_the_alert_layout_in_the_docs_is_what_alerts_builds() -> None:
    text = DOC.read_text()
    shown = text.split("<!-- alert-layout:start -->", 1)[1].split("<!-- alert-layout:end -->",
                                                                  1)[0]
    given, documented = [json.loads(found) for found in
                         re.findall(r"```json\n(.*?)```", shown, re.S)]
    alert = Alert(**{k: v for k, v in given.items()})
    assert documented == alert_message(alert)


# --- the retry policy (a stub client) -------------------------------------------------------------


class Response(dict):
    """What slack_sdk's response looks like to the poster: Slack's JSON, status, headers."""

    def __init__(self, status: int, body: dict, headers: dict | None = None) -> None:
        super().__init__(body)
        self.status_code, self.headers = status, headers or {}


class Stub:
    """Answers ``chat.postMessage`` from a script: a Response to raise as Slack's error, an
    exception to raise, or a dict to return."""

    def __init__(self, *script: Any) -> None:
        self.script, self.calls = list(script), 0

    async def chat_postMessage(self, **params: Any) -> dict:
        self.calls += 1
        step = self.script.pop(0)
        if isinstance(step, Response):
            raise SlackApiError("failed", step)
        if isinstance(step, BaseException):
            raise step
        return step


def poster(stub: Stub) -> tuple[AlertPoster, list[float]]:
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)

    return AlertPoster(None, SlackSettings(bot_token=TOKEN), stub, sleep=sleep), waits


@pytest.mark.anyio
async def test_a_429_waits_its_retry_after_capped_and_5xx_and_drops_back_off() -> None:
    import aiohttp

    ok = {"ok": True, "channel": "C1", "ts": "1.1"}
    stub = Stub(Response(429, {"ok": False, "error": "ratelimited"}, {"Retry-After": "7"}),
                Response(429, {"ok": False, "error": "ratelimited"}, {"retry-after": "3600"}),
                Response(503, {"ok": False, "error": "service_unavailable"}), ok)
    post, waits = poster(stub)
    assert await post.call("chat.postMessage", channel="C1", text="x") == ok
    assert waits == [7.0, 30.0, 2.0], "Retry-After, then capped at 30 s, then the backoff"

    stub = Stub(aiohttp.ClientConnectionError("refused"), TimeoutError(), ok)
    post, waits = poster(stub)
    assert await post.call("chat.postMessage", channel="C1", text="x") == ok
    assert waits == [0.5, 1.0]


@pytest.mark.anyio
async def test_the_poster_gives_up_after_its_retries_or_at_once_on_a_refusal() -> None:
    busy = Response(500, {"ok": False, "error": "internal_error"})
    post, waits = poster(Stub(busy, busy, busy, busy))
    with pytest.raises(Undeliverable, match="internal_error after 4 attempts"):
        await post.call("chat.postMessage", channel="C1", text="x")
    assert waits == [0.5, 1.0, 2.0]

    stub = Stub(Response(200, {"ok": False, "error": "channel_not_found"}))
    post, waits = poster(stub)
    with pytest.raises(Undeliverable) as refused:
        await post.call("chat.postMessage", channel="C1", text="x")
    assert refused.value.error == "channel_not_found" and waits == [] and stub.calls == 1


# --- end to end: the engine, the gateway, the fake Slack -------------------------------------------


def test_an_alert_is_posted_once_updated_in_place_and_resolved(tmp_path: Path, slack) -> None:
    clock = FakeClock(T0)
    with running_replica(alert_config(slack, [RULE]), tmp_path, clock) as replica:
        replica.minutes(clock, 2, latency_ms=SLOW_MS)  # over the bound for a minute: it opens
        (opened,) = posts(slack)
        assert opened.params["channel"] == "#llm-ops"
        (ts,) = [m.ts for m in slack.messages.values()]
        assert header(opened.params["blocks"]) == ":warning: Warning: p95 latency of small"
        assert buttons(opened.params["blocks"])[0] == ACK_ACTION
        assert slack.of("chat.update") == []

        replica.minutes(clock, 2, latency_ms=SLOW_MS)  # repeat_minutes later: a repeat
        (repeat,) = slack.of("chat.update")
        assert (repeat.params["channel"], repeat.params["ts"]) == ("#llm-ops", ts)
        assert len(posts(slack)) == 1, "a repeat edits the message, it does not post again"

        replica.minutes(clock, 1, latency_ms=FAST_MS)  # back under the bound: resolved
        updates = slack.of("chat.update")
        (reply,) = posts(slack, top=False)
        state = replica.state()
    assert len(updates) == 2 and updates[-1].params["ts"] == ts
    closed = updates[-1].params["blocks"]
    assert header(closed) == ":white_check_mark: Resolved after 3 min: p95 latency of small"
    assert buttons(closed) == []
    assert reply.params["thread_ts"] == ts and reply.params["channel"] == "#llm-ops"
    assert reply.params["text"].startswith(":white_check_mark: Resolved after 3 min: ")
    assert len(posts(slack)) == 1
    message = slack.messages[("#llm-ops", ts)]
    assert message.blocks == closed and message.edits == 2
    assert state["open"] is False
    text = repr([c.params for c in slack.of()])
    assert TOKEN not in text and SECRET not in text


def test_the_acknowledge_button_records_who_and_updates_the_message(tmp_path: Path,
                                                                    slack) -> None:
    clock = FakeClock(T0)
    with running_replica(alert_config(slack, [RULE]), tmp_path, clock) as replica:
        replica.minutes(clock, 2, latency_ms=SLOW_MS)
        (opened,) = posts(slack)
        (ts,) = [m.ts for m in slack.messages.values()]
        started = time.monotonic()
        response = press(replica.gw, ACK_ACTION, KEY, ts=ts)
        assert response.status_code == 200 and time.monotonic() - started < 3.0
        (update,) = slack.wait(lambda: slack.of("chat.update"), what="the acknowledged message")
        assert replica.state()["acked_by"] == "U0ANN"
        replica.minutes(clock, 6, latency_ms=SLOW_MS)  # repeats stop once acknowledged
        after_repeats = len(slack.of("chat.update"))
        replica.minutes(clock, 1, latency_ms=FAST_MS)  # the resolve still comes
    assert update.params["ts"] == ts
    assert "Acknowledged by <@U0ANN>" in context_texts(update.params["blocks"])
    assert ACK_ACTION not in buttons(update.params["blocks"])
    assert after_repeats == 1, "no repeat of an acknowledged alert"
    closed = slack.of("chat.update")[-1].params["blocks"]
    assert header(closed).startswith(":white_check_mark: Resolved")
    assert "Acknowledged by <@U0ANN>" in context_texts(closed)
    assert len(posts(slack)) == 1 and len(posts(slack, top=False)) == 1


def test_acknowledging_from_the_command_updates_the_posted_message(tmp_path: Path,
                                                                   slack) -> None:
    clock = FakeClock(T0)
    with running_replica(alert_config(slack, [RULE]), tmp_path, clock) as replica:
        replica.minutes(clock, 2, latency_ms=SLOW_MS)
        (ts,) = [m.ts for m in slack.messages.values()]
        command(replica.gw, slack, "alerts ack 1", user="U0BOB")
        (update,) = slack.wait(lambda: slack.of("chat.update"), what="the acknowledged message")
        assert replica.state()["acked_by"] == "U0BOB"
    assert update.params["ts"] == ts
    assert "Acknowledged by <@U0BOB>" in context_texts(update.params["blocks"])


def test_the_mute_button_mutes_the_key_and_a_delivery_meanwhile_posts_nothing(
        tmp_path: Path, slack) -> None:
    clock = FakeClock(T0)
    with running_replica(alert_config(slack, [RULE]), tmp_path, clock) as replica:
        replica.minutes(clock, 2, latency_ms=SLOW_MS)
        (ts,) = [m.ts for m in slack.messages.values()]
        muted_at = clock.now
        assert press(replica.gw, MUTE_1H, KEY, ts=ts).status_code == 200
        (update,) = slack.wait(lambda: slack.of("chat.update"), what="the muted message")
        state = replica.state()
        replica.minutes(clock, 4, latency_ms=SLOW_MS)  # repeats due, but muted
        assert len(slack.of("chat.update")) == 1
        # Raised directly (as the budgets plugin does), a new episode of the key: muted too.
        replica.fire(Alert("latency_p95", "warning", "again", dict(
            model="small", above_ms="1000"), channel="#llm-ops", started_at=clock.now))
        assert len(posts(slack)) == 1 and len(slack.of("chat.update")) == 1
        replica.minutes(clock, 1, latency_ms=FAST_MS)  # a resolve still closes its message
    assert state["muted_until"] == pytest.approx(muted_at + 3600)
    assert f"Muted until {slack_date(state['muted_until'])}" in context_texts(
        update.params["blocks"])
    assert buttons(update.params["blocks"]) == [ACK_ACTION, MUTE_1H, "turnout_alert_mute_1d"]
    closed = slack.of("chat.update")[-1].params["blocks"]
    assert header(closed).startswith(":white_check_mark: Resolved")
    assert len(posts(slack)) == 1


def test_a_button_of_an_unknown_or_resolved_alert_changes_nothing(tmp_path: Path,
                                                                  slack) -> None:
    clock = FakeClock(T0)
    unknown = 'latency_p95{model="nope"}'
    with structlog.testing.capture_logs() as logs, \
            running_replica(alert_config(slack, [RULE]), tmp_path, clock) as replica:
        replica.minutes(clock, 2, latency_ms=SLOW_MS)
        replica.minutes(clock, 1, latency_ms=FAST_MS)  # resolved
        writes = len(slack.of("chat.update", "chat.postMessage"))
        for action, key in ((ACK_ACTION, unknown), (MUTE_1H, unknown), (ACK_ACTION, KEY)):
            assert press(replica.gw, action, key).status_code == 200
        slack.wait(lambda: [e["event"] for e in logs].count("slack_alert_button_ignored") == 3,
                   what="the presses ignored")
        assert replica.state(unknown) is None, "no engine state made up for an unknown key"
        assert replica.state()["acked_by"] is None
    assert len(slack.of("chat.update", "chat.postMessage")) == writes


def test_a_rate_limited_post_waits_for_retry_after_and_is_retried(tmp_path: Path,
                                                                  slack) -> None:
    clock = FakeClock(T0)
    slack.rate_limit("chat.postMessage", times=1, retry_after=1)
    with running_replica(alert_config(slack, [RULE]), tmp_path, clock) as replica:
        replica.minutes(clock, 2, latency_ms=SLOW_MS)
    first, second = slack.of("chat.postMessage")
    assert second.at - first.at >= 1.0
    assert len(slack.messages) == 1


def test_deliveries_of_one_key_go_out_in_order(tmp_path: Path, slack) -> None:
    clock = FakeClock(T0)
    with running_replica(alert_config(slack, [], alerts_channel="C0ALERTS"), tmp_path,
                         clock) as replica:
        opened = Alert("provider_down", "critical", "provider 'p' is down", {"provider": "p"},
                       started_at=T0)
        resolved = Alert("provider_down", "critical", "provider 'p' answers again",
                         {"provider": "p"}, resolved=True, started_at=T0)

        async def both() -> None:  # raised back to back: the resolve waits for the post
            await replica.kernel.alert(opened)
            await replica.kernel.alert(resolved)
            await replica.kernel.idle()

        replica.on.run(both())
    assert [c.method for c in slack.of("chat.postMessage", "chat.update")] == [
        "chat.postMessage", "chat.update", "chat.postMessage"]
    assert posts(slack)[0].params["channel"] == "C0ALERTS", "no rule channel: alerts_channel"
    assert len(posts(slack, top=False)) == 1


def test_without_a_channel_nothing_goes_to_slack_and_it_is_said_once(tmp_path: Path,
                                                                     slack) -> None:
    clock = FakeClock(T0)
    with structlog.testing.capture_logs() as logs, \
            running_replica(alert_config(slack, []), tmp_path, clock) as replica:
        for provider in ("p", "q"):
            replica.fire(Alert("provider_down", "critical", "down", {"provider": provider}))
    assert slack.of("chat.postMessage") == []
    assert [e["event"] for e in logs].count("slack_alert_no_channel") == 1


def test_a_budget_threshold_alert_reaches_slack(tmp_path: Path, slack) -> None:
    settings = {**config(slack, alerts_channel="C0SPEND"),
                "budgets": [{"scope": "global", "limit_usd": 0.001, "window": "day",
                             "thresholds": [0.01]}]}
    with running_gateway(settings, tmp_path, plugins={"upstream": Upstream()}) as gw:
        gw.client().chat.completions.create(model="chain", max_tokens=10,
                                            messages=[{"role": "user", "content": "hi"}])
        (post,) = slack.wait(lambda: posts(slack), what="the budget alert")
    assert post.params["channel"] == "C0SPEND"
    assert header(post.params["blocks"]) == ":warning: Warning: 1% of the day budget of global"
    assert "1% of the day budget" in post.params["text"]
    assert buttons(post.params["blocks"])[0] == ACK_ACTION


# --- two replicas over one Redis --------------------------------------------------------------------


def test_two_replicas_post_once_per_transition(tmp_path: Path, slack, redis_url,
                                               prefix) -> None:
    clock = FakeClock(T0)
    settings = {**alert_config(slack, [RULE]),
                "state": {"backend": "redis", "url": redis_url, "key_prefix": prefix}}
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    with running_replica(settings, tmp_path / "a", clock) as a, \
            running_replica(settings, tmp_path / "b", clock) as b:

        def both(n: int, latency_ms: float) -> None:
            """Both replicas see the same minutes and judge at once."""
            for _ in range(n):
                for _ in range(20):
                    clock.advance(3)
                    a.on.run(_record(a.engine, latency_ms))
                    b.on.run(_record(b.engine, latency_ms))
                ticks = [r.on.start(_tick(r)) for r in (a, b)]
                for tick in ticks:
                    tick.result(30)

        both(2, SLOW_MS)
        assert len(posts(slack)) == 1
        both(1, FAST_MS)
        assert len(posts(slack)) == 1 and len(posts(slack, top=False)) == 1

        # The same alert raised on both at once (as two budgets plugins could): one post.
        same = Alert("provider_down", "critical", "provider 'q' is down", {"provider": "q"},
                     channel="#llm-ops", started_at=clock.now)
        fired = [r.on.start(r.raised(same)) for r in (a, b)]
        for done in fired:
            done.result(30)
        (ts,) = [m.ts for m in slack.messages.values() if "provider" in m.text]
        # A button pressed on b updates the message a posted.
        assert press(b.gw, ACK_ACTION, same.key, ts=ts).status_code == 200
        slack.wait(lambda: any(c.params.get("ts") == ts for c in slack.of("chat.update")),
                   what="the acknowledged message")
    assert len(posts(slack)) == 2
    assert [c.params["ts"] for c in slack.of("chat.update")].count(ts) == 1


async def _record(engine: AlertRules, latency_ms: float) -> None:
    engine.record(finished(latency_ms=latency_ms))


async def _tick(replica: Replica) -> None:
    await replica.engine.tick()
    await replica.kernel.idle()

