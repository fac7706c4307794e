"""Server strategies: FedProx, FedAvgM and the adaptive server optimizers of Reddi et al. 2021,
their state in checkpoints, and bit-exact resume with server state and error feedback."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
from conftest import StopAfter, compose_cfg

from fedbench import checkpoint
from fedbench.config import ConfigError
from fedbench.fl.strategies import FedAdagrad, FedAdam, FedAvg, FedAvgM, FedProx, FedYogi
from fedbench.run import run

SMALL = [
    "fl.num_rounds=6",
    "fl.clients_per_round=3",
    "model.hidden_dim=64",
    "model.num_layers=2",
    "threads=1",
]
TIMING = ["wall_s", "elapsed_s"]


def _updates(seed, k=3):
    g = torch.Generator().manual_seed(seed)
    return [
        (int(n), {"w": torch.randn(4, 3, generator=g), "b": torch.randn(5, generator=g)})
        for n in torch.randint(10, 100, (k,), generator=g)
    ]


def _mean(updates):
    total = sum(n for n, _ in updates)
    return {k: sum(n / total * u[k].double() for n, u in updates) for k in updates[0][1]}


def _reference(kind, rounds, lr, b1, b2, tau, momentum=0.9):
    """Reddi et al. 2021, Algorithm 2 (and FedAvgM), written out in float64."""
    w = {"w": torch.zeros(4, 3, dtype=torch.float64), "b": torch.zeros(5, dtype=torch.float64)}
    m = {k: torch.zeros_like(v) for k, v in w.items()}
    v = {k: torch.full_like(x, tau**2) for k, x in w.items()}
    out = []
    for seed in range(rounds):
        avg = _mean(_updates(seed))
        for k in w:
            d = avg[k] - w[k]
            if kind == "avgm":
                m[k] = momentum * m[k] + d
                w[k] = w[k] + lr * m[k]
                continue
            m[k] = b1 * m[k] + (1 - b1) * d
            if kind == "adagrad":
                v[k] = v[k] + d * d
            elif kind == "adam":
                v[k] = b2 * v[k] + (1 - b2) * d * d
            else:
                v[k] = v[k] - (1 - b2) * d * d * torch.sign(v[k] - d * d)
            w[k] = w[k] + lr * m[k] / (v[k].sqrt() + tau)
        out.append({k: x.clone() for k, x in w.items()})
    return out


@pytest.mark.parametrize(
    "kind,cls", [("adam", FedAdam), ("yogi", FedYogi), ("adagrad", FedAdagrad), ("avgm", FedAvgM)]
)
def test_server_optimizers_follow_the_paper(kind, cls):
    strat = cls(lr=0.1, momentum=0.9) if kind == "avgm" else cls(lr=0.1, beta1=0.9, beta2=0.99, tau=1e-3)
    ref = _reference(kind, 5, 0.1, 0.9, 0.99, 1e-3)
    w = {"w": torch.zeros(4, 3), "b": torch.zeros(5)}
    for seed in range(5):
        w = strat.aggregate(w, _updates(seed))
        for k in w:
            torch.testing.assert_close(w[k].double(), ref[seed][k], rtol=1e-5, atol=1e-6)


def test_fedavgm_without_momentum_at_lr_1_is_fedavg():
    g = {"w": torch.randn(4, 3), "b": torch.randn(5)}
    ups = _updates(7)
    a = FedAvgM(lr=1.0, momentum=0.0).aggregate(g, ups)
    b = FedAvg().aggregate(g, ups)
    for k in g:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6)


def test_server_state_round_trips_and_is_fresh_per_instance():
    a = FedYogi()
    g = {"w": torch.zeros(4, 3), "b": torch.zeros(5)}
    for seed in range(3):
        g = a.aggregate(g, _updates(seed))
    tensors, meta = a.state_dict()
    assert sorted(tensors) == ["m/b", "m/w", "v/b", "v/w"] and meta == {"steps": 3}
    b = FedYogi()
    b.load_state_dict({k: v.clone() for k, v in tensors.items()}, meta)
    nxt = _updates(3)
    ra, rb = a.aggregate(g, nxt), b.aggregate(g, nxt)
    assert all(torch.equal(ra[k], rb[k]) for k in g)
    assert FedYogi().state_dict() == ({}, {"steps": 0})


def test_bad_hyperparameters_are_refused():
    for cls, kw, key in (
        (FedAdam, {"lr": 0.0}, "strategy.lr"),
        (FedYogi, {"beta2": 1.0}, "strategy.beta2"),
        (FedAdagrad, {"tau": -1.0}, "strategy.tau"),
        (FedAvgM, {"momentum": 1.5}, "strategy.momentum"),
        (FedProx, {"mu": -0.1}, "strategy.mu"),
    ):
        with pytest.raises(ConfigError, match=f"^{key}="):
            cls(**kw)


def _rows(df):
    return df.drop(columns=TIMING).reset_index(drop=True)


def test_fedprox_with_mu_0_is_fedavg_bit_for_bit_and_mu_changes_training():
    base = run(compose_cfg([*SMALL, "fl.num_rounds=3"]))
    zero = run(compose_cfg([*SMALL, "fl.num_rounds=3", "strategy=fedprox", "strategy.mu=0.0"]))
    pd.testing.assert_frame_equal(_rows(base), _rows(zero), check_exact=True)
    prox = run(compose_cfg([*SMALL, "fl.num_rounds=3", "strategy=fedprox", "strategy.mu=1.0"]))
    assert prox["train_loss"].tolist() != base["train_loss"].tolist()


@pytest.mark.parametrize("strategy", ["fedadam", "fedyogi", "fedadagrad", "fedavgm"])
def test_every_server_optimizer_runs_and_learns(strategy):
    df = run(compose_cfg([*SMALL, f"strategy={strategy}", "data.signal=3"]))
    assert (
        df["test_loss"].is_monotonic_decreasing or df["test_loss"].iloc[-1] < df["test_loss"].iloc[0] - 0.01
    )
    assert df["accuracy"].iloc[-1] > df["accuracy"].iloc[0]


@pytest.mark.parametrize(
    "extra",
    [
        ["strategy=fedadam", "compression=topk"],
        ["strategy=fedavgm", "compression=topk_int8", "fl.dropout=0.3"],
        ["strategy=fedadam", "method.aggregation=exact", "compression/up=topk", "compression/down=int8"],
        ["method.aggregation=exact", "compression=topk_int8"],
    ],
    ids=["fedadam-topk", "fedavgm-topk-int8-dropout", "exact-fedadam-dense", "exact-fedavg-stacked"],
)
def test_interrupted_run_with_server_and_codec_state_resumes_bit_for_bit(tmp_path, extra):
    cfg = compose_cfg([*SMALL, *extra])
    reference = run(cfg)
    with pytest.raises(KeyboardInterrupt):
        run(cfg, out_dir=tmp_path, on_round=StopAfter(3))
    tensors, meta = checkpoint.load(tmp_path)
    assert meta["round"] == 3
    assert any(k.startswith("codec_up/") for k in tensors)  # error-feedback residuals
    if extra[0].startswith("strategy="):
        assert any(k.startswith("strategy/m/") for k in tensors) and meta["strategy"]["steps"] == 3
    if any("exact" in e for e in extra):
        assert any(k.startswith("method/base/") for k in tensors) and len(meta["method"]["merge_sizes"]) == 3
    resumed = run(cfg, out_dir=tmp_path)
    pd.testing.assert_frame_equal(_rows(resumed), _rows(reference), check_exact=True)
