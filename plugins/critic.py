"""The ``critic`` strategy: a writer drafts, a critic scores and comments, the writer revises.

The route's first model is the writer. Its first draft is an attempt of the request, judged by
the route's validators; when it fails, the route's other models stand in as the ``fallback``
strategy would (the one that answers is the writer from then on). The critic (``model``: a model
or a route) gets the conversation and the draft in one message and is asked for a JSON verdict
``{"score": 1-10, "feedback": "..."}``; its answer is read leniently (JSON alone, fenced or in
prose; else a ``score: n`` pattern) and the score clamped to 1..10. Below ``min_score``, the
writer is asked for a revision: the original messages, its draft as an assistant message, then a
user message carrying the feedback and asking for a revised, complete answer. Each critique and
each revision is a sub-request (recorded under this request, its cost added to this one's).

Revisions ask for the writer by name, so they are judged by the validators that apply to a model
asked for by name (those without settings, such as ``json`` when JSON was asked for), not by the
route's ``validators`` list: the critic is what judges them. A revision that fails ends the loop.

The loop stops when a draft scores ``min_score`` or more, after ``max_rounds`` critiques, before a
call whose worst-case cost would take the request's spend past ``max_cost_usd``, when the critic
fails or gives no score, or when a revision fails. The answer is the best-scoring draft (the later
on a tie); a draft left unjudged (the critic failed, or the cap came before its critique) is a
revision made on the critic's advice, or the only draft, and is returned as the current one. An
answer that calls tools is returned as it is: the critic judges text.

A streaming request gets the chosen draft replayed as a stream: nothing is sent before it is
chosen. The loop is written into the decision record as ``decision["critic"]``; the response
carries ``x-turnout-critic-score`` (the returned draft's score, when it was judged) and
``x-turnout-critic-rounds`` (the drafts written). Settings in ``[routes.NAME.critic]``.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from turnout.kernel import tokens
from turnout.kernel.errors import ConfigError, TurnoutError, clip
from turnout.kernel.hookspecs import hookimpl
from turnout.kernel.kernel import AUTO, ESTIMATED_ANSWER_TOKENS
from turnout.kernel.strategy import Run, Strategy
from turnout.kernel.types import ChatRequest, Completion, Message, ModelProfile, Step, Usage

from .fallback import walk
from .verdicts import read_number, text_of

SCORE_HEADER = "x-turnout-critic-score"
"""The score the critic gave the returned draft (absent when it was not judged)."""
ROUNDS_HEADER = "x-turnout-critic-rounds"
"""How many drafts the writer wrote."""
FEEDBACK_RECORDED_CHARS = 300
"""Feedback kept per round in the decision record (the writer gets all of it)."""
CONVERSATION_CHARS = 12_000
"""Most characters of the conversation shown to the critic (the latest are kept)."""
DRAFT_CHARS = 16_000
"""Most characters of a draft shown to the critic."""


class CriticSettings(BaseModel):
    """The critic loop's settings: ``[routes.NAME.critic]``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str = Field(description="The critic: a model or route name (not auto) that scores "
                       "each draft from 1 to 10 and says what to improve.")
    min_score: float = Field(default=8, ge=1, le=10, description="Stop once a draft scores at "
                             "least this (1-10).")
    max_rounds: int = Field(default=3, ge=1, description="Most critiques, that is drafts "
                            "judged: the writer writes at most this many drafts (the first and "
                            "max_rounds - 1 revisions), and the last draft is not revised again.")
    max_cost_usd: float | None = Field(default=None, gt=0, description="Stop before a critique "
                                       "or revision whose worst-case cost would take the "
                                       "request's spend (every call so far) past this many US "
                                       "dollars. Worst case: the call's counted prompt plus, "
                                       "for a critique, the critic's max_tokens, for a revision "
                                       "the request's max_tokens (else the draft's length, at "
                                       "least 256 tokens), at the model's prices (a route's "
                                       "priciest model). The first draft is always written. "
                                       "Unset: no cap.")
    max_tokens: int = Field(default=500, ge=16, description="Output limit of the critic's "
                            "verdict.")

    @field_validator("model")
    @classmethod
    def _named(cls, value: str, info: ValidationInfo) -> str:
        if not value.strip() or value == AUTO:
            raise ValueError("name the critic model or route (auto is not allowed)")
        context = info.context if isinstance(info.context, dict) else {}
        models, routes = context.get("models"), context.get("routes")
        if models is None or routes is None:  # validated without the config's names
            return value
        if value == context.get("route"):
            raise ValueError("the critic cannot be the route itself; name a model or another "
                             "route")
        if value not in models and value not in routes:
            raise ValueError(f"no model or route {value!r}; name one of the models "
                             f"({', '.join(sorted(models)) or 'none'}) or routes "
                             f"({', '.join(sorted(routes)) or 'none'})")
        return value


