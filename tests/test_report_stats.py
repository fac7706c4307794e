"""The report's statistics on hand-made runs tables whose answers are known: bootstrap intervals
against scipy and normal theory, evaluated rounds only (``fl.eval_every``), seeds reaching the
target, paired differences against an unpaired analysis, and ``--baseline`` input checks."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from conftest import ROOT, run_report
from scipy import stats

from fedbench.report.cli import report
from fedbench.report.errors import ReportError
from fedbench.report.markdown import summary_markdown
from fedbench.report.paired import paired_differences, parse_pair, select_configuration
from fedbench.report.statistics import (
    N_RESAMPLES,
    RANDOM_STATE,
    bootstrap_ci,
    bootstrap_diff_ci,
    build_summary,
    curves,
    per_run,
)

ROUNDS = 6
PER_ROUND = 1_000_000  # bytes up (and down) per round: cum MB = 2 * round


def table(acc: dict[str, dict[int, list[float]]]) -> pd.DataFrame:
    """A runs table: ``acc[arm][seed]`` = accuracy per round (NaN = not evaluated)."""
    rows = []
    for k, (arm, by_seed) in enumerate(acc.items()):
        cid = f"cfg{k}"
        for seed, curve in by_seed.items():
            for r, a in enumerate(curve, start=1):
                rows.append(
                    {
                        "run_dir": f"runs/{arm}_s{seed}",
                        "method": "lora",
                        "arm": arm,
                        "seed": seed,
                        "threads": 1,
                        "config_hash": f"{cid}{seed}",
                        "config_id": cid,
                        "label": arm,
                        "round": r,
                        "accuracy": a,
                        "test_loss": 1.0,
                        "train_loss": 1.0,
                        "bytes_up": PER_ROUND,
                        "bytes_down": PER_ROUND,
                        "cum_bytes_up": PER_ROUND * r,
                        "cum_bytes_down": PER_ROUND * r,
                        "cum_bytes": 2 * PER_ROUND * r,
                        "trainable_params": 10,
                        "elapsed_s": float(r),
                    }
                )
    df = pd.DataFrame(rows)
    df["cum_mb"] = df["cum_bytes"] / 1e6
    return df


def ramp(start: float, step: float = 0.05) -> list[float]:
    return [start + step * r for r in range(ROUNDS)]


# --------------------------------------------------------------------------- bootstrap
def test_bootstrap_ci_is_scipy_percentile_bootstrap_of_the_mean():
    x = np.array([0.61, 0.58, 0.66, 0.60, 0.71])
    res = stats.bootstrap(
        (np.sort(x),),
        np.mean,
        confidence_level=0.95,
        n_resamples=N_RESAMPLES,
        method="percentile",
        random_state=np.random.default_rng(RANDOM_STATE),
    )
    lo, hi = bootstrap_ci(x)
    assert (lo, hi) == (res.confidence_interval.low, res.confidence_interval.high)
    assert lo < x.mean() < hi and x.min() <= lo and hi <= x.max()
    # the order rows come in does not change it
    assert bootstrap_ci(x[::-1]) == (lo, hi) and bootstrap_ci(np.roll(x, 2)) == (lo, hi)


def test_bootstrap_ci_matches_normal_theory_for_many_values():
    x = np.random.default_rng(1).normal(0.5, 0.1, size=400)
    lo, hi = bootstrap_ci(x)
    half = 1.96 * x.std(ddof=1) / math.sqrt(len(x))
    assert lo == pytest.approx(x.mean() - half, abs=0.1 * half)
    assert hi == pytest.approx(x.mean() + half, abs=0.1 * half)


def test_bootstrap_ci_degenerate_inputs():
    assert all(math.isnan(v) for v in bootstrap_ci([0.5]))
    assert all(math.isnan(v) for v in bootstrap_ci([]))
    assert bootstrap_ci([0.25, 0.25, 0.25]) == (0.25, 0.25)
    with pytest.raises(ValueError, match="NaN"):
        bootstrap_ci([0.1, float("nan")])


# --------------------------------------------------------------------------- evaluated rounds
def test_non_evaluated_rounds_never_count_as_accuracy():
    nan = float("nan")
    every2 = [nan, 0.30, nan, 0.50, nan, 0.60]  # fl.eval_every=2: rounds 2, 4, 6
    df = table({"a": {0: every2, 1: [nan, 0.32, nan, 0.52, nan, 0.58]}, "b": {0: ramp(0.2), 1: ramp(0.21)}})
    runs = per_run(df, target=0.45).set_index("run_dir")
    assert runs.loc["runs/a_s0", "final_acc"] == 0.60 and runs.loc["runs/a_s1", "final_acc"] == 0.58
    # reached at round 4 (the first evaluated round above 0.45), with the MB sent until then
    assert runs.loc["runs/a_s0", "rounds_to_target"] == 4 and runs.loc["runs/a_s0", "mb_to_target"] == 8
    summary, _ = build_summary(df, target=0.45)
    a = summary.set_index("label").loc["a"]
    assert a["final_acc_mean"] == pytest.approx(0.59)
    assert a["best_acc_mean"] == pytest.approx(0.59)
    assert (a["final_acc_ci_low"], a["final_acc_ci_high"]) == bootstrap_ci([0.60, 0.58])
    assert a["rounds_to_target"] == 4 and a["seeds_reaching_target"] == 2
    # curves only at rounds every run evaluated, with the interval of the mean over seeds
    c = curves(df)
    ca = c[c["config_id"] == "cfg0"]
    assert list(ca["round"]) == [2, 4, 6]
    row = ca[ca["round"] == 4].iloc[0]
    assert (row["acc_ci_low"], row["acc_ci_high"]) == bootstrap_ci([0.50, 0.52])
    assert list(c[c["config_id"] == "cfg1"]["round"]) == list(range(1, ROUNDS + 1))


def test_seeds_that_miss_the_target_are_counted_not_averaged_away():
    df = table({"a": {0: ramp(0.40), 1: ramp(0.42), 2: ramp(0.10)}})  # seed 2 never reaches 0.6
    summary, how = build_summary(df, target=0.6)
    a = summary.iloc[0]
    assert a["seeds_reaching_target"] == 2 and a["n_seeds"] == 3
    assert math.isnan(a["mb_to_target_seed_mean"]) and math.isnan(a["rounds_to_target_ci_low"])
    md = summary_markdown(summary, how, 3, 0, 0, [])
    line = next(x for x in md.splitlines() if x.startswith("| a |") and "reached" in x)
    assert "2/3 reached" in line
    # every seed reaching it (0.36 + 0.05 * 5 >= 0.6 at round 6): the per-seed mean and interval
    df = table({"a": {0: ramp(0.40), 1: ramp(0.42), 2: ramp(0.36)}})
    a = build_summary(df, target=0.6)[0].iloc[0]
    per_seed = per_run(df, 0.6)["rounds_to_target"].to_numpy()
    assert list(per_seed) == [5, 5, 6] and a["seeds_reaching_target"] == 3
    assert a["rounds_to_target_seed_mean"] == pytest.approx(16 / 3)
    assert (a["rounds_to_target_ci_low"], a["rounds_to_target_ci_high"]) == bootstrap_ci(per_seed)


# --------------------------------------------------------------------------- paired differences
SEED_EFFECT = {0: 0.10, 1: 0.30, 2: 0.05, 3: 0.25, 4: 0.18}  # large, shared by both arms


def paired_table(gain: float = 0.02) -> pd.DataFrame:
    jitter = {0: 0.002, 1: -0.001, 2: 0.001, 3: -0.002, 4: 0.0}
    return table(
        {
            "full": {s: ramp(e) for s, e in SEED_EFFECT.items()},
            "lora": {s: ramp(e + gain + jitter[s]) for s, e in SEED_EFFECT.items()},
        }
    )


def test_paired_difference_cancels_the_shared_seed_effect():
    df = paired_table()
    summary, how = build_summary(df, target=0.3)
    base = select_configuration(summary, [("arm", "full")])
    paired = paired_differences(df, summary, base, how["target"])
    final = paired[paired["metric"] == "final_acc"].iloc[0]
    runs = per_run(df).pivot(index="seed", columns="config_id", values="final_acc")
    d = (runs["cfg1"] - runs["cfg0"]).to_numpy()
    assert final["n_pairs"] == 5 and final["mean_diff"] == pytest.approx(d.mean())
    assert (final["ci_low"], final["ci_high"]) == bootstrap_ci(d)
    assert bool(final["excludes_zero"]) and final["ci_low"] > 0.015
    # the same numbers analysed as independent samples: the seed effect swamps the gain
    lo, hi = bootstrap_diff_ci(runs["cfg1"], runs["cfg0"])
    assert lo < 0 < hi and (hi - lo) > 10 * (final["ci_high"] - final["ci_low"])


def test_paired_difference_of_equal_arms_includes_zero_and_counts_unpaired_seeds():
    df = paired_table(gain=0.0)
    df = df[df["run_dir"] != "runs/lora_s4"]  # lora lacks seed 4
    summary, how = build_summary(df, target=0.3)
    paired = paired_differences(df, summary, select_configuration(summary, [("label", "full")]), 0.3)
    final = paired[paired["metric"] == "final_acc"].iloc[0]
    assert final["n_pairs"] == 4 and final["n_baseline_unpaired"] == 1 and final["n_unpaired"] == 0
    assert final["ci_low"] <= 0 <= final["ci_high"] and not final["excludes_zero"]


def test_baseline_selection_errors_name_the_allowed_values():
    summary, _ = build_summary(paired_table(), target=0.3)
    with pytest.raises(ReportError, match=r"unknown key 'armm'; keys: label, .*arm"):
        select_configuration(summary, [("armm", "full")])
    with pytest.raises(ReportError, match=r"no configuration has arm=fulll; arm takes: full, lora"):
        select_configuration(summary, [("arm", "fulll")])
    with pytest.raises(ReportError, match=r"matches 2 configurations .*arm takes: full, lora"):
        select_configuration(summary, [("method", "lora")])
    with pytest.raises(ValueError, match="not KEY=VALUE"):
        parse_pair("full")


_cli = run_report


def test_baseline_on_the_command_line(tmp_path):
    saved = tmp_path / "runs.parquet"
    paired_table().to_parquet(saved, index=False)
    bad = _cli(
        [str(saved), "--out", str(tmp_path / "bad"), "--baseline", "arm=nope", "--no-figures"], tmp_path
    )
    assert bad.returncode == 2 and not (tmp_path / "bad").exists()
    lines = bad.stderr.strip().splitlines()
    assert len(lines) == 1 and "arm=nope" in lines[0] and "full, lora" in lines[0], bad.stderr
    bad = _cli([str(saved), "--out", str(tmp_path / "bad"), "--baseline", "full"], tmp_path)
    assert bad.returncode == 2 and not (tmp_path / "bad").exists() and "KEY=VALUE" in bad.stderr
    ok = _cli([str(saved), "--out", str(tmp_path / "ok"), "--baseline", "arm=full", "--no-figures"], tmp_path)
    assert ok.returncode == 0, ok.stderr
    paired = pd.read_csv(tmp_path / "ok" / "paired.csv")
    assert set(paired["label"]) == {"lora"} and set(paired["baseline_label"]) == {"full"}
    md = (tmp_path / "ok" / "summary.md").read_text()
    assert "## Paired differences to *full*" in md and "**≠0**" in md


def test_report_without_baseline_writes_no_paired_table(tmp_path):
    saved = tmp_path / "runs.parquet"
    paired_table().to_parquet(saved, index=False)
    out = report([saved], tmp_path / "r", figures=False)
    assert out["paired"] is None and not (tmp_path / "r" / "paired.csv").exists()
    md = (tmp_path / "r" / "summary.md").read_text()
    assert "## Confidence intervals over seeds" in md and "Paired differences" not in md


def test_pairing_gain_script(tmp_path):
    """scripts/pairing_gain.py on a table where the seed effect is shared (paired) and one where
    each arm's seeds are independent (what a single coupled stream gives): paired is narrower."""
    paired_table().to_parquet(tmp_path / "paired.parquet", index=False)
    rng = np.random.default_rng(3)
    coupled = table(
        {
            "full": {s: ramp(e) for s, e in SEED_EFFECT.items()},
            "lora": {s: ramp(0.18 + 0.02 + rng.normal(0, 0.1)) for s in SEED_EFFECT},
        }
    )
    coupled.to_parquet(tmp_path / "tutorial.parquet", index=False)

    def pairing_gain(*baseline: str) -> subprocess.CompletedProcess:
        tables = [str(tmp_path / "paired.parquet"), str(tmp_path / "tutorial.parquet")]
        script = str(ROOT / "scripts" / "pairing_gain.py")
        return subprocess.run(
            [sys.executable, script, *tables, "--baseline", *baseline],
            capture_output=True,
            text=True,
            timeout=120,
        )

    res = pairing_gain("arm=full")
    assert res.returncode == 0, res.stderr
    row = next(line for line in res.stdout.splitlines() if line.startswith("| lora |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    paired_w, tutorial_w, shuffled_w, unpaired_w = map(float, cells[2:6])
    assert paired_w < 0.1 * shuffled_w and paired_w < 0.1 * unpaired_w and paired_w < tutorial_w
    bad = pairing_gain("arm=nope")
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1 and "arm=nope" in bad.stderr
