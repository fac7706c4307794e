"""Per-client evaluation: the global model scored on every client's held-out split.

All clients' splits are concatenated once and pushed through the model in batches of the
evaluation batch size (one pass, not one per client); per-row correctness and loss are then
summed per client. With the feature cache, the splits are the cached features and the model is
the head alone, so a round's per-client evaluation costs one small matmul.

The row gets the distribution over clients (each client counts once, whatever its size):
``client_acc_mean``, ``client_acc_std`` (population), ``client_acc_p10`` (10th percentile,
numpy's linear interpolation: the worst clients) and ``client_acc_min``; the per-client values
go to ``client_metrics.parquet`` (:class:`fedbench.results.ClientMetricsWriter`).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fedbench.results import CLIENT_COLUMNS


class ClientEvaluator:
    """Scores a model on clients' held-out splits ``[(x, y), ...]`` (client id = position)."""

    def __init__(self, splits: list[tuple[torch.Tensor, torch.Tensor]], batch_size: int = 64) -> None:
        self.counts = [len(y) for _, y in splits]
        self.x = torch.cat([x for x, _ in splits])
        self.y = torch.cat([y for _, y in splits])
        self.batch_size = batch_size
        self.owner = torch.repeat_interleave(
            torch.arange(len(splits)), torch.tensor(self.counts, dtype=torch.long)
        )

    @torch.inference_mode()
    def __call__(self, model: nn.Module) -> tuple[dict, list[dict]]:
        """(the row's summary columns, one dict per client: client, samples, accuracy, loss)."""
        model.eval()
        n, bs = len(self.y), self.batch_size
        logits = torch.cat([model(self.x[i : i + bs]) for i in range(0, n, bs)])
        correct = (logits.argmax(dim=1) == self.y).double()
        loss = F.cross_entropy(logits, self.y, reduction="none").double()
        k = len(self.counts)
        sizes = torch.tensor(self.counts, dtype=torch.float64)
        acc = torch.zeros(k, dtype=torch.float64).index_add_(0, self.owner, correct) / sizes
        mean_loss = torch.zeros(k, dtype=torch.float64).index_add_(0, self.owner, loss) / sizes
        a = acc.numpy()
        summary = {
            "client_acc_mean": float(a.mean()),
            "client_acc_std": float(a.std()),
            "client_acc_p10": float(np.percentile(a, 10)),
            "client_acc_min": float(a.min()),
        }
        per_client = [
            {"client": c, "samples": self.counts[c], "accuracy": float(a[c]), "loss": float(mean_loss[c])}
            for c in range(k)
        ]
        return summary, per_client


def empty_summary() -> dict:
    """The summary columns of a round without per-client evaluation."""
    return dict.fromkeys(CLIENT_COLUMNS, float("nan"))
