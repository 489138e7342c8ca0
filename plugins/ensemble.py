"""The ``ensemble`` strategy: every model of the route answers the same request at once, and the
answers are combined into one.

Each member is one attempt of this request (``run.attempt(step, stream=False)``: budgeted,
validated, recorded), all started together in one task group. A member that fails (a provider
error, a failed verdict, its deadline ``timeout_s``, or a refusal such as the route's
``max_attempts``) is left out. With no answer at all the request fails with the last member's
error (in the route's order); with fewer than ``min_members`` answers it fails with a 502
``upstream_error`` naming why each member was left out.

``combine`` says how the answers become one:

- ``vote``: the answers are normalised (surrounding whitespace, quotes and code fences, case,
  runs of whitespace and trailing ``. ! ; : ,`` do not count) and the most common one wins; a tie
  goes to the answer given by the model listed first. The winner's own answer is returned.
- ``judge``: the ``judge`` model (a sub-request of this one) reads the question and the numbered
  answers and replies ``{"best": n, "reason": "..."}``; answer ``n`` is returned. A judge that
  fails or names no answer falls back to the vote.
- ``synthesize``: the ``judge`` model reads the answers, states where they agree and disagree,
  and writes one answer from their strongest parts; that answer is the response (streamed, for a
  streaming request). A synthesizer that fails before answering falls back to the vote. With only
  one member answering, its answer is returned as it is.

A streaming request gets the chosen answer replayed as a stream (the synthesis streams live). The
response header ``x-turnout-ensemble: <answered>/<asked>`` says how many members took part, and
``decision["ensemble"]`` records each member, the tally and what was chosen, and why. The cost of
the request is every member's attempt plus the judge's or synthesizer's sub-request. Settings in
``[routes.NAME.ensemble]``.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Any, Literal

import anyio
import orjson
from pydantic import BaseModel, ConfigDict, Field, model_validator

from turnout.kernel.errors import NoRoute, ProviderError, TurnoutError
from turnout.kernel.hookspecs import hookimpl
from turnout.kernel.request import ChatRequest
from turnout.kernel.strategy import AttemptFailed, Run, Strategy
from turnout.kernel.types import Completion, Step

from .verdicts import read_number, text_of

HEADER = "x-turnout-ensemble"
"""``<members that answered>/<members asked>``."""

JUDGE_MAX_TOKENS = 300
"""Output limit of the judge's reply (a number and one sentence)."""


