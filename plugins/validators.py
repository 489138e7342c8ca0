"""The built-in validators with settings: ``regex``, ``length``, ``labels``, ``logprobs``,
``code`` and ``judge`` (``json`` lives in :mod:`turnout.plugins.json_validator`).

Each is registered with its settings model, so a route lists it as a table::

    [routes.json-cascade]
    models = ["small", "medium", "large"]
    validators = ["json", { kind = "length", min_chars = 2 }]

Being registered with settings, none of them runs on a route that does not list it (a route
without ``validators`` runs only the validators that take no settings: ``json``).

``code`` runs model-written Python in a sandboxed subprocess (``python -I``, an empty environment,
a fresh temporary directory as working directory, limits on time, memory, file size and CPU; no
network and no writes outside that directory: see :mod:`turnout.plugins.sandbox`, which also says
what is not isolated: reading the files the gateway's user can read). Where this machine cannot
provide the sandbox, the validator fails the answer without running it (``sandbox = "required"``)
or runs it with what is available and says what was missing (``sandbox = "best_effort"``).
"""

from __future__ import annotations

import contextvars
import math
import os
import re
import string
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import anyio
import orjson
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from turnout.kernel import tokens
from turnout.kernel.errors import TurnoutError
from turnout.kernel.hookspecs import hookimpl
from turnout.kernel.request import ChatRequest
from turnout.kernel.types import Completion, Context, Verdict
from turnout.plugins import sandbox

from .verdicts import read_number, text_of

if TYPE_CHECKING:
    from turnout.kernel.kernel import Kernel


class _Settings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# --- regex -------------------------------------------------------------------------------------

_FLAGS = {"i": re.IGNORECASE, "m": re.MULTILINE, "s": re.DOTALL, "x": re.VERBOSE}


class RegexSettings(_Settings):
    """``{ kind = "regex" }``: the answer must (or must not) match a regular expression."""

    pattern: str = Field(description="Python regular expression, searched anywhere in the "
                         "answer (anchor it with ^...$ to match the whole answer).")
    flags: str = Field(default="", description="Letters of re flags: i (ignore case), "
                       "m (multiline), s (dot matches newline), x (verbose).")
    must_match: bool = Field(default=True, description="true: passes when the pattern matches; "
                             "false: passes when it does not.")

    @field_validator("flags")
    @classmethod
    def _known_flags(cls, v: str) -> str:
        unknown = sorted(set(v) - set(_FLAGS))
        if unknown:
            raise ValueError(f"unknown flags {''.join(unknown)!r}; known: i, m, s, x")
        return v

    @model_validator(mode="after")
    def _compiles(self) -> "RegexSettings":
        try:
            self.compiled()
        except re.error as exc:
            raise ValueError(f"pattern is not a valid regular expression: {exc}") from None
        return self

    def compiled(self) -> re.Pattern[str]:
        flags = 0
        for letter in self.flags:
            flags |= _FLAGS[letter]
        return _compile(self.pattern, flags)


_patterns: dict[tuple[str, int], re.Pattern[str]] = {}


def _compile(pattern: str, flags: int) -> re.Pattern[str]:
    found = _patterns.get((pattern, flags))
    if found is None:
        found = _patterns[(pattern, flags)] = re.compile(pattern, flags)
    return found


def regex(ctx: Context, completion: Completion, settings: RegexSettings) -> Verdict | None:
    """Pass when the pattern is found (``must_match``), or when it is not (otherwise)."""
    if completion.tool_calls and not completion.content:
        return None
    found = settings.compiled().search(completion.content or "")
    if settings.must_match and found is None:
        return Verdict(False, "regex", f"the answer does not match /{settings.pattern}/")
    if not settings.must_match and found is not None:
        return Verdict(False, "regex", f"the answer matches /{settings.pattern}/ "
                       f"({found.group(0)[:80]!r}), which it must not")
    return Verdict(True, "regex")


# --- length ------------------------------------------------------------------------------------


