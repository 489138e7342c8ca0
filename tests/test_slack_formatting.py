"""The Slack bot's formatting: Markdown to mrkdwn, long text cut cleanly, the answer's blocks
and buttons, the stats message, decision records, budgets and alerts as text, the home view,
and the layouts docs/slack.md shows."""

from __future__ import annotations

import json
import re
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from turnout.bots.slack.formatting import (
    CONTEXT_BLOCK_ID,
    EMPTY_ANSWER,
    FEEDBACK_ACTION,
    SECTION_CHARS,
    STRONGER_ACTION,
    WHY_ACTION,
    alert_lines,
    answer_blocks,
    bar,
    budget_lines,
    chart_series,
    chart_upload,
    close_code,
    context_text,
    decision_text,
    duration,
    home_view,
    model_table,
    money,
    rerun_text,
    section_blocks,
    split_text,
    stats_blocks,
    take,
    to_mrkdwn,
)
from turnout.kernel.types import Answer, Completion
from turnout.plugins.stats import summarize_rows

DOC = Path(__file__).resolve().parent.parent / "docs" / "slack.md"


def answer(content: str = "ok", **kw) -> Answer:
    fields = dict(request_id="req_doc", status="ok", completion=Completion(content=content),
                  model="gpt-4o-mini", provider="openai", route="chat", strategy="fallback",
                  cost_usd=0.000042, latency_s=0.84, overhead_s=0.002, attempts=1,
                  input_tokens=14, output_tokens=21, decision={})
    fields.update(kw)
    return Answer(**fields)


# --- Markdown to mrkdwn ----------------------------------------------------------------------


def test_emphasis_links_and_escapes() -> None:
    assert to_mrkdwn("**bold**, *it*, _it_, ~~gone~~") == "*bold*, _it_, _it_, ~gone~"
    assert to_mrkdwn("see [the docs](https://x.dev/a?b=1&c=2) or <https://y.dev>") == \
        "see <https://x.dev/a?b=1&amp;c=2|the docs> or <https://y.dev>"
    assert to_mrkdwn("a < b && c > d") == "a &lt; b &amp;&amp; c &gt; d"
    assert to_mrkdwn("![chart](https://x.dev/c.png)") == "<https://x.dev/c.png|chart>"
    assert to_mrkdwn(r"not \*emphasis\*, 2 * 3 * 4") == "not *emphasis*, 2 * 3 * 4"


def test_words_urls_and_code_spans_are_left_alone() -> None:
    assert to_mrkdwn("snake_case_name and my_var") == "snake_case_name and my_var"
    assert to_mrkdwn("https://x.dev/a_b_c/d*e") == "https://x.dev/a_b_c/d*e"
    assert to_mrkdwn("run `**kwargs <x>` now") == "run `**kwargs &lt;x&gt;` now"


def test_headings_lists_quotes_and_rules() -> None:
    markdown = ("# Plan **now**\n## Steps\n- one\n  - nested\n* two\n- [x] done\n- [ ] open\n"
                "1. first\n2) second\n> quoted **bold**\n---")
    assert to_mrkdwn(markdown).split("\n") == [
        "*Plan now*", "*Steps*", "\u2022 one", "  \u25e6 nested", "\u2022 two", "\u2611 done",
        "\u2610 open", "1. first", "2. second", "> quoted *bold*", "\u2500" * 12]


def test_code_blocks_are_kept_verbatim_and_tables_become_code() -> None:
    markdown = ("Look:\n```python\nif a < b:\n    print(\"**x**\")\n```\n| a | b |\n|---|---|\n"
                "| 1 | 2 |\nafter")
    assert to_mrkdwn(markdown).split("\n") == [
        "Look:", "```", "if a &lt; b:", "    print(\"**x**\")", "```",
        "```", "| a | b |", "|---|---|", "| 1 | 2 |", "```", "after"]


def test_an_unclosed_code_block_is_closed() -> None:
    assert to_mrkdwn("```\nhalf a stream") == "```\nhalf a stream\n```"
    assert close_code("text\n~~~~sh\nls -l") == "\n~~~~"
    assert close_code("```\n") == "\n```" and close_code("```py") == "\n```"
    assert close_code("```\nx\n```") == close_code("plain") == ""


# --- cutting long text -------------------------------------------------------------------------


def test_text_is_cut_between_paragraphs() -> None:
    text = "\n\n".join(["alpha " * 30, "beta " * 30, "gamma " * 30]).strip()
    pieces = split_text(text, 400)
    assert [p.split()[0] for p in pieces] == ["alpha", "gamma"]
    assert all(len(p) <= 400 for p in pieces) and pieces[0].endswith("beta")


