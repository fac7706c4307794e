"""Head-only (linear probing): the backbone stays frozen; only the task head trains and is sent."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from fedbench.methods.base import Method, is_head


@dataclass
class HeadOnly(Method):
    def trainable(self, model: nn.Module) -> list[str]:
        return [n for n, _ in model.named_parameters() if is_head(model, n)]
