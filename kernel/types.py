"""The data that flows through the kernel: requests, answers, stream chunks, plans and the context.

The OpenAI Chat Completions shape is the canonical request and answer format inside Turnout;
provider adapters translate to and from their own wire formats at the edge.
"""

from __future__ import annotations

import itertools
import os
import time
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, AsyncIterator, Literal

# The request lives in kernel/request.py; plugins import it from here with the other types.
from .request import ChatRequest, Message  # noqa: F401

# --- models and plans --------------------------------------------------------------------------


@dataclass(slots=True)
class ModelProfile:
    """A model as Turnout knows it: who serves it, what it costs, what it can do.

    ``name`` is what clients ask for; ``upstream`` is the id sent to the provider.
    Prices are US dollars per million tokens.
    """

    name: str
    provider: str
    upstream: str
    context_window: int = 128_000
    max_output_tokens: int | None = None
    input_price: float = 0.0
    output_price: float = 0.0
    cached_input_price: float | None = None
    """Price of input tokens the provider read from its prompt cache; None: ``input_price``."""
    capabilities: frozenset[str] = frozenset({"tools", "json", "streaming"})
    tier: int = 1
    description: str = ""
    deployment: str | None = None
    """Which deployment serves this copy of the model (``<model>@<provider>``), set by the
    health plugin when it balances a model's deployments; None for the model as configured."""
    quality: Mapping[str, float] = field(default_factory=dict)
    """How good its answers are, 0..1, by task type (the ``task`` label), with ``default`` for
    the other tasks; empty when unknown. Routers read it with :meth:`quality_for`."""

    def cost(self, usage: "Usage") -> float:
        """Cost in US dollars of a call with this usage: cached input tokens at
        ``cached_input_price``, the other input tokens at ``input_price``, output tokens
        (reasoning tokens among them) at ``output_price``."""
        cached = min(usage.cached_tokens, usage.input_tokens)
        cached_price = self.input_price if self.cached_input_price is None \
            else self.cached_input_price
        return ((usage.input_tokens - cached) * self.input_price + cached * cached_price
                + usage.output_tokens * self.output_price) / 1_000_000

    def quality_for(self, task: str | None) -> float | None:
        """Its quality for ``task`` (the ``task`` label), else its ``default`` quality, else None
        (unknown)."""
        found = self.quality.get(task) if task is not None else None
        return found if found is not None else self.quality.get("default")


@dataclass(slots=True)
class Ranking:
    """What a router decided for a route's candidates."""

    models: list[ModelProfile]
    """The candidates, in the order the strategy gets them."""
    reason: str
    """One line for the decision record."""
    scores: dict[str, float] = field(default_factory=dict)
    """Model name -> score."""
    details: dict[str, Any] = field(default_factory=dict)
    """Anything else worth recording (merged into ``decision["router"]``)."""


@dataclass(slots=True)
class Step:
    """One planned call: a model, and the attempt budget for it."""

    model: ModelProfile
    timeout_s: float | None = None


@dataclass(slots=True)
class Selection:
    """What a ``select_route`` plugin chose for ``auto``: a route, and why.

    ``models`` is None to take the configured route's models (``route`` must then be a key of
    ``[routes]``); a router that builds its own list names it with any ``route`` label it likes.
    """

    route: str
    models: list[ModelProfile] | None = None
    reason: str = ""


@dataclass(slots=True)
class Plan:
    """What the route event decided: a strategy and its ordered steps.

    The strategy walks ``steps`` from ``cursor`` (the built-in ``fallback`` moves the cursor on
    the escalate event's advice). ``settings`` is the strategy's validated settings for this
    route (``[routes.NAME.<strategy>]``), filled in by the kernel.
    """

    strategy: str
    steps: list[Step]
    cursor: int = 0
    settings: Any = None

    @property
    def current(self) -> Step | None:
        return self.steps[self.cursor] if self.cursor < len(self.steps) else None


# --- answers -----------------------------------------------------------------------------------


@dataclass(slots=True)
class Usage:
    """Token counts reported by the provider (or counted, where it reported none)."""

    input_tokens: int = 0
    output_tokens: int = 0
    details: dict[str, Any] | None = None
    """The provider's breakdowns as OpenAI names them (``prompt_tokens_details``,
    ``completion_tokens_details``), passed on to the client as they came."""

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens

    @property
    def cached_tokens(self) -> int:
        """Input tokens read from the provider's prompt cache (part of ``input_tokens``)."""
        return _detail(self.details, "prompt_tokens_details", "cached_tokens")

    @property
    def reasoning_tokens(self) -> int:
        """Output tokens spent thinking before the answer (part of ``output_tokens``)."""
        return _detail(self.details, "completion_tokens_details", "reasoning_tokens")

    def __add__(self, other: "Usage") -> "Usage":
        """Both calls' usage together, numeric breakdowns summed key by key."""
        details: dict[str, Any] = {}
        for part in (self.details or {}, other.details or {}):
            for name, values in part.items():
                if not isinstance(values, dict):
                    continue
                into = details.setdefault(name, {})
                for key, value in values.items():
                    if isinstance(value, int) and not isinstance(value, bool):
                        into[key] = into.get(key, 0) + value
        return Usage(self.input_tokens + other.input_tokens,
                     self.output_tokens + other.output_tokens, details or None)


