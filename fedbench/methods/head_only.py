"""Head-only (linear probing): the backbone stays frozen; only the task head trains and is sent."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from fedbench.contracts import Method
from fedbench.errors import ConfigError
from fedbench.methods.base import is_head
from fedbench.registry import register


@register("method", "head_only")
@dataclass
class HeadOnly(Method):
    def check_compatible(self, comps: dict, fl) -> None:
        model = comps["model"]
        if getattr(model, "task", None) == "lm":
            raise ConfigError(
                "method=head_only",
                f"trains a task head, and {type(model).__name__} has none: its LM head is tied to the "
                "input embeddings, so training it is training the embeddings (use method=full, "
                "selective, lora or ia3)",
            )

    def trainable(self, model: nn.Module) -> list[str]:
        return [n for n, _ in model.named_parameters() if is_head(model, n)]
