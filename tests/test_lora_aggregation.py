"""LoRA-aware aggregation: ``naive`` (factors averaged), ``ffa`` (A frozen, B sent) and ``exact``
(the clients' mean update merged into the base; stacked factors or a dense matrix downlink)."""

from __future__ import annotations

import pytest
import torch
from conftest import compose_cfg, run_cli

from fedbench.config import ConfigError, config_hash, validate
from fedbench.fl.comm import NoCompression
from fedbench.fl.engine import Engine
from fedbench.fl.strategies import FedAvg, Median
from fedbench.fl.wire import Wire
from fedbench.methods.lora import LoRALinear
from fedbench.methods.lora_exact import ExactLoRA
from fedbench.run import build, run, set_threads

IN, HID, LAYERS, R, HEAD = 128, 256, 4, 4, 10 * 256 + 10
DIMS = [(IN, HID)] + [(HID, HID)] * (LAYERS - 1)


class Recording(NoCompression):
    """float32 on the wire; remembers every decoded update of the run."""

    def __init__(self):
        self.seen = []

    def decode(self, message, key=None):
        out = super().decode(message, key)
        self.seen.append({k: v.clone() for k, v in out.items()})
        return out


def _engine(extra=()):
    spec = validate(compose_cfg(["threads=1", "fl.clients_per_round=4", *extra]))
    set_threads(spec.threads)  # as run() does (conftest restores the count afterwards)
    data, model, state = build(spec)
    up = Recording()
    engine = Engine(
        model=model,
        state=state,
        data=data,
        fl=spec.fl,
        strategy=spec.strategy,
        codec_up=up,
        codec_down=spec.compression_down,
        method=spec.method,
    )
    return spec, model, state, engine, up


def _layers(model):
    return [(n, m) for n, m in model.named_modules() if isinstance(m, LoRALinear)]


def _dense_mean(updates, sizes, name, scale):
    total = sum(sizes)
    return sum(
        n / total * scale * (u[f"{name}.lora_A"].double() @ u[f"{name}.lora_B"].double())
        for n, u in zip(sizes, updates)
    )


def test_exact_merges_the_dense_mean_of_client_updates_and_naive_does_not():
    spec, model, state, engine, up = _engine(["method.aggregation=exact"])
    before = {n: m.base.weight.detach().clone() for n, m in _layers(model)}
    a0 = {n: m.lora_A.detach().clone() for n, m in _layers(model)}
    row = engine.run_round()
    sizes = [len(engine.data.clients[int(c)][1]) for c in row["selected"].split()]
    updates = up.seen
    assert len(updates) == 4
    for name, mod in _layers(model):
        dense = _dense_mean(updates, sizes, name, mod.scale)
        merged = (mod.base.weight.double() - before[name].double()).t()
        assert dense.abs().max() > 1e-4
        # equal up to the float32 rounding of adding the update to the base weights
        ulp = torch.finfo(torch.float32).eps * before[name].abs().max().item()
        torch.testing.assert_close(merged, dense, rtol=0, atol=2 * ulp)
        # naive: the product of the averaged factors is not the averaged product
        total = sum(sizes)
        mean_a = sum(n / total * u[f"{name}.lora_A"].double() for n, u in zip(sizes, updates))
        mean_b = sum(n / total * u[f"{name}.lora_B"].double() for n, u in zip(sizes, updates))
        naive = mod.scale * mean_a @ mean_b
        assert (naive - dense).abs().max() > 0.05 * dense.abs().max()
        # every client restarts from the shared initialisation
        assert torch.equal(mod.lora_A, a0[name]) and not mod.lora_B.any()
    assert torch.equal(
        engine.global_payload["head.weight"],
        FedAvg().aggregate({}, [(n, {"h": u["head.weight"]}) for n, u in zip(sizes, updates)])["h"],
    )


def test_exact_with_a_robust_strategy_aggregates_the_dense_products():
    spec, model, state, engine, up = _engine(["method.aggregation=exact", "strategy=median"])
    before = {n: m.base.weight.detach().clone() for n, m in _layers(model)}
    engine.run_round()
    for name, mod in _layers(model):
        products = torch.stack([mod.scale * (u[f"{name}.lora_A"] @ u[f"{name}.lora_B"]) for u in up.seen])
        expected = Median().aggregate({}, [(1, {"x": p}) for p in products])["x"]
        torch.testing.assert_close((mod.base.weight - before[name]).t(), expected, rtol=0, atol=1e-7)


