"""The simulated model fleet: a local OpenAI-format server standing in for a fleet of models.

Each tier of ``[simulation.models]`` has its own latency, error and rate-limit rates, answer quality
and streaming pace; a seeded RNG makes runs reproducible. Providers of kind ``simulated`` talk to it
over real HTTP, served in its own thread, so routing, fallbacks and costs can be seen with no
provider keys. The answers are canned text built from the prompt (no language model is involved)
and say so.

Modules, one job each:

- :mod:`.settings` -- the pydantic settings: :class:`Simulation` and its :class:`SimulatedModel` tiers.
- :mod:`.dice` -- the random behaviour of a tier: one seeded draw per request (status, latency, quality).
- :mod:`.answers` -- the content of an answer: text, JSON or a tool call built from the prompt.
- :mod:`.schemas` -- an object of a JSON Schema (the request's, or one written in the prompt).
- :mod:`.templates` -- a prompt's "reply with JSON" template filled in (judges, critics, classifiers).
- :mod:`.server` -- the OpenAI-format HTTP API as a Starlette app (:func:`fleet_app`), with SSE streaming.
- :mod:`.fleet` -- :class:`Fleet`, which serves the app with uvicorn on a background thread.
"""

from __future__ import annotations

from .answers import answer
from .fleet import Fleet
from .server import fleet_app
from .settings import SimulatedModel, Simulation

__all__ = ["Fleet", "SimulatedModel", "Simulation", "answer", "fleet_app"]
