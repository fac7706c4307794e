"""LoRA (Hu et al., 2022) with the tutorial's parametrization.

``W x + (x A B) * alpha / r`` with A: in x r drawn N(0, 0.01^2), B: r x out zeros. The factors
and the task head train and are communicated; the wrapped Linear stays frozen.

``aggregation`` decides how the server combines the clients' adapters:

- ``naive`` (the tutorial): A and B are averaged separately by the strategy, although the mean
  of products is not the product of means.
- ``ffa`` (FFA-LoRA, Sun et al. 2024): A stays frozen at its seeded initialisation, which every
  client shares; only B (and the head) train and are sent, so the LoRA bytes halve (for a
  square layer) and averaging B is exact, since ``A0 mean(B) = mean(A0 B)``.
- ``exact``: the server aggregates the true update ``sum_k p_k A_k B_k`` and merges it into the
  base weights (see :mod:`fedbench.fl.lora_aggregation` for what is sent).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional

import torch
import torch.nn.functional as F
from torch import nn

from fedbench.config import ConfigError
from fedbench.methods.base import Method, is_head, linear_names, name_matches, wrap_modules

AGGREGATIONS = ("naive", "ffa", "exact")


class LoRALinear(nn.Module):
    def __init__(self, base: nn.Linear, rank: int, alpha: float, init_std: float) -> None:
        super().__init__()
        self.base = base
        self.scale = alpha / rank
        self.lora_A = nn.Parameter(torch.randn(base.in_features, rank) * init_std)
        self.lora_B = nn.Parameter(torch.zeros(rank, base.out_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Same op order as the tutorial: F.linear(x, W) + x @ A @ B * (alpha / r).
        return F.linear(x, self.base.weight, self.base.bias) + x @ self.lora_A @ self.lora_B * self.scale


@dataclass
class LoRA(Method):
    rank: int = 4
    alpha: float = 1.0
    init_std: float = 0.01
    # Module names to adapt (exact, dotted suffix or regex); null = the model's default targets
    # (query/value on minilm and tiny_bert), else every nn.Linear but the head (tutorial MLP).
    target_modules: Optional[List[str]] = None  # noqa: UP006, UP045 (OmegaConf)
    # How the server combines adapters: naive | ffa | exact (see the module docstring).
    aggregation: str = "naive"

    def __post_init__(self) -> None:
        if self.aggregation not in AGGREGATIONS:
            raise ConfigError("method.aggregation", f"must be one of: {', '.join(AGGREGATIONS)}",
                              self.aggregation)
        if self.rank < 1:
            raise ConfigError("method.rank", "must be an integer >= 1", self.rank)
        if not self.init_std >= 0:
            raise ConfigError("method.init_std", "must be a float >= 0", self.init_std)

    def _targets(self, model: nn.Module) -> list[str]:
        linear = linear_names(model)
        # null = the model's own default (``lora_default_targets``, e.g. query/value on BERT), or
        # every nn.Linear but the head when it declares none (the tutorial MLP).
        targets = self.target_modules if self.target_modules is not None else \
            getattr(model, "lora_default_targets", None)
        chosen = linear if targets is None else [n for n in linear if name_matches(n, list(targets))]
        if not chosen:
            raise ConfigError("method.target_modules",
                              f"matches no nn.Linear of the model; available: {', '.join(linear) or 'none'}",
                              self.target_modules)
        return chosen

    def inject(self, model: nn.Module) -> None:
        wrap_modules(model, self._targets(model), lambda base: LoRALinear(base, self.rank, self.alpha, self.init_std))
        # The engine asks the model's method for a server protocol (see server_protocol).
        model.fedbench_method = self

    def trainable(self, model: nn.Module) -> list[str]:
        factors = ("lora_B",) if self.aggregation == "ffa" else ("lora_A", "lora_B")
        return [n for n, _ in model.named_parameters()
                if n.rpartition(".")[2] in factors or is_head(model, n)]

    def server_protocol(self, model: nn.Module, state):
        """The engine's hook: how the server sends and aggregates this method's state, or None
        for the engine's default (encode the global payload, let the strategy aggregate)."""
        if self.aggregation == "exact":
            from fedbench.fl.lora_aggregation import ExactLoRA

            return ExactLoRA(model, state)
        return None
