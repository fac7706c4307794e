"""privacy=: clipping bounds, noise scale, accounting against dp-accounting computed here,
calibration, bit-equality when off, resume, the old-folder hash, and bad input."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import dp_accounting
import pandas as pd
import pytest
import torch
from conftest import TINY_MLP, StopAfter, compose_cfg, engine_for, run_cli
from dp_accounting.pld import PLDAccountant
from dp_accounting.rdp import RdpAccountant

from fedbench import checkpoint
from fedbench.config import config_hash, validate
from fedbench.fl.privacy import Central, CentralAdaptive, Local, l2_norm
from fedbench.fl.vectorized import VectorizedEngine
from fedbench.rng import Streams
from fedbench.run import build, run

TIMING = ["wall_s", "elapsed_s"]
# 6 clients, 3 per round, 4 rounds of the tiny MLP: more than one client per round, cheap.
SMALL = [*TINY_MLP, "fl.num_clients=6", "fl.clients_per_round=3", "fl.num_rounds=4"]


def _eps_poisson(q, sigma, rounds, delta, accountant="rdp"):
    acc = RdpAccountant() if accountant == "rdp" else PLDAccountant()
    event = dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(sigma))
    acc.compose(dp_accounting.SelfComposedDpEvent(event, rounds))
    return acc.get_epsilon(delta)


def _rows(overrides, rounds=None, engine_cls=None):
    spec = validate(compose_cfg(overrides))
    data, model, state = build(spec)
    engine = engine_for(spec, data, model, state, engine_cls)
    return engine, [engine.run_round() for _ in range(rounds or spec.fl.num_rounds)]


# -- accounting -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "clients, per_round, sigma, rounds, delta, accountant",
    [
        (6, 3, 1.0, 4, 1e-5, "rdp"),
        (8, 2, 0.7, 3, 1e-6, "rdp"),
        (5, 1, 2.0, 2, 1e-3, "rdp"),
        (6, 3, 1.0, 4, 1e-5, "pld"),
        (8, 2, 1.3, 3, 1e-4, "pld"),
    ],
)
def test_row_epsilon_equals_dp_accounting(clients, per_round, sigma, rounds, delta, accountant):
    df = run(
        compose_cfg(
            [
                *TINY_MLP,
                "privacy=central",
                f"fl.num_clients={clients}",
                f"fl.clients_per_round={per_round}",
                f"fl.num_rounds={rounds}",
                f"privacy.noise_multiplier={sigma}",
                f"privacy.delta={delta}",
                f"privacy.accountant={accountant}",
            ]
        )
    )
    q = per_round / clients
    expected = [_eps_poisson(q, sigma, r, delta, accountant) for r in range(1, rounds + 1)]
    assert df["epsilon"].tolist() == pytest.approx(expected, rel=1e-12)
    assert all(a < b for a, b in zip(expected, expected[1:]))  # cumulative: it grows


def test_fixed_size_sampling_is_accounted_without_replacement():
    spec = validate(
        compose_cfg(
            [*SMALL, "privacy=central", "privacy.sampling=fixed_size", "privacy.noise_multiplier=1.5"]
        )
    )
    acc = RdpAccountant(neighboring_relation=dp_accounting.NeighboringRelation.REPLACE_ONE)
    event = dp_accounting.SampledWithoutReplacementDpEvent(6, 3, dp_accounting.GaussianDpEvent(0.75))
    acc.compose(dp_accounting.SelfComposedDpEvent(event, 4))
    assert spec.privacy.epsilon(4) == pytest.approx(acc.get_epsilon(1e-5), rel=1e-12)


def test_local_epsilon_composes_each_clients_reports():
    engine, rows = _rows([*SMALL, "privacy=local", "privacy.noise_multiplier=4.0"])
    reports = {}
    for row in rows:
        for c in row["selected"].split():
            reports[c] = reports.get(c, 0) + 1
        acc = RdpAccountant()
        worst = max(reports.values())
        acc.compose(dp_accounting.SelfComposedDpEvent(dp_accounting.GaussianDpEvent(2.0), worst))
        assert row["epsilon"] == pytest.approx(acc.get_epsilon(1e-5), rel=1e-12)


@pytest.mark.parametrize(
    "mode, target, accountant",
    [("central", 8.0, "rdp"), ("central", 2.0, "rdp"), ("central", 4.0, "pld"), ("local", 8.0, "rdp")],
)
def test_calibration_lands_within_one_percent_below_the_target(mode, target, accountant):
    spec = validate(
        compose_cfg(
            [
                *TINY_MLP,
                f"privacy={mode}",
                "fl.num_clients=10",
                "fl.clients_per_round=5",
                "fl.num_rounds=30",
                f"privacy.target_epsilon={target}",
                f"privacy.accountant={accountant}",
            ]
        )
    )
    sigma = spec.privacy.sigma
    if mode == "central":
        eps = _eps_poisson(0.5, sigma, 30, 1e-5, accountant)
    else:
        acc = RdpAccountant()
        acc.compose(dp_accounting.SelfComposedDpEvent(dp_accounting.GaussianDpEvent(sigma / 2), 30))
        eps = acc.get_epsilon(1e-5)
    assert 0.99 * target <= eps <= target, (sigma, eps)


# -- clipping and noise ------------------------------------------------------------------------
@pytest.mark.parametrize("codec", ["none", "int8", "topk", "bf16"])
def test_every_change_entering_aggregation_is_within_the_clip(codec):
    clip = 0.05
    spec = validate(compose_cfg([*SMALL, "privacy=central", f"privacy.clip={clip}", f"compression={codec}"]))
    data, model, state = build(spec)
    engine = engine_for(spec, data, model, state)
    seen = []
    encode = engine.codec_up.encode

    def spy(payload, key=None):  # what the codec compresses: the clipped change
        seen.append(l2_norm(payload))
        return encode(payload, key)

    engine.codec_up.encode = spy
    for _ in range(spec.fl.num_rounds):
        row = engine.run_round()
        norms = spec.privacy.norms
        assert len(norms) == row["reported"] == 3
        assert max(norms) <= clip + 1e-6
    assert max(seen) <= clip + 1e-6
    assert max(norms) >= clip * (1 - 1e-5)  # the clip did bind (the test is not vacuous)


def _fitted(cls, **kw):
    mech = cls(**kw)
    fl = SimpleNamespace(num_clients=10, clients_per_round=4, num_rounds=3, sampling="uniform")
    mech.check_compatible({}, fl)
    return mech


def test_central_noise_on_the_sum_has_std_sigma_times_clip():
    sigma, clip, m = 2.0, 0.5, 4
    mech = _fitted(Central, clip=clip, noise_multiplier=sigma)
    start = {"a": torch.zeros(300_000), "b": torch.zeros(200, 500)}
    out = mech.aggregate(start, [], 1, Streams("paired", 0))
    noise = torch.cat([(out[k] * m).reshape(-1) for k in start]).double()
    n = noise.numel()
    # std of a sample std of n normals is ~ std / sqrt(2n): 0.1%; 2% is > 15 standard errors
    assert float(noise.std()) == pytest.approx(sigma * clip, rel=0.02)
    assert abs(float(noise.mean())) < 5 * sigma * clip / math.sqrt(n)
    again = mech.aggregate(start, [], 1, Streams("paired", 0))
    other = mech.aggregate(start, [], 2, Streams("paired", 0))
    assert torch.equal(again["a"], out["a"]) and not torch.equal(other["a"], out["a"])


def test_central_sum_of_clipped_changes_is_exact_without_noise():
    mech = _fitted(Central, clip=1.0, noise_multiplier=0.0)
    start = {"w": torch.ones(4)}
    ups = [
        (0, 1, {"w": torch.ones(4) + torch.tensor([3.0, 4.0, 0.0, 0.0])}),
        (1, 1, {"w": torch.ones(4) * 1.1}),
    ]
    out = mech.aggregate(start, ups, 1, Streams("paired", 0))
    expected = 1 + (torch.tensor([0.6, 0.8, 0.0, 0.0]) + torch.full((4,), 0.1)) / 4
    assert torch.allclose(out["w"], expected, atol=1e-6)
    assert mech.epsilon(3) == math.inf


def test_local_noise_has_std_sigma_times_clip():
    mech = _fitted(Local, clip=0.2, noise_multiplier=3.0)
    change = {"a": torch.zeros(400_000)}
    noised, side = mech.client(change, 1, 7, Streams("tutorial", 0))
    assert side == {}
    assert float(noised["a"].double().std()) == pytest.approx(0.6, rel=0.02)


def test_privacy_noise_shifts_no_other_draw():
    for rng in ("paired", "tutorial"):
        _, plain = _rows([*SMALL, f"rng={rng}"])
        _, noised = _rows([*SMALL, f"rng={rng}", "privacy=central", "privacy.noise_multiplier=1.0"])
        assert [r["selected"] for r in plain] == [r["selected"] for r in noised]
        assert [r["accuracy"] for r in plain] != [r["accuracy"] for r in noised]


@pytest.mark.parametrize("mode", ["central", "local"])
@pytest.mark.parametrize("extra", [[], ["compression=int8", "strategy=fedadam"], ["compression=topk"]])
def test_no_noise_and_no_clipping_is_bit_equal_to_privacy_none(mode, extra):
    plain = run(compose_cfg([*SMALL, *extra]))
    off = run(
        compose_cfg([*SMALL, *extra, f"privacy={mode}", "privacy.clip=null", "privacy.noise_multiplier=0"])
    )
    assert plain["epsilon"].isna().all() and (off["epsilon"] == math.inf).all()
    cols = TIMING + ["epsilon"]
    pd.testing.assert_frame_equal(off.drop(columns=cols), plain.drop(columns=cols), check_exact=True)


# -- adaptive clipping --------------------------------------------------------------------------
def test_adaptive_clip_follows_the_geometric_update_and_sends_one_byte():
    base = [*SMALL, "privacy.noise_multiplier=0", "privacy.clip=100"]
    engine, rows = _rows([*base, "privacy=central_adaptive", "privacy.target_quantile=0.5"])
    # no noise: every change fits a clip of 100, the fraction is 1, clip *= exp(-0.2 * 0.5)
    assert engine.privacy.current_clip() == pytest.approx(100 * math.exp(-0.1) ** 4, rel=1e-12)
    _, fixed = _rows([*base, "privacy=central"])
    assert [r["bytes_up"] - f["bytes_up"] for r, f in zip(rows, fixed)] == [r["reported"] for r in rows]


def test_adaptive_noise_is_split_between_count_and_update():
    mech = _fitted(CentralAdaptive, clip=1.0, noise_multiplier=1.0, count_stddev=1.0)
    assert mech.update_noise_multiplier() == pytest.approx((1 - 0.25) ** -0.5)
    assert mech.epsilon(3) == _fitted(Central, clip=1.0, noise_multiplier=1.0).epsilon(3)


# -- engines, methods, strategies --------------------------------------------------------------
@pytest.mark.parametrize("method", ["lora", "head_only", "full"])
def test_both_engines_run_every_tensor_method(method):
    over = [*SMALL, f"method={method}", "privacy=central", "fl.num_rounds=2"]
    _, exact = _rows(over)
    _, vec = _rows([*over, "fl.engine=vectorized"], engine_cls=VectorizedEngine)
    assert [r["selected"] for r in exact] == [r["selected"] for r in vec]
    assert [r["epsilon"] for r in exact] == [r["epsilon"] for r in vec]
    assert all(math.isfinite(r["test_loss"]) for r in exact + vec)


def test_server_optimizer_steps_on_the_noised_average():
    spec = validate(compose_cfg([*SMALL, "privacy=central", "strategy=fedadam"]))
    data, model, state = build(spec)
    engine = engine_for(spec, data, model, state)
    calls = []
    aggregate = engine.strategy.aggregate

    def spy(global_payload, updates):
        calls.append(len(updates))
        return aggregate(global_payload, updates)

    engine.strategy.aggregate = spy
    engine.run_round()
    assert calls == [1] and engine.strategy.steps == 1


# -- run folder: summary, resume, old folders --------------------------------------------------
@pytest.mark.parametrize(
    "over",
    [
        ["privacy=central_adaptive", "compression=topk", "privacy.clip=0.1"],
        ["privacy=local", "privacy.noise_multiplier=0.5", "fl.dropout=0.3"],
        ["privacy=central", "privacy.target_epsilon=20", "fl.engine=vectorized"],
    ],
)
def test_resume_mid_run_is_bit_exact_with_privacy(tmp_path, over):
    cfg = compose_cfg([*SMALL, "fl.num_rounds=5", *over])
    reference = run(cfg, out_dir=tmp_path / "ref")
    with pytest.raises(KeyboardInterrupt):
        run(cfg, out_dir=tmp_path / "cut", on_round=StopAfter(2))
    resumed = run(cfg, out_dir=tmp_path / "cut")
    pd.testing.assert_frame_equal(
        resumed.drop(columns=TIMING), reference.drop(columns=TIMING), check_exact=True
    )
    ref, cut = (json.loads((tmp_path / d / "summary.json").read_text()) for d in ("ref", "cut"))
    assert cut["resumed_from_round"] == 2 and cut["privacy"] == ref["privacy"]
    p = ref["privacy"]
    assert p["epsilon"] == reference["epsilon"].iloc[-1]
    assert {"epsilon", "delta", "noise_multiplier", "clip", "accountant"} <= set(p)


def test_privacy_none_keeps_the_hash_and_an_old_folder_resumes(tmp_path):
    cfg = compose_cfg(SMALL)
    spec = validate(cfg)
    old = {k: v for k, v in spec.resolved.items() if k != "privacy"}
    assert "privacy" in spec.resolved and config_hash(old) == spec.config_hash
    assert validate(compose_cfg([*SMALL, "privacy=central"])).config_hash != spec.config_hash
    reference = run(cfg)
    with pytest.raises(KeyboardInterrupt):
        run(cfg, out_dir=tmp_path, on_round=StopAfter(2))
    # make the folder look like one written before privacy existed
    for path in (tmp_path / "checkpoint").glob("*.json"):
        record = json.loads(path.read_text())
        record["config"].pop("privacy")
        record["record_sha256"] = checkpoint._record_sha(record)
        path.write_text(json.dumps(record))
    summary = json.loads((tmp_path / "summary.json").read_text())
    summary["config"].pop("privacy")
    (tmp_path / "summary.json").write_text(json.dumps(summary))
    resumed = run(cfg, out_dir=tmp_path)
    assert json.loads((tmp_path / "summary.json").read_text())["resumed_from_round"] == 2
    pd.testing.assert_frame_equal(
        resumed.drop(columns=TIMING), reference.drop(columns=TIMING), check_exact=True
    )


# -- bad input: one line, exit 2, no run folder -------------------------------------------------
@pytest.mark.parametrize(
    "args, key",
    [
        (["privacy=central", "privacy.noise_multiplier=-0.5"], "privacy.noise_multiplier"),
        (["privacy=local", "privacy.clip=0"], "privacy.clip"),
        (["privacy=central", "privacy.clip=-1"], "privacy.clip"),
        (["privacy=central", "privacy.delta=0"], "privacy.delta"),
        (["privacy=central_adaptive", "privacy.delta=1.5"], "privacy.delta"),
        (["privacy=central", "privacy.target_epsilon=0.001"], "privacy.target_epsilon"),
        (["privacy=central", "strategy=median"], "strategy=median"),
        (["privacy=central", "strategy=trimmed_mean"], "strategy=trimmed_mean"),
        (["privacy=central_adaptive", "strategy=median"], "strategy=median"),
        (
            ["privacy=central", "privacy.target_epsilon=4", "privacy.noise_multiplier=1"],
            "privacy.target_epsilon",
        ),
        (["privacy=central", "privacy.accountant=pld", "privacy.sampling=fixed_size"], "privacy.sampling"),
        (["privacy=central", "method.aggregation=exact"], "privacy=central"),
        (["privacy=central", "fl.sampling=weighted"], "fl.sampling"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_no_run_folder(tmp_path, args, key):
    out = tmp_path / "run"
    res = run_cli([*TINY_MLP, *args, f"hydra.run.dir={out}"], cwd=tmp_path, timeout=120)
    assert res.returncode == 2, res.stderr
    lines = [ln for ln in res.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and key in lines[0], res.stderr
    assert not out.exists()
