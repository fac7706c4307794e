"""The round's batches for the vectorised engine: every local step of every selected client,
gathered up front.

Each client's batches are the exact engine's batches: the engine hands over the same shuffles
(:meth:`~fedbench.fl.engine.Engine.shuffles`, drawn client by client, epoch by epoch). Clients of unequal size are
handled by ordering them by number of local steps: at every step the clients still training are
a prefix of the stack, and rows past a client's last batch of an epoch are padding with zero
loss weight.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class StepBatch:
    """One local step of the ``m`` clients still training: ``B`` rows each, client-major."""

    m: int
    B: int
    x: torch.Tensor  # [m * B, ...]
    y: torch.Tensor  # [m * B]
    w: torch.Tensor | None  # [m * B, 1] loss weight per row (1/rows or 0 for padding); None: all 1/B
    # [m * B, C]: -w * onehot(y), i.e. d(per-client mean loss)/d(log-probabilities) (if C is known)
    target: torch.Tensor | None = None

    def to(self, device: torch.device) -> StepBatch:
        """The same step with its tensors on ``device`` (device=)."""

        def move(t):
            return None if t is None else t.to(device, non_blocking=True)

        return StepBatch(self.m, self.B, move(self.x), move(self.y), move(self.w), move(self.target))


class RoundPlan:
    """Every local step of the round's clients, gathered up front.

    ``clients`` are ``(x, y)`` of the selected clients in selection order, ``orders[k][e]`` client
    k's sample order in epoch e (under rng=tutorial they are drawn from torch's global RNG, so
    they must be drawn exactly when the exact engine would train: after the downlink, before
    evaluation).
    """

    def __init__(
        self,
        clients: list[tuple[torch.Tensor, torch.Tensor]],
        orders: list[list[torch.Tensor]],
        batch_size: int,
        num_classes: int | None = None,
    ) -> None:
        sizes = [len(y) for _, y in clients]
        epochs = len(orders[0])
        per_epoch = [-(-n // batch_size) for n in sizes]
        steps = [e * epochs for e in per_epoch]
        # Longest first (stable): the clients still training at any step are a prefix.
        self.perm = sorted(range(len(clients)), key=lambda k: -steps[k])
        self.steps = [steps[k] for k in self.perm]
        self.batches_per_client = self.steps
        K, T, bs = len(clients), max(steps), batch_size
        offsets = np.cumsum([0] + [sizes[k] for k in self.perm])
        pad_row = int(offsets[-1])  # index of an all-zero row appended to the data
        idx = torch.full((T, K, bs), pad_row, dtype=torch.long)
        rows = torch.zeros((T, K), dtype=torch.long)
        for j, k in enumerate(self.perm):
            n = sizes[k]
            full = torch.full((per_epoch[k] * bs,), -1, dtype=torch.long)
            for e in range(epochs):
                full[:n] = orders[k][e] + int(offsets[j])
                grid = full.view(per_epoch[k], bs)
                t0 = e * per_epoch[k]
                idx[t0 : t0 + per_epoch[k], j] = torch.where(grid >= 0, grid, pad_row)
                counts = torch.full((per_epoch[k],), bs, dtype=torch.long)
                counts[-1] = n - (per_epoch[k] - 1) * bs
                rows[t0 : t0 + per_epoch[k], j] = counts
        xs = [clients[k][0] for k in self.perm]
        ys = [clients[k][1] for k in self.perm]
        x_all = torch.cat([*xs, xs[0].new_zeros((1, *xs[0].shape[1:]))])
        y_all = torch.cat([*ys, ys[0].new_zeros(1)])
        X, Y = x_all[idx], y_all[idx]  # [T, K, bs, ...]
        # loss weight of every row: 1/rows of its batch, 0 for padding
        W = (torch.arange(bs) < rows.unsqueeze(-1)).float() / rows.clamp(min=1).unsqueeze(-1).float()
        target = None
        if num_classes is not None:  # -w * onehot(y), all steps at once
            target = torch.zeros((T, K, bs, num_classes)).scatter_(3, Y.unsqueeze(-1), -W.unsqueeze(-1))
        self.batches: list[StepBatch] = []
        for t in range(T):
            m = sum(1 for s in self.steps if s > t)
            r = rows[t, :m]
            B = int(r.max())
            xt, yt = X[t, :m, :B], Y[t, :m, :B]
            w = None
            if bool((r != B).any()):
                w = W[t, :m, :B].reshape(m * B, 1)
            tg = None if target is None else target[t, :m, :B].reshape(m * B, num_classes)
            self.batches.append(
                StepBatch(
                    m, B, xt.reshape(m * B, *xt.shape[2:]).contiguous(), yt.reshape(m * B).contiguous(), w, tg
                )
            )
