"""A router plugin: prompts that start with a command prefix go to one model."""

from __future__ import annotations

from turnout.kernel import hookimpl


class CommandRouter:
    """Sends ``/echo ...`` prompts (prefix and model set in settings) straight to a model."""

    def __init__(self) -> None:
        self.kernel = None
        self.prefix = "/echo"
        self.model = "example-echo"

    @hookimpl
    def startup(self, kernel) -> None:
        self.kernel = kernel
        settings = kernel.config.plugin_settings("example_router")
        self.prefix = settings.get("prefix", self.prefix)
        self.model = settings.get("model", self.model)

    @hookimpl(tryfirst=True)
    def route(self, ctx):
        if ctx.request.model != "auto":
            return None
        last = next((m.text() for m in reversed(ctx.request.messages) if m.role == "user"), "")
        if not last.startswith(self.prefix):
            return None
        model = self.kernel.models.get(self.model)
        if model is None:
            return None
        ctx.route = "example:command"
        ctx.candidates = [model]
        ctx.decision["rule"] = f"prefix {self.prefix!r} (example_router)"
        return None  # the filters and the fallback strategy do the rest
