"""Local training on one client, drawing from torch's RNG exactly as a shuffling DataLoader.

``DataLoader(shuffle=True)`` draws two int64 seeds from torch's global generator per epoch
(the iterator's base seed, then the RandomSampler's seed, from which a private generator makes
the permutation); an unshuffled evaluation loader draws one. Replaying those draws and slicing
batches from the client's tensors gives the same batches without per-sample collation.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from fedbench.fl.loss import TokenMetrics, task_loss
from fedbench.fl.optim import FlatAdamW
from fedbench.fl.state import FlatParams


def consume_loader_seed() -> None:
    """The base-seed draw every DataLoader iterator makes (shuffled or not)."""
    torch.empty((), dtype=torch.int64).random_()


def shuffled_order(n: int) -> torch.Tensor:
    """The permutation a fresh ``DataLoader(shuffle=True)`` iterator would use."""
    consume_loader_seed()
    seed = int(torch.empty((), dtype=torch.int64).random_().item())
    gen = torch.Generator()
    gen.manual_seed(seed)
    return torch.randperm(n, generator=gen)


def train_client(
    model: nn.Module,
    state: FlatParams,
    opt: FlatAdamW,
    x: torch.Tensor,
    y: torch.Tensor,
    epochs: int,
    batch_size: int,
    step: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    prox: tuple[float, torch.Tensor] | None = None,
    order: Callable[[int], torch.Tensor] | None = None,
) -> float:
    """Train the live parameters in place; returns the mean batch loss.

    ``step(xb, yb)``, when given, computes the loss and writes the gradients into
    ``state.grad`` itself (a model's hand-written step); otherwise autograd does.
    ``prox=(mu, w0)`` adds FedProx's proximal term mu/2 ||w - w0||^2 (its gradient
    mu (w - w0)) to the local objective. ``order(epoch)`` gives each epoch's sample order
    (default: the tutorial's DataLoader draws, :func:`shuffled_order`).
    """
    model.train()
    order = order or (lambda epoch: shuffled_order(len(y)))
    if step is not None:
        with torch.no_grad():
            return _train_loop(model, state, opt, x, y, epochs, batch_size, step, prox, order)
    return _train_loop(model, state, opt, x, y, epochs, batch_size, None, prox, order)


def _train_loop(model, state, opt, x, y, epochs, batch_size, step, prox, epoch_order) -> float:
    n = len(y)
    total, batches = 0.0, 0
    device = state.flat.device  # batches go where the model lives (device=)
    on_cpu = device.type == "cpu"
    for epoch in range(epochs):
        order = epoch_order(epoch)
        # One gather per epoch; each batch is then a contiguous row slice (the same values, and
        # the same row-major layout, as gathering the batch on its own).
        xs, ys = x.index_select(0, order), y.index_select(0, order)
        for start in range(0, n, batch_size):
            xb, yb = xs[start : start + batch_size], ys[start : start + batch_size]
            if not on_cpu:
                xb, yb = xb.to(device, non_blocking=True), yb.to(device, non_blocking=True)
            if step is not None:
                loss = step(xb, yb)
            else:
                state.grad.zero_()
                loss = task_loss(model(xb), yb)
                loss.backward()
            if prox is not None:
                mu, w0 = prox
                state.grad.add_(state.flat - w0, alpha=mu)
            opt.step()
            total += loss.item()
            batches += 1
    return total / batches


@torch.inference_mode()
def evaluate(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 64, draw_loader_seed: bool = True
) -> tuple[float, float]:
    """(accuracy, mean cross-entropy) on a test set.

    Batched like the tutorial's evaluation DataLoader (64 rows), since a matmul's blocking, and
    so its last bits, can depend on the number of rows. ``draw_loader_seed``: make the draw the
    tutorial's (unshuffled) evaluation DataLoader makes from torch's global RNG (rng=tutorial).
    """
    if draw_loader_seed:
        consume_loader_seed()
    model.eval()
    device = _device_of(model)
    if y.dim() > 1:  # next-token targets [n, L]: streamed, token-weighted (fedbench.fl.loss)
        metrics = TokenMetrics()
        for i in range(0, len(y), batch_size):
            metrics.add(model(x[i : i + batch_size].to(device)), y[i : i + batch_size])
        return metrics.accuracy, metrics.loss
    if device.type != "cpu":
        x, y = x.to(device), y.to(device)
    logits = torch.cat([model(x[i : i + batch_size]) for i in range(0, len(y), batch_size)])
    correct = (logits.argmax(dim=1) == y).sum().item()
    return correct / len(y), F.cross_entropy(logits, y).item()


def _device_of(model: nn.Module) -> torch.device:
    """Where the model's parameters live (CPU for a model without any)."""
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")
