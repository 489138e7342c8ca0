"""The LLM classifier: a cheap model labels the request's task and difficulty from a fixed set.

The built-in plugin ``llm_classifier`` is idle until ``[llm_classifier] model`` names a model or
route (not ``auto``). Then, for every request that asks for ``auto`` (every request with
``only_auto = false``), it sends the last user message (its first ``max_prompt_chars``
characters) to that model with the task types of :data:`turnout.kernel.labels.TASKS` and the 1-5
scale of :data:`~turnout.kernel.labels.DIFFICULTY_LEVELS`, and asks for JSON ``{"task": ...,
"difficulty": 1-5}``. The answer is read leniently (JSON alone, fenced or in prose, else a
``difficulty: n`` pattern; a few task synonyms such as ``coding`` or ``translate`` are accepted).

**What it sets.** A verdict replaces the heuristic's ``task``, ``difficulty`` (level n is
``(n - 1) / 4``) and ``complexity``, and sets ``classifier = "llm"``: its ``classify``
implementation is ``trylast``, so its labels are merged after the heuristic's and win. Every other
label (language, tokens, needs_*) stays the heuristic's. The decision record gets
``decision["classifier"]``: the model, ``by`` (``llm`` or ``heuristic``), ``cached``, and when the
heuristic's labels were kept, ``fallback`` saying why.

**Falling back.** No answer within ``timeout_s`` (the call is cancelled, and recorded as
``cancelled``), an error, or an answer outside the label set: the request goes on with the
heuristic's labels (``classifier = "heuristic"``) and nothing is cached.

**The call.** A sub-request of the request (``Kernel.subrequest``): routed, recorded under it, its
cost added to the request's. The sub-request, and the sub-requests strategies make, are not
classified by this plugin in turn.

**The cache.** A verdict is kept in ``kernel.store`` (shared by every replica with the Redis
backend) for ``cache_ttl_s`` under ``llm-classifier:<sha256>`` of the model's name and the
message as sent, whitespace collapsed and lower-cased, so a repeated prompt costs one store read
and no call. A store error is logged and never fails the request.
"""

from __future__ import annotations

import contextvars
import hashlib
import re
import time
from typing import Any

import anyio
import orjson
import structlog
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from turnout.kernel import tokens
from turnout.kernel.hookspecs import hookimpl
from turnout.kernel.kernel import AUTO
from turnout.kernel.labels import DIFFICULTY_LEVELS, TASKS, difficulty_of_level
from turnout.kernel.observability import scrub
from turnout.kernel.store import StoreError
from turnout.kernel.types import ChatRequest, Context

from .verdicts import read_number

log = structlog.get_logger("turnout.llm_classifier")

KEY_PREFIX = "llm-classifier:"
VERSION = 1
"""Part of the cache key: changing the prompt or the label set starts a fresh cache."""

_classifying: contextvars.ContextVar[bool] = contextvars.ContextVar("turnout_llm_classifying",
                                                                    default=False)
"""Set while the classifier's own sub-request runs, so it is not classified in turn."""


class LLMClassifierSettings(BaseModel):
    """The LLM classifier, the ``[llm_classifier]`` table."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str | None = Field(default=None, description="The classifier: a cheap model or route "
                              "(not auto) asked for each request's task and difficulty. Unset: "
                              "the plugin is idle and the heuristic classifier's labels stand.")
    timeout_s: float = Field(default=1.5, gt=0, description="Seconds to wait for the "
                             "classifier's verdict; after that the call is cancelled and the "
                             "heuristic's labels are used.")
    cache_ttl_s: float = Field(default=604_800.0, gt=0, description="Seconds a verdict is kept "
                               "in the store and reused for the same message (default a week).")
    only_auto: bool = Field(default=True, description="Classify only requests that ask for "
                            "'auto', whose route the labels choose; false: every request, for "
                            "the record and learned routers.")
    min_prompt_tokens: int = Field(default=0, ge=0, description="Leave messages of fewer tokens "
                                   "than this to the heuristic (0: classify all).")
    max_prompt_chars: int = Field(default=4000, ge=100, description="Characters of the last "
                                  "user message sent to the classifier (its beginning).")
    max_tokens: int = Field(default=60, ge=16, description="Output limit of the classifier's "
                            "verdict.")

    @field_validator("model")
    @classmethod
    def _named(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None:
            return None
        if not value.strip() or value == AUTO:
            raise ValueError("name the classifier's model or route (auto is not allowed), or "
                             "leave model unset to turn the LLM classifier off")
        context = info.context if isinstance(info.context, dict) else {}
        models, routes = context.get("models"), context.get("routes")
        if models is not None and routes is not None and value not in models \
                and value not in routes:
            raise ValueError(f"no model or route {value!r}; name one of the models "
                             f"({', '.join(sorted(models)) or 'none'}) or routes "
                             f"({', '.join(sorted(routes)) or 'none'})")
        return value


CLASSIFY_PROMPT = """You label a user's message so a gateway can route it to a suitable \
language model. Do not answer the message.

