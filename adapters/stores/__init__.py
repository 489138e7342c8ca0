"""State stores behind the kernel's Store interface, registered by backend name.

``memory`` is built in (one process); Redis and PostgreSQL plug in the same way.
"""

from __future__ import annotations

from turnout.kernel.hookspecs import hookimpl

from .memory import MemoryStore
from .redis import RedisStore


@hookimpl
def register_stores(register) -> None:
    """Register the built-in backends by the name ``[store] backend`` uses."""
    register("memory", MemoryStore)
    register("redis", RedisStore)
