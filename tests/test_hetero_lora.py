"""Heterogeneous LoRA ranks (method.ranks) under hetlora, flexlora and exact aggregation."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
from conftest import StopAfter, compose_cfg, run_cli

from fedbench.config import validate
from fedbench.contracts import Population
from fedbench.errors import ConfigError
from fedbench.fl.comm import NoCompression
from fedbench.fl.strategies import FedAvg
from fedbench.fl.system import TieredSystem
from fedbench.fl.wire import Wire
from fedbench.methods.lora_layer import LoRALinear
from fedbench.methods.lora_ranks import ClientRanks
from fedbench.run import build, run

# tutorial MLP: 128 -> 32 -> 32, head 32 -> 10
SMALL = ["model.hidden_dim=32", "model.num_layers=2", "threads=1", "fl.num_rounds=3"]
DIMS = [(128, 32), (32, 32)]
HEAD = 32 * 10 + 10
RANKS = [2, 4, 8]


def _layers(model):
    return [(n, m) for n, m in model.named_modules() if isinstance(m, LoRALinear)]


def _client_bytes(r: int) -> int:
    return (r * sum(i + o for i, o in DIMS) + HEAD) * 4


def test_ranks_cycle_over_client_ids_and_follow_bandwidth():
    pop = Population(12, seed=3, system=TieredSystem())
    cyc = ClientRanks(4, RANKS, "client", pop)
    assert [cyc(c) for c in range(6)] == [2, 4, 8, 2, 4, 8] and cyc.max == 8 and cyc.heterogeneous
    bw = ClientRanks(4, [16, 2, 8, 4], "bandwidth", pop)
    ups = {c: pop.link(c).up_mbps for c in range(12)}
    order = sorted(range(12), key=lambda c: (ups[c], c))
    assert [bw(c) for c in order] == [2, 2, 2, 4, 4, 4, 8, 8, 8, 16, 16, 16]
    assert not ClientRanks(4, None, "client", pop).heterogeneous


@pytest.mark.parametrize("aggregation", ["hetlora", "flexlora"])
def test_each_client_sends_and_receives_factors_of_its_own_rank(aggregation):
    df = run(compose_cfg([*SMALL, f"method.aggregation={aggregation}", f"method.ranks={RANKS}"]))
    for _, r in df.iterrows():
        sel = [int(c) for c in r["selected"].split()]
        expected = sum(_client_bytes(RANKS[c % 3]) for c in sel)
        assert r["bytes_down"] == expected and r["bytes_up"] == expected
    assert df["accuracy"].notna().all()


def test_hetlora_aggregation_is_the_zero_padded_weighted_mean():
    spec = validate(compose_cfg([*SMALL, "method.aggregation=hetlora", f"method.ranks={RANKS}"]))
    data, model, state = build(spec)
    proto = spec.method.server_protocol(model, state, Population(10, spec.seed))
    g = torch.Generator().manual_seed(0)
    glob = state.snapshot()
    clients, sizes = [0, 1, 2], [10, 30, 60]
    sent = [
        proto.to_wire({k: torch.randn(v.shape, generator=g) for k, v in glob.items()}, c) for c in clients
    ]
    assert [sent[i][f"{_layers(model)[0][0]}.lora_A"].shape[1] for i in range(3)] == RANKS
    ups = [(n, proto.from_wire(s, c)) for n, s, c in zip(sizes, sent, clients)]
    new = proto.aggregate(glob, ups, FedAvg(), NoCompression(), 1, clients, Wire())
    pad = torch.nn.functional.pad
    for name, _ in _layers(model):
        a, b = f"{name}.lora_A", f"{name}.lora_B"
        A = sum(n / 100 * pad(u[a], (0, 8 - u[a].shape[1])) for n, u in zip(sizes, sent))
        B = sum(n / 100 * pad(u[b], (0, 0, 0, 8 - u[b].shape[0])) for n, u in zip(sizes, sent))
        torch.testing.assert_close(new[a], A, rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(new[b], B, rtol=1e-6, atol=1e-7)
        # the components beyond rank 4 are the rank-8 client's alone, shrunk by its weight
        torch.testing.assert_close(new[b][4:], 0.6 * sent[2][b][4:], rtol=1e-6, atol=1e-7)


def test_a_low_rank_client_trains_only_its_leading_components():
    spec = validate(compose_cfg([*SMALL, "method.aggregation=hetlora", f"method.ranks={RANKS}"]))
    from conftest import engine_for

    data, model, state = build(spec)
    engine = engine_for(spec, data, model, state)
    starts, _ = engine.protocol.downlink(engine.global_payload, engine.codec_down, [0, 1, 2], 1, Wire())
    trained = {cid: p for _, cid, _, p, _ in engine.train_clients([0, 1, 2], starts, 0.0, 1)}
    for name, _ in _layers(model):
        for cid, r in zip([0, 1, 2], RANKS):
            A, B = trained[cid][f"{name}.lora_A"], trained[cid][f"{name}.lora_B"]
            assert not A[:, r:].any() and not B[r:].any()  # beyond its rank: exactly zero
            assert B[:r].any()  # its own components trained


def test_flexlora_keeps_the_full_mean_product_and_sends_its_svd_truncation():
    spec = validate(compose_cfg([*SMALL, "method.aggregation=flexlora", f"method.ranks={RANKS}"]))
    data, model, state = build(spec)
    proto = spec.method.server_protocol(model, state, Population(10, spec.seed))
    g = torch.Generator().manual_seed(1)
    glob = state.snapshot()
    clients, sizes = [0, 1, 2], [20, 20, 60]
    ups = [
        (
            n,
            proto.from_wire(
                proto.to_wire({k: torch.randn(v.shape, generator=g) for k, v in glob.items()}, c), c
            ),
        )
        for n, c in zip(sizes, clients)
    ]
    new = proto.aggregate(glob, ups, FedAvg(), NoCompression(), 1, clients, Wire())
    for name, m in _layers(model):
        dW = sum(n / 100 * m.scale * (u[f"{name}.lora_A"] @ u[f"{name}.lora_B"]) for n, u in ups)
        torch.testing.assert_close(proto.delta[name], dW, rtol=1e-5, atol=1e-6)
        U, S, Vh = torch.linalg.svd(dW, full_matrices=False)
        for r in RANKS:  # each rank's slice is the best rank-r approximation
            A, B = new[f"{name}.lora_A"][:, :r], new[f"{name}.lora_B"][:r]
            best = U[:, :r] @ torch.diag(S[:r]) @ Vh[:r]
            torch.testing.assert_close(m.scale * A @ B, best, rtol=1e-4, atol=1e-5)
    # evaluation sees W + dW exactly, and the base weights come back bit for bit
    state.load(new)
    x = data.test[0][:8]
    bases = [m.base.weight.clone() for _, m in _layers(model)]
    with proto.evaluation():
        inside = model(x)
    h = x
    for (name, _m), w in zip(_layers(model), bases):
        h = torch.relu(h @ (w.t() + proto.delta[name]))
    torch.testing.assert_close(inside, model.head(h), rtol=1e-4, atol=1e-5)
    assert all(torch.equal(m.base.weight, w) for (_, m), w in zip(_layers(model), bases))


def test_exact_with_mixed_ranks_stacks_the_sum_of_the_ranks():
    df = run(compose_cfg([*SMALL, "method.aggregation=exact", f"method.ranks={RANKS}", "fl.dropout=0.2"]))
    for _, r in df.iterrows():
        assert r["bytes_up"] <= sum(_client_bytes(RANKS[int(c) % 3]) for c in r["selected"].split())
    # the stacked rank is the sum of the reporting clients' ranks: recomputed from the uplink bytes
    per_rank = sum(i + o for i, o in DIMS) * 4
    stacked = (df["bytes_up"] - df["reported"] * HEAD * 4) / per_rank
    assert df["merge_rank"].tolist() == stacked.tolist()


def test_exact_catch_up_is_capped_at_the_dense_change():
    """A client that sat out rounds is sent the merge messages it missed, or the dense change
    of the adapted weights when that is smaller; recomputed here from the selections."""
    over = ["method.aggregation=exact", "method.rank=8", "fl.num_rounds=12", "fl.num_clients=20"]
    df = run(compose_cfg([*SMALL, *over, "fl.clients_per_round=5"]))
    dense = sum(i * o for i, o in DIMS) * 4
    merges = [int(k) * 8 * sum(i + o for i, o in DIMS) * 4 for k in df["reported"]]
    last, capped = {}, 0
    for t, sel in enumerate(df["selected"], start=1):
        expected = 0
        for c in map(int, sel.split()):
            missed = sum(merges[last.get(c, 0) : t - 1])
            capped += missed > dense
            expected += HEAD * 4 + min(missed, dense)
            last[c] = t - 1
        assert df["bytes_down"].iloc[t - 1] == expected
    assert capped > 0  # the run did send dense catch-ups


@pytest.mark.parametrize("aggregation", ["hetlora", "flexlora", "exact"])
def test_mixed_rank_runs_resume_bit_for_bit(tmp_path, aggregation):
    cfg = compose_cfg(
        [
            *SMALL,
            "fl.num_rounds=4",
            f"method.aggregation={aggregation}",
            f"method.ranks={RANKS}",
            "compression=int8",
        ]
    )
    reference = run(cfg)
    with pytest.raises(KeyboardInterrupt):
        run(cfg, out_dir=tmp_path, on_round=StopAfter(2))
    resumed = run(cfg, out_dir=tmp_path)
    cols = [c for c in reference.columns if c not in ("wall_s", "elapsed_s")]
    pd.testing.assert_frame_equal(resumed[cols], reference[cols], check_exact=True)


@pytest.mark.parametrize("aggregation", ["hetlora", "flexlora", "exact"])
def test_the_vectorised_engine_trains_mixed_ranks_as_the_exact_one(aggregation):
    over = [*SMALL, f"method.aggregation={aggregation}", f"method.ranks={RANKS}", "strategy=fedprox"]
    exact = run(compose_cfg(over))
    vec = run(compose_cfg([*over, "fl.engine=vectorized"]))
    for col in ("bytes_up", "bytes_down", "wire_bytes_up", "selected"):
        assert exact[col].tolist() == vec[col].tolist()
    assert (exact["accuracy"] - vec["accuracy"]).abs().max() <= 0.01
    assert (exact["train_loss"] - vec["train_loss"]).abs().max() < 1e-3


def test_topk_uplink_with_mixed_ranks_counts_the_sliced_tensors():
    df = run(compose_cfg([*SMALL, "method.aggregation=hetlora", "method.ranks=[2,8]", "compression/up=topk"]))
    full = run(
        compose_cfg([*SMALL, "method.aggregation=hetlora", "method.ranks=[8,8]", "compression/up=topk"])
    )
    assert (df["bytes_up"] < full["bytes_up"]).all() and df["accuracy"].notna().all()


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["method.aggregation=hetlora", "method.ranks=[2,0]"],
            "^method.ranks=\\[2, 0\\]: must be a non-empty list",
        ),
        (
            ["method.aggregation=hetlora", "method.ranks=[4,512]"],
            "^method.ranks=\\[4, 512\\]: a LoRA rank must be <= 32",
        ),
        (
            ["method.ranks=[2,4]"],
            "^method.ranks=\\[2, 4\\]: needs method.aggregation=exact, hetlora, flexlora",
        ),
        (
            ["method.aggregation=hetlora", "method.ranks=[2,4]", "method.rank_by=bandwidth"],
            "^method.rank_by: bandwidth needs a system",
        ),
        (["method.aggregation=hetlora", "method.ranks=[2,4]", "privacy=central"], "^privacy"),
    ],
)
def test_bad_rank_settings_are_refused_before_the_run(overrides, message):
    with pytest.raises(ConfigError, match=message):
        validate(compose_cfg([*SMALL, *overrides]))


def test_hetlora_on_a_method_without_lora_is_refused_in_one_line():
    from fedbench.cli_check import CommandLineError, check_command_line

    with pytest.raises(CommandLineError, match="aggregation") as err:
        check_command_line(["method=full", "method.aggregation=hetlora"])
    assert err.value.exit_code == 2 and "\n" not in str(err.value)


def test_a_bad_rank_list_is_one_line_exit_2_and_no_run_folder(tmp_path):
    res = run_cli(["method.aggregation=hetlora", "method.ranks=[4,-1]"], cwd=tmp_path)
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1 and "method.ranks" in res.stderr
    assert not (tmp_path / "outputs").exists()
