"""The project's own exception types: mistakes in a command or its environment that the command line
prints as one line (``error: ...``, exit status 2) instead of a traceback."""

from __future__ import annotations

__all__ = ["MissingPathError", "UsageError", "WandbMissingError"]


class UsageError(ValueError):
    """A mistake in the command or the environment; the CLI prints the message alone and exits with 2."""


class MissingPathError(UsageError, FileNotFoundError):
    """A UsageError about a file or folder that is not there."""


class WandbMissingError(UsageError):
    """``logger=wandb`` without the ``wandb`` package."""
