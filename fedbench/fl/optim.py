"""AdamW on one flat vector, op for op torch's single-tensor (CPU default) AdamW.

Elementwise ops give the same bits on one flat tensor as on the per-parameter tensors, so this
reproduces ``torch.optim.AdamW(params)`` exactly (``tests/test_optim.py`` checks it) with one
Python step instead of a loop over parameters. ``fused=True`` would not be bit-identical.
"""

from __future__ import annotations

import torch


class FlatAdamW:
    def __init__(self, param: torch.Tensor, grad: torch.Tensor, lr: float, betas=(0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.01) -> None:
        self.param, self.grad = param, grad
        self.lr, self.beta1, self.beta2 = lr, betas[0], betas[1]
        self.eps, self.weight_decay = eps, weight_decay
        self.exp_avg = torch.zeros_like(param)
        self.exp_avg_sq = torch.zeros_like(param)
        self._denom = torch.empty_like(param)
        self.steps = 0

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
            p.mul_(1 - lr * self.weight_decay)
        self.exp_avg.lerp_(g, 1 - beta1)
        self.exp_avg_sq.mul_(beta2).addcmul_(g, g, value=1 - beta2)
        bias_correction1 = 1 - beta1**step
        bias_correction2 = 1 - beta2**step
        step_size = lr / bias_correction1
        bias_correction2_sqrt = bias_correction2**0.5
        # (exp_avg_sq.sqrt() / bc2_sqrt) + eps, into a reused buffer (same ops, same bits)
        denom = torch.sqrt(self.exp_avg_sq, out=self._denom).div_(bias_correction2_sqrt).add_(self.eps)
        p.addcdiv_(self.exp_avg, denom, value=-step_size)
