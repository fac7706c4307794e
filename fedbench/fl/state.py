"""Trainable state in one flat buffer, shared by all simulated clients.

The buffer lives on the model's device (``device=``); payloads (snapshots: what codecs encode,
strategies aggregate and checkpoints save) are CPU tensors on every device, so byte counts and
codecs are the same everywhere and checkpoints load on any device.

The frozen base exists once. The parameters a method trains are re-pointed at views of one
flat vector (and their ``.grad`` at views of one flat gradient), so a client's start state is a
single ``copy_`` and its optimizer works on one tensor instead of one per parameter.
"""

from __future__ import annotations

import torch
from torch import nn

Payload = dict[str, torch.Tensor]


class FlatParams:
    def __init__(self, model: nn.Module, names: list[str]) -> None:
        params = dict(model.named_parameters())
        missing = [n for n in names if n not in params]
        if missing:
            raise KeyError(f"not parameters of the model: {missing}")
        for p in model.parameters():
            p.requires_grad_(False)
        self.names = list(names)
        self.shapes = [tuple(params[n].shape) for n in names]
        sizes = [params[n].numel() for n in names]
        self.offsets = [sum(sizes[:i]) for i in range(len(sizes) + 1)]
        dtypes = {params[n].dtype for n in names}
        if len(dtypes) > 1:
            raise TypeError(f"trainable parameters mix dtypes {dtypes}")
        dtype = dtypes.pop() if dtypes else torch.float32
        devices = {params[n].device for n in names}
        device = devices.pop() if len(devices) == 1 else torch.device("cpu")
        self.flat = torch.empty(self.offsets[-1], dtype=dtype, device=device)
        self.grad = torch.zeros_like(self.flat)
        for name, shape, lo, hi in zip(names, self.shapes, self.offsets, self.offsets[1:]):
            p = params[name]
            self.flat[lo:hi].copy_(p.detach().reshape(-1))
            p.data = self.flat[lo:hi].view(shape)
            p.requires_grad_(True)
            p.grad = self.grad[lo:hi].view(shape)

    @property
    def numel(self) -> int:
        return self.offsets[-1]

    def views(self, flat: torch.Tensor) -> Payload:
        """Name -> view into ``flat`` (any vector laid out like this state)."""
        return {
            n: flat[lo:hi].view(s)
            for n, s, lo, hi in zip(self.names, self.shapes, self.offsets, self.offsets[1:])
        }

    def snapshot(self) -> Payload:
        """A copy of the current values, as a payload (views of one fresh CPU vector)."""
        if self.flat.device.type == "cpu":
            return self.views(self.flat.clone())
        return self.views(self.flat.detach().to("cpu"))

    def load(self, payload: Payload) -> None:
        """Write a payload's tensors into the live parameters."""
        if list(payload) == self.names:
            for (lo, hi), t in zip(zip(self.offsets, self.offsets[1:]), payload.values()):
                self.flat[lo:hi].copy_(t.reshape(-1))
            return
        raise KeyError(f"payload keys {sorted(payload)} != trainable {sorted(self.names)}")
