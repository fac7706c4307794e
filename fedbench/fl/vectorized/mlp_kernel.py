"""Hand-written forward/backward for K stacked tutorial MLPs (plain or LoRA-wrapped bias-free
Linear layers, Linear head) sharing one frozen base, no autograd."""

from __future__ import annotations

import torch
from torch import nn

from fedbench.fl.state import FlatParams
from fedbench.fl.vectorized.plan import StepBatch
from fedbench.methods.lora import LoRALinear

aten = torch.ops.aten


class _BLayer:
    __slots__ = (
        "base",
        "W",
        "Wt",
        "w_name",
        "lora",
        "mod",
        "a_name",
        "b_name",
        "a_train",
        "b_train",
        "scale",
    )


class BatchedMLPStep:
    """Forward + backward of K stacked tutorial MLPs sharing one frozen base, no autograd.

    Frozen Linear weights multiply all ``m*B`` rows at once with ``mm``; trainable ones (LoRA
    factors, the head, Linear weights under full fine-tuning) are ``[m, ...]`` stacks used with
    ``bmm``. Covers what :class:`~fedbench.models.tutorial_mlp_fast.TutorialMLPStep` covers.
    """

    def __init__(
        self, layers: list[_BLayer], head_w: str, head_b: str, lowest: int, num_classes: int
    ) -> None:
        self.layers, self.head_w, self.head_b, self.lowest = layers, head_w, head_b, lowest
        self.num_classes = num_classes

    @classmethod
    def build(cls, model: nn.Module, state: FlatParams) -> BatchedMLPStep | None:
        from fedbench.fl.feature_cache import HeadModel
        from fedbench.models.tutorial_mlp import TutorialMLPModule

        if type(model) not in (TutorialMLPModule, HeadModel) or model.head_name != "head":
            return None
        if type(model.head) is not nn.Linear or model.head.bias is None:
            return None
        model_layers = model.layers if type(model) is TutorialMLPModule else []
        names = set(state.names)
        if not {"head.weight", "head.bias"} <= names:
            return None
        used = {"head.weight", "head.bias"}
        layers = []
        for i, mod in enumerate(model_layers):
            L = _BLayer()
            if isinstance(mod, LoRALinear):
                base, prefix = mod.base, f"layers.{i}.base."
                L.lora, L.scale, L.mod = True, mod.scale, mod
                L.a_name, L.b_name = f"layers.{i}.lora_A", f"layers.{i}.lora_B"
                L.a_train, L.b_train = L.a_name in names, L.b_name in names  # e.g. FFA-LoRA: B only
                used.update(n for n in (L.a_name, L.b_name) if n in names)
            elif type(mod) is nn.Linear:
                base, prefix = mod, f"layers.{i}."
                L.lora = False
            else:
                return None
            if type(base) is not nn.Linear or base.bias is not None:
                return None
            L.base = base
            L.W, L.Wt = base.weight, base.weight.t()
            L.w_name = prefix + "weight" if prefix + "weight" in names else None
            if L.w_name:
                used.add(L.w_name)
            layers.append(L)
        if used != names:
            return None
        trains = [i for i, L in enumerate(layers) if (L.lora and (L.a_train or L.b_train)) or L.w_name]
        return cls(
            layers,
            "head.weight",
            "head.bias",
            min(trains) if trains else len(layers),
            model.head.out_features,
        )

    def refresh(self) -> None:
        """Re-read the frozen weights (a method's server protocol may merge into them)."""
        for L in self.layers:
            L.W = L.base.weight
            L.Wt = L.W.t()

    def transposed(self) -> frozenset[str]:
        """The LoRA ``A`` factors, which this step wants stored as ``[r, in]``."""
        return frozenset(L.a_name for L in self.layers if L.lora and L.a_train)

    def __call__(
        self,
        P: dict[str, torch.Tensor],
        G: dict[str, torch.Tensor],
        b: StepBatch,
        loss_out: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Loss per client [m] (into ``loss_out`` if given); writes the gradients into the
        ``[m, ...]`` stacks ``G``.

        ``P``/``G`` come from a :class:`StackedState` built with :meth:`transposed`: LoRA's A
        is ``At [m, r, in]``; ``xaT = At h^T`` is kept as ``[m, r, B]`` (wide products only).
        """
        m, B = b.m, b.B
        h = b.x
        inputs, mids = [], []
        factors = []  # per LoRA layer: (At [m, r, in], B [m, r, out]), frozen ones shared
        for L in self.layers:
            if L.lora:
                At = P[L.a_name] if L.a_train else L.mod.lora_A.t().unsqueeze(0).expand(m, -1, -1)
                Bf = P[L.b_name] if L.b_train else L.mod.lora_B.unsqueeze(0).expand(m, -1, -1)
                factors.append((At, Bf))
            else:
                factors.append(None)
        for L, fac in zip(self.layers, factors):
            inputs.append(h)
            h3 = h.view(m, B, -1)
            z = torch.bmm(h3, P[L.w_name].transpose(1, 2)).view(m * B, -1) if L.w_name else h.mm(L.Wt)
            if L.lora:
                xaT = torch.bmm(fac[0], h3.transpose(1, 2))  # [m, r, B]
                mids.append(xaT)
                z.view(m, B, -1).baddbmm_(xaT.transpose(1, 2), fac[1], alpha=L.scale)
            else:
                mids.append(None)
            h = z.relu_()
        hw, hb = P[self.head_w], P[self.head_b]
        h3 = h.view(m, B, -1)
        logits = torch.baddbmm(hb.unsqueeze(1), h3, hw.transpose(1, 2))
        C = logits.shape[-1]
        logp = torch._log_softmax(logits.view(m * B, C), 1, False)
        # loss_k = sum over k's rows of -w log p[y]; its gradient wrt the logits is log-softmax's
        # backward applied to -w onehot(y) (the plan's ``target``, built with this head's C)
        loss = torch.sum(logp.mul(b.target).view(m, B * C), 1, out=loss_out)
        g = torch._log_softmax_backward_data(b.target, logp, 1, logp.dtype)
        g3 = g.view(m, B, C)
        torch.sum(g3, 1, out=G[self.head_b])
        torch.bmm(g3.transpose(1, 2), h3, out=G[self.head_w])
        if self.lowest == len(self.layers):
            return loss
        gh = torch.bmm(g3, hw).view(m * B, -1)
        out = h
        for i in range(len(self.layers) - 1, self.lowest - 1, -1):
            L = self.layers[i]
            gz = aten.threshold_backward(gh, out, 0)
            h_in = inputs[i]
            gz3, hin3 = gz.view(m, B, -1), h_in.view(m, B, -1)
            gxaT = None
            if L.lora:
                At, Bf = factors[i]
                gxaT = torch.bmm(Bf, gz3.transpose(1, 2)).mul_(L.scale)  # [m, r, B]
                if L.b_train:
                    G[L.b_name].baddbmm_(mids[i], gz3, beta=0, alpha=L.scale)
                if L.a_train:
                    torch.bmm(gxaT, hin3, out=G[L.a_name])
            if L.w_name:
                torch.bmm(gz3.transpose(1, 2), hin3, out=G[L.w_name])
            if i > self.lowest:
                gh = torch.bmm(gz3, P[L.w_name]).view(m * B, -1) if L.w_name else gz.mm(L.W)
                if gxaT is not None:
                    gh.view(m, B, -1).baddbmm_(gxaT.transpose(1, 2), factors[i][0])
            out = h_in
        return loss
