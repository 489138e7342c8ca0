"""The ``[health]`` table: circuit breakers, balancing and per-tier timeouts."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class HealthSettings(BaseModel):
    """Health-aware balancing: the ``[health]`` table."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = Field(default=True, description="Balance deployments and break circuits. "
                          "False: every model is served by its configured provider, as listed.")
    apply_to: Literal["deployments", "all"] = Field(
        default="deployments", description="Which models are balanced and have circuit "
        "breakers: 'deployments', those that list deployments; 'all', every model (a model "
        "without deployments is one deployment, whose circuit opening moves its traffic to the "
        "route's next model).")
    failure_threshold: int = Field(default=5, ge=1, description="Upstream faults (5xx, "
                                   "timeouts, connection errors, broken streams, refused "
                                   "credentials, and 429s unless count_rate_limited is off) of "
                                   "one deployment within window_s that open its circuit.")
    window_s: float = Field(default=60.0, gt=0, description="Sliding window, in seconds, over "
                            "which faults and calls are counted, in the shared store.")
    error_rate: float = Field(default=0.5, gt=0, le=1, description="Share of a deployment's "
                              "calls within window_s that, once they are faults, open its "
                              "circuit (with at least min_requests calls counted).")
    min_requests: int = Field(default=10, ge=1, description="Calls within window_s before "
                              "error_rate can open a circuit.")
    open_s: float = Field(default=30.0, gt=0, description="Seconds an opened circuit stays "
                          "open (plus up to 25% random jitter, so replicas do not probe in step) "
                          "before it half-opens and lets one probe request through; doubles "
                          "each time a probe fails, up to max_open_s.")
    max_open_s: float = Field(default=300.0, gt=0, le=86_400, description="Longest time a "
                              "circuit stays open between probes, however often probes failed.")
    ewma_alpha: float = Field(default=0.3, gt=0, le=1, description="Weight of the newest call "
                              "in each deployment's moving averages of latency and faults "
                              "(higher: reacts faster, forgets sooner).")
    count_rate_limited: bool = Field(default=True, description="Count an upstream 429 as a "
                                     "fault of the deployment (it gets less traffic while it "
                                     "limits us, and its circuit may open).")
    tier_timeouts_s: dict[int, float] = Field(
        default_factory=dict, description="Deadline of one attempt by the model's tier, e.g. "
        "{ 0 = 10, 1 = 30, 2 = 60 }, for attempts whose route sets no attempt_timeout_s. A tier "
        "not listed: no deadline but the request's.")
    state_refresh_s: float = Field(default=1.0, ge=0, description="How long this replica "
                                   "orders deployments by circuit states it read from the store "
                                   "before reading them again (0: every request). Whatever "
                                   "it read, an attempt is refused at once when its circuit is "
                                   "open in the store.")
    failover_strategies: list[str] = Field(
        default_factory=lambda: ["fallback"], description="Strategies whose plans list every "
        "healthy deployment of a model, best first, so a failed call moves on to the next "
        "deployment. Other strategies (race, ensemble...) get one deployment per model, the "
        "one the balancer picks, so they still compare models, not copies of one.")

    @field_validator("tier_timeouts_s")
    @classmethod
    def _positive(cls, v: dict[int, float]) -> dict[int, float]:
        for tier, seconds in v.items():
            if tier < 0 or seconds <= 0:
                raise ValueError(f"tiers are 0 or more and deadlines over 0 s, not "
                                 f"{tier} = {seconds}")
        return v

    @model_validator(mode="after")
    def _open_within_cap(self) -> "HealthSettings":
        if self.max_open_s < self.open_s:
            raise ValueError(f"max_open_s ({self.max_open_s:g}) must be at least open_s "
                             f"({self.open_s:g})")
        return self
