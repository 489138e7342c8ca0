"""A router: prompts that start with a command prefix go straight to one model.

Its settings are the ``[example_router]`` table of the gateway config, validated by
:class:`RouterSettings` at start-up.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from turnout.kernel import hookimpl
from turnout.kernel.types import Selection


class RouterSettings(BaseModel):
    """The command router: which prefix goes to which model."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    prefix: str = Field(default="/echo", description="Prompts starting with this are routed.")
    model: str = Field(default="example-echo", description="The model they go to.")


class CommandRouter:
    """Sends ``/echo ...`` prompts (prefix and model set in settings) straight to a model."""

    name = "example_router"
    Settings = RouterSettings

    def __init__(self) -> None:
        self.kernel = None
        self.settings = RouterSettings()

    @hookimpl
    def startup(self, kernel) -> None:
        self.kernel = kernel
        self.settings = kernel.plugin_settings(self)

    @hookimpl(tryfirst=True)
    def select_route(self, ctx):
        last = next((m.text() for m in reversed(ctx.request.messages) if m.role == "user"), "")
        model = self.kernel.models.get(self.settings.model)
        if not last.startswith(self.settings.prefix) or model is None:
            return None  # the next router (the rules) decides
        return Selection("example:command", [model],
                         reason=f"prefix {self.settings.prefix!r} (example_router)")
