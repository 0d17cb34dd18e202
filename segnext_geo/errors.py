"""The user-facing error type: one line that names the file or option and the problem."""

from __future__ import annotations

__all__ = ["UserError"]


class UserError(Exception):
    """Bad input from the user (a file, an option, a config).

    The CLI prints ``error: <message>`` on one line, without a traceback, and
    exits with status 2. The message must name the offending file or option.
    """

    exit_code = 2

    def __str__(self) -> str:
        text = super().__str__()
        return " ".join(text.split())  # always one line
