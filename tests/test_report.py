"""fedbench-report on a real (tiny) multirun: tables, byte totals, target, figures, skipped and
duplicated run folders, bad input, the Pareto front on a hand-made table, and the notebook."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from conftest import ROOT, run_cli

from fedbench import report as rep
from fedbench.plots import FIGURES, pareto_front

TINY = [
    "fl.num_rounds=3",
    "fl.num_clients=3",
    "fl.clients_per_round=2",
    "model.hidden_dim=16",
    "model.num_layers=1",
    "data.samples_per_client=32",
    "data.test_size=32",
    "threads=1",
]
METHODS = ("lora", "full", "head_only")
SEEDS = (0, 1)
ROUNDS = 3


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """6 runs (3 methods x 2 seeds) through Hydra's basic launcher."""
    root = tmp_path_factory.mktemp("sweep")
    res = run_cli(
        [
            "-m",
            f"method={','.join(METHODS)}",
            f"seed={','.join(map(str, SEEDS))}",
            *TINY,
            f"hydra.sweep.dir={root / 'multirun'}",
        ],
        cwd=root,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    runs = sorted(p for p in (root / "multirun").iterdir() if p.is_dir())
    assert len(runs) == len(METHODS) * len(SEEDS)
    return root / "multirun"


@pytest.fixture(scope="module")
def reported(sweep, tmp_path_factory):
    out = tmp_path_factory.mktemp("report") / "out"
    result = rep.report([str(sweep)], out)
    return out, result


def _summaries(sweep):
    return {p.name: json.loads((p / "summary.json").read_text()) for p in sweep.iterdir() if p.is_dir()}


def test_runs_table_is_tidy_long_one_row_per_run_per_round(reported, sweep):
    out, _ = reported
    runs = pd.read_parquet(out / "runs.parquet")
    csv = pd.read_csv(out / "runs.csv")
    n = len(METHODS) * len(SEEDS) * ROUNDS
    assert len(runs) == len(csv) == n
    assert runs.groupby("run_dir").size().tolist() == [ROUNDS] * len(METHODS) * len(SEEDS)
    for col in (
        "run_dir",
        "model",
        "method",
        "data",
        "strategy",
        "compression_up",
        "compression_down",
        "rank",
        "seed",
        "threads",
        "config_hash",
        "config_id",
        "label",
        "round",
        "accuracy",
        "bytes_up",
        "bytes_down",
        "cum_bytes",
    ):
        assert col in runs.columns, col
    assert set(runs["method"]) == set(METHODS)
    assert sorted(runs["seed"].unique()) == list(SEEDS)
    assert set(runs["threads"]) == {1}
    # rank only where the method has one (LoRA), and an integer there
    assert runs.loc[runs.method == "lora", "rank"].eq(4).all()
    assert runs.loc[runs.method != "lora", "rank"].isna().all()
    # a configuration id groups seeds: one per method here, two seeds each
    assert runs.groupby("config_id")["seed"].nunique().tolist() == [len(SEEDS)] * len(METHODS)
    assert runs["config_hash"].nunique() == len(METHODS) * len(SEEDS)
    # identity matches each run's own summary.json
    by_hash = {s["config_hash"]: s for s in _summaries(sweep).values()}
    for h, g in runs.groupby("config_hash"):
        s = by_hash[h]
        assert g["method"].iloc[0] == s["choices"]["method"] and g["seed"].iloc[0] == s["config"]["seed"]
        assert g["accuracy"].iloc[-1] == s["final_accuracy"]
    pd.testing.assert_frame_equal(
        runs[["round", "accuracy", "cum_bytes"]], csv[["round", "accuracy", "cum_bytes"]]
    )


def test_summary_byte_totals_equal_sums_of_per_round_rows(reported, sweep):
    out, _ = reported
    runs = pd.read_parquet(out / "runs.parquet")
    summary = pd.read_csv(out / "summary.csv")
    assert len(summary) == len(METHODS)
    assert summary["n_seeds"].tolist() == [len(SEEDS)] * len(METHODS)
    sums = (
        runs.groupby(["config_id", "run_dir"])[["bytes_up", "bytes_down"]].sum().groupby("config_id").mean()
    )
    for _, row in summary.iterrows():
        up, down = sums.loc[row["config_id"]]
        assert row["mb_up"] == pytest.approx(up / 1e6, rel=1e-12)
        assert row["mb_down"] == pytest.approx(down / 1e6, rel=1e-12)
        assert row["mb_total"] == pytest.approx((up + down) / 1e6, rel=1e-12)
    # and the per-round rows agree with what each run recorded as its totals
    totals = {s["config_hash"]: s["bytes_total"] for s in _summaries(sweep).values()}
    per_run = runs.groupby("config_hash")[["bytes_up", "bytes_down"]].sum().sum(axis=1)
    assert per_run.to_dict() == totals
    # final accuracy mean/std over seeds
    finals = runs[runs["round"] == ROUNDS].groupby("config_id")["accuracy"]
    for _, row in summary.iterrows():
        assert row["final_acc_mean"] == pytest.approx(finals.mean()[row["config_id"]])
        assert row["final_acc_std"] == pytest.approx(finals.std()[row["config_id"]], nan_ok=True)


def test_target_defaults_to_a_fraction_of_the_best_and_mb_to_target_is_read_on_the_mean_curve(reported):
    out, result = reported
    summary = pd.read_csv(out / "summary.csv")
    runs = pd.read_parquet(out / "runs.parquet")
    target = summary["target_accuracy"].iloc[0]
    assert target == pytest.approx(rep.DEFAULT_TARGET_FRACTION * summary["final_acc_mean"].max())
    assert f"{target:.4f}" in (out / "summary.md").read_text()
    curve = runs.groupby(["config_id", "round"]).agg(acc=("accuracy", "mean"), cum=("cum_bytes", "mean"))
    for _, row in summary.iterrows():
        c = curve.loc[row["config_id"]]
        hit = c[c["acc"] >= target]
        if len(hit):
            assert row["rounds_to_target"] == hit.index[0]
            assert row["mb_to_target"] == pytest.approx(hit["cum"].iloc[0] / 1e6)
        else:
            assert np.isnan(row["mb_to_target"]) and np.isnan(row["rounds_to_target"])


def test_explicit_target_accuracy(sweep, tmp_path):
    runs = rep.report([str(sweep)], tmp_path / "r", target_accuracy=0.999, figures=False)
    s = runs["summary"]
    assert (s["target_accuracy"] == 0.999).all() and s["mb_to_target"].isna().all()
    assert "not reached" in (tmp_path / "r" / "summary.md").read_text()
    low = rep.report([str(sweep)], tmp_path / "r2", target_accuracy=1e-9, figures=False)["summary"]
    assert (low["rounds_to_target"] == 1).all()


def test_figures_written_png_and_pdf(reported):
    out, result = reported
    for name in FIGURES:
        png, pdf = out / f"{name}.png", out / f"{name}.pdf"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000, png
        assert pdf.read_bytes()[:5] == b"%PDF-" and pdf.stat().st_size > 5_000, pdf
        assert f"({name}.png)" in (out / "summary.md").read_text()


def test_figures_are_reproducible(reported, sweep, tmp_path):
    out, _ = reported
    rep.report([str(sweep)], tmp_path / "again")
    for name in FIGURES:
        for fmt in ("png", "pdf"):
            assert (tmp_path / "again" / f"{name}.{fmt}").read_bytes() == (out / f"{name}.{fmt}").read_bytes()


def test_cli_module_entry_point(sweep, tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    res = subprocess.run(
        [sys.executable, "-m", "fedbench.report", str(sweep), "--out", str(tmp_path / "o"), "--no-figures"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0, res.stderr
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == [
        "runs.csv",
        "runs.parquet",
        "summary.csv",
        "summary.md",
    ]
    assert "skipped 0 run folder(s)" in res.stderr


def _copy_run(src, dst, edit=None, drop=()):
    shutil.copytree(src, dst)
    for name in drop:
        (dst / name).unlink()
    if edit is not None:
        s = json.loads((dst / "summary.json").read_text())
        edit(s)
        (dst / "summary.json").write_text(json.dumps(s))
    return dst


def test_incomplete_and_unreadable_runs_are_skipped_with_a_warning(sweep, tmp_path, capsys):
    src = sorted(p for p in sweep.iterdir() if p.is_dir())[0]
    extra = tmp_path / "extra"
    killed = _copy_run(src, extra / "killed", drop=("summary.json", "metrics.parquet"))
    failed = _copy_run(src, extra / "failed", edit=lambda s: s.update(status="failed", rounds_completed=1))
    garbled = _copy_run(src, extra / "garbled")
    (garbled / "summary.json").write_text("{not json")
    short = _copy_run(src, extra / "short", drop=("metrics.parquet",))
    lines = (short / "metrics.csv").read_text().splitlines()
    (short / "metrics.csv").write_text("\n".join(lines[:-1]) + "\n")  # one round lost
    (extra / "not_a_run").mkdir()
    result = rep.report([str(sweep), str(extra)], tmp_path / "out", figures=False)
    err = capsys.readouterr().err
    for d in (killed, failed, garbled, short):
        assert f"skipping {rep._display_path(d.resolve())}: " in err, err
    assert "skipped 4 run folder(s)" in err
    assert "no summary.json" in err and "status 'failed'" in err and "unreadable summary.json" in err
    assert len(result["skipped"]) == 4
    assert len(pd.read_parquet(tmp_path / "out" / "runs.parquet")) == len(METHODS) * len(SEEDS) * ROUNDS
    assert "4 incomplete or unreadable run folder(s) skipped" in (tmp_path / "out" / "summary.md").read_text()


def test_duplicates_are_not_double_counted(sweep, tmp_path, capsys):
    # the same folder reached twice (the sweep and one of its runs) counts once
    one = sorted(p for p in sweep.iterdir() if p.is_dir())[0]
    r = rep.report([str(sweep), str(one), str(sweep)], tmp_path / "a", figures=False)
    assert r["runs"]["run_dir"].nunique() == len(METHODS) * len(SEEDS)
    # the sweep run again into another folder: same config_hash + seed -> the newest is kept
    rerun = tmp_path / "rerun"
    shutil.copytree(sweep, rerun)
    for p in rerun.iterdir():
        if p.is_dir():
            s = json.loads((p / "summary.json").read_text())
            s["finished_at"] = "2999-01-01T00:00:00+00:00"
            (p / "summary.json").write_text(json.dumps(s))
    capsys.readouterr()
    r = rep.report([str(sweep), str(rerun)], tmp_path / "b")
    err = capsys.readouterr().err
    runs = r["runs"]
    assert len(runs) == len(METHODS) * len(SEEDS) * ROUNDS
    assert all("rerun" in d for d in runs["run_dir"].unique())
    assert err.count("duplicate run") == len(METHODS) * len(SEEDS)
    assert (r["summary"]["n_seeds"] == len(SEEDS)).all()
    single = pd.read_csv(tmp_path / "a" / "summary.csv")
    assert r["summary"]["mb_total"].tolist() == pytest.approx(single["mb_total"].tolist())


def _cli(args, tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run(
        [sys.executable, "-m", "fedbench.report", *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize(
    "args,code,message",
    [
        (["does/not/exist"], 2, "no such file or folder: does/not/exist"),
        (["EMPTY"], 1, "no complete runs found"),
        (["SWEEP", "--target-accuracy", "1.5"], 2, "must be in (0, 1]"),
        (["SWEEP", "--target-accuracy", "abc"], 2, "is not a number"),
        (["SWEEP", "--target-fraction", "0"], 2, "must be in (0, 1]"),
        (["SWEEP", "--bogus"], 2, "unrecognized arguments: --bogus"),
        ([], 2, "the following arguments are required: PATH"),
    ],
)
def test_bad_input_is_one_line_nonzero_exit_and_no_output(sweep, tmp_path, args, code, message):
    (tmp_path / "EMPTY").mkdir()
    args = [str(sweep) if a == "SWEEP" else a for a in args]
    res = _cli([*args, "--out", str(tmp_path / "out")], tmp_path)
    assert res.returncode == code, res.stderr
    lines = [ln for ln in res.stderr.splitlines() if not ln.startswith("fedbench-report: skipped")]
    assert len(lines) == 1 and lines[0].startswith("fedbench-report: error: ") and message in lines[0], (
        res.stderr
    )
    assert "Traceback" not in res.stderr
    assert not (tmp_path / "out").exists()


def test_no_half_written_output_when_a_figure_fails(sweep, tmp_path, monkeypatch):
    import fedbench.plots

    def boom(*a, **k):
        raise RuntimeError("figure failed")

    monkeypatch.setattr(fedbench.plots, "make_figures", boom)
    with pytest.raises(RuntimeError, match="figure failed"):
        rep.report([str(sweep)], tmp_path / "out")
    assert list(tmp_path.iterdir()) == []  # neither the output folder nor a temporary one


def test_pareto_front_on_a_hand_made_table():
    df = pd.DataFrame(
        {
            "name": ["A", "B", "C", "D", "E", "F", "G", "H"],
            "mb": [1.0, 2.0, 3.0, 2.0, 0.5, np.nan, 4.0, 2.0],
            "acc": [0.5, 0.6, 0.55, 0.6, 0.1, 0.9, 0.7, 0.58],
        },
        index=[10, 11, 12, 13, 14, 15, 16, 17],
    )
    front = pareto_front(df, "mb", "acc")
    assert front.index.tolist() == df.index.tolist() and front.dtype == bool
    # C is dominated by B (cheaper, more accurate); H by B (same MB, less accurate); F has no MB.
    # B and D are identical points: both on the front.
    assert df.loc[front, "name"].tolist() == ["A", "B", "D", "E", "G"]
    # flipping the directions: most MB and least accuracy are "best"
    worst = pareto_front(df, "mb", "acc", minimize_x=False, maximize_y=False)
    assert df.loc[worst, "name"].tolist() == ["A", "C", "E", "G"]
    assert pareto_front(df.iloc[:0], "mb", "acc").empty
    assert pareto_front(df.iloc[[0]], "mb", "acc").tolist() == [True]


def test_summary_marks_pareto_configurations(reported):
    out, _ = reported
    s = pd.read_csv(out / "summary.csv")
    assert s["pareto"].tolist() == pareto_front(s, "mb_total", "final_acc_mean").tolist()
    assert s["pareto"].any()
    md = (out / "summary.md").read_text()
    for _, row in s.iterrows():
        assert f"| {row['label']}{' ★' if row['pareto'] else ''} |" in md


def test_notebook_executes_on_a_report(reported):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    out, _ = reported
    nb = nbformat.read(ROOT / "notebooks" / "compare_methods.ipynb", as_version=4)
    old = os.environ.get("FEDBENCH_REPORT_DIR")
    os.environ["FEDBENCH_REPORT_DIR"] = str(out)  # the kernel inherits the environment
    try:
        nbclient.NotebookClient(
            nb, timeout=180, kernel_name="python3", resources={"metadata": {"path": str(ROOT / "notebooks")}}
        ).execute()
    finally:
        if old is None:
            os.environ.pop("FEDBENCH_REPORT_DIR")
        else:
            os.environ["FEDBENCH_REPORT_DIR"] = old
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    text = "\n".join(o.get("text", "") + str(o.get("data", {}).get("text/plain", "")) for o in outputs)
    assert f"{out}: {len(METHODS) * len(SEEDS)} runs, {len(METHODS)} configurations" in text
    assert sum("image/png" in o.get("data", {}) for o in outputs) == len(FIGURES)
    assert any("MB to target" in o.get("data", {}).get("text/markdown", "") for o in outputs)


def test_labels_name_what_differs_between_configurations(sweep):
    """Labels: the method, then options and values that differ (rank only where it exists)."""
    path = next(p for p in sorted(sweep.iterdir()) if p.is_dir() and "method=lora" in p.name)
    base = json.loads((path / "summary.json").read_text())
    metrics = pd.read_parquet(path / "metrics.parquet")

    def variant(method=None, rank=None, codec=None, down=None):
        s = json.loads(json.dumps(base))
        cfg, ch = s["config"], s["choices"]
        for side in ("up", "down"):  # one option per direction, as conf/compression/ composes them
            ch.setdefault(f"compression/{side}", ch["compression"])
        if method == "full":
            cfg["method"] = {"_target_": "fedbench.methods.full.Full"}
            ch["method"] = "full"
        if rank is not None:
            cfg["method"]["rank"] = rank
        if codec is not None:
            cfg["compression"] = {side: {"_target_": f"fedbench.fl.comm.{codec}"} for side in ("up", "down")}
            ch["compression"] = ch["compression/up"] = ch["compression/down"] = codec.lower()
        if down is not None:
            cfg["compression"]["down"] = {"_target_": "fedbench.fl.comm.Int8", "granularity": "tensor"}
            ch["compression/down"] = down
        s["config_hash"] = rep.config_hash(cfg)
        run = rep.Run(path=path, summary=s, metrics=metrics)
        run.identity = rep.identity(s)
        return run

    runs = [
        variant(),
        variant(rank=16),
        variant(codec="Fp16"),
        variant(method="full"),
        variant(codec="Fp16", down="int8"),
    ]
    # distinct folders for the table
    for i, r in enumerate(runs):
        r.path = path.parent / f"virtual{i}"
    labels = rep.build_runs_table(runs).drop_duplicates("config_id")["label"].tolist()
    assert labels == [
        "full none",
        "lora fp16 r=4",
        "lora fp16 down=int8 r=4",
        "lora none r=4",
        "lora none r=16",
    ]
