"""Autograd over stacked modules: the generic vectorised step.

Any model whose trainable parameters all live in ``LoRALinear``, ``nn.Linear`` or
``nn.LayerNorm`` modules and whose forward treats batch rows independently (the tutorial MLP;
BERT-family encoders with lora, adapter, bitfit or head_only) is trained by swapping those
modules for stacked stand-ins while clients train; autograd computes every client's gradients
from the sum of their losses. :func:`why_not_stackable` says why a model/method cannot be.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn

from fedbench.fl.state import FlatParams
from fedbench.fl.vectorized.plan import StepBatch
from fedbench.fl.vectorized.stacked_state import StackedState
from fedbench.methods.lora import LoRALinear


class _StackedLinear(nn.Module):
    """Stands in for an ``nn.Linear`` with trainable tensors: a stacked ``[K, out, in]`` weight
    used with ``bmm`` (or the shared frozen weight over all rows) plus a stacked, shared or no
    bias."""

    def __init__(
        self, orig: nn.Linear, weight: torch.Tensor | None, bias: torch.Tensor | None, owner: StackedModules
    ):
        super().__init__()
        self.orig = [orig]  # not a submodule: keep the model's parameter list unchanged
        self.weight_st, self.bias_st, self.owner = weight, bias, [owner]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        orig, m = self.orig[0], self.owner[0].m
        xs = x.reshape(m, -1, x.shape[-1])
        if self.weight_st is None:
            out = F.linear(xs, orig.weight, orig.bias if self.bias_st is None else None)
        elif self.bias_st is None and orig.bias is not None:
            out = torch.baddbmm(orig.bias.view(1, 1, -1), xs, self.weight_st[:m].transpose(1, 2))
        else:
            out = torch.bmm(xs, self.weight_st[:m].transpose(1, 2))
        if self.bias_st is not None:
            out = out + self.bias_st[:m].unsqueeze(1)
        return out.reshape(*x.shape[:-1], out.shape[-1])


class _StackedLayerNorm(nn.Module):
    """Stands in for an ``nn.LayerNorm`` whose affine weight and/or bias train."""

    def __init__(
        self,
        orig: nn.LayerNorm,
        weight: torch.Tensor | None,
        bias: torch.Tensor | None,
        owner: StackedModules,
    ):
        super().__init__()
        self.orig = [orig]
        self.weight_st, self.bias_st, self.owner = weight, bias, [owner]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        orig, m = self.orig[0], self.owner[0].m
        y = F.layer_norm(x, orig.normalized_shape, None, None, orig.eps)
        ys = y.reshape(m, -1, *orig.normalized_shape)
        w = orig.weight if self.weight_st is None else self.weight_st[:m].unsqueeze(1)
        b = orig.bias if self.bias_st is None else self.bias_st[:m].unsqueeze(1)
        if w is not None:
            ys = ys * w
        if b is not None:
            ys = ys + b
        return ys.reshape(x.shape)


class _StackedLoRA(nn.Module):
    """Stands in for a ``LoRALinear``: shared frozen base over all rows, stacked A and B (or
    either one, the other frozen and shared, as FFA-LoRA trains B only)."""

    def __init__(
        self, orig: LoRALinear, A: torch.Tensor | None, Bm: torch.Tensor | None, owner: StackedModules
    ):
        super().__init__()
        self.orig = [orig]
        self.A, self.Bm, self.owner = A, Bm, [owner]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        orig, m = self.orig[0], self.owner[0].m
        base = F.linear(x, orig.base.weight, orig.base.bias)
        xs = x.reshape(m, -1, x.shape[-1])
        A = orig.lora_A if self.A is None else self.A[:m]  # a frozen factor is shared
        Bm = orig.lora_B if self.Bm is None else self.Bm[:m]
        lora = torch.matmul(torch.matmul(xs, A), Bm) * orig.scale
        return base + lora.reshape(base.shape)


class StackedModules:
    """Swap each module holding trainable tensors for a stacked stand-in while clients train.

    Covered: ``LoRALinear`` (A and B train), ``nn.Linear`` and ``nn.LayerNorm`` (any of their
    tensors train; frozen ones stay shared). The stand-ins' tensors are leaves whose data are
    views of the stacked state and whose ``.grad`` are views of its gradient, so
    ``sum(losses).backward()`` writes every client's gradient in place. The model's forward
    must keep rows independent and client-major (row ``k*B + b`` belongs to client k).
    """

    def __init__(self, model: nn.Module, state: FlatParams, stacked: StackedState) -> None:
        self.model, self.m = model, stacked.K
        names = set(state.names)
        Wv, Gv = stacked.views(stacked.W), stacked.views(stacked.G)

        def leaf(name):
            if name not in names:
                return None
            t = torch.empty(0)
            t.data = Wv[name]
            t.requires_grad_(True)
            t.grad = Gv[name]
            return t

        self.swaps: list[tuple[nn.Module, str, nn.Module, nn.Module]] = []
        covered: set[str] = set()
        for mod_name, mod in model.named_modules():
            pre = f"{mod_name}." if mod_name else ""
            own = [pre + n for n, _ in mod.named_parameters(recurse=False)]
            if isinstance(mod, LoRALinear):
                a, b = pre + "lora_A", pre + "lora_B"
                if a not in names and b not in names:
                    continue
                stand_in = _StackedLoRA(mod, leaf(a), leaf(b), self)
                covered.update(n for n in (a, b) if n in names)
            elif type(mod) in (nn.Linear, nn.LayerNorm) and any(p in names for p in own):
                cls = _StackedLinear if type(mod) is nn.Linear else _StackedLayerNorm
                stand_in = cls(mod, leaf(pre + "weight"), leaf(pre + "bias"), self)
                covered.update(p for p in own if p in names)
            else:
                continue
            parent_name, _, child = mod_name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            self.swaps.append((parent, child, mod, stand_in))
        self.missing = sorted(names - covered)

    @contextlib.contextmanager
    def installed(self):
        for parent, child, _, stand_in in self.swaps:
            setattr(parent, child, stand_in)
        try:
            yield
        finally:
            for parent, child, orig, _ in self.swaps:
                setattr(parent, child, orig)

    def __call__(self, P, G, b: StepBatch) -> torch.Tensor:
        self.m = b.m
        with torch.enable_grad():
            logits = self.model(b.x)
            logp = F.log_softmax(logits.float(), dim=-1)
            nll = -logp.gather(1, b.y.unsqueeze(1))
            loss = nll.view(b.m, b.B).mean(1) if b.w is None else (nll * b.w).view(b.m, b.B).sum(1)
            loss.sum().backward()
        return loss.detach()


def why_not_stackable(model: nn.Module, state: FlatParams) -> str | None:
    """None if the vectorised engine can train this model/method, else the reason."""
    probe = StackedState(state, 1)
    missing = StackedModules(model, state, probe).missing
    if missing:
        return (
            f"cannot stack trainable parameters {missing[:3]}{'...' if len(missing) > 3 else ''} "
            "(stacked: LoRALinear, nn.Linear, nn.LayerNorm); use fl.engine=exact"
        )
    return None