class EnsembleSettings(BaseModel):
    """The ensemble's settings: ``[routes.NAME.ensemble]``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    combine: Literal["vote", "judge", "synthesize"] = Field(
        default="vote", description="How the members' answers become one: 'vote' returns the "
        "most common answer (compared normalised; a tie goes to the model listed first); "
        "'judge' lets the judge model pick the best answer; 'synthesize' lets the judge model "
        "merge the answers into a new one.")
    judge: str | None = Field(
        default=None, description="The model or route (not auto) that picks the best answer "
        "(combine = 'judge') or writes the synthesis (combine = 'synthesize'); required for "
        "both. Its call is a sub-request of this request, its cost counted in it.")
    timeout_s: float | None = Field(
        default=None, gt=0, description="Deadline of one member's answer, in seconds; a member "
        "that misses it is left out. Unset: the route's attempt_timeout_s.")
    min_members: int = Field(
        default=1, ge=1, description="Fewest answers the ensemble needs; with fewer (members "
        "failing, or the route listing fewer models) the request fails with a 502 "
        "upstream_error.")

    @model_validator(mode="after")
    def _judge_named(self) -> "EnsembleSettings":
        if self.judge is not None and (not self.judge.strip() or self.judge == "auto"):
            raise ValueError("judge must name a model or route (auto is not allowed)")
        if self.combine in ("judge", "synthesize") and self.judge is None:
            raise ValueError(f"combine = {self.combine!r} needs a judge: set judge = \"<model or "
                             "route>\" in this table, or use combine = \"vote\"")
        return self


class EnsembleStrategy(Strategy):
    """Ask every model of the plan at once; return the vote, the judge's pick or a synthesis."""

    Settings = EnsembleSettings

    async def run(self, run: Run) -> Any:
        settings = run.settings if isinstance(run.settings, EnsembleSettings) else DEFAULTS
        steps = run.plan.steps
        if not steps:
            raise NoRoute("the plan has no steps")
        members: list[dict[str, Any]] = [{"model": s.model.name} for s in steps]
        record: dict[str, Any] = {"combine": settings.combine, "members": members,
                                  "took_part": 0, "asked": len(steps)}
        run.ctx.decision["ensemble"] = record
        answers: list[Completion | None] = [None] * len(steps)
        errors: list[Exception | None] = [None] * len(steps)

        async def member(i: int, step: Step) -> None:
            if settings.timeout_s is not None:
                step = Step(step.model, settings.timeout_s)
            try:
                answer = await run.attempt(step, stream=False)
            except AttemptFailed as failed:
                errors[i] = failed.reason
            except Exception as exc:  # noqa: BLE001 - a refusal (budget, attempts) leaves it out
                errors[i] = exc
            else:
                assert isinstance(answer, Completion)
                answers[i] = answer

        async with anyio.create_task_group() as tg:
            for i, step in enumerate(steps):
                tg.start_soon(member, i, step)

        for entry, answer, error in zip(members, answers, errors):
            entry["ok"] = answer is not None
            if answer is not None:
                entry["answer_chars"] = len(answer.content or "")
            elif error is not None:
                entry["reason"] = f"{_kind(error)}: {error}"
        took = [(i, a) for i, a in enumerate(answers) if a is not None]
        record["took_part"] = len(took)
        run.ctx.response_headers[HEADER] = f"{len(took)}/{len(steps)}"
        if not took:
            raise next(e for e in reversed(errors) if e is not None)
        if len(took) < settings.min_members:
            raise ProviderError(
                f"the ensemble got {len(took)} of {len(steps)} answers; it needs "
                f"{settings.min_members} (routes.{run.ctx.route}.ensemble.min_members): "
                + "; ".join(f"{e['model']}: {e['reason']}" for e in members if not e["ok"])
                + ". Retry, or lower min_members.")
        if settings.combine == "vote":
            return _vote(took, members, record)
        if len(took) == 1:
            i, only = took[0]
            record.update(winner=members[i]["model"],
                          why=f"only one member answered; returned without the {settings.combine}")
            return only
        if settings.combine == "judge":
            return await _judge(run, settings.judge or "", took, members, record)
        return await _synthesize(run, settings.judge or "", took, members, record)


# --- vote ----------------------------------------------------------------------------------------

_FENCE = re.compile(r"```[\w+-]*[ \t]*\r?\n?(.*?)\r?\n?```", re.DOTALL)
_QUOTES = {'"': '"', "'": "'", "`": "`", "\u201c": "\u201d", "\u2018": "\u2019"}
_TRAILING = ".!;:,"


def normalise(text: str) -> str:
    """An answer as the vote compares it: without surrounding whitespace, quotes or a code
    fence, case-folded, runs of whitespace as one space, trailing ``. ! ; : ,`` dropped."""
    text = text.strip()
    fenced = _FENCE.fullmatch(text)
    if fenced:
        text = fenced.group(1)
    text = " ".join(text.split()).casefold()
    while True:
        before = text
        text = text.rstrip(_TRAILING).strip()
        if len(text) >= 2 and _QUOTES.get(text[0]) == text[-1]:
            text = text[1:-1].strip()
        if text == before:
            return text


def _key(answer: Completion) -> str:
    """What the vote counts: the normalised text, or the tool calls of an answer without one."""
    if answer.content or not answer.tool_calls:
        return normalise(answer.content or "")
    return orjson.dumps([c.get("function") for c in answer.tool_calls],
                        option=orjson.OPT_SORT_KEYS).decode()


def _vote(took: list[tuple[int, Completion]], members: list[dict[str, Any]],
          record: dict[str, Any]) -> Completion:
    """The most common answer (the earliest listed model's on a tie), with the tally in the
    record."""
    counts = Counter(_key(a) for _, a in took)
    groups: dict[str, list[int]] = {}
    for i, answer in took:  # in the route's order, so each group's first is its earliest
        groups.setdefault(_key(answer), []).append(i)
    record["tally"] = [{"answer": _clip(k, 80), "votes": counts[k],
                        "models": [members[i]["model"] for i in group]}
                       for k, group in sorted(groups.items(), key=lambda g: -counts[g[0]])]
    top = max(counts.values())
    leaders = [k for k in groups if counts[k] == top]  # dicts keep the route's order
    winner = groups[leaders[0]][0]
    if len(leaders) == 1:
        why = f"{top} of {len(took)} answers agree"
    else:
        why = (f"a tie at {top} vote{'s' if top > 1 else ''} between {len(leaders)} answers; "
               "the model listed first wins")
    record.update(winner=members[winner]["model"], why=why)
    return next(a for i, a in took if i == winner)


