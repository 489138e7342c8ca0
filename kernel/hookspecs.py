"""The request lifecycle as hooks: the whole plugin contract of Turnout.

Hooks are listed in the order they fire for one request: classify, route, call, validate,
escalate, record; then the process-level hooks startup, shutdown and alert.

Every hook may be implemented as a plain function or as ``async def``; the kernel awaits what is
awaitable. Implementations take only the arguments they name, so hooks can gain arguments without
breaking plugins. ``tryfirst``/``trylast`` order implementations, and within the same mark the
plugin registered last is called first (built-ins, then entry points, then config paths).
``wrapper`` and ``hookwrapper`` implementations are refused (they would see un-awaited
coroutines), so timing and tracing live in the kernel.

"First answer wins" hooks are walked in pluggy's call order, each implementation awaited, until one
returns something other than None. "All answers gathered" hooks run every implementation
concurrently and collect the non-None results.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from .kernel import Kernel
    from .types import Alert, Completion, Context, Escalation, Plan, Step, Stream, Verdict

PROJECT = "turnout"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)

# ---------------------------------------------------------------------------------------------
# classify: the request has been accepted
# ---------------------------------------------------------------------------------------------


@hookspec
def classify(ctx: Context) -> dict[str, Any] | None:
    """Describe the request with labels, before it is routed.

    Fires once per request (and per sub-request), right after the request is accepted.

    :param ctx: The request context; ``ctx.request`` is the validated chat request.
    :return: A dict of labels to merge into ``ctx.labels`` (task type, complexity, context tokens,
        needs tools, language, ...), or None to add nothing.

    All answers are gathered; when two plugins set the same label, the later in call order wins.
    """


# ---------------------------------------------------------------------------------------------
# route: choose the models and the strategy
# ---------------------------------------------------------------------------------------------


@hookspec
def route(ctx: Context) -> Plan | None:
    """Choose the candidate models, narrow and order them, and turn them into a plan.

    Fires once per request after classify. Implementations run in three phases, by pluggy order:

    - ``tryfirst=True``: selection. For ``model: auto`` ``ctx.route`` is ``"auto"`` and
      ``ctx.candidates`` is empty; a router (the built-in rules router) picks the route and sets
      ``ctx.route`` and ``ctx.candidates``. For a route or model asked for by name both are set.
    - plain: filters (context-window fit, capabilities, budget, health, rate limits) drop models
      with ``ctx.drop(model, reason)`` and return None.
    - ``trylast=True``: strategies turn the remaining candidates into a
      :class:`~turnout.kernel.types.Plan` (the built-in fallback chain is the last resort).

    Any implementation may return a plan early. Write why into ``ctx.decision``.

    :param ctx: The request context, labels set.
    :return: A plan, or None to let the next implementation decide.

    Stops at the first non-None result. If none answers, the request fails with ``NoRoute``.
    """


# ---------------------------------------------------------------------------------------------
# call: get an answer for one step of the plan
# ---------------------------------------------------------------------------------------------


@hookspec
def call(ctx: Context, step: Step) -> Completion | Stream | None:
    """Answer one step of the plan: a cache hit, or the provider that serves ``step.model``.

    Fires once per attempt. A provider answers only for models whose ``provider`` is its own name.
    For ``ctx.request.stream`` a provider returns an async iterator of
    :class:`~turnout.kernel.types.Chunk`; otherwise a :class:`~turnout.kernel.types.Completion`
    (a cache may return a Completion for a stream too; the kernel replays it as chunks). Failures
    are raised as ``turnout.kernel.errors.ProviderError`` subclasses.

    :param ctx: The request context.
    :param step: The step to answer: ``step.model`` is the model profile, ``step.timeout_s`` the
        attempt's deadline.
    :return: The answer, or None when this plugin does not serve the step.

    Stops at the first non-None result.
    """


# ---------------------------------------------------------------------------------------------
# validate: judge an answer
# ---------------------------------------------------------------------------------------------


@hookspec
def validate(ctx: Context, completion: Completion) -> Verdict | None:
    """Judge one answer: JSON that parses, a schema, a length, a judge model's score.

    Fires after every successful call. For streams it fires once the stream has ended, when the
    answer can no longer be replaced; its verdicts are then recorded, not acted on.

    :param ctx: The request context.
    :param completion: The answer to judge.
    :return: A :class:`~turnout.kernel.types.Verdict`, or None when this validator does not apply.

    All answers are gathered; any verdict with ``ok=False`` fails the answer and fires escalate.
    """


# ---------------------------------------------------------------------------------------------
# escalate: decide what happens after an error or a failed verdict
# ---------------------------------------------------------------------------------------------


@hookspec
def escalate(ctx: Context, error: Exception | None, verdicts: list[Verdict]) -> Escalation | None:
    """Decide the next move after a failed attempt: retry, next step, or stop.

    Fires after a call raised (``error`` set) or an answer failed validation (``verdicts`` holds
    the failing ones). ``ctx.plan.cursor`` points at the step that failed; ``ctx.attempts[-1]`` is
    the failed attempt.

    :param ctx: The request context.
    :param error: The error the call raised, or None for a failed verdict.
    :param verdicts: The failing verdicts (empty after an error).
    :return: An :class:`~turnout.kernel.types.Escalation`, or None to let the next plugin decide.

    Stops at the first non-None result. If none answers, the request fails with the error.
    """


# ---------------------------------------------------------------------------------------------
# record: the request has ended
# ---------------------------------------------------------------------------------------------


@hookspec
def record(ctx: Context) -> None:
    """See the outcome of a request that ended, answered or failed; fires exactly once per request.

    ``ctx.status`` is ``ok``, ``error`` or ``cancelled``; ``ctx.completion`` or ``ctx.error`` says
    what came of it, ``ctx.attempts`` and ``ctx.decision`` how. Runs shielded from cancellation, so
    a client hanging up does not lose the record. A recorder that raises is logged and never fails
    the request.

    :param ctx: The finished request context.
    :return: Nothing.

    All implementations run.
    """


# ---------------------------------------------------------------------------------------------
# process lifecycle and alerts
# ---------------------------------------------------------------------------------------------


@hookspec
def startup(kernel: Kernel) -> None:
    """Open pools and stores, and register models, before the first request.

    Fires once when the gateway starts. Register models with ``kernel.models.register(profile)``;
    read your settings from ``kernel.config.plugin_settings(name)``. An exception here stops
    startup with the plugin's name in the message.

    :param kernel: The kernel.
    :return: Nothing.

    All implementations run, concurrently.
    """


@hookspec
def shutdown(kernel: Kernel) -> None:
    """Close pools and stores and flush what is buffered, after the last request.

    :param kernel: The kernel.
    :return: Nothing.

    All implementations run, concurrently; one that raises is logged and does not stop the others.
    """


@hookspec
def alert(alert: Alert) -> None:
    """Deliver an alert: a budget threshold crossed, latency over its bound, a provider down.

    Fires when a rule fires or clears (``alert.resolved``). Delivery plugins (log, webhook, Slack)
    de-duplicate on ``alert.name`` and ``alert.labels``. One that raises is logged and never fails
    the request that raised the alert.

    :param alert: The alert.
    :return: Nothing.

    All implementations run.
    """
