"""The error type of unusable checkpoint files (a :class:`~segnext_geo.errors.UserError`)."""

from __future__ import annotations

from ..errors import UserError

__all__ = ["CheckpointError"]


class CheckpointError(UserError, ValueError):
    """A checkpoint file that cannot be used; the message is one line naming the file."""
