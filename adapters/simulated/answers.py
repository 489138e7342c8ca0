"""The content of simulated answers: canned text, JSON or a tool call built from the prompt (no
language model is involved), shaped by quality, ``stop`` and the output limit.

JSON answers follow the request's schema (``json_schema``, or a schema written into a JSON-mode
prompt; see :mod:`.schemas`) or the reply template a prompt spells out (judges, critics,
classifiers; see :mod:`.templates`). A poor answer to a schema leaves out a required field, so a
route's ``json`` validator has something to catch."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import orjson

from turnout.kernel import tokens
from turnout.kernel.types import ChatRequest

from .schemas import Words, digest, instance, schema_in
from .templates import fill, template_in

# --- reading the prompt -----------------------------------------------------------------------

_WORD = re.compile(r"[A-Za-z][A-Za-z0-9'_-]{2,}")
_STOPWORDS = frozenset("""
a about above after again all also am an and any are as at be because been before being below
between both but by can could did do does doing down during each few for from further had has
have having he her here hers him his how i if in into is it its itself just me more most my no
nor not now of off on once only or other our ours out over own please same she should so some
such than that the their theirs them then there these they this those through to too under until
up very was we were what when where which while who whom why will with would you your yours
tell give make explain write want need like know answer question following below above help
summarize summary list describe show name compare find create build define translate briefly
short detailed think step using use way ways get best example today thing things many much
""".split())
_LINE_OPTION = re.compile(r"^[ \t]*\(?([A-Ja-j])[.):][ \t]+(\S[^\n]*)$", re.M)
_INLINE_OPTION = re.compile(r"\(([A-J])\)\s*([^()\n]+?)\s*(?=\([A-J]\)|$)", re.M)
_CODE = re.compile(r"```|\bdef |\bclass |\bfunction\b|\bcode\b|\bscript\b|\bregex\b|\bSQL\b", re.I)
_SUMMARY = re.compile(r"\bsummari[sz]e\b|\btl;?dr\b|\bsummary\b", re.I)
_JSON_REPLY = re.compile(r"\b(?:reply|respond|answer|return|output|format\w*|give)\b[^.\n]{0,80}"
                         r"\bJSON\b|\bJSON\s+(?:only|object|instance)\b", re.I)
_FENCED = re.compile(r"```.*?(?:```|$)", re.S)
_OBJECT = re.compile(r"\{.*\}", re.S)
_NAME = re.compile(r"(?<=[\w,;:] )[A-Z][a-z][a-zA-Z-]*")
_HEDGED = re.compile(r"hard to say|look it up", re.I)
_REVISE = re.compile(r"\brevis|\brewrit|\bimprove|\bfeedback\b", re.I)
_REVISION_WORDS = frozenset("reviewer scored said revised complete answer conversation addresses "
                            "feedback reply remarks revision user see".split())
_GENERIC_TOOL_WORDS = frozenset("get set list search fetch run do make create update delete find "
                                "lookup look query call tool use read write send".split())


_digest = digest


def _clip(text: str, limit: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def _gist(text: str) -> str:
    """The first line or sentence of a message, short enough to quote."""
    first = next((line for line in text.splitlines() if line.strip()), "")
    sentence = re.split(r"(?<=[.?!])\s", first.strip(), maxsplit=1)[0]
    return _clip(sentence, 90) or "(an empty message)"


def _keywords(text: str, limit: int = 3) -> list[str]:
    seen: dict[str, str] = {}
    for word in _WORD.findall(text):
        low = word.lower()
        if low not in _STOPWORDS and low not in seen:
            seen[low] = word
    return list(seen.values())[:limit]


def _options(text: str) -> list[tuple[str, str]]:
    """Multiple-choice options (``A. ...`` lines or inline ``(A) ...``), in order from A."""
    for pattern in (_LINE_OPTION, _INLINE_OPTION):
        found: dict[str, str] = {}
        for letter, label in pattern.findall(text):
            found.setdefault(letter.upper(), label.strip())
        options = []
        for i in range(len(found)):
            letter = chr(ord("A") + i)
            if letter not in found:
                break
            options.append((letter, found[letter]))
        if len(options) >= 2:
            return options
    return []


def _last_user(request: ChatRequest) -> str:
    return next((m.text() for m in reversed(request.messages) if m.role == "user"), "")


# --- composing the answer ---------------------------------------------------------------------


@dataclass(slots=True)
class Answer:
    """The simulated answer to one request, before the wire format."""

    content: str | None
    tool_calls: list[dict[str, Any]] | None
    finish_reason: str
    completion_tokens: int


def _listing(words: list[str]) -> str:
    if not words:
        return "the topic"
    if len(words) == 1:
        return words[0]
    return ", ".join(words[:-1]) + " and " + words[-1]


def _choice(prompt: str, options: list[tuple[str, str]], good: bool) -> tuple[str, str]:
    """The option a good answer picks (stable per prompt), or a different one for a poor answer."""
    right = _digest("choice", prompt) % len(options)
    if good:
        return options[right]
    return options[(right + 1 + _digest("wrong", prompt) % (len(options) - 1)) % len(options)]


def _text(model: str, request: ChatRequest, good: bool) -> str:
    """A readable, obviously simulated reply derived from the prompt."""
    tag = f"[{model}]"
    last = request.messages[-1]
    prompt = _last_user(request)
    gist, words = _gist(prompt), _keywords(prompt)
    options = _options(prompt)
    if options:
        letter, label = _choice(prompt, options, good)
        return f"{tag} Answer: {letter}. {label}"
    if last.role == "tool":
        tool = last.name or "tool"
        return (f"{tag} Based on the {tool} result ({_clip(last.text(), 120)}), here is the "
                f"simulated answer to \"{gist}\".")
    if not good:
        return f"{tag} Hmm, {words[0] if words else 'that'}? Hard to say; maybe look it up."
    if _SUMMARY.search(prompt):
        return (f"{tag} Summary (simulated): the text is {len(prompt.split())} words about "
                f"{_listing(words)}. Its main point comes first, then the supporting details. "
                "No language model was called to write this.")
    if _CODE.search(prompt):
        name = re.sub(r"\W+", "_", (words[0] if words else "solution").lower()).strip("_")
        return (f"{tag} A sketch (simulated) for \"{gist}\":\n```python\n"
                f"def {name or 'solution'}():\n    ...  # the real implementation goes here\n```\n"
                "No language model was called to write this.")
    return (f"{tag} Simulated answer to \"{gist}\". A real model would now cover "
            f"{_listing(words)}: what each is, how they relate, and a short example. "
            "No language model was called to write this.")


def _words(model: str, prompt: str) -> Words:
    """String material for structured answers: the prompt's names first, then its keywords."""
    prose = _FENCED.sub(" ", prompt)
    prose = _OBJECT.sub(" ", prose) if "{" in prose else prose
    names = _NAME.findall(prose)
    words = [*reversed(names), *_keywords(prose, 12)]
    words = list(dict.fromkeys(words)) or ["example"]
    sentence = f"Simulated answer about {_listing(_keywords(prompt))}."
    return Words(words, sentence, f"{model}\x00{prompt}")


