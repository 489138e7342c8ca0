"""The settings of the built-in HTTP provider kinds: one ``[providers.NAME]`` table each."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

from turnout.kernel.provider import ProviderSettings


class Timeouts(BaseModel):
    """Timeouts of a provider's HTTP client, in seconds."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    connect: float = Field(default=5, gt=0, description="To open a connection.")
    read: float = Field(default=120, gt=0, description="Between two bytes of the answer (the "
                        "longest pause a stream may make).")
    write: float = Field(default=30, gt=0, description="To send the request.")
    pool: float = Field(default=10, gt=0, description="To get a connection from the pool.")


class HttpProviderSettings(ProviderSettings):
    """A provider of kind openai, openai-compatible, anthropic, gemini or simulated."""

    base_url: str | None = Field(default=None, description="API root; each kind has a default "
                                 "except openai-compatible, which needs one.")
    api_key: SecretStr | None = Field(default=None, description="Credential, usually '${ENV}'. "
                                      "Never logged.")
    timeout: Timeouts = Field(default_factory=Timeouts, description="HTTP client timeouts.")
    max_connections: int = Field(default=100, ge=1, description="Pool size of its HTTP client.")
    headers: dict[str, str] = Field(default_factory=dict, description="Extra headers to send.")
    api_version: str | None = Field(default=None, description="Anthropic: anthropic-version header.")

    @model_validator(mode="after")
    def _needs_base_url(self) -> "HttpProviderSettings":
        if self.kind == "openai-compatible" and not self.base_url:
            raise ValueError("kind 'openai-compatible' needs base_url, e.g. http://127.0.0.1:8000/v1")
        return self
