"""What an answer looks like in Slack: Markdown made mrkdwn, long text cut cleanly, Block Kit.

Pure functions, no I/O. Models write Markdown; Slack's ``mrkdwn`` (section blocks, message text)
differs: ``*bold*`` instead of ``**bold**``, ``_italic_``, ``~strike~``, links as ``<url|text>``,
no headings (made bold), no tables (shown as code), and ``&``, ``<``, ``>`` escaped.
:func:`to_mrkdwn` converts; code blocks and inline code are kept as written (escaped only).
Streamed answers need none of this: Slack's streaming methods take Markdown as it is.

Slack caps a section's text at 3,000 characters and a message's at 40,000, and a streamed
message is held to :data:`STREAM_MESSAGE_CHARS`. :func:`split_text` cuts text to a limit at
the cleanest place it can find: between paragraphs or around a code block first, then between
lines, never inside a code block that fits whole in a piece; a code block longer than a piece
is cut between its lines and closed and reopened around the cut.

An answer's message is :func:`answer_blocks`: its text in section blocks, then
:func:`footer_blocks`: the context line (model, route, strategy, cost, latency), Slack's
feedback buttons (a ``context_actions`` block) and the "Ask a stronger model" and "Why this
model?" buttons (an ``actions`` block), each carrying the answer's request id.

The rest renders what the buttons, the ``/turnout`` command and the App Home show: a decision
record made readable (:func:`decision_text`), the stats message (:func:`stats_blocks`), budgets
as text bars (:func:`budget_lines`), the models (:func:`models_text`), open alerts
(:func:`alert_lines`) and the home view (:func:`home_view`).
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass
from typing import Any

from slack_sdk.models.blocks import (
    ActionsBlock,
    ButtonElement,
    ContextActionsBlock,
    FeedbackButtonObject,
    FeedbackButtonsElement,
)

from turnout.kernel.types import Answer
from turnout.plugins.admin import rate_limit_usage

SECTION_CHARS = 3000
"""Most characters of a section block's text."""

MESSAGE_CHARS = 40_000
"""Most characters of a message's text."""

STREAM_MESSAGE_CHARS = 12_000
"""Most Markdown characters streamed into one message (Slack's cap on a message's Markdown);
a longer answer continues in another message of the thread."""

CONTEXT_BLOCK_ID = "turnout_context"
"""The ``block_id`` of an answer's context line."""

FEEDBACK_ACTION = "turnout_feedback"
"""The ``action_id`` of the feedback buttons under an answer."""

STRONGER_ACTION = "turnout_stronger"
"""The ``action_id`` of "Ask a stronger model"."""

WHY_ACTION = "turnout_why"
"""The ``action_id`` of "Why this model?"."""

GOOD, BAD = "good", "bad"
"""What a feedback button's value starts with (then ``:`` and the request id)."""

EMPTY_ANSWER = "_(the answer has no text)_"
"""Shown for an answer without text (a section block's text may not be empty)."""

_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})(.*)$")
_HEADING = re.compile(r"^ {0,3}#{1,6}\s+(.*?)\s*#*\s*$")
_RULE = re.compile(r"^ {0,3}([-*_])(?:\s*\1){2,}\s*$")
_QUOTE = re.compile(r"^ {0,3}>\s?(.*)$")
_BULLET = re.compile(r"^(\s*)[-*+]\s+(?:\[([ xX])\]\s+)?(.*)$")
_NUMBERED = re.compile(r"^(\s*)(\d{1,9})[.)]\s+(.*)$")
_TABLE_ROW = re.compile(r"^\s*\|.*\|\s*$")

_ESCAPED = re.compile(r"\\([\\`*_{}\[\]()#+\-.!|~<>])")
_CODE_SPAN = re.compile(r"(`+)(.+?)\1")
_LINK = re.compile(r"!?\[([^\]\n]*)\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"\n]*\")?\s*\)")
_AUTOLINK = re.compile(r"<((?:https?|mailto):[^>\s]+)>")
_BARE_URL = re.compile(r"https?://[^\s<>()\[\]]*[^\s<>()\[\].,;:!?'\"*_]")
_BOLD = re.compile(r"(\*\*|__)(?=\S)(.+?)(?<=\S)\1")
_ITALIC = re.compile(r"(?<![\w*\\])\*(?=[^\s*])([^*\n]+?)(?<=[^\s*])\*(?![\w*])")
_STRIKE = re.compile(r"~~(?=\S)(.+?)(?<=\S)~~")
_SLOT = re.compile("\ue000(\\d+)\ue001")
_BOLD_MARK = "\ue002"

