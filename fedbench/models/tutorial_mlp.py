"""The stand-in "foundation model" of Tutorial 166: a stack of frozen Linear+ReLU layers."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from fedbench.contracts import ModelConfig
from fedbench.errors import ConfigError
from fedbench.registry import register


@register("model", "tutorial_mlp")
@dataclass
class TutorialMLP(ModelConfig):
    """Config and builder for :class:`TutorialMLPModule`.

    ``use_bias=False`` is the tutorial's behaviour: each base layer draws a bias at init (so the
    random stream matches) but the forward pass never adds it, so the bias is dropped.
    """

    input_dim: int = 128
    hidden_dim: int = 256
    num_layers: int = 4
    num_classes: int = 10
    use_bias: bool = False

    architecture = "mlp"

    def __post_init__(self) -> None:
        for key in ("input_dim", "hidden_dim", "num_layers"):
            if getattr(self, key) < 1:
                raise ConfigError(f"model.{key}", "must be an integer >= 1", getattr(self, key))
        if self.num_classes < 2:
            raise ConfigError("model.num_classes", "must be an integer >= 2", self.num_classes)

    def check_compatible(self, comps: dict, fl) -> None:
        data = comps["data"]
        dim, classes = data.input_dim, data.num_classes
        if dim is None:
            raise ConfigError(
                "data",
                "the tutorial MLP takes feature vectors; use data=tutorial or "
                "data=tutorial_lazy (text data needs model=minilm or model=tiny_bert)",
                type(data).__name__,
            )
        if dim != self.input_dim:
            raise ConfigError("model.input_dim", f"must equal data.dim ({dim})", self.input_dim)
        if classes > self.num_classes:
            raise ConfigError(
                "model.num_classes",
                f"must be >= data.num_classes ({classes}): labels must fit the head",
                self.num_classes,
            )

    def has_biases(self) -> bool:
        return self.use_bias

    def num_blocks(self) -> int:
        return self.num_layers

    def linear_width(self) -> int:
        return min(self.input_dim, self.hidden_dim)

    def build(self) -> TutorialMLPModule:
        return TutorialMLPModule(
            self.input_dim, self.hidden_dim, self.num_layers, self.num_classes, self.use_bias
        )


class TutorialMLPModule(nn.Module):
    head_name = "head"
    architecture = "mlp"

    def __init__(
        self, input_dim: int, hidden_dim: int, num_layers: int, num_classes: int, use_bias: bool
    ) -> None:
        super().__init__()
        dims = [input_dim] + [hidden_dim] * num_layers
        self.layers = nn.ModuleList()
        for i in range(num_layers):
            layer = nn.Linear(dims[i], dims[i + 1])
            if not use_bias:
                layer.bias = None
            self.layers.append(layer)
        self.feature_dim = hidden_dim
        self.num_classes = num_classes
        self.head: nn.Module | None = None
        self.requires_grad_(False)

    def attach_head(self) -> None:
        """Create the task head. Called after the method injected its adapters (seed RNG order)."""
        self.head = nn.Linear(self.feature_dim, self.num_classes)

    def block_names(self) -> list[str]:
        return [f"layers.{i}" for i in range(len(self.layers))]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = F.relu(layer(x))
        return self.head(x)
