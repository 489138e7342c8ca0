"""The ``chain`` strategy: named stages, each a prompt to a model or a route, fed by the answers
of the stages before it.

A chain route lists no ``models``; its ``stages`` (keys of ``[routes.NAME]``, written as
``[[routes.NAME.stages]]`` tables) say what is asked of whom::

    [routes.review-pipeline]
    strategy = "chain"
    [[routes.review-pipeline.stages]]
    name = "triage"
    model = "small"
    prompt = "Rate the risk of this change as LOW, MEDIUM or HIGH: {input}"
    [[routes.review-pipeline.stages]]
    name = "deep"
    model = "large"
    prompt = "Review this high-risk change in depth: {input}"
    when = { stage = "triage", matches = "HIGH" }

Each stage is a sub-request of the route's request (``run.subrequest``: routed, budgeted,
recorded with the request as parent, its cost added to the request's) asking its ``model`` (a
model, or a route with its own strategy). What the stage sees: the request's system (and
developer) messages, as they are, then one user message, the stage's ``prompt`` rendered. The
rest of the conversation and the request's options (temperature, tools, response format...) are
not passed on. In the prompt, ``{input}`` is the text of the request's last user message and
``{NAME}`` the answer of the earlier stage NAME; every ``{identifier}`` is a placeholder and must
name ``input`` or an earlier stage (checked when the config loads), while other braces (``{"a":
1}``, ``{ }``) stay as written. Values are put in once, as text: braces in the user's input or in
a stage's answer are never read as placeholders.

A stage depends on the stages its prompt names and the stage its ``when`` tests. Stages that do
not depend on each other run at the same time; each one starts as soon as the stages it depends
on are done. ``when = { stage, matches }`` runs the stage only if that earlier stage ran and its
answer matches the regular expression (``re.search``). A stage whose condition fails is skipped,
and so is every stage depending on a skipped one. A stage that fails fails the request (the
stages still running are cancelled); name a route as a stage's model to give it a fallback.

The answer is the answer of the last stage, in the order written, that ran. For a streaming
request the stage that is the last to run (every later stage already skipped) is asked for a
stream, which the client gets as it comes; when the last stage to run was asked for a whole
answer (later stages were not yet decided when it started), that answer is replayed as a stream.

``decision["chain"]`` records ``stages``, one entry per stage: ``name``, ``model``, ``ran``,
``skipped_because`` (for a skipped stage), ``started_s`` and ``ended_s`` (seconds from the
chain's start; for a streamed stage ``ended_s`` is its first chunk and ``streamed`` is true),
``chars`` (its answer's length; not for a streamed stage) and ``error`` (a stage that failed);
and ``answer_stage``, the stage whose answer was returned.
"""

from __future__ import annotations

import re
import sys
import time
from collections.abc import Mapping
from typing import Any

import anyio
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from turnout.kernel.errors import NoRoute
from turnout.kernel.hookspecs import hookimpl
from turnout.kernel.kernel import AnswerStream
from turnout.kernel.strategy import Run, Strategy
from turnout.kernel.types import ChatRequest, Completion

NAME = "chain"
"""The strategy's name, as routes write it."""

INPUT = "input"
"""The placeholder for the text of the request's last user message."""

PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
"""A placeholder: an identifier in braces."""

CONTEXT_ROLES = ("system", "developer")
"""The roles of the request's messages every stage sees."""


def placeholders(template: str) -> list[str]:
    """The names of the placeholders in ``template``, in order (repeats included)."""
    return PLACEHOLDER.findall(template)


def render(template: str, values: Mapping[str, str]) -> str:
    """``template`` with each ``{name}`` whose name is in ``values`` replaced by its value, in one
    pass: braces in the values are never read as placeholders; every other brace stays."""
    return PLACEHOLDER.sub(lambda m: values.get(m.group(1), m.group(0)), template)


# --- settings ----------------------------------------------------------------------------------


