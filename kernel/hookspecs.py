"""The request lifecycle as hooks: the whole plugin contract of Turnout.

Read top to bottom, this module is the life of one request: classify; route, in three phases
(select_route, filter_candidates, plan_route); call; validate; escalate; record; and feedback,
when someone scores the answer, after or long after. Then the process-level hooks (startup,
shutdown, alert), and last the registration hooks through which plugins hand the kernel named
things once, at load: provider kinds, strategies, validators, routers, store backends, HTTP
routes and CLI commands.

The dispatch is declared here, not at the call sites: a spec marked ``firstresult=True`` is walked
in call order until an implementation answers (something other than None); every other spec runs
all its implementations and gathers their answers. Specs marked :func:`isolated` log and skip an
implementation that raises instead of failing the caller. A result whose type does not match the
spec's return annotation is refused with the plugin's name.

Every request hook may be a plain function or ``async def``; the kernel awaits what is awaitable.
Registration hooks are plain functions (they run once, while plugins load). Implementations take
only the arguments they name, so hooks can gain arguments without breaking plugins.
``tryfirst``/``trylast`` order implementations, and within the same mark the plugin registered last
is called first (built-ins, then entry points, then config paths). ``wrapper`` and ``hookwrapper``
implementations are refused (they would see un-awaited coroutines).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import pluggy

from .types import (
    Alert,
    Completion,
    Context,
    Escalation,
    Feedback,
    Hold,
    Plan,
    Selection,
    Step,
    Stream,
    Verdict,
)

if TYPE_CHECKING:
    from .kernel import Kernel

PROJECT = "turnout"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)

ISOLATED = PROJECT + "_isolated"
REGISTRATION = PROJECT + "_registration"
IN_ORDER = PROJECT + "_in_order"

__all__ = ["Alert", "Completion", "Context", "Escalation", "Feedback", "Hold", "Plan", "Selection",
           "Step", "Stream", "Verdict", "hookimpl", "hookspec"]


def isolated(spec: Callable) -> Callable:
    """Mark a spec whose failing implementations are logged and skipped, never failing the caller
    (recorders, feedback sinks, alert delivery, shutdown)."""
    setattr(spec, ISOLATED, True)
    return spec


def in_order(spec: Callable) -> Callable:
    """Mark a spec whose implementations run one at a time in call order, ``async`` ones too, so
    that when one raises, the answers of those before it are known: they travel on the error as
    ``error.partial`` for the kernel to undo (holds taken before a refusal)."""
    setattr(spec, IN_ORDER, True)
    return spec


def registration(spec: Callable) -> Callable:
    """Mark a registration spec: plain implementations only, called once while plugins load."""
    setattr(spec, REGISTRATION, True)
    return spec


# =============================================================================================
# classify: the request has been accepted
# =============================================================================================


@hookspec
def classify(ctx: Context) -> dict | None:
    """Describe the request with labels, before it is routed.

    Fires once per request (and per sub-request), right after the request is accepted.

    :param ctx: The request context; ``ctx.request`` is the validated chat request.
    :return: A dict of labels to merge into ``ctx.labels``, or None to add nothing. The built-in
        labels (task, difficulty and its alias complexity, language, prompt_tokens, turns,
        needs_tools, needs_json, needs_vision, classifier) are typed and documented in
        :mod:`turnout.kernel.labels` (``Labels``, ``DOCS``).

    All answers are gathered; when two plugins set the same label, the later in call order wins.
    """


# =============================================================================================
# route, phase 1 of 3: select the route
# =============================================================================================


@hookspec(firstresult=True)
def select_route(ctx: Context) -> Selection | None:
    """Choose the route (and so the candidate models) for a request that asked for ``auto``.

    Fires once per ``auto`` request after classify; a request that names a route or a model has
    its candidates already and skips this phase. The built-in rules router answers last with the
    first matching ``[[routing.rules]]`` entry or ``routing.default``.

    :param ctx: The request context, labels set; ``ctx.route`` is ``"auto"``.
    :return: A :class:`~turnout.kernel.types.Selection` naming the route (and, optionally, its own
        list of models), or None to let the next router decide.

    Stops at the first non-None result.
    """


# =============================================================================================
# route, phase 2 of 3: filter the candidates
# =============================================================================================


@hookspec
def filter_candidates(ctx: Context) -> None:
    """Drop (or reorder) candidate models: context-window fit, capabilities, budget, health.

    Fires once per request after the route is known. Drop a model with ``ctx.drop(model,
    reason)``, which also writes why into the decision record; reorder by assigning a new list to
    ``ctx.candidates``. Plain implementations run one after another in call order, ``async``
    ones concurrently.

    :param ctx: The request context; ``ctx.route`` and ``ctx.candidates`` are set.
    :return: Nothing: plans are made in :func:`plan_route`.

    All implementations run.
    """


# =============================================================================================
# route, phase 3 of 3: plan
# =============================================================================================


@hookspec(firstresult=True)
def plan_route(ctx: Context) -> Plan | None:
    """Turn the remaining candidates into a plan: a strategy and its ordered steps.

    Fires once per request after the filters. When no plugin answers, the kernel plans the
    route's own strategy (``routes.NAME.strategy``, ``fallback`` by default) over the remaining
    candidates in order. The plan's strategy must be registered (:func:`register_strategies`).

    :param ctx: The request context; ``ctx.candidates`` holds what the filters left.
    :return: A :class:`~turnout.kernel.types.Plan`, or None to let the next plugin (and at last
        the route's own strategy) decide.

    Stops at the first non-None result.
    """


# =============================================================================================
# admit: may this attempt be made?
# =============================================================================================


@in_order
@hookspec
def admit(ctx: Context, step: Step) -> Hold | None:
    """Admit one attempt before it is made: take a rate-limit slot, reserve its worst-case cost
    against the budgets.

    Fires before every attempt: retries, fallbacks and every sub-request's attempts included,
    cache hits too (a ``call`` plugin answers after admission). To refuse, raise a
    ``turnout.kernel.errors.TurnoutError`` (``BudgetExceeded``, ``RateLimited``): the request
    fails with it, no further attempt is made, and the holds already taken for this attempt are
    ended. Headers for the client go in ``ctx.response_headers`` (``x-ratelimit-*``).

    :param ctx: The request context; ``ctx.caller`` says who asked.
    :param step: The step about to be called: ``step.model`` is the model.
    :return: A :class:`~turnout.kernel.types.Hold` whose ``done(attempt)`` the kernel awaits
        once the attempt has ended (to settle a reservation to the real cost, or release it), or
        None when nothing is held.

    All implementations run, one at a time in call order.
    """


# =============================================================================================
# call: get an answer for one step of the plan
# =============================================================================================


@hookspec(firstresult=True)
def call(ctx: Context, step: Step) -> Completion | Stream | None:
    """Answer one step instead of its provider: a cache hit, a canned reply, a test double.

    Fires once per attempt, before the provider. When no plugin answers, the provider that the
    config names for ``step.model.provider`` answers (a lookup, see
    :func:`register_providers`). For ``ctx.request.stream`` return an async iterator of
    :class:`~turnout.kernel.types.Chunk` or a :class:`~turnout.kernel.types.Completion` (the
    kernel replays it as chunks). Failures are raised as ``turnout.kernel.errors.ProviderError``
    subclasses.

    :param ctx: The request context.
    :param step: The step to answer: ``step.model`` is the model profile, ``step.timeout_s`` the
        attempt's deadline.
    :return: The answer, or None to let the provider answer.

    Stops at the first non-None result.
    """


# =============================================================================================
# validate: judge an answer
# =============================================================================================


@hookspec
def validate(ctx: Context, completion: Completion) -> Verdict | None:
    """Judge one answer: JSON that parses, a schema, a length, a judge model's score.

    Fires after every successful call, beside the validators the route names
    (``routes.NAME.validators``, see :func:`register_validators`). For streams it fires once the
    stream has ended, when the answer can no longer be replaced; its verdicts are then recorded,
    not acted on.

    :param ctx: The request context.
    :param completion: The answer to judge.
    :return: A :class:`~turnout.kernel.types.Verdict`, or None when this validator does not apply.

    All answers are gathered; any verdict with ``ok=False`` fails the answer and fires escalate.
    """


# =============================================================================================
# escalate: decide what happens after an error or a failed verdict
# =============================================================================================


@hookspec(firstresult=True)
def escalate(ctx: Context, error: Exception | None, verdicts: list) -> Escalation | None:
    """Decide the next move after a failed attempt: retry, next step, or stop.

    Fires when a strategy asks (the built-in ``fallback`` strategy asks after every failed
    attempt), unless the request has used up its attempts (``routes.NAME.max_attempts``), which
    stops it without asking. ``ctx.plan.cursor`` points at the step that failed;
    ``ctx.attempts[-1]`` is the failed attempt.

    :param ctx: The request context.
    :param error: The error the call raised, or None for a failed verdict.
    :param verdicts: The failing verdicts (empty after an error).
    :return: An :class:`~turnout.kernel.types.Escalation`, or None to let the next plugin decide.

    Stops at the first non-None result. If none answers, the request fails with the error.
    """


# =============================================================================================
# record: the request has ended
# =============================================================================================


@isolated
@hookspec
def record(ctx: Context) -> None:
    """See the outcome of a request that ended, answered or failed; fires exactly once per request.

    ``ctx.status`` is ``ok``, ``error`` or ``cancelled``; ``ctx.completion`` or ``ctx.error`` says
    what came of it, ``ctx.attempts`` and ``ctx.decision`` how. A sub-request is recorded before
    its parent, and the parent's spend includes it (``ctx.spend_usd``). Runs shielded from
    cancellation, so a client hanging up does not lose the record.

    :param ctx: The finished request context.
    :return: Nothing.

    All implementations run; one that raises is logged and never fails the request.
    """


# =============================================================================================
# feedback: someone judged an answer
# =============================================================================================


@isolated
@hookspec
def feedback(feedback: Feedback) -> None:
    """See a score of an answer: a person's thumbs up or down, or a judge's verdict.

    Fires when a frontend calls ``Kernel.feedback`` (``POST /v1/feedback``, a Slack button),
    after or long after the request: in another process, after a restart, even before the
    request's own record is written. ``feedback.request_id`` may therefore name a request this
    process never saw, or a sub-request; keep the feedback anyway. The record plugin stores it
    beside the request, for ``turnout stats``, experiments and learned routers.

    :param feedback: The score (-1 bad, 0 neutral, 1 good), who gave it, from where, and a
        comment already scrubbed of secrets.
    :return: Nothing.

    All implementations run; one that raises is logged and never fails the caller.
    """


# =============================================================================================
# process lifecycle and alerts
# =============================================================================================


@hookspec
def startup(kernel: Kernel) -> None:
    """Open pools, read settings and register models, before the first request.

    Fires once when the gateway starts, after the plugins' settings are validated and before the
    providers and the store are built. Read your settings with ``kernel.plugin_settings(self)``;
    register models with ``kernel.models.register(profile)``. An exception here stops startup
    with the plugin's name in the message.

    :param kernel: The kernel.
    :return: Nothing.

    All implementations run, concurrently.
    """


@isolated
@hookspec
def shutdown(kernel: Kernel) -> None:
    """Close pools and stores and flush what is buffered, after the last request.

    :param kernel: The kernel.
    :return: Nothing.

    All implementations run, concurrently; one that raises is logged and does not stop the others.
    """


@isolated
@hookspec
def alert(alert: Alert) -> None:
    """Deliver an alert: a budget threshold crossed, latency over its bound, a provider down.

    Fires when a rule fires or clears (``alert.resolved``), once across replicas for the alert
    rules' own alerts. ``alert.key`` (the name and the labels) identifies an alert while it
    lasts: delivery plugins (log, webhook, Slack) update or close what they posted under it;
    ``alert.channel`` says where a chat sink should post it, ``alert.action`` what is being done
    while it lasts.

    :param alert: The alert.
    :return: Nothing.

    All implementations run; one that raises is logged and never fails the request that raised
    the alert.
    """


# =============================================================================================
# registration: named things, handed over once while plugins load
# =============================================================================================


@registration
@hookspec
def register_providers(register: Callable[..., None]) -> None:
    """Register provider kinds that ``[providers.NAME] kind = "..."`` can name.

    Call ``register(kind, factory, settings=None)``: ``factory(name, settings)`` returns a
    :class:`~turnout.kernel.provider.Provider` for one configured provider; ``settings`` is the
    pydantic model that validates its ``[providers.NAME]`` table (default: ``factory.Settings``).

    :param register: The callback.
    :return: Nothing.

    All implementations run, once, while plugins load; a kind registered twice is an error.
    """


@registration
@hookspec
def register_strategies(register: Callable[..., None]) -> None:
    """Register strategies that ``routes.NAME.strategy`` and plans can name.

    Call ``register(name, strategy)`` with a :class:`~turnout.kernel.strategy.Strategy`; its
    ``Settings`` model validates the route's ``[routes.NAME.<name>]`` sub-table.

    :param register: The callback.
    :return: Nothing.

    All implementations run, once, while plugins load; a name registered twice is an error.
    """


@registration
@hookspec
def register_validators(register: Callable[..., None]) -> None:
    """Register validators that ``routes.NAME.validators`` can name.

    Call ``register(name, check)`` where ``check(ctx, completion)`` returns a
    :class:`~turnout.kernel.types.Verdict` or None (does not apply); it may be ``async``.

    A validator with settings registers their pydantic model too:
    ``register(name, check, settings=Model)``. Routes then list it as a table,
    ``validators = [{ kind = "<name>", ...its settings }]``, validated by ``Model`` when the config
    loads (errors name file and line); ``check(ctx, completion, settings)`` receives the validated
    table when it declares that third parameter. A route that sets no ``validators`` runs every
    validator registered without a settings model.

    :param register: The callback.
    :return: Nothing.

    All implementations run, once, while plugins load; a name registered twice is an error.
    """


@registration
@hookspec
def register_routers(register: Callable[..., None]) -> None:
    """Register routers that order a route's models: ``[routes.NAME] router = "<name>"``.

    Call ``register(name, router, settings=None)``: ``router(ctx, candidates, settings)`` (plain
    or ``async``) returns a :class:`~turnout.kernel.types.Ranking` (the candidates in the order
    the strategy gets them, a one-line reason, per-model scores and details) or None to leave
    the order as it is. ``settings`` is the optional pydantic model of the router's table: a
    route then writes ``router = { kind = "<name>", ...its settings }``, validated when the
    config loads (errors name file and line), and ``router`` receives the validated table
    (None for a router without settings). The kernel calls the route's router once per request,
    after :func:`filter_candidates`, with ``ctx.candidates``; it sets ``ctx.candidates`` to the
    ranking's models (which must be among the candidates) and records
    ``decision["router"] = {"kind": name, "reason": ..., "scores": ..., **details}``.

    :param register: The callback.
    :return: Nothing.

    All implementations run, once, while plugins load; a name registered twice is an error.
    """


@registration
@hookspec
def register_stores(register: Callable[..., None]) -> None:
    """Register store backends that ``[state] backend = "..."`` can name.

    Call ``register(backend, factory)``: ``factory(settings)`` returns a
    :class:`~turnout.kernel.store.Store`; ``factory.Settings`` validates the rest of the
    ``[state]`` table.

    :param register: The callback.
    :return: Nothing.

    All implementations run, once, while plugins load; a backend registered twice is an error.
    """


@registration
@hookspec
def register_http_routes(register: Callable[..., None]) -> None:
    """Register HTTP endpoints served beside the API (``/metrics``, ``/slack/events``).

    Call ``register(path, endpoint, methods=("GET",))``: ``endpoint(request)`` is an async
    Starlette endpoint returning a response. Keep the kernel from ``startup`` to reach it.

    :param register: The callback.
    :return: Nothing.

    All implementations run, once, while plugins load; a path and method registered twice is an
    error.
    """


@registration
@hookspec
def register_commands(register: Callable[..., None]) -> None:
    """Register ``turnout`` CLI sub-commands.

    Call ``register(name, run, help="...", arguments=None)``: ``arguments(parser)`` adds the
    command's options to its ``argparse`` parser; ``run(args)`` does the work and returns the
    exit status. Commands come from built-in and installed (entry point) plugins.

    :param register: The callback.
    :return: Nothing.

    All implementations run, once, while plugins load; a name registered twice is an error.
    """


MOVED: dict[str, str] = {
    "route": "the route event is three hooks now: select_route (return a Selection for 'auto'), "
             "filter_candidates (drop models with ctx.drop, return None) and plan_route (return "
             "a Plan); implement the one your plugin's job belongs to",
}
"""Hooks that were renamed or split, with what to implement instead; named in load errors."""
