"""Experiments: A/B and multi-arm routing by a stable hash of the user, the gateway key or the
conversation, with per-arm figures in ``turnout experiments report``.

```toml
[[experiments]]
name = "cheap-vs-balanced"
key = "user"                 # user | key | conversation
match = "auto"               # what requests ask for: 'auto', route or model names
arms = [
  { name = "control", route = "balanced", weight = 1 },
  { name = "candidate", route = "cheap", weight = 1 },    # or model = "NAME"
]
```

**Assignment.** A request that asks for something an enabled experiment ``match``-es (the first
such experiment in config order) is assigned by :func:`.assign.bucket`: ``sha256`` of the
experiment's ``salt`` (default: its name) and the key's value, a number in [0, 1) cut into spans
by the arms' weights. The same user (key, conversation) gets the same arm in every process, on
every replica and after a restart, with no state kept anywhere. The key's value: ``user`` is the
caller's user (the request's ``user``, else ``x-turnout-user``, else the gateway key's user),
``key`` the gateway key's name, ``conversation`` the ``x-turnout-conversation`` header, else the
request's ``metadata.conversation_id``. A request without one goes to the first arm (the
control), marked ``unassigned`` in the decision record, and the report leaves it out. Only
top-level requests take part: a strategy's sub-requests go where their strategy sends them.

**Applying the arm.** For ``auto``, a ``select_route`` answered first (``tryfirst``), before any
router: the arm's route (or model) is the selection, and ``decision["rule"]`` says
``experiment NAME: arm ARM``. For a request naming a route or a model, whose candidates are set
before any router runs, the first ``filter_candidates`` (``tryfirst``, a plain function, so it
runs before the built-in filters) replaces the route and its candidates with the arm's, so the
filters after it (context fit, budgets, health) and the plan work on the arm's models, with the
arm's route's strategy, validators and settings.

**What it says.** ``decision["experiment"] = {"name", "arm", "key", "bucket", "target"}`` (plus
``"unassigned": true``), never the key's value; the response header ``x-turnout-experiment:
NAME=ARM`` (on errors too). The request record keeps the decision, so the report needs nothing
else: see :mod:`.figures`.
"""

from __future__ import annotations

from typing import Any

from turnout.kernel.hookspecs import hookimpl
from turnout.kernel.types import Context, Selection

from .assign import Assignment, assign, bucket, key_value, pick
from .settings import Arm, Experiment, ExperimentList

__all__ = ["Arm", "Assignment", "Experiment", "ExperimentList", "Experiments", "HEADER", "assign",
           "bucket", "key_value", "pick"]

HEADER = "x-turnout-experiment"
"""Response header naming the experiment and arm that served the request: ``NAME=ARM``."""

STATE = "experiments"
"""``ctx.state`` key marking a request already assigned."""


class Experiments:
    """Routes the requests an experiment matches to the arm their key hashes to."""

    Settings = ExperimentList

    def __init__(self) -> None:
        self.kernel: Any = None
        self.by_request: dict[str, Experiment] = {}
        """What a request asks for -> the first enabled experiment matching it."""

    @hookimpl
    def startup(self, kernel) -> None:
        self.kernel = kernel
        self.by_request = {}
        for experiment in kernel.plugin_settings(self) or ():
            if experiment.enabled:
                for asked in experiment.match:
                    self.by_request.setdefault(asked, experiment)

    def _assign(self, ctx: Context) -> Assignment | None:
        """The request's arm, written into the decision record and the response headers; None
        for a request no experiment takes (or one already assigned, or a sub-request)."""
        if not self.by_request or ctx.parent is not None or STATE in ctx.state:
            return None
        experiment = self.by_request.get(ctx.request.model)
        if experiment is None:
            return None
        found = assign(experiment, ctx)
        ctx.state[STATE] = found
        ctx.decision["experiment"] = found.decision()
        ctx.response_headers[HEADER] = f"{experiment.name}={found.arm.name}"
        return found

    @hookimpl(tryfirst=True)
    def select_route(self, ctx: Context) -> Selection | None:
        """For ``auto``: the arm's route or model, before any router is asked."""
        found = self._assign(ctx)
        if found is None:
            return None
        arm = found.arm
        reason = f"experiment {found.experiment.name}: arm {arm.name}"
        if arm.route is not None:
            return Selection(arm.route, reason=reason)
        model = self.kernel.models.get(arm.model)
        return Selection(arm.model, [model] if model is not None else [], reason=reason)

    @hookimpl(tryfirst=True)
    def filter_candidates(self, ctx: Context) -> None:
        """For a request naming a route or a model: the arm's route and candidates instead,
        before the other filters see them."""
        found = self._assign(ctx)
        if found is None:
            return
        arm = found.arm
        if arm.route is not None:
            ctx.route, ctx.candidates = arm.route, self.kernel.route_models(arm.route)
        else:
            model = self.kernel.models.get(arm.model)
            ctx.route, ctx.candidates = arm.model, [model] if model is not None else []

    @hookimpl
    def register_commands(self, register) -> None:
        """``turnout experiments report``."""
        from . import report

        register("experiments", report.run, help="experiments: per-arm figures with confidence "
                 "intervals, and the winner when the data supports one (report)",
                 arguments=report.arguments)
