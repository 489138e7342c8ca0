"""The ``health`` plugin: deployments balanced by health, circuit breakers, per-tier timeouts.

**Deployments.** A model may list several deployments (``[models.NAME] deployments``): the same
model served by several providers or regions. A deployment's id is ``<model>@<provider>``; a
model without ``deployments`` is one deployment, its own provider and upstream. Only models that
list deployments are balanced and breakered, unless ``[health] apply_to = "all"``.

**Order** (``filter_candidates``, after the other filters). Each candidate model is replaced by
copies of itself, one per deployment (same name, the deployment's provider and upstream, its id
in ``ModelProfile.deployment``), in this order: a half-open deployment first (the probe that may
close it), then the closed ones (the first drawn by share, the rest by cost; see
:mod:`.balance`). Open deployments are left out; a model whose deployments are all open is
dropped, so the strategy moves on to the next model. When every deployment of every candidate is
open, the one that half-opens soonest is kept as a probe rather than failing the request outright.
Strategies not listed in ``failover_strategies`` (race, ensemble...) get only the first
deployment of each model. ``ctx.decision["health"]`` lists each deployment considered: its
state, latency average, calls in flight, share, and why it stands where it does. (It is written
when a model has several deployments or a circuit is not closed.)

**Admission** (``admit``). Each attempt reads its deployment's circuit from the store. Open, or
half-open with a probe already in flight (on any replica), the attempt is refused before any
upstream call: it fails with ``upstream_unavailable`` naming the circuit and when it half-opens,
and is not retried on the same deployment, so the strategy moves on. Half-open with the probe
slot free, the attempt takes the slot and is the probe. The attempt's ``Hold`` counts it in
flight and, when the attempt ends, feeds its latency and outcome to the balancer and the
breaker (see :mod:`.circuit`). Answers served by the cache say nothing about the upstream and
are not counted. An attempt whose route sets no ``attempt_timeout_s`` gets the deadline of its
model's tier (``tier_timeouts_s``).

Retries of a deployment after a 5xx or timeout wait a backoff with full jitter (the
``fallback`` strategy's); open intervals are jittered too (see :mod:`.circuit`).
"""

from __future__ import annotations

import dataclasses
import random
import time
import uuid
from dataclasses import dataclass
from typing import Any

import structlog

from turnout.kernel.errors import ProviderUnavailable
from turnout.kernel.hookspecs import hookimpl
from turnout.kernel.types import Attempt, Context, Hold, ModelProfile, Step

from .balance import Balancer
from .circuit import CLOSED, HALF_OPEN, OPEN, Breakers, Circuit
from .settings import HealthSettings

log = structlog.get_logger("turnout.health")

FAULT_KINDS = frozenset({"upstream_unavailable", "upstream_timeout", "stream_interrupted",
                         "upstream_error", "upstream_auth_failed"})
"""Attempt error kinds that are the upstream's fault (with ``rate_limited`` when counted)."""

SILENT_KINDS = frozenset({"provider_missing"})
"""Error kinds that say nothing about the upstream (no call was made)."""

HOLDS = "health.holds"
"""``ctx.state`` key: the hold of each step being attempted, by the step's id."""

PROBE = "health.probe"
"""``ctx.state`` key: the deployment kept as a probe although its circuit is open."""


@dataclass(slots=True, frozen=True)
class Deployment:
    """One way to reach a model."""

    id: str
    provider: str
    upstream: str
    weight: float = 1.0


def deployment_id(model: ModelProfile) -> str:
    """The deployment a model profile stands for: ``<model>@<provider>``."""
    return model.deployment or f"{model.name}@{model.provider}"


