"""Resolves ``model: auto`` to a route by matching request labels against ``[[routing.rules]]``.

A rule's ``when`` maps a label to a value (equality), a list of values (any of), or a comparison
string: ``"> 0.6"``, ``">= 2000"``, ``"< 0.25"``, ``"<= 3"``, ``"!= chat"``. Every condition must
hold; the first rule that matches wins, else ``routing.default`` (the first route when unset).
A label the request lacks fails the condition. With no routes configured at all, ``auto`` means
every model, cheapest first.
"""

from __future__ import annotations

import operator
import re
from typing import Any, Callable

from turnout.kernel.config import Rule
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


class RulesRouter:
    """The built-in router for ``auto``: the first matching rule's route, else the default."""

    def __init__(self) -> None:
        self.kernel = None
        self.rules: list[tuple[str, str, Callable]] = []
        self.default: str | None = None

    @hookimpl
    def startup(self, kernel) -> None:
        self.kernel = kernel
        routing = kernel.config.routing
        self.rules = [(rule.name or f"rule {i + 1}", rule.route, compile_rule(rule))
                      for i, rule in enumerate(routing.rules)]
        self.default = routing.default or next(iter(kernel.config.routes), None)

    @hookimpl(trylast=True)
    def select_route(self, ctx: Context) -> Selection:
        """The first matching rule's route, else the default; answers last, so other routers
        are asked first."""
        for name, target, matches in self.rules:
            if matches(ctx.labels):
                return Selection(target, reason=name)
        if self.default is not None:
            return Selection(self.default, reason="default")
        # no routes configured: every model, cheapest first
        return Selection("auto", sorted(self.kernel.models,
                                        key=lambda m: (m.input_price + m.output_price, m.tier)),
                         reason="default: every model, cheapest first")
