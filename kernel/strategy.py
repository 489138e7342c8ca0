"""The strategy seam: what turns a route's plan into an answer.

A strategy is registered by name (``register_strategies``) and named by a route
(``routes.NAME.strategy``) or by a plan. The kernel hands it a :class:`Run`, the request's handle
on the pipeline: ``attempt`` one step (call, validate, traced and counted), ask ``escalate`` what
to do after a failure, or run a ``subrequest`` through the whole pipeline (classified, routed,
recorded under this request, its cost added to this request's). Strategies may run attempts and
sub-requests concurrently in an anyio task group and cancel the ones they no longer need: a
cancelled attempt or sub-request is recorded as ``cancelled``.

A strategy returns a :class:`~turnout.kernel.types.Completion` or, for a streaming request, what
``attempt`` or a streaming ``subrequest`` gave it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any, ClassVar

import anyio
from pydantic import BaseModel, ConfigDict

from .types import ChatRequest, Completion, Context, Escalation, Plan, Step, Verdict

if TYPE_CHECKING:
    from .kernel import AnswerStream, Kernel, Started


class NoSettings(BaseModel):
    """The settings of a strategy (or store backend) that takes none: its table, if written,
    must be empty."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Strategy(ABC):
    """Turns a plan into an answer through a :class:`Run`."""

    Settings: ClassVar[type[BaseModel]] = NoSettings
    """Validates the route's ``[routes.NAME.<strategy>]`` sub-table; the result is
    ``run.settings``."""

    needs_models: ClassVar[bool] = True
    """Whether a route naming this strategy must list ``models`` (a config error otherwise).
    A strategy that sets it False gets an empty plan on a route without models, and finds what
    to call elsewhere (the ``chain`` strategy's stages, say)."""

    @abstractmethod
    async def run(self, run: Run) -> Any:
        """Answer the request: return a Completion (or, streaming, what ``run.attempt`` or
        ``run.subrequest(stream=True)`` returned); raise the error that ends it otherwise."""


class AttemptFailed(Exception):
    """An attempt failed: the provider raised (``error``) or the answer failed validation
    (``verdicts``). ``reason`` is what the request fails with if nothing else is tried.
    ``completion`` is the whole answer that failed validation (None after an error or for a
    stream), for a strategy that may still return the best of the rejected answers."""

    def __init__(self, step: Step, error: Exception | None, verdicts: list[Verdict],
                 reason: Exception, completion: Completion | None = None) -> None:
        super().__init__(str(reason))
        self.step = step
        self.error = error
        self.verdicts = verdicts
        self.reason = reason
        self.completion = completion


class Run:
    """One request's handle on the pipeline, given to its strategy."""

    __slots__ = ("kernel", "ctx", "streaming")

    def __init__(self, kernel: Kernel, ctx: Context) -> None:
        self.kernel = kernel
        self.ctx = ctx
        self.streaming = bool(ctx.request.stream)
        """Whether the client asked for a stream (``attempt`` then returns a started stream)."""

    @property
    def plan(self) -> Plan:
        assert self.ctx.plan is not None
        return self.ctx.plan

    @property
    def settings(self) -> Any:
        """The strategy's settings for this route (``[routes.NAME.<strategy>]``)."""
        return self.plan.settings

    async def attempt(self, step: Step, *, stream: bool | None = None) -> Completion | Started:
        """Call ``step`` once: a ``call`` plugin or the model's provider answers, validators
        judge. Returns the answer (streaming: once its first chunk has arrived); raises
        :class:`AttemptFailed` on an error or a failed verdict, or the error that ends the
        request when its attempts are used up. ``stream=False`` asks a streaming request's
        attempt for the whole answer (read to its end and judged) as a Completion; the default
        follows the request."""
        return await self.kernel._attempt(self.ctx, step, stream=stream)

    async def escalate(self, failed: AttemptFailed) -> Escalation:
        """Ask the ``escalate`` plugins what to do after ``failed``; ``stop`` when none answers
        or the request's attempts are used up. The move is written into the decision record."""
        return await self.kernel._escalate(self.ctx, failed)

    async def wait(self, seconds: float) -> None:
        """Wait out a provider (a Retry-After, a backoff); the time counts as provider time, not
        as the gateway's overhead."""
        if seconds > 0:
            self.ctx.begin_wait()
            try:
                await anyio.sleep(seconds)
            finally:
                self.ctx.end_wait()

    async def subrequest(self, request: ChatRequest | None = None, *, model: str | None = None,
                         stream: bool = False) -> Completion | AnswerStream:
        """Run a request through the whole pipeline under this one: ``request`` (default: this
        request) asking for ``model`` (a model, a route or ``auto``) if given. Its spend, tokens
        and attempts count towards this request's; it is recorded with this request as parent.
        With ``stream`` it returns a started stream (iterate it, or return it as the answer)."""
        request = request or self.ctx.request
        update: dict[str, Any] = {"stream": stream}
        if model is not None:
            update["model"] = model
        return await self.kernel.subrequest(self.ctx, request.model_copy(update=update))
