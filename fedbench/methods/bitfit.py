"""BitFit (Ben Zaken et al., 2022): only the bias terms of the backbone (every ``*.bias``,
LayerNorm biases included) and the task head train and are communicated."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from fedbench.contracts import Method
from fedbench.errors import ConfigError
from fedbench.methods.base import is_head
from fedbench.registry import register


@register("method", "bitfit")
@dataclass
class BitFit(Method):
    def check_compatible(self, comps: dict, fl) -> None:
        model = comps["model"]
        if not model.has_biases() and getattr(model, "task", None) == "lm":
            raise ConfigError(
                "method=bitfit",
                f"trains the model's biases, and {type(model).__name__} ({model.architecture}) has none: "
                "Llama layers have no biases (use method=lora, ia3 or selective)",
            )
        if not model.has_biases():
            raise ConfigError(
                "method=bitfit",
                f"trains the model's biases, and {type(model).__name__} has none "
                "(its base layers are bias-free; set model.use_bias=true, or use method=head_only)",
            )

    def trainable(self, model: nn.Module) -> list[str]:
        names = [
            n for n, _ in model.named_parameters() if is_head(model, n) or n.rpartition(".")[2] == "bias"
        ]
        if all(is_head(model, n) for n in names):
            raise TypeError(f"{type(model).__name__} has no bias outside its head: bitfit = head_only here")
        return names
