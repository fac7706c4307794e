"""Frozen-feature caching (head-only): the cached run equals the uncached one.

Bit for bit where the machine's matmul gives each row the same bits whatever the number of rows
in the batch (then on the tutorial's batch sizes; batches of 1-3 rows use matrix-vector kernels
that round differently, so there the check is to float tolerance). Some BLAS paths (MKL's
AVX-512 kernels on some CPUs) block rows differently by batch size: features computed 64 rows at
a time then differ from the training batches' in the last bits, and the check is to float
tolerance (``rows_independent`` probes which case this machine is).
"""

from __future__ import annotations

import pytest
import torch
from conftest import compose_cfg, engine_for
from torch import nn

from fedbench.config import validate
from fedbench.fl.feature_cache import (
    CachedClients,
    HeadModel,
    backbone_features,
    cache_features,
    why_not_cacheable,
)
from fedbench.fl.state import FlatParams
from fedbench.fl.vectorized import make_engine
from fedbench.run import build

SMALL = [
    "method=head_only",
    "model.hidden_dim=48",
    "model.num_layers=2",
    "data.samples_per_client=100",
    "data.test_size=200",
    "fl.num_rounds=4",
    "fl.num_clients=6",
    "fl.clients_per_round=3",
]


def rows_independent(threads: int, hidden: int = 48) -> bool:
    """Whether this machine's Linear layers of the tested MLP (128 -> hidden -> hidden -> 10) give
    a row the same bits in a batch of 16, 32 or 64 rows as in one of 100."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        gen = torch.Generator().manual_seed(0)
        for fan_in, fan_out in ((128, hidden), (hidden, hidden), (hidden, 10)):
            x, w = torch.randn(100, fan_in, generator=gen), torch.randn(fan_out, fan_in, generator=gen)
            full = nn.functional.linear(x, w)
            for c in (16, 32, 64):
                if not torch.equal(
                    full, torch.cat([nn.functional.linear(x[i : i + c], w) for i in range(0, 100, c)])
                ):
                    return False
        return True
    finally:
        torch.set_num_threads(before)


def assert_same_run(a: list[dict], b: list[dict], exact: bool) -> None:
    if exact:
        assert a == b  # accuracy, test and train loss, bytes: identical
        return
    for x, y in zip(a, b, strict=True):
        assert {k: v for k, v in x.items() if "loss" not in k and k != "accuracy"} == {
            k: v for k, v in y.items() if "loss" not in k and k != "accuracy"
        }
        assert y["accuracy"] == pytest.approx(x["accuracy"], abs=0.01)
        assert y["train_loss"] == pytest.approx(x["train_loss"], rel=1e-5)
        assert y["test_loss"] == pytest.approx(x["test_loss"], rel=1e-5)


def _run(overrides, cache, kind="exact", threads=1, rounds=None):
    torch.set_num_threads(threads)
    spec = validate(compose_cfg([*overrides, f"threads={threads}"]))
    data, model, state = build(spec)
    spec.fl.feature_cache, spec.fl.engine = cache, kind
    engine = make_engine(spec, model, state, data)
    rows = [engine.run_round() for _ in range(rounds or spec.fl.num_rounds)]
    for r in rows:
        r.pop("wall_s")
    return engine, rows


@pytest.mark.parametrize("threads", [1, 2])
def test_cached_equals_uncached_bit_for_bit(threads):
    rounds = 4 if threads == 1 else 1  # 2 threads on a busy 2-core machine are slow
    plain, a = _run(SMALL, cache=False, threads=threads, rounds=rounds)
    cached, b = _run(SMALL, cache=True, threads=threads, rounds=rounds)
    assert not isinstance(plain.model, HeadModel) and isinstance(cached.model, HeadModel)
    assert cached.step is not None  # the hand-written head step still applies
    assert_same_run(a, b, rows_independent(threads))


def test_default_tutorial_head_only_identical():
    _, a = _run(["method=head_only", "fl.num_rounds=3"], cache=False)
    _, b = _run(["method=head_only", "fl.num_rounds=3"], cache=True)
    assert_same_run(a, b, rows_independent(1, 256))


def test_small_batches_equal_to_tolerance():
    """batch 7 over 100 rows leaves a last batch of 2 rows: matrix-vector kernels, last bits."""
    over = [*SMALL, "fl.batch_size=7"]
    _, a = _run(over, cache=False)
    _, b = _run(over, cache=True)
    for x, y in zip(a, b):
        assert x["accuracy"] == y["accuracy"]
        assert y["train_loss"] == pytest.approx(x["train_loss"], rel=1e-6)
        assert y["test_loss"] == pytest.approx(x["test_loss"], rel=1e-6)


def test_vectorized_engine_with_cache():
    _, a = _run(SMALL, cache=False, kind="exact")
    _, b = _run(SMALL, cache=True, kind="vectorized")
    for x, y in zip(a, b):
        assert abs(x["accuracy"] - y["accuracy"]) <= 0.01
        assert y["train_loss"] == pytest.approx(x["train_loss"], rel=1e-4)


def test_features_computed_once_per_row():
    engine, _ = _run(SMALL, cache=True, rounds=4)
    clients = engine.data.clients
    assert isinstance(clients, CachedClients)
    assert clients.computed_rows == 100 * len(clients.cache)  # each selected client once
    assert len(clients.cache) <= 6


def test_lru_bound():
    spec = validate(compose_cfg(SMALL))
    data, model, state = build(spec)
    _, cached = cache_features(model, data, max_clients=2)
    for i in (0, 1, 2, 0):
        cached.clients[i]
    assert list(cached.clients.cache) == [2, 0]
    assert cached.client_sizes() == data.client_sizes()


def test_features_are_what_the_head_sees():
    spec = validate(compose_cfg(SMALL))
    data, model, state = build(spec)
    x, _ = data.clients[0]
    feats = backbone_features(model, x, chunk=32)
    exact = rows_independent(torch.get_num_threads())
    with torch.no_grad():
        torch.testing.assert_close(
            model.head(feats), model(x), rtol=0 if exact else 1e-5, atol=0 if exact else 1e-6
        )


def test_not_cacheable_when_more_than_the_head_trains_or_backbone_is_random():
    spec = validate(compose_cfg([*SMALL, "method=lora"]))
    _, model, state = build(spec)
    assert "outside the head" in why_not_cacheable(model, state)
    engine, _ = _run([*SMALL, "method=lora"], cache=True, rounds=1)
    assert not isinstance(engine.model, HeadModel)

    class Noisy(nn.Module):
        head_name = "head"

        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.1))
            self.head = nn.Linear(4, 2)

        def forward(self, x):
            return self.head(self.body(x))

    noisy = Noisy()
    assert "dropout" in why_not_cacheable(noisy, FlatParams(noisy, ["head.weight", "head.bias"]))
    noisy.body[1].p = 0.0
    assert why_not_cacheable(noisy, FlatParams(noisy, ["head.weight", "head.bias"])) is None


def test_bert_head_only_cached_matches_uncached():
    """A BERT-family encoder: features come from batches of another size and padding length,
    so they agree to float tolerance, and training follows."""
    hf = pytest.importorskip("fedbench.models.hf")
    pytest.importorskip("transformers")
    from fedbench.data import FederatedData
    from fedbench.methods.head_only import HeadOnly

    def setup(cache):
        torch.manual_seed(0)
        gen = torch.Generator().manual_seed(1)

        def ids(n):
            lens = torch.randint(3, 13, (n,), generator=gen)
            x = torch.randint(1000, 2000, (n, 12), generator=gen)
            x[torch.arange(12).unsqueeze(0) >= lens.unsqueeze(1)] = 0
            return x

        data = FederatedData(
            clients=[(ids(24), torch.randint(0, 2, (24,), generator=gen)) for _ in range(4)],
            test=(ids(40), torch.randint(0, 2, (40,), generator=gen)),
            num_classes=2,
            partition="x",
        )
        model = hf.TinyBert(dropout=0.0, hidden_size=16, intermediate_size=32, num_layers=1).build()
        method = HeadOnly()
        model.attach_head()
        state = FlatParams(model, method.trainable(model))
        assert why_not_cacheable(model, state) is None
        if cache:
            model, data = cache_features(model, data)
        spec = validate(compose_cfg(["fl.num_clients=4", "fl.clients_per_round=2", "fl.batch_size=8"]))
        return engine_for(spec, data, model, state)

    plain = setup(False)
    rows_a = [plain.run_round() for _ in range(3)]
    cached = setup(True)
    rows_b = [cached.run_round() for _ in range(3)]
    for x, y in zip(rows_a, rows_b):
        assert x["accuracy"] == y["accuracy"]
        assert y["test_loss"] == pytest.approx(x["test_loss"], rel=1e-5)
        assert y["train_loss"] == pytest.approx(x["train_loss"], rel=1e-5)
    torch.testing.assert_close(cached.state.flat, plain.state.flat, rtol=1e-4, atol=1e-6)

    bert = hf.TinyBert(dropout=0.1, hidden_size=16, intermediate_size=32, num_layers=1).build()
    bert.attach_head()
    assert "dropout" in why_not_cacheable(bert, FlatParams(bert, ["head.weight", "head.bias"]))