RULE_TEXT = "\u2500" * 12
"""A horizontal rule, drawn (mrkdwn has none)."""


# --- Markdown to mrkdwn ------------------------------------------------------------------------


def escape(text: str) -> str:
    """``text`` with the three characters Slack reserves (``&``, ``<``, ``>``) escaped."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def to_mrkdwn(markdown: str) -> str:
    """Markdown as Slack's mrkdwn shows it: code blocks kept (without their language), tables as
    code, headings bold, lists with bullets, links ``<url|text>``, emphasis converted, and the
    reserved characters escaped. A code block left open (a stream cut short) is closed."""
    out: list[str] = []
    fence: str | None = None
    table: list[str] = []

    def end_table() -> None:
        if table:
            out.extend(["```", *(escape(row.strip()) for row in table), "```"])
            table.clear()

    for line in markdown.split("\n"):
        found = _FENCE.match(line)
        if fence is not None:
            if found and _closes(found, fence):
                out.append("```")
                fence = None
            else:
                out.append(escape(line))
            continue
        if found and "`" not in found.group(2):
            end_table()
            out.append("```")
            fence = found.group(1)
            continue
        if _TABLE_ROW.match(line):
            table.append(line)
            continue
        end_table()
        out.append(_line(line))
    end_table()
    if fence is not None:
        out.append("```")
    return "\n".join(out)


def _closes(found: re.Match[str], fence: str) -> bool:
    marks = found.group(1)
    return marks[0] == fence[0] and len(marks) >= len(fence) and not found.group(2).strip()


def _line(line: str) -> str:
    """One line outside code blocks."""
    if not line.strip():
        return ""
    if _RULE.match(line):
        return RULE_TEXT
    heading = _HEADING.match(line)
    if heading:
        text = inline(heading.group(1), bold=False).strip()
        return f"*{text}*" if text else ""
    quote = _QUOTE.match(line)
    if quote:
        return "> " + _line(quote.group(1))
    bullet = _BULLET.match(line)
    if bullet:
        indent, box, text = bullet.groups()
        mark = "\u2022" if len(indent.expandtabs(4)) < 2 else "\u25e6"
        if box is not None:
            mark = "\u2611" if box.lower() == "x" else "\u2610"
        return f"{indent}{mark} {inline(text)}"
    numbered = _NUMBERED.match(line)
    if numbered:
        indent, number, text = numbered.groups()
        return f"{indent}{number}. {inline(text)}"
    return inline(line)


def inline(text: str, *, bold: bool = True) -> str:
    """One line's inline Markdown as mrkdwn: code spans, links, emphasis; with ``bold`` False,
    bold markers are dropped (inside a heading, which is bold as a whole)."""
    slots: list[str] = []

    def keep(value: str) -> str:
        slots.append(value)
        return f"\ue000{len(slots) - 1}\ue001"

    text = _ESCAPED.sub(lambda m: keep(escape(m.group(1))), text)
    text = _CODE_SPAN.sub(lambda m: keep(f"`{escape(m.group(2).strip() or m.group(2))}`"), text)
    text = _LINK.sub(lambda m: keep(_link(m.group(2), m.group(1))), text)
    text = _AUTOLINK.sub(lambda m: keep(f"<{_url(m.group(1))}>"), text)
    text = _BARE_URL.sub(lambda m: keep(escape(m.group(0))), text)
    text = escape(text)
    text = _BOLD.sub(lambda m: f"{_BOLD_MARK}{m.group(2)}{_BOLD_MARK}" if bold else m.group(2),
                     text)
    text = _ITALIC.sub(r"_\1_", text)
    text = _STRIKE.sub(r"~\1~", text)
    text = text.replace(_BOLD_MARK, "*")
    while _SLOT.search(text):
        text = _SLOT.sub(lambda m: slots[int(m.group(1))], text)
    return text


def _url(url: str) -> str:
    return url.replace("&", "&amp;").replace("<", "%3C").replace(">", "%3E").replace("|", "%7C")


def _link(url: str, label: str) -> str:
    label = escape(label.replace("**", "").strip())
    return f"<{_url(url)}|{label}>" if label and label != url else f"<{_url(url)}>"


# --- cutting long text -------------------------------------------------------------------------


@dataclass(slots=True)
class _Line:
    start: int
    text: str
    code: bool = False
    """Inside a code block (its content or its closing fence), not its opening fence."""
    opens: bool = False
    closes: bool = False
    fence: str = ""
    """For a line inside a code block: the block's opening line."""
    block: tuple[int, int] = (0, 0)
    """For a line inside a code block: where the block starts (its opening fence) and ends
    (after its closing fence, or at the end of the text)."""
    first: bool = False
    """The first line inside a code block."""