class LengthSettings(_Settings):
    """``{ kind = "length" }``: bounds on the answer's length, in characters and/or tokens."""

    min_chars: int | None = Field(default=None, ge=0, description="Fewest characters.")
    max_chars: int | None = Field(default=None, ge=0, description="Most characters.")
    min_tokens: int | None = Field(default=None, ge=0, description="Fewest tokens (counted with "
                                   "the gateway's tokenizer, not the model's).")
    max_tokens: int | None = Field(default=None, ge=0, description="Most tokens (counted as "
                                   "min_tokens).")

    @model_validator(mode="after")
    def _ordered(self) -> "LengthSettings":
        for unit in ("chars", "tokens"):
            low, high = getattr(self, f"min_{unit}"), getattr(self, f"max_{unit}")
            if low is not None and high is not None and low > high:
                raise ValueError(f"min_{unit} ({low}) is above max_{unit} ({high})")
        return self


def length(ctx: Context, completion: Completion, settings: LengthSettings) -> Verdict | None:
    """Pass when the answer's length lies within every bound set."""
    if completion.tool_calls and not completion.content:
        return None
    text = completion.content or ""
    chars = len(text)
    if settings.min_chars is not None and chars < settings.min_chars:
        return Verdict(False, "length", f"the answer has {chars} characters; at least "
                       f"{settings.min_chars} wanted")
    if settings.max_chars is not None and chars > settings.max_chars:
        return Verdict(False, "length", f"the answer has {chars} characters; at most "
                       f"{settings.max_chars} wanted")
    if settings.min_tokens is not None or settings.max_tokens is not None:
        count = tokens.count(text)
        if settings.min_tokens is not None and count < settings.min_tokens:
            return Verdict(False, "length", f"the answer has {count} tokens; at least "
                           f"{settings.min_tokens} wanted")
        if settings.max_tokens is not None and count > settings.max_tokens:
            return Verdict(False, "length", f"the answer has {count} tokens; at most "
                           f"{settings.max_tokens} wanted")
    return Verdict(True, "length")


# --- labels ------------------------------------------------------------------------------------


class LabelsSettings(_Settings):
    """``{ kind = "labels" }``: the answer is exactly one of the given labels."""

    labels: list[str] = Field(min_length=1, description="Allowed answers; compared trimmed and "
                              "case-insensitively.")
    strip_punctuation: bool = Field(default=False, description="Also ignore punctuation around "
                                    "the answer ('Yes.' counts as 'yes').")


def _normal(text: str, strip_punctuation: bool) -> str:
    text = text.strip()
    if strip_punctuation:
        text = text.strip(string.punctuation + " \t\r\n\"'`")
    return text.casefold()


def labels(ctx: Context, completion: Completion, settings: LabelsSettings) -> Verdict | None:
    """Pass when the trimmed answer equals one of the labels, ignoring case."""
    if completion.tool_calls and not completion.content:
        return None
    answer = _normal(completion.content or "", settings.strip_punctuation)
    allowed = {_normal(label, settings.strip_punctuation) for label in settings.labels}
    if answer in allowed:
        return Verdict(True, "labels")
    shown = (completion.content or "").strip()
    shown = shown if len(shown) <= 60 else shown[:57] + "..."
    return Verdict(False, "labels", f"the answer {shown!r} is not one of "
                   f"{', '.join(settings.labels)}")


# --- logprobs ----------------------------------------------------------------------------------


class LogprobsSettings(_Settings):
    """``{ kind = "logprobs" }``: the model's confidence, where the provider returns logprobs."""

    min_mean: float = Field(default=-1.0, le=0, description="Lowest mean token log-probability "
                            "that passes (-0.1: very sure; -1.0: unsure; 0 is certainty).")
    require: bool = Field(default=False, description="Fail answers without logprobs (the "
                          "request must ask for them: logprobs = true); false: such answers are "
                          "not judged.")


def token_logprobs(value: Any) -> list[float]:
    """The token log-probabilities of OpenAI's ``logprobs`` (``{"content": [{"logprob": ...}]}``,
    or the bare list)."""
    if isinstance(value, dict):
        value = value.get("content")
    if not isinstance(value, list):
        return []
    found = []
    for item in value:
        lp = item.get("logprob") if isinstance(item, dict) else getattr(item, "logprob", None)
        if isinstance(lp, (int, float)) and not isinstance(lp, bool) and math.isfinite(lp):
            found.append(float(lp))
    return found


