"""The errors a user can cause, and the exit code of each kind.

Exit codes of ``fedbench`` and ``fedbench-report`` (docs/reliability.md, "Exit codes"):

- 0: done;
- 1: a bug inside fedbench (an invariant broke): the traceback is shown, please report it;
- 2: the input cannot run: the command line, a config value, a path or file you named, a run
  folder's content (:class:`ConfigError`, :class:`DamagedRunFolder`);
- 3: the machine cannot run it: an optional package is missing (:class:`MissingPackage`), the
  output folder is read-only, not permitted or full (:func:`environment_problem`);
- 130 / 143: interrupted by SIGINT / SIGTERM (completed rounds are kept; resume continues).

Every code but 1 comes with exactly one line on stderr naming the problem and the fix.
"""

from __future__ import annotations

import dataclasses
import errno
from typing import Any

EXIT_BAD_INPUT = 2
EXIT_ENVIRONMENT = 3


class ConfigError(ValueError):
    """A config value that cannot run. ``str()`` is one line naming the key and what is allowed."""

    exit_code = EXIT_BAD_INPUT

    def __init__(self, key: str, allowed: str, value: Any = dataclasses.MISSING) -> None:
        self.key, self.allowed, self.value = key, allowed, value
        shown = "" if value is dataclasses.MISSING else f"={value!r}"
        super().__init__(f"{key}{shown}: {allowed}")


class DamagedRunFolder(ConfigError):
    """A run folder's files cannot be continued from (damaged rows, records); nothing is changed."""


class MissingPackage(ConfigError):
    """An optional package that the chosen component needs is not installed (exit 3)."""

    exit_code = EXIT_ENVIRONMENT


# errno values that say the machine, not the input, stopped the run
_FULL = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
_DENIED = {errno.EACCES, errno.EPERM, errno.EROFS}


def environment_problem(exc: BaseException, where: object = None) -> str | None:
    """One line for an OSError the machine caused (disk full, file too large, read-only or not
    permitted), naming the file (else ``where``) and the fix; None for anything else (a bug:
    left to show its traceback)."""
    if not isinstance(exc, OSError) or exc.errno not in _FULL | _DENIED:
        return None
    where = exc.filename if exc.filename is not None else (where or "a file")
    if exc.errno in _FULL:
        fix = "free space (or raise the file-size limit) and run again: completed rounds resume"
    else:
        fix = "make it writable or choose another folder (hydra.run.dir=... / hydra.sweep.dir=...)"
    return f"cannot write {where}: {exc.strerror or errno.errorcode.get(exc.errno, exc.errno)}; {fix}"
