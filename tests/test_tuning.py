"""Learning-rate tuning: the validation split (the objective never sees the test set), the
optuna study of experiment=tune_lr, the tuned YAML and the comparison that includes it."""

from __future__ import annotations

import importlib.util
import json
import math
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from conftest import CONF, TINY_MLP, TINY_TEXT, compose_cfg, run_cli
from omegaconf import OmegaConf

from fedbench import tuning
from fedbench.__main__ import objective
from fedbench.config import validate
from fedbench.data.tutorial import TutorialData
from fedbench.errors import ConfigError
from fedbench.run import build, run

needs_optuna = pytest.mark.skipif(
    importlib.util.find_spec("hydra_plugins.hydra_optuna_sweeper") is None,
    reason="hydra-optuna-sweeper not installed (pip install -e '.[tune]')",
)


def _rows(t: tuple[torch.Tensor, torch.Tensor]) -> set[tuple]:
    x, y = t
    return {(tuple(a.tolist()), int(b)) for a, b in zip(x.reshape(len(y), -1), y)}


@pytest.mark.parametrize("overrides", [TINY_MLP, ["model=tiny_bert", *TINY_TEXT]], ids=["tutorial", "bbc"])
def test_the_validation_split_is_carved_from_the_clients_and_replaces_the_test_set(overrides):
    base = validate(compose_cfg(overrides))
    tuned = validate(compose_cfg([*overrides, "data.validation_fraction=0.25"]))
    data, _, _ = build(base)
    vdata, _, _ = build(tuned)
    assert vdata.evaluated_on == "validation" and data.evaluated_on == "test"
    assert vdata.client_tests is None  # no evaluation on any test data, the clients' own included
    validation = _rows(vdata.test)
    assert not validation & _rows(data.test)  # no test row is evaluated on
    for c, (full, kept) in enumerate(zip(data.clients, vdata.clients)):
        n = len(full[1])
        assert len(kept[1]) == n - max(1, int(0.25 * n)), c
        assert _rows(kept) <= _rows(full)  # clients train on what they had, less the split
    together = set().union(*(_rows(k) for k in vdata.clients)) | validation
    assert together == set().union(*(_rows(f) for f in data.clients))
    assert len(vdata.test[1]) == sum(len(f[1]) for f in data.clients) - sum(len(k[1]) for k in vdata.clients)


def test_the_default_is_unchanged_by_the_new_key():
    """data.validation_fraction=0 (the default) is the same configuration and the same data."""
    plain = validate(compose_cfg(TINY_MLP))
    explicit = validate(compose_cfg([*TINY_MLP, "data.validation_fraction=0.0"]))
    assert plain.config_hash == explicit.config_hash
    a, _, sa = build(plain)
    b, _, sb = build(explicit)
    assert all(
        torch.equal(x1, x2) and torch.equal(y1, y2) for (x1, y1), (x2, y2) in zip(a.clients, b.clients)
    )
    assert torch.equal(a.test[0], b.test[0]) and torch.equal(sa.flat, sb.flat)


def test_a_tuning_run_never_evaluates_on_the_test_set(tmp_path, monkeypatch):
    """A test set of NaN features: evaluated on, it makes the loss NaN (the run diverges); with a
    validation split the run completes with finite losses, so it never touched it."""
    real = TutorialData.build

    def poisoned(self, num_clients, seed):
        data = real(self, num_clients, seed)
        data.test = (torch.full_like(data.test[0], math.nan), data.test[1])
        return data

    monkeypatch.setattr(TutorialData, "build", poisoned)
    on_test = run(compose_cfg(TINY_MLP))
    assert math.isnan(on_test["test_loss"].iloc[0])
    tuned = run(compose_cfg([*TINY_MLP, "data.validation_fraction=0.2"]), out_dir=tmp_path / "run")
    assert len(tuned) == 2 and tuned["test_loss"].notna().all()
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["evaluated_on"] == "validation" and summary["status"] == "complete"
    assert pd.read_parquet(tmp_path / "run" / "clients.parquet")["client"].iloc[-1] == "validation"


@pytest.mark.parametrize(
    "overrides, key",
    [
        (["data.validation_fraction=1.0"], "data.validation_fraction"),
        (["data.validation_fraction=-0.1"], "data.validation_fraction"),
        (["data=tutorial_lazy", "data.validation_fraction=0.2"], "data.validation_fraction"),
        (["data.samples_per_client=1", "data.validation_fraction=0.2"], "data.validation_fraction"),
    ],
)
def test_bad_validation_fractions_are_refused_before_the_run(overrides, key):
    with pytest.raises(ConfigError) as info:
        validate(compose_cfg([*TINY_MLP, *overrides]))
    assert info.value.key == key and "\n" not in str(info.value)


def test_the_objective_is_the_final_accuracy_and_a_diverged_run_scores_zero():
    spec = validate(compose_cfg(TINY_MLP))
    rows = [{"round": 1, "accuracy": 0.3}, {"round": 2, "accuracy": 0.4}]
    assert objective(rows, spec) == 0.4
    assert objective(rows[:1], spec) == 0.0  # stopped (diverged) before its last round
    assert objective([rows[0], {"round": 2, "accuracy": math.nan}], spec) == 0.0