class When(BaseModel):
    """A stage's condition: an earlier stage's answer must match."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    stage: str = Field(description="An earlier stage (or 'input', the user's message) whose "
                       "text is tested; when that stage was skipped, so is this one.")
    matches: str = Field(description="A regular expression (Python syntax) found anywhere in "
                         "that text (re.search, case-sensitive; write (?i) for any case) for "
                         "this stage to run.")

    @field_validator("stage")
    @classmethod
    def _an_earlier_stage(cls, value: str, info: ValidationInfo) -> str:
        if value != INPUT:
            _check_earlier(value, info, "names")
        return value

    @field_validator("matches")
    @classmethod
    def _compiles(cls, value: str) -> str:
        try:
            re.compile(value)
        except re.error as exc:
            raise ValueError(f"not a valid regular expression: {exc}") from None
        return value


class Stage(BaseModel):
    """One stage of a chain: a prompt to a model or route."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$", description="The stage's name "
                      "(letters, digits, underscores), unique in the route: later prompts use "
                      "its answer as {name}, and 'when' tests it. 'input' is taken.")
    model: str = Field(description="The model or route that answers (not 'auto', nor this "
                       "route).")
    prompt: str = Field(description="The user message sent: {input} is the text of the "
                        "request's last user message, {name} the answer of the earlier stage "
                        "name. Every {identifier} must be one of those; other braces stay as "
                        "written.")
    when: When | None = Field(default=None, description="{ stage = \"name\", matches = "
                              "\"regex\" }: run only if that earlier stage ran and its answer "
                              "matches; unset: always run (unless a stage it uses was skipped).")

    @model_validator(mode="before")
    @classmethod
    def _count(cls, raw: Any, info: ValidationInfo) -> Any:
        context = info.context
        if isinstance(context, dict) and "chain.names" in context:
            context["chain.index"] += 1
        return raw

    @field_validator("name")
    @classmethod
    def _unique(cls, value: str, info: ValidationInfo) -> str:
        if value == INPUT:
            raise ValueError("'input' is the placeholder of the user's message; name the stage "
                             "otherwise")
        earlier = _earlier(info)
        if earlier is not None and value in earlier:
            raise ValueError(f"a stage before this one is named {value!r} too; stage names "
                             "must be unique in the route")
        return value

    @field_validator("model")
    @classmethod
    def _known(cls, value: str, info: ValidationInfo) -> str:
        context = info.context if isinstance(info.context, dict) else {}
        models, routes = context.get("models"), context.get("routes")
        if models is None or routes is None:
            return value
        if value == context.get("route"):
            raise ValueError("a stage cannot ask its own route; name a model or another route")
        if value not in models and value not in routes:
            what = "'auto' lets the routers choose, which a stage cannot: " if value == "auto" \
                else f"no model or route {value!r}; "
            raise ValueError(f"{what}name one of the models ({', '.join(sorted(models))}) or "
                             f"routes ({', '.join(sorted(routes))})")
        return value

    @field_validator("prompt")
    @classmethod
    def _placeholders_known(cls, value: str, info: ValidationInfo) -> str:
        for name in dict.fromkeys(placeholders(value)):
            if name != INPUT:
                _check_earlier(name, info, "{%s} names" % name)
        return value