def _scan(text: str) -> list[_Line]:
    """The lines of ``text``, each with where it stands relative to code blocks."""
    lines: list[_Line] = []
    opener: _Line | None = None
    fence = ""
    inner: list[_Line] = []
    pos = 0
    for raw in text.split("\n"):
        found = _FENCE.match(raw)
        if opener is None:
            line = _Line(pos, raw)
            if found and "`" not in found.group(2):
                line.opens = True
                opener, fence, inner = line, found.group(1), []
        else:
            line = _Line(pos, raw, code=True, fence=opener.text.strip(), first=not inner)
            inner.append(line)
            if found and _closes(found, fence):
                line.closes = True
                for each in inner:
                    each.block = (opener.start, pos + len(raw))
                opener = None
        lines.append(line)
        pos += len(raw) + 1
    if opener is not None:
        for each in inner:
            each.block = (opener.start, len(text))
    return lines


def take(text: str, limit: int, start: int = 0) -> tuple[str, str]:
    """Cut ``text`` once: ``(head, rest)``, ``head`` at most ``limit`` characters and at least
    ``start`` long (what a stream already sent: ``head`` then begins with ``text[:start]``,
    given the room to close a code block: ``start`` at most ``limit`` less a closing fence and
    its line break); ``rest`` is what follows, ready to start a piece of its own.

    Cuts, best first: between paragraphs or at a code block's edge; between lines; between
    the lines of a code block too long for any piece (closing it in ``head`` and reopening it
    in ``rest``); after a space; anywhere. A cut in the second half of the room is preferred
    to a better cut in the first half, so pieces are not needlessly small."""
    if len(text) <= limit:
        return text, ""
    paragraph: list[int] = []
    line_starts: list[int] = []
    code_lines: list[_Line] = []
    lines = _scan(text)
    for previous, line in zip(lines, lines[1:]):
        if not line.code:
            line_starts.append(line.start)
            if line.opens or not previous.text.strip() or previous.closes:
                paragraph.append(line.start)
        elif not line.first and not line.closes and line.block[1] - line.block[0] > limit:
            code_lines.append(line)  # a block no piece can hold whole
    floor = max(start, 1)
    after = text[limit:]
    reach = limit + len(after) - len(after.lstrip())  # a cut's trailing blanks are dropped
    for least in (max(floor, limit // 2), floor):
        for found in (_last(paragraph, least, reach), _last(line_starts, least, reach)):
            if found is not None:
                return _plain_cut(text, found)
        code = [line for line in code_lines
                if least <= line.start <= limit - len(_closing(line.fence)) - 1]
        if code:
            return _code_cut(text, code[-1].start, code[-1].fence)
    return _hard_cut(text, lines, limit, floor)


def _closing(fence: str) -> str:
    marks = re.match(r"\s*(`{3,}|~{3,})", fence)
    return marks.group(1) if marks else "```"


def _last(positions: list[int], least: int, most: int) -> int | None:
    found = [p for p in positions if least <= p <= most]
    return found[-1] if found else None


def _plain_cut(text: str, at: int) -> tuple[str, str]:
    return text[:at].rstrip(), text[at:].lstrip("\n")


def _code_cut(text: str, at: int, fence: str) -> tuple[str, str]:
    head = text[:at]
    if not head.endswith("\n"):
        head += "\n"
    return head + _closing(fence), fence + "\n" + text[at:]


def _hard_cut(text: str, lines: list[_Line], limit: int, floor: int) -> tuple[str, str]:
    """A cut within a line: after the last space in the room, else at the room's end."""
    inside = None
    for line in lines:
        if line.start > limit:
            break
        inside = line
    fence = inside.fence if inside is not None and inside.code else ""
    room = limit - (len(_closing(fence)) + 1 if fence else 0)
    space = text.rfind(" ", floor, room)
    at = space + 1 if space >= floor else room
    entity = text.rfind("&", max(at - 6, 0), at)  # never cut an &amp; in two
    if entity > floor and ";" not in text[entity:at]:
        at = entity
    at = max(at, 1)
    if fence:
        return text[:at] + "\n" + _closing(fence), fence + "\n" + text[at:]
    return text[:at], text[at:]


def close_code(markdown: str) -> str:
    """What ends a code block ``markdown`` leaves open (a stream cut short): its closing fence
    on a line of its own; nothing when none is open."""
    last = _scan(markdown)[-1]
    if last.opens:
        return "\n" + _closing(last.text)
    if last.code and not last.closes:
        return "\n" + _closing(last.fence)
    return ""


def split_text(text: str, limit: int) -> list[str]:
    """``text`` in pieces of at most ``limit`` characters, cut as :func:`take` cuts."""
    pieces: list[str] = []
    rest = text
    while len(rest) > limit:
        head, rest = take(rest, limit)
        if head.strip():
            pieces.append(head)
    if rest.strip() or not pieces:
        pieces.append(rest)
    return pieces


# --- Block Kit ---------------------------------------------------------------------------------


def section_blocks(mrkdwn: str) -> list[dict[str, Any]]:
    """mrkdwn as section blocks of at most :data:`SECTION_CHARS` characters each."""
    return [{"type": "section", "text": {"type": "mrkdwn", "text": piece}}
            for piece in split_text(mrkdwn.strip() or EMPTY_ANSWER, SECTION_CHARS)]


def money(usd: float) -> str:
    """Dollars: cents from a dollar up (``$12.35``), two significant digits below
    (``$0.50``, ``$0.012``, ``$0.000042``)."""
    if usd <= 0:
        return "$0"
    if usd >= 1:
        return f"${usd:,.2f}"
    digits = max(2, 1 - math.floor(math.log10(usd)))
    text = f"{usd:.{digits}f}"
    while digits > 2 and text.endswith("0"):
        text, digits = text[:-1], digits - 1
    return "$" + text


def duration(seconds: float) -> str:
    """``840 ms``, ``2.3 s``, ``1 min 5 s``."""
    if seconds < 1:
        return f"{round(seconds * 1000)} ms"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes} min {rest} s"


def context_text(answer: Answer) -> str:
    """The context line: ``model · route R · strategy · cost · latency`` (``-`` for unknowns)."""
    parts = [f"*{escape(answer.model or '-')}*",
             f"route {escape(answer.route or '-')}",
             escape(answer.strategy or "-"),
             money(answer.cost_usd),
             duration(answer.latency_s)]
    return " \u00b7 ".join(parts)


def context_block(answer: Answer) -> dict[str, Any]:
    """The context block under an answer."""
    return {"type": "context", "block_id": CONTEXT_BLOCK_ID,
            "elements": [{"type": "mrkdwn", "text": context_text(answer)}]}


def feedback_block(request_id: str) -> dict[str, Any]:
    """Slack's feedback buttons (thumbs up, thumbs down) for the answer to ``request_id``: a
    ``context_actions`` block, each button's value ``good:<id>`` or ``bad:<id>``."""
    return ContextActionsBlock(elements=[FeedbackButtonsElement(
        action_id=FEEDBACK_ACTION,
        positive_button=FeedbackButtonObject(text="\U0001f44d", value=f"{GOOD}:{request_id}",
                                             accessibility_label="Good answer"),
        negative_button=FeedbackButtonObject(text="\U0001f44e", value=f"{BAD}:{request_id}",
                                             accessibility_label="Bad answer"))]).to_dict()


def actions_block(request_id: str) -> dict[str, Any]:
    """"Ask a stronger model" and "Why this model?", each with the request id as its value."""
    return ActionsBlock(elements=[
        ButtonElement(text="Ask a stronger model", action_id=STRONGER_ACTION, value=request_id),
        ButtonElement(text="Why this model?", action_id=WHY_ACTION, value=request_id),
    ]).to_dict()


def footer_blocks(answer: Answer) -> list[dict[str, Any]]:
    """The blocks under an answer's text: the context line, then the feedback buttons and the
    two buttons about the model (when the answer has a request id)."""
    if not answer.request_id:
        return [context_block(answer)]
    return [context_block(answer), feedback_block(answer.request_id),
            actions_block(answer.request_id)]


def answer_blocks(markdown: str, answer: Answer) -> list[dict[str, Any]]:
    """A whole answer as one message's blocks: its text (Markdown, converted) in sections,
    then :func:`footer_blocks`. An answer too long for one message is cut with
    :func:`split_text` first, and only its last piece gets the footer."""
    return section_blocks(to_mrkdwn(markdown)) + footer_blocks(answer)


def notice(message: str) -> str:
    """A short notice in a thread (a refusal, a failure) as mrkdwn: a warning sign and the
    message, escaped."""
    return f":warning: {escape(message.strip())}"


# --- what the buttons, /turnout and the App Home show ------------------------------------------

BAR_WIDTH = 10
"""Characters of a text bar."""

TABLE_ROWS = 10
"""Most models listed in a table (the rest are counted)."""

CHART_FILENAME = "turnout-stats.png"
"""The name the stats chart is uploaded under."""

_SEVERITY = {"critical": ":red_circle:", "warning": ":large_orange_circle:",
             "info": ":large_blue_circle:"}
_SLACK_USER = re.compile(r"^[UW][A-Z0-9]{2,}$")


def bar(fraction: float, width: int = BAR_WIDTH) -> str:
    """A text bar, ``fraction`` (0 to 1, clamped) of it filled: ``██████░░░░``."""
    filled = round(min(max(fraction, 0.0), 1.0) * width)
    return "\u2588" * filled + "\u2591" * (width - filled)


def percent(fraction: float | None) -> str:
    """``93%``; ``-`` for none."""
    return "-" if fraction is None else f"{fraction * 100:.0f}%"


def millis(value: float | None) -> str:
    """Milliseconds as :func:`duration` says them; ``-`` for none."""
    return "-" if value is None else duration(value / 1000)


def utc(timestamp: float) -> str:
    """``2025-06-16 14:05 UTC``."""
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(timestamp))


