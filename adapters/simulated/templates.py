"""JSON replies to prompts that spell out the reply's shape, as judges, critics and classifiers ask.

A prompt that mentions JSON and writes a template such as
``{"score": <integer 1-10>, "feedback": "<what to change>"}`` gets that object back, filled
plausibly and deterministically from the prompt:

- a number with a stated range (``<integer 1-10>``) stays in it. When the prompt shows answers to
  judge (sections headed ``Answer 2:``, ``The draft answer:``), a key that picks one
  (``<the number of the best answer, 1-3>``) names the best of them and any other number is a
  rating of the judged text; else the number follows numbered lines of the prompt that match its
  subject (``3: moderate: ...``) or, failing that, the subject's length.
- a string offered from a set (``"<a|b>"``, or ``"<one task type>"`` beside a ``- name: ...``
  list headed with those words) is the option that best matches the subject; other strings are
  a sentence from the prompt's words.

A rating reads the judged text (its length, how many of the question's words it covers,
hedging); the judging model's ``quality`` sets how closely the score follows that, and a poor
draw of the dice scores at random and picks another answer, so a weak judge is visibly weak.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from .schemas import digest

_PAIR = re.compile(r'"([^"\n]{1,60})"\s*:\s*(<[^<>\n]*>|"<[^<>\n]*>"|"(?:[^"\\\n]|\\.)*"|'
                   r'-?\d+(?:\.\d+)?|true|false|null)')
_SPAN = re.compile(r"\{[^{}]*\}")
_RANGE = re.compile(r"(-?\d+(?:\.\d+)?)\s*(?:-|–|to|\.\.)\s*(-?\d+(?:\.\d+)?)")
_HEADING = re.compile(r"^[ \t]*([A-Z][^\n]{0,70}?):[ \t]*(?:\n|$)", re.M)
_JUDGED = re.compile(r"\b(answer|draft|response|reply|completion|output|candidate)s?\b", re.I)
_ASKED = re.compile(r"\b(conversation|question|message|prompt|request|task|rubric)s?\b", re.I)
_MARKED = re.compile(r"<<<\s*\w*\s*\n(.*?)\n\s*\w*\s*>>>", re.S)
_BULLET = re.compile(r"^[ \t]*[-*•][ \t]+([A-Za-z][\w .'-]{0,40}?)[ \t]*(?::[ \t]+(.*))?$")
_NUMBERED = re.compile(r"^[ \t]*(\d+)[ \t]*[:.)][ \t]+(\S.*)$", re.M)
_HEDGE = re.compile(r"hard to say|not sure|look it up|i don'?t know|cannot help|no idea", re.I)
_PICK = re.compile(r"\b(best|which|pick|choice|chosen|index|winner|preferred)\b|number of the", re.I)
_WORD = re.compile(r"[A-Za-z][A-Za-z0-9'_-]{2,}")
_ROLES = frozenset({"user", "assistant", "system", "tool"})
_COMMON = frozenset("the and for with that this from into are was were what which how its not "
                    "but you your can all any one has have get".split())


@dataclass(slots=True)
class Slot:
    """One key of a template: its literal value, or its placeholder's text and kind."""

    key: str
    placeholder: str | None
    quoted: bool
    literal: Any = None


def template_in(text: str) -> tuple[list[Slot], int] | None:
    """The reply template of a prompt that asks for JSON: its slots and where it starts; the
    last object with ``<...>`` placeholders, None when the prompt has none or never says JSON."""
    if not re.search(r"\bJSON\b", text, re.I):
        return None
    found = None
    for span in _SPAN.finditer(text):
        slots = [_slot(key, raw) for key, raw in _PAIR.findall(span.group())]
        if slots and any(s.placeholder is not None for s in slots):
            found = (slots, span.start())
    return found


def _slot(key: str, raw: str) -> Slot:
    if raw.startswith("<"):
        return Slot(key, raw[1:-1], False)
    if raw.startswith('"<'):
        return Slot(key, raw[2:-2], True)
    import json
    return Slot(key, None, raw.startswith('"'), json.loads(raw))


