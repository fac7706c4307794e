"""The LoRA layer: a frozen Linear plus trainable low-rank factors (the tutorial's parametrization)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class LoRALinear(nn.Module):
    """``W x + (x A B) * alpha / r`` with A: in x r drawn N(0, init_std^2), B: r x out zeros."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float, init_std: float) -> None:
        super().__init__()
        self.base = base
        self.scale = alpha / rank
        self.lora_A = nn.Parameter(torch.randn(base.in_features, rank) * init_std)
        self.lora_B = nn.Parameter(torch.zeros(rank, base.out_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Same op order as the tutorial: F.linear(x, W) + x @ A @ B * (alpha / r).
        return F.linear(x, self.base.weight, self.base.bias) + x @ self.lora_A @ self.lora_B * self.scale
