"""The one exception type the command turns into a one-line message (no traceback)."""
from __future__ import annotations


class CLIZooError(Exception):
    """A problem with the user's input: printed as ``clip-zoo: error: <message>``, exit status 2."""