def who(user: str | None) -> str:
    """A Slack user id as a mention; anything else as plain (escaped) text."""
    if user and _SLACK_USER.match(user):
        return f"<@{user}>"
    return escape(user or "someone")


def code_table(header: tuple[str, ...], rows: list[tuple[str, ...]], left: int = 1) -> str:
    """Rows as a code block of aligned columns (the first ``left`` left-aligned, the rest,
    numbers, right-aligned), the reserved characters escaped."""
    table = [header, *rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(width) if i < left else cell.rjust(width)
                       for i, (cell, width) in enumerate(zip(row, widths))).rstrip()
             for row in table]
    return "```\n" + escape("\n".join(lines)) + "\n```"


def decision_text(decision: dict[str, Any], *, model: str | None = None,
                  attempts: int | None = None, cost_usd: float | None = None,
                  request_id: str | None = None, labels: dict[str, Any] | None = None) -> str:
    """A decision record (``Answer.decision``, or :meth:`Kernel.explain`'s) as mrkdwn: what was
    asked for, the route and the rule that chose it, the strategy and its plan, the models
    dropped and why, the cost estimated before calling; with ``attempts``, how many calls it
    took, which ``model`` answered and what it cost; ``labels``, the classifier's."""
    lines = [f"*Why {escape(model)}*"] if model else []
    requested, route = decision.get("requested"), decision.get("route")
    line = f"\u2022 Asked for *{escape(str(requested or '-'))}*"
    if route and route != requested:
        line += f", routed to *{escape(str(route))}*"
    if decision.get("rule"):
        line += f" by the rule _{escape(str(decision['rule']))}_"
    lines.append(line)
    plan = [str(name) for name in decision.get("plan") or []]
    if decision.get("strategy") or plan:
        lines.append(f"\u2022 Strategy *{escape(str(decision.get('strategy') or '-'))}*, plan: "
                     + (" \u2192 ".join(escape(name) for name in plan) or "-"))
    for dropped in decision.get("dropped") or []:
        if isinstance(dropped, dict):
            lines.append(f"\u2022 Dropped {escape(str(dropped.get('model')))}: "
                         f"{escape(str(dropped.get('reason')))}")
    estimate = decision.get("estimated_cost_usd")
    if isinstance(estimate, (int, float)):
        lines.append(f"\u2022 Estimated cost before calling: {money(estimate)}")
    cache = decision.get("cache")
    if isinstance(cache, dict) and cache.get("hit"):
        lines.append("\u2022 Answered from the cache")
    if labels:
        shown = [escape(str(k)) if v is True else f"{escape(str(k))} {escape(str(v))}"
                 for k, v in labels.items()
                 if v is True or isinstance(v, (str, int, float)) and not isinstance(v, bool)]
        if shown:
            lines.append("\u2022 Labels: " + ", ".join(shown))
    if attempts is not None:
        line = f"\u2022 {attempts} attempt{'' if attempts == 1 else 's'}"
        if model:
            line += f", answered by *{escape(model)}*"
            if plan and plan[0] != model:
                line += f" (the plan's first, {escape(plan[0])}, did not answer)"
        if cost_usd is not None:
            line += f", cost {money(cost_usd)}"
        lines.append(line)
    if request_id:
        lines.append(f"Request `{escape(request_id)}`")
    return "\n".join(lines)


