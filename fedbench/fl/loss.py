"""The training objective and the evaluation metrics, shared by training, evaluation and the FLOP
counter, so that all three compute the same loss for every task.

Two tasks, told apart by the shape of the logits:

- classification: logits ``[n, classes]``, labels ``[n]`` -- cross-entropy, accuracy;
- next-token prediction (causal LMs, :mod:`fedbench.models.causal_lm`): logits ``[n, L, vocab]``,
  targets ``[n, L]`` with ``IGNORE`` (-100) where no token is predicted (padding, prompts of
  instruction data) -- the mean cross-entropy over predicted tokens, next-token accuracy, and
  perplexity ``exp(mean token loss)``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

IGNORE = -100  # a target that is not predicted (as transformers' labels)


def task_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The mean loss of a batch: cross-entropy over classes, or over predicted tokens."""
    if logits.dim() == 3:
        return F.cross_entropy(
            logits.reshape(-1, logits.shape[-1]).float(), y.reshape(-1).to(logits.device), ignore_index=IGNORE
        )
    return F.cross_entropy(logits, y)


class TokenMetrics:
    """Streaming next-token metrics: sums over batches, so that a test set's logits
    ([n, L, vocab], 49k wide for SmolLM2) never exist all at once."""

    def __init__(self) -> None:
        self.loss_sum, self.correct, self.tokens = 0.0, 0, 0

    def add(self, logits: torch.Tensor, y: torch.Tensor) -> None:
        y = y.to(logits.device)
        mask = y != IGNORE
        flat = logits.reshape(-1, logits.shape[-1]).float()
        loss = F.cross_entropy(flat, y.reshape(-1), ignore_index=IGNORE, reduction="sum")
        self.loss_sum += float(loss)
        self.correct += int(((logits.argmax(dim=-1) == y) & mask).sum())
        self.tokens += int(mask.sum())

    @property
    def loss(self) -> float:
        return self.loss_sum / self.tokens if self.tokens else math.nan

    @property
    def accuracy(self) -> float:
        return self.correct / self.tokens if self.tokens else math.nan


def perplexity(loss: float) -> float:
    """``exp(loss)`` of a mean token loss (inf past float range; NaN stays NaN)."""
    if loss != loss:
        return math.nan
    return math.exp(loss) if loss < 700 else math.inf
