"""The prompt suite of ``turnout bench models``: six prompts for each of the seven task types of
:data:`turnout.kernel.labels.TASKS`, each with its automatic check and a reference answer.

A check is a list of the gateway's own validators with their settings (``regex``, ``length``,
``labels``, ``code``; see :mod:`turnout.plugins.validators`), all of which must pass; an
extraction prompt's check is the ``json`` validator (:mod:`turnout.plugins.json_validator`)
against a stricter schema than the one sent, whose ``const`` values and patterns hold the right
answer. How each task type is judged:

- code: the answer's first ```python block passes the prompt's unit tests (``code``, in the
  sandbox);
- math, and reasoning with a numeric answer: the last number in the answer is the right one
  (``regex``, see :func:`number`);
- reasoning with a word answer: the answer is that word (``labels``, punctuation ignored);
- extraction: JSON of the schema sent, holding the right values (``json``);
- translation: the words a right translation contains (``regex``, see :func:`words`);
- creative and chat: length and format constraints (``length``, ``regex``) and no non-answer
  (:data:`NON_ANSWER`).

An answer that repeats the prompt passes no code, math, reasoning, extraction or translation
check: no right answer is written in its prompt. The ``reference`` of an item is an answer that
passes its check, so the suite tests itself.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

Check = tuple[str, dict[str, Any] | None]
"""One validator of an item's check: its registered name and its settings."""

NON_ANSWER = (r"\b(?:hard to say|look it up|I (?:can(?:'|no)t|am unable to|'m unable to) "
              r"(?:help|answer|do that))\b")
"""A hedge or refusal instead of an answer; creative and chat answers must not contain one."""


@dataclass(frozen=True, slots=True)
class Item:
    """One prompt of the suite, the check its answer must pass, and an answer that passes."""

    id: str
    task: str
    prompt: str
    checks: tuple[Check, ...]
    reference: str
    schema: dict[str, Any] | None = None
    """Extraction: the JSON Schema sent as ``response_format`` (the check's is stricter)."""
    max_tokens: int = 800


# --- check builders ----------------------------------------------------------------------------


def number(value: int) -> Check:
    """The last number in the answer is ``value`` (thousands may be separated by commas; a
    trailing ``.0`` is accepted)."""
    digits = str(abs(value))
    groups = []
    while digits:
        groups.insert(0, digits[-3:])
        digits = digits[:-3]
    body = ",?".join(groups)
    sign = "-" if value < 0 else ""
    return ("regex", {"pattern": rf"(?<![\d.,-]){sign}{body}(?:\.0+)?(?!\d)(?!.*\d)",
                      "flags": "s"})


def words(*alternatives: str) -> Check:
    """Every one of ``alternatives`` is in the answer, as a whole word, ignoring case; each is a
    regular expression (``dort|sommeille``)."""
    pattern = "".join(rf"(?=.*\b(?:{a})\b)" for a in alternatives)
    return ("regex", {"pattern": pattern, "flags": "is"})


def label(*allowed: str) -> Check:
    """The whole answer is one of ``allowed``, ignoring case and punctuation around it."""
    return ("labels", {"labels": list(allowed), "strip_punctuation": True})


def pattern(expression: str, flags: str = "", must_match: bool = True) -> Check:
    return ("regex", {"pattern": expression, "flags": flags, "must_match": must_match})


def length(**bounds: int) -> Check:
    return ("length", dict(bounds))


def lines(count: int) -> Check:
    """Exactly ``count`` non-empty lines."""
    line = r"[ \t]*\S[^\n]*"
    return pattern(rf"^\s*{line}(?:\n\s*{line}){{{count - 1}}}\s*$")


def code(tests: str) -> Check:
    return ("code", {"tests": tests, "timeout_s": 10})


def answered() -> Check:
    return pattern(NON_ANSWER, "i", must_match=False)


def _ci(text: str) -> str:
    """``text`` as an anchored, case-insensitive JSON Schema pattern (ECMA regex has no flags)."""
    out = "".join(f"[{c.lower()}{c.upper()}]" if c.isalpha() else re.escape(c) for c in text)
    return rf"^\s*{out}\s*$"


