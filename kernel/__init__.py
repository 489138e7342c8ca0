"""The microkernel: types, hookspecs, plugin manager, pipeline, config and errors.

Plugin authors import from here: ``hookimpl`` to mark implementations, the types their hooks
receive and return, and the error tree.
"""

from .hookspecs import hookimpl
from .kernel import Kernel

__all__ = ["Kernel", "hookimpl"]
