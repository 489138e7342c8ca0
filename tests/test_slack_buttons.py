"""The buttons under an answer, end to end: signed interactivity payloads to a real gateway, what
the fake Slack then receives, and what the record keeps (feedback rows, the re-run's request).
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest

from turnout.bots.slack.formatting import FEEDBACK_ACTION, STRONGER_ACTION, WHY_ACTION, money

from .fakes.slack_server import BOT_USER, Message
from .gateway import Gateway, running_gateway
from .slack_support import (  # noqa: F401 - the fixtures module_slack and slack
    SECRET,
    TOKEN,
    Upstream,
    ask,
    context_of,
    ephemerals,
    message,
    module_slack_fixture,
    press,
    slack_fixture,
)

pytestmark = pytest.mark.timeout(60)

TIERED = {
    "providers": {"p": {"kind": "openai-compatible", "base_url": "http://127.0.0.1:9/v1"}},
    "models": {
        "small": {"provider": "p", "input_price": 1, "output_price": 2, "tier": 1},
        "narrow": {"provider": "p", "input_price": 2, "output_price": 2, "tier": 2,
                   "context_window": 256},
        "big": {"provider": "p", "input_price": 10, "output_price": 20, "tier": 2},
        "pricey": {"provider": "p", "input_price": 30, "output_price": 60, "tier": 2},
        "top": {"provider": "p", "input_price": 50, "output_price": 100, "tier": 3},
        "tiny": {"provider": "p", "input_price": 0.1, "output_price": 0.1, "tier": 0,
                 "context_window": 256},
    },
    "routes": {"chain": {"models": ["tiny", "small", "big"]}, "best": {"models": ["top"]}},
    "routing": {"default": "chain"},
}
"""Models on tiers 0 to 3: small answers first on ``chain`` (tiny never fits); one tier up,
``narrow`` is cheapest but too small for any conversation, so ``big`` is the stronger model."""


def config(fake, **slack) -> dict:
    return {**TIERED, "slack": {"bot_token": TOKEN, "signing_secret": SECRET,
                                "api_url": fake.api_url, **slack}}


def feedback_rows(gw: Gateway) -> list[dict]:
    """The record's feedback table, after the writer has flushed."""
    gw.kernel.plugins.get("record").flush()
    with sqlite3.connect(gw.db) as db:
        db.row_factory = sqlite3.Row
        return [dict(r) for r in db.execute(
            "SELECT request_id, score, source, user_id FROM feedback ORDER BY created_at")]


def answered(gw: Gateway, slack, text: str = "What is the capital of France?",
             **kw) -> Message:
    """Ask ``text`` in the DM and return the finished answer."""
    event = message(text, **kw)
    ask(gw, event)
    (answer,) = slack.finished(event["channel"], event["ts"])
    return answer


def test_every_answer_carries_feedback_and_the_two_buttons(tmp_path: Path, slack) -> None:
    with running_gateway(config(slack), tmp_path, plugins={"upstream": Upstream()}) as gw:
        answer = answered(gw, slack)
        (row,) = gw.rows()
    assert [b["type"] for b in answer.blocks] == ["context", "context_actions", "actions"]
    (feedback,) = answer.blocks[1]["elements"]
    assert feedback["type"] == "feedback_buttons" and feedback["action_id"] == FEEDBACK_ACTION
    request_id = row["request_id"]
    assert feedback["positive_button"]["value"] == f"good:{request_id}"
    assert feedback["negative_button"]["value"] == f"bad:{request_id}"
    assert [(b["action_id"], b["value"], b["text"]["text"]) for b in answer.blocks[2]["elements"]] \
        == [(STRONGER_ACTION, request_id, "Ask a stronger model"),
            (WHY_ACTION, request_id, "Why this model?")]


def test_thumbs_up_and_down_are_recorded_with_the_request(tmp_path: Path, slack) -> None:
    with running_gateway(config(slack), tmp_path, plugins={"upstream": Upstream()}) as gw:
        answer = answered(gw, slack)
        press(gw, answer, FEEDBACK_ACTION, user="U0ANN")
        (thanks,) = ephemerals(slack, "U0ANN")
        press(gw, answer, FEEDBACK_ACTION, user="U0BOB", which="negative_button")
        ephemerals(slack, "U0BOB")
        (row,) = gw.rows()
        scores = feedback_rows(gw)
    assert scores == [
        {"request_id": row["request_id"], "score": 1.0, "source": "slack", "user_id": "U0ANN"},
        {"request_id": row["request_id"], "score": -1.0, "source": "slack", "user_id": "U0BOB"}]
    assert "recorded" in thanks
    (first,) = [c.params for c in slack.of("chat.postEphemeral") if c.params["user"] == "U0ANN"]
    assert first["channel"] == "D0DM" and first["thread_ts"] == answer.thread_ts


