"""Running the suite: every item to every model, each call on its own, each answer checked.

A call goes straight to the model's provider (``provider.complete``), as the kernel's attempt
would make it, but outside the request pipeline: no router, strategy, retry, cache, budget, rate
limit, health filter or record stands between the suite and the model, so what is measured is
the model behind its provider and nothing else. The answer is judged by the gateway's own
validators, looked up in the kernel's registry and bound to the item's settings.

An item's call that fails (an error status, a timeout, a connection refused) is a failed item:
its error kind (``upstream_unavailable``, ``rate_limited``, ``upstream_timeout``...) is kept, and
the run goes on.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

import anyio

from turnout.kernel import tokens
from turnout.kernel.errors import ConfigError, TurnoutError
from turnout.kernel.manager import resolve
from turnout.kernel.observability import scrub
from turnout.kernel.types import ChatRequest, Completion, ModelProfile, Usage

from .suite import Item

if TYPE_CHECKING:
    from turnout.kernel.kernel import Kernel


@dataclass(slots=True)
class Outcome:
    """One call of one item to one model, and what came of it."""

    model: str
    item: str
    task: str
    passed: bool
    reason: str = ""
    """Why the item failed: the failing validator's reason, or the error."""
    error: str | None = None
    """The error kind when the call failed (no answer to check)."""
    latency_ms: float | None = None
    """Time to the whole answer; None for a failed call."""
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0


class Checks:
    """The suite's checks bound to the validators the kernel has registered."""

    def __init__(self, kernel: Kernel, items: list[Item]) -> None:
        self.kernel = kernel
        self.bound: dict[str, list[tuple[str, Callable[..., Any]]]] = {}
        self.schemas: dict[str, dict[str, Any]] = {}
        for item in items:
            checks = []
            for kind, settings in item.checks:
                validator = kernel.validators.get(kind)
                if validator is None:
                    raise ConfigError(f"the suite's item {item.id} is checked by validator "
                                       f"{kind!r}, which no loaded plugin registers; do not "
                                       f"disable the plugin that provides it")
                if kind == "json":  # judged against the request's schema: the strict one
                    self.schemas[item.id] = (settings or {})["schema"]
                    checks.append((kind, validator.bind(None)))
                    continue
                model = validator.settings
                value = model.model_validate(settings or {}) if model is not None else None
                checks.append((kind, validator.bind(value)))
            self.bound[item.id] = checks

    async def judge(self, item: Item, model: ModelProfile,
                    completion: Completion) -> tuple[bool, str]:
        """Whether the answer passes every check of ``item``, and why not."""
        fields: dict[str, Any] = {"model": model.name,
                                  "messages": [{"role": "user", "content": item.prompt}]}
        schema = self.schemas.get(item.id)
        if schema is not None:
            fields["response_format"] = {"type": "json_schema",
                                         "json_schema": {"name": "check", "schema": schema}}
        ctx = self.kernel.context(ChatRequest(**fields))
        for kind, check in self.bound[item.id]:
            verdict = await resolve(check(ctx, completion))
            if verdict is not None and not verdict.ok:
                return False, f"{kind}: {verdict.reason}"
        return True, ""


def request_for(item: Item, model: ModelProfile) -> ChatRequest:
    """What ``model`` is sent for ``item``: the prompt as the only user message, the item's
    output limit (the model's, when lower) and, for extraction, the item's schema as
    ``response_format`` when the model has the ``json`` capability (else the prompt alone asks
    for JSON)."""
    limit = min(item.max_tokens, model.max_output_tokens or item.max_tokens)
    fields: dict[str, Any] = {"model": model.name, "max_tokens": limit,
                              "messages": [{"role": "user", "content": item.prompt}]}
    if item.schema is not None and "json" in model.capabilities:
        fields["response_format"] = {"type": "json_schema",
                                     "json_schema": {"name": "answer", "schema": item.schema}}
    return ChatRequest(**fields)


async def ask(kernel: Kernel, model: ModelProfile, item: Item, checks: Checks,
              timeout_s: float, calls: anyio.CapacityLimiter) -> Outcome:
    """Send ``item`` to ``model`` and check the answer; never raises for a failed call."""
    request = request_for(item, model)
    outcome = Outcome(model.name, item.id, item.task, False)
    provider = kernel.providers.get(model.provider)
    if provider is None:
        outcome.error, outcome.reason = "provider_missing", \
            f"no provider named {model.provider!r} is configured"
        return outcome
    async with calls:
        started = time.perf_counter()
        try:
            with anyio.fail_after(timeout_s):
                completion = await provider.complete(request, model)
        except TimeoutError:
            outcome.error = "upstream_timeout"
            outcome.reason = f"no answer within {timeout_s:g}s (--timeout)"
            return outcome
        except TurnoutError as exc:
            outcome.error, outcome.reason = exc.kind, scrub(exc.message, limit=200)
            return outcome
        except Exception as exc:  # noqa: BLE001 - a provider's bug fails the item, not the run
            outcome.error = type(exc).__name__
            outcome.reason = scrub(str(exc), limit=200)
            return outcome
        outcome.latency_ms = (time.perf_counter() - started) * 1000
    usage = completion.usage
    if not usage.input_tokens:  # counted the way the kernel counts what a provider left out
        usage = Usage(tokens.count_request(request),
                      usage.output_tokens or tokens.count(completion.content or ""))
    outcome.input_tokens, outcome.output_tokens = usage.input_tokens, usage.output_tokens
    outcome.cost_usd = model.cost(usage)
    try:
        outcome.passed, outcome.reason = await checks.judge(item, model, completion)
    except Exception as exc:  # noqa: BLE001 - a check that breaks fails the item, with why
        outcome.reason = f"the check failed to run: {type(exc).__name__}: {exc}"
    return outcome


async def run(kernel: Kernel, models: list[ModelProfile], items: list[Item], *, repeat: int,
              concurrency: int, timeout_s: float,
              progress: Callable[[Outcome], None] | None = None) -> list[Outcome]:
    """Every item ``repeat`` times to every model, at most ``concurrency`` calls at once; the
    outcomes in suite order (model, then item, then repetition)."""
    checks = Checks(kernel, items)
    calls = anyio.CapacityLimiter(concurrency)
    jobs = [(model, item) for model in models for item in items for _ in range(repeat)]
    outcomes: list[Outcome | None] = [None] * len(jobs)

    async def one(index: int, model: ModelProfile, item: Item) -> None:
        outcomes[index] = found = await ask(kernel, model, item, checks, timeout_s, calls)
        if progress is not None:
            progress(found)

    async with anyio.create_task_group() as group:
        for index, (model, item) in enumerate(jobs):
            group.start_soon(one, index, model, item)
    return [o for o in outcomes if o is not None]
