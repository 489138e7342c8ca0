"""Reading a number out of a model's reply: a judge's score, a critic's score, a judge's pick.

Models asked for JSON answer with JSON alone, in a code fence, or inside prose; some write
``score: 8`` instead. :func:`read_number` finds the first JSON object in the reply that carries
the wanted key (the widest ``{...}`` span first, then each smallest one), else the ``key: n``
pattern. No hookimpls: a helper of the built-in plugins that ask models for verdicts.
"""

from __future__ import annotations

import re
from typing import Any

import orjson

_OBJECT = re.compile(r"\{.*?\}", re.DOTALL)


def read_number(text: str, key: str) -> tuple[float | None, dict[str, Any] | None] | None:
    """``(number, the JSON object it came from)`` for ``key`` in ``text``; the number is None
    when the object holds something that is not one (``"best": "the first"``), the object is
    None when the number came from a ``key: n`` pattern. None when ``key`` is nowhere."""
    start, end = text.find("{"), text.rfind("}")
    spans = [text[start:end + 1]] if 0 <= start < end else []
    for span in [*spans, *_OBJECT.findall(text)]:
        try:
            value = orjson.loads(span)
        except orjson.JSONDecodeError:
            continue
        if isinstance(value, dict) and key in value:
            return number(value[key]), value
    found = re.search(rf'"?{re.escape(key)}"?\s*[:=]\s*"?(?:answer\s*)?#?(\d+(?:\.\d+)?)', text,
                      re.IGNORECASE)
    return (float(found.group(1)), None) if found else None


def number(value: Any) -> float | None:
    """A JSON value as a number: ints and floats as they are, a string by its leading number
    (``"8/10"`` is 8, ``"answer 2"`` is 2); None for anything else (booleans included)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        found = re.search(r"\d+(?:\.\d+)?", value)
        return float(found.group()) if found else None
    return None


def text_of(found: dict[str, Any] | None, *keys: str) -> str:
    """The first of ``keys`` the object holds, as text ("" when none)."""
    for key in keys:
        value = (found or {}).get(key)
        if value:
            return value if isinstance(value, str) else str(value)
    return ""