def logprobs(ctx: Context, completion: Completion, settings: LogprobsSettings) -> Verdict | None:
    """Pass when the mean token log-probability is at least ``min_mean``; the verdict's score is
    the geometric mean token probability, exp(mean)."""
    values = token_logprobs(completion.logprobs)
    if not values:
        if settings.require:
            return Verdict(False, "logprobs", "the provider returned no logprobs (ask with "
                           "logprobs = true, from a provider that supports them)")
        return None
    mean = sum(values) / len(values)
    score = math.exp(mean)
    if mean < settings.min_mean:
        return Verdict(False, "logprobs", f"mean token logprob {mean:.3f} is below "
                       f"{settings.min_mean}", score)
    return Verdict(True, "logprobs", f"mean token logprob {mean:.3f}", score)


# --- code --------------------------------------------------------------------------------------


class CodeSettings(_Settings):
    """``{ kind = "code" }``: the answer's first Python block parses and passes the tests."""

    tests: str = Field(default="", description="Python source run after the answer's code, in "
                       "the same module (assert statements); empty: the code must only run.")
    timeout_s: float = Field(default=5.0, gt=0, le=300, description="Wall-clock limit of the "
                             "run; past it the process is killed and the answer fails.")
    memory_mb: int = Field(default=512, ge=64, description="Address-space limit of the "
                           "process (RLIMIT_AS), in MiB.")
    require_block: bool = Field(default=True, description="Fail answers without a ```python "
                                "block; false: treat the whole answer as the code.")
    sandbox: Literal["required", "best_effort"] = Field(
        default="required", description="required: the code runs only with no network and no "
        "writes outside its temporary directory (Landlock, unprivileged user namespaces and "
        "seccomp on Linux), else the answer fails without running, saying what is missing; "
        "best_effort: run with the protections this machine has, naming the missing ones in "
        "the verdict's reason.")


_BLOCK = re.compile(r"```[ \t]*(?:python3?|py)[ \t]*\r?\n(.*?)```", re.DOTALL | re.IGNORECASE)

_PRELUDE = """\
import resource, sys
_mem = {memory}
resource.setrlimit(resource.RLIMIT_AS, (_mem, _mem))
resource.setrlimit(resource.RLIMIT_CPU, ({cpu}, {cpu}))
resource.setrlimit(resource.RLIMIT_FSIZE, (16 << 20, 16 << 20))
resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
import importlib.util
_spec = importlib.util.spec_from_file_location("turnout_sandbox", {module!r})
_sandbox = sys.modules["turnout_sandbox"] = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_sandbox)
_sandbox.enter({root!r}, {protections!r}, {required!r}, {report_fd})
del sys.modules["turnout_sandbox"]
del resource, _mem, importlib, _spec, _sandbox
_src = open("answer.py").read() + "\\n\\n" + open("tests.py").read()
exec(compile(_src, "answer.py", "exec"), {{"__name__": "__main__", "__builtins__": __builtins__}})
"""


def extract_code(text: str) -> str | None:
    """The first fenced Python block of ``text`` (```python, ```py), or None."""
    found = _BLOCK.search(text)
    return found.group(1) if found else None


async def code(ctx: Context, completion: Completion, settings: CodeSettings) -> Verdict | None:
    """Pass when the answer's first Python block compiles and runs with ``tests`` appended,
    exiting 0 within ``timeout_s``."""
    if completion.tool_calls and not completion.content:
        return None
    text = completion.content or ""
    source = extract_code(text)
    if source is None:
        if settings.require_block:
            return Verdict(False, "code", "the answer has no ```python block")
        source = text
    try:
        compile(source, "answer.py", "exec")
    except SyntaxError as exc:
        return Verdict(False, "code", f"the code does not parse: {exc.msg} (line {exc.lineno})")
    try:
        compile(source + "\n\n" + settings.tests, "answer.py", "exec")
    except SyntaxError as exc:
        return Verdict(False, "code", f"the code with its tests does not parse: {exc.msg} "
                       f"(line {exc.lineno})")
    return await anyio.to_thread.run_sync(_run_code, source, settings)