def test_a_code_block_that_fits_is_never_cut() -> None:
    code = "```js\n" + "\n".join(f"let v{i} = {i};" for i in range(12)) + "\n```"
    text = "intro " * 20 + "\n" + code + "\n\nand the end of it"
    pieces = split_text(text, 280)
    assert any(code in p for p in pieces)
    assert split_text("intro\n" + code + "\n\nafter", len(code) + 3) == ["intro", code, "after"]
    assert all(p.count("```") % 2 == 0 for p in pieces)


def test_a_code_block_too_long_for_a_piece_is_closed_and_reopened() -> None:
    code = "```python\n" + "\n".join(f"x_{i} = {i}" for i in range(100)) + "\n```"
    pieces = split_text("Here it is:\n\n" + code, 300)
    assert pieces[0].startswith("Here it is:\n\n```python\nx_0 = 0\n")
    assert len(pieces) > 3 and all(len(p) <= 300 for p in pieces)
    assert all(p.endswith("\n```") for p in pieces)
    assert all(p.startswith("```python\n") for p in pieces[1:])
    lines = [line for p in pieces for line in p.split("\n")
             if line.startswith("x_")]
    assert lines == [f"x_{i} = {i}" for i in range(100)]


def test_a_line_without_breaks_is_cut_at_a_space_then_anywhere() -> None:
    assert split_text("word " * 50, 100)[0] == ("word " * 20)
    assert [len(p) for p in split_text("x" * 250, 100)] == [100, 100, 50]
    head, _ = take("ab&amp;" + "c" * 100, 5)
    assert head == "ab", "an escaped character is never cut in two"


def test_a_cut_keeps_what_a_stream_already_sent() -> None:
    text = "one\n\ntwo two two two two\nthree three three three " + "four " * 10
    head, rest = take(text, 60, start=30)
    assert head.startswith(text[:30]) and len(head) <= 60
    assert (head + " " + rest).split() == text.split()


@st.composite
def documents(draw) -> str:
    parts = []
    for _ in range(draw(st.integers(1, 12))):
        if draw(st.booleans()):
            words = draw(st.lists(st.sampled_from(["lorem", "ipsum", "**dolor**", "sit",
                                                   "amet,", "a_b", "x"]), min_size=1,
                                  max_size=60))
            parts.append(" ".join(words))
        else:
            lines = draw(st.lists(st.sampled_from(["x = 1", "if y:", "    return z", ""]),
                                  min_size=1, max_size=40))
            parts.append("```py\n" + "\n".join(lines) + "\n```")
    return "\n\n".join(parts)


@settings(max_examples=200, deadline=None)
@given(documents(), st.integers(60, 400))
def test_pieces_fit_keep_every_word_and_cut_no_fitting_code_block(text: str, limit: int) -> None:
    pieces = split_text(text, limit)
    assert all(len(p) <= limit for p in pieces)
    fences = re.compile(r"^```.*$", re.M)
    assert all(len(fences.findall(p)) % 2 == 0 for p in pieces), "every piece closes its code"
    strip = re.compile(r"^```.*$", re.M)
    assert strip.sub("", "\n".join(pieces)).split() == strip.sub("", text).split()
    for block in re.findall(r"```py\n.*?\n```", text, re.S):
        if len(block) <= limit:
            assert any(block in p for p in pieces), "a code block that fits stays whole"


@settings(max_examples=200, deadline=None)
@given(documents(), st.integers(60, 400), st.data())
def test_a_cut_never_takes_back_what_was_sent(text: str, limit: int, data) -> None:
    if len(text) <= limit:
        return
    start = data.draw(st.integers(0, limit - len("\n```")))
    head, rest = take(text, limit, start=start)
    assert len(head) <= limit and head.startswith(text[:start].rstrip())
    assert head.strip() or start == 0


# --- blocks ------------------------------------------------------------------------------------


def test_money_and_duration() -> None:
    assert [money(x) for x in (0, 0.000042, 0.0123, 0.5, 12.345)] == \
        ["$0", "$0.000042", "$0.012", "$0.50", "$12.35"]
    assert [duration(x) for x in (0.0042, 0.84, 2.34, 75)] == ["4 ms", "840 ms", "2.3 s",
                                                              "1 min 15 s"]


def test_the_context_line_names_model_route_strategy_cost_and_latency() -> None:
    assert context_text(answer()) == "*gpt-4o-mini* \u00b7 route chat \u00b7 fallback \u00b7 " \
        "$0.000042 \u00b7 840 ms"
    unknown = answer(model=None, route=None, strategy=None, cost_usd=0.0)
    assert context_text(unknown).startswith("*-* \u00b7 route - \u00b7 - \u00b7 $0")


