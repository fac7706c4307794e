"""What a method may ask about a model *config* before anything is built (for check_compatible).

Transformer configs (:class:`fedbench.models.hf.TransformerModel`) declare ``supports``; plain
models such as the tutorial MLP are described by their fields: biases only with
``use_bias=true``, blocks = ``num_layers``, and no attention (no prompts, prefixes or adapters).
"""

from __future__ import annotations

from fedbench.config import ConfigError

TRANSFORMER_ONLY = {
    "prompt": "prepends virtual tokens to a transformer's input embeddings",
    "prefix": "prepends learned keys/values to every attention layer",
    "adapter": "inserts bottleneck adapters after a transformer's attention and feed-forward outputs",
}


def model_supports(model_cfg, feature: str) -> bool:
    declared = getattr(model_cfg, "supports", None)
    if declared is not None:
        return feature in declared
    if feature == "bias":
        return bool(getattr(model_cfg, "use_bias", False))
    if feature == "blocks":
        return getattr(model_cfg, "num_layers", None) is not None
    return False


def model_label(model_cfg) -> str:
    return type(model_cfg).__name__


def require(method: str, feature: str, comps: dict) -> None:
    """Refuse the run (one line) if the model cannot host this method."""
    model = comps["model"]
    if model_supports(model, feature):
        return
    if feature in TRANSFORMER_ONLY:
        raise ConfigError(f"method={method}", f"{TRANSFORMER_ONLY[feature]}; model {model_label(model)} has no "
                          "attention layers: use model=minilm or model=tiny_bert")
    if feature == "bias":
        raise ConfigError(f"method={method}", f"trains the model's biases, and {model_label(model)} has none "
                          "(its base layers are bias-free; set model.use_bias=true, or use method=head_only)")
    raise ConfigError(f"method={method}", f"does not apply to model {model_label(model)}")


def num_blocks(model_cfg) -> int:
    n = getattr(model_cfg, "num_blocks", None)
    return int(n if n is not None else model_cfg.num_layers)


def block_names(model) -> list[str]:
    """Module names of a built model's blocks, bottom to top."""
    names = getattr(model, "block_names", None)
    if names is not None:
        return list(names)
    layers = getattr(model, "layers", None)
    if layers is not None:
        return [f"layers.{i}" for i in range(len(layers))]
    raise TypeError(f"{type(model).__name__} has no blocks (no block_names, no layers)")