def _run_code(source: str, settings: CodeSettings) -> Verdict:
    """Run ``source`` and the tests in a child Python, sandboxed, in a fresh temporary
    directory."""
    required = settings.sandbox == "required"
    missing = sandbox.support().missing()
    if missing and required:
        return Verdict(False, "code", _not_sandboxed(missing))
    with tempfile.TemporaryDirectory(prefix="turnout-code-") as tmp:
        Path(tmp, "answer.py").write_text(source)
        Path(tmp, "tests.py").write_text(settings.tests)
        report, write_end = os.pipe()
        prelude = _PRELUDE.format(
            memory=settings.memory_mb << 20, cpu=max(1, math.ceil(settings.timeout_s)) + 1,
            module=sandbox.__file__, root=str(Path(tmp).resolve()), report_fd=write_end,
            protections=[p for p in sandbox.PROTECTIONS if p not in missing], required=required)
        try:
            with subprocess.Popen(
                    [sys.executable, "-I", "-c", prelude], cwd=tmp, stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, pass_fds=(write_end,),
                    env={"PATH": "/usr/bin:/bin", "HOME": tmp, "TMPDIR": tmp, "LANG": "C.UTF-8"},
                    start_new_session=True) as child:
                os.close(write_end)
                write_end = -1
                try:
                    _, stderr = child.communicate(timeout=settings.timeout_s)
                except subprocess.TimeoutExpired:
                    child.kill()
                    child.wait()
                    stderr = None
            failed = _read_report(report)
        finally:
            os.close(report)
            if write_end >= 0:
                os.close(write_end)
    if failed is None:  # the child died before its sandbox was set up: the answer did not run
        why = _last_error((stderr or b"").decode(errors="replace")) if stderr is not None else \
            f"it did not start within {settings.timeout_s}s"
        return Verdict(False, "code", f"the code was not run: its sandbox could not be set up: {why}")
    if failed and required:
        return Verdict(False, "code", _not_sandboxed(list(failed), failed))
    unprotected = ""
    if missing or failed:
        names = ", ".join([*missing, *failed])
        unprotected = f" (run without these protections: {names}; sandbox = \"best_effort\")"
    if stderr is None:
        return Verdict(False, "code", f"the code did not finish within {settings.timeout_s}s"
                       + unprotected)
    if child.returncode == 0:
        return Verdict(True, "code", unprotected.strip(" ()"))
    return Verdict(False, "code", f"the code failed (exit {child.returncode}): "
                   f"{_last_error(stderr.decode(errors='replace'))}{unprotected}")


def _read_report(fd: int) -> dict[str, str] | None:
    """The protections the child could not set up, with why; None when it wrote no report."""
    data = b""
    while chunk := os.read(fd, 65536):
        data += chunk
    if not data:
        return None
    try:
        found = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    return {str(k): str(v) for k, v in found.items()} if isinstance(found, dict) else None


def _not_sandboxed(missing: list[str], why: dict[str, str] | None = None) -> str:
    """The reason of a verdict on code not run because protections are missing: what and how
    to fix it."""
    fixes = "; ".join(f"{name}: " + (f"{why[name]}, " if why and why.get(name) else "")
                      + sandbox.HOW_TO_FIX[name] for name in missing)
    return (f"the code was not run: this machine cannot sandbox it ({fixes}). Fix that, or set "
            f"sandbox = \"best_effort\" on this code validator to run it with only the "
            f"protections available")


def _last_error(stderr: str) -> str:
    """The exception line of a traceback (and the line of answer.py it happened at)."""
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    if not lines:
        return "no error output (killed by a limit?)"
    where = next((line.strip() for line in reversed(lines) if 'File "answer.py"' in line), "")
    line = re.search(r"line (\d+)", where)
    last = lines[-1].strip()
    last = last if len(last) <= 300 else last[:297] + "..."
    return f"{last} (line {line.group(1)})" if line else last


