"""Deterministic instances of JSON Schemas, for the simulated fleet's structured answers.

:func:`instance` builds a value that validates against a schema as pydantic and OpenAI clients
write them: types, properties and ``required``, enums (the first value), ``const``, arrays with
``minItems``/``maxItems``/``uniqueItems``, nested objects, ``$defs``/``$ref``, ``anyOf``/``oneOf``
(the first branch), ``allOf`` (merged), string formats (date, email, uri, uuid, ...), ``pattern``,
lengths, and numbers within their bounds. Strings come from the words a :class:`Words` holds,
so answers echo the prompt. :func:`schema_in` finds a JSON Schema written into a prompt (a fenced
``json`` block or a bare object), as instructor's and LangChain's JSON modes send it.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import uuid
from typing import Any

MAX_DEPTH = 6
"""Below this nesting, optional parts are left out so recursive schemas end."""

_FORMATS = {
    "date": "2024-05-17", "date-time": "2024-05-17T09:30:00Z", "time": "09:30:00Z",
    "duration": "P3D", "ipv4": "192.0.2.17", "ipv6": "2001:db8::17", "hostname": "example.com",
    "idn-hostname": "example.com", "json-pointer": "/items/0", "regex": "^[a-z]+$",
}
_PROSE_KEYS = frozenset("description summary text content answer explanation reason reasoning "
                        "body message comment details detail notes note rationale "
                        "feedback justification".split())


def digest(*parts: str) -> int:
    """A stable hash (unlike ``hash``, the same in every process)."""
    return int.from_bytes(hashlib.sha256("\x00".join(parts).encode()).digest()[:8], "big")


class Words:
    """Where string values come from: the prompt's words in order (``words``), a sentence for
    prose fields (``sentence``), and a seed for the stable choices."""

    def __init__(self, words: list[str], sentence: str, seed: str) -> None:
        self.words = words or ["example"]
        self.sentence = sentence
        self.seed = seed
        self._next = 0

    def word(self) -> str:
        """The next word, in the prompt's order, wrapping round."""
        word = self.words[self._next % len(self.words)]
        self._next += 1
        return word


def instance(schema: Any, words: Words, hints: dict[str, Any] | None = None) -> Any:
    """A value of ``schema``; ``hints`` give values for properties by name where they fit."""
    return _Builder(schema if isinstance(schema, dict) else {}, words, hints or {}).value(
        schema, "", 0, 0)