def rerun_text(first: str, first_tier: int, first_cost: float, model: str, tier: int,
               cost: float) -> str:
    """What the answer from a stronger model cost, and the difference to the first one's."""
    diff = cost - first_cost
    if abs(diff) < 1e-12:
        compare = f"the same as the first answer's {money(first_cost)}"
    else:
        compare = (f"{money(abs(diff))} {'more' if diff > 0 else 'less'} than the first "
                   f"answer's {money(first_cost)}")
    return (f":arrow_up: Asked again on *{escape(model)}* (tier {tier}; the first answer was "
            f"by *{escape(first)}*, tier {first_tier}): this answer cost {money(cost)}, "
            f"{compare}.")


def _period(title: str, summary: dict[str, Any]) -> str:
    latency = summary.get("latency_ms") or {}
    requests = summary.get("requests", 0)
    rate = summary.get("ok", 0) / requests if requests else None
    return (f"*{title}*\n{money(summary.get('spend_usd', 0.0))} spent\n"
            f"{requests:,} request{'' if requests == 1 else 's'}, {percent(rate)} ok\n"
            f"p50 {millis(latency.get('p50'))} \u00b7 p95 {millis(latency.get('p95'))}")


def model_table(summary: dict[str, Any], rows: int = TABLE_ROWS) -> str:
    """The per-model figures of a stats summary (``plugins/stats.py``) as a code table: calls,
    success, spend, p50 and p95; the first ``rows`` models, the rest counted."""
    by_model = summary.get("by_model") or []
    if not by_model:
        return "_No calls recorded._"
    table = code_table(("model", "calls", "ok", "spend", "p50", "p95"),
                       [(m.get("model") or "(none)", f"{m['attempts']:,}",
                         percent(m.get("success_rate")), money(m.get("spend_usd") or 0.0),
                         millis(m.get("p50_ms")), millis(m.get("p95_ms")))
                        for m in by_model[:rows]])
    more = len(by_model) - rows
    return table + (f"\n_and {more} more_" if more > 0 else "")