def keywords(text: str, limit: int = 8, stop: frozenset[str] = frozenset()) -> list[str]:
    """The distinct content words of ``text`` (lower case), in order."""
    seen: dict[str, None] = {}
    for word in _WORD.findall(text):
        low = word.lower()
        if low not in stop and low not in _ROLES:
            seen.setdefault(low, None)
    return list(seen)[:limit]


class Reading:
    """What a prompt shows around its template: the judged texts, the question and the subject."""

    def __init__(self, prompt: str, stop: frozenset[str]) -> None:
        self.stop = stop
        body = prompt[: prompt.rfind("\n\n")] if "\n\n" in prompt else prompt
        self.body = body
        self.sections = _sections(body)
        self.judged = [text for head, text in self.sections if _JUDGED.search(head)
                       and not _ASKED.search(head)]
        asked = [text for head, text in self.sections if _ASKED.search(head)]
        marked = _MARKED.findall(body)
        self.subject = "\n".join(marked) or "\n".join(asked) or body
        self.question = keywords("\n".join(asked) or self.subject, 10, stop)

    def merit(self, text: str) -> float:
        """How good a judged text looks, 0..1: detail, the question's words covered, hedging."""
        words = len(text.split())
        present = set(keywords(text, 400, self.stop))
        coverage = (sum(w in present for w in self.question) / len(self.question)
                    if self.question else 0.5)
        value = 0.15 + 0.45 * coverage + 0.4 * min(1.0, words / 150)
        if _HEDGE.search(text) or words < 4:
            value -= 0.5
        return min(max(value, 0.0), 1.0)


def _sections(text: str) -> list[tuple[str, str]]:
    """``(heading, body)`` for each ``Heading:`` line that starts a paragraph."""
    starts = [m for m in _HEADING.finditer(text)
              if m.start() == 0 or text[max(0, m.start() - 2): m.start()].endswith("\n\n")
              or text[: m.start()].endswith("\n\n")]
    out = []
    for i, match in enumerate(starts):
        end = starts[i + 1].start() if i + 1 < len(starts) else len(text)
        out.append((match.group(1), text[match.end(): end].strip()))
    return out


def fill(slots: list[Slot], prompt: str, start: int, model: str, quality: float, good: bool,
         stop: frozenset[str]) -> dict[str, Any]:
    """The filled template: see the module's docstring."""
    reading = Reading(prompt[:start], stop)
    seed = f"{model}\x00{prompt}"
    merits = [reading.merit(t) for t in reading.judged]
    best = max(range(len(merits)), key=merits.__getitem__) if merits else 0
    if not good and len(merits) > 1:
        best = (best + 1 + digest("other", seed) % (len(merits) - 1)) % len(merits)
    merit = merits[best] if merits else None
    out: dict[str, Any] = {}
    for slot in slots:
        if slot.placeholder is None:
            out[slot.key] = slot.literal
        elif slot.quoted:
            out[slot.key] = _text(slot, prompt[:start], reading, merit, seed, good)
        else:
            out[slot.key] = _number(slot, prompt[:start], reading, merit, best, seed, quality,
                                    good, len(merits))
    return out


def _number(slot: Slot, prompt: str, reading: Reading, merit: float | None, best: int, seed: str,
            quality: float, good: bool, shown: int) -> Any:
    hint = f"{slot.key} {slot.placeholder}"
    if re.search(r"\bboolean\b|\btrue\b|\bfalse\b", hint, re.I):
        return (merit if merit is not None else 0.5) >= 0.5
    found = _RANGE.search(slot.placeholder or "")
    low, high = (float(found.group(1)), float(found.group(2))) if found else (1.0, 10.0)
    whole = bool(re.search(r"\bint(eger)?\b", hint, re.I)) or (
        found is not None and "." not in found.group() and high - low >= 2
        and not re.search(r"float|decimal|fraction|probability", hint, re.I))
    if shown and _PICK.search(hint) and low <= 1 and shown <= high:
        value = float(best + 1) if low >= 1 else float(best)
    elif merit is not None:
        jitter = (digest("jitter", seed) % 1000 / 1000 - 0.5) * (1.0 - quality) * 0.4
        share = merit + jitter if good else digest("random", seed) % 1000 / 999
        value = low + (high - low) * min(max(share, 0.0), 1.0)
    else:
        value = low + (high - low) * _level(slot, prompt, reading, low, high)
    return int(round(value)) if whole else round(value, 2)


