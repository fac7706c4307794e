"""rng=paired: runs that differ only in method, lr or evaluation schedule see the same clients
and the same batches; fl.eval_every; per-client evaluation on held-out client splits."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import MLP_THREE_CLIENTS, StopAfter, compose_cfg, engine_for, run_cli

from fedbench.config import canonical, validate
from fedbench.fl.local import evaluate
from fedbench.fl.vectorized import VectorizedEngine
from fedbench.rng import seed_for
from fedbench.run import build, run

# 6 clients, 3 per round, 4 rounds, 2 local epochs: enough draws for order effects to show.
MLP = [
    *MLP_THREE_CLIENTS,
    "fl.num_clients=6",
    "fl.clients_per_round=3",
    "fl.num_rounds=4",
    "fl.local_epochs=2",
]
METHODS = {"lora": ["method=lora"], "head_only": ["method=head_only"], "full": ["method=full"]}


def _recorded_run(overrides, rounds, engine_cls=None):
    """(rows, {(round, client, epoch): order}) of a run whose engine records every shuffle."""
    spec = validate(compose_cfg(overrides))
    data, model, state = build(spec)
    engine = engine_for(spec, data, model, state, engine_cls)
    orders = {}
    plain = engine.shuffle

    def recording(rnd, client, n, epoch):
        order = plain(rnd, client, n, epoch)
        orders[(rnd, client, epoch)] = order.tolist()
        return order

    engine.shuffle = recording
    rows = [engine.run_round() for _ in range(rounds)]
    return rows, orders


def test_paired_methods_see_the_same_clients_and_batches():
    runs = {m: _recorded_run([*MLP, *o, "rng=paired"], 4) for m, o in METHODS.items()}
    (rows0, orders0), *others = runs.values()
    assert len(orders0) == 4 * 3 * 2
    for rows, orders in others:
        assert [r["selected"] for r in rows] == [r["selected"] for r in rows0]
        assert orders == orders0
    # and the methods did train differently (the invariance is not a frozen run)
    assert len({rows[-1]["train_loss"] for rows, _ in runs.values()}) == 3


def test_tutorial_stream_couples_method_and_batches():
    """The contrast: under rng=tutorial LoRA's initialisation draws shift every shuffle."""
    _, lora = _recorded_run([*MLP, "method=lora", "rng=tutorial"], 2)
    _, head = _recorded_run([*MLP, "method=head_only", "rng=tutorial"], 2)
    assert lora.keys() == head.keys() and lora != head


def test_paired_batches_do_not_depend_on_lr_codec_or_strategy():
    _, base = _recorded_run([*MLP, "rng=paired"], 3)
    for extra in (["fl.lr=0.01"], ["compression=int8"], ["strategy=fedadam"]):
        _, other = _recorded_run([*MLP, "rng=paired", *extra], 3)
        assert other == base, extra


def test_paired_head_and_lora_init_are_per_module():
    """The head's initial weights are the same with or without LoRA; a LoRA factor's are the
    same whichever other layers LoRA wraps."""
    over = [*MLP, "rng=paired"]
    _, lora_model, _ = build(validate(compose_cfg([*over, "method=lora"])))
    _, head_model, _ = build(validate(compose_cfg([*over, "method=head_only"])))
    assert torch.equal(lora_model.head.weight, head_model.head.weight)
    _, one, _ = build(validate(compose_cfg([*over, "method=lora", "method.target_modules=[layers.0]"])))
    assert torch.equal(one.layers[0].lora_A, lora_model.layers[0].lora_A)
    # under the tutorial's stream, LoRA's draws come before the head's
    _, tl, _ = build(validate(compose_cfg([*MLP, "rng=tutorial", "method=lora"])))
    _, th, _ = build(validate(compose_cfg([*MLP, "rng=tutorial", "method=head_only"])))
    assert not torch.equal(tl.head.weight, th.head.weight)