def stats_blocks(today: dict[str, Any], week: dict[str, Any]) -> list[dict[str, Any]]:
    """The ``/turnout stats`` message for two summaries of the request log (``plugins/stats.py``,
    today since 00:00 UTC and the last 7 days): spend, requests, success and latency of each,
    then success, spend and latency by model. The chart is uploaded after it
    (:func:`chart_upload`)."""
    return [
        {"type": "header", "text": {"type": "plain_text", "text": "Turnout stats"}},
        {"type": "section", "fields": [{"type": "mrkdwn", "text": _period("Today (UTC)", today)},
                                       {"type": "mrkdwn", "text": _period("Last 7 days", week)}]},
        {"type": "section", "text": {"type": "mrkdwn",
                                     "text": "*By model, today*\n" + model_table(today)}},
        {"type": "section", "text": {"type": "mrkdwn",
                                     "text": "*By model, last 7 days*\n" + model_table(week)}},
        {"type": "context", "elements": [{"type": "mrkdwn", "text":
            "Requests are counted once each, end to end; by model, every call counts "
            "(retries and fallbacks included)."}]},
    ]


def chart_series(summary: dict[str, Any], rows: int = TABLE_ROWS) -> tuple[str, list[tuple[str, float]]]:
    """What the stats chart shows of ``summary``: ``("spend", [(model, usd)...])`` by spend,
    or ``("calls", ...)`` when nothing cost anything; the first ``rows`` models, largest first."""
    by_model = [m for m in summary.get("by_model") or [] if m.get("attempts")]
    if any((m.get("spend_usd") or 0) > 0 for m in by_model):
        ranked = sorted(by_model, key=lambda m: (-(m.get("spend_usd") or 0.0), m.get("model") or ""))
        return "spend", [(m.get("model") or "(none)", float(m.get("spend_usd") or 0.0))
                         for m in ranked[:rows]]
    ranked = sorted(by_model, key=lambda m: (-m["attempts"], m.get("model") or ""))
    return "calls", [(m.get("model") or "(none)", float(m["attempts"])) for m in ranked[:rows]]


