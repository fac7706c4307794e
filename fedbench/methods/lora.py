"""LoRA (Hu et al., 2022) with the tutorial's parametrization.

``W x + (x A B) * alpha / r`` with A: in x r drawn N(0, 0.01^2), B: r x out zeros
(:class:`~fedbench.methods.lora_layer.LoRALinear`). The factors and the task head train and are
communicated; the wrapped Linear stays frozen.

``aggregation`` decides how the server combines the clients' adapters:

- ``naive`` (the tutorial): A and B are averaged separately by the strategy, although the mean
  of products is not the product of means.
- ``ffa`` (FFA-LoRA, Sun et al. 2024): A stays frozen at its seeded initialisation, which every
  client shares; only B (and the head) train and are sent, so the LoRA bytes halve (for a
  square layer) and averaging B is exact, since ``A0 mean(B) = mean(A0 B)``.
- ``exact``: the server aggregates the true update ``sum_k p_k A_k B_k`` and merges it into the
  base weights (see :mod:`fedbench.methods.lora_exact` for what is sent).
- ``hetlora`` (Cho et al. 2024): zero-pad every client's factors to the largest rank and
  average; each client receives its leading slice (:mod:`fedbench.methods.lora_hetlora`).
- ``flexlora`` (Bai et al. 2024): average the full products, send each client the SVD
  truncation at its rank (:mod:`fedbench.methods.lora_flexlora`).

``ranks`` (a list) gives clients their own ranks (``hetlora``, ``flexlora``, ``exact``;
:mod:`fedbench.methods.lora_ranks`): the layers are built at ``max(ranks)``, which replaces
``rank``, and every client uses that rank's scale ``alpha / max(ranks)``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import List, Optional  # noqa: UP035 (OmegaConf reads typing generics)

from torch import nn

from fedbench.contracts import Method, Population
from fedbench.errors import ConfigError
from fedbench.methods.base import is_head, select_targets, wrap_modules
from fedbench.methods.lora_layer import LoRALinear
from fedbench.methods.lora_ranks import RANK_RULES, ClientRanks
from fedbench.registry import check_choices, choice, register

log = logging.getLogger("fedbench")

AGGREGATIONS = ("naive", "ffa", "exact", "hetlora", "flexlora")
RANKED = ("exact", "hetlora", "flexlora")  # aggregations with their own server protocol

__all__ = ["LoRA", "LoRALinear", "DEFAULT_TARGETS"]

# Modules LoRA adapts when target_modules is null, per model architecture (as peft's table);
# None = every nn.Linear but the head.
DEFAULT_TARGETS: dict[str, list[str] | None] = {
    "bert": ["query", "value"],
    "mlp": None,
    # causal LMs (fedbench.models.causal_lm): every attention projection (Llama, Mistral, Qwen);
    # GPT-2's fused qkv and attention output (its Conv1D layers are loaded as nn.Linear)
    "llama": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "gpt2": ["c_attn", "attn.c_proj"],
}


@register("method", "lora")
@dataclass
class LoRA(Method):
    rank: int = 4
    alpha: float = 1.0
    init_std: float = 0.01
    # Module names to adapt (exact, dotted suffix or regex); null = DEFAULT_TARGETS for the
    # model's architecture (query/value on BERT; every nn.Linear but the head on the tutorial MLP).
    target_modules: Optional[List[str]] = None  # noqa: UP006, UP045 (OmegaConf)
    # How the server combines adapters: naive | ffa | exact | hetlora | flexlora (module docstring).
    aggregation: str = choice("naive", AGGREGATIONS)
    # Per-client ranks (null: every client has `rank`): a list, see fedbench.methods.lora_ranks.
    ranks: Optional[List[int]] = None  # noqa: UP006, UP045 (OmegaConf)
    # How ranks are assigned: client (ranks[c % len(ranks)]) | bandwidth (slowest uplink, smallest).
    rank_by: str = choice("client", RANK_RULES)

    def __post_init__(self) -> None:
        check_choices(self, "method")
        if self.rank < 1:
            raise ConfigError("method.rank", "must be an integer >= 1", self.rank)
        if not self.init_std >= 0:
            raise ConfigError("method.init_std", "must be a float >= 0", self.init_std)
        if self.ranks is not None:
            if not self.ranks or any(r < 1 for r in self.ranks):
                raise ConfigError("method.ranks", "must be a non-empty list of integers >= 1", self.ranks)
            if self.aggregation not in RANKED:
                raise ConfigError(
                    "method.ranks",
                    f"needs method.aggregation={', '.join(RANKED)} (got {self.aggregation})",
                    self.ranks,
                )
        if self.rank_by == "bandwidth" and self.ranks is None:
            raise ConfigError(
                "method.rank_by", "bandwidth assigns method.ranks; set method.ranks", self.rank_by
            )

    @property
    def built_rank(self) -> int:
        """The rank the layers are built at: ``max(ranks)``, else ``rank``."""
        return max(self.ranks) if self.ranks else self.rank

    def check_compatible(self, comps: dict, fl) -> None:
        width = comps["model"].linear_width()
        if self.ranks and width is not None and max(self.ranks) > width:
            # (a single method.rank above it is allowed, as before: wasteful, not wrong)
            raise ConfigError(
                "method.ranks",
                f"a LoRA rank must be <= {width}, the narrowest adapted layer's width",
                self.ranks,
            )
        system = comps.get("system")
        if self.rank_by == "bandwidth" and (system is None or not system.active):
            raise ConfigError("method.rank_by", "bandwidth needs a system (system=mixed_mobile, trace, ...)")
        arch = comps["model"].architecture
        if self.target_modules is None and arch not in DEFAULT_TARGETS:
            raise ConfigError(
                "method.target_modules",
                f"is null and LoRA has no default targets for "
                f"{arch!r} models (it knows: {', '.join(DEFAULT_TARGETS)}); name the modules",
            )

    def _targets(self, model: nn.Module) -> list[str]:
        targets = (
            self.target_modules if self.target_modules is not None else DEFAULT_TARGETS[model.architecture]
        )
        return select_targets(model, targets)

    def inject(self, model: nn.Module) -> None:
        if self.ranks and self.rank != self.built_rank:
            log.info(
                "method.ranks=%s: the layers are built at rank %d (method.rank=%d is not used)",
                self.ranks,
                self.built_rank,
                self.rank,
            )
        wrap_modules(
            model,
            self._targets(model),
            lambda base: LoRALinear(base, self.built_rank, self.alpha, self.init_std),
        )

    def trainable(self, model: nn.Module) -> list[str]:
        factors = ("lora_B",) if self.aggregation == "ffa" else ("lora_A", "lora_B")
        return [
            n for n, _ in model.named_parameters() if n.rpartition(".")[2] in factors or is_head(model, n)
        ]

    def has_server_protocol(self) -> bool:
        return self.aggregation in RANKED

    def server_protocol(self, model: nn.Module, state, population: Population | None = None):
        if self.aggregation not in RANKED:
            return None
        from fedbench.methods.lora_exact import ExactLoRA
        from fedbench.methods.lora_flexlora import FlexLoRA
        from fedbench.methods.lora_hetlora import HetLoRA

        population = population or Population(1, 0)
        ranks = ClientRanks(self.rank, self.ranks, self.rank_by, population)
        cls = {"exact": ExactLoRA, "hetlora": HetLoRA, "flexlora": FlexLoRA}[self.aggregation]
        return cls(model, state, ranks)

    def peft_adapter(self, model: nn.Module):
        """PEFT's LoRA: ``lora_A.weight`` = A^T (r x in), ``lora_B.weight`` = B^T (out x r), scaling
        ``lora_alpha / r``: the same function as ``x A B * alpha / r``. BERT-family encoders and
        Llama-family causal LMs (GPT-2's fused Conv1D layout differs from fedbench's Linear: none);
        not ``exact`` or ``flexlora``, whose global model is not the factors on the original base."""
        if model.architecture not in ("bert", "llama") or self.aggregation in ("exact", "flexlora"):
            return None
        mods = {n: m for n, m in model.backbone.named_modules() if isinstance(m, LoRALinear)}
        tensors = {}
        for name, m in mods.items():
            tensors[f"{name}.lora_A.weight"] = m.lora_A.detach().t().contiguous().clone()
            tensors[f"{name}.lora_B.weight"] = m.lora_B.detach().t().contiguous().clone()
        config = {
            "peft_type": "LORA",
            "r": self.built_rank,
            "lora_alpha": self.alpha,
            "lora_dropout": 0.0,
            "target_modules": sorted(mods),
            "bias": "none",
            "fan_in_fan_out": False,
            "init_lora_weights": True,
            "use_rslora": False,
            "use_dora": False,
            "layers_to_transform": None,
            "layers_pattern": None,
            "rank_pattern": {},
            "alpha_pattern": {},
        }
        return config, tensors
