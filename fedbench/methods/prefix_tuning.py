"""Prefix tuning (Li & Liang, 2021): every attention layer of a frozen transformer also attends to
``num_virtual_tokens`` learned key/value pairs (no projection network: the prefix keys and values
are the parameters, as PEFT's ``prefix_projection=False``). The text keeps its own positions.
The prefix (``prefix.kv``: layers x 2 x heads x P x head_dim) and the task head train and are
communicated.

``init: tokens`` starts each layer's prefix from the keys/values the frozen model computes for P
random vocabulary tokens (Li & Liang's initialisation from real activations); ``init: normal``
from N(0, init_std^2).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from fedbench.methods.base import VirtualTokenMethod, is_head, require_architecture
from fedbench.registry import register

INITS = ("tokens", "normal")
ARCHITECTURES = ("bert",)  # models whose attention takes a key/value cache (EncoderClassifier.prefix)


class PrefixKV(nn.Module):
    def __init__(self, kv: torch.Tensor) -> None:
        super().__init__()
        self.kv = nn.Parameter(kv)  # [layers, 2, heads, P, head_dim]

    @property
    def num_tokens(self) -> int:
        return self.kv.shape[3]

    def cache(self, batch: int):
        """The prefix as the backbone's key/value cache for a batch (a fresh one per forward)."""
        from transformers import DynamicCache

        pairs = [(layer[0].unsqueeze(0).expand(batch, -1, -1, -1), layer[1].unsqueeze(0).expand(batch, -1, -1, -1))
                 for layer in self.kv]
        return DynamicCache(pairs)


@register("method", "prefix_tuning")
@dataclass
class PrefixTuning(VirtualTokenMethod):
    num_virtual_tokens: int = 10
    init: str = "tokens"
    init_std: float = 0.02
    INITS: ClassVar[tuple[str, ...]] = INITS

    def check_compatible(self, comps: dict, fl) -> None:
        require_architecture("prefix_tuning", comps["model"], ARCHITECTURES,
                             "prepends learned keys/values to every attention layer")

    def inject(self, model: nn.Module) -> None:
        L, H, P = model.num_layers, model.num_heads, self.num_virtual_tokens
        d = model.hidden_size // H
        if self.init == "normal":
            kv = torch.randn(L, 2, H, P, d) * self.init_std
        else:
            kv = self._from_tokens(model, P, L, H, d)
        model.prefix = PrefixKV(kv)

    @staticmethod
    @torch.no_grad()
    def _from_tokens(model: nn.Module, P: int, L: int, H: int, d: int) -> torch.Tensor:
        vocab = model.word_embeddings().weight.shape[0]
        low = 1000 if vocab > 2000 else 0
        ids = torch.randint(low, vocab, (1, P))
        backbone = model.backbone
        was_training = backbone.training
        backbone.eval()
        try:
            hidden = backbone(input_ids=ids, output_hidden_states=True).hidden_states
        finally:
            backbone.train(was_training)
        out = []
        for i, layer in enumerate(backbone.encoder.layer):
            att = layer.attention.self
            k = att.key(hidden[i]).view(P, H, d).transpose(0, 1)
            v = att.value(hidden[i]).view(P, H, d).transpose(0, 1)
            out.append(torch.stack([k, v]))
        return torch.stack(out).contiguous()

    def trainable(self, model: nn.Module) -> list[str]:
        return [n for n, _ in model.named_parameters() if n.startswith("prefix.") or is_head(model, n)]
