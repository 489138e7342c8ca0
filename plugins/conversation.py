"""Conversations across model switches: a history too long for the next model is trimmed or
summarised, instead of refused.

The built-in plugin ``conversation``. Before :mod:`~turnout.plugins.fit` drops the candidates a
request does not fit, it looks at the model that will answer first: the first candidate that fit
would keep, or the first whose only obstacle is the prompt's length. When the prompt plus the
answer's room (the request's ``max_tokens``, else the model's ``max_output_tokens``, else
``fit.MIN_ANSWER_TOKENS``) is over that model's ``context_window``, the request is replaced by a
shorter copy that fits it, per route (``[routes.NAME]``):

- ``history = "trim"`` (the default): whole turns are dropped, oldest first. A turn is a user
  message and everything after it up to the next user message, so an assistant's tool calls go
  with their results and the conversation still starts with a user message. Every system and
  developer message is kept, and so are the newest ``keep_last_turns`` user turns and whatever
  follows them.
- ``history = "summarize"``: the same turns are dropped (a few more, to leave room for the
  summary), and the ``summarizer`` (a cheap model or route) summarises them in a sub-request of
  this one (recorded under it, its cost counted in it). The summary goes in as a system message,
  ``Summary of the earlier conversation: ...``, after the leading system messages. When the
  summarizer fails, or there is no room for a summary, the turns are trimmed instead and the
  decision record says why.
- ``history = "off"``: requests are left as they are (fit refuses those that do not fit).

The shorter request is the one every candidate gets, a larger model later in the route
included. The summarizer is asked with temperature 0, so the route cache (when on) answers a
repeated summary at no cost.

Nothing is done when the request fits as it is, or when even the system messages and the kept
turns do not fit: then fit refuses the request with its 400 ``context_length_exceeded``. The
summarizer's own request is never shortened by this plugin.

When history was dropped, ``decision["history"]`` says ``mode`` (``trim`` or ``summarize``), the
``model`` it was fitted to, ``dropped_messages``, ``dropped_tokens``, ``prompt_tokens`` (of the
shorter request) and, when summarised, the ``summarizer`` and ``summary_tokens``; ``fallback``
says why a summary was wanted but the turns were trimmed. The request's ``prompt_tokens`` label
is recounted for the shorter request, so the cost estimate, budgets and fit read its size.
"""

from __future__ import annotations

import contextvars
from functools import lru_cache
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from turnout.kernel import tokens
from turnout.kernel.errors import TurnoutError
from turnout.kernel.hookspecs import hookimpl
from turnout.kernel.request import ChatRequest, Message
from turnout.kernel.types import Completion, Context, ModelProfile
from turnout.plugins.fit import MIN_ANSWER_TOKENS, unfit

if TYPE_CHECKING:
    from turnout.kernel.kernel import Kernel

SYSTEM_ROLES = frozenset({"system", "developer"})
SUMMARY_PREFIX = "Summary of the earlier conversation: "

SUMMARY_PROMPT = """Summarise the earlier part of a conversation between a user and an AI \
assistant. The assistant will continue the conversation from this summary alone, without \
seeing these messages, so keep every fact, name, number, decision, tool result and open \
question it may need, and what the user wants. Write plain prose of at most {words} words, \
with no preamble.

The conversation:
{transcript}"""


class HistorySettings(BaseModel):
    """What a route does with a conversation too long for its model: keys of ``[routes.NAME]``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    history: Literal["off", "trim", "summarize"] = Field(
        default="trim", description="When the prompt does not fit the context window of the "
        "model that will answer first: 'trim' drops the oldest turns (system messages and the "
        "newest turns kept), 'summarize' has the summarizer summarise the dropped turns into a "
        "system message (trimming if it fails), 'off' leaves the request as it is (refused "
        "with 400 context_length_exceeded when no model fits it).")
    summarizer: str | None = Field(
        default=None, description="The model or route (not auto) that summarises dropped "
        "turns; required with history = 'summarize'. Its call is a sub-request, recorded and "
        "paid for under the request.")
    keep_last_turns: int = Field(
        default=1, ge=1, description="The newest user turns never dropped, with everything "
        "after them (1: the last user message and what follows it).")
    summary_max_tokens: int = Field(
        default=400, ge=16, description="Output limit of the summarizer's answer; this much "
        "room is kept for the summary in the answering model's window.")

    @field_validator("summarizer")
    @classmethod
    def _named(cls, v: str | None) -> str | None:
        if v is not None and (not v.strip() or v == "auto"):
            raise ValueError("name the summarizer model or route (auto is not allowed)")
        return v

    @model_validator(mode="after")
    def _summarizer_set(self, info: ValidationInfo) -> "HistorySettings":
        if self.history == "summarize" and self.summarizer is None:
            raise ValueError("history = 'summarize' needs summarizer = \"<model or route>\": "
                             "the cheap model that summarises the dropped turns")
        names = info.context or {}
        if self.summarizer is not None and "models" in names and "routes" in names:
            problem = unknown_summarizer(self.summarizer, names["models"], names["routes"])
            if problem:
                raise ValueError(problem)
        return self


_summarizing: contextvars.ContextVar[bool] = contextvars.ContextVar("turnout_summarizing",
                                                                    default=False)
"""Set while a summarizer's sub-request runs, so its own prompt is not shortened in turn."""


