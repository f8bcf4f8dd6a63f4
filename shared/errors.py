"""The error every fedq library function raises for bad input; the CLI prints it on one line."""

from __future__ import annotations


class FedqError(Exception):
    """A problem the user can fix (bad data, bad settings, unreachable service); no traceback."""
