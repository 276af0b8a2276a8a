"""The error type of bad input data, and the helper that keeps its message on one line.

Every reader in :mod:`varifocal.data` reports a bad file with :class:`DataError`, whose
message is one line naming the file and the problem (DEVELOPERS.md, "Conventions").
"""

from __future__ import annotations

__all__ = ["DataError"]


class DataError(ValueError):
    """Bad input data: the message is one line that names the file and the problem."""


def _one_line(text: object) -> str:
    return " ".join(str(text).split())