Task types (pick exactly one):
{tasks}

Difficulty, from 1 to 5:
{levels}

The message, between the markers:
<<<MESSAGE
{message}
MESSAGE>>>

Reply with JSON only: {{"task": "<one task type>", "difficulty": <integer 1-5>}}"""

SYNONYMS = {"coding": "code", "programming": "code", "debugging": "code", "maths": "math",
            "mathematics": "math", "analysis": "reasoning", "logic": "reasoning",
            "extract": "extraction", "information extraction": "extraction",
            "writing": "creative", "creative writing": "creative", "conversation": "chat",
            "general": "chat", "qa": "chat", "question answering": "chat",
            "translate": "translation", "summary": "summarize", "summarise": "summarize",
            "summarization": "summarize", "summarisation": "summarize"}
"""Task names models give instead of the label set's, and the label they mean."""

_TASK = re.compile(r'"?task"?\s*[:=]\s*"?([a-z][a-z _-]*)', re.IGNORECASE)


def prompt_for(message: str) -> str:
    """The classifier's prompt for ``message``."""
    tasks = "\n".join(f"- {name}: {doc}" for name, doc in TASKS.items())
    levels = "\n".join(f"{n}: {doc}" for n, doc in DIFFICULTY_LEVELS.items())
    return CLASSIFY_PROMPT.format(tasks=tasks, levels=levels, message=message)


def task_name(value: Any) -> str | None:
    """A model's task name as a label of the set, or None when it is none of them."""
    if not isinstance(value, str):
        return None
    name = " ".join(value.strip().lower().replace("_", " ").replace("-", " ").split())
    name = SYNONYMS.get(name, name)
    return name if name in TASKS else None


def parse_verdict(text: str) -> dict[str, Any] | None:
    """``{"task", "difficulty"}`` from the classifier's answer; None when the answer carries no
    task of the label set or no difficulty from 1 to 5."""
    found = read_number(text, "difficulty")
    if found is None or found[0] is None:
        return None
    level, source = found
    if not 1 <= level <= 5:
        return None
    if source is not None and "task" in source:
        task = task_name(source["task"])
    else:
        match = _TASK.search(text)
        task = task_name(match.group(1)) if match else None
    if task is None:
        return None
    return {"task": task, "difficulty": difficulty_of_level(level)}


def cache_key(model: str, message: str) -> str:
    """The store key of a verdict: the model and the message, whitespace collapsed and lower
    case, hashed with the prompt's version."""
    normal = " ".join(message.split()).lower()
    digest = hashlib.sha256(f"{VERSION}\0{model}\0{normal}".encode()).hexdigest()
    return KEY_PREFIX + digest


def labels_of(verdict: dict[str, Any]) -> dict[str, Any]:
    """The labels a verdict sets."""
    return {"task": verdict["task"], "difficulty": verdict["difficulty"],
            "complexity": verdict["difficulty"], "classifier": "llm"}


