"""Labels every request with cheap, explainable features that routers can match on.

Labels: ``task`` (code, math, extraction, summarize, translate, tools, chat), ``complexity``
(0..1), ``prompt_tokens``, ``turns``, ``needs_tools``, ``needs_json``, ``needs_vision``.
All heuristics run in microseconds; a learned classifier can override them as a later plugin.
"""

from __future__ import annotations

import re
from typing import Any

from turnout.kernel import tokens
from turnout.kernel.hookspecs import hookimpl
from turnout.kernel.types import Context

_CODE = re.compile(r"```|\bdef |\bclass |\bfunction\b|\bimport |#include|\bSELECT\b|=>|\bstack trace\b"
                   r"|\bTraceback\b|\bcompile|\bregex\b|\bbug\b|\brefactor", re.I)
_MATH = re.compile(r"\bprove\b|\bintegral\b|\bderivative\b|\bequation\b|\btheorem\b|\bsolve\b"
                   r"|\d+\s*[-+*/^]\s*\d+", re.I)
_HARD = re.compile(r"\bstep[- ]by[- ]step\b|\bexplain why\b|\banaly[sz]e\b|\bprove\b|\bdesign\b"
                   r"|\btrade-?offs?\b|\bcompare\b|\boptimi[sz]e\b|\barchitecture\b|\breason\b"
                   r"|\bderive\b|\bevaluate\b|\bcritique\b", re.I)
_TASKS = (
    ("summarize", re.compile(r"\bsummari[sz]e\b|\btl;?dr\b|\bsummary\b", re.I)),
    ("translate", re.compile(r"\btranslate\b|\btranslation\b", re.I)),
)


@hookimpl
def classify(ctx: Context) -> dict[str, Any]:
    """Add task, complexity and size labels."""
    request = ctx.request
    last_user = next((m.text() for m in reversed(request.messages) if m.role == "user"), "")
    prompt_tokens = tokens.count_request(request)
    needs_vision = any(isinstance(m.content, list) and any(p.get("type") == "image_url"
                                                           for p in m.content)
                       for m in request.messages)
    if request.tools:
        task = "tools"
    elif request.wants_json:
        task = "extraction"
    elif _CODE.search(last_user):
        task = "code"
    elif _MATH.search(last_user):
        task = "math"
    else:
        task = next((name for name, pattern in _TASKS if pattern.search(last_user)), "chat")
    return {
        "task": task,
        "complexity": complexity(last_user, task, len(request.messages)),
        "prompt_tokens": prompt_tokens,
        "turns": sum(1 for m in request.messages if m.role == "user"),
        "needs_tools": bool(request.tools),
        "needs_json": request.wants_json,
        "needs_vision": needs_vision,
    }


def complexity(text: str, task: str, messages: int) -> float:
    """A 0..1 score: longer, multi-part, reasoning-heavy, code or math prompts score higher."""
    words = len(text.split())
    score = min(words / 400, 0.35)
    score += 0.12 * min(len(_HARD.findall(text)), 3)
    score += min(text.count("?"), 3) * 0.04
    score += {"code": 0.2, "math": 0.2, "tools": 0.1, "extraction": 0.05}.get(task, 0.0)
    score += min(messages / 40, 0.1)
    return round(min(score, 1.0), 3)