def test_long_text_fills_several_sections_and_empty_text_one() -> None:
    blocks = section_blocks("\n\n".join(["para " * 200] * 6))
    assert len(blocks) == 3 and all(len(b["text"]["text"]) <= SECTION_CHARS for b in blocks)
    assert section_blocks("") == [{"type": "section",
                                   "text": {"type": "mrkdwn", "text": EMPTY_ANSWER}}]


def test_answer_blocks_end_with_the_context_line_and_the_buttons() -> None:
    blocks = answer_blocks("**Hi**", answer())
    assert blocks[0] == {"type": "section", "text": {"type": "mrkdwn", "text": "*Hi*"}}
    context, feedback, actions = blocks[-3:]
    assert context["type"] == "context" and context["block_id"] == CONTEXT_BLOCK_ID
    (buttons,) = feedback["elements"]
    assert feedback["type"] == "context_actions" and buttons["type"] == "feedback_buttons"
    assert buttons["action_id"] == FEEDBACK_ACTION
    assert buttons["positive_button"]["value"] == "good:req_doc"
    assert buttons["negative_button"]["value"] == "bad:req_doc"
    assert actions["type"] == "actions"
    assert [(b["action_id"], b["value"]) for b in actions["elements"]] == [
        (STRONGER_ACTION, "req_doc"), (WHY_ACTION, "req_doc")]


def test_the_layout_in_the_docs_is_what_formatting_builds() -> None:
    text = DOC.read_text()
    shown = text.split("<!-- layout:start -->", 1)[1].split("<!-- layout:end -->", 1)[0]
    markdown = re.search(r"```markdown\n(.*?)\n```", shown, re.S).group(1)
    documented = json.loads(re.search(r"```json\n(.*?)```", shown, re.S).group(1))
    assert documented == {"blocks": answer_blocks(markdown, answer(markdown))}


# --- what the buttons, /turnout and the App Home show ---------------------------------------

TODAY_REQUESTS = [("chat", "ok", 0.00042, 840.0, 3.0), ("chat", "ok", 0.0021, 2300.0, 4.0),
                  ("chat", "error", 0.0, 15000.0, 5.0)]
TODAY_ATTEMPTS = [("gpt-4o-mini", "openai", "ok", 0.00042, 830.0, 900, 500),
                  ("claude-sonnet-4", "anthropic", "ok", 0.0021, 2290.0, 400, 60),
                  ("claude-sonnet-4", "anthropic", "error", 0.0, 14990.0, 400, 0)]
WEEK_REQUESTS = TODAY_REQUESTS + [("chat", "ok", 0.0004, 790.0, 3.0)] * 20 \
    + [("strong", "ok", 0.012, 4100.0, 6.0)] * 3
WEEK_ATTEMPTS = TODAY_ATTEMPTS + [("gpt-4o-mini", "openai", "ok", 0.0004, 780.0, 850, 480)] * 20 \
    + [("o3", "openai", "ok", 0.012, 4090.0, 1200, 800)] * 3
"""The request log the stats example in docs/slack.md is built from: 3 requests today, 26 in
the week, on three models."""


def fixed_stats() -> tuple[dict, dict]:
    return (summarize_rows(TODAY_REQUESTS, TODAY_ATTEMPTS, where="(doc)"),
            summarize_rows(WEEK_REQUESTS, WEEK_ATTEMPTS, where="(doc)"))


def test_the_stats_message_in_the_docs_is_what_formatting_builds() -> None:
    text = DOC.read_text()
    shown = text.split("<!-- stats:start -->", 1)[1].split("<!-- stats:end -->", 1)[0].strip()
    assert shown.startswith("```json\n") and shown.endswith("\n```")
    documented = json.loads(shown.removeprefix("```json\n").removesuffix("```"))
    today, week = fixed_stats()
    assert documented == {"blocks": stats_blocks(today, week),
                          "chart": chart_upload(week, "C0123ABCD")}


def test_the_stats_tables_and_the_chart_series() -> None:
    today, week = fixed_stats()
    table = model_table(today)
    assert table.startswith("```\nmodel") and table.endswith("\n```")
    assert "claude-sonnet-4      2   50%" in table
    assert chart_series(week) == ("spend", [("o3", 0.036), ("gpt-4o-mini", 0.00842),
                                            ("claude-sonnet-4", 0.0021)])
    free = summarize_rows([("chat", "ok", 0.0, 10.0, 1.0)],
                          [("local", "p", "ok", 0.0, 10.0, 1, 1)], where="(test)")
    assert chart_series(free) == ("calls", [("local", 1.0)])
    assert chart_series(summarize_rows([], [], where="(test)")) == ("calls", [])
    assert model_table(summarize_rows([], [], where="(test)")) == "_No calls recorded._"


