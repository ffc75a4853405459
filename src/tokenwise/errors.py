"""Errors that tokenwise raises for bad input.

Every user-facing mistake (a bad argument, a missing model, an unreadable file) raises a
subclass of :class:`TokenwiseError`. The message names the bad value and what is allowed,
so the CLI can print it as it is and exit non-zero without a traceback.
"""

from __future__ import annotations


class TokenwiseError(ValueError):
    """A user error: bad input, with a message naming the value and what is allowed."""


class ModelNotFoundError(TokenwiseError, FileNotFoundError):
    """A model name or path that is neither a built-in model nor a local directory."""


class UnsafeCheckpointError(TokenwiseError):
    """A checkpoint stored only as pickle (``.bin``/``.pt``), which tokenwise will not load."""
