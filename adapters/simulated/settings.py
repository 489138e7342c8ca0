"""The settings of the fleet (``[simulation]`` in the config): where it listens and how each tier
behaves. Unknown keys are errors, so typos are caught at startup."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class SimulatedModel(BaseModel):
    """One tier of the simulated fleet."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    latency_ms: float = Field(default=300, ge=0, description="Median time to the whole answer.")
    jitter: float = Field(default=0.3, ge=0, description="Log-normal sigma of the latency.")
    error_rate: float = Field(default=0.0, ge=0, le=1, description="Share of calls answered 5xx.")
    rate_limit_rate: float = Field(default=0.0, ge=0, le=1, description="Share answered 429.")
    quality: float = Field(default=0.7, ge=0, le=1, description="Share of answers that are right.")
    tokens_per_s: float = Field(default=80, gt=0, description="Streaming speed.")


class Simulation(BaseModel):
    """The simulated fleet served over local HTTP by providers of kind 'simulated'."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    host: str = Field(default="127.0.0.1", description="Address the fleet binds.")
    port: int = Field(default=0, ge=0, le=65535, description="0 picks a free port.")
    models: dict[str, SimulatedModel] = Field(default_factory=dict, description="Upstream model "
                                              "ids the fleet serves, with their behaviour.")
    seed: int | None = Field(default=None, description="Seed of the fleet's dice, for runs that "
                             "repeat exactly; unset: a new sequence each start.")
