"""Save a fedbench-trained method on a Hugging Face encoder in PEFT's format.

``python -m fedbench.peft_export RUN_DIR OUT_DIR`` rebuilds the run's model from its
``summary.json`` config, loads the global trainable state of its last checkpoint and writes:

- ``adapter_config.json`` + ``adapter_model.safetensors``: a PEFT adapter for the backbone
  (``transformers.AutoModel`` of ``base_model_name_or_path``), loadable with
  ``peft.PeftModel.from_pretrained(AutoModel.from_pretrained(base), OUT_DIR)``. What the adapter
  holds comes from the method's ``peft_adapter(model)`` hook (:class:`fedbench.contracts.Method`),
  so a method with a PEFT counterpart exports without changes here; one without is refused.
- ``head.safetensors`` (``weight``, ``bias``) + ``fedbench_head.json``: the classification head and
  how features reach it (pooling over ``input_ids != pad_id``), which PEFT's adapter does not hold.
- ``base_model/``: only for a randomly initialised backbone (``tiny_bert``), whose weights exist
  nowhere else: the backbone saved with ``save_pretrained``.

Logits = head(pool(peft_model(input_ids, attention_mask).last_hidden_state)).

A causal LM (:mod:`fedbench.models.causal_lm`) has no head of its own: its adapter has
``task_type: CAUSAL_LM`` and loads with
``peft.PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), OUT_DIR)``, which
gives the same logits and generates (``base``: the converted SmolLM2 folder, ``model.path``, or
``base_model/`` for ``tiny_llama``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from fedbench.contracts import Method

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
HEAD_WEIGHTS = "head.safetensors"
HEAD_CONFIG = "fedbench_head.json"
PROMPT_LEARNING = ("PROMPT_TUNING", "PREFIX_TUNING", "P_TUNING")


def export_peft(
    model: nn.Module,
    method: Method,
    out_dir: str | Path,
    base_model_name_or_path: str | None = None,
    save_base: bool = False,
) -> Path:
    """Write ``model``'s trained method (and head) in PEFT's format; return ``out_dir``."""
    adapter = method.peft_adapter(model)
    if adapter is None:
        raise ValueError(
            f"{type(method).__name__} on a {model.architecture!r} model has no PEFT counterpart to export to"
        )
    config, weights = adapter
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if save_base:
        base = _plain_backbone(model)
        base.save_pretrained(out / "base_model", safe_serialization=True)
        base_model_name_or_path = str((out / "base_model").resolve())
    # PEFT saves a tuner's weights under the wrapped model's names, prompt learning's bare.
    prompt_learning = config["peft_type"] in PROMPT_LEARNING
    tensors = weights if prompt_learning else {f"base_model.model.{k}": v for k, v in weights.items()}
    save_file(tensors, str(out / ADAPTER_WEIGHTS), metadata={"format": "pt"})
    config = {
        "task_type": "FEATURE_EXTRACTION",
        "base_model_name_or_path": base_model_name_or_path,
        "inference_mode": True,
        "revision": None,
        "modules_to_save": None,
        **config,
    }
    if getattr(model, "task", None) == "lm":
        # a causal LM: the adapter wraps AutoModelForCausalLM, whose own LM head gives the logits
        config["task_type"] = "CAUSAL_LM"
        (out / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2) + "\n")
        return out
    (out / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2) + "\n")
    head = model.head
    save_file(
        {
            "weight": head.weight.detach().contiguous().clone(),
            "bias": head.bias.detach().contiguous().clone(),
        },
        str(out / HEAD_WEIGHTS),
    )
    (out / HEAD_CONFIG).write_text(
        json.dumps(
            {
                "pooling": model.pooling,
                "pad_id": model.pad_id,
                "num_classes": model.num_classes,
                "hidden_size": model.hidden_size,
                "usage": "logits = head(pool(peft_model(input_ids, attention_mask=(input_ids != pad_id)).last_hidden_state)); "
                "pool = mean over real tokens (pooling=mean) or the first token (pooling=cls)"
                + (
                    "; PROMPT_TUNING: last_hidden_state starts with the num_virtual_tokens prompt positions: "
                    "drop them (hidden[:, P:]) before pooling"
                    if config["peft_type"] == "PROMPT_TUNING"
                    else ""
                ),
            },
            indent=2,
        )
        + "\n"
    )
    return out


def _plain_backbone(model: nn.Module) -> nn.Module:
    """A copy of the backbone with every method wrapper (a fedbench module holding the frozen
    original as ``base``) replaced by that original."""
    import copy

    backbone = copy.deepcopy(model.backbone)
    for name, m in list(backbone.named_modules()):
        if type(m).__module__.startswith("fedbench.methods.") and isinstance(
            getattr(m, "base", None), nn.Module
        ):
            parent_name, _, child = name.rpartition(".")
            parent = backbone.get_submodule(parent_name) if parent_name else backbone
            setattr(parent, child, m.base)
    return backbone


def load_head(out_dir: str | Path) -> tuple[nn.Linear, dict]:
    from safetensors.torch import load_file

    t = load_file(str(Path(out_dir) / HEAD_WEIGHTS))
    meta = json.loads((Path(out_dir) / HEAD_CONFIG).read_text())
    head = nn.Linear(t["weight"].shape[1], t["weight"].shape[0])
    head.load_state_dict(t)
    return head, meta


def pool(hidden: torch.Tensor, ids: torch.Tensor, pad_id: int, pooling: str) -> torch.Tensor:
    if pooling == "cls":
        return hidden[:, 0]
    m = (ids != pad_id).unsqueeze(-1).to(hidden.dtype)
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1.0)


def export_run(run_dir: str | Path, out_dir: str | Path) -> Path:
    """Rebuild a run's model, load its last checkpoint's global state, export it."""
    from fedbench import checkpoint
    from fedbench.config import validate
    from fedbench.models.hf import HFEncoder
    from fedbench.run import build

    run = Path(run_dir)
    summary = json.loads((run / "summary.json").read_text())
    spec = validate(summary["config"])
    saved = checkpoint.load(run)
    if saved is None:
        raise ValueError(f"{run} holds no checkpoint (run with checkpoint_every >= 1 to export)")
    tensors, meta = saved
    _, model, state = build(spec)
    state.load({n: tensors[f"global/{n}"] for n in state.names})
    from fedbench.models.causal_lm import CausalLM

    pretrained = isinstance(spec.model, (HFEncoder, CausalLM))
    base = str(spec.model.folder()) if pretrained else None
    out = export_peft(model, spec.method, out_dir, base_model_name_or_path=base, save_base=not pretrained)
    print(f"round {meta['round']} of {run}: {type(spec.method).__name__} -> {out}")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m fedbench.peft_export", description=__doc__.splitlines()[0])
    p.add_argument(
        "run_dir",
        help="a fedbench run folder (a method with a PEFT counterpart on minilm, tiny_bert or model.path=...)",
    )
    p.add_argument("out_dir", help="where to write adapter_config.json, adapter_model.safetensors, head")
    args = p.parse_args(argv)
    try:
        export_run(args.run_dir, args.out_dir)
    except (ValueError, FileNotFoundError, KeyError) as exc:
        print(f"fedbench.peft_export: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