def extraction(item_id: str, prompt: str, expected: dict[str, Any],
               enums: dict[str, list[str]] | None = None) -> Item:
    """An extraction item: the schema sent types every field of ``expected`` (all required);
    the check's schema also pins each to its expected value (strings ignoring case and
    surrounding spaces)."""
    sent: dict[str, Any] = {}
    strict: dict[str, Any] = {}
    for key, value in expected.items():
        if isinstance(value, bool):
            kind: dict[str, Any] = {"type": "boolean"}
        elif isinstance(value, int):
            kind = {"type": "integer"}
        elif isinstance(value, list):
            kind = {"type": "array", "items": {"type": "string"}}
        else:
            kind = {"type": "string"}
        if enums and key in enums:
            kind = {**kind, "enum": enums[key]}
        sent[key] = kind
        strict[key] = {**kind, "pattern": _ci(value)} if isinstance(value, str) else \
            {**kind, "const": value}
    required = list(expected)

    def schema(properties: dict[str, Any]) -> dict[str, Any]:
        return {"type": "object", "properties": properties, "required": required,
                "additionalProperties": False}

    return Item(item_id, "extraction", prompt, (("json", {"schema": schema(strict)}),),
                json.dumps(expected), schema=schema(sent))


# --- the suite ---------------------------------------------------------------------------------

FINAL = " Reply with the final number only."

CODE = [
    Item("code-1", "code", "Write a Python function `is_palindrome(text)` that returns True when "
         "`text` reads the same forwards and backwards, ignoring case and every character that "
         "is not a letter or a digit. Reply with the code in one ```python block.",
         (code("assert is_palindrome('A man, a plan, a canal: Panama')\n"
               "assert not is_palindrome('race a car')\nassert is_palindrome('')\n"
               "assert is_palindrome('No lemon, no melon')\n"),),
         "```python\ndef is_palindrome(text):\n    s = [c.lower() for c in text if c.isalnum()]\n"
         "    return s == s[::-1]\n```", max_tokens=1200),
    Item("code-2", "code", "Write a Python function `fizzbuzz(n)` that returns a list of strings "
         "for the numbers 1 to n: 'Fizz' for multiples of 3, 'Buzz' for multiples of 5, "
         "'FizzBuzz' for multiples of both, else the number itself. Reply with the code in one "
         "```python block.",
         (code("assert fizzbuzz(5) == ['1', '2', 'Fizz', '4', 'Buzz']\n"
               "assert fizzbuzz(15)[-1] == 'FizzBuzz'\nassert len(fizzbuzz(30)) == 30\n"
               "assert fizzbuzz(0) == []\n"),),
         "```python\ndef fizzbuzz(n):\n    out = []\n    for i in range(1, n + 1):\n"
         "        word = ('Fizz' if i % 3 == 0 else '') + ('Buzz' if i % 5 == 0 else '')\n"
         "        out.append(word or str(i))\n    return out\n```", max_tokens=1200),
    Item("code-3", "code", "Write a Python function `merge_intervals(intervals)` that takes a "
         "list of [start, end] pairs and returns the overlapping ones merged, sorted by start, "
         "as a list of [start, end] lists. Intervals that touch (end == next start) are merged. "
         "Reply with the code in one ```python block.",
         (code("assert merge_intervals([[1, 3], [2, 6], [8, 10], [15, 18]]) == "
               "[[1, 6], [8, 10], [15, 18]]\n"
               "assert merge_intervals([[1, 4], [4, 5]]) == [[1, 5]]\n"
               "assert merge_intervals([[5, 7], [1, 2]]) == [[1, 2], [5, 7]]\n"
               "assert merge_intervals([]) == []\n"),),
         "```python\ndef merge_intervals(intervals):\n    out = []\n"
         "    for start, end in sorted(intervals):\n        if out and start <= out[-1][1]:\n"
         "            out[-1][1] = max(out[-1][1], end)\n        else:\n"
         "            out.append([start, end])\n    return out\n```", max_tokens=1200),
    Item("code-4", "code", "Write a Python function `roman_to_int(s)` that converts a Roman "
         "numeral (I, V, X, L, C, D, M, with subtractive pairs such as IV and CM) to an integer. "
         "Reply with the code in one ```python block.",
         (code("assert roman_to_int('III') == 3\nassert roman_to_int('LVIII') == 58\n"
               "assert roman_to_int('MCMXCIV') == 1994\nassert roman_to_int('XLIX') == 49\n"),),
         "```python\ndef roman_to_int(s):\n"
         "    v = {'I': 1, 'V': 5, 'X': 10, 'L': 50, 'C': 100, 'D': 500, 'M': 1000}\n"
         "    total = 0\n    for a, b in zip(s, s[1:] + ' '):\n"
         "        total += -v[a] if b != ' ' and v[b] > v[a] else v[a]\n    return total\n```",
         max_tokens=1200),
    Item("code-5", "code", "Write a Python function `flatten(nested)` that takes a list whose "
         "items are numbers or lists nested to any depth and returns a flat list of the numbers "
         "in order. Reply with the code in one ```python block.",
         (code("assert flatten([1, [2, [3, [4]], 5]]) == [1, 2, 3, 4, 5]\n"
               "assert flatten([]) == []\nassert flatten([[[]], [6]]) == [6]\n"),),
         "```python\ndef flatten(nested):\n    out = []\n    for x in nested:\n"
         "        out.extend(flatten(x) if isinstance(x, list) else [x])\n    return out\n```",
         max_tokens=1200),
    Item("code-6", "code", "Write a Python function `second_largest(numbers)` that returns the "
         "second largest distinct value of a list of numbers, or None when there are fewer than "
         "two distinct values. Reply with the code in one ```python block.",
         (code("assert second_largest([3, 1, 4, 4, 2]) == 3\n"
               "assert second_largest([7, 7]) is None\nassert second_largest([]) is None\n"
               "assert second_largest([-2, -5]) == -5\n"),),
         "```python\ndef second_largest(numbers):\n    values = sorted(set(numbers))\n"
         "    return values[-2] if len(values) >= 2 else None\n```", max_tokens=1200),
]

