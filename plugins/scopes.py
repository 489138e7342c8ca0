"""What budgets and rate limits are counted by: a scope (key, user, team, model, route or global)
and, optionally, the one value of it a rule applies to.

A rule with ``match`` applies only to that key, user, team, model or route; without it, each
value of the scope gets its own count (``scope = "key"`` alone: a limit for every key). A
request without a value for the scope (no key, no user) is not counted by it.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, RootModel, model_validator

from turnout.kernel.types import Context, Step

Scope = Literal["key", "user", "team", "model", "route", "global"]

REQUEST_SCOPES = frozenset({"key", "user", "team", "route", "global"})
"""Scopes a whole request counts against once; ``model`` counts every attempt of its model."""

GLOBAL = "*"
"""The value of the ``global`` scope."""


class ScopedRule(BaseModel):
    """A rule counted by scope: ``scope``, and ``match`` to pick one value of it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    scope: Scope = Field(description="What is counted: each gateway key ('key'), end user "
                         "('user'), team ('team'), model ('model'), route ('route'), or "
                         "everything together ('global').")
    match: str | None = Field(default=None, description="The key's name, user id, team, model "
                              "or route this rule applies to; omitted: every one of them gets "
                              "its own count (omit it for 'global').")

    @model_validator(mode="after")
    def _global_has_no_match(self) -> "ScopedRule":
        if self.scope == "global" and self.match is not None:
            raise ValueError("a global rule applies to everything: remove 'match'")
        return self

    @property
    def single_value(self) -> str | None:
        """The one value this rule counts (its ``match``; ``*`` for global), or None for a rule
        without ``match``, which keeps a count for each value it sees."""
        return GLOBAL if self.scope == "global" else self.match

    def value(self, ctx: Context, step: Step) -> str | None:
        """What this request is counted as under the rule's scope; None when the rule does not
        apply to it."""
        scope = self.scope
        if scope == "global":
            return GLOBAL
        if scope == "key":
            found = ctx.caller.key
        elif scope == "user":
            found = ctx.caller.user
        elif scope == "team":
            found = ctx.caller.team
        elif scope == "model":
            found = step.model.name
        else:
            found = ctx.root.route
        if found is None or (self.match is not None and found != self.match):
            return None
        return found

    def counter(self, value: str) -> str:
        """The store key part naming this rule's count for ``value``: ``key:ci`` for a rule that
        matches ``ci``, ``key/each:ci`` for the per-key rule counting ``ci``, so the two keep
        separate counts."""
        if self.match is not None or self.scope == "global":
            return f"{self.scope}:{value}"
        return f"{self.scope}/each:{value}"

    def label(self, value: str) -> str:
        """How the rule is named in errors, alerts and headers: ``key 'ci'``, ``global``."""
        return "global" if self.scope == "global" else f"{self.scope} {value!r}"


def rule_list(item: type[BaseModel], doc: str) -> type[RootModel]:
    """A plugin's settings that are a list of tables (``[[budgets]]``), each an ``item``."""

    class Rules(RootModel[list[item]]):  # type: ignore[valid-type]
        root: list[item] = Field(default_factory=list)  # type: ignore[valid-type]

        def __iter__(self):
            return iter(self.root)

        def __len__(self) -> int:
            return len(self.root)

    Rules.__doc__ = doc
    Rules.__name__ = Rules.__qualname__ = f"{item.__name__}List"
    return Rules