def test_eval_every_leaves_every_evaluated_round_unchanged():
    over = [*MLP, "rng=paired", "fl.num_rounds=6"]
    every = run(compose_cfg(over))
    sparse = run(compose_cfg([*over, "fl.eval_every=4"]))
    evaluated = [4, 6]  # every 4th and the last
    assert sparse.loc[sparse.accuracy.notna(), "round"].tolist() == evaluated
    assert sparse.loc[sparse.accuracy.isna(), "test_loss"].isna().all()
    for r in evaluated:
        a, b = every[every["round"] == r].iloc[0], sparse[sparse["round"] == r].iloc[0]
        assert a.accuracy == b.accuracy and a.test_loss == b.test_loss
    for col in ("train_loss", "bytes_up", "bytes_down", "cum_bytes", "selected"):
        assert every[col].tolist() == sparse[col].tolist(), col


def test_eval_every_shifts_the_tutorial_stream():
    """The contrast: the tutorial evaluates through a DataLoader, whose seed draw moves the
    next round's shuffles, so evaluating less often changes training."""
    over = [*MLP, "rng=tutorial", "fl.num_rounds=3"]
    every = run(compose_cfg(over))
    sparse = run(compose_cfg([*over, "fl.eval_every=3"]))
    assert every.train_loss.iloc[0] == sparse.train_loss.iloc[0]
    assert every.train_loss.iloc[1] != sparse.train_loss.iloc[1]


def test_paired_engines_agree():
    exact, _ = _recorded_run([*MLP, "rng=paired"], 3)
    vec, _ = _recorded_run([*MLP, "rng=paired"], 3, VectorizedEngine)
    for x, y in zip(exact, vec):
        assert x["selected"] == y["selected"]
        assert y["train_loss"] == pytest.approx(x["train_loss"], rel=1e-4)
        assert y["test_loss"] == pytest.approx(x["test_loss"], rel=1e-4)


def test_paired_selection_and_dropout_are_functions_of_seed_and_round():
    """Selection in round r is drawn from stream (seed, select, sampling_seed, r), dropout per
    (seed, dropout, r, client), whatever happened before."""
    spec = validate(compose_cfg([*MLP, "rng=paired", "fl.dropout=0.5", "seed=3"]))
    data, model, state = build(spec)
    engine = engine_for(spec, data, model, state)
    rows = [engine.run_round() for _ in range(4)]
    for r, row in enumerate(rows, 1):
        gen = np.random.default_rng(seed_for(3, "select", spec.fl.sampling_seed, r))
        chosen = [int(c) for c in gen.choice(6, 3, replace=False)]
        assert row["selected"] == " ".join(map(str, chosen))
        arrive = [np.random.default_rng(seed_for(3, "dropout", r, c)).random() >= 0.5 for c in chosen]
        assert row["reported"] == sum(arrive)


def test_paired_resume_is_bit_exact(tmp_path):
    cfg = compose_cfg([*MLP, "rng=paired", "fl.num_rounds=5", "fl.eval_every=2", "fl.dropout=0.3"])
    reference = run(cfg)
    with pytest.raises(KeyboardInterrupt):
        run(cfg, out_dir=tmp_path, on_round=StopAfter(3))
    resumed = run(cfg, out_dir=tmp_path)
    timing = ["wall_s", "elapsed_s"]
    pd.testing.assert_frame_equal(
        resumed.drop(columns=timing), reference.drop(columns=timing), check_exact=True
    )


def test_configs_recorded_before_rng_existed_are_tutorial_runs():
    resolved = {"seed": 1, "fl": {}, "threads": 2}
    assert canonical(resolved) == canonical({**resolved, "rng": "tutorial"})
    assert canonical(resolved) != canonical({**resolved, "rng": "paired"})


# -- per-client evaluation ------------------------------------------------------------------
SPLIT = [*MLP, "data.client_test_fraction=0.25"]


