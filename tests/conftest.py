"""Shared fixtures: the anyio backend, and an isolated plugin environment."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(autouse=True)
def _no_plugin_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests must not change because a plugin is installed or selected in the environment."""
    monkeypatch.delenv("TURNOUT_PLUGINS", raising=False)
    monkeypatch.delenv("TURNOUT_CONFIG", raising=False)
