"""The simulated wire: codecs that encode payloads into the tensors that are really sent.

Bytes are always counted from the encoded tensors (``numel * element_size``), never from a
formula; tests compare the two.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch

from fedbench.contracts import Codec
from fedbench.errors import ConfigError
from fedbench.fl.state import Payload
from fedbench.registry import check_choices, choice, config_key, register

Message = dict[str, tuple[torch.Tensor, ...]]


def message_bytes(message: Message) -> int:
    return sum(t.numel() * t.element_size() for parts in message.values() for t in parts)


@register("codec", "none")
@dataclass
class NoCompression(Codec):
    """Send tensors as they are (float32 stays float32)."""

    def encode(self, payload: Payload, key=None) -> Message:
        return {k: (v,) for k, v in payload.items()}

    def decode(self, message: Message, key=None) -> Payload:
        return {k: parts[0] for k, parts in message.items()}


class _Cast(Codec):
    """Send each tensor cast to ``wire`` (a 2-byte float type); decode back to float32."""

    wire: ClassVar[torch.dtype]

    def encode(self, payload: Payload, key=None) -> Message:
        return {k: (v.to(self.wire),) for k, v in payload.items()}

    def decode(self, message: Message, key=None) -> Payload:
        return {k: parts[0].to(torch.float32) for k, parts in message.items()}


@register("codec", "fp16")
@dataclass
class Float16(_Cast):
    """Cast to IEEE half precision on the wire; decoded back to float32."""

    wire: ClassVar[torch.dtype] = torch.float16


@register("codec", "bf16")
@dataclass
class BFloat16(_Cast):
    """Cast to bfloat16 on the wire (float32's exponent range, 8 significant bits); decoded back
    to float32. 2 bytes per value."""

    wire: ClassVar[torch.dtype] = torch.bfloat16


@register("codec", "int8")
@dataclass
class Int8(Codec):
    """Symmetric linear 8-bit quantisation: ``q = round(x / s)`` in [-127, 127] (int8) with
    ``s = max|x| / 127`` per tensor (``granularity: tensor``) or per row, i.e. per slice along
    dim 0 (``granularity: row``). The scales travel as float32 and are counted:
    ``numel + 4 * (1 or rows)`` bytes per tensor. Decoding gives ``q * s``, so each value is off
    by at most ``s / 2``."""

    granularity: str = choice("tensor", ("tensor", "row"))

    def __post_init__(self) -> None:
        check_choices(self, config_key("compression"))

    def _rows(self, v: torch.Tensor) -> torch.Tensor:
        if self.granularity == "row" and v.dim() >= 2:
            return v.reshape(v.shape[0], -1)
        return v.reshape(1, -1)

    def encode(self, payload: Payload, key=None) -> Message:
        out = {}
        for k, v in payload.items():
            rows = self._rows(v.float())
            scale = rows.abs().amax(dim=1) / 127.0
            safe = torch.where(scale > 0, scale, torch.ones_like(scale))
            q = torch.round(rows / safe[:, None]).clamp_(-127, 127).to(torch.int8)
            out[k] = (q.reshape(v.shape), scale)
        return out

    def decode(self, message: Message, key=None) -> Payload:
        out = {}
        for k, (q, scale) in message.items():
            rows = q.reshape(scale.numel(), -1).to(torch.float32) * scale[:, None]
            out[k] = rows.reshape(q.shape)
        return out


def index_dtype(numel: int) -> torch.dtype:
    """The narrowest integer type that holds every flat index of a tensor of ``numel`` values."""
    if numel <= 1 << 8:
        return torch.uint8
    if numel <= 1 << 15:
        return torch.int16
    if numel <= 1 << 31:
        return torch.int32
    return torch.int64


def topk_count(numel: int, fraction: float) -> int:
    """How many values top-k keeps of a tensor: ceil(fraction * numel), at least 1."""
    return min(numel, max(1, math.ceil(fraction * numel - 1e-9)))


@register("codec", "topk")
@dataclass
class TopK(Codec):
    """Top-k sparsification of the client's *change* (``delta = True``) with error feedback.

    Each tensor keeps its ``k = ceil(fraction * numel)`` entries of largest magnitude, sent as
    float32 values plus flat indices whose width follows the tensor size (uint8 up to 256
    values, int16 up to 32,768, int32 beyond): ``k * (4 + index width)`` bytes per tensor. The
    tensor's shape is architecture knowledge both sides hold; it rides along as a zero-size
    tensor (0 bytes). With ``error_feedback`` each sender (``key``, a client id) keeps what it
    did not send and adds it to its next change (Stich et al. 2018; Karimireddy et al. 2019),
    so nothing is lost for good; the residuals are part of the checkpoint.

    Top-k needs the receiver to hold the state the change is relative to, so it is an uplink
    codec only (the engine refuses it on the downlink).
    """

    fraction: float = 0.1
    error_feedback: bool = True
    delta = True

    def __post_init__(self) -> None:
        if not 0.0 < self.fraction <= 1.0:
            raise ConfigError("compression.up.fraction", "must be a fraction in (0, 1]", self.fraction)
        self._residual: dict = {}  # key -> {name: tensor}

    def encode(self, payload: Payload, key=None) -> Message:
        residual = self._residual.get(key) if self.error_feedback else None
        out, kept = {}, {}
        for name, v in payload.items():
            x = v.float()
            if residual is not None and name in residual:
                x = x + residual[name]
            flat = x.reshape(-1)
            k = topk_count(flat.numel(), self.fraction)
            idx = torch.topk(flat.abs(), k, sorted=False).indices.sort().values
            values = flat.index_select(0, idx)
            out[name] = (
                values,
                idx.to(index_dtype(flat.numel())),
                torch.empty((0, *x.shape), dtype=torch.uint8),
            )
            if self.error_feedback:
                rest = flat.clone()
                rest[idx] = 0.0
                kept[name] = rest.view(x.shape)
        if self.error_feedback:
            self._residual[key] = kept
        return out

    def decode(self, message: Message, key=None) -> Payload:
        out = {}
        for name, (values, idx, shape) in message.items():
            dense = torch.zeros(shape.shape[1:], dtype=torch.float32).reshape(-1)
            dense[idx.long()] = values
            out[name] = dense.view(shape.shape[1:])
        return out

    def state_dict(self) -> tuple[dict[str, torch.Tensor], dict]:
        keys = list(self._residual)
        tensors = {f"{i}/{name}": t for i, key in enumerate(keys) for name, t in self._residual[key].items()}
        return tensors, {"keys": keys}

    def load_state_dict(self, tensors: dict[str, torch.Tensor], meta: dict) -> None:
        self._residual = {}
        for i, key in enumerate(meta.get("keys", [])):
            prefix = f"{i}/"
            self._residual[key] = {
                k[len(prefix) :]: v.clone() for k, v in tensors.items() if k.startswith(prefix)
            }
