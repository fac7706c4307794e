"""The report's simulated-time view (system=): time to target beside MB to target, and the
accuracy-vs-simulated-time figure, recomputed here from the run folders' rows."""

from __future__ import annotations

import pandas as pd
import pytest
from conftest import TINY_MLP, compose_cfg

from fedbench import report as rep
from fedbench.run import run

TINY = [("fl.num_rounds=4" if t.startswith("fl.num_rounds=") else t) for t in TINY_MLP]


@pytest.fixture(scope="module")
def timed(tmp_path_factory):
    root = tmp_path_factory.mktemp("timed")
    for method in ("lora", "full"):
        for seed in (0, 1):
            cfg = compose_cfg([*TINY, f"method={method}", f"seed={seed}", "system=lte"])
            run(cfg, out_dir=root / f"{method}_{seed}", choices={"method": method, "system": "lte"})
    out = root / "report"
    rep.report([str(root)], out, target_accuracy=0.0)
    return root, out


def test_time_to_target_is_read_on_the_mean_curve_and_totals_are_seed_means(timed):
    root, out = timed
    summary = pd.read_csv(out / "summary.csv")
    for method in ("lora", "full"):
        rows = [pd.read_parquet(root / f"{method}_{s}" / "metrics.parquet") for s in (0, 1)]
        row = summary[summary["method"] == method].iloc[0]
        # target 0: reached at round 1, after round 1's simulated time (mean over seeds)
        assert row["rounds_to_target"] == 1
        assert row["sim_s_to_target"] == pytest.approx(
            (rows[0]["sim_time_s"][0] + rows[1]["sim_time_s"][0]) / 2
        )
        assert row["sim_s_total"] == pytest.approx(
            (rows[0]["sim_time_s"].iloc[-1] + rows[1]["sim_time_s"].iloc[-1]) / 2
        )
        assert row["sim_s_to_target_seed_mean"] == pytest.approx(row["sim_s_to_target"])
    # full fine-tuning sends more bytes over the same links: it takes longer
    by = summary.set_index("method")
    assert by.loc["full", "sim_s_total"] > by.loc["lora", "sim_s_total"]


def test_the_report_draws_accuracy_vs_simulated_time_and_names_it(timed):
    _, out = timed
    assert (out / "accuracy_vs_time.png").is_file() and (out / "accuracy_vs_time.pdf").is_file()
    md = (out / "summary.md").read_text()
    assert "sim. time to target" in md and "accuracy_vs_time.png" in md


def test_runs_without_a_clock_get_no_time_figure(tmp_path):
    for seed in (0, 1):
        run(compose_cfg([*TINY, f"seed={seed}"]), out_dir=tmp_path / f"r{seed}", choices={"method": "lora"})
    rep.report([str(tmp_path)], tmp_path / "out")
    assert not (tmp_path / "out" / "accuracy_vs_time.png").exists()
    assert "sim. time" not in (tmp_path / "out" / "summary.md").read_text()