def test_a_decision_record_reads_as_sentences() -> None:
    decision = {"requested": "auto", "route": "chain", "rule": "default", "strategy": "fallback",
                "plan": ["small", "big"], "estimated_cost_usd": 0.000042,
                "dropped": [{"model": "tiny", "reason": "needs 300 tokens, context window is 10"}]}
    text = decision_text(decision, model="big", attempts=2, cost_usd=0.0021, request_id="req_1")
    assert text.split("\n") == [
        "*Why big*",
        "\u2022 Asked for *auto*, routed to *chain* by the rule _default_",
        "\u2022 Strategy *fallback*, plan: small \u2192 big",
        "\u2022 Dropped tiny: needs 300 tokens, context window is 10",
        "\u2022 Estimated cost before calling: $0.000042",
        "\u2022 2 attempts, answered by *big* (the plan's first, small, did not answer), cost $0.0021",
        "Request `req_1`"]
    explained = decision_text({"requested": "chain", "route": "chain", "strategy": "fallback",
                               "plan": ["a<b"]}, labels={"task": "code", "needs_json": False,
                                                          "needs_tools": True, "tokens": 12})
    assert "plan: a&lt;b" in explained and "Labels: task code, needs_tools, tokens 12" in explained
    assert "attempt" not in explained and "Why" not in explained


def test_the_cost_of_a_stronger_answer_is_compared_with_the_first() -> None:
    assert rerun_text("small", 1, 0.000042, "big", 2, 0.0021) == (
        ":arrow_up: Asked again on *big* (tier 2; the first answer was by *small*, tier 1): "
        "this answer cost $0.0021, $0.0021 more than the first answer's $0.000042.")
    assert "$0.50 less than the first answer's $1.00" in rerun_text("a", 1, 1.0, "b", 2, 0.5)
    assert "the same as the first answer's $0.10" in rerun_text("a", 1, 0.1, "b", 2, 0.1)


def test_budgets_are_bars_and_alerts_are_numbered() -> None:
    lines = budget_lines([
        {"scope": "team", "match": "research", "window": "day", "limit_usd": 5.0,
         "spent_usd": 3.0, "left_usd": 2.0, "resets_at": "2025-06-17T00:00:00Z"},
        {"scope": "user", "match": None, "window": "month", "limit_usd": 20.0,
         "spent_usd": None},
        {"scope": "global", "match": "", "window": "total", "limit_usd": 1.0, "spent_usd": 2.0}])
    assert lines[0] == ("*day budget of team research*  `\u2588\u2588\u2588\u2588\u2588\u2588"
                        "\u2591\u2591\u2591\u2591` $3.00 of $5.00 spent, $2.00 left \u00b7 resets "
                        "2025-06-17T00:00:00Z")
    assert lines[1].startswith("*month budget of each user*: $20.00 for each one")
    assert "`" + "\u2588" * 10 + "` $2.00 of $1.00 spent, $0 left" in lines[2]
    assert bar(0.04) == "\u2591" * 10 and bar(-1) == bar(0) and bar(7) == "\u2588" * 10
    now = 1_750_032_000.0
    alerts = alert_lines([{"key": 'latency_p95{model="small"}', "name": "latency_p95",
                           "severity": "warning", "summary": "p95 latency of small is 2000 ms",
                           "started_at": now - 600, "acked_by": "U0ANN",
                           "muted_until": now + 3600}], now)
    assert alerts == ['1. :large_orange_circle: *latency_p95* `latency_p95{model="small"}`\n'
                      "      p95 latency of small is 2000 ms\n"
                      "      since 2025-06-15 23:50 UTC \u00b7 acknowledged by <@U0ANN> \u00b7 "
                      "muted until 2025-06-16 01:00 UTC"]


def test_the_home_view_has_spend_budgets_models_and_alerts() -> None:
    today, _ = fixed_stats()
    view = home_view(today, [{"scope": "global", "window": "day", "limit_usd": 1.0,
                              "spent_usd": 0.5}], [], 1_750_032_000.0)
    assert view["type"] == "home"
    text = json.dumps(view["blocks"], ensure_ascii=False)
    assert "*Spend today (UTC)*: $0.0025 over 3 requests" in text
    assert "day budget of global" in text and "claude-sonnet-4" in text
    assert "_None open._" in text
    unknown = home_view(None, [], [], 1_750_032_000.0, note="the request log is off")
    assert "_the request log is off_" in json.dumps(unknown)
