"""The ``[[experiments]]`` tables: an experiment's name, the key its requests are split by, the
requests it applies to, and its arms."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    RootModel,
    ValidationInfo,
    field_validator,
    model_validator,
)

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"
"""Experiment and arm names: letters, digits, ``_``, ``.`` and ``-`` (they travel in the
``x-turnout-experiment: name=arm`` header)."""

Key = Literal["user", "key", "conversation"]

AUTO = "auto"


def _names(info: ValidationInfo) -> tuple[frozenset[str] | None, frozenset[str] | None]:
    """The configured model and route names from the validation context (None without one)."""
    context = info.context if isinstance(info.context, dict) else {}
    return context.get("models"), context.get("routes")


class Arm(BaseModel):
    """One arm of an experiment: where its share of the traffic goes."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=NAME_PATTERN, description="The arm's name, unique in the "
                      "experiment (letters, digits, '_', '.', '-'); the first arm is the control, "
                      "which also takes the requests that carry no value for the key.")
    route: str | None = Field(default=None, description="The route this arm's requests take (a "
                              "key of [routes]); give route or model, not both.")
    model: str | None = Field(default=None, description="The model this arm's requests go to "
                              "(a key of [models]), as if asked for by name; give route or "
                              "model, not both.")
    weight: float = Field(default=1.0, gt=0, description="The arm's share of the traffic, "
                          "relative to the other arms' weights (1 and 1: half each; 9 and 1: "
                          "90% and 10%).")

    @model_validator(mode="after")
    def _one_target(self) -> "Arm":
        if (self.route is None) == (self.model is None):
            raise ValueError("an arm names where its requests go: give either route = "
                             "\"NAME\" (a key of [routes]) or model = \"NAME\" (a key of "
                             "[models]), not both and not neither")
        return self

    @field_validator("route")
    @classmethod
    def _known_route(cls, value: str | None, info: ValidationInfo) -> str | None:
        _, routes = _names(info)
        if value is not None and routes is not None and value not in routes:
            hint = " (for a model, write model = ...)" if value in (_names(info)[0] or ()) else ""
            raise ValueError(f"no route {value!r}{hint}; routes: "
                             f"{', '.join(sorted(routes)) or 'none configured'}")
        return value

    @field_validator("model")
    @classmethod
    def _known_model(cls, value: str | None, info: ValidationInfo) -> str | None:
        models, _ = _names(info)
        if value is not None and models is not None and value not in models:
            hint = " (for a route, write route = ...)" if value in (_names(info)[1] or ()) else ""
            raise ValueError(f"no model {value!r}{hint}; models: "
                             f"{', '.join(sorted(models)) or 'none configured'}")
        return value

    @property
    def target(self) -> str:
        """The route or model name this arm sends requests to."""
        return self.route if self.route is not None else self.model  # type: ignore[return-value]


class Experiment(BaseModel):
    """One ``[[experiments]]`` entry: requests split between arms by a stable hash of a key."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=NAME_PATTERN, description="The experiment's name, unique "
                      "(letters, digits, '_', '.', '-'); the record and the report group by it.")
    key: Key = Field(default="user", description="What a request is assigned by, so the same "
                     "one always gets the same arm: 'user' (the request's user field, else the "
                     "x-turnout-user header, else the gateway key's user), 'key' (the gateway "
                     "key's name) or 'conversation' (the x-turnout-conversation header, else the "
                     "request's metadata.conversation_id). A request without it goes to the "
                     "first arm, marked unassigned, and the report leaves it out.")
    match: list[str] = Field(default=[AUTO], min_length=1, description="Which requests take "
                             "part, by what they ask for (the request's model): 'auto', route "
                             "names, model names; a string or a list. Default: 'auto'.")
    arms: list[Arm] = Field(min_length=2, description="The arms, each { name, route or model, "
                            "weight }, the control first.")
    enabled: bool = Field(default=True, description="false: the experiment routes nothing (its "
                          "records stay, for the report).")
    salt: str | None = Field(default=None, min_length=1, description="Mixed into the hash "
                             "with the key's value; default: the experiment's name, so a new "
                             "experiment (or a new salt) reshuffles who gets which arm.")

    @field_validator("name")
    @classmethod
    def _unique(cls, value: str, info: ValidationInfo) -> str:
        context = info.context
        if isinstance(context, dict):
            seen = context.setdefault("experiments.names", set())
            if value in seen:
                raise ValueError(f"an experiment before this one is named {value!r} too; "
                                 "experiment names must be unique")
            seen.add(value)
        return value

    @field_validator("match", mode="before")
    @classmethod
    def _listed(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @field_validator("match")
    @classmethod
    def _known(cls, value: list[str], info: ValidationInfo) -> list[str]:
        models, routes = _names(info)
        if models is None or routes is None:
            return value
        unknown = [v for v in value if v != AUTO and v not in models and v not in routes]
        if unknown:
            raise ValueError(f"{unknown[0]!r} is no route or model: match names what requests "
                             f"ask for, 'auto', a route ({', '.join(sorted(routes)) or 'none'}) "
                             f"or a model ({', '.join(sorted(models)) or 'none'})")
        return value

    @field_validator("arms")
    @classmethod
    def _arm_names_unique(cls, arms: list[Arm]) -> list[Arm]:
        seen: set[str] = set()
        for arm in arms:
            if arm.name in seen:
                raise ValueError(f"two arms are named {arm.name!r}; arm names must be unique in "
                                 "the experiment")
            seen.add(arm.name)
        return arms

    @property
    def seed(self) -> str:
        """What the hash is salted with: ``salt``, else the name."""
        return self.salt if self.salt is not None else self.name


class ExperimentList(RootModel[list[Experiment]]):
    """Experiments: ``[[experiments]]`` entries, each splitting the requests it matches between
    arms (routes or models) by a stable hash of the user, the gateway key or the conversation."""

    root: list[Experiment] = Field(default_factory=list)

    def __iter__(self):
        return iter(self.root)

    def __len__(self) -> int:
        return len(self.root)
