"""fedbench-report on a real (tiny) multirun: tables, byte totals, target, figures, skipped and
duplicated run folders, bad input, the Pareto front on a hand-made table, and the notebook."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections import Counter

import numpy as np
import pandas as pd
import pytest
from conftest import ROOT, TINY_MLP, run_cli, run_report
from matplotlib.colors import to_hex

import fedbench.report.figures as figures
from fedbench import report as rep
from fedbench.config import config_hash
from fedbench.report import FIGURES, pareto_front

TINY = [("fl.num_rounds=3" if t.startswith("fl.num_rounds=") else t) for t in TINY_MLP]
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
        assert f"skipping {rep.display_path(d.resolve())}: " in err, err
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


_cli = run_report


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
        (["TABLE", "SWEEP"], 2, "a saved runs table is reported on its own"),
        (["NOT_A_TABLE"], 2, "is not a fedbench runs table (no column(s) run_dir,"),
        (["GARBLED_TABLE"], 2, "cannot read GARBLED_TABLE.parquet as a runs table"),
    ],
)
def test_bad_input_is_one_line_nonzero_exit_and_no_output(sweep, reported, tmp_path, args, code, message):
    (tmp_path / "EMPTY").mkdir()
    pd.DataFrame({"round": [1], "accuracy": [0.5]}).to_parquet(tmp_path / "NOT_A_TABLE.parquet")
    (tmp_path / "GARBLED_TABLE.parquet").write_text("not parquet")
    places = {"SWEEP": str(sweep), "TABLE": str(reported[0] / "runs.parquet")}
    args = [places.get(a, f"{a}.parquet" if a.endswith("_TABLE") else a) for a in args]
    res = _cli([*args, "--out", str(tmp_path / "out")], tmp_path)
    assert res.returncode == code, res.stderr
    lines = [ln for ln in res.stderr.splitlines() if not ln.startswith("fedbench-report: skipped")]
    assert len(lines) == 1 and lines[0].startswith("fedbench-report: error: ") and message in lines[0], (
        res.stderr
    )
    assert "Traceback" not in res.stderr
    assert not (tmp_path / "out").exists()


def test_no_half_written_output_when_a_figure_fails(sweep, tmp_path, monkeypatch):
    def boom(*a, **k):
        raise RuntimeError("figure failed")

    monkeypatch.setattr(figures, "make_figures", boom)
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
        s["config_hash"] = config_hash(cfg)
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


# --------------------------------------------------------------------------- saved tables
def test_a_saved_runs_table_gives_the_same_report(reported, sweep, tmp_path):
    """``fedbench-report runs.parquet`` redraws a report without its run folders, number for number."""
    out, first = reported
    again = rep.report([str(out / "runs.parquet")], tmp_path / "again")
    pd.testing.assert_frame_equal(
        pd.read_csv(tmp_path / "again" / "summary.csv"), pd.read_csv(out / "summary.csv")
    )
    pd.testing.assert_frame_equal(again["runs"], pd.read_parquet(out / "runs.parquet"))
    # per-run facts the summary needs are in the table (total_params from each summary.json)
    by_name = _summaries(sweep)
    for _, row in again["summary"].iterrows():
        totals = {by_name[os.path.basename(d)]["total_params"] for d in row["run_dirs"].split()}
        assert totals == {row["total_params"]}
    for name in FIGURES:
        assert (tmp_path / "again" / f"{name}.png").read_bytes() == (out / f"{name}.png").read_bytes(), name
    old, new = (out / "summary.md").read_text(), (tmp_path / "again" / "summary.md").read_text()
    assert "read from the saved runs table `runs.parquet`" in new.splitlines()[2]
    assert old.splitlines()[3:] == new.splitlines()[3:]
    # and through the command line, into the folder the table is in (as for docs/*/)
    copy = tmp_path / "copy"
    copy.mkdir()
    shutil.copy(out / "runs.parquet", copy / "runs.parquet")
    res = _cli([str(copy / "runs.parquet"), "--out", str(copy), "--no-figures"], tmp_path)
    assert res.returncode == 0, res.stderr
    pd.testing.assert_frame_equal(pd.read_csv(copy / "summary.csv"), pd.read_csv(out / "summary.csv"))


# --------------------------------------------------------------------------- figures
def _table(configs: list[dict], seeds=(0, 1), rounds=4) -> pd.DataFrame:
    """A runs table for made-up configurations (each a dict of identity columns)."""
    rows = []
    absent = {key: np.nan for c in configs for key in c}  # every identity column in every row
    for k, ident in enumerate(configs):
        cid = f"cfg{k:03d}"
        for seed in seeds:
            for r in range(1, rounds + 1):
                per_round = 1000 * (k + 1)
                rows.append(
                    {
                        "run_dir": f"runs/{cid}_s{seed}",
                        **absent,
                        "model": "tutorial_mlp",
                        "method": "lora",
                        "data": "tutorial",
                        "strategy": "fedavg",
                        "compression": "none",
                        "compression_up": "none",
                        "compression_down": "none",
                        "rank": np.nan,
                        "lr": 0.001,
                        **ident,
                        "seed": seed,
                        "threads": 1,
                        "config_hash": f"{cid}{seed}",
                        "config_id": cid,
                        # a table label full of config strings: legends must not show it
                        "label": f"fedbench.methods.X._target_ {ident} data.partition=iid",
                        "round": r,
                        "accuracy": 0.1 + 0.04 * r + 0.01 * k + 0.003 * seed,
                        "bytes_up": per_round,
                        "bytes_down": per_round,
                        "cum_bytes_up": per_round * r,
                        "cum_bytes_down": per_round * r,
                        "cum_bytes": 2 * per_round * r,
                        "trainable_params": 100 * (k + 1),
                        "elapsed_s": float(r),
                    }
                )
    df = pd.DataFrame(rows)
    df["cum_mb"] = df["cum_bytes"] / 1e6
    return df


METHOD_GRID = [
    {
        "method": m,
        **({"rank": r} if m == "lora" else {}),
        "compression": c,
        "compression_up": c,
        "compression_down": c,
    }
    for m, r in (("full", None), ("head_only", None), ("lora", 8))
    for c in ("none", "bf16", "int8", "fp16")
]  # 3 methods x 4 codecs = 12 configurations


def _figure(configs, kind="accuracy_vs_mb"):
    runs = _table(configs)
    summary, how = rep.build_summary(runs)
    layout = rep.plan(summary)
    if kind == "pareto":
        return figures.figure_pareto(summary, layout), layout
    return figures.figure_accuracy(runs, summary, layout, how["target"], "cum_mb"), layout


def _panels(fig):
    return [ax for ax in fig.axes if ax.get_lines() or ax.collections]


def _curves(ax) -> list:
    return [ln for ln in ax.get_lines() if ln.get_label()[0] != "_"]  # not the target line


def _legend_texts(fig) -> list[str]:
    (legend,) = fig.legends
    return [t.get_text() for t in legend.get_texts()]


def test_legend_labels_are_short_and_built_from_the_factors_that_vary():
    configs = [
        {"method": "lora", "rank": 8, "strategy": "fedadam"},
        {"method": "lora", "rank": 16, "strategy": "fedadam"},
        {"method": "full", "strategy": "fedadam"},
        {
            "method": "full",
            "strategy": "fedadam",
            "compression": "topk_int8",
            "compression_up": "topk",
            "compression_down": "int8",
            "fraction_up": 0.1,
        },
    ]
    fig, _ = _figure(configs)
    texts = _legend_texts(fig)
    # FedAdam and the learning rate are the same everywhere: not named; the codec only where it varies
    assert texts == [
        "Full FT, float32",
        "Full FT, top-k 10% + int8",
        "LoRA r=8, float32",
        "LoRA r=16, float32",
    ] + [texts[-1]]
    assert texts[-1].startswith("target ")
    for t in texts[:-1]:
        assert "_target_" not in t and "fedbench." not in t and "." not in t.split("=")[0] and len(t) <= 30, t
    # partitions, clients and strategies read as people write them
    other = [
        {"partition": p, "partition_alpha": 0.5, "strategy": s, "num_clients": n, "clients_per_round": n}
        for p, s, n in (
            ("dirichlet", "fedavg", 5),
            ("iid", "fedadam", 5),
            ("iid", "fedavg", 1),
            ("iid", "fedavg", 5),
        )
    ]
    assert _legend_texts(_figure(other)[0])[:4] == [
        "IID, FedAvg, 5 clients",
        "IID, FedAvg, centralised (1 client)",
        "IID, FedAdam, 5 clients",
        "Dirichlet α=0.5, FedAvg, 5 clients",
    ]


def test_factors_implied_by_others_are_left_out_of_labels():
    """An lr tuned per method, or an arm that is method + rank, says nothing the method does not."""
    configs = [
        {"method": "lora", "rank": 4, "lr": 0.005, "arm": "lora_r4"},
        {"method": "lora", "rank": 16, "lr": 0.005, "arm": "lora_r16"},
        {"method": "head_only", "lr": 0.01, "arm": "head_only"},
    ]
    summary, _ = rep.build_summary(_table(configs))
    assert [f.name for f in rep.varying_factors(summary)] == ["method", "rank"]
    assert rep.human_labels(summary) == ["LoRA r=4", "LoRA r=16", "Head only"]


def test_more_than_eight_configurations_are_split_into_panels_with_shared_axes():
    fig, layout = _figure(METHOD_GRID)
    panels = _panels(fig)
    assert len(panels) == 4  # one per codec: 3 configurations each, the fewest panels of <= 8
    assert [ax.get_title() for ax in panels] == ["float32", "fp16", "bf16", "int8"]
    assert [len(_curves(ax)) for ax in panels] == [3, 3, 3, 3]
    for ax in panels[1:]:
        assert ax.get_shared_x_axes().joined(panels[0], ax) and ax.get_shared_y_axes().joined(panels[0], ax)
    # the panel's title says the codec, so the legend does not repeat it
    assert _legend_texts(fig)[:-1] == ["Full FT", "Head only", "LoRA"]
    pareto, _ = _figure(METHOD_GRID, "pareto")
    assert len(_panels(pareto)) == 4
    # eight or fewer: one panel
    fig8, layout8 = _figure(METHOD_GRID[:8])
    assert len(_panels(fig8)) == 1 and len(layout8.panels) == 1
    assert len(_curves(_panels(fig8)[0])) == 8


def _colours_by_label(fig, kind: str) -> tuple[dict[str, set], Counter]:
    """Legend label -> the colours it is drawn in, over all panels; and in how many panels."""
    colours: dict[str, set] = {}
    panels: Counter = Counter()
    for ax in _panels(fig):
        if kind == "pareto":
            items = [(c.get_label(), c.lines[0].get_color()) for c in ax.containers]
        else:
            items = [(ln.get_label(), ln.get_color()) for ln in ax.get_lines() if ln.get_label()[0] != "_"]
        for label, colour in items:
            colours.setdefault(label, set()).add(to_hex(colour))
            panels[label] += 1
    return colours, panels


def test_a_method_keeps_one_colour_in_every_panel():
    for kind in ("accuracy_vs_mb", "pareto"):
        fig, _ = _figure(METHOD_GRID, kind)
        colours, panels = _colours_by_label(fig, kind)
        assert set(colours) == {"Full FT", "Head only", "LoRA"}, kind
        assert all(len(c) == 1 for c in colours.values()), (kind, colours)  # one colour per method ...
        assert len(set.union(*colours.values())) == 3, (kind, colours)  # ... and its own
        assert set(panels.values()) == {4}, kind  # drawn in each of the four panels
    # the second factor is the line style: LoRA's ranks share LoRA's colour, not its dashes
    _, layout = _figure([{"method": "lora", "rank": r} for r in (4, 8)] + [{"method": "full"}])
    styles = dict(layout.entries())
    assert styles["LoRA r=4"].color == styles["LoRA r=8"].color != styles["Full FT"].color
    assert styles["LoRA r=4"].linestyle != styles["LoRA r=8"].linestyle
    assert styles["LoRA r=4"].marker != styles["LoRA r=8"].marker


def test_report_figures_of_a_real_sweep_name_methods_not_configs(reported):
    _, result = reported
    summary = result["summary"]
    fig = figures.figure_accuracy(result["runs"], summary, rep.plan(summary), 0.2, "round")
    assert _legend_texts(fig) == ["Full FT", "Head only", "LoRA", "target 0.200"]


def test_the_report_package_has_no_import_cycles():
    """Each module imports only modules before it (errors -> ... -> cli), never the package."""
    import ast

    pkg = ROOT / "fedbench" / "report"
    graph = {}
    for path in sorted(pkg.glob("*.py")):
        name = path.stem
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            mods = []
            if isinstance(node, ast.ImportFrom) and node.module:
                mods = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                mods = [a.name for a in node.names]
            for m in mods:
                if m == "fedbench.report" and name not in ("__init__", "__main__"):
                    raise AssertionError(f"{name} imports the package fedbench.report")
                if m.startswith("fedbench.report.") and (pkg / f"{m.split('.')[2]}.py").is_file():
                    deps.add(m.split(".")[2])
        graph[name] = deps - {name}
    assert "plots.py" not in {p.name for p in (ROOT / "fedbench").iterdir()}
    done: set[str] = set()

    def visit(n, stack):
        assert n not in stack, f"import cycle: {' -> '.join([*stack, n])}"
        if n not in done:
            for d in graph.get(n, ()):
                visit(d, [*stack, n])
            done.add(n)

    for n in graph:
        visit(n, [])


def test_labels_name_per_client_ranks_and_the_lora_aggregations():
    configs = [
        {"rank": 4, "method.aggregation": "naive"},
        {"rank": 16, "method.aggregation": "naive"},
        {"rank": 16, "method.ranks": "[2, 4, 8, 16]", "method.aggregation": "hetlora"},
        {"rank": 16, "method.ranks": "[2, 4, 8, 16]", "method.aggregation": "flexlora"},
    ]
    summary, _ = rep.build_summary(_table(configs))
    from fedbench.report.labels import human_labels

    # (the method does not vary, so it is not named)
    assert human_labels(summary) == [
        "r=4 naive agg.",
        "r=16 naive agg.",
        "r=2/4/8/16 HetLoRA agg.",
        "r=2/4/8/16 FlexLoRA agg.",
    ]
