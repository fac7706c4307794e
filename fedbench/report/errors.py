"""How the report talks to its user: one-line messages on stderr, and the error for bad input."""

from __future__ import annotations

import sys

PROG = "fedbench-report"


class ReportError(Exception):
    """Bad input: reported as one line on stderr and a non-zero exit, never as a traceback."""

    def __init__(self, message: str, code: int = 2) -> None:
        super().__init__(message)
        self.code = code


def warn(message: str) -> None:
    print(f"{PROG}: warning: {message}", file=sys.stderr)


def info(message: str) -> None:
    print(f"{PROG}: {message}", file=sys.stderr)
