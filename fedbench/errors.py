"""The one error type for input that cannot run; every layer raises it, the CLI prints it."""

from __future__ import annotations

import dataclasses
from typing import Any


class ConfigError(ValueError):
    """A config value that cannot run. ``str()`` is one line naming the key and what is allowed."""

    def __init__(self, key: str, allowed: str, value: Any = dataclasses.MISSING) -> None:
        self.key, self.allowed, self.value = key, allowed, value
        shown = "" if value is dataclasses.MISSING else f"={value!r}"
        super().__init__(f"{key}{shown}: {allowed}")
