"""Where a run computes (``device=``) and in which precision (``precision=``).

``device=auto`` is ``cuda`` when CUDA is available, else ``cpu``; ``cpu``, ``cuda`` and ``mps``
name one explicitly, and a device that is not available is refused before the run (one line,
exit 2). The model, the trainable state, the optimizer's moments, every batch and the evaluation
live on the device; payloads (what codecs encode and checkpoints save) are CPU tensors on every
device (:mod:`fedbench.fl.state`), so byte counts are the same everywhere and checkpoints load on
any device.

``precision=bf16`` runs the forward pass of Hugging Face models (encoders and causal LMs) under
``torch.autocast`` in bfloat16; the trainable weights, gradients and optimizer stay float32.
The tutorial MLP (and its hand-written step) always computes in fp32: ``bf16`` is refused there,
as on a device without bfloat16 support.
"""

from __future__ import annotations

import torch

from fedbench.errors import ConfigError

DEVICES = ("auto", "cpu", "cuda", "mps")
PRECISIONS = ("fp32", "bf16")


def _available(kind: str) -> bool:
    if kind == "cpu":
        return True
    if kind == "cuda":
        return torch.cuda.is_available()
    if kind == "mps":
        backend = getattr(torch.backends, "mps", None)
        return bool(backend is not None and backend.is_available())
    return False


def resolve_device(name: str) -> torch.device:
    """The torch device ``device=`` names; ConfigError for an unknown or unavailable one."""
    if name not in DEVICES:
        raise ConfigError("device", f"must be one of: {', '.join(DEVICES)}", name)
    if name == "auto":
        return torch.device("cuda" if _available("cuda") else "cpu")
    if not _available(name):
        raise ConfigError(
            "device",
            f"{name} is not available on this machine (torch {torch.__version__}); use device=cpu or device=auto",
            name,
        )
    return torch.device(name)


def bf16_supported(device: torch.device) -> bool:
    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    if device.type == "cpu":
        return True  # autocast on CPU computes bfloat16 matmuls (oneDNN)
    if device.type == "mps":
        return hasattr(torch.backends, "mps") and torch.backends.mps.is_macos_or_newer(14, 0)
    return False


def check_precision(precision: str, device_name: str, model_cfg=None) -> None:
    if precision not in PRECISIONS:
        raise ConfigError("precision", f"must be one of: {', '.join(PRECISIONS)}", precision)
    if precision == "fp32":
        return
    device = resolve_device(device_name)
    if not bf16_supported(device):
        raise ConfigError(
            "precision", f"bf16 is not supported on {device} here; use precision=fp32", precision
        )
    if model_cfg is not None and not getattr(model_cfg, "token_ids", False):
        raise ConfigError(
            "precision",
            f"bf16 autocasts Hugging Face models; {type(model_cfg).__name__} computes in fp32 (precision=fp32)",
            precision,
        )


def apply_precision(model: torch.nn.Module, precision: str) -> None:
    """Set the autocast dtype a Hugging Face model's forward runs under."""
    if precision == "bf16":
        model.autocast = torch.bfloat16
