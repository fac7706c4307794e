"""Each client's held-out split, for per-client evaluation (``data.client_test_fraction``).

After a dataset is built and partitioned, every client keeps ``max(1, floor(fraction * n))``
of its ``n`` samples as its own test set (a permutation from the client's ``client_split``
stream, :mod:`fedbench.rng`) and trains on the rest, in the original order. The global model
is then scored on every client's split (:mod:`fedbench.fl.client_eval`), which shows what a
pooled test set hides under non-IID partitions: the spread over clients and the worst ones.
"""

from __future__ import annotations

import dataclasses

import torch

from fedbench.data import FederatedData
from fedbench.errors import ConfigError
from fedbench.rng import torch_generator

KEY = "data.client_test_fraction"


def check_fraction(value: float) -> None:
    if not 0.0 <= value < 1.0:
        raise ConfigError(KEY, "must be a fraction in [0, 1) (0 = no per-client evaluation)", value)


def hold_out(data: FederatedData, fraction: float, seed: int) -> FederatedData:
    """``data`` with each client's held-out split moved into ``client_tests`` (unchanged if 0)."""
    check_fraction(fraction)
    if fraction == 0.0:
        return data
    if not isinstance(data.clients, list):
        raise ConfigError(
            KEY,
            "needs clients held in memory; data made on demand (e.g. data=tutorial_lazy) "
            "has no per-client evaluation, set it to 0",
            fraction,
        )
    clients, tests = [], []
    for c, (x, y) in enumerate(data.clients):
        n = len(y)
        k = max(1, int(fraction * n))
        if n - k < 1:
            raise ConfigError(
                KEY,
                f"leaves client {c} ({n} samples) with no training data; use a smaller fraction "
                "or give clients more samples",
                fraction,
            )
        perm = torch.randperm(n, generator=torch_generator(seed, "client_split", c))
        test_idx, train_idx = perm[:k].sort().values, perm[k:].sort().values
        clients.append((x[train_idx], y[train_idx]))
        tests.append((x[test_idx], y[test_idx]))
    return dataclasses.replace(data, clients=clients, client_tests=tests)
