"""``/turnout`` and the App Home, end to end: signed slash commands and ``app_home_opened``
events to a real gateway; what the fake Slack receives (the response URL's answers, the chart's
upload, ``views.publish``) and what the alerts engine keeps after ``alerts ack`` and ``mute``."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from turnout.bots.slack.commands import (
    WEEK_S,
    Unavailable,
    duration_s,
    midnight,
    summaries,
    unescape,
)
from turnout.kernel.config import parse
from turnout.kernel.kernel import BUILTINS, Kernel
from turnout.kernel.types import ChatRequest
from turnout.plugins import charts

from .gateway import Gateway, running_gateway
from .slack_support import (  # noqa: F401 - the fixtures module_slack and slack
    CONFIG,
    SECRET,
    TEAM,
    TOKEN,
    LoopCatcher,
    Upstream,
    ask,
    command,
    envelope,
    message,
    module_slack_fixture,
    slack_fixture,
    texts,
)
from .support import ROUTING

pytestmark = pytest.mark.timeout(60)

PNG = b"\x89PNG\r\n\x1a\n"
"""The first bytes of every PNG file."""


def config(fake, **slack) -> dict:
    return {**CONFIG, "slack": {"bot_token": TOKEN, "signing_secret": SECRET,
                                "api_url": fake.api_url, **slack}}


def answer(slack, name: str, count: int = 1) -> list[dict]:
    """Wait for ``count`` answers on the response URL ``name``; they are ephemeral."""
    found = slack.wait(lambda: (lambda got: got if len(got) >= count else None)(
        slack.responses(name)), what=f"{count} answer(s) to {name}")
    assert all(r.get("response_type") == "ephemeral" for r in found)
    return found


def shown(response: dict) -> str:
    return texts(response.get("blocks") or []) or response.get("text", "")


def asked(gw: Gateway, slack, *questions: str) -> None:
    for text in questions:
        event = message(text)
        ask(gw, event)
        slack.finished("D0DM", event["ts"])


def test_help_and_an_unknown_subcommand(tmp_path: Path, slack) -> None:
    with running_gateway(config(slack), tmp_path) as gw:
        bare = command(gw, slack, "")
        unknown = command(gw, slack, "frobnicate now")
        (helped,) = answer(slack, bare)
        (refused,) = answer(slack, unknown)
    assert "`/turnout stats`" in shown(helped) and "`/turnout alerts`" in shown(helped)
    assert shown(refused).startswith("`frobnicate` is not a /turnout command.")
    assert "`/turnout route <prompt>`" in shown(refused)


def test_stats_show_the_figures_and_upload_a_png_chart(tmp_path: Path, slack,
                                                        monkeypatch) -> None:
    drawn: list[tuple[dict, bytes]] = []
    shared = charts.stats_png

    def drawing(timeline: dict, **kw) -> bytes:  # the chart function turnout stats --png uses
        png = shared(timeline, **kw)
        drawn.append((timeline, png))
        return png

    monkeypatch.setattr(charts, "stats_png", drawing)
    with running_gateway(config(slack), tmp_path, plugins={"upstream": Upstream()}) as gw:
        empty = command(gw, slack, "stats")
        (nothing,) = answer(slack, empty)
        asked(gw, slack, "What is the capital of France?", "And of Italy?")
        slack.reset()
        name = command(gw, slack, "stats")
        (stats,) = answer(slack, name)
        slack.wait(lambda: slack.of("files.completeUploadExternal"), what="the chart")
        rows = gw.rows()
    assert "0 requests" in shown(nothing)
    text = shown(stats)
    assert stats["blocks"][0] == {"type": "header",
                                  "text": {"type": "plain_text", "text": "Turnout stats"}}
    spend = sum(r["cost_usd"] for r in rows)
    assert text.count("2 requests, 100% ok") == 2, "today and the week"
    assert f"*Today (UTC)*\n{_money(spend)} spent" in text
    assert "*By model, today*\n```\nmodel" in text and "\nsmall " in text
    steps = [c.method for c in slack.of("files.getUploadURLExternal", "(upload)",
                                        "files.completeUploadExternal")]
    assert steps == ["files.getUploadURLExternal", "(upload)", "files.completeUploadExternal"]
    (upload,) = slack.files.values()
    assert upload.data.startswith(PNG) and len(upload.data) == upload.length
    assert upload.completed and upload.channel == "D0DM" and upload.filename.endswith(".png")
    assert upload.title == "Spend by model, last 7 days" and "small" in upload.alt_txt
    assert "latency of each day's requests" in upload.alt_txt
    # The bytes are the shared chart function's drawing of the week, per day.
    ((week, png),) = drawn
    assert upload.data == png
    assert week["bucket_s"] == 86400 and len(week["starts"]) == 8, "7 days back, and today"
    assert sum(week["requests"]) == 2
    (small,) = week["by_model"]
    assert small["model"] == "small" and sum(small["spend_usd"]) == pytest.approx(spend)


def test_stats_say_when_the_chart_cannot_be_posted_in_the_channel(tmp_path: Path,
                                                                  slack) -> None:
    with running_gateway(config(slack), tmp_path, plugins={"upstream": Upstream()}) as gw:
        asked(gw, slack, "hello")
        slack.closed_channels.add("C0CLOSED")
        name = command(gw, slack, "stats", channel="C0CLOSED")
        _, note = answer(slack, name, count=2)
    assert "The chart could not be posted here (not_in_channel)" in shown(note)


def test_budget_shows_every_budget_as_a_bar(tmp_path: Path, slack) -> None:
    settings = {**config(slack, users={"U0ANN": {"team": "research"}}),
                "budgets": [{"scope": "team", "match": "research", "limit_usd": 1.0},
                            {"scope": "user", "limit_usd": 2.0, "window": "month"}],
                "rate_limits": [{"scope": "global", "rpm": 100}]}
    with running_gateway(settings, tmp_path, plugins={"upstream": Upstream()}) as gw:
        asked(gw, slack, "What is the capital of France?")
        (row,) = gw.rows()
        name = command(gw, slack, "budget")
        (budgets,) = answer(slack, name)
    text = shown(budgets)
    assert "*day budget of team research*  `\u2591" in text
    assert f"{_money(row['cost_usd'])} of $1.00 spent" in text
    assert "*month budget of each user*: $2.00 for each one" in text
    assert "*Rate limits*\n*rate limit of global*: 100 rpm (1 in the last minute)" in text


def test_route_explains_a_prompt_without_calling_a_model(tmp_path: Path, slack) -> None:
    upstream = Upstream()
    with running_gateway(config(slack), tmp_path, plugins={"upstream": upstream}) as gw:
        name = command(gw, slack, "route Refactor this &lt;div&gt; please")
        empty = command(gw, slack, "route")
        (routed,) = answer(slack, name)
        (usage,) = answer(slack, empty)
        rows = gw.rows()
    text = shown(routed)
    assert text.startswith("*How this prompt would be routed* (no model was called)")
    assert "\u2022 Asked for *auto*, routed to *chain*" in text
    assert "plan: small \u2192 big" in text and "Estimated cost before calling: $" in text
    assert "Labels: task code" in text
    assert upstream.asked == [] and rows == []
    assert "Give the prompt" in shown(usage)


def test_models_lists_tiers_prices_and_context_windows(tmp_path: Path, slack) -> None:
    with running_gateway(config(slack), tmp_path) as gw:
        name = command(gw, slack, "models")
        (models,) = answer(slack, name)
    text = shown(models)
    assert "model  provider  tier  in $/M  out $/M  context" in text
    assert "\nsmall  p            1       1        2  128,000\n" in text
    assert "\u2022 *chain*: small \u2192 big" in text


def test_alerts_list_acknowledge_and_mute_through_the_engine(tmp_path: Path, slack) -> None:
    loop = LoopCatcher()
    upstream = Upstream(first=0.05)
    settings = {**config(slack), "alerts": [{"kind": "latency_p95", "match": "small",
                                             "above_ms": 1, "for_minutes": 0,
                                             "min_requests": 1}]}
    with running_gateway(settings, tmp_path, plugins={"upstream": upstream, "loop": loop}) as gw:
        none = command(gw, slack, "alerts")
        (no_alerts,) = answer(slack, none)
        asked(gw, slack, "slow one")
        engine = gw.kernel.plugins.get("alerts")
        loop.run(engine.tick())
        listed = command(gw, slack, "alerts")
        (listing,) = answer(slack, listed)
        (key,) = loop.run(_open(gw))
        acked = command(gw, slack, "alerts ack 1")
        (ack,) = answer(slack, acked)
        muted = command(gw, slack, "alerts mute 1 2h", user="U0BOB")
        (mute,) = answer(slack, muted)
        bad = command(gw, slack, "alerts mute 1 soon")
        (not_a_duration,) = answer(slack, bad)
        missing = command(gw, slack, "alerts ack 9")
        (no_such,) = answer(slack, missing)
        state = loop.run(engine.state(key))
        again = command(gw, slack, "alerts")
        (relisted,) = answer(slack, again)
    assert shown(no_alerts) == "No open alerts."
    assert f"1. :large_orange_circle: *latency_p95* `{key}`" in shown(listing)
    assert "p95 latency of model 'small' is " in shown(listing)
    assert shown(ack).startswith(f"Acknowledged `{key}`")
    assert state["acked_by"] == "U0ANN"
    assert abs(state["muted_until"] - (time.time() + 7200)) < 60
    assert shown(mute).startswith(f"Muted `{key}` until ")
    assert "is not a duration" in shown(not_a_duration)
    assert "There is no open alert 9" in shown(no_such)
    assert "acknowledged by <@U0ANN>" in shown(relisted) and "muted until" in shown(relisted)


async def _open(gw: Gateway) -> list[str]:
    import orjson

    from turnout.plugins.alert_rules import INDEX

    return list(orjson.loads(await gw.kernel.store.get(INDEX)))


def test_alerts_without_the_alerts_plugin_say_so(tmp_path: Path, slack) -> None:
    settings = {**config(slack), "plugins": {"disable": ["alerts"]}}
    with running_gateway(settings, tmp_path) as gw:
        name = command(gw, slack, "alerts")
        (said,) = answer(slack, name)
    assert "the alerts plugin is not loaded" in shown(said)


def test_a_user_outside_the_allowlists_is_refused(tmp_path: Path, slack) -> None:
    with running_gateway(config(slack, allow_users=["U0ANN"]), tmp_path) as gw:
        name = command(gw, slack, "stats", user="U0MALLORY")
        (refused,) = answer(slack, name)
        ours = command(gw, slack, "models")
        answer(slack, ours)
    assert shown(refused).startswith(":warning: You cannot use /turnout here: user not in "
                                     "[slack] allow_users.")
    assert slack.responses(name) == [refused] and not slack.of("files.getUploadURLExternal")


def test_without_a_response_url_the_answer_is_ephemeral(tmp_path: Path, slack) -> None:
    with running_gateway(config(slack), tmp_path) as gw:
        command(gw, slack, "help", channel="C0GENERAL", response_url=False)
        (call,) = slack.wait(lambda: slack.of("chat.postEphemeral"), what="an ephemeral answer")
    assert call.params["channel"] == "C0GENERAL" and call.params["user"] == "U0ANN"
    assert "`/turnout stats`" in texts(call.params["blocks"])


def home_opened(user: str = "U0ANN", tab: str = "home") -> dict:
    return {"type": "app_home_opened", "user": user, "channel": "D0DM", "tab": tab,
            "event_ts": f"{time.time():.6f}"}


def test_the_home_tab_shows_spend_budgets_models_and_alerts(tmp_path: Path, slack) -> None:
    settings = {**config(slack, allow_users=["U0ANN"]),
                "budgets": [{"scope": "global", "limit_usd": 1.0}]}
    with running_gateway(settings, tmp_path, plugins={"upstream": Upstream()}) as gw:
        asked(gw, slack, "What is the capital of France?")
        (row,) = gw.rows()
        ask(gw, home_opened(tab="messages"))
        ask(gw, home_opened(user="U0MALLORY"))
        ask(gw, home_opened())
        slack.wait(lambda: "U0ANN" in slack.views and "U0MALLORY" in slack.views,
                   what="two home views")
    publishes = slack.of("views.publish")
    assert len(publishes) == 2, "the Messages tab publishes nothing"
    view = slack.views["U0ANN"]
    text = texts(view["blocks"])
    assert view["type"] == "home" and view["blocks"][0]["type"] == "header"
    assert f"*Spend today (UTC)*: {_money(row['cost_usd'])} over 1 requests" in text
    assert "*Budgets*\n*day budget of global*  `" in text
    assert "*Top models today*\n```\nmodel" in text and "\nsmall " in text
    assert "*Open alerts*\n_None open._" in text
    assert "not available to you here" in texts(slack.views["U0MALLORY"]["blocks"])
    assert TEAM in str(envelope(home_opened())["team_id"])


def _money(usd: float) -> str:
    from turnout.bots.slack.formatting import money

    return money(usd)


# --- where the figures come from --------------------------------------------------------------


def recording_kernel(record: dict) -> Kernel:
    """A kernel with the routing plugins, the record plugin on ``record`` and the upstream."""
    kernel = Kernel(parse({**CONFIG, "record": record}, source="test"),
                    builtins={**ROUTING, "record": BUILTINS["record"]})
    kernel.plugins.register(Upstream(), name="upstream")
    return kernel


@pytest.mark.anyio
async def test_stats_read_a_postgresql_record(tmp_path: Path) -> None:
    from .test_record_postgres import fresh_schema, server_dsn

    dsn = server_dsn()
    with fresh_schema(dsn) as schema:
        kernel = recording_kernel({"backend": "postgres", "dsn": dsn, "schema": schema,
                                   "journal": str(tmp_path / "record.journal")})
        async with kernel:
            request = ChatRequest(model="chain", messages=[{"role": "user", "content": "hi"}])
            answered = await kernel.ask(request)
            today, week = await summaries(kernel, midnight(time.time()), time.time() - WEEK_S)
    assert today["requests"] == week["requests"] == 1
    assert week["spend_usd"] == pytest.approx(answered.cost_usd)
    assert [m["model"] for m in week["by_model"]] == ["small"]


@pytest.mark.anyio
async def test_stats_say_why_there_is_no_log_to_read(tmp_path: Path) -> None:
    for record, why in (({"enabled": False}, "the request log is off"),
                        ({"path": ":memory:"}, "kept in memory only"),
                        ({"path": str(tmp_path / "none.db"), "enabled": True}, None)):
        kernel = recording_kernel(record)
        async with kernel:
            if why is None:  # a log just created: nothing in it yet, but readable
                (found,) = await summaries(kernel, 0.0)
                assert found["requests"] == 0
                continue
            with pytest.raises(Unavailable, match=why):
                await summaries(kernel, 0.0)


def test_durations_for_mutes() -> None:
    assert [duration_s(t) for t in ("30m", "2h", "1d", "90s", "1.5h")] == \
        [1800.0, 7200.0, 86400.0, 90.0, 5400.0]
    for bad in ("soon", "0m", "-1h", "2w", "31d"):
        with pytest.raises(ValueError):
            duration_s(bad)
    assert unescape("a &lt;b&gt; &amp;amp; \u201cc\u201d") == 'a <b> &amp; "c"'
