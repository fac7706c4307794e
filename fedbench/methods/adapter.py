"""Bottleneck adapters (Houlsby et al., 2019): after the attention output projection and after the
feed-forward output projection of every transformer layer, ``h + up(act(down(h)))`` with a
``bottleneck``-wide hidden layer. ``up`` starts at zero, so at initialisation the model computes
exactly what the frozen backbone does. The adapters and the task head train and are communicated
(and the LayerNorms too with ``train_layernorm``, as in Houlsby's setup)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional  # noqa: UP035 (OmegaConf)

import torch
from torch import nn

from fedbench.config import ConfigError
from fedbench.methods._support import require
from fedbench.methods.base import Method, is_head, linear_names, name_matches, wrap_modules

ACTIVATIONS = {"gelu": nn.GELU, "relu": nn.ReLU, "tanh": nn.Tanh}


class AdapterLinear(nn.Module):
    """A frozen Linear followed by a residual bottleneck adapter on its output."""

    def __init__(self, base: nn.Linear, bottleneck: int, activation: str) -> None:
        super().__init__()
        self.base = base
        dim = base.out_features
        self.adapter_down = nn.Linear(dim, bottleneck)
        self.adapter_act = ACTIVATIONS[activation]()
        self.adapter_up = nn.Linear(bottleneck, dim)
        nn.init.zeros_(self.adapter_up.weight)
        nn.init.zeros_(self.adapter_up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.base(x)
        return h + self.adapter_up(self.adapter_act(self.adapter_down(h)))


@dataclass
class Adapter(Method):
    bottleneck: int = 16
    activation: str = "gelu"
    # Linear modules whose output gets an adapter (exact, dotted suffix or regex); null = the
    # model's default: BERT's attention.output.dense and output.dense of every layer.
    target_modules: Optional[List[str]] = None  # noqa: UP006, UP045 (OmegaConf)
    train_layernorm: bool = False

    def __post_init__(self) -> None:
        if self.bottleneck < 1:
            raise ConfigError("method.bottleneck", "must be an integer >= 1", self.bottleneck)
        if self.activation not in ACTIVATIONS:
            raise ConfigError("method.activation", f"must be one of: {', '.join(ACTIVATIONS)}", self.activation)

    def check_compatible(self, comps: dict, fl) -> None:
        require("adapter", "adapter", comps)

    def _targets(self, model: nn.Module) -> list[str]:
        patterns = self.target_modules if self.target_modules is not None else \
            getattr(model, "adapter_default_targets", None)
        chosen = [n for n in linear_names(model) if patterns and name_matches(n, list(patterns))]
        if not chosen:
            raise ConfigError("method.target_modules", "matches no nn.Linear of the model", self.target_modules)
        return chosen

    def inject(self, model: nn.Module) -> None:
        wrap_modules(model, self._targets(model), lambda base: AdapterLinear(base, self.bottleneck, self.activation))

    def trainable(self, model: nn.Module) -> list[str]:
        norms = set()
        if self.train_layernorm:
            norms = {n for n, m in model.named_modules() if isinstance(m, nn.LayerNorm)}
        return [n for n, _ in model.named_parameters()
                if ".adapter_down." in n or ".adapter_up." in n or is_head(model, n)
                or n.rpartition(".")[0] in norms]
