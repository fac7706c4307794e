"""IA³ (Liu et al., 2022): learned vectors rescale chosen activations of a frozen model.

A targeted Linear becomes :class:`IA3Linear`: ``base(x) * l`` (one gain per output feature) or,
for a module that also matches ``feedforward_modules``, ``base(x * l)`` (one gain per input
feature), with ``l`` initialised to ones, so the model starts as the frozen backbone. This is
PEFT's ``ia3`` arithmetic (``tuners/ia3/layer.py``). The vectors and the task head train and are
communicated; each vector is 1-D, so a row-wise codec treats it as one tensor (like a bias).

Targets follow PEFT's per-architecture tables (``TRANSFORMERS_MODELS_TO_IA3_TARGET_MODULES_MAPPING``
and ``..._FEEDFORWARD_MODULES_MAPPING``); names match as an exact name, a dotted suffix or a
full regex. On BERT that is ``key``, ``value`` and ``output.dense``, the latter feed-forward;
as in PEFT, the suffix ``output.dense`` also matches ``attention.output.dense``, so per layer
the key and value outputs and the inputs of both output projections are scaled.

The tutorial MLP has no attention and no separate up/down projections, so the default scales the
output of every Linear but the head: a gain per hidden unit (what IA³ gives keys and values).
Scaling before the ReLU equals scaling after it (gains start at 1 > 0), and the last vector
rescales the head's input. Input scaling is left out by default: on the first layer it would only
rescale the raw features, on later layers it duplicates the previous layer's output gains.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional  # noqa: UP035 (OmegaConf needs typing.List)

import torch
from torch import nn

from fedbench.contracts import Method
from fedbench.errors import ConfigError
from fedbench.methods.base import is_head, name_matches, select_targets, wrap_modules
from fedbench.registry import register

__all__ = ["IA3", "IA3Linear", "DEFAULT_TARGETS", "DEFAULT_FEEDFORWARD"]

# When target_modules / feedforward_modules are null, per model architecture (as peft's tables);
# None = every nn.Linear but the head.
DEFAULT_TARGETS: dict[str, list[str] | None] = {
    "bert": ["key", "value", "output.dense"],
    "mlp": None,
    "llama": ["k_proj", "v_proj", "down_proj"],  # peft's table for Llama-family causal LMs
    "gpt2": ["c_attn", "mlp.c_proj"],
}
DEFAULT_FEEDFORWARD: dict[str, list[str]] = {
    "bert": ["output.dense"],
    "mlp": [],
    "llama": ["down_proj"],
    "gpt2": ["mlp.c_proj"],
}


class IA3Linear(nn.Module):
    """A frozen Linear (kept as ``base``) whose output (or, ``feedforward``, input) is scaled
    elementwise by the learned vector ``ia3_l``."""

    def __init__(self, base: nn.Linear, feedforward: bool) -> None:
        super().__init__()
        self.base = base
        self.feedforward = feedforward
        size = base.in_features if feedforward else base.out_features
        self.ia3_l = nn.Parameter(torch.ones(size, dtype=base.weight.dtype, device=base.weight.device))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.feedforward:
            return self.base(x * self.ia3_l)
        return self.base(x) * self.ia3_l

    def extra_repr(self) -> str:
        return f"scales={'input' if self.feedforward else 'output'}, features={self.ia3_l.numel()}"


@register("method", "ia3")
@dataclass
class IA3(Method):
    # Module names to scale (exact, dotted suffix or regex); null = DEFAULT_TARGETS for the model's
    # architecture (key, value, output.dense on BERT; every nn.Linear but the head on the tutorial MLP).
    target_modules: Optional[List[str]] = None  # noqa: UP006, UP045 (OmegaConf)
    # Which of the targets scale their input instead of their output; null = DEFAULT_FEEDFORWARD
    # for the architecture (output.dense on BERT; none on the tutorial MLP).
    feedforward_modules: Optional[List[str]] = None  # noqa: UP006, UP045

    def check_compatible(self, comps: dict, fl) -> None:
        arch = comps["model"].architecture
        for key, value, table in (
            ("target_modules", self.target_modules, DEFAULT_TARGETS),
            ("feedforward_modules", self.feedforward_modules, DEFAULT_FEEDFORWARD),
        ):
            if value is None and arch not in table:
                raise ConfigError(
                    f"method.{key}",
                    f"is null and IA3 has no defaults for {arch!r} models "
                    f"(it knows: {', '.join(table)}); name the modules",
                )

    def _targets(self, model: nn.Module) -> tuple[list[str], set[str]]:
        """(targeted module names, those that scale their input)."""
        arch = model.architecture
        targets = self.target_modules if self.target_modules is not None else DEFAULT_TARGETS[arch]
        names = select_targets(model, targets)
        patterns = (
            self.feedforward_modules if self.feedforward_modules is not None else DEFAULT_FEEDFORWARD[arch]
        )
        feedforward = {n for n in names if name_matches(n, list(patterns))}
        if self.feedforward_modules and not feedforward:
            raise ConfigError(
                "method.feedforward_modules",
                f"matches none of the targeted modules "
                f"({', '.join(names)}); feed-forward modules must be targets too",
                self.feedforward_modules,
            )
        return names, feedforward

    def inject(self, model: nn.Module) -> None:
        names, feedforward = self._targets(model)
        wrap_modules(model, [n for n in names if n in feedforward], lambda base: IA3Linear(base, True))
        wrap_modules(model, [n for n in names if n not in feedforward], lambda base: IA3Linear(base, False))

    def trainable(self, model: nn.Module) -> list[str]:
        return [
            n for n, _ in model.named_parameters() if n.rpartition(".")[2] == "ia3_l" or is_head(model, n)
        ]

    def peft_adapter(self, model: nn.Module):
        """PEFT's IA3: ``<module>.ia3_l`` shaped (out, 1) for an output-scaling module and (1, in) for
        a feed-forward one, which PEFT flattens to the same vector. Module names are listed in full,
        so PEFT's own (undotted) suffix test for feed-forward modules picks exactly ours.
        BERT-family backbones only."""
        if model.architecture != "bert":
            return None
        mods = {n: m for n, m in model.backbone.named_modules() if isinstance(m, IA3Linear)}
        tensors = {
            f"{n}.ia3_l": (
                m.ia3_l.detach().reshape(1, -1) if m.feedforward else m.ia3_l.detach().reshape(-1, 1)
            )
            .contiguous()
            .clone()
            for n, m in mods.items()
        }
        config = {
            "peft_type": "IA3",
            "target_modules": sorted(mods),
            "feedforward_modules": sorted(n for n, m in mods.items() if m.feedforward),
            "exclude_modules": None,
            "fan_in_fan_out": False,
            "init_ia3_weights": True,
        }
        return config, tensors
