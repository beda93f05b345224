"""User-facing data problems.

A ``DataError`` is something the user can fix in their files or arguments (a missing tile, a corrupt
TIFF, a prepared folder built with other parameters). Its message always names the file or folder and
the problem, so the CLI can print it without a traceback.
"""

from __future__ import annotations


class DataError(Exception):
    """A problem with the user's data on disk; the message names the path and what is wrong."""


class DataWarning(UserWarning):
    """Something suspicious but recoverable in the data (e.g. unknown label colours set to ignore)."""
