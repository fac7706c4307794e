"""Scale: memory follows the clients per round, not the number of clients (data=tutorial_lazy);
thread discipline."""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
import weakref

import pytest
import torch
from conftest import ROOT, compose_cfg, run_cli

from fedbench.config import validate
from fedbench.data.lazy import LazyClients, LazyFederatedData, LazyTutorialData
from fedbench.fl.vectorized import make_engine
from fedbench.run import build, run
from fedbench.threads import threads_for_job


def test_lazy_clients_are_stable_and_distinct():
    data = LazyTutorialData(dim=8, samples_per_client=20, test_size=10).build(num_clients=1000, seed=5)
    assert isinstance(data, LazyFederatedData) and isinstance(data.clients, LazyClients)
    x1, y1 = data.clients[999]
    x2, y2 = data.clients[999]
    assert torch.equal(x1, x2) and torch.equal(y1, y2)  # same rows on every access
    x3, _ = data.clients[998]
    assert not torch.equal(x1, x3)
    other = LazyTutorialData(dim=8, samples_per_client=20, test_size=10).build(num_clients=10, seed=5)
    assert torch.equal(other.clients[3][0], data.clients[3][0])  # independent of the client count
    assert not torch.equal(LazyTutorialData(dim=8).build(10, seed=6).clients[3][0][:20], data.clients[3][0])
    # the tutorial's distribution: the bump at column label % dim
    x, y = LazyTutorialData(dim=8, samples_per_client=4000).build(1, 0).clients[0]
    bump = x[torch.arange(len(y)), y % 8].mean() - x.mean()
    assert 0.8 < float(bump) < 1.2
    with pytest.raises(IndexError):
        data.clients[1000]


def test_sizes_without_drawing(monkeypatch):
    spec = LazyTutorialData(samples_per_client=7)
    data = spec.build(num_clients=1000, seed=0)
    calls = []
    monkeypatch.setattr(LazyTutorialData, "make", lambda self, n, gen: calls.append(n))
    assert data.client_sizes() == [7] * 1000
    assert calls == []


def test_label_histogram_draws_labels_only(tmp_path, monkeypatch):
    import pandas as pd

    from fedbench.results import CLIENTS_PARQUET, write_label_histogram

    spec = LazyTutorialData(dim=8, samples_per_client=30, test_size=10)
    data = spec.build(num_clients=50, seed=3)
    for i in (0, 17, 49):
        assert torch.equal(data.client_labels(i), data.clients[i][1])
    calls = []
    monkeypatch.setattr(LazyTutorialData, "make", lambda self, n, gen: calls.append(n))
    write_label_histogram(data, tmp_path, clients=[17, 3])
    assert calls == []  # no client's features were drawn
    df = pd.read_parquet(tmp_path / CLIENTS_PARQUET)
    assert df["client"].tolist() == ["17", "3", "test"] and df["size"].tolist() == [30, 30, 10]
    monkeypatch.undo()
    want = torch.bincount(data.clients[17][1], minlength=10).tolist()
    assert df.iloc[0, 2:].tolist() == want


MILLION = [
    "data=tutorial_lazy",
    "fl.num_clients=1000000",
    "fl.clients_per_round=4",
    "fl.num_rounds=2",
    "model.hidden_dim=16",
    "model.num_layers=1",
    "data.samples_per_client=20",
    "data.test_size=20",
    "threads=1",
]