class Conversation:
    """Shortens a conversation that does not fit the model that will answer first.

    Keeps the kernel (from ``startup``) for route settings and the summarizer's sub-request;
    ``owner`` is the plugin name the ``RouteSettings`` were validated under.
    """

    name = "conversation"
    RouteSettings = HistorySettings

    def __init__(self) -> None:
        self.kernel: Kernel | None = None
        self.owner = self.name

    @hookimpl
    def startup(self, kernel: Kernel) -> None:
        self.kernel = kernel
        self.owner = kernel.plugins.name_of(self) or self.name

    @hookimpl(tryfirst=True)
    def filter_candidates(self, ctx: Context) -> Any:
        """None at once when there is nothing to do; otherwise the shortening (a coroutine the
        kernel awaits, before fit's hook runs)."""
        if self.kernel is None or _summarizing.get() or not ctx.candidates:
            return None
        settings = self.kernel.route_settings(self.owner, ctx.route)
        if settings is None or settings.history == "off":
            return None
        model = answering_model(ctx)
        if model is None:
            return None
        return self._shorten(ctx, model, settings)

    async def _shorten(self, ctx: Context, model: ModelProfile,
                       settings: HistorySettings) -> None:
        messages = ctx.request.messages
        sizes = [message_tokens(m) for m in messages]
        budget = model.context_window - answer_room(ctx.request, model)
        excess = tokens.count_request(ctx.request) - budget
        if excess <= 0:
            return
        turns = droppable_turns(messages, settings.keep_last_turns)
        record: dict[str, Any] = {"mode": settings.history, "model": model.name}
        dropped: set[int] | None = None
        summary: Message | None = None
        if settings.history == "summarize":
            dropped, summary = await self._summarise(ctx, turns, sizes, excess, settings, record)
        if summary is None:
            record["mode"] = "trim"
            dropped = turns_to_drop(turns, sizes, excess)
            if not dropped:
                return  # even the kept messages do not fit: fit refuses the request
        kept = [m for i, m in enumerate(messages) if i not in dropped]
        if summary is not None:
            kept.insert(leading_system(kept), summary)
        ctx.request = ctx.request.model_copy(update={"messages": kept})
        ctx.labels["prompt_tokens"] = tokens.count_request(ctx.request)
        record.update(dropped_messages=len(dropped),
                      dropped_tokens=sum(sizes[i] for i in dropped),
                      prompt_tokens=ctx.labels["prompt_tokens"])
        if summary is not None:
            record["summary_tokens"] = message_tokens(summary)
        ctx.decision["history"] = record

    async def _summarise(self, ctx: Context, turns: list[list[int]], sizes: list[int],
                         excess: int, settings: HistorySettings,
                         record: dict[str, Any]) -> tuple[set[int] | None, Message | None]:
        """The turns to drop and the summary replacing them; (None, None) after noting in
        ``record`` why there is no summary (the caller trims instead)."""
        reserve = summary_room(settings.summary_max_tokens)
        dropped = turns_to_drop(turns, sizes, excess + reserve)
        if dropped is None:
            record["fallback"] = ("no room for a summary beside the system messages and the "
                                  "newest turns")
            return None, None
        summary, why = await self._summary(ctx, dropped, settings)
        if summary is None:
            record["fallback"] = why
            return None, None
        if message_tokens(summary) > sum(sizes[i] for i in dropped) - excess:
            record["fallback"] = "the summary did not fit"
            return None, None
        record["summarizer"] = settings.summarizer
        return dropped, summary

    async def _summary(self, ctx: Context, dropped: set[int],
                       settings: HistorySettings) -> tuple[Message | None, str]:
        """The summary of the dropped messages as a system message, or None and why not."""
        messages = ctx.request.messages
        transcript = "\n\n".join(render(messages[i]) for i in sorted(dropped))
        words = max(10, settings.summary_max_tokens * 3 // 5)
        request = ChatRequest(
            model=settings.summarizer,
            messages=[{"role": "user", "content": SUMMARY_PROMPT.format(
                words=words, transcript=transcript)}],
            temperature=0, max_tokens=settings.summary_max_tokens)
        assert self.kernel is not None
        token = _summarizing.set(True)
        try:
            answer = await self.kernel.subrequest(ctx, request)
        except TurnoutError as exc:
            return None, f"the summarizer {settings.summarizer!r} did not answer: {exc}"
        finally:
            _summarizing.reset(token)
        text = (answer.content or "").strip() if isinstance(answer, Completion) else ""
        if not text:
            return None, f"the summarizer {settings.summarizer!r} answered with no text"
        return Message(role="system", content=SUMMARY_PREFIX + text), ""


# --- what to drop ------------------------------------------------------------------------------


def answering_model(ctx: Context) -> ModelProfile | None:
    """The candidate to fit the request to: the first one fit would keep, or the first whose
    only obstacle is the prompt's length. None when the first model fit keeps fits as it is, or
    when no candidate could serve the request however short its prompt."""
    without_prompt = SimpleNamespace(request=ctx.request, labels={**ctx.labels,
                                                                   "prompt_tokens": 0})
    for model in ctx.candidates:
        if unfit(ctx, model) is None:
            return None
        if unfit(without_prompt, model) is None:  # type: ignore[arg-type]
            return model
    return None


def answer_room(request: ChatRequest, model: ModelProfile) -> int:
    """Tokens kept for the answer, as fit counts them."""
    return request.output_limit or model.max_output_tokens or MIN_ANSWER_TOKENS


_EMPTY = ChatRequest(model="-", messages=[{"role": "user", "content": ""}])


def message_tokens(message: Message) -> int:
    """Tokens ``message`` adds to a prompt, as :func:`turnout.kernel.tokens.count_request`
    counts them."""
    return tokens.count_request(_EMPTY.model_copy(update={"messages": [message]})) - _framing()


@lru_cache(maxsize=1)
def _framing() -> int:
    """Tokens of a prompt without messages."""
    return tokens.count_request(_EMPTY.model_copy(update={"messages": []}))


def summary_room(max_tokens: int) -> int:
    """Most tokens a summary message of ``max_tokens`` answer tokens takes."""
    return message_tokens(Message(role="system", content=SUMMARY_PREFIX)) + max_tokens


def droppable_turns(messages: list[Message], keep_last_turns: int) -> list[list[int]]:
    """The indices of the turns that may be dropped, oldest first: each a user message and the
    non-system messages after it up to the next user message (what comes before the first user
    message is a turn of its own). System and developer messages are never in one, nor are the
    newest ``keep_last_turns`` user turns and what follows them."""
    users = [i for i, m in enumerate(messages) if m.role == "user"]
    if len(users) <= keep_last_turns:
        return []  # every user turn is kept
    end = users[-keep_last_turns]
    turns: list[list[int]] = []
    for i, message in enumerate(messages[:end]):
        if message.role in SYSTEM_ROLES:
            continue
        if message.role == "user" or not turns:
            turns.append([])
        turns[-1].append(i)
    return turns


def turns_to_drop(turns: list[list[int]], sizes: list[int], excess: int) -> set[int] | None:
    """The indices of the oldest turns that together weigh at least ``excess`` tokens; None
    when all of them together do not."""
    dropped: set[int] = set()
    freed = 0
    for turn in turns:
        if freed >= excess:
            break
        dropped.update(turn)
        freed += sum(sizes[i] for i in turn)
    return dropped if freed >= excess else None


def leading_system(messages: list[Message]) -> int:
    """The index after the system and developer messages that open ``messages``."""
    for i, message in enumerate(messages):
        if message.role not in SYSTEM_ROLES:
            return i
    return len(messages)


def render(message: Message) -> str:
    """One message as a line of the summarizer's transcript."""
    parts = [message.text()]
    for call in message.tool_calls or ():
        fn = call.get("function") or {}
        parts.append(f"[called {fn.get('name')}({fn.get('arguments')})]")
    if message.function_call:
        parts.append(f"[called {message.function_call.get('name')}"
                     f"({message.function_call.get('arguments')})]")
    who = message.role if message.role != "tool" else f"tool result {message.tool_call_id}"
    return f"{who}: {' '.join(p for p in parts if p)}"


def unknown_summarizer(name: str, models: Any, routes: Any) -> str | None:
    """Why ``name`` cannot be a summarizer (it names neither a route nor a model), or None."""
    if name in routes or name in models:
        return None
    return (f"summarizer {name!r} is neither a route ({', '.join(sorted(routes)) or 'none'}) "
            f"nor a model ({', '.join(sorted(models)) or 'none'}); name one of them")