class LLMClassifier:
    """Asks a cheap model for the task and difficulty of each request (see the module)."""

    name = "llm_classifier"
    Settings = LLMClassifierSettings

    def __init__(self) -> None:
        self.kernel: Any = None
        self.settings = LLMClassifierSettings()

    @hookimpl
    def startup(self, kernel: Any) -> None:
        self.kernel = kernel
        self.settings = kernel.plugin_settings(self) or LLMClassifierSettings()

    @hookimpl(trylast=True)
    def classify(self, ctx: Context) -> Any:
        """None at once when the plugin is idle or the request is not one to classify;
        otherwise the verdict (a coroutine the kernel awaits)."""
        settings = self.settings
        if settings.model is None or self.kernel is None or _classifying.get() \
                or ctx.parent is not None:
            return None
        if settings.only_auto and ctx.request.model != AUTO:
            return None
        message = next((m.text() for m in reversed(ctx.request.messages) if m.role == "user"), "")
        if not message.strip():
            return None
        if settings.min_prompt_tokens and tokens.count(message) < settings.min_prompt_tokens:
            return None
        return self._classify(ctx, settings, message[:settings.max_prompt_chars])

    async def _classify(self, ctx: Context, settings: LLMClassifierSettings,
                        message: str) -> dict[str, Any] | None:
        record: dict[str, Any] = {"model": settings.model, "by": "heuristic", "cached": False}
        ctx.decision["classifier"] = record
        key = cache_key(settings.model or "", message)
        store = self.kernel.store
        try:
            raw = await store.get(key)
        except StoreError as exc:
            log.warning("llm_classifier_store_failed", error=str(exc), request_id=ctx.request_id)
            raw = None
        verdict = _stored(raw)
        if verdict is not None:
            record.update(by="llm", cached=True, task=verdict["task"],
                          difficulty=verdict["difficulty"])
            return labels_of(verdict)
        started = time.perf_counter()
        answer, why = await self._ask(ctx, settings, message)
        record["took_s"] = round(time.perf_counter() - started, 4)
        verdict = parse_verdict(answer) if answer is not None else None
        if verdict is None:
            record["fallback"] = why or ("the answer was outside the label set: "
                                         + scrub(answer, prompts=[message], limit=120))
            log.info("llm_classifier_fell_back", why=record["fallback"],
                     request_id=ctx.request_id)
            return None
        record.update(by="llm", task=verdict["task"], difficulty=verdict["difficulty"])
        self.kernel.defer(self._remember, key, verdict, settings.cache_ttl_s)
        return labels_of(verdict)

    async def _ask(self, ctx: Context, settings: LLMClassifierSettings,
                   message: str) -> tuple[str | None, str | None]:
        """``(the model's answer, None)``, or ``(None, why there is none)``."""
        request = ChatRequest(model=settings.model,
                              messages=[{"role": "user", "content": prompt_for(message)}],
                              temperature=0, max_tokens=settings.max_tokens)
        token = _classifying.set(True)
        try:
            with anyio.move_on_after(settings.timeout_s) as scope:
                answer = await self.kernel.subrequest(ctx, request)
        except Exception as exc:  # noqa: BLE001 - any failure leaves the heuristic's labels
            return None, f"the classifier failed: {scrub(exc, prompts=[message], limit=200)}"
        finally:
            _classifying.reset(token)
        if scope.cancelled_caught:
            return None, f"no verdict within timeout_s ({settings.timeout_s:g} s)"
        return getattr(answer, "content", None) or "", None

    async def _remember(self, key: str, verdict: dict[str, Any], ttl_s: float) -> None:
        try:
            await self.kernel.store.set(key, orjson.dumps({"v": VERSION, **verdict}), ttl_s=ttl_s)
        except StoreError as exc:
            log.warning("llm_classifier_store_failed", error=str(exc))


def _stored(raw: bytes | None) -> dict[str, Any] | None:
    """A cached verdict, or None (none, another version's, or damaged)."""
    if raw is None:
        return None
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(data, dict) or data.get("v") != VERSION or task_name(data.get("task")) \
            is None or not isinstance(data.get("difficulty"), (int, float)):
        return None
    return {"task": data["task"], "difficulty": float(data["difficulty"])}