CRITIC_PROMPT = """You review a draft answer an AI assistant wrote to the conversation below.

The conversation:
{conversation}

The draft answer:
{draft}

Score the draft from 1 (useless) to 10 (perfect: correct, complete, clear and answering what was \
asked). In the feedback, say concretely what the writer should fix, add or cut.
Reply with JSON only:
{{"score": <integer 1-10>, "feedback": "<what to change>"}}"""

REVISE_PROMPT = """A reviewer scored your answer {score:g}/10 and said:

{feedback}

Write a revised, complete answer to the conversation that addresses this feedback. Reply with \
the answer only, as the user should see it, without remarks about the revision."""

def parse_verdict(text: str) -> tuple[float, str] | None:
    """``(score, feedback)`` from a critic's answer, the score clamped to 1..10: a JSON object
    (alone, in a code fence or in prose), else a ``score: n`` pattern (the feedback is then the
    whole answer); None when no score is found."""
    found = read_number(text, "score")
    if found is None or found[0] is None:
        return None
    score, source = found
    feedback = text_of(source, "feedback", "reason") if source is not None else text.strip()
    return _clamp(score), feedback


def _clamp(score: float) -> float:
    return min(max(score, 1.0), 10.0)


class CriticStrategy(Strategy):
    """Draft, critique, revise, until the critic is satisfied or a limit is reached."""

    Settings = CriticSettings

    async def run(self, run: Run) -> Completion:
        settings: CriticSettings = run.settings
        if not isinstance(settings, CriticSettings):  # a plan naming the critic without settings
            raise ConfigError(f"the critic strategy needs [routes.{run.ctx.route}.critic] with "
                              "model = \"<a model or route that reviews the drafts>\"")
        critics = _critic_models(run, settings.model)
        record: dict[str, Any] = {"rounds": [], "stopped": None, "chosen_round": None}
        run.ctx.decision["critic"] = record
        loop = _Loop(run, settings, critics, record)
        return await loop.go()