def chart_upload(summary: dict[str, Any], channel: str) -> dict[str, Any]:
    """The upload of the stats chart of ``summary`` (the last 7 days) into ``channel``: the
    arguments of ``files_upload_v2`` (``files.getUploadURLExternal``, then
    ``files.completeUploadExternal``) but the file itself. The chart is
    :func:`turnout.plugins.charts.stats_png` of the week per day; the alt text says what it
    shows and the week's figures: each model's total, and the requests' p50 and p95 latency."""
    what, series = chart_series(summary)
    figures = ", ".join(f"{name} {money(value) if what == 'spend' else f'{value:,.0f}'}"
                        for name, value in series)
    latency = summary.get("latency_ms") or {}
    return {"filename": CHART_FILENAME, "title": f"{what.capitalize()} by model, last 7 days",
            "alt_txt": (f"Bar chart of {what} by model per day over the last 7 days, stacked; "
                        f"in all: {figures}. Below it, the p50, p95 and p99 latency of each "
                        f"day's requests (over the week: p50 {millis(latency.get('p50'))}, "
                        f"p95 {millis(latency.get('p95'))})")[:1000],
            "channel": channel}


def _scope(entry: dict[str, Any]) -> str:
    scope, match = entry.get("scope"), entry.get("match")
    return "global" if scope == "global" else \
        f"{scope} {match}" if match else f"each {scope}"


def budget_lines(budgets: list[dict[str, Any]]) -> list[str]:
    """Each budget (``Admin.show()``'s entries, or ``Budgets.remaining()``'s) as a mrkdwn line:
    who it is for, a text bar of what is spent, spent and left of the limit, when it resets."""
    lines = []
    for entry in budgets:
        limit = float(entry.get("limit_usd") or 0.0)
        name = f"*{escape(str(entry.get('window', 'day')))} budget of {escape(_scope(entry))}*"
        spent = entry.get("spent_usd")
        if spent is None:
            lines.append(f"{name}: {money(limit)} for each one, counted apart (no single "
                         "figure)")
            continue
        left = entry.get("left_usd")
        left = max(limit - spent, 0.0) if left is None else left
        line = (f"{name}  `{bar(spent / limit if limit else 1.0)}` {money(spent)} of "
                f"{money(limit)} spent, {money(left)} left")
        if entry.get("resets_at"):
            line += f" \u00b7 resets {escape(str(entry['resets_at']))}"
        lines.append(line)
    return lines


