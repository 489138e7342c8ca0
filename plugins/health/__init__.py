"""Health-aware balancing: circuit breakers per deployment (state in the shared store), several
deployments of one model balanced by health, latency and calls in flight, and per-tier timeouts.
See :mod:`.plugin` for what it does to a request, :mod:`.circuit` for the breaker and
:mod:`.balance` for the balancer."""

from .plugin import Health

__all__ = ["Health"]