def _detail(details: dict[str, Any] | None, part: str, key: str) -> int:
    value = ((details or {}).get(part) or {}).get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


@dataclass(slots=True)
class Completion:
    """A whole answer in OpenAI message form: ``content`` and/or ``tool_calls``."""

    content: str | None
    finish_reason: str = "stop"
    tool_calls: list[dict[str, Any]] | None = None
    usage: Usage = field(default_factory=Usage)
    model: str = ""
    provider: str = ""
    cost_usd: float = 0.0
    cached: bool = False
    refusal: str | None = None
    logprobs: Any = None
    system_fingerprint: str | None = None
    choices: list["Completion"] | None = None
    """The other answers when the request asked for several (``n``): choices 1..n-1, each with
    its own content, tool calls, finish reason and logprobs (their ``usage`` is left empty: this
    completion's ``usage`` covers every choice). Validators and the record judge this, the
    first, choice."""


@dataclass(slots=True)
class Chunk:
    """One streamed delta in OpenAI form. ``tool_calls`` holds OpenAI delta tool calls (with index)."""

    content: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    finish_reason: str | None = None
    usage: Usage | None = None
    role: str | None = None
    logprobs: Any = None


Stream = AsyncIterator[Chunk]
"""What a ``call`` implementation returns for a streaming request."""


@dataclass(slots=True)
class Verdict:
    """A validator's judgement of one answer."""

    ok: bool
    validator: str
    reason: str = ""
    score: float | None = None
    """How good the answer is, 0..1, where the validator can say (``judge``: its score / 10;
    ``logprobs``: the mean token probability); None where it cannot."""


@dataclass(slots=True)
class Escalation:
    """What to do after an error or a failed verdict.

    ``action`` is ``retry`` (the same step again after ``delay_s``), ``next`` (move to plan step
    ``cursor``) or ``stop`` (give up with ``error``).
    """

    action: Literal["retry", "next", "stop"]
    reason: str
    delay_s: float = 0.0
    cursor: int | None = None


class Hold(ABC):
    """What an ``admit`` plugin keeps for one attempt (a budget reservation, a token-window
    entry), to be settled once the attempt has ended."""

    @abstractmethod
    async def done(self, attempt: "Attempt") -> None:
        """The attempt ended: ``attempt.status``, ``usage`` and ``cost_usd`` are final (a failed
        or cancelled attempt may still have cost something). Called exactly once."""


@dataclass(slots=True)
class Attempt:
    """One call to one model, as it happened."""

    model: str
    provider: str
    started: float
    latency_s: float = 0.0
    status: str = "pending"
    error: str | None = None
    usage: Usage = field(default_factory=Usage)
    cost_usd: float = 0.0
    verdicts: list[Verdict] = field(default_factory=list)
    holds: list[Hold] = field(default_factory=list, repr=False)
    """What the ``admit`` plugins hold for this attempt until it ends; the kernel empties it."""

    def as_dict(self) -> dict[str, Any]:
        return {"model": self.model, "provider": self.provider, "status": self.status,
                "error": self.error, "latency_ms": round(self.latency_s * 1000, 2),
                "input_tokens": self.usage.input_tokens,
                "output_tokens": self.usage.output_tokens, "cost_usd": self.cost_usd,
                "verdicts": [f"{v.validator}:{'ok' if v.ok else v.reason}" for v in self.verdicts]}


def alert_key(name: str, labels: Mapping[str, str]) -> str:
    """The stable fingerprint of an alert: its name and its labels, sorted, as
    ``name{label="value",...}``. The same condition gives the same key on every replica and
    after a restart; sinks group, update and resolve by it."""
    inner = ",".join(f"{k}={_quoted(str(v))}" for k, v in sorted(labels.items()))
    return f"{name}{{{inner}}}"


