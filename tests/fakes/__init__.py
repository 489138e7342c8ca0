"""Local fake upstreams: real HTTP servers on 127.0.0.1 speaking each provider's wire format.

``serve(app)`` runs one in a background thread; a :class:`Script` decides how each request is
answered (normally, with an error status, slowly, with a cut or broken stream, with a refusal) and
records what the fake received, so tests can assert on the upstream request itself.
"""

from __future__ import annotations

from .anthropic_server import anthropic_app
from .gemini_server import gemini_app
from .openai_server import openai_app
from .script import (
                     CutStream,
                     Delay,
                     EchoRequest,
                     ErrorInStream,
                     Received,
                     Refuse,
                     Reply,
                     Script,
                     Status,
                     TooLong,
                     count_tokens,
)
from .server import free_port, serve

__all__ = ["CutStream", "Delay", "EchoRequest", "ErrorInStream", "Received", "Refuse", "Reply", "Script",
           "Status", "TooLong", "anthropic_app", "count_tokens", "free_port", "gemini_app",
           "openai_app", "serve"]
