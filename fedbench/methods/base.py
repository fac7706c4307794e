"""The method interface and helpers for selecting modules by name."""

from __future__ import annotations

import re

from torch import nn


class Method:
    """Base for methods; subclasses are dataclasses holding their hyperparameters."""

    def inject(self, model: nn.Module) -> None:
        """Add the method's modules (adapters) to the backbone. Default: nothing."""

    def trainable(self, model: nn.Module) -> list[str]:
        """Names of the parameters that train and are sent, in ``named_parameters`` order."""
        raise NotImplementedError


def is_head(model: nn.Module, name: str) -> bool:
    return name.startswith(model.head_name + ".")


def name_matches(name: str, patterns: list[str]) -> bool:
    """PEFT-style module matching: exact name, dotted suffix, or a full regex match."""
    for pat in patterns:
        if name == pat or name.endswith("." + pat) or re.fullmatch(pat, name):
            return True
    return False
