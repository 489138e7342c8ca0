"""Resolves ``model: auto`` to a route from the request's labels and ``[routing]``.

In order: the first of ``[[routing.rules]]`` that matches; else ``routing.tasks``, the route
mapped to the request's ``task`` label; else ``routing.difficulty``, the first step whose
``below`` the ``difficulty`` label (``complexity`` where the classifier gives no difficulty) is
under (a step without ``below`` takes every difficulty); else ``routing.default`` (the first
route when unset). The decision record's ``rule`` says which applied: the rule's name,
``task code -> strong``, ``difficulty 0.42 < 0.7 -> balanced``, or ``default``.

A rule's ``when`` maps a label to a value (equality), a list of values (any of), or a comparison
string: ``"> 0.6"``, ``">= 2000"``, ``"< 0.25"``, ``"<= 3"``, ``"!= chat"``. Every condition must
hold. A label the request lacks fails the condition. With no routes configured at all, ``auto``
means every model, cheapest first.
"""

from __future__ import annotations

import operator
import re
from typing import Any, Callable

from turnout.kernel.config import Rule, Threshold
from turnout.kernel.hookspecs import hookimpl
from turnout.kernel.types import Context, Selection

_COMPARISON = re.compile(r"^\s*(>=|<=|!=|==|>|<)\s*(.+?)\s*$")
_OPS = {">": operator.gt, ">=": operator.ge, "<": operator.lt, "<=": operator.le,
        "==": operator.eq, "!=": operator.ne}

Condition = Callable[[dict[str, Any]], bool]


def compile_condition(label: str, expected: Any) -> Condition:
    """One ``when`` entry as a predicate on the labels."""
    missing = object()
    if isinstance(expected, list):
        choices = list(expected)
        return lambda labels: labels.get(label, missing) in choices
    if isinstance(expected, str) and (m := _COMPARISON.match(expected)):
        op, raw = _OPS[m.group(1)], m.group(2)
        try:
            value: Any = float(raw)
        except ValueError:
            value = raw

        def compare(labels: dict[str, Any]) -> bool:
            got = labels.get(label, missing)
            if got is missing:
                return False
            try:
                return bool(op(got, value))
            except TypeError:
                return False

        return compare
    return lambda labels: labels.get(label, missing) == expected


def compile_rule(rule: Rule) -> Callable[[dict[str, Any]], bool]:
    conditions = [compile_condition(k, v) for k, v in rule.when.items()]
    return lambda labels: all(c(labels) for c in conditions)


def difficulty_of(labels: dict[str, Any]) -> float | None:
    """The request's difficulty, 0..1: the ``difficulty`` label, else ``complexity``; None when
    the classifiers gave neither as a number."""
    for name in ("difficulty", "complexity"):
        value = labels.get(name)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    return None


def by_difficulty(steps: list[Threshold], labels: dict[str, Any]) -> Selection | None:
    """The first step the request's difficulty falls under, or None."""
    if not steps:
        return None
    value = difficulty_of(labels)
    if value is None:
        return None
    for step in steps:
        if step.below is None:
            return Selection(step.route, reason=f"difficulty {value:.2f} -> {step.route}")
        if value < step.below:
            return Selection(step.route,
                             reason=f"difficulty {value:.2f} < {step.below:g} -> {step.route}")
    return None


class RulesRouter:
    """The built-in router for ``auto``: rules, the task map, difficulty steps, the default."""

    def __init__(self) -> None:
        self.kernel = None
        self.rules: list[tuple[str, str, Callable]] = []
        self.default: str | None = None
        self.tasks: dict[str, str] = {}
        self.difficulty: list[Threshold] = []

    @hookimpl
    def startup(self, kernel) -> None:
        self.kernel = kernel
        routing = kernel.config.routing
        self.rules = [(rule.name or f"rule {i + 1}", rule.route, compile_rule(rule))
                      for i, rule in enumerate(routing.rules)]
        self.tasks = dict(routing.tasks)
        self.difficulty = list(routing.difficulty)
        self.default = routing.default or next(iter(kernel.config.routes), None)

    @hookimpl(trylast=True)
    def select_route(self, ctx: Context) -> Selection:
        """The first matching rule's route, else the task map's, else the difficulty step's,
        else the default; answers last, so other routers are asked first."""
        for name, target, matches in self.rules:
            if matches(ctx.labels):
                return Selection(target, reason=name)
        task = ctx.labels.get("task")
        if isinstance(task, str) and task in self.tasks:
            return Selection(self.tasks[task], reason=f"task {task} -> {self.tasks[task]}")
        stepped = by_difficulty(self.difficulty, ctx.labels)
        if stepped is not None:
            return stepped
        if self.default is not None:
            return Selection(self.default, reason="default")
        # no routes configured: every model, cheapest first
        return Selection("auto", sorted(self.kernel.models,
                                        key=lambda m: (m.input_price + m.output_price, m.tier)),
                         reason="default: every model, cheapest first")
