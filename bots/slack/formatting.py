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
:func:`footer_blocks`, the context line (model, route, strategy, cost, latency). Interactive
parts (buttons under an answer) belong at the end of :func:`footer_blocks`.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from turnout.kernel.types import Answer

SECTION_CHARS = 3000
"""Most characters of a section block's text."""

MESSAGE_CHARS = 40_000
"""Most characters of a message's text."""

STREAM_MESSAGE_CHARS = 12_000
"""Most Markdown characters streamed into one message (Slack's cap on a message's Markdown);
a longer answer continues in another message of the thread."""

CONTEXT_BLOCK_ID = "turnout_context"
"""The ``block_id`` of an answer's context line."""

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


def footer_blocks(answer: Answer) -> list[dict[str, Any]]:
    """The blocks under an answer's text: the context line. (Buttons go here, after it.)"""
    return [context_block(answer)]


def answer_blocks(markdown: str, answer: Answer) -> list[dict[str, Any]]:
    """A whole answer as one message's blocks: its text (Markdown, converted) in sections,
    then :func:`footer_blocks`. An answer too long for one message is cut with
    :func:`split_text` first, and only its last piece gets the footer."""
    return section_blocks(to_mrkdwn(markdown)) + footer_blocks(answer)


def notice(message: str) -> str:
    """A short notice in a thread (a refusal, a failure) as mrkdwn: a warning sign and the
    message, escaped."""
    return f":warning: {escape(message.strip())}"
