"""The labels a request carries after ``classify``: their names, types and meanings, in one place.

``ctx.labels`` is a plain dict that the ``classify`` hook fills (see
:func:`turnout.kernel.hookspecs.classify`); :class:`Labels` is its typed shape and
:data:`DOCS` says what each label means. Routers match on these names
(``[[routing.rules]] when = { task = "code", difficulty = ">= 0.6" }``), the request record keeps
them, and learned routers train on them. The built-in ``classify`` plugin (a heuristic that runs on
every request) sets every label but the budget ones; the ``llm_classifier`` plugin, when a model is
configured for it, replaces ``task``, ``difficulty`` and ``complexity`` with a cheap model's
verdict and sets ``classifier`` to ``"llm"``. Third-party plugins may add labels of their own.
"""

from __future__ import annotations

from typing import Literal, TypedDict, get_args

Task = Literal["code", "math", "reasoning", "extraction", "creative", "chat", "translation",
               "summarize"]
"""What the request asks for; see :data:`TASKS` for each value's meaning."""

TASKS: dict[str, str] = {
    "code": "Write, fix, explain or review code: programs, functions, SQL, regular expressions, "
            "shell commands, configuration, error messages and stack traces.",
    "math": "Calculate, solve or prove: arithmetic, algebra, calculus, probability, statistics, "
            "word problems and proofs.",
    "reasoning": "Think a problem through: analyse, compare options, weigh trade-offs, design a "
                 "system, plan, diagnose causes, solve a logic puzzle, explain why.",
    "extraction": "Pull structured facts out of given text: fields, entities, dates, labels or "
                  "sentiment, often as JSON, a list or a table.",
    "creative": "Write something new to be enjoyed or used as prose: stories, poems, lyrics, "
                "jokes, slogans, toasts, product copy, plots and characters.",
    "chat": "Conversation and everyday questions: greetings, thanks, small talk, short factual "
            "questions, recommendations and advice.",
    "translation": "Render given text in another natural language (not one programming language "
                   "into another: that is code).",
    "summarize": "Condense given text: a summary, key points, a TL;DR. An extra value beyond the "
                 "seven task types, kept because summaries are long in and short out, which "
                 "routes differently from chat.",
}
"""Every ``task`` value and what it covers. The first seven are the fixed task types; any other
value is documented here as an extra."""

DIFFICULTY_LEVELS: dict[int, str] = {
    1: "trivial: small talk, a lookup, a one-line answer anyone could give",
    2: "easy: a routine task with one clear answer (a short translation, a simple function)",
    3: "moderate: several steps or some domain knowledge (debugging, a word problem)",
    4: "hard: multi-step reasoning, weighing trade-offs, a proof, a design with constraints",
    5: "very hard: expert depth across many constraints; a wrong answer is likely",
}
"""The 1-5 difficulty scale a classifier model answers on; level ``n`` is ``(n - 1) / 4`` as the
0..1 ``difficulty`` label."""


class Labels(TypedDict, total=False):
    """The typed shape of ``ctx.labels``; every key is optional. See :data:`DOCS`."""

    task: Task
    difficulty: float
    complexity: float
    language: str
    prompt_tokens: int
    turns: int
    needs_tools: bool
    needs_json: bool
    needs_vision: bool
    classifier: Literal["heuristic", "llm"]
    budget_left: float
    budget_left_usd: float


DOCS: dict[str, str] = {
    "task": "What the request asks for, from the last user message: one of "
            + ", ".join(TASKS) + " (see TASKS for each).",
    "difficulty": "How hard the request is, 0 (trivial) to 1 (very hard): how likely a small, "
                  "cheap model is to get it wrong. The heuristic scores the reasoning load (design, "
                  "trade-offs, proofs, step by step, explain why), the number of separate "
                  "demands, constraints, code and stack traces, length and the task type; an LLM "
                  "verdict of level n on DIFFICULTY_LEVELS is (n - 1) / 4. The embedded default "
                  "config sends 0.6 and above to the strong route.",
    "complexity": "The same value as difficulty, kept under its old name so that existing "
                  "routing rules (when = { complexity = \">= 0.6\" }) keep working.",
    "language": "The language of the last user message as an ISO 639-1 code (en, es, fr, de, "
                "it, pt, nl, ru, uk, zh, ja, ko, ar, he, el, hi, th), from its script and its "
                "most common words; 'und' when the message gives too little to tell.",
    "prompt_tokens": "Tokens of the whole prompt (every message, tool definitions and framing), "
                     "counted with a real tokenizer (tiktoken cl100k_base).",
    "turns": "User messages in the conversation (1 for a single question).",
    "needs_tools": "The request offers tools (function calling); only models with the tools "
                   "capability can serve it.",
    "needs_json": "The request asks for JSON output (response_format json_object or "
                  "json_schema).",
    "needs_vision": "A message carries an image; only models with the vision capability can "
                    "serve it.",
    "classifier": "Which classifier set task and difficulty: 'heuristic' (the built-in "
                  "classify plugin, also when the LLM classifier timed out, failed or answered "
                  "outside the label set) or 'llm' (the llm_classifier plugin's model, or its "
                  "cached verdict).",
    "budget_left": "Set by the budgets plugin when a routing rule matches on it: the fraction "
                   "(0..1) left of the tightest request-wide budget that applies.",
    "budget_left_usd": "Set with budget_left: the US dollars left of the tightest budget.",
}
"""What every label means; one entry per key of :class:`Labels`."""

TASK_VALUES: tuple[str, ...] = get_args(Task)
"""The ``task`` values, in the order of :data:`TASKS`."""


def difficulty_of_level(level: float) -> float:
    """A 1-5 difficulty level (clamped to that range) as the 0..1 ``difficulty`` label."""
    return round((min(max(level, 1.0), 5.0) - 1.0) / 4.0, 3)
