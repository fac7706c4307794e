"""Every client update is validated before aggregation; faults are rejected, not averaged."""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import compose_cfg

from fedbench.config import ConfigError, validate
from fedbench.fl.engine import check_update
from fedbench.fl.faults import KINDS, corrupt
from fedbench.run import run

BASE = ["fl.num_rounds=3", "fl.clients_per_round=4", "model.hidden_dim=64", "model.num_layers=2", "threads=1"]


@pytest.mark.parametrize("kind", ["wrong_shape", "wrong_dtype", "missing_key", "extra_key"])
def test_malformed_update_is_rejected_and_round_proceeds(kind):
    df = run(compose_cfg([*BASE, f"fl.faults=[{kind}:*:2]"]))
    assert df["rejected"].tolist() == [0, 4, 0]  # all of round 2's updates, none otherwise
    assert df["reported"].tolist() == [4, 4, 4]
    # nothing usable arrived in round 2: the global model stayed as it was
    assert df.loc[1, "test_loss"] == df.loc[0, "test_loss"]
    assert math.isfinite(df.loc[2, "test_loss"])


def test_single_bad_client_is_dropped_from_the_average():
    clean = run(compose_cfg(BASE))
    first = [int(c) for c in clean.loc[0, "selected"].split()]
    bad = run(compose_cfg([*BASE, f"fl.faults=[nan:{first[0]}:1]"]))
    assert bad["rejected"].tolist() == [1, 0, 0]
    assert bad["reported"].tolist() == [4, 4, 4]
    assert all(math.isfinite(v) for v in bad["test_loss"])
    assert bad.loc[0, "test_loss"] != clean.loc[0, "test_loss"]  # the average really changed


@pytest.mark.parametrize("kind", ["nan", "inf"])
def test_every_update_nonfinite_means_diverged(tmp_path, kind):
    df = run(compose_cfg([*BASE, "fl.num_rounds=5", f"fl.faults=[{kind}:*:2]"]), out_dir=tmp_path)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "diverged"
    assert len(df) == 2 and summary["rounds_completed"] == 2  # rows up to the failure kept


def test_byzantine_scaled_update_passes_validation_but_median_resists_it():
    cfg = [*BASE, "fl.num_rounds=1", "fl.clients_per_round=5"]
    clean = run(compose_cfg(cfg))
    sel = [int(c) for c in clean.loc[0, "selected"].split()]
    one_bad = f"fl.faults=[scale:{sel[0]}:1]"
    avg = run(compose_cfg([*cfg, one_bad]))
    med = run(compose_cfg([*cfg, one_bad, "strategy=median"]))
    med_clean = run(compose_cfg([*cfg, "strategy=median"]))
    assert avg.loc[0, "rejected"] == 0  # finite: not a validation matter
    assert abs(med.loc[0, "test_loss"] - med_clean.loc[0, "test_loss"]) < abs(
        avg.loc[0, "test_loss"] - clean.loc[0, "test_loss"]
    )


def test_trimmed_mean_drops_extremes():
    from fedbench.fl.strategies import TrimmedMean

    ups = [(1, {"w": torch.tensor([v])}) for v in (1.0, 2.0, 3.0, 4.0, 100.0)]
    assert TrimmedMean(beta=0.2).aggregate({}, ups)["w"].item() == 3.0
    with pytest.raises(ConfigError):
        TrimmedMean(beta=0.5)


def test_check_update_reasons():
    ref = {"a": torch.zeros(2, 3), "b": torch.zeros(4)}
    assert check_update({k: v.clone() for k, v in ref.items()}, ref) is None
    for kind in KINDS:
        if kind == "scale":
            continue
        assert check_update(corrupt(ref, kind), ref) is not None, kind


@pytest.mark.parametrize("bad", ["boom:1:1", "nan:x:1", "nan:1", "nan:1:-2"])
def test_bad_fault_spec_is_a_config_error(bad):
    with pytest.raises(ConfigError, match="fl.faults"):
        validate(compose_cfg([f"fl.faults=[{bad}]"]))