class Health:
    """Balances deployments by health and breaks the circuits of failing ones."""

    Settings = HealthSettings

    def __init__(self) -> None:
        self.kernel: Any = None
        self.settings = HealthSettings()
        self.random = random.Random()
        """Balancing draws and open-interval jitter: the plugin's own generator."""
        self.clock = time.time
        """Wall clock, for when circuits opened (shown to people; expiry is the store's)."""
        self.balancer = Balancer(self.settings.ewma_alpha, self.random)
        self.views: dict[str, tuple[Circuit, float]] = {}
        """Circuits as last read from the store, with when (``time.monotonic``)."""
        self.probing: set[str] = set()
        """Deployments this process is probing now."""
        self._breakers: Breakers | None = None

    @hookimpl
    def startup(self, kernel: Any) -> None:
        self.kernel = kernel
        self.settings = kernel.plugin_settings(self) or HealthSettings()
        self.balancer = Balancer(self.settings.ewma_alpha, self.random)

    @property
    def breakers(self) -> Breakers | None:
        """The circuits in the kernel's store (None before the store is built)."""
        store = self.kernel.store if self.kernel is not None else None
        if store is None:
            return None
        if self._breakers is None or self._breakers.store is not store:
            self._breakers = Breakers(store, self.settings, self.random, self.clock)
        return self._breakers

    def deployments(self, model: ModelProfile) -> list[Deployment]:
        """The deployments of ``model``: as configured, else the model itself."""
        entry = self.kernel.config.models.get(model.name) if self.kernel is not None else None
        listed = getattr(entry, "deployments", None) if entry is not None else None
        if model.deployment is not None or not listed:
            return [Deployment(deployment_id(model), model.provider, model.upstream)]
        return [Deployment(f"{model.name}@{d.provider}", d.provider, d.upstream or model.upstream,
                           d.weight) for d in listed]

    def managed(self, model: ModelProfile) -> bool:
        """Whether ``model`` is balanced and breakered (see ``apply_to``)."""
        if self.settings.apply_to == "all" or model.deployment is not None:
            return True
        entry = self.kernel.config.models.get(model.name) if self.kernel is not None else None
        return bool(getattr(entry, "deployments", None))

    def view(self, deployment: str) -> Circuit:
        found = self.views.get(deployment)
        return found[0] if found is not None else Circuit()

    async def refresh(self, deployment: str) -> Circuit:
        """Read a circuit from the store and remember it."""
        circuit = await self.breakers.read(deployment)
        self.views[deployment] = (circuit, time.monotonic())
        return circuit

    # --- classify: read the circuits the order will need --------------------------------------

    @hookimpl
    async def classify(self, ctx: Context) -> None:
        """Refresh the circuits of the candidates' deployments that are older than
        ``state_refresh_s`` (a request for ``auto`` learns its candidates later and is ordered by
        what this replica read last). Adds no labels."""
        if not self.settings.enabled or self.breakers is None:
            return None
        now = time.monotonic()
        for model in ctx.candidates:
            if not self.managed(model):
                continue
            for d in self.deployments(model):
                seen = self.views.get(d.id)
                if seen is None or now - seen[1] >= self.settings.state_refresh_s:
                    await self.refresh(d.id)
        return None

    # --- filter_candidates: deployments in order ----------------------------------------------

    @hookimpl(trylast=True)
    def filter_candidates(self, ctx: Context) -> None:
        """Replace each candidate by its deployments, healthiest first (see the module)."""
        if not self.settings.enabled or self.kernel is None or not ctx.candidates:
            return
        route = self.kernel.route_config(ctx.route)
        failover = route.strategy in self.settings.failover_strategies
        now = self.clock()
        entries: list[dict[str, Any]] = []
        kept: list[ModelProfile] = []
        open_models: list[tuple[ModelProfile, list[Deployment]]] = []
        notable = False
        for model in ctx.candidates:
            if not self.managed(model):
                kept.append(model)
                continue
            deployments = self.deployments(model)
            notable |= len(deployments) > 1
            ordered, model_entries = self._order(model, deployments, now)
            notable |= any(e["state"] != CLOSED for e in model_entries)
            entries.extend(model_entries)
            if not ordered:
                open_models.append((model, deployments))
                continue
            kept.extend(ordered if failover else ordered[:1])
        if not kept and open_models:  # everything is open: probe the one that half-opens first
            model, d = min(((m, d) for m, ds in open_models for d in ds),
                           key=lambda md: self.view(md[1].id).half_opens_in(now))
            kept = [self._copy(model, d)]
            ctx.state[PROBE] = d.id
            for entry in entries:
                if entry["deployment"] == d.id:
                    entry["why"] = ("every deployment of every candidate is open: kept as a "
                                    "probe, the one that half-opens first")
        elif open_models:
            for model, _ in open_models:
                ctx.decision.setdefault("dropped", []).append(
                    {"model": model.name, "reason": "every deployment's circuit is open"})
        if notable:
            ctx.decision["health"] = {"order": [deployment_id(m) for m in kept],
                                      "deployments": entries}
        ctx.candidates = kept

    def _order(self, model: ModelProfile, deployments: list[Deployment],
               now: float) -> tuple[list[ModelProfile], list[dict[str, Any]]]:
        """One model's deployments in the order to try them, and their decision entries."""
        by_id = {d.id: d for d in deployments}
        states = {d.id: self.view(d.id) for d in deployments}
        probes = [d for d in deployments
                  if states[d.id].state == HALF_OPEN and d.id not in self.probing]
        busy = [d for d in deployments
                if states[d.id].state == HALF_OPEN and d.id in self.probing]
        closed = [(d.id, d.weight) for d in deployments if states[d.id].state == CLOSED]
        order, shares = self.balancer.order(closed)
        ids = [d.id for d in probes] + order + [d.id for d in busy]
        entries = []
        for d in deployments:
            circuit, stats = states[d.id], self.balancer.of(d.id)
            entry: dict[str, Any] = {
                "deployment": d.id, "provider": d.provider, "state": circuit.state,
                "ewma_ms": round(stats.ewma_ms, 2) if stats.ewma_ms is not None else None,
                "in_flight": stats.in_flight, "fault_rate": round(stats.fault_rate, 3),
                "weight": d.weight}
            if circuit.state == CLOSED:
                entry["share"] = round(shares[d.id], 4)
                entry["why"] = ("drawn first by share (1 / (ewma_ms x (1 + in_flight)) x weight "
                                "x health)" if order and order[0] == d.id
                                else "closed; after the first by cost")
            elif circuit.state == HALF_OPEN:
                entry["why"] = ("half-open: a probe is in flight here; tried last" if d in busy
                                else "half-open: first, as the probe that may close it")
            else:
                entry["why"] = (f"open ({circuit.reason}); half-opens in about "
                                f"{circuit.half_opens_in(now):.0f} s: skipped")
            entries.append(entry)
        entries.sort(key=lambda e: ids.index(e["deployment"]) if e["deployment"] in ids
                     else len(ids))
        return [self._copy(model, by_id[i]) for i in ids], entries

    @staticmethod
    def _copy(model: ModelProfile, deployment: Deployment) -> ModelProfile:
        """``model`` served by ``deployment``: the profile itself when it already is."""
        if deployment_id(model) == deployment.id and model.upstream == deployment.upstream:
            return model
        return dataclasses.replace(model, provider=deployment.provider,
                                   upstream=deployment.upstream, deployment=deployment.id)

    # --- admit: the circuit decides; the hold observes ----------------------------------------

    @hookimpl
    async def admit(self, ctx: Context, step: Step) -> Hold | None:
        """Apply the tier's deadline; check the deployment's circuit in the store; hold the
        attempt to observe how it ends."""
        if not self.settings.enabled or self.breakers is None:
            return None
        if step.timeout_s is None:
            step.timeout_s = self.settings.tier_timeouts_s.get(step.model.tier)
        if not self.managed(step.model):
            return None
        deployment = deployment_id(step.model)
        circuit = await self.refresh(deployment)
        hold = HealthHold(self, deployment, circuit)
        if circuit.state == OPEN and ctx.state.get(PROBE) != deployment:
            hold.refusal = (f"the circuit of {deployment} is open ({circuit.reason}); it "
                            f"half-opens in about {circuit.half_opens_in(self.clock()):.0f} s "
                            "and then lets one probe request through")
        elif circuit.tripped:
            token = uuid.uuid4().hex
            ttl = step.timeout_s or self.kernel.config.server.request_timeout_s
            if await self.breakers.try_probe(deployment, token, ttl):
                hold.probe = token
                self.probing.add(deployment)
            else:
                hold.refusal = (f"the circuit of {deployment} is half-open and a probe request "
                                "is in flight; the model's other deployments serve until it "
                                "answers")
        if hold.refusal is None:
            hold.counted = True
            self.balancer.of(deployment).in_flight += 1
        ctx.state.setdefault(HOLDS, {})[id(step)] = hold
        return hold

    @hookimpl
    def call(self, ctx: Context, step: Step) -> None:
        """Refuse an attempt whose circuit is open (no upstream call is made), and note that
        the upstream is being called (the cache did not answer)."""
        hold = ctx.state.get(HOLDS, {}).pop(id(step), None)
        if hold is None:
            return None
        if hold.refusal is not None:
            error = ProviderUnavailable(hold.refusal, provider=step.model.provider,
                                        model=step.model.name)
            error.retryable = False  # the same deployment would be refused again: move on
            raise error
        hold.called = True
        return None

    async def ended(self, hold: "HealthHold", attempt: Attempt) -> None:
        """An admitted attempt ended: update the balancer and the circuit."""
        deployment = hold.deployment
        if self.breakers is None:
            return
        if hold.counted:
            stats = self.balancer.of(deployment)
            stats.in_flight = max(0, stats.in_flight - 1)
        outcome, kind = self.outcome(attempt) if hold.called else (None, "")
        if outcome is not None:
            timed = outcome == "ok" or kind == "upstream_timeout"
            self.balancer.observe(deployment, fault=outcome == "fault",
                                  latency_s=attempt.latency_s if timed else None)
        try:
            moved = await self.breakers.record(deployment, hold.circuit, outcome, kind,
                                               probe=hold.probe)
        finally:
            if hold.probe is not None:
                self.probing.discard(deployment)
        if moved is not None:
            circuit = await self.refresh(deployment)
            log.warning("circuit_" + moved, deployment=deployment, reason=circuit.reason,
                        open_s=round(circuit.open_s, 3))

    def outcome(self, attempt: Attempt) -> tuple[str | None, str]:
        """What an ended attempt says about its upstream: ``ok`` (it answered, even with a
        client error or an answer a validator refused), ``fault``, or None (nothing: cancelled,
        never called)."""
        if attempt.status in ("ok", "rejected"):
            return "ok", ""
        if attempt.status != "error" or not attempt.error:
            return None, ""
        kind = attempt.error.split(":", 1)[0]
        if kind in FAULT_KINDS or (kind == "rate_limited" and self.settings.count_rate_limited):
            return "fault", kind
        if kind in SILENT_KINDS:
            return None, kind
        return "ok", kind


class HealthHold(Hold):
    """One attempt on one deployment, seen from the health plugin."""

    __slots__ = ("plugin", "deployment", "circuit", "probe", "refusal", "counted", "called")

    def __init__(self, plugin: Health, deployment: str, circuit: Circuit) -> None:
        self.plugin = plugin
        self.deployment = deployment
        self.circuit = circuit
        self.probe: str | None = None
        self.refusal: str | None = None
        self.counted = False
        self.called = False

    async def done(self, attempt: Attempt) -> None:
        if self.refusal is None:
            await self.plugin.ended(self, attempt)
