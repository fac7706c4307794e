"""AdamW on one flat vector, op for op torch's single-tensor (CPU default) AdamW.

Elementwise ops give the same bits on one flat tensor as on the per-parameter tensors, so this
reproduces ``torch.optim.AdamW(params)`` exactly (``tests/test_optim.py`` checks it) with one
Python step instead of a loop over parameters. ``fused=True`` would not be bit-identical.
"""

from __future__ import annotations

import torch


class FlatAdamW:
    def __init__(
        self,
        param: torch.Tensor,
        grad: torch.Tensor,
        lr: float,
        betas=(0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.01,
    ) -> None:
        self.param, self.grad = param, grad
        self.lr, self.beta1, self.beta2 = lr, betas[0], betas[1]
        self.eps, self.weight_decay = eps, weight_decay
        self.exp_avg = torch.zeros_like(param)
        self.exp_avg_sq = torch.zeros_like(param)
        self._denom = torch.empty_like(param)
        self.steps = 0
        # The scalar operands as 0-d tensors of the param's dtype, made once: a Python float is
        # wrapped and converted on every call (~1.5 us each). The kernels read the same float32
        # value either way (the same bits; tests/test_optim.py).
        self._const = {}
        self._bc2_sqrt: list[torch.Tensor] = []

    def _scalar(self, value: float) -> torch.Tensor:
        t = self._const.get(value)
        if t is None:
            t = self._const[value] = torch.tensor(value, dtype=self.param.dtype)
        return t

    def reset(self) -> None:
        """Fresh optimizer state (the tutorial builds a new AdamW per client per round)."""
        self.exp_avg.zero_()
        self.exp_avg_sq.zero_()
        self.steps = 0

    def step(self) -> None:
        # ``param`` is the flat buffer itself, not a leaf that requires grad: no autograd here.
        p, g = self.param, self.grad
        lr, beta1, beta2 = self.lr, self.beta1, self.beta2
        self.steps += 1
        step = float(self.steps)
        if self.weight_decay != 0:
            p.mul_(self._scalar(1 - lr * self.weight_decay))
        self.exp_avg.lerp_(g, 1 - beta1)
        self.exp_avg_sq.mul_(self._scalar(beta2)).addcmul_(g, g, value=1 - beta2)
        bias_correction1 = 1 - beta1**step
        step_size = lr / bias_correction1
        # (exp_avg_sq.sqrt() / bc2_sqrt) + eps, into a reused buffer (same ops, same bits)
        denom = torch.sqrt(self.exp_avg_sq, out=self._denom).div_(self._bias_correction2_sqrt())
        denom.add_(self._scalar(self.eps))
        p.addcdiv_(self.exp_avg, denom, value=-step_size)

    def _bias_correction2_sqrt(self) -> torch.Tensor:
        """(1 - beta2^step)^0.5 as a 0-d tensor, cached per step number (local training restarts
        at step 1 for every client, so a few dozen values serve a whole run)."""
        while len(self._bc2_sqrt) < self.steps:
            step = float(len(self._bc2_sqrt) + 1)
            self._bc2_sqrt.append(torch.tensor((1 - self.beta2**step) ** 0.5, dtype=self.param.dtype))
        return self._bc2_sqrt[self.steps - 1]