def rate_limit_lines(rate_limits: list[dict[str, Any]]) -> list[str]:
    """Each rate limit of ``Admin.show()`` as a mrkdwn line, with what its window counted."""
    return [f"*rate limit of {escape(_scope(entry))}*: {', '.join(rate_limit_usage(entry))}"
            for entry in rate_limits]


def models_text(models: list[Any]) -> str:
    """The models (``ModelProfile``) as a code table: name, provider, tier, prices (US dollars
    per million tokens) and context window, by tier then name."""
    ordered = sorted(models, key=lambda m: (m.tier, m.name))
    return code_table(("model", "provider", "tier", "in $/M", "out $/M", "context"),
                      [(m.name, m.provider, str(m.tier), f"{m.input_price:g}",
                        f"{m.output_price:g}", f"{m.context_window:,}") for m in ordered],
                      left=2)


def alert_lines(alerts: list[dict[str, Any]], now: float) -> list[str]:
    """Open alerts, numbered (what ``/turnout alerts ack N`` takes): severity, name, key,
    summary, since when, and who acknowledged or muted it."""
    lines = []
    for n, alert in enumerate(alerts, 1):
        mark = _SEVERITY.get(str(alert.get("severity")), ":warning:")
        line = (f"{n}. {mark} *{escape(str(alert.get('name') or '-'))}* "
                f"`{escape(str(alert.get('key')))}`")
        if alert.get("summary"):
            line += f"\n      {escape(str(alert['summary']))}"
        notes = []
        if alert.get("started_at"):
            notes.append(f"since {utc(float(alert['started_at']))}")
        if alert.get("acked_by"):
            notes.append(f"acknowledged by {who(alert['acked_by'])}")
        if float(alert.get("muted_until") or 0.0) > now:
            notes.append(f"muted until {utc(float(alert['muted_until']))}")
        if notes:
            line += "\n      " + " \u00b7 ".join(notes)
        lines.append(line)
    return lines


def _sections(title: str, lines: list[str], empty: str) -> list[dict[str, Any]]:
    return section_blocks(f"*{title}*\n" + ("\n".join(lines) if lines else f"_{empty}_"))


def home_view(today: dict[str, Any] | None, budgets: list[dict[str, Any]],
              alerts: list[dict[str, Any]], now: float, *, note: str | None = None,
              top: int = 5) -> dict[str, Any]:
    """The App Home tab: spend today (or ``note`` on why it is unknown), budgets as bars, the
    ``top`` models of today by spend, open alerts."""
    if today is not None:
        latency = today.get("latency_ms") or {}
        spend = (f"*Spend today (UTC)*: {money(today.get('spend_usd', 0.0))} over "
                 f"{today.get('requests', 0):,} requests \u00b7 p95 "
                 f"{millis(latency.get('p95'))}")
        ranked = sorted(today.get("by_model") or [],
                        key=lambda m: (-(m.get("spend_usd") or 0.0), -m["attempts"]))
        models = model_table({"by_model": ranked}, rows=top)
    else:
        spend = f"*Spend today (UTC)*: _{escape(note or 'unknown')}_"
        models = "_No request log to read._"
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": "Turnout"}},
        {"type": "section", "text": {"type": "mrkdwn", "text": spend}},
        {"type": "divider"},
        *_sections("Budgets", budget_lines(budgets), "No budgets with a single figure."),
        {"type": "divider"},
        *section_blocks("*Top models today*\n" + models),
        {"type": "divider"},
        *_sections("Open alerts", alert_lines(alerts, now), "None open."),
        {"type": "context", "elements": [{"type": "mrkdwn", "text":
            f"Updated {utc(now)} \u00b7 `/turnout help` lists the commands"}]},
    ]
    return {"type": "home", "blocks": blocks}