def _level(slot: Slot, prompt: str, reading: Reading, low: float, high: float) -> float:
    """Where a number with no judged text sits in its range, 0..1: the numbered line of the
    prompt whose words the subject shares most, else the subject's length."""
    subject = _stems(reading.subject)
    lines = [(float(n), _stems(doc))
             for n, doc in _NUMBERED.findall(prompt) if low <= float(n) <= high]
    scored = [(len(words & subject), n) for n, words in lines]
    if scored and max(scored)[0] > 0:
        top = max(s for s, _ in scored)
        return (min(n for s, n in scored if s == top) - low) / max(high - low, 1)
    return min(1.0, len(reading.subject.split()) / 120)


def _text(slot: Slot, prompt: str, reading: Reading, merit: float | None, seed: str,
          good: bool) -> str:
    placeholder = slot.placeholder or ""
    options = [o.strip() for o in placeholder.split("|")] if "|" in placeholder else \
        _listed(prompt, f"{slot.key} {placeholder}")
    if options:
        return _closest(options, reading, seed, good)
    words = reading.question or keywords(reading.subject, 6, reading.stop) or ["the topic"]
    judged = set(keywords("\n".join(reading.judged), 400, reading.stop))
    missing = [w for w in words if w not in judged][:3]
    if merit is None:
        return f"About {', '.join(words[:3])} (simulated)."
    if re.search(r"feedback|advice|suggest|improve|change|fix", f"{slot.key} {placeholder}", re.I):
        more = f"cover {', '.join(missing)}, " if missing else ""
        return (f"Go into more depth: {more}give a concrete example and explain how "
                f"{' and '.join(words[:2])} relate (simulated review).")
    return (f"It addresses {', '.join(w for w in words[:3] if w in judged) or 'little of the question'}"
            f"{'; it misses ' + ', '.join(missing) if missing else ''} (simulated).")


def _listed(prompt: str, hint: str) -> list[str]:
    """The labels of the ``- name: ...`` list whose heading shares a word with ``hint``."""
    wanted = set(keywords(hint, 20)) - {"one", "the"}
    lists: list[tuple[str, list[str]]] = []
    heading, current = "", []
    for line in prompt.splitlines():
        match = _BULLET.match(line)
        if match:
            current.append(match.group(1).strip())
            continue
        if current:
            lists.append((heading, current))
            current = []
        heading = line
    if current:
        lists.append((heading, current))
    for head, labels in lists:
        if len(labels) > 1 and wanted & {w.rstrip("s") for w in keywords(head, 20)} | (
                wanted & set(keywords(head, 20))):
            return labels
    return []


def _closest(options: list[str], reading: Reading, seed: str, good: bool) -> str:
    """The option whose words (and description in the prompt) the subject shares most; ties by a
    stable pick; a poor draw takes the next one."""
    subject = _stems(reading.subject)
    scores = [len(subject & (_stems(o) | _description(o, reading))) for o in options]
    top = max(scores)
    tied = [i for i, s in enumerate(scores) if s == top]
    pick = tied[digest("option", reading.subject) % len(tied)] if top else \
        digest("option", seed) % len(options)
    if not good and len(options) > 1:
        pick = (pick + 1) % len(options)
    return options[pick]


def _stems(text: str) -> set[str]:
    """Crude stems (the first five letters) of the words of ``text``, common words left out."""
    return {w[:5] for w in keywords(text, 400, _COMMON)}


def _description(option: str, reading: Reading) -> set[str]:
    found = re.search(rf"^[ \t]*[-*•][ \t]+{re.escape(option)}[ \t]*:[ \t]+(.*)$",
                      reading.body, re.M)
    return _stems(found.group(1)) if found else set()
