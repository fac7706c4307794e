"""A hand-written training step for the tutorial MLP, bit-identical to autograd's.

At batch 16 the tutorial's work is ~60 tiny kernels per step, so autograd's per-node overhead
and ``nn.Module`` dispatch cost more than the arithmetic. This step runs the forward pass
without recording a graph and calls the same ATen kernels autograd's backward formulas call,
on operands of the same layout (e.g. a Linear's weight gradient is ``grad.t().mm(input)``:
autograd's form for a column-major ``weight.t()``; ``input.t().mm(grad).t()`` rounds
differently). ``tests/test_fast_step.py`` checks loss and every gradient bit for bit against
autograd for each method, thread count and a changed shape; ``fl.fast_step=false`` turns it off.

It covers the layers fedbench's methods produce on this model (plain or LoRA-wrapped
bias-free Linear layers, a Linear head) and a bare Linear head on cached features (the feature
cache's ``HeadModel``, ``architecture == "head"``), and declines anything else, which then
trains through autograd. The engine asks :func:`fast_step`; models do not know about it.
"""

from __future__ import annotations

import torch
from torch import nn

from fedbench.fl.state import FlatParams
from fedbench.methods.lora_layer import LoRALinear

aten = torch.ops.aten
_ONE = torch.ones((), dtype=torch.float32)


class _Layer:
    __slots__ = ("W", "Wt", "A", "At", "B", "Bt", "scale", "gW", "gA", "gB")

    def __init__(self, W):
        # Transposed *views* made once: they follow in-place updates of the flat buffer.
        self.W, self.Wt = W, W.t()
        self.A = self.At = self.B = self.Bt = self.scale = None
        self.gW = self.gA = self.gB = None


class TutorialMLPStep:
    """``step(x, y) -> loss`` writing the gradients of the trainable state into ``state.grad``."""

    def __init__(self, layers: list[_Layer], head: nn.Linear, g_head_w, g_head_b) -> None:
        self.layers, self.head = layers, head
        self.g_head_w, self.g_head_b = g_head_w, g_head_b
        self.head_wt = head.weight.t()
        # Backpropagate below the head only as deep as the lowest layer with trainable tensors.
        trains = [i for i, layer in enumerate(layers) if layer.gW is not None or layer.gA is not None]
        self.lowest = min(trains) if trains else len(layers)

    @classmethod
    def build(cls, model: nn.Module, state: FlatParams) -> TutorialMLPStep | None:
        """The step for the tutorial MLP (``architecture == "mlp"``) or a bare head on cached
        features (``"head"``), or None when the model or its trainable set is not covered."""
        if model.architecture not in ("mlp", "head") or model.head_name != "head":
            return None
        if type(model.head) is not nn.Linear or model.head.bias is None:
            return None
        grads = state.views(state.grad)
        used = set()
        layers = []
        for i, mod in enumerate(model.layers if model.architecture == "mlp" else ()):
            if isinstance(mod, LoRALinear):
                base, prefix = mod.base, f"layers.{i}.base."
            elif type(mod) is nn.Linear:
                base, prefix = mod, f"layers.{i}."
            else:
                return None
            if type(base) is not nn.Linear or base.bias is not None:
                return None
            layer = _Layer(base.weight)
            if prefix + "weight" in grads:
                layer.gW = grads[prefix + "weight"]
                used.add(prefix + "weight")
            if isinstance(mod, LoRALinear):
                a, b = f"layers.{i}.lora_A", f"layers.{i}.lora_B"
                if (a in grads) != (b in grads):
                    return None
                # a 0-d tensor, not a Python float: no scalar wrapping per call, the same bits
                layer.A, layer.B = mod.lora_A, mod.lora_B
                layer.scale = torch.tensor(mod.scale, dtype=mod.lora_A.dtype)
                layer.At, layer.Bt = mod.lora_A.t(), mod.lora_B.t()
                if a in grads:
                    layer.gA, layer.gB = grads[a], grads[b]
                    used.update((a, b))
            layers.append(layer)
        g_head_w, g_head_b = grads.get("head.weight"), grads.get("head.bias")
        if (g_head_w is None) != (g_head_b is None):
            return None
        used.update(n for n in ("head.weight", "head.bias") if n in grads)
        if used != set(state.names):
            return None
        return cls(layers, model.head, g_head_w, g_head_b)

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled():  # train_client turns grad mode off once per client
            with torch.no_grad():
                return self._step(x, y)
        return self._step(x, y)

    def _step(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        inputs, lora_mid = [], []
        h = x
        for layer in self.layers:
            inputs.append(h)
            z = h.mm(layer.Wt)
            if layer.A is not None:
                xa = h.mm(layer.A)
                lora_mid.append(xa)
                # the tutorial's order: linear(x, W) + ((x @ A) @ B) * scale (in place: same bits)
                z.add_(xa.mm(layer.B).mul_(layer.scale))
            else:
                lora_mid.append(None)
            h = z.relu_()
        inputs.append(h)
        head = self.head
        logits = torch.addmm(head.bias, h, self.head_wt)
        logp = torch._log_softmax(logits, 1, False)
        loss, total_weight = aten.nll_loss_forward(logp, y, None, 1, -100)

        g = aten.nll_loss_backward(_ONE, logp, y, None, 1, -100, total_weight)
        g = torch._log_softmax_backward_data(g, logp, 1, torch.float32)
        if self.g_head_w is not None:
            torch.sum(g, 0, out=self.g_head_b)
            torch.mm(g.t(), h, out=self.g_head_w)
        if self.lowest == len(self.layers):
            return loss
        gh = g.mm(head.weight)
        for i in range(len(self.layers) - 1, self.lowest - 1, -1):
            layer = self.layers[i]
            gz = aten.threshold_backward(gh, inputs[i + 1], 0)
            h_in = inputs[i]
            gxa = None
            if layer.A is not None:
                glo = gz.mul(layer.scale)
                gxa = glo.mm(layer.Bt)
                if layer.gA is not None:
                    torch.mm(lora_mid[i].t(), glo, out=layer.gB)
                    torch.mm(h_in.t(), gxa, out=layer.gA)
            if layer.gW is not None:
                torch.mm(gz.t(), h_in, out=layer.gW)
            if i > self.lowest:
                gh = gz.mm(layer.W)
                if gxa is not None:
                    gh = gh + gxa.mm(layer.At)
        return loss


def fast_step(model: nn.Module, state: FlatParams) -> TutorialMLPStep | None:
    """The hand-written step for this model and trainable state, or None (autograd trains)."""
    return TutorialMLPStep.build(model, state)