# --- judge and synthesize ------------------------------------------------------------------------

JUDGE_PROMPT = """Several AI assistants answered the same conversation. Pick the best answer: \
correct, complete, and answering what was asked.

The conversation (last messages):
{question}

{answers}

Reply with JSON only:
{{"best": <the number of the best answer, 1-{n}>, "reason": "<one sentence>"}}"""

SYNTHESIS_PROMPT = """Several AI assistants answered the same conversation. Their answers follow.

The conversation (last messages):
{question}

{answers}

Say briefly where the answers agree and where they disagree, then write one answer to the \
user's last message that combines the strongest parts of them (correct where they conflict)."""


def _question(run: Run) -> str:
    return _clip("\n".join(f"{m.role}: {m.text()}" for m in run.ctx.request.messages[-4:]), 6000)


def _numbered(took: list[tuple[int, Completion]]) -> str:
    return "\n\n".join(f"Answer {n}:\n{_clip(a.content or _key(a), 8000)}"
                       for n, (_, a) in enumerate(took, 1))


async def _judge(run: Run, judge: str, took: list[tuple[int, Completion]],
                 members: list[dict[str, Any]], record: dict[str, Any]) -> Completion:
    """The answer the judge picks; the vote's when the judge fails or picks none."""
    entry: dict[str, Any] = {"model": judge}
    record["judge"] = entry
    prompt = JUDGE_PROMPT.format(question=_question(run), answers=_numbered(took), n=len(took))
    request = ChatRequest(model=judge, messages=[{"role": "user", "content": prompt}],
                          temperature=0, max_tokens=JUDGE_MAX_TOKENS)
    try:
        reply = await run.subrequest(request, model=judge)
    except TurnoutError as exc:
        found, problem = None, f"the judge did not answer ({_kind(exc)}: {exc})"
    else:
        found = parse_pick(getattr(reply, "content", None) or "")
        problem = "the judge's reply names no answer" if found is None else None
        if found is not None and not 1 <= found[0] <= len(took):
            problem = f"the judge picked answer {found[0]}, but there are {len(took)}"
            found = None
    if found is None:
        entry.update(ok=False, reason=problem)
        answer = _vote(took, members, record)
        record.update(fallback="vote", why=f"{problem}; {record['why']}")
        return answer
    pick, reason = found
    i, answer = took[pick - 1]
    entry.update(ok=True, best=pick)
    record.update(winner=members[i]["model"],
                  why=f"the judge picked answer {pick}" + (f": {reason}" if reason else ""))
    return answer


async def _synthesize(run: Run, judge: str, took: list[tuple[int, Completion]],
                      members: list[dict[str, Any]], record: dict[str, Any]) -> Any:
    """The synthesizer's answer (streamed for a streaming request); the vote's when it fails
    before answering."""
    entry: dict[str, Any] = {"model": judge}
    record["synthesizer"] = entry
    prompt = SYNTHESIS_PROMPT.format(question=_question(run), answers=_numbered(took))
    asked = run.ctx.request
    request = ChatRequest(model=judge, messages=[{"role": "user", "content": prompt}],
                          max_tokens=asked.output_limit, temperature=asked.temperature)
    try:
        answer = await run.subrequest(request, model=judge, stream=run.streaming)
    except TurnoutError as exc:
        entry.update(ok=False, reason=f"{_kind(exc)}: {exc}")
        voted = _vote(took, members, record)
        record.update(fallback="vote",
                      why=f"the synthesizer did not answer; {record['why']}")
        return voted
    entry["ok"] = True
    record.update(winner=judge, why=f"{judge} merged {len(took)} answers")
    return answer


def parse_pick(text: str) -> tuple[int, str] | None:
    """``(number, reason)`` from a judge's reply: JSON with ``best`` (possibly fenced or in
    prose), else a ``best: n`` pattern; None when it names no whole number."""
    found = read_number(text, "best")
    if found is None or found[0] is None or not found[0].is_integer():
        return None
    return int(found[0]), text_of(found[1], "reason")


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit] + " [...]"


def _kind(error: Exception) -> str:
    return getattr(error, "kind", type(error).__name__)


DEFAULTS = EnsembleSettings()


@hookimpl
def register_strategies(register) -> None:
    """Register ``ensemble``: a route names it with ``strategy = "ensemble"``."""
    register("ensemble", EnsembleStrategy())
