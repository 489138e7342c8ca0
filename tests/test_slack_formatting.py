"""The Slack bot's formatting: Markdown to mrkdwn, long text cut cleanly, the answer's blocks,
and the layout docs/slack.md shows."""

from __future__ import annotations

import json
import re
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from turnout.bots.slack.formatting import (
    CONTEXT_BLOCK_ID,
    EMPTY_ANSWER,
    SECTION_CHARS,
    answer_blocks,
    close_code,
    context_text,
    duration,
    money,
    section_blocks,
    split_text,
    take,
    to_mrkdwn,
)
from turnout.kernel.types import Answer, Completion

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


def test_answer_blocks_end_with_the_context_block() -> None:
    blocks = answer_blocks("**Hi**", answer())
    assert blocks[0] == {"type": "section", "text": {"type": "mrkdwn", "text": "*Hi*"}}
    assert blocks[-1]["type"] == "context" and blocks[-1]["block_id"] == CONTEXT_BLOCK_ID


def test_the_layout_in_the_docs_is_what_formatting_builds() -> None:
    text = DOC.read_text()
    shown = text.split("<!-- layout:start -->", 1)[1].split("<!-- layout:end -->", 1)[0]
    markdown = re.search(r"```markdown\n(.*?)\n```", shown, re.S).group(1)
    documented = json.loads(re.search(r"```json\n(.*?)```", shown, re.S).group(1))
    assert documented == {"blocks": answer_blocks(markdown, answer(markdown))}
