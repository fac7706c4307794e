"""Partitioners: every sample in exactly one client, determinism, min size, real label skew."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from fedbench.config import ConfigError
from fedbench.data import FederatedData
from fedbench.data.partition import label_histogram, partition, plot_label_histogram

# An imbalanced 5-class pool, like BBC's sections.
LABELS = np.repeat(np.arange(5), [410, 310, 330, 410, 320])
np.random.default_rng(7).shuffle(LABELS)

CASES = [
    ("iid", {}),
    ("dirichlet", {"alpha": 0.1}),
    ("dirichlet", {"alpha": 0.5}),
    ("dirichlet", {"alpha": 100.0}),
    ("shards", {"shards_per_client": 1}),
    ("shards", {"shards_per_client": 2}),
    ("shards", {"shards_per_client": 3}),
]


def _histogram(parts, labels, classes=5):
    return np.stack([np.bincount(labels[p], minlength=classes) for p in parts])


@pytest.mark.parametrize("method,kw", CASES)
@pytest.mark.parametrize("clients", [3, 10, 20])
def test_every_sample_in_exactly_one_client(method, kw, clients):
    if method == "shards" and clients * kw["shards_per_client"] < 5:
        pytest.skip("refused: some class would have no client (tested below)")
    parts = partition(LABELS, clients, method, seed=3, min_size=5, **kw)
    assert len(parts) == clients
    together = np.concatenate(parts)
    assert len(together) == len(LABELS)
    assert np.array_equal(np.sort(together), np.arange(len(LABELS)))
    assert all(p.dtype == np.int64 and np.all(np.diff(p) > 0) for p in parts)  # sorted, no repeats
    assert min(len(p) for p in parts) >= 5


@pytest.mark.parametrize("method,kw", CASES)
def test_deterministic_for_a_seed_and_seed_matters(method, kw):
    a = partition(LABELS, 10, method, seed=11, **kw)
    b = partition(LABELS, 10, method, seed=11, **kw)
    c = partition(LABELS, 10, method, seed=12, **kw)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c))


def test_partition_leaves_global_rngs_alone():
    torch.manual_seed(0)
    np.random.seed(0)
    t0, n0 = torch.get_rng_state(), np.random.get_state()[1].copy()
    partition(LABELS, 10, "dirichlet", alpha=0.3, seed=1)
    assert torch.equal(torch.get_rng_state(), t0)
    assert np.array_equal(np.random.get_state()[1], n0)


def test_iid_sizes_equal_and_labels_balanced():
    parts = partition(LABELS, 10, "iid", seed=0)
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) <= 1
    share = _histogram(parts, LABELS) / np.array(sizes)[:, None]
    overall = np.bincount(LABELS) / len(LABELS)
    assert np.abs(share - overall).max() < 0.12


def _skew(parts, labels):
    """Mean total-variation distance between a client's label distribution and the pool's."""
    h = _histogram(parts, labels).astype(float)
    p = h / h.sum(1, keepdims=True)
    q = np.bincount(labels) / len(labels)
    return float(0.5 * np.abs(p - q).sum(1).mean())


def test_dirichlet_label_skew_grows_as_alpha_shrinks():
    skew = {
        a: np.mean([_skew(partition(LABELS, 10, "dirichlet", alpha=a, seed=s), LABELS) for s in range(3)])
        for a in (0.05, 0.5, 100.0)
    }
    iid = np.mean([_skew(partition(LABELS, 10, "iid", seed=s), LABELS) for s in range(3)])
    assert skew[0.05] > skew[0.5] > skew[100.0]
    assert skew[0.05] > 0.5  # most clients are dominated by one class
    assert skew[100.0] < 0.1 and iid < 0.1


def test_dirichlet_min_size_is_guaranteed_even_when_draws_fail():
    # alpha tiny, 40 clients, min 30 of 1,780: Dirichlet draws essentially never satisfy this, so
    # the fix-up moves samples; it must still hold every sample exactly once.
    parts = partition(LABELS, 40, "dirichlet", alpha=0.01, min_size=30, seed=0)
    assert min(len(p) for p in parts) >= 30
    assert np.array_equal(np.sort(np.concatenate(parts)), np.arange(len(LABELS)))


@pytest.mark.parametrize("k", [1, 2, 3, 5])
def test_shards_give_each_client_exactly_k_classes(k):
    parts = partition(LABELS, 10, "shards", shards_per_client=k, seed=4)
    h = _histogram(parts, LABELS)
    assert ((h > 0).sum(1) == k).all()
    # every class is spread over its holders evenly (sizes within a class differ by <= 1)
    for c in range(5):
        held = h[:, c][h[:, c] > 0]
        assert held.max() - held.min() <= 1


@pytest.mark.parametrize(
    "args,key",
    [
        (dict(method="nope"), "data.partition"),
        (dict(method="dirichlet", alpha=0.0), "data.alpha"),
        (dict(method="shards", shards_per_client=6), "data.shards_per_client"),
        (dict(method="shards", shards_per_client=1, clients=4), "data.shards_per_client"),  # class unowned
        (dict(method="iid", min_size=200, clients=10), "data.min_size"),
        (dict(method="iid", min_size=0), "data.min_size"),
    ],
)
def test_impossible_settings_are_refused(args, key):
    clients = args.pop("clients", 10)
    method = args.pop("method")
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        partition(LABELS[:1500], clients, method, seed=0, **args)


def test_shards_min_size_unreachable_is_a_clear_error():
    # 1 class per client, 5 classes over 8 clients: some class is split 2-way, another 1-way;
    # demanding more than the smallest share is refused, not silently violated.
    with pytest.raises(ConfigError, match="min_size"):
        partition(LABELS, 8, "shards", shards_per_client=1, min_size=200, seed=0)


def test_label_histogram_and_plot(tmp_path):
    parts = partition(LABELS, 4, "shards", shards_per_client=2, seed=0)
    y = torch.from_numpy(LABELS)
    data = FederatedData(
        clients=[(torch.zeros(len(p), 1), y[torch.from_numpy(p)]) for p in parts],
        test=(torch.zeros(50, 1), y[:50]),
        num_classes=5,
        partition="shards",
    )
    df = label_histogram(data)
    assert list(df.columns) == ["client", "size"] + [f"label_{i}" for i in range(5)]
    assert df["client"].tolist() == ["0", "1", "2", "3", "test"]
    assert df.loc[:3, "size"].sum() == len(LABELS)
    assert (df.loc[:3, [f"label_{i}" for i in range(5)]].to_numpy() == _histogram(parts, LABELS)).all()
    csv = tmp_path / "clients.csv"
    df.to_csv(csv, index=False)
    for src in (df, csv):
        out = plot_label_histogram(src, tmp_path / f"h_{type(src).__name__}.png", title="t")
        assert out.is_file() and out.stat().st_size > 1000
    assert pd.read_csv(csv, dtype={"client": str})["client"].tolist()[-1] == "test"


def test_plot_partition_script(tmp_path):
    """scripts/plot_partition.py: a run folder's clients.parquet, an older run's clients.csv, a
    config given as overrides, and a bad argument (one line, exit 2)."""
    import subprocess
    import sys

    from conftest import ROOT, TINY_MLP, compose_cfg

    from fedbench.results import read_label_histogram
    from fedbench.run import run

    def plot(*args):
        return subprocess.run(
            [sys.executable, str(ROOT / "scripts" / "plot_partition.py"), *args],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=300,
        )

    run(compose_cfg(TINY_MLP), out_dir=tmp_path / "run")
    res = plot(str(tmp_path / "run"))
    assert res.returncode == 0, res.stderr[-2000:]
    assert (tmp_path / "run" / "clients.png").stat().st_size > 1000
    old = tmp_path / "old"
    old.mkdir()
    read_label_histogram(tmp_path / "run").to_csv(old / "clients.csv", index=False)
    assert plot(str(old)).returncode == 0 and (old / "clients.png").is_file()
    res = plot("fl.num_clients=4", "fl.clients_per_round=2", "data.samples_per_client=20", "-o", "p.png")
    assert res.returncode == 0, res.stderr[-2000:]
    assert len(pd.read_csv(tmp_path / "p.csv")) == 5 and (tmp_path / "p.png").is_file()
    for bad in ([str(tmp_path / "missing")], ["data=nope"]):
        res = plot(*bad)
        assert res.returncode == 2 and res.stderr.count("\n") == 1, res.stderr
