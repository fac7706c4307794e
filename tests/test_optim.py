"""FlatAdamW is bit-identical to torch.optim.AdamW (CPU default, single-tensor)."""

from __future__ import annotations

import torch

from fedbench.fl.optim import FlatAdamW


def test_flat_adamw_bitwise_equal_to_torch():
    g = torch.Generator().manual_seed(0)
    shapes = [(7, 3), (3,), (5, 5, 2), (1,)]
    ref = [torch.randn(s, generator=g).requires_grad_() for s in shapes]
    flat = torch.cat([p.detach().reshape(-1) for p in ref]).clone()
    grad = torch.zeros_like(flat)
    torch_opt = torch.optim.AdamW(ref, lr=3e-3, weight_decay=0.05)
    ours = FlatAdamW(flat, grad, lr=3e-3, weight_decay=0.05)
    for step in range(25):
        grads = [torch.randn(s, generator=g) * (step + 1) for s in shapes]
        for p, gr in zip(ref, grads):
            p.grad = gr.clone()
        grad.copy_(torch.cat([gr.reshape(-1) for gr in grads]))
        torch_opt.step()
        ours.step()
        expected = torch.cat([p.detach().reshape(-1) for p in ref])
        assert torch.equal(flat, expected), f"diverged at step {step}"


def test_reset_restarts_the_optimizer():
    flat = torch.ones(4)
    grad = torch.full((4,), 0.5)
    opt = FlatAdamW(flat, grad, lr=0.1)
    opt.step()
    first = flat.clone()
    flat.fill_(1.0)
    opt.reset()
    opt.step()
    assert torch.equal(flat, first)
