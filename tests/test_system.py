"""The simulated system clock (system=): links, modelled compute, deadlines, stragglers."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import compose_cfg, run_cli
from torch import nn

from fedbench.config import validate
from fedbench.errors import ConfigError
from fedbench.fl.clock import train_flops_per_sample
from fedbench.fl.state import FlatParams
from fedbench.fl.system import TieredSystem
from fedbench.run import build, run

SMALL = ["fl.num_rounds=2", "model.hidden_dim=32", "model.num_layers=2", "threads=1"]
WIFI = ["system=wifi", "system.down_mbps=8.0", "system.up_mbps=2.0", "system.latency_ms=10.0"]


def test_flop_count_of_a_linear_layer_is_forward_plus_weight_gradient():
    """One Linear (in 20, out 7) trained on inputs that need no gradient: 2*in*out FLOPs per
    sample forward, 2*in*out for the weight gradient; nothing else moves."""
    model = nn.Sequential(nn.Linear(20, 7, bias=False))
    state = FlatParams(model, ["0.weight"])
    state.grad.fill_(3.0)
    x, y = torch.randn(5, 20), torch.tensor([0, 1, 2, 3, 4])
    before = state.flat.clone(), torch.get_rng_state()
    assert train_flops_per_sample(model, state, x, y) == 4 * 20 * 7
    assert torch.equal(state.flat, before[0]) and torch.equal(state.grad, torch.full_like(state.grad, 3.0))
    assert torch.equal(torch.get_rng_state(), before[1])


def _expected_round(df_row, spec, flops, sizes, down_mbps, up_mbps, latency_ms, gflops):
    """The round's time recomputed from the issue's formula (every client: the same link)."""
    down = df_row["wire_bytes_down"] / df_row["clients"]
    up = df_row["wire_bytes_up"] / df_row["reported"]
    times = [
        down * 8 / (down_mbps * 1e6)
        + latency_ms / 1000
        + spec.fl.local_epochs * sizes[c] * flops / (gflops * 1e9)
        + up * 8 / (up_mbps * 1e6)
        + latency_ms / 1000
        for c in map(int, df_row["selected"].split())
    ]
    return max(times), times


def test_round_time_is_the_slowest_client_over_its_link():
    cfg = compose_cfg([*SMALL, *WIFI])
    spec = validate(cfg)
    data, model, state = build(spec)
    x, y = data.clients[0]
    flops = train_flops_per_sample(model, state, x[: spec.fl.batch_size], y[: spec.fl.batch_size])
    assert flops > 0
    df = run(cfg)
    sizes = data.client_sizes()
    for _, r in df.iterrows():
        expected, _ = _expected_round(r, spec, flops, sizes, 8.0, 2.0, 10.0, spec.system.device_gflops)
        assert r["sim_round_s"] == pytest.approx(expected, rel=1e-12)
    assert df["sim_time_s"].tolist() == pytest.approx(df["sim_round_s"].cumsum().tolist(), rel=1e-12)
    assert (df["stragglers"] == 0).all()


def test_simulated_time_is_the_same_on_both_engines_and_any_thread_count():
    exact = run(compose_cfg([*SMALL, *WIFI]))
    vec = run(compose_cfg([*SMALL, *WIFI, "fl.engine=vectorized", "threads=2"]))
    assert exact["sim_round_s"].tolist() == vec["sim_round_s"].tolist()


def test_a_deadline_drops_the_late_clients_uplink_and_lasts_the_deadline():
    base = [*SMALL, "system=mixed_mobile", "fl.num_clients=20", "fl.clients_per_round=10"]
    free = run(compose_cfg(base))
    spec = validate(compose_cfg(base))
    # a deadline between the fastest and the slowest client's time: someone is always late
    data, model, state = build(spec)
    x, y = data.clients[0]
    flops = train_flops_per_sample(model, state, x[:16], y[:16])
    r = free.iloc[0]
    links = {c: spec.system.link(c, spec.seed) for c in map(int, r["selected"].split())}
    down, up = r["wire_bytes_down"] / r["clients"], r["wire_bytes_up"] / r["reported"]
    sizes = data.client_sizes()
    times = {
        c: down * 8 / (ln.down_mbps * 1e6)
        + up * 8 / (ln.up_mbps * 1e6)
        + 2 * ln.latency_ms / 1000
        + spec.fl.local_epochs * sizes[c] * flops / (spec.system.device_gflops * ln.compute_scale * 1e9)
        for c, ln in links.items()
    }
    assert free.iloc[0]["sim_round_s"] == pytest.approx(max(times.values()), rel=1e-12)
    deadline = sorted(times.values())[len(times) // 2]
    late = sum(t > deadline for t in times.values())
    assert 0 < late < len(times)
    df = run(compose_cfg([*base, f"system.deadline_s={deadline}"]))
    first = df.iloc[0]
    assert first["stragglers"] == late and first["reported"] == first["clients"] - late
    assert first["sim_round_s"] == deadline
    assert first["bytes_up"] == free.iloc[0]["bytes_up"] / free.iloc[0]["reported"] * first["reported"]
    assert first["bytes_down"] == free.iloc[0]["bytes_down"]  # the late clients were sent the model


def test_mixed_mobile_draws_tiers_per_client_from_the_seed():
    system = TieredSystem()
    links = [system.link(c, seed=1) for c in range(4000)]
    assert [system.link(c, seed=1).up_mbps for c in range(50)] == [ln.up_mbps for ln in links[:50]]
    assert [ln.up_mbps for ln in links[:50]] != [system.link(c, seed=2).up_mbps for c in range(50)]
    for tier, p in zip(system.up_mbps, system.tier_probs):
        share = sum(ln.up_mbps == tier for ln in links) / len(links)
        assert abs(share - p) < 0.03
    for scale, p in zip(system.compute_scales, system.compute_probs):
        assert abs(sum(ln.compute_scale == scale for ln in links) / len(links) - p) < 0.03


def test_system_none_changes_nothing_but_fills_the_clock_columns_with_nan():
    plain = run(compose_cfg(SMALL))
    assert plain["sim_round_s"].isna().all() and plain["sim_time_s"].isna().all()
    assert (plain["stragglers"] == 0).all()
    assert (
        validate(compose_cfg([*SMALL, "system=none"])).config_hash == validate(compose_cfg(SMALL)).config_hash
    )
    timed = run(compose_cfg([*SMALL, *WIFI]))
    same = ["accuracy", "bytes_up", "bytes_down", "wire_bytes_up", "selected"]
    assert plain[same].equals(timed[same])


def _trace(tmp_path, rows, header="client,down_mbps,up_mbps,latency_ms,compute_scale"):
    path = tmp_path / "clients.csv"
    path.write_text(header + "\n" + "\n".join(rows) + "\n")
    return path


def test_trace_links_come_from_the_file(tmp_path):
    rows = [f"{c},{10 + c},{1 + c},{5 * c},{0.5 + c / 10}" for c in range(10)]
    path = _trace(tmp_path, rows)
    spec = validate(compose_cfg([*SMALL, "system=trace", f"system.path={path}"]))
    link = spec.system.link(3, spec.seed)
    assert (link.down_mbps, link.up_mbps, link.latency_ms, link.compute_scale) == (13.0, 4.0, 15.0, 0.8)
    df = run(compose_cfg([*SMALL, "system=trace", f"system.path={path}"]))
    assert (df["sim_round_s"] > 0).all()


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ([f"{c},10,1,5,1" for c in range(9)], "has no row for client 9"),
        ([f"{c},10,{0 if c == 4 else 1},5,1" for c in range(10)], "line 6: up_mbps must be > 0"),
        ([f"{c},10,1,5,x" for c in range(10)], "line 2: not numbers"),
    ],
)
def test_bad_traces_are_refused(tmp_path, rows, message):
    path = _trace(tmp_path, rows)
    from fedbench.fl.system import read_trace

    read_trace.cache_clear()
    with pytest.raises(ConfigError, match=f"^system.path.*{message}"):
        validate(compose_cfg([*SMALL, "system=trace", f"system.path={path}"]))


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        (["system=wifi", "system.up_mbps=0"], "system.up_mbps"),
        (["system=lte", "system.down_mbps=-5"], "system.down_mbps"),
        (["system=mixed_mobile", "system.tier_probs=[0.5,0.4,0.3]"], "system.tier_probs"),
        (["system=trace"], "system.path"),
        (["system=wifi", "system.deadline_s=0"], "system.deadline_s"),
    ],
)
def test_bad_system_settings_are_one_config_error(overrides, key):
    with pytest.raises(ConfigError, match=f"^{key}"):
        validate(compose_cfg(overrides))


def test_unknown_preset_and_zero_bandwidth_are_one_line_exit_2_no_run_folder(tmp_path):
    for args, needle in (
        (["system=satellite"], "satellite"),
        (["system=wifi", "system.up_mbps=0"], "up_mbps"),
    ):
        res = run_cli(args, cwd=tmp_path)
        assert res.returncode == 2, res.stderr
        assert len(res.stderr.strip().splitlines()) == 1 and needle in res.stderr
        assert not (tmp_path / "outputs").exists()
    assert math.isfinite(TieredSystem().device_gflops)


def test_summary_json_records_wire_total_and_simulated_time(tmp_path):
    import json

    df = run(compose_cfg([*SMALL, *WIFI]), out_dir=tmp_path / "timed")
    summary = json.loads((tmp_path / "timed" / "summary.json").read_text())
    assert summary["sim_time_s"] == df["sim_time_s"].iloc[-1]
    assert summary["wire_bytes_total"] == df["cum_wire_bytes"].iloc[-1]
    run(compose_cfg(SMALL), out_dir=tmp_path / "plain")
    assert json.loads((tmp_path / "plain" / "summary.json").read_text())["sim_time_s"] is None