MATH = [
    Item("math-1", "math", "What is 17 × 23?" + FINAL, (number(391),), "391"),
    Item("math-2", "math", "A shop sells pens at 3 for $2. How much do 27 pens cost, in "
         "dollars?" + FINAL, (number(18),), "They cost $18."),
    Item("math-3", "math", "Solve for x: 4x - 7 = 29." + FINAL, (number(9),), "x = 9"),
    Item("math-4", "math", "What is the sum of the integers from 1 to 100?" + FINAL,
         (number(5050),), "5,050"),
    Item("math-5", "math", "A rectangle has a perimeter of 46 cm and a width of 8 cm. What is "
         "its area in square centimetres?" + FINAL, (number(120),), "120"),
    Item("math-6", "math", "What is the greatest common divisor of 84 and 126?" + FINAL,
         (number(42),), "42"),
    Item("math-7", "math", "What is 15% of 240?" + FINAL, (number(36),), "36"),
]

REASONING = [
    Item("reasoning-1", "reasoning", "All bloops are razzies and all razzies are lazzies. Are "
         "all bloops definitely lazzies? Answer yes or no only.", (label("yes"),), "Yes."),
    Item("reasoning-2", "reasoning", "Tom is taller than Ann. Ann is taller than Raj. Who is the "
         "shortest of the three? Answer with the name only.", (label("Raj"),), "Raj"),
    Item("reasoning-3", "reasoning", "If it takes 5 machines 5 minutes to make 5 widgets, how "
         "many minutes would it take 100 machines to make 100 widgets?" + FINAL, (number(5),),
         "5"),
    Item("reasoning-4", "reasoning", "A bat and a ball cost $1.10 in total. The bat costs $1.00 "
         "more than the ball. How many cents does the ball cost?" + FINAL, (number(5),),
         "5 cents"),
    Item("reasoning-5", "reasoning", "Which is heavier: a kilogram of feathers or a kilogram of "
         "steel? Answer with one word: feathers, steel, or same.", (label("same"),), "Same."),
    Item("reasoning-6", "reasoning", "If today is Wednesday, what day of the week will it be 10 "
         "days from now? Answer with the day's name only.", (label("Saturday"),), "Saturday"),
]

