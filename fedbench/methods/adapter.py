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

from fedbench.contracts import Method
from fedbench.errors import ConfigError
from fedbench.methods.base import is_head, require_architecture, select_targets, wrap_modules
from fedbench.registry import check_choices, choice, register

ACTIVATIONS = {"gelu": nn.GELU, "relu": nn.ReLU, "tanh": nn.Tanh}
# Linear modules whose output gets an adapter when target_modules is null, per architecture:
# BERT's attention output projection and feed-forward output projection of every layer.
DEFAULT_TARGETS = {
    "bert": [r".*\.attention\.output\.dense", r".*\.layer\.\d+\.output\.dense"],
    # causal LMs: after each block's attention output and feed-forward output projections
    "llama": [r".*\.self_attn\.o_proj", r".*\.mlp\.down_proj"],
}


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


@register("method", "adapter")
@dataclass
class Adapter(Method):
    bottleneck: int = 16
    activation: str = choice("gelu", tuple(ACTIVATIONS))
    # Linear modules whose output gets an adapter (exact, dotted suffix or regex); null =
    # DEFAULT_TARGETS for the model's architecture.
    target_modules: Optional[List[str]] = None  # noqa: UP006, UP045 (OmegaConf)
    train_layernorm: bool = False

    def __post_init__(self) -> None:
        check_choices(self, "method")
        if self.bottleneck < 1:
            raise ConfigError("method.bottleneck", "must be an integer >= 1", self.bottleneck)

    def check_compatible(self, comps: dict, fl) -> None:
        require_architecture(
            "adapter",
            comps["model"],
            DEFAULT_TARGETS,
            "inserts bottleneck adapters after a transformer's attention and feed-forward outputs",
        )

    def _targets(self, model: nn.Module) -> list[str]:
        patterns = (
            self.target_modules if self.target_modules is not None else DEFAULT_TARGETS[model.architecture]
        )
        return select_targets(model, patterns)

    def inject(self, model: nn.Module) -> None:
        wrap_modules(
            model, self._targets(model), lambda base: AdapterLinear(base, self.bottleneck, self.activation)
        )

    def trainable(self, model: nn.Module) -> list[str]:
        norms = set()
        if self.train_layernorm:
            norms = {n for n, m in model.named_modules() if isinstance(m, nn.LayerNorm)}
        return [
            n
            for n, _ in model.named_parameters()
            if ".adapter_down." in n
            or ".adapter_up." in n
            or is_head(model, n)
            or n.rpartition(".")[0] in norms
        ]