@pytest.mark.parametrize("extra", [[], ["fl.sampling=weighted"], ["fl.sampling=weighted", "rng=tutorial"]])
def test_a_million_clients_cost_nothing_until_selected(tmp_path, monkeypatch, extra):
    """Nothing loops over the population: no client's labels or sizes are asked for except the
    selected ones', and the label histogram holds the clients that took part (and the test set)."""
    import pandas as pd

    from fedbench.results import CLIENTS_PARQUET

    def no_sizes(self):
        raise AssertionError("every client's size was asked for")

    asked = []
    original = LazyClients.labels
    monkeypatch.setattr(LazyClients, "sizes", no_sizes)
    monkeypatch.setattr(LazyClients, "labels", lambda self, i: asked.append(i) or original(self, i))
    df = run(compose_cfg([*MILLION, *extra]), out_dir=tmp_path / "run")
    took_part = sorted({int(c) for s in df["selected"] for c in s.split()})
    assert len(took_part) <= 8 and max(took_part) >= 1000  # drawn from the whole population
    assert sorted(set(asked)) == took_part
    hist = pd.read_parquet(tmp_path / "run" / CLIENTS_PARQUET)
    assert hist["client"].tolist() == [*map(str, took_part), "test"]
    assert (hist["size"] == [20] * len(took_part) + [20]).all()


def test_weighted_sampling_over_equal_lazy_clients_is_uniform():
    """Lazy clients all hold data.samples_per_client rows: weighted sampling draws as uniform."""
    from fedbench.fl.engine import Engine

    base = ["data=tutorial_lazy", "fl.num_clients=50", "fl.clients_per_round=5", "fl.num_rounds=3"]
    picks = {}
    for sampling in ("uniform", "weighted"):
        spec = validate(compose_cfg([*base, f"fl.sampling={sampling}", "model.hidden_dim=8"]))
        data, model, state = build(spec)
        engine = make_engine(spec, model, state, data)
        assert type(engine) is Engine
        picks[sampling] = [engine.select_clients(r) for r in (1, 2, 3)]
    assert picks["uniform"] == picks["weighted"]


def test_eager_data_too_big_for_memory_is_refused(tmp_path):
    """data=tutorial with a million clients is refused in one line pointing at the lazy data,
    before anything is allocated (and before a run folder exists)."""
    from fedbench.config import ConfigError
    from fedbench.data.tutorial import physical_memory_bytes

    have = physical_memory_bytes()
    if not have or have / 2 >= 260e9:
        pytest.skip("this machine would hold 260 GB of rows, or does not say its memory")
    with pytest.raises(ConfigError, match="use data=tutorial_lazy") as err:
        validate(compose_cfg(["fl.num_clients=1000000", "fl.clients_per_round=10"]))
    assert err.value.key == "fl.num_clients" and "260.0 GB" in str(err.value)
    validate(compose_cfg(["data=tutorial_lazy", "fl.num_clients=1000000", "fl.clients_per_round=10"]))
    res = run_cli(["fl.num_clients=1000000", "hydra.run.dir=big"], tmp_path)
    assert res.returncode == 2 and not (tmp_path / "big").exists()
    assert res.stderr.strip().count("\n") == 0 and "data=tutorial_lazy" in res.stderr


def test_engine_keeps_no_client_rows():
    """A 1,000-client run (10 per round) holds no client's rows after its round."""
    torch.set_num_threads(1)  # build() leaves threads alone; 2 on a busy machine are slow
    for kind in ("exact", "vectorized"):
        spec = validate(
            compose_cfg(
                [
                    "data=tutorial_lazy",
                    "fl.num_clients=1000",
                    "fl.clients_per_round=10",
                    "model.hidden_dim=32",
                    "model.num_layers=2",
                    "data.samples_per_client=50",
                    "threads=1",
                ]
            )
        )
        data, model, state = build(spec)
        spec.fl.engine = kind
        engine = make_engine(spec, model, state, data)
        seen: list = []
        original = LazyTutorialData.make

        def tracking(self, n, gen, original=original, seen=seen):
            x, y = original(self, n, gen)
            seen.append(weakref.ref(x))
            return x, y

        LazyTutorialData.make = tracking
        try:
            rows = [engine.run_round() for _ in range(2)]
        finally:
            LazyTutorialData.make = original
        gc.collect()
        assert len(seen) == 20 and all(r() is None for r in seen), kind
        assert all(r["clients"] == 10 for r in rows)