EXTRACTION = [
    extraction("extraction-1", "Extract the person's name and birth year as JSON (keys name, "
               "year): \"Ada Lovelace, born in 1815, wrote the first published algorithm.\"",
               {"name": "Ada Lovelace", "year": 1815}),
    extraction("extraction-2", "Extract the invoice as JSON (keys invoice_id, vendor, due_date "
               "as YYYY-MM-DD, total as a whole number of euros): \"Invoice INV-2291 from "
               "Northwind Traders is due on 15 July 2024 for a total of 1,480 euros.\"",
               {"invoice_id": "INV-2291", "vendor": "Northwind Traders",
                "due_date": "2024-07-15", "total": 1480}),
    extraction("extraction-3", "Classify the sentiment of this review as JSON (key sentiment: "
               "positive, negative or neutral): \"The battery died after two days and support "
               "never answered my emails.\"", {"sentiment": "negative"},
               enums={"sentiment": ["positive", "negative", "neutral"]}),
    extraction("extraction-4", "Extract the contact as JSON (keys name, email): \"For the "
               "workshop, write to our coordinator, Maria Gonzalez, at "
               "m.gonzalez@example.org before Friday.\"",
               {"name": "Maria Gonzalez", "email": "m.gonzalez@example.org"}),
    extraction("extraction-5", "List every city mentioned, in the order they appear, as JSON "
               "(key cities, a list of names): \"We flew from Lisbon to Oslo, then took the night "
               "train to Stockholm.\"", {"cities": ["Lisbon", "Oslo", "Stockholm"]}),
    extraction("extraction-6", "Extract the meeting as JSON (keys day, room, attendees as a "
               "number): \"Let's meet on Friday in room B12 with all four of the design leads "
               "to review the budget.\"", {"day": "Friday", "room": "B12", "attendees": 4}),
]

CREATIVE = [
    Item("creative-1", "creative", "Write a haiku about autumn rain. Reply with its three lines "
         "only.", (lines(3), length(max_chars=200), answered()),
         "Cold rain on red leaves\nthe gutter hums an old tune\nsummer washes out"),
    Item("creative-2", "creative", "Write a two-sentence horror story set in a lighthouse.",
         (length(min_chars=60, max_chars=500), pattern(r"lighthouse", "i"), answered()),
         "The lighthouse keeper counted the ships that passed each night. Last night he counted "
         "one more light than there were ships, and it was coming up the stairs."),
    Item("creative-3", "creative", "Write a slogan for a reusable water bottle. Reply with the "
         "slogan only, on one line, in at most twelve words.",
         (pattern(r"^\s*[^\n]{3,100}\s*$"), answered()), "Refill the bottle, not the landfill."),
    Item("creative-4", "creative", "Write a limerick about a cat who learns to code. Reply with "
         "its five lines only.", (lines(5), length(max_chars=400), answered()),
         "A cat with a taste for the keys\nwrote loops with remarkable ease;\nshe'd purr at a "
         "bug,\nthen curl on the rug,\nand ship it whenever she'd please."),
    Item("creative-5", "creative", "Write a short birthday toast for a friend named Priya, in 40 "
         "to 80 words.", (length(min_chars=150, max_chars=700), pattern(r"\bPriya\b"),
                          answered()),
         "To Priya, who remembers everyone's birthday but somehow forgets her own: may this year "
         "bring you as much warmth as you bring to every room you walk into, as many adventures "
         "as you have stories, and friends who are half as kind as you are. Happy birthday!"),
    Item("creative-6", "creative", "Write an acrostic poem whose lines start with the letters of "
         "the word RAIN, in order. Reply with the four lines only.",
         (pattern(r"^\s*R[^\n]*\n\s*A[^\n]*\n\s*I[^\n]*\n\s*N[^\n]*\s*$"), answered()),
         "Rolling in from the grey sea\nAll the streets turn silver\nInside we light the lamps\n"
         "Nothing to do but listen"),
]

