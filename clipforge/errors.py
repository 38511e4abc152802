"""User-facing errors.

Anything a user can cause (a wrong path, an unknown name, a malformed file) raises
:class:`ClipforgeError` with a message that names the offending thing. The CLI prints
that message on one line and exits with code 2 instead of showing a traceback.
"""

from __future__ import annotations


class ClipforgeError(Exception):
    """An error caused by user input; its message is meant to be shown as is."""