class ChainRouteSettings(BaseModel):
    """A chain's stages: the ``stages`` key of ``[routes.NAME]``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    stages: list[Stage] = Field(
        default_factory=list, validate_default=True,
        description="The stages of a route with strategy = \"chain\", in order, each a "
        "[[routes.NAME.stages]] table with name, model, prompt and optionally when. The answer "
        "is that of the last stage that ran. Only chain routes take stages, and they need them.")

    @field_validator("stages", mode="before")
    @classmethod
    def _names(cls, raw: Any, info: ValidationInfo) -> Any:
        context = info.context
        if isinstance(context, dict) and isinstance(raw, list):
            context["chain.names"] = [s.get("name") if isinstance(s, dict) else None
                                      for s in raw]
            context["chain.index"] = -1
        return raw

    @field_validator("stages")
    @classmethod
    def _only_for_chains(cls, stages: list[Stage], info: ValidationInfo) -> list[Stage]:
        context = info.context if isinstance(info.context, dict) else {}
        strategy = context.get("strategy")
        if strategy is None:
            return stages
        if strategy == NAME and not stages:
            raise ValueError("a route with strategy = \"chain\" needs stages: add "
                             f"[[routes.{context.get('route', 'NAME')}.stages]] tables, each "
                             "with name, model and prompt")
        if strategy != NAME and stages:
            raise ValueError(f"only strategy = \"chain\" runs stages, and this route's strategy "
                             f"is {strategy!r}: set strategy = \"chain\" or remove the stages")
        return stages


RouteSettings = ChainRouteSettings
"""The keys this plugin adds to every ``[routes.NAME]`` table."""


def _earlier(info: ValidationInfo) -> list[str] | None:
    """The names of the stages before the one being validated; None outside a config check."""
    context = info.context
    if not isinstance(context, dict) or "chain.names" not in context:
        return None
    names = context["chain.names"][:max(context["chain.index"], 0)]
    return [n for n in names if isinstance(n, str)]


def _check_earlier(name: str, info: ValidationInfo, what: str) -> None:
    """Raise unless ``name`` is a stage before the one being validated."""
    earlier = _earlier(info)
    if earlier is None or name in earlier:
        return
    index = info.context["chain.index"]
    own = info.context["chain.names"][index] if index >= 0 else None
    usable = ", ".join([INPUT, *earlier])
    if name == own:
        raise ValueError(f"{what} this stage itself; a stage can use only {usable}")
    if name in info.context["chain.names"]:
        raise ValueError(f"{what} stage {name!r}, which comes later; a stage can use only the "
                         f"stages before it: {usable}")
    raise ValueError(f"{what} no stage: {name!r} is unknown; a stage can use only {usable}")


# --- the strategy ------------------------------------------------------------------------------


class ChainStrategy(Strategy):
    """Run the route's stages, each as soon as what it depends on is done; answer with the last
    that ran."""

    needs_models = False

    async def run(self, run: Run) -> Completion | AnswerStream:
        settings = run.kernel.route_settings(sys.modules[__name__], run.ctx.route)
        stages: list[Stage] = list(getattr(settings, "stages", None) or [])
        if not stages:
            raise NoRoute(f"route {run.ctx.route!r} has no stages; a chain route lists them as "
                          f"[[routes.{run.ctx.route}.stages]] tables")
        ancestor = run.ctx.parent
        while ancestor is not None:
            if ancestor.route == run.ctx.route:
                raise NoRoute(f"route {run.ctx.route!r} asks itself through its stages; a "
                              "stage's model must not lead back to its own chain")
            ancestor = ancestor.parent
        return await _Chain(run, stages).run()


class _Chain:
    """One run of a chain's stages."""

    def __init__(self, run: Run, stages: list[Stage]) -> None:
        self.handle = run
        self.stages = stages
        index = {s.name: i for i, s in enumerate(stages)}
        self.deps = [sorted({index[n] for n in placeholders(s.prompt) if n in index}
                            | ({index[s.when.stage]} if s.when and s.when.stage in index
                               else set())) for s in stages]
        self.status = ["waiting"] * len(stages)
        self.entries: list[dict[str, Any]] = [{"name": s.name, "model": s.model, "ran": False}
                                              for s in stages]
        self.values: dict[str, str] = {INPUT: _last_user_text(run.ctx.request)}
        self.results: dict[int, Completion | AnswerStream] = {}
        self.failure: tuple[int, Exception] | None = None
        self.t0 = time.perf_counter()
        self.record: dict[str, Any] = {"stages": self.entries, "answer_stage": None}
        run.ctx.decision[NAME] = self.record

    async def run(self) -> Completion | AnswerStream:
        try:
            async with anyio.create_task_group() as tg:
                self.schedule(tg)
        except BaseException:
            await self.close_streams()
            raise
        if self.failure is not None:
            failed, error = self.failure
            await self.close_streams()
            why = f"stage {self.stages[failed].name!r} failed"
            for i, entry in enumerate(self.entries):
                if self.status[i] == "waiting":
                    entry["skipped_because"] = why
                elif self.status[i] == "running":
                    entry["skipped_because"] = f"cancelled: {why}"
            raise error
        answer = max(i for i, s in enumerate(self.status) if s == "ran")
        self.record["answer_stage"] = self.stages[answer].name
        return self.results[answer]

    def schedule(self, tg: anyio.abc.TaskGroup) -> None:
        """Skip every waiting stage that is decided to be skipped, then start every waiting stage
        whose dependencies are done (streaming the one known to be the last to run)."""
        if self.failure is not None:
            return
        changed = True
        while changed:
            changed = False
            for i in self.ready():
                reason = self.skip_reason(i)
                if reason is not None:
                    self.status[i] = "skipped"
                    self.entries[i]["skipped_because"] = reason
                    changed = True
        for i in self.ready():
            self.status[i] = "running"
            later = self.status[i + 1:]
            stream = self.handle.streaming and all(s == "skipped" for s in later)
            tg.start_soon(self.stage, tg, i, stream)

    def ready(self) -> list[int]:
        """Waiting stages whose dependencies have all ran or been skipped."""
        return [i for i, s in enumerate(self.status) if s == "waiting"
                and all(self.status[d] in ("ran", "skipped") for d in self.deps[i])]

    def skip_reason(self, i: int) -> str | None:
        """Why stage ``i`` (its dependencies done) is skipped; None when it runs."""
        stage = self.stages[i]
        for d in self.deps[i]:
            if self.status[d] == "skipped":
                return f"it needs stage {self.stages[d].name!r}, which was skipped"
        when = stage.when
        if when is not None and re.search(when.matches, self.values.get(when.stage, "")) is None:
            return f"the answer of {when.stage!r} does not match {when.matches!r}"
        return None

    async def stage(self, tg: anyio.abc.TaskGroup, i: int, stream: bool) -> None:
        """Run stage ``i`` as a sub-request; on its answer, schedule what it unblocks."""
        stage, entry, run = self.stages[i], self.entries[i], self.handle
        request = ChatRequest(model=stage.model, messages=[
            *(m for m in run.ctx.request.messages if m.role in CONTEXT_ROLES),
            {"role": "user", "content": render(stage.prompt, self.values)}])
        entry["started_s"] = self.elapsed()
        try:
            result = await run.subrequest(request, stream=stream)
        except Exception as exc:  # noqa: BLE001 - the stage's error ends the chain, after the group
            entry["ended_s"] = self.elapsed()
            entry["error"] = f"{getattr(exc, 'kind', type(exc).__name__)}: {exc}"
            self.status[i] = "failed"
            if self.failure is None:
                self.failure = (i, exc)
            tg.cancel_scope.cancel()
            return
        entry["ended_s"] = self.elapsed()
        entry["ran"] = True
        self.results[i] = result
        if isinstance(result, AnswerStream):
            entry["streamed"] = True
        else:
            text = result.content or ""
            entry["chars"] = len(text)
            self.values[stage.name] = text
        self.status[i] = "ran"
        self.schedule(tg)

    def elapsed(self) -> float:
        return round(time.perf_counter() - self.t0, 3)

    async def close_streams(self) -> None:
        """Close the stream of a stage that will not be the answer (the chain failed)."""
        for result in self.results.values():
            if isinstance(result, AnswerStream):
                with anyio.CancelScope(shield=True):
                    await result.aclose()


def _last_user_text(request: ChatRequest) -> str:
    """The text of the request's last user message ('' when it has none)."""
    for message in reversed(request.messages):
        if message.role == "user":
            return message.text()
    return ""


@hookimpl
def register_strategies(register) -> None:
    """Register ``chain``: a route names it with ``strategy = "chain"`` and lists its stages."""
    register(NAME, ChainStrategy())