def _quoted(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


@dataclass(slots=True)
class Alert:
    """An alert rule fired (or cleared): delivered through the ``alert`` event.

    Delivered once when it fires and once when it resolves (``resolved``), with the same
    ``key`` both times (and in any repeat while it lasts), so a sink can post it once and
    update that post in place.
    """

    name: str
    severity: Literal["info", "warning", "critical"]
    summary: str
    labels: dict[str, str] = field(default_factory=dict)
    resolved: bool = False
    key: str = ""
    """Stable fingerprint (:func:`alert_key` of name and labels), filled in when left empty."""
    channel: str | None = None
    """Where a chat sink should post it (``#llm-ops``); None for the sink's default."""
    action: str | None = None
    """What the gateway does while the alert lasts (``shift_traffic``...), undone when it
    resolves; None when nothing."""
    started_at: float = field(default_factory=time.time)
    """When the condition began (epoch seconds); the same on the resolving alert."""
    details: dict[str, Any] = field(default_factory=dict)
    """Figures behind it, for sinks to show: ``p95_ms``, ``rate``, ``requests``,
    ``window_s``..."""

    def __post_init__(self) -> None:
        if not self.key:
            self.key = alert_key(self.name, self.labels)


FEEDBACK_ID_MAX_CHARS = 128
"""Longest request id feedback may name (the kernel's own are ``req_`` and 28 characters)."""

FEEDBACK_COMMENT_MAX_CHARS = 4000
"""Longest comment kept with feedback; a longer one is cut and ``...`` appended."""

FEEDBACK_LABEL_MAX_CHARS = 256
"""Longest ``source`` or ``user`` of feedback."""


def new_feedback_id() -> str:
    """A feedback id unique across processes: ``fb_`` and 24 random hex digits."""
    return f"fb_{os.urandom(12).hex()}"


@dataclass(slots=True, frozen=True)
class Feedback:
    """A person's (or a judge's) score of one answer, delivered through the ``feedback`` event.

    ``score`` runs from -1 (bad) through 0 (neutral) to 1 (good); ``request_id`` names the request
    judged (``Answer.request_id``), which may not be recorded yet, or be a sub-request's.
    ``source`` says where the score came from (``api``, ``slack``, ...), ``user`` who gave it;
    ``id`` tells one score from another (a request may be judged many times). Built and checked
    by ``Kernel.feedback``, the comment already scrubbed of secrets.
    """

    request_id: str
    score: float
    comment: str | None = None
    source: str = "api"
    user: str | None = None
    created_at: float = field(default_factory=time.time)
    id: str = field(default_factory=new_feedback_id)


# --- the request context -----------------------------------------------------------------------


_ID_PREFIX = os.urandom(6).hex()
_id_counter = itertools.count(1)


@dataclass(slots=True, frozen=True)
class Caller:
    """Who sent a request, as budgets and rate limits count it.

    ``key`` is the gateway key's name (None without keys); ``user`` the end user (the request's
    ``user`` field, else the frontend's user header, else the key's owner); ``team`` the key's
    team.
    """

    key: str | None = None
    user: str | None = None
    team: str | None = None


ANONYMOUS = Caller()
NO_HEADERS: Mapping[str, str] = MappingProxyType({})


def new_request_id() -> str:
    """A request id unique across processes: ``req_``, a random per-process prefix, a counter."""
    return f"req_{_ID_PREFIX}{next(_id_counter):012x}"


@dataclass(slots=True, eq=False)
class Context:
    """Everything the kernel and the plugins know about one request while it is in flight.

    Plugins read it and add to it; ``state`` is free scratch space keyed by plugin name.
    ``parent`` is set for sub-requests made by multi-call strategies; ``children`` holds them on
    the parent, and the parent's spend, tokens and attempt count include theirs.
    """

    request: ChatRequest
    request_id: str = field(default_factory=new_request_id)
    route: str | None = None
    labels: dict[str, Any] = field(default_factory=dict)
    candidates: list[ModelProfile] = field(default_factory=list)
    plan: Plan | None = None
    attempts: list[Attempt] = field(default_factory=list)
    decision: dict[str, Any] = field(default_factory=dict)
    completion: Completion | None = None
    error: BaseException | None = None
    status: str = "pending"
    client: str | None = None
    caller: Caller = ANONYMOUS
    headers: Mapping[str, str] = field(default_factory=lambda: NO_HEADERS)
    """Request metadata from the frontend, names in lower case (HTTP headers, minus
    ``authorization``): ``cache-control``, ``x-turnout-user``, ... Sub-requests share their
    parent's."""
    response_headers: dict[str, str] = field(default_factory=dict)
    """Headers plugins add to the answer (``x-turnout-cache``, ``x-ratelimit-*``); a frontend
    sends them with the answer or the error. Sub-requests write to their root's."""
    answered: "Attempt | None" = None
    """The attempt whose answer the request returned, set by the kernel (None when the answer
    came from a sub-request, or none came)."""
    parent: "Context | None" = None
    children: list["Context"] = field(default_factory=list)
    span: Any = None
    state: dict[str, Any] = field(default_factory=dict)
    started: float = field(default_factory=time.perf_counter)
    created_at: float = field(default_factory=time.time)
    ended: float | None = None
    first_token_s: float | None = None
    """For a stream: seconds from acceptance to its first chunk (time to first token)."""
    upstream_s: float = 0.0
    waiting: int = 0
    wait_since: float = 0.0

    @property
    def answering(self) -> "Attempt | None":
        """The attempt that gave the answer; else (no answer) the last attempt made."""
        return self.answered or (self.attempts[-1] if self.attempts else None)

    @property
    def spend_usd(self) -> float:
        """Cost of every attempt so far, failed ones and sub-requests' included."""
        own = sum(a.cost_usd for a in self.attempts)
        return own + sum(c.spend_usd for c in self.children) if self.children else own

    @property
    def input_tokens(self) -> int:
        """Input tokens of every attempt, sub-requests' included."""
        return sum(a.usage.input_tokens for a in self.attempts) \
            + sum(c.input_tokens for c in self.children)

    @property
    def output_tokens(self) -> int:
        """Output tokens of every attempt, sub-requests' included."""
        return sum(a.usage.output_tokens for a in self.attempts) \
            + sum(c.output_tokens for c in self.children)

    @property
    def attempt_count(self) -> int:
        """Calls made for this request, sub-requests' included."""
        return len(self.attempts) + sum(c.attempt_count for c in self.children)

    @property
    def root(self) -> "Context":
        """The top-level request this context belongs to (itself when it has no parent)."""
        ctx = self
        while ctx.parent is not None:
            ctx = ctx.parent
        return ctx

    @property
    def error_kind(self) -> str | None:
        """How the failure is named in records and logs: the error's code, or ``cancelled`` when
        the client went away (or the gateway shut down) before the answer ended."""
        if self.error is None:
            return None
        if self.status == "cancelled":
            return "cancelled"
        return getattr(self.error, "code", None) or type(self.error).__name__

    @property
    def latency_s(self) -> float:
        return (self.ended or time.perf_counter()) - self.started

    @property
    def overhead_s(self) -> float:
        """Time the gateway itself took: total minus time waiting on providers (their answers,
        the Retry-After waits and backoffs between attempts, and sub-requests)."""
        return max(0.0, self.latency_s - self.upstream_s)

    def begin_wait(self) -> None:
        """Start waiting on something outside the gateway (a provider, a sub-request). Waits
        that overlap (concurrent attempts, a race of sub-requests) count once, as wall time."""
        if self.waiting == 0:
            self.wait_since = time.perf_counter()
        self.waiting += 1

    def end_wait(self) -> None:
        """Stop one wait begun with :meth:`begin_wait`."""
        self.waiting -= 1
        if self.waiting == 0:
            self.upstream_s += time.perf_counter() - self.wait_since

    def drop(self, model: ModelProfile, reason: str) -> None:
        """Remove a candidate model and note why in the decision record."""
        self.candidates = [m for m in self.candidates if m is not model]
        self.decision.setdefault("dropped", []).append({"model": model.name, "reason": reason})


# --- what frontends get ------------------------------------------------------------------------


@dataclass(slots=True)
class Answer:
    """A request's outcome as a frontend sees it: the answer with what it took to get it.

    Returned by ``Kernel.ask`` (and available from ``Kernel.ask_stream``'s stream at any point);
    an error raised by either carries one as ``error.answer``. Frontends read this, never the
    context.
    """

    request_id: str
    status: str
    completion: Completion | None
    model: str | None
    provider: str | None
    route: str | None
    strategy: str | None
    cost_usd: float
    latency_s: float
    overhead_s: float
    attempts: int
    input_tokens: int
    output_tokens: int
    decision: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)
    """Headers the plugins added (``Context.response_headers``), for the frontend to send."""

    @property
    def content(self) -> str | None:
        return self.completion.content if self.completion is not None else None

    @classmethod
    def of(cls, ctx: Context) -> "Answer":
        """The answer as it stands for ``ctx`` (cost and tokens grow while a stream runs)."""
        last = ctx.answering
        completion = ctx.completion
        model = completion.model if completion is not None and completion.model else \
            (last.model if last else None)
        provider = completion.provider if completion is not None and completion.provider else \
            (last.provider if last else None)
        return cls(
            request_id=ctx.request_id, status=ctx.status, completion=completion, model=model,
            provider=provider, route=ctx.route,
            strategy=ctx.plan.strategy if ctx.plan is not None else None,
            cost_usd=ctx.spend_usd, latency_s=ctx.latency_s, overhead_s=ctx.overhead_s,
            attempts=ctx.attempt_count, input_tokens=ctx.input_tokens,
            output_tokens=ctx.output_tokens, decision=ctx.decision,
            headers=ctx.response_headers)
