"""Prompt tuning (Lester et al., 2021): ``num_virtual_tokens`` learned embeddings are prepended to
the input embeddings of a frozen transformer (they take positions 0..P-1, the text follows).
The virtual-token embeddings and the task head train and are communicated.

``init: vocab`` starts the prompt from the embeddings of random vocabulary tokens (ids drawn from
torch's RNG in [1000, vocab), past BERT's special and unused tokens); ``init: normal`` from
N(0, init_std^2).

Exported to PEFT's PROMPT_TUNING (:meth:`PromptTuning.peft_adapter`), which computes the same
function; PEFT's ``last_hidden_state`` then starts with the P virtual tokens, which fedbench's
pooling leaves out: pool ``last_hidden_state[:, P:]`` (the text's [CLS] is at position P)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from fedbench import rng
from fedbench.errors import ConfigError
from fedbench.methods.base import VirtualTokenMethod, is_head, require_architecture
from fedbench.registry import register

INITS = ("vocab", "normal")
ARCHITECTURES = (
    "bert",
    "llama",
    "gpt2",
)  # models whose forward takes prompt embeddings (EncoderClassifier.prompt)


class PromptEmbedding(nn.Module):
    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight)


@register("method", "prompt_tuning")
@dataclass
class PromptTuning(VirtualTokenMethod):
    num_virtual_tokens: int = 20
    init: str = "vocab"
    init_std: float = 0.02
    INITS: ClassVar[tuple[str, ...]] = INITS

    def check_compatible(self, comps: dict, fl) -> None:
        require_architecture(
            "prompt_tuning",
            comps["model"],
            ARCHITECTURES,
            "prepends virtual tokens to a transformer's input embeddings",
        )
        limit = comps["model"].max_positions
        length = comps["data"].max_length
        if self.num_virtual_tokens + length > limit:
            raise ConfigError(
                "method.num_virtual_tokens",
                f"plus data.max_length ({length}) must be <= the model's {limit} positions",
                self.num_virtual_tokens,
            )

    def inject(self, model: nn.Module) -> None:
        rng.module_init("prompt")
        emb = model.word_embeddings().weight
        if self.init == "vocab":
            low = 1000 if emb.shape[0] > 2000 else 0
            ids = torch.randint(low, emb.shape[0], (self.num_virtual_tokens,))
            weight = emb.detach()[ids].clone()
        else:
            weight = torch.randn(self.num_virtual_tokens, emb.shape[1]) * self.init_std
        model.prompt = PromptEmbedding(weight.to(emb.dtype))

    def trainable(self, model: nn.Module) -> list[str]:
        return [n for n, _ in model.named_parameters() if n.startswith("prompt.") or is_head(model, n)]

    def peft_adapter(self, model: nn.Module):
        """PEFT's PROMPT_TUNING: ``prompt_embeddings`` [P, hidden], prepended to the word embeddings
        with positions 0..P-1 and the text at P..P+L-1, as here. PEFT returns hidden states for the
        virtual tokens too: drop the first ``num_virtual_tokens`` before pooling to get the logits."""
        if model.architecture != "bert":
            return None
        weight = model.prompt.weight.detach()
        config = {
            "peft_type": "PROMPT_TUNING",
            "num_virtual_tokens": weight.shape[0],
            "token_dim": weight.shape[1],
            "num_layers": model.num_layers,
            "num_attention_heads": model.num_heads,
            "num_transformer_submodules": 1,
            "prompt_tuning_init": "RANDOM",
            "prompt_tuning_init_text": None,
            "tokenizer_name_or_path": None,
            "tokenizer_kwargs": None,
        }
        return config, {"prompt_embeddings": weight.contiguous().clone()}