_RSS_CHILD = r"""
import json, resource, sys
sys.path.insert(0, {tests!r})
from conftest import compose_cfg
from fedbench.run import run
run(compose_cfg(sys.argv[1:]))
print(json.dumps({{"maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}}))
"""


def peak_rss_kb(num_clients: int, data: str = "tutorial_lazy", *extra: str) -> int:
    """Peak RSS (ru_maxrss) of a fresh process running 2 rounds of 10 clients out of num_clients."""
    code = _RSS_CHILD.format(tests=str(ROOT / "tests"))
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    args = [
        f"data={data}",
        f"fl.num_clients={num_clients}",
        "fl.clients_per_round=10",
        "fl.num_rounds=2",
        "threads=1",
        *extra,
    ]
    out = subprocess.run(
        [sys.executable, "-c", code, *args], env=env, capture_output=True, text=True, timeout=600, check=True
    ).stdout
    return json.loads(out.strip().splitlines()[-1])["maxrss_kb"]


@pytest.mark.slow
def test_peak_rss_flat_in_clients():
    """Peak RSS of a 1,000,000-client run is within 1.2x of a 1,000-client run (same per-round
    load), and of 10 clients."""
    small, mid, big = peak_rss_kb(10), peak_rss_kb(1000), peak_rss_kb(1_000_000)
    assert mid <= 1.2 * small and big <= 1.2 * mid, (small, mid, big)


def test_threads_from_the_launcher(monkeypatch):
    monkeypatch.setattr("fedbench.threads.cpu_count", lambda: 8)
    assert (
        threads_for_job(3, {"_target_": "hydra_plugins.hydra_joblib_launcher.JoblibLauncher", "n_jobs": 4})
        == 3
    )
    assert (
        threads_for_job(None, {"_target_": "hydra_plugins.hydra_joblib_launcher.JoblibLauncher", "n_jobs": 4})
        == 2
    )
    assert (
        threads_for_job(
            None, {"_target_": "hydra_plugins.hydra_joblib_launcher.JoblibLauncher", "n_jobs": -1}
        )
        == 1
    )
    assert (
        threads_for_job(
            None, {"_target_": "hydra_plugins.hydra_joblib_launcher.JoblibLauncher", "n_jobs": 16}
        )
        == 1
    )
    assert threads_for_job(None, None) is None


def test_threads_recorded(tmp_path):
    df = run(
        compose_cfg(["fl.num_rounds=1", "threads=1", "model.hidden_dim=16", "model.num_layers=1"]),
        out_dir=tmp_path,
    )
    assert len(df) == 1
    assert json.loads((tmp_path / "summary.json").read_text())["threads"] == 1


def test_lazy_histogram_survives_interruption_and_resume(tmp_path):
    """An interrupted lazy run leaves the histogram of the clients that took part so far; the
    resumed run's covers every round's clients, as an uninterrupted run's does."""
    import pandas as pd
    from conftest import StopAfter

    from fedbench.results import CLIENTS_PARQUET

    cfg = [*MILLION[:3], "fl.num_rounds=3", *MILLION[4:]]
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        run(compose_cfg(cfg), out_dir=out, on_round=StopAfter(1))
    first = pd.read_parquet(out / CLIENTS_PARQUET)["client"].tolist()
    df = run(compose_cfg(cfg), out_dir=out)
    took_part = sorted({int(c) for s in df["selected"] for c in s.split()})
    assert first == [*map(str, sorted(int(c) for c in df["selected"].iloc[0].split())), "test"]
    hist = pd.read_parquet(out / CLIENTS_PARQUET)
    assert hist["client"].tolist() == [*map(str, took_part), "test"] and len(took_part) > 4
    fresh = tmp_path / "fresh"
    run(compose_cfg(cfg), out_dir=fresh)
    assert pd.read_parquet(fresh / CLIENTS_PARQUET).equals(hist)