def test_ask_a_stronger_model_reruns_the_turn_one_tier_up(tmp_path: Path, slack) -> None:
    upstream = Upstream(["Paris."])
    with running_gateway(config(slack), tmp_path, plugins={"upstream": upstream}) as gw:
        first = message("Capital of France?")
        ask(gw, first)
        slack.finished("D0DM", first["ts"])
        upstream.parts = ["About 2.1 million."]
        second = message("And its population?", thread_ts=first["ts"])
        ask(gw, second)
        _, answer = slack.finished("D0DM", first["ts"], count=2)
        upstream.parts = ["Paris has about 2.1 million people; the metropolitan area 12."]
        press(gw, answer, STRONGER_ACTION, user="U0BOB")
        *_, rerun = slack.finished("D0DM", first["ts"], count=3)
        (line,) = slack.wait(lambda: [m for m in slack.thread("D0DM", first["ts"])
                                      if m.text.startswith(":arrow_up:")], what="the cost line")
        press(gw, answer, STRONGER_ACTION, user="U0BOB")
        (again,) = ephemerals(slack, "U0BOB")
        press(gw, rerun, WHY_ACTION, user="U0ANN")
        (why,) = ephemerals(slack, "U0ANN")
        rows = gw.rows()
    assert [m for m, _ in upstream.asked] == ["small", "small", "big"]
    assert upstream.asked[2][1] == upstream.asked[1][1] == [
        ("user", "Capital of France?"), ("assistant", "Paris."), ("user", "And its population?")]
    assert rerun.text == upstream.parts[0] and rerun.streamed
    assert context_of(rerun).startswith("*big* \u00b7 route big \u00b7 ")
    start = [c.params for c in slack.of("chat.startStream")][-1]
    assert start["recipient_user_id"] == "U0BOB" and start["thread_ts"] == first["ts"]
    small_cost, big_cost = rows[1]["cost_usd"], rows[2]["cost_usd"]
    assert rows[2]["model"] == "big" and rows[2]["requested"] == "big"
    assert line.text == (
        f":arrow_up: Asked again on *big* (tier 2; the first answer was by *small*, tier 1): "
        f"this answer cost {money(big_cost)}, {money(big_cost - small_cost)} more than the first "
        f"answer's {money(small_cost)}.")
    assert "already asked again" in again
    assert "*Why big*" in why and "Asked for *big*" in why
    assert f"Request `{rows[2]['request_id']}`" in why
    assert len(upstream.asked) == 3, "a second press asks nothing"


def test_the_strongest_model_has_nothing_above_it(tmp_path: Path, slack) -> None:
    upstream = Upstream()
    with running_gateway(config(slack, channel_routes={"C0BEST": "best"}), tmp_path,
                         plugins={"upstream": upstream}) as gw:
        answer = answered(gw, slack, f"<@{BOT_USER}> hard one", channel="C0BEST",
                          kind="app_mention")
        press(gw, answer, STRONGER_ACTION)
        (said,) = ephemerals(slack, "U0ANN")
    assert said.startswith("No model has a higher tier than top (tier 3)")
    assert [m for m, _ in upstream.asked] == ["top"]


def test_why_this_model_reads_the_decision_record(tmp_path: Path, slack) -> None:
    with running_gateway(config(slack), tmp_path, plugins={"upstream": Upstream()}) as gw:
        answer = answered(gw, slack)
        press(gw, answer, WHY_ACTION)
        (why,) = ephemerals(slack, "U0ANN")
        (row,) = gw.rows()
    lines = why.split("\n")
    assert lines[0] == "*Why small*"
    assert lines[1].startswith("\u2022 Asked for *auto*, routed to *chain*")
    assert "\u2022 Strategy *fallback*, plan: small \u2192 big" in lines
    assert any(line.startswith("\u2022 Dropped tiny: needs ") for line in lines)
    assert any(line.startswith("\u2022 Estimated cost before calling: $") for line in lines)
    assert f"\u2022 1 attempt, answered by *small*, cost {money(row['cost_usd'])}" in lines
    assert lines[-1] == f"Request `{row['request_id']}`"
    (call,) = slack.of("chat.postEphemeral")
    assert call.params["thread_ts"] == answer.thread_ts and call.params["blocks"]


def test_a_press_from_outside_the_allowlists_is_refused_to_them_alone(tmp_path: Path,
                                                                        slack) -> None:
    upstream = Upstream()
    with running_gateway(config(slack, allow_users=["U0ANN"]), tmp_path,
                         plugins={"upstream": upstream}) as gw:
        answer = answered(gw, slack)
        press(gw, answer, FEEDBACK_ACTION, user="U0MALLORY")
        press(gw, answer, STRONGER_ACTION, user="U0MALLORY")
        refusals = ephemerals(slack, "U0MALLORY", count=2)
        assert feedback_rows(gw) == []
    assert all("You cannot use Turnout here: user not in [slack] allow_users" in r
               for r in refusals)
    assert len(upstream.asked) == 1 and not slack.of("chat.postMessage")


def test_a_button_of_a_forgotten_answer_says_to_ask_again(tmp_path: Path, slack) -> None:
    with running_gateway(config(slack), tmp_path, plugins={"upstream": Upstream()}) as gw:
        answer = answered(gw, slack)
        press(gw, answer, WHY_ACTION, value="req_forgotten000000000000000")
        (said,) = ephemerals(slack, "U0ANN")
    assert "more than a week old" in said


def test_the_press_is_acknowledged_before_the_stronger_model_answers(tmp_path: Path,
                                                                      slack) -> None:
    upstream = Upstream()
    with running_gateway(config(slack), tmp_path, plugins={"upstream": upstream}) as gw:
        answer = answered(gw, slack)
        upstream.first = 1.5
        started = time.monotonic()
        response = press(gw, answer, STRONGER_ACTION)
        acked = time.monotonic() - started
        slack.finished("D0DM", answer.thread_ts, count=2)
    assert acked < 1.0 and response.text == ""
    assert [m for m, _ in upstream.asked] == ["small", "big"]