def _schema_of(request: ChatRequest) -> dict[str, Any] | None:
    """The schema the answer must follow: ``json_schema``'s, else one written into a system or
    user message of a JSON-mode request (the latest), as instructor and LangChain send it."""
    spec = request.response_format or {}
    if spec.get("type") == "json_schema":
        return (spec.get("json_schema") or {}).get("schema") or None
    for message in reversed(request.messages):
        if message.role in ("system", "user", "developer"):
            found = schema_in(message.text())
            if found is not None:
                return found
    return None


def _schema_answer(model: str, request: ChatRequest, schema: dict[str, Any], good: bool) -> str:
    """An instance of ``schema``; a poor answer leaves out one required field (a stable pick),
    or, when nothing is required, stops half-way."""
    prompt = _last_user(request)
    options = _options(prompt)
    hints = dict.fromkeys(("answer", "choice", "option", "letter"),
                          _choice(prompt, options, True)[0]) if options else {}
    value = instance(schema, _words(model, prompt), hints)
    if not good:
        required = [k for k in schema.get("required") or [] if isinstance(value, dict) and k in value]
        if required:
            del value[required[digest("drop", model, prompt) % len(required)]]
        else:
            text = orjson.dumps(value).decode()
            return text[: max(1, len(text) // 2)]
    return orjson.dumps(value).decode()


def _asks_for(prompt: str) -> bool:
    """Whether the prompt asks for its reply as JSON."""
    return bool(_JSON_REPLY.search(prompt))


def _json_text(model: str, request: ChatRequest, good: bool, quality: float) -> str:
    """A JSON answer: an instance of the request's schema, a filled reply template, else a
    generic object; poor answers are broken (see :func:`_schema_answer`) or cut short."""
    schema = _schema_of(request)
    if schema:
        return _schema_answer(model, request, schema, good)
    prompt = _last_user(request)
    template = template_in(prompt)
    if template is not None:
        return orjson.dumps(fill(template[0], prompt, template[1], model, quality, good,
                                 _STOPWORDS)).decode()
    options = _options(prompt)
    short = _choice(prompt, options, True)[0] if options else \
        f"Simulated answer about {_listing(_keywords(prompt))}."
    text = orjson.dumps({"answer": short, "model": model, "simulated": True}).decode()
    if good:
        return text
    return text[: max(1, len(text) // 2)]


def _prose_json(model: str, request: ChatRequest, good: bool, quality: float) -> str | None:
    """The JSON a plain request gets when its last message asks for a JSON reply and spells out
    its shape (a template with placeholders, or a schema); None otherwise."""
    prompt = _last_user(request)
    if request.messages[-1].role != "user" or not _asks_for(prompt):
        return None
    template = template_in(prompt)
    if template is not None:
        return orjson.dumps(fill(template[0], prompt, template[1], model, quality, good,
                                 _STOPWORDS)).decode()
    schema = schema_in(prompt)
    return _schema_answer(model, request, schema, good) if schema else None


def _revision(model: str, request: ChatRequest, good: bool) -> str | None:
    """A revised answer when the last message asks to revise the assistant's previous one:
    that answer again, extended to address the feedback (a poor one barely changes)."""
    messages = request.messages
    if len(messages) < 3 or messages[-1].role != "user" or messages[-2].role != "assistant" \
            or not _REVISE.search(messages[-1].text()):
        return None
    draft = re.sub(r"^\s*\[[^\]]*\]\s*", "", messages[-2].text())
    asked = next((m.text() for m in reversed(messages[:-2]) if m.role == "user"), "")
    feedback = [w for w in _keywords(messages[-1].text(), 12)
                if w.lower() not in _REVISION_WORDS][:4]
    if not good:
        return f"[{model}] {draft} (Revised slightly; simulated.)"
    if not draft.strip() or _HEDGED.search(draft):  # start again from the question
        fresh = _text(model, request.model_copy(update={"messages": messages[:-2]}), True)
        draft = re.sub(r"^\s*\[[^\]]*\]\s*", "", fresh)
    return (f"[{model}] {draft} Revised (simulated) to answer \"{_gist(asked)}\" more fully: it "
            f"now also covers {_listing(feedback)}, with a worked example of "
            f"{_listing(_keywords(asked))} and the reasoning behind each step.")


def _tool_for(request: ChatRequest) -> dict[str, Any] | None:
    """The function tool a model would call for this request, if any."""
    tools = [t for t in request.tools or []
             if isinstance(t, dict) and (t.get("function") or {}).get("name")]
    choice = request.tool_choice
    if not tools or choice == "none":
        return None
    if isinstance(choice, dict):
        wanted = (choice.get("function") or {}).get("name")
        return next((t for t in tools if t["function"]["name"] == wanted), None)
    if choice == "required":
        prompt = _last_user(request).lower()
        return next((t for t in tools if _mentions(prompt, t["function"]["name"])), tools[0])
    if request.messages[-1].role != "user":
        return None
    prompt = request.messages[-1].text().lower()
    return next((t for t in tools if _mentions(prompt, t["function"]["name"])), None)


def _mentions(prompt: str, name: str) -> bool:
    """True when the prompt names the tool, or a telling word of its name ('weather')."""
    if name.lower() in prompt:
        return True
    parts = re.findall(r"[A-Z]?[a-z]+|[A-Z]+(?![a-z])|\d+", name)
    return any(len(p) > 2 and p.lower() not in _GENERIC_TOOL_WORDS
               and re.search(rf"\b{re.escape(p.lower())}", prompt) for p in parts)


def _tool_call(model: str, request: ChatRequest, tool: dict[str, Any]) -> dict[str, Any]:
    function = tool["function"]
    prompt = _last_user(request)
    names = _NAME.findall(prompt)
    value = names[-1] if names else (_keywords(prompt, 1) or ["example"])[0]
    words = _words(model, prompt)
    words.words = list(dict.fromkeys([value, *words.words]))
    arguments = instance(function.get("parameters") or {"type": "object"}, words)
    if not isinstance(arguments, dict):
        arguments = {}
    call_id = "call_" + format(_digest(model, prompt, function["name"]), "016x")
    return {"id": call_id, "type": "function",
            "function": {"name": function["name"], "arguments": orjson.dumps(arguments).decode()}}


def _truncate(text: str, limit: int) -> str:
    """The longest word-prefix of ``text`` of at most ``limit`` tokens."""
    pieces = re.findall(r"\s*\S+", text)
    lo, hi = 0, len(pieces)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if tokens.count("".join(pieces[:mid])) <= limit:
            lo = mid
        else:
            hi = mid - 1
    return "".join(pieces[:lo])


def answer(model: str, request: ChatRequest, good: bool, quality: float = 0.7) -> Answer:
    """What ``model`` (of ``quality``, 0..1) answers to ``request``: a tool call, JSON or text,
    shaped by the dice's ``good``, ``stop`` and the output limit."""
    tool = _tool_for(request)
    if tool is not None:
        call = _tool_call(model, request, tool)
        used = tokens.count(call["function"]["name"]) + tokens.count(call["function"]["arguments"])
        return Answer(None, [call], "tool_calls", used)
    if request.wants_json:
        text = _json_text(model, request, good, quality)
    else:
        text = _prose_json(model, request, good, quality) or _revision(model, request, good) \
            or _text(model, request, good)
    finish = "stop"
    stops = [request.stop] if isinstance(request.stop, str) else request.stop or []
    cuts = [text.find(s) for s in stops if s and s in text]
    if cuts:
        text = text[: min(cuts)]
    limit = request.output_limit
    if limit is not None and tokens.count(text) > limit:
        text, finish = _truncate(text, limit), "length"
    return Answer(text, None, finish, tokens.count(text))
