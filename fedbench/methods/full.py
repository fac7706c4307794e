"""Full fine-tuning: every parameter of the model trains and is communicated."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from fedbench.contracts import Method
from fedbench.registry import register


@register("method", "full")
@dataclass
class Full(Method):
    def trainable(self, model: nn.Module) -> list[str]:
        return [n for n, _ in model.named_parameters()]
