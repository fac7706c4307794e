"""Prefix tuning (Li & Liang, 2021): every attention layer of a frozen transformer also attends to
``num_virtual_tokens`` learned key/value pairs (no projection network: the prefix keys and values
are the parameters, as PEFT's ``prefix_projection=False``). The prefix (``prefix.kv``:
layers x 2 x heads x P x head_dim) and the task head train and are communicated.

``text_positions`` sets the text's position ids: ``from_zero`` (the default, fedbench's original
behaviour) keeps them at 0..L-1, as the model saw text in pretraining; ``after_prefix`` puts them
at P..P+L-1, as if the prefix were P real tokens before the text. The latter is what PEFT does
(a key/value cache of P tokens shifts BERT's positions, and PEFT adds P to any ``position_ids``
it is given), so only ``after_prefix`` exports to PEFT's PREFIX_TUNING. On MiniLM the two put the
logits a few hundredths apart (0.03 for a fresh prefix and head); the default stays ``from_zero``
so that existing results and their config hashes stay valid.

``init: tokens`` starts each layer's prefix from the keys/values the frozen model computes for P
random vocabulary tokens (Li & Liang's initialisation from real activations); ``init: normal``
from N(0, init_std^2).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from fedbench import rng
from fedbench.errors import ConfigError
from fedbench.methods.base import VirtualTokenMethod, is_head, require_architecture
from fedbench.registry import choice, register

INITS = ("tokens", "normal")
TEXT_POSITIONS = ("from_zero", "after_prefix")
ARCHITECTURES = (
    "bert",
    "llama",
    "gpt2",
)  # models whose attention takes a key/value cache (EncoderClassifier.prefix)


class PrefixKV(nn.Module):
    def __init__(self, kv: torch.Tensor, position_offset: int = 0) -> None:
        super().__init__()
        self.kv = nn.Parameter(kv)  # [layers, 2, heads, P, head_dim]
        self.position_offset = position_offset  # the text's first position id (EncoderClassifier.features)

    @property
    def num_tokens(self) -> int:
        return self.kv.shape[3]

    def cache(self, batch: int):
        """The prefix as the backbone's key/value cache for a batch (a fresh one per forward)."""
        from transformers import DynamicCache

        pairs = [
            (layer[0].unsqueeze(0).expand(batch, -1, -1, -1), layer[1].unsqueeze(0).expand(batch, -1, -1, -1))
            for layer in self.kv
        ]
        return DynamicCache(pairs)


@register("method", "prefix_tuning")
@dataclass
class PrefixTuning(VirtualTokenMethod):
    num_virtual_tokens: int = 10
    init: str = "tokens"
    init_std: float = 0.02
    # The text's position ids: from_zero (0..L-1) | after_prefix (P..P+L-1, PEFT's; exportable).
    text_positions: str = choice("from_zero", TEXT_POSITIONS)
    INITS: ClassVar[tuple[str, ...]] = INITS

    def check_compatible(self, comps: dict, fl) -> None:
        require_architecture(
            "prefix_tuning",
            comps["model"],
            ARCHITECTURES,
            "prepends learned keys/values to every attention layer",
        )
        if self.text_positions == "after_prefix":
            limit, length = comps["model"].max_positions, comps["data"].max_length
            if self.num_virtual_tokens + length > limit:
                raise ConfigError(
                    "method.num_virtual_tokens",
                    f"plus data.max_length ({length}) must be <= "
                    f"the model's {limit} positions with text_positions=after_prefix",
                    self.num_virtual_tokens,
                )

    def inject(self, model: nn.Module) -> None:
        rng.module_init("prefix")
        L, P = model.num_layers, self.num_virtual_tokens
        # causal LMs with grouped-query attention cache num_kv_heads heads of head_dim
        H = getattr(model, "num_kv_heads", model.num_heads)
        d = getattr(model, "head_dim", model.hidden_size // model.num_heads)
        if self.init == "normal":
            kv = torch.randn(L, 2, H, P, d) * self.init_std
        elif hasattr(model, "kv_for_tokens"):
            vocab = model.word_embeddings().weight.shape[0]
            ids = torch.randint(1000 if vocab > 2000 else 0, vocab, (1, P))
            kv = model.kv_for_tokens(ids.to(model.word_embeddings().weight.device)).cpu()
        else:
            kv = self._from_tokens(model, P, L, H, d)
        model.prefix = PrefixKV(kv, P if self.text_positions == "after_prefix" else 0)

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

    def peft_adapter(self, model: nn.Module):
        """PEFT's PREFIX_TUNING without projection: ``prompt_embeddings`` [P, layers * 2 * hidden],
        row p holding, per layer, token p's key then value (heads x head_dim), which PEFT views as
        [P, layers * 2, heads, head_dim]. Its output is the text's hidden states only (the prefix is a
        key/value cache), so the head's pooling applies to ``last_hidden_state`` as is.

        Raises ValueError for ``text_positions=from_zero``: PEFT always numbers the text from P."""
        if model.architecture != "bert":
            return None
        if self.text_positions != "after_prefix":
            raise ValueError(
                "prefix tuning with method.text_positions=from_zero has no PEFT counterpart: PEFT "
                "numbers the text's positions from num_virtual_tokens (train with "
                "method.text_positions=after_prefix to export)"
            )
        kv = model.prefix.kv.detach()  # [layers, 2, heads, P, head_dim]
        layers, _, heads, P, _ = kv.shape
        config = {
            "peft_type": "PREFIX_TUNING",
            "num_virtual_tokens": P,
            "token_dim": model.hidden_size,
            "num_layers": layers,
            "num_attention_heads": heads,
            "num_transformer_submodules": 1,
            "encoder_hidden_size": model.hidden_size,
            "prefix_projection": False,
        }
        return config, {"prompt_embeddings": kv.permute(3, 0, 1, 2, 4).reshape(P, -1).contiguous().clone()}