def test_client_splits_are_held_out_and_scored(tmp_path):
    spec = validate(compose_cfg(SPLIT))
    data, model, state = build(spec)
    assert data.client_sizes() == [24] * 6 and [len(y) for _, y in data.client_tests] == [8] * 6
    # the split is disjoint from training: no held-out row appears in its client's training rows
    for (x, _), (xt, _) in zip(data.clients, data.client_tests):
        assert not (xt[:, None, :] == x[None, :, :]).all(-1).any()
    engine = engine_for(spec, data, model, state)
    row = engine.run_round()
    per = [evaluate(model, x, y, draw_loader_seed=False)[0] for x, y in data.client_tests]
    assert row["client_acc_mean"] == pytest.approx(np.mean(per), abs=1e-12)
    assert row["client_acc_std"] == pytest.approx(np.std(per), abs=1e-12)
    assert row["client_acc_p10"] == pytest.approx(np.percentile(per, 10), abs=1e-12)
    assert row["client_acc_min"] == min(per)
    assert [c["accuracy"] for c in row["_clients"]] == pytest.approx(per, abs=1e-12)


def test_client_metrics_file_and_resume(tmp_path):
    cfg = compose_cfg([*SPLIT, "fl.num_rounds=4", "fl.eval_every=2"])
    reference = run(cfg, out_dir=tmp_path / "ref")
    table = pd.read_parquet(tmp_path / "ref" / "client_metrics.parquet")
    assert list(table.columns) == ["round", "client", "samples", "accuracy", "loss"]
    assert sorted(set(table["round"])) == [2, 4] and len(table) == 2 * 6
    for r, group in table.groupby("round"):
        row = reference[reference["round"] == r].iloc[0]
        assert row.client_acc_mean == pytest.approx(group.accuracy.mean(), abs=1e-12)
        assert row.client_acc_min == group.accuracy.min()
    assert reference.loc[reference.accuracy.isna(), "client_acc_mean"].isna().all()
    summary = json.loads((tmp_path / "ref" / "summary.json").read_text())
    assert summary["final_client_acc_p10"] == reference.client_acc_p10.iloc[-1]
    with pytest.raises(KeyboardInterrupt):
        run(cfg, out_dir=tmp_path / "cut", on_round=StopAfter(3))
    run(cfg, out_dir=tmp_path / "cut")
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "cut" / "client_metrics.parquet"), table)


def test_client_eval_with_the_feature_cache_equals_uncached():
    over = [*SPLIT, "method=head_only", "fl.num_rounds=2"]
    cached = run(compose_cfg([*over, "fl.feature_cache=true"]))
    plain = run(compose_cfg([*over, "fl.feature_cache=false"]))
    for col in ("client_acc_mean", "client_acc_min", "accuracy"):
        assert cached[col].tolist() == pytest.approx(plain[col].tolist(), abs=1e-9), col


def test_no_client_split_leaves_the_columns_empty():
    df = run(compose_cfg([*MLP, "fl.num_rounds=1"]))
    assert df[["client_acc_mean", "client_acc_std", "client_acc_p10", "client_acc_min"]].isna().all().all()


@pytest.mark.parametrize(
    "args, key",
    [
        (["rng=fresh"], "rng"),
        (["fl.eval_every=0"], "fl.eval_every"),
        (["data.samples_per_client=1", "data.client_test_fraction=0.5"], "data.client_test_fraction"),
        (["data.client_test_fraction=1.0"], "data.client_test_fraction"),
        (["data=tutorial_lazy", "data.client_test_fraction=0.2"], "data.client_test_fraction"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, args, key):
    out = tmp_path / "run"
    res = run_cli([*MLP_THREE_CLIENTS, *args, f"hydra.run.dir={out}"], cwd=tmp_path, timeout=120)
    assert res.returncode == 2, res.stderr
    lines = [ln for ln in res.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and key in lines[0], res.stderr
    assert not (out / "metrics.csv").exists() and not (out / "summary.json").exists()
