"""Shared fixtures: the anyio backend, an isolated plugin environment, no leftover tracing."""

from __future__ import annotations

import pytest

from .support import reset_tracing


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(autouse=True)
def _no_plugin_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests must not change because a plugin package is installed: no installed (entry point)
    plugin loads unless a test names it in TURNOUT_PLUGINS. Subprocesses inherit this."""
    monkeypatch.setenv("TURNOUT_PLUGINS", "")
    monkeypatch.delenv("TURNOUT_CONFIG", raising=False)


@pytest.fixture(autouse=True)
def _no_leftover_tracer_provider():
    """A test that installs the global tracer provider takes it away again when it ends."""
    yield
    reset_tracing()