class _Builder:
    def __init__(self, root: dict[str, Any], words: Words, hints: dict[str, Any]) -> None:
        self.root, self.words, self.hints = root, words, hints

    def resolve(self, schema: Any, seen: int = 0) -> dict[str, Any]:
        """``schema`` with its ``$ref`` followed (local references only) and ``allOf`` merged."""
        if not isinstance(schema, dict):
            return {} if schema is not False else {"not": {}}
        if "$ref" in schema and seen < 20:
            target = self._pointer(schema["$ref"])
            rest = {k: v for k, v in schema.items() if k != "$ref"}
            return self.resolve({**target, **rest}, seen + 1)
        if schema.get("allOf") and seen < 20:
            merged = {k: v for k, v in schema.items() if k != "allOf"}
            for part in schema["allOf"]:
                part = self.resolve(part, seen + 1)
                merged["properties"] = {**(merged.get("properties") or {}),
                                        **(part.get("properties") or {})}
                merged["required"] = [*(merged.get("required") or []),
                                      *(part.get("required") or [])]
                for key, value in part.items():
                    merged.setdefault(key, value)
            return merged
        return schema

    def _pointer(self, ref: str) -> dict[str, Any]:
        if not ref.startswith("#"):
            return {}
        node: Any = self.root
        for part in [p for p in ref[1:].split("/") if p]:
            part = part.replace("~1", "/").replace("~0", "~")
            node = node.get(part) if isinstance(node, dict) else \
                node[int(part)] if isinstance(node, list) and part.isdigit() else None
        return node if isinstance(node, dict) else {}

    def value(self, schema: Any, key: str, depth: int, index: int) -> Any:
        schema = self.resolve(schema)
        if "const" in schema:
            return schema["const"]
        if schema.get("enum"):
            return schema["enum"][index % len(schema["enum"])]
        for combo in ("anyOf", "oneOf"):
            if schema.get(combo):
                branches = schema[combo]
                if depth >= MAX_DEPTH:  # prefer a branch that ends the recursion
                    branches = sorted(branches, key=lambda b: self.resolve(b).get("type") != "null")
                rest = {k: v for k, v in schema.items() if k != combo}
                return self.value({**rest, **self.resolve(branches[0])}, key, depth, index)
        kind = schema.get("type")
        if isinstance(kind, list):
            kind = next((k for k in kind if k != "null"), "null")
        if kind is None:
            kind = "object" if "properties" in schema or "required" in schema else \
                "array" if "items" in schema or "prefixItems" in schema else "string"
        if kind == "object":
            return self._object(schema, depth)
        if kind == "array":
            return self._array(schema, key, depth)
        if kind in ("integer", "number"):
            return self._number(schema, kind, key, index)
        if kind == "boolean":
            return True
        if kind == "null":
            return None
        return self._string(schema, key, index)

    def _object(self, schema: dict[str, Any], depth: int) -> dict[str, Any]:
        properties = schema.get("properties") or {}
        required = [r for r in schema.get("required") or [] if isinstance(r, str)]
        names = list(properties) if depth < MAX_DEPTH else [n for n in properties if n in required]
        names += [r for r in required if r not in names]
        out: dict[str, Any] = {}
        for name in names:
            sub = properties.get(name, {})
            hint = self.hints.get(name)
            out[name] = hint if hint is not None and _fits(hint, self.resolve(sub)) else \
                self.value(sub, name, depth + 1, 0)
        return out

    def _array(self, schema: dict[str, Any], key: str, depth: int) -> list[Any]:
        prefix = schema.get("prefixItems") or (schema["items"] if isinstance(
            schema.get("items"), list) else [])
        items = schema.get("items") if isinstance(schema.get("items"), dict) else \
            schema.get("additionalItems", {})
        low = int(schema.get("minItems", 0))
        high = schema.get("maxItems")
        count = max(low, len(prefix), 1 if depth < MAX_DEPTH else 0)
        if high is not None:
            count = min(count, int(high))
        out = [self.value(prefix[i] if i < len(prefix) else items, key, depth + 1, i)
               for i in range(count)]
        return out

    def _number(self, schema: dict[str, Any], kind: str, key: str, index: int) -> int | float:
        low, high = schema.get("minimum"), schema.get("maximum")
        step = 1 if kind == "integer" else 0.5
        if isinstance(schema.get("exclusiveMinimum"), (int, float)) and not isinstance(
                schema.get("exclusiveMinimum"), bool):
            low = schema["exclusiveMinimum"] + (1 if kind == "integer" else 1e-6)
        if isinstance(schema.get("exclusiveMaximum"), (int, float)) and not isinstance(
                schema.get("exclusiveMaximum"), bool):
            high = schema["exclusiveMaximum"] - (1 if kind == "integer" else 1e-6)
        if low is not None and high is not None:
            value = low + (high - low) / 2
        elif low is not None:
            value = low + step * (digest(self.words.seed, key) % 5)
        elif high is not None:
            value = high - step * (digest(self.words.seed, key) % 5)
        else:
            value = 1 + digest(self.words.seed, key) % 40 * step
        value += index * step
        if high is not None:
            value = min(value, high)
        multiple = schema.get("multipleOf")
        if isinstance(multiple, (int, float)) and multiple > 0:
            value = math.ceil(value / multiple) * multiple if low is not None else \
                math.floor(value / multiple) * multiple
        if kind == "integer":
            value = math.ceil(value) if low is not None else math.floor(value)
            return int(value)
        return float(round(value, 6))

    def _string(self, schema: dict[str, Any], key: str, index: int) -> str:
        hint = self.hints.get(key)
        fmt = schema.get("format")
        word = self.words.word()
        slug = re.sub(r"[^a-z0-9]+", "-", word.lower()).strip("-") or "example"
        if isinstance(hint, str) and not fmt:
            text = hint
        elif fmt in ("email", "idn-email"):
            text = f"{slug}{index or ''}@example.com"
        elif fmt in ("uri", "url", "iri", "uri-reference", "iri-reference"):
            text = f"https://example.com/{slug}{index or ''}"
        elif fmt == "uuid":
            text = str(uuid.UUID(int=digest(self.words.seed, key, str(index)) << 64
                                 | digest(key, str(index)), version=4))
        elif fmt in _FORMATS:
            text = _FORMATS[fmt]
        elif key.lower() in _PROSE_KEYS:
            text = self.words.sentence
        else:
            text = word if not index else f"{word} {index + 1}"
        if isinstance(schema.get("pattern"), str) and not re.search(schema["pattern"], text):
            text = _matching(schema["pattern"]) or text
        low, high = int(schema.get("minLength", 0)), schema.get("maxLength")
        while len(text) < low:
            text = f"{text} {self.words.word()}"
        if high is not None:
            text = text[: int(high)].rstrip() if len(text[: int(high)].rstrip()) >= low \
                else text[: int(high)]
        return text


