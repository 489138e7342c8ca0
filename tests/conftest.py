"""Shared fixtures: the anyio backend, an isolated plugin environment, no leftover tracing or
logging configuration."""

from __future__ import annotations

import pytest
import structlog

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


@pytest.fixture(autouse=True)
def _no_leftover_logging_config():
    """A test that configures logging (a command run in this process: ``turnout estimate``,
    ``turnout bench models``, ``serve``) leaves the configuration as it found it, so a later
    test's ``capture_logs`` still sees every level."""
    saved = structlog.get_config()
    yield
    structlog.configure(**saved)
