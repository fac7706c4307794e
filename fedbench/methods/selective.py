"""Selective fine-tuning: the last ``last_k`` blocks of the backbone (transformer layers, or the
tutorial MLP's layers) and the task head train and are communicated; everything below is frozen."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from fedbench.contracts import Method
from fedbench.errors import ConfigError
from fedbench.methods.base import is_head
from fedbench.registry import register


@register("method", "selective")
@dataclass
class Selective(Method):
    last_k: int = 1

    def __post_init__(self) -> None:
        if self.last_k < 1:
            raise ConfigError("method.last_k", "must be an integer >= 1", self.last_k)

    def check_compatible(self, comps: dict, fl) -> None:
        n = comps["model"].num_blocks()
        if self.last_k > n:
            raise ConfigError("method.last_k", f"must be <= the model's {n} blocks", self.last_k)

    def trainable(self, model: nn.Module) -> list[str]:
        blocks = model.block_names()
        if self.last_k > len(blocks):
            raise ConfigError("method.last_k", f"must be <= the model's {len(blocks)} blocks", self.last_k)
        top = tuple(b + "." for b in blocks[len(blocks) - self.last_k :])
        return [n for n, _ in model.named_parameters() if is_head(model, n) or n.startswith(top)]