def _fits(value: Any, schema: dict[str, Any]) -> bool:
    """Whether a hint may stand for a value of ``schema`` (plain strings and booleans only)."""
    kind = schema.get("type")
    if schema.get("enum") or "const" in schema or schema.get("format") or schema.get("pattern"):
        return False
    if isinstance(value, bool):
        return kind == "boolean"
    if isinstance(value, str):
        return kind == "string" and schema.get("minLength", 0) <= len(value) <= schema.get(
            "maxLength", len(value))
    return False


def _matching(pattern: str) -> str | None:
    """A short string ``pattern`` matches, built from its parse tree; None when it cannot."""
    try:
        from re import _parser as parser  # type: ignore[attr-defined]
        text = _emit(parser.parse(pattern))
    except Exception:  # noqa: BLE001 - an unsupported construct: no sample
        return None
    return text if re.search(pattern, text) else None


def _emit(tree: Any) -> str:
    """The shortest text of a parsed pattern (an empty repeat once, branches by the first)."""
    out = []
    for op, arg in tree:
        name = str(op)
        if name == "LITERAL":
            out.append(chr(arg))
        elif name == "NOT_LITERAL":
            out.append("a" if chr(arg) != "a" else "b")
        elif name == "ANY":
            out.append("a")
        elif name == "IN":
            out.append(_class_member(arg))
        elif name in ("MAX_REPEAT", "MIN_REPEAT", "POSSESSIVE_REPEAT"):
            low, high, sub = arg
            out.append(_emit(sub) * (low or min(1, high)))
        elif name == "SUBPATTERN":
            out.append(_emit(arg[-1]))
        elif name == "BRANCH":
            out.append(_emit(arg[1][0]))
        elif name in ("AT", "ASSERT", "ASSERT_NOT", "GROUPREF"):
            continue
        else:
            raise ValueError(name)
    return "".join(out)


def _class_member(items: Any) -> str:
    for op, arg in items:
        name = str(op)
        if name == "NEGATE":
            return "#"
        if name == "LITERAL":
            return chr(arg)
        if name == "RANGE":
            return chr(arg[0])
        if name == "CATEGORY":
            return {"CATEGORY_DIGIT": "7", "CATEGORY_SPACE": " "}.get(str(arg), "a")
    return "a"


_FENCE = re.compile(r"```(?:json|JSON)?\s*\n(.*?)```", re.S)


def schema_in(text: str) -> dict[str, Any] | None:
    """The JSON Schema written into ``text``: in a fenced block or a bare ``{...}`` object, one
    that declares ``properties`` (or ``$defs``); the last one when there are several."""
    found = None
    for block in [*_FENCE.findall(text), text]:
        for value in _objects(block):
            if _is_schema(value):
                found = value
        if found is not None:
            return found
    return None


def _objects(text: str) -> list[Any]:
    """Every top-level JSON object in ``text``, in order."""
    decoder, out, at = json.JSONDecoder(), [], text.find("{")
    while at >= 0:
        try:
            value, end = decoder.raw_decode(text, at)
        except ValueError:
            at = text.find("{", at + 1)
            continue
        out.append(value)
        at = text.find("{", end)
    return out


def _is_schema(value: Any) -> bool:
    if not isinstance(value, dict):
        return False
    if isinstance(value.get("properties"), dict) and all(
            isinstance(v, dict) for v in value["properties"].values()):
        return True
    return isinstance(value.get("$defs"), dict) and "$ref" in value
