"""Head-only (linear probing): the backbone stays frozen; only the task head trains and is sent."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from fedbench.contracts import Method
from fedbench.methods.base import is_head
from fedbench.registry import register


@register("method", "head_only")
@dataclass
class HeadOnly(Method):
    def trainable(self, model: nn.Module) -> list[str]:
        return [n for n, _ in model.named_parameters() if is_head(model, n)]