@needs_optuna
@pytest.mark.slow
def test_tune_lr_study_writes_a_tuned_yaml_that_a_comparison_includes(tmp_path):
    """experiment=tune_lr with 3 trials: the optuna sweeper tries fl.lr on a log scale within its
    interval, every trial evaluates on the validation split, the best value is the best trial's
    final validation accuracy; python -m fedbench.tuning writes it as <arm>.yaml, and a config
    that includes the file through ${arm} runs the arm at that learning rate."""
    sweep = tmp_path / "study"
    res = run_cli(
        [
            "-m",
            "experiment=tune_lr",
            "arm=lora_r4",
            *TINY_MLP,
            "hydra.sweeper.n_trials=3",
            f"hydra.sweep.dir={sweep}",
        ],
        cwd=tmp_path,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    found = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    trials = [json.loads(p.read_text()) for p in sorted(sweep.glob("*/summary.json"))]
    assert len(trials) == 3 and {t["evaluated_on"] for t in trials} == {"validation"}
    assert {t["choices"]["arm"] for t in trials} == {"lora_r4"} and {t["config"]["seed"] for t in trials} == {
        0
    }
    lrs = [t["config"]["fl"]["lr"] for t in trials]
    assert len(set(lrs)) == 3 and all(1e-4 <= lr <= 0.3 for lr in lrs)
    best = max(trials, key=lambda t: t["final_accuracy"])
    assert (
        found["best_value"] == best["final_accuracy"]
        and found["best_params"]["fl.lr"] == best["config"]["fl"]["lr"]
    )

    conf = tmp_path / "conf"
    shutil.copytree(CONF, conf)
    out = conf / "tuned_lr" / "mine"
    assert tuning.main([str(sweep), "--out", str(out)]) == 0
    written = out / "lora_r4.yaml"
    assert yaml.safe_load(written.read_text()) == {"fl": {"lr": found["best_params"]["fl.lr"]}}
    assert "experiment=tune_lr arm=lora_r4" in written.read_text()
    (conf / "experiment" / "mine.yaml").write_text(
        "# @package _global_\ndefaults:\n  - /arm: lora_r4\n  - /tuned_lr/mine: ${arm}\n"
    )
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
            cfg = compose("config", overrides=["experiment=mine"])
    finally:
        GlobalHydra.instance().clear()
    assert cfg.fl.lr == found["best_params"]["fl.lr"] and cfg.method.rank == 4


def test_the_tuning_tool_refuses_a_study_that_evaluated_on_the_test_set(tmp_path, capsys):
    study = tmp_path / "study"
    trial = study / "0_fl.lr=0.01"
    trial.mkdir(parents=True)
    (study / "optimization_results.yaml").write_text(
        "name: optuna\nbest_params:\n  fl.lr: 0.01\nbest_value: 0.5\n"
    )
    summary = {"evaluated_on": "test", "choices": {"method": "lora"}, "config": {"fl": {"lr": 0.01}}}
    (trial / "summary.json").write_text(json.dumps(summary))
    assert tuning.main([str(study), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "evaluated on the test set" in err and "data.validation_fraction" in err
    assert not (tmp_path / "out").exists()


def test_compare_tuned_runs_each_arm_at_its_tuned_rate_on_the_test_set_with_fresh_seeds():
    exp = OmegaConf.load(CONF / "experiment" / "compare_tuned.yaml")
    params = exp.hydra.sweeper.params
    tune_seed = OmegaConf.load(CONF / "experiment" / "tune_lr.yaml").seed
    seeds = [int(s) for s in str(params.seed).split(",")]
    assert tune_seed not in seeds and len(seeds) >= 3  # fresh seeds
    for arm in str(params.arm).split(","):
        tuned = yaml.safe_load((CONF / "tuned_lr" / "tutorial" / f"{arm}.yaml").read_text())["fl"]["lr"]
        spec = validate(compose_cfg(["experiment=compare_tuned", f"arm={arm}"]))
        assert spec.fl.lr == tuned and spec.data.validation_fraction == 0.0  # the test set, all data
        assert spec.resolved["threads"] == validate(compose_cfg(["experiment=tune_lr", f"arm={arm}"])).threads


def test_a_missing_sweeper_plugin_is_exit_3():
    from hydra.errors import MissingConfigException

    from fedbench.cli_check import _composition_error

    exc = MissingConfigException("missing", missing_cfg_file="hydra/sweeper/optuna", options=["basic"])
    err = _composition_error("config", ["hydra/sweeper=optuna"], exc)
    assert err.exit_code == 3 and "hydra-optuna-sweeper" in str(err) and "[tune]" in str(err)


def test_tune_lr_is_checked_before_it_starts(tmp_path):
    """A bad fixed override under the optuna sweeper is one line, exit 2, no sweep folder."""
    res = run_cli(
        ["-m", "experiment=tune_lr", "method.rnk=3", f"hydra.sweep.dir={tmp_path / 's'}"], cwd=tmp_path
    )
    assert res.returncode == 2 and res.stderr.strip().startswith("fedbench: method.rnk: unknown key")
    assert not (tmp_path / "s").exists()


def test_tuned_files_name_their_study():
    for path in sorted((CONF / "tuned_lr").glob("*/*.yaml")):
        text = path.read_text()
        assert text.startswith("# @package _global_\n"), path
        assert "Study: fedbench -m experiment=tune_lr" in text, path
        assert set(yaml.safe_load(text)) == {"fl"} and set(yaml.safe_load(text)["fl"]) == {"lr"}, path
    assert Path(CONF / "tuned_lr" / "tutorial").is_dir()