class _Loop:
    """One request's drafts, critiques and revisions."""

    def __init__(self, run: Run, settings: CriticSettings, critics: list[ModelProfile],
                 record: dict[str, Any]) -> None:
        self.run, self.settings, self.critics, self.record = run, settings, critics, record
        self.drafts: list[Completion] = []
        self.rounds: list[dict[str, Any]] = record["rounds"]

    async def go(self) -> Completion:
        draft, writer = await _first_draft(self.run)
        self._add(draft, writer)
        judged = 0
        while True:
            if draft.tool_calls:
                self._stop("tool_calls", "the draft calls tools; the critic judges text")
                break
            critique = self._critique_request(draft)
            if self._over_cap("the critique", critique, self.critics, self.settings.max_tokens):
                break
            verdict = await self._critique(critique)
            if verdict is None:
                break
            judged += 1
            score, feedback = verdict
            self.rounds[-1].update(score=score, feedback=_clip(feedback, FEEDBACK_RECORDED_CHARS))
            if score >= self.settings.min_score:
                self._stop("min_score", f"scored {score:g}, at least {self.settings.min_score:g}")
                break
            if judged >= self.settings.max_rounds:
                self._stop("max_rounds", f"{judged} critiques made (max_rounds)")
                break
            revision = self._revision_request(draft, score, feedback, writer)
            length = max(ESTIMATED_ANSWER_TOKENS, tokens.count(draft.content or ""))
            if self._over_cap("the revision", revision, [writer.model], length):
                break
            revised = await self._revise(revision, writer)
            if revised is None:
                break
            draft = revised
            self._add(draft, writer)
        return self._choose()

    def _add(self, draft: Completion, writer: Step) -> None:
        self.drafts.append(draft)
        self.rounds.append({"round": len(self.rounds) + 1,
                            "draft_model": draft.model or writer.model.name,
                            "score": None, "feedback": None})

    def _stop(self, why: str, reason: str) -> None:
        self.record["stopped"], self.record["reason"] = why, reason

    def _critique_request(self, draft: Completion) -> ChatRequest:
        conversation = "\n".join(f"{m.role}: {m.text()}" for m in self.run.ctx.request.messages)
        if len(conversation) > CONVERSATION_CHARS:
            conversation = "[...] " + conversation[-CONVERSATION_CHARS:]
        prompt = CRITIC_PROMPT.format(conversation=conversation,
                                      draft=_clip(draft.content or "", DRAFT_CHARS))
        return ChatRequest(model=self.settings.model, temperature=0,
                           max_tokens=self.settings.max_tokens,
                           messages=[{"role": "user", "content": prompt}])

    def _revision_request(self, draft: Completion, score: float, feedback: str,
                          writer: Step) -> ChatRequest:
        request = self.run.ctx.request
        messages = [*request.messages,
                    Message(role="assistant", content=draft.content or ""),
                    Message(role="user", content=REVISE_PROMPT.format(
                        score=score, feedback=feedback.strip() or "(no details given)"))]
        return request.model_copy(update={"messages": messages, "model": writer.model.name,
                                          "stream": False, "stream_options": None})

    def _over_cap(self, what: str, request: ChatRequest, models: list[ModelProfile],
                  default_output: int) -> bool:
        """Whether the call would risk passing ``max_cost_usd``; if so, the loop stops."""
        cap = self.settings.max_cost_usd
        if cap is None:
            return False
        estimate = worst_case_cost(request, models, default_output)
        spent = self.run.ctx.spend_usd
        if spent + estimate <= cap:
            return False
        self._stop("max_cost_usd", f"{what} by {request.model} could cost up to "
                   f"${estimate:.6f}; ${spent:.6f} spent of max_cost_usd ${cap:g}")
        return True

    async def _critique(self, request: ChatRequest) -> tuple[float, str] | None:
        """The critic's verdict on the latest draft; None (and the loop stops) when it fails or
        gives no score."""
        try:
            answer = await self.run.subrequest(request, model=self.settings.model)
        except TurnoutError as exc:
            self._stop("critic_failed", f"the critic {self.settings.model!r} did not answer: "
                       f"{exc.kind}: {clip(exc, 300)}")
            return None
        text = getattr(answer, "content", None) or ""
        verdict = parse_verdict(text)
        if verdict is None:
            self._stop("critic_failed", f"the critic {self.settings.model!r} gave no score: "
                       f"{clip(text, 200) or '(empty answer)'}")
        return verdict

    async def _revise(self, request: ChatRequest, writer: Step) -> Completion | None:
        """The writer's revision; None (and the loop stops) when it fails or has no text."""
        try:
            answer = await self.run.subrequest(request, model=writer.model.name)
        except TurnoutError as exc:
            self._stop("revision_failed", f"the writer {writer.model.name!r} did not revise: "
                       f"{exc.kind}: {clip(exc, 300)}")
            return None
        if not isinstance(answer, Completion) or not answer.content:
            self._stop("revision_failed", f"the writer {writer.model.name!r} answered the "
                       "feedback without text (tool calls or an empty answer)")
            return None
        return answer

    def _choose(self) -> Completion:
        """The latest draft if it was not judged; else the best-scoring, the later on a tie."""
        last = len(self.drafts) - 1
        if self.rounds[last]["score"] is None:
            chosen = last
        else:
            chosen = max(range(len(self.drafts)),
                         key=lambda i: (self.rounds[i]["score"], i))
        self.record["chosen_round"] = chosen + 1
        headers = self.run.ctx.response_headers
        headers[ROUNDS_HEADER] = str(len(self.drafts))
        score = self.rounds[chosen]["score"]
        if score is not None:
            headers[SCORE_HEADER] = f"{score:g}"
        else:
            headers.pop(SCORE_HEADER, None)
        return self.drafts[chosen]


async def _first_draft(run: Run) -> tuple[Completion, Step]:
    """The writer's first draft, an attempt of this request judged by the route's validators;
    after a failure the escalate event decides, as under ``fallback``."""
    answer, step = await walk(run, stream=False)
    assert isinstance(answer, Completion)
    return answer, step


def worst_case_cost(request: ChatRequest, models: list[ModelProfile],
                    default_output: int) -> float:
    """The most a call of ``request`` can cost on any of ``models``: its counted prompt plus its
    max_tokens (else ``default_output``, at most the model's max_output_tokens), at the model's
    prices."""
    prompt = tokens.count_request(request)
    costs = [0.0]
    for model in models:
        output = request.output_limit or min(default_output,
                                             model.max_output_tokens or default_output)
        costs.append(model.cost(Usage(prompt, output)))
    return max(costs)


def _critic_models(run: Run, name: str) -> list[ModelProfile]:
    """The models the critic's calls may land on; a ConfigError when the name is wrong."""
    kernel, route = run.kernel, run.ctx.route
    if name == route:
        raise ConfigError(f"routes.{route}.critic.model names the route itself; name another "
                          "model or route to review its drafts")
    if name in kernel.config.routes:
        return kernel.route_models(name)
    model = kernel.models.get(name)
    if model is None:
        known = ", ".join(sorted({*kernel.config.routes, *(m.name for m in kernel.models)}))
        raise ConfigError(f"routes.{route}.critic.model is {clip(name)!r}, which is neither a "
                          f"model nor a route; name one of: {known or 'none configured'}")
    return [model]


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit] + " [...]"


@hookimpl
def register_strategies(register) -> None:
    """Register ``critic``: a route names it with ``strategy = "critic"``."""
    register("critic", CriticStrategy())