def test_exact_unit_with_known_factors():
    """Three clients with random factors; the merge is exactly sum_k p_k s A_k B_k."""
    spec = validate(compose_cfg(["method.aggregation=exact", "model.hidden_dim=32", "model.num_layers=2"]))
    _, model, state = build(spec)
    proto = ExactLoRA(model, state)
    g = torch.Generator().manual_seed(0)
    glob = state.snapshot()
    ups = [(n, {k: torch.randn(v.shape, generator=g) for k, v in glob.items()}) for n in (10, 30, 60)]
    before = {n: m.base.weight.detach().clone() for n, m in _layers(model)}
    new = proto.aggregate(glob, ups, FedAvg(), NoCompression(), rnd=1, clients=[0, 1, 2], wire=Wire())
    for name, mod in _layers(model):
        dense = _dense_mean([u for _, u in ups], [10, 30, 60], name, mod.scale)
        torch.testing.assert_close((mod.base.weight - before[name]).t().double(), dense, rtol=1e-5, atol=1e-6)
    assert list(new) == state.names
    # K r (in + out) float32 values per layer in the merge message
    assert [s.payload for s in proto.merge_sizes] == [
        sum(3 * spec.method.rank * (m.lora_A.shape[0] + m.lora_B.shape[1]) * 4 for _, m in _layers(model))
    ]


def _catch_up_bytes(df, merge):
    """bytes_down per round from the selections: head to each selected client + every merge
    message it has not received yet, or the dense change when that is smaller."""
    dense = sum(i * o for i, o in DIMS) * 4
    last, out = {}, []
    for t, sel in enumerate(df["selected"], start=1):
        total = 0
        for c in map(int, sel.split()):
            total += HEAD * 4 + min(sum(merge[last.get(c, 0) : t - 1]), dense)
            last[c] = t - 1
        out.append(total)
    return out


def test_exact_downlink_bytes_are_what_is_sent_stacked_factors_grow_with_clients():
    df = run(compose_cfg(["method.aggregation=exact", "fl.num_rounds=5", "threads=1", "fl.dropout=0.3"]))
    stacked_per_client = R * sum(i + o for i, o in DIMS) * 4  # one client's r (in + out) values
    merge = [int(k) * stacked_per_client for k in df["reported"]]
    assert df["bytes_down"].tolist() == _catch_up_bytes(df, merge)
    assert (df["bytes_up"] == df["reported"] * 41_000).all()  # the uplink is naive's
    assert df["bytes_down"].iloc[1:].min() > 5 * 41_000  # dearer than naive's downlink


def test_exact_with_a_server_optimizer_sends_the_dense_update():
    df = run(compose_cfg(["method.aggregation=exact", "strategy=fedadam", "fl.num_rounds=3", "threads=1"]))
    dense = sum(i * o for i, o in DIMS) * 4
    assert df["bytes_down"].tolist() == _catch_up_bytes(df, [dense] * 3)


def test_ffa_trains_and_sends_only_b_and_the_head():
    spec, model, state, engine, up = _engine(["method.aggregation=ffa"])
    a0 = {n: m.lora_A.detach().clone() for n, m in _layers(model)}
    row = engine.run_round()
    assert all(".lora_A" not in n for n in state.names)
    assert {n.rpartition(".")[2] for n in state.names} == {"lora_B", "weight", "bias"}
    per_client = (sum(R * o for _, o in DIMS) + HEAD) * 4
    assert row["bytes_up"] == 4 * per_client and row["bytes_down"] == 4 * per_client
    assert all(torch.equal(m.lora_A, a0[n]) for n, m in _layers(model))
    assert any(m.lora_B.any() for _, m in _layers(model))


def test_naive_is_the_default_and_unchanged():
    spec = validate(compose_cfg([]))
    assert spec.method.aggregation == "naive"
    _, model, state = build(spec)
    assert spec.method.server_protocol(model, state) is None
    # the field is in the composed config, yet runs at the default keep the hash they had
    # before it existed (a resolved config without it)
    without = {
        **spec.resolved,
        "method": {k: v for k, v in spec.resolved["method"].items() if k != "aggregation"},
    }
    assert "aggregation" in spec.resolved["method"] and config_hash(without) == spec.config_hash


def test_bad_aggregation_is_refused(tmp_path):
    with pytest.raises(
        ConfigError, match="^method.aggregation='mean': must be one of: naive, ffa, exact, hetlora, flexlora"
    ):
        validate(compose_cfg(["method.aggregation=mean"]))
    res = run_cli(["method.aggregation=mean"], cwd=tmp_path)
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1
