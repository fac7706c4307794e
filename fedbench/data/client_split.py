"""Each client's held-out split, for per-client evaluation (``data.client_test_fraction``), and
the validation split that tuning evaluates on instead of the test set (``data.validation_fraction``).

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
VALIDATION_KEY = "data.validation_fraction"


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


# -- the validation split (tuning) --------------------------------------------------------------
def check_validation_fraction(
    value: float, smallest_client: int | None = None, test_fraction: float = 0.0
) -> None:
    """Refuse a fraction outside [0, 1), or one that leaves the smallest client (``smallest_client``
    samples, before ``client_test_fraction`` is held out) nothing to train on."""
    if not 0.0 <= value < 1.0:
        raise ConfigError(
            VALIDATION_KEY, "must be a fraction in [0, 1) (0 = evaluate on the test set)", value
        )
    if value == 0.0 or smallest_client is None:
        return
    n = smallest_client
    if test_fraction > 0.0:
        n -= max(1, int(test_fraction * n))
    if n - max(1, int(value * n)) < 1:
        raise ConfigError(
            VALIDATION_KEY,
            f"leaves a client of {smallest_client} samples with no training data; use a smaller "
            "fraction or give clients more samples",
            value,
        )


def carve_validation(data: FederatedData, fraction: float, seed: int) -> FederatedData:
    """``data`` with ``max(1, floor(fraction * n))`` of each client's ``n`` training samples
    moved into one pooled validation set, which replaces the test set (``evaluated_on`` =
    ``validation``): a run that tunes on it never evaluates on the test set, nor on the clients'
    held-out test splits (per-client evaluation is off). Which samples: a permutation from the
    client's ``validation_split`` stream, so the split is the same under ``rng=paired`` and
    ``rng=tutorial`` and no other draw moves. Unchanged if ``fraction`` is 0."""
    check_validation_fraction(fraction)
    if fraction == 0.0:
        return data
    if not isinstance(data.clients, list):
        raise ConfigError(
            VALIDATION_KEY,
            "needs clients held in memory; data made on demand (e.g. data=tutorial_lazy) has no "
            "validation split, set it to 0",
            fraction,
        )
    clients, xs, ys = [], [], []
    for c, (x, y) in enumerate(data.clients):
        n = len(y)
        k = max(1, int(fraction * n))
        if n - k < 1:
            raise ConfigError(
                VALIDATION_KEY,
                f"leaves client {c} ({n} samples) with no training data; use a smaller fraction",
                fraction,
            )
        perm = torch.randperm(n, generator=torch_generator(seed, "validation_split", c))
        val_idx, train_idx = perm[:k].sort().values, perm[k:].sort().values
        clients.append((x[train_idx], y[train_idx]))
        xs.append(x[val_idx])
        ys.append(y[val_idx])
    return dataclasses.replace(
        data,
        clients=clients,
        test=(torch.cat(xs), torch.cat(ys)),
        client_tests=None,
        evaluated_on="validation",
    )
