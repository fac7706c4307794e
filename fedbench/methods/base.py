"""Helpers methods share: selecting modules by name, wrapping them, architecture checks.

The method contract itself is :class:`fedbench.contracts.Method`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import ClassVar

from torch import nn

from fedbench import rng
from fedbench.contracts import Method
from fedbench.errors import ConfigError


@dataclass
class VirtualTokenMethod(Method):
    """The settings prompt and prefix tuning share: how many virtual tokens, and how they start
    (``init``: one of the subclass's ``INITS``; ``normal`` draws N(0, init_std^2))."""

    num_virtual_tokens: int = 10
    init: str = "normal"
    init_std: float = 0.02
    INITS: ClassVar[tuple[str, ...]] = ("normal",)

    def __post_init__(self) -> None:
        if self.num_virtual_tokens < 1:
            raise ConfigError("method.num_virtual_tokens", "must be an integer >= 1", self.num_virtual_tokens)
        if self.init not in self.INITS:
            raise ConfigError("method.init", f"must be one of: {', '.join(self.INITS)}", self.init)
        if not self.init_std > 0:
            raise ConfigError("method.init_std", "must be a float > 0", self.init_std)


def require_architecture(method: str, model_cfg, supported, what: str) -> None:
    """Refuse (one line) a model whose architecture the method has no entry for."""
    if model_cfg.architecture in supported:
        return
    raise ConfigError(
        f"method={method}",
        f"{what}, and model {type(model_cfg).__name__} is a "
        f"{model_cfg.architecture!r} model; architectures this method knows: "
        f"{', '.join(sorted(supported))}",
    )


def linear_names(model: nn.Module) -> list[str]:
    """Names of the model's nn.Linear modules, the task head's excepted."""
    return [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and not is_head(model, n + ".")]


def wrap_modules(model: nn.Module, names: list[str], wrap) -> None:
    """Replace each named module by ``wrap(module)``, the module's own weights frozen. Under
    ``rng=paired`` each new module initialises from its own stream, keyed by ``name``."""
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        base = getattr(parent, child)
        base.requires_grad_(False)
        rng.module_init(name)
        setattr(parent, child, wrap(base))


def is_head(model: nn.Module, name: str) -> bool:
    return name.startswith(model.head_name + ".")


def name_matches(name: str, patterns: list[str]) -> bool:
    """PEFT-style module matching: exact name, dotted suffix, or a full regex match."""
    return any(name == pat or name.endswith("." + pat) or re.fullmatch(pat, name) for pat in patterns)


def select_targets(
    model: nn.Module, targets: list[str] | None, key: str = "method.target_modules"
) -> list[str]:
    """The model's nn.Linear names (head excepted) matching ``targets`` (None: all of them)."""
    linear = linear_names(model)
    chosen = linear if targets is None else [n for n in linear if name_matches(n, list(targets))]
    if not chosen:
        raise ConfigError(
            key, f"matches no nn.Linear of the model; available: {', '.join(linear) or 'none'}", targets
        )
    return chosen