CHAT = [
    Item("chat-1", "chat", "Hi! Can you suggest three names for a golden retriever puppy? Keep "
         "it short.", (length(min_chars=15, max_chars=600), answered()),
         "Sure! Maple, Biscuit and Sunny."),
    Item("chat-2", "chat", "What's the capital of Australia? Answer in one sentence.",
         (pattern(r"\bCanberra\b"), length(max_chars=200), answered()),
         "The capital of Australia is Canberra."),
    Item("chat-3", "chat", "Thanks for your help today! Reply with a friendly goodbye of one "
         "sentence.", (pattern(r"^\s*[^\n]{5,200}\s*$"), answered()),
         "You're welcome, have a wonderful evening!"),
    Item("chat-4", "chat", "Give me two tips for falling asleep faster, as a bulleted list.",
         (pattern(r"^\s*(?:[-*•]|\d+[.)])\s+\S.*\n(?:.*\n)*?\s*(?:[-*•]|\d+[.)])\s+\S", "m"),
          length(max_chars=1200), answered()),
         "- Keep the same bedtime every night.\n- Put screens away an hour before bed."),
    Item("chat-5", "chat", "How many days are there in a leap year? Answer briefly.",
         (pattern(r"\b366\b"), length(max_chars=300), answered()), "A leap year has 366 days."),
    Item("chat-6", "chat", "Recommend a classic novel for a long train ride, and say why in one "
         "or two sentences.", (length(min_chars=40, max_chars=600), answered()),
         "Try Jane Austen's Pride and Prejudice: its sharp, funny dialogue makes the hours fly, "
         "and its short chapters are easy to pick up between stations."),
]

TRANSLATION = [
    Item("translation-1", "translation", "Translate into French: \"The cat is sleeping on the "
         "sofa.\" Reply with the translation only.",
         (words("chat", "dort|sommeille"),), "Le chat dort sur le canapé."),
    Item("translation-2", "translation", "Translate into Spanish: \"Where is the train "
         "station?\" Reply with the translation only.",
         (words("estaci[oó]n", "tren"),), "¿Dónde está la estación de tren?"),
    Item("translation-3", "translation", "Translate into German: \"I would like a glass of water, "
         "please.\" Reply with the translation only.",
         (words("Glas", "Wasser", "bitte"),), "Ich hätte gern ein Glas Wasser, bitte."),
    Item("translation-4", "translation", "Translate into Italian: \"Good morning, how are you?\" "
         "Reply with the translation only.",
         (words("buongiorno|buon giorno", "come"),), "Buongiorno, come stai?"),
    Item("translation-5", "translation", "Translate into Portuguese: \"The book is on the "
         "table.\" Reply with the translation only.",
         (words("livro", "mesa"),), "O livro está na mesa."),
    Item("translation-6", "translation", "Translate into English: \"Il pleut depuis ce matin.\" "
         "Reply with the translation only.",
         (words("rain(?:ing|ed|s)?", "morning"),), "It has been raining since this morning."),
]

SUITE: tuple[Item, ...] = (*CODE, *MATH, *REASONING, *EXTRACTION, *CREATIVE, *CHAT, *TRANSLATION)
"""Every item, grouped by task type."""

TASKS: tuple[str, ...] = ("code", "math", "reasoning", "extraction", "creative", "chat",
                          "translation")
"""The task types the suite covers, in the order the matrix lists them: the seven fixed task
types of :data:`turnout.kernel.labels.TASKS`."""


def items(tasks: list[str] | None = None) -> list[Item]:
    """The suite's items for ``tasks`` (every task type when None), in suite order."""
    wanted = set(tasks or TASKS)
    return [item for item in SUITE if item.task in wanted]