# --- judge -------------------------------------------------------------------------------------


class JudgeSettings(_Settings):
    """``{ kind = "judge" }``: a judge model scores the answer against a rubric."""

    model: str = Field(description="The judge: a model or route name (not auto).")
    rubric: str = Field(default="The answer is correct, complete and addresses the question.",
                        description="What a good answer is; the judge scores against it.")
    min_score: float = Field(default=7, ge=1, le=10, description="Lowest score (1-10) that "
                             "passes.")
    max_tokens: int = Field(default=300, ge=16, description="Output limit of the judge's "
                            "answer.")

    @field_validator("model")
    @classmethod
    def _not_auto(cls, v: str) -> str:
        if not v.strip() or v == "auto":
            raise ValueError("name the judge model or route (auto is not allowed)")
        return v


JUDGE_PROMPT = """You grade an AI assistant's answer against a rubric.

Rubric:
{rubric}

The conversation (last messages):
{question}

The answer to grade:
{answer}

Score it from 1 (useless) to 10 (perfect) against the rubric. Reply with JSON only:
{{"score": <integer 1-10>, "reason": "<one sentence>"}}"""

_judging: contextvars.ContextVar[bool] = contextvars.ContextVar("turnout_judging", default=False)
"""Set while a judge sub-request runs, so its own answer is not judged in turn."""

def parse_judgement(text: str) -> tuple[float, str] | None:
    """``(score, reason)`` from a judge's answer: JSON (possibly fenced or in prose), else a
    ``score: n`` pattern; None when no score is found."""
    found = read_number(text, "score")
    if found is None or found[0] is None:
        return None
    return found[0], text_of(found[1], "reason")


class Validators:
    """Registers the validators; keeps the kernel (from ``startup``) for the judge's calls."""

    def __init__(self) -> None:
        self.kernel: Kernel | None = None

    @hookimpl
    def register_validators(self, register) -> None:
        register("regex", regex, settings=RegexSettings)
        register("length", length, settings=LengthSettings)
        register("labels", labels, settings=LabelsSettings)
        register("logprobs", logprobs, settings=LogprobsSettings)
        register("code", code, settings=CodeSettings)
        register("judge", self.judge, settings=JudgeSettings)

    @hookimpl
    def startup(self, kernel) -> None:
        self.kernel = kernel

    async def judge(self, ctx: Context, completion: Completion,
                    settings: JudgeSettings) -> Verdict | None:
        """Ask the judge model for a 1-10 score; pass at ``min_score`` or above. The judge's
        call is a sub-request of this one: recorded under it, its cost counted in it."""
        if _judging.get() or (completion.tool_calls and not completion.content):
            return None
        if self.kernel is None:
            return Verdict(False, "judge", "the gateway has not started; no judge to ask")
        question = "\n".join(f"{m.role}: {m.text()}" for m in ctx.request.messages[-4:])
        prompt = JUDGE_PROMPT.format(rubric=settings.rubric, question=_clip(question, 6000),
                                     answer=_clip(completion.content or "", 8000))
        request = ChatRequest(model=settings.model, messages=[{"role": "user", "content": prompt}],
                              temperature=0, max_tokens=settings.max_tokens)
        token = _judging.set(True)
        try:
            answer = await self.kernel.subrequest(ctx, request)
        except TurnoutError as exc:
            return Verdict(False, "judge", f"the judge {settings.model!r} did not answer: {exc}")
        finally:
            _judging.reset(token)
        found = parse_judgement(getattr(answer, "content", None) or "")
        if found is None:
            return Verdict(False, "judge", f"the judge {settings.model!r} gave no score")
        score, reason = found
        score = min(max(score, 0.0), 10.0)
        why = f"scored {score:g}/10" + (f": {reason}" if reason else "")
        if score < settings.min_score:
            return Verdict(False, "judge", f"{why} (below {settings.min_score:g})", score / 10)
        return Verdict(True, "judge", why, score / 10)


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit] + " [...]"

