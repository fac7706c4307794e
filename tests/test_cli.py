"""The command line: a run writes the run-folder contract; bad input is one line and exit 2."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from conftest import ROOT, run_cli

from fedbench.results import COLUMNS

REQUIRED = {
    "round",
    "accuracy",
    "test_loss",
    "train_loss",
    "bytes_up",
    "bytes_down",
    "cum_bytes",
    "clients",
    "trainable_params",
    "wall_s",
}


def test_run_writes_metrics_and_summary(tmp_path):
    run_dir = tmp_path / "run"
    res = run_cli(["fl.num_rounds=3", "threads=1", f"hydra.run.dir={run_dir}"], cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert "round 3/3" in res.stdout + res.stderr  # a line per round
    csv = pd.read_csv(run_dir / "metrics.csv")
    parquet = pd.read_parquet(run_dir / "metrics.parquet")
    assert set(csv.columns) >= REQUIRED and list(parquet.columns) == COLUMNS
    assert csv["round"].tolist() == [1, 2, 3]
    pd.testing.assert_frame_equal(csv.drop(columns="selected"), parquet.drop(columns="selected"))
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "complete"
    assert summary["threads"] == 1
    assert summary["final_accuracy"] == parquet["accuracy"].iloc[-1]
    assert summary["bytes_total"] == parquet["bytes_up"].sum() + parquet["bytes_down"].sum()
    assert len(summary["config_hash"]) == 12 and summary["config"]["fl"]["num_rounds"] == 3
    assert (run_dir / ".hydra" / "config.yaml").is_file()
    # the process ends without interpreter teardown: its output and log must still be complete
    assert "final accuracy" in res.stdout
    assert "round 3/3" in (run_dir / "fedbench.log").read_text()
    assert not list(run_dir.glob(".*.tmp")) and not list(run_dir.glob("checkpoint/.*.tmp"))


def test_a_reader_that_leaves_early_does_not_fail_the_run(tmp_path):
    """``fedbench ... | head``: stdout breaks mid-run; the run completes and exits 0."""
    import os
    import subprocess
    import sys

    run_dir = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-m", "fedbench", "fl.num_rounds=2", "threads=1", f"hydra.run.dir={run_dir}"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
    )
    proc.stdout.read(10)
    proc.stdout.close()
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err.decode()[-2000:]
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "complete"


BAD_INPUTS = [
    (
        ["method=prompt_magic"],
        "method=prompt_magic: unknown option for group 'method'; allowed: "
        + ", ".join(sorted(p.stem for p in (ROOT / "conf" / "method").glob("*.yaml"))),
    ),
    (["model=gpt9"], "unknown option for group 'model'"),
    (["strategy=nope"], "unknown option for group 'strategy'"),
    (["compression=zip"], "unknown option for group 'compression'"),
    (["fl.num_rounds=abc"], "fl.num_rounds='abc': must be an integer"),
    (["fl.lr=fast"], "fl.lr='fast': must be a float"),
    (["method.rank=1.5"], "method.rank=1.5: must be an integer"),
    (["fl.bogus=1"], "fl.bogus: unknown key for fl; its keys: num_rounds=30, "),
    (["bogus=1"], "bogus: unknown key; top-level keys: seed=42, threads=null"),
    (["+fl.bogus=1"], "fl.bogus: unknown key for fl; its keys: num_rounds=30, "),
    (["model.depth=3"], "model.depth: unknown key for model=tutorial_mlp; its keys: input_dim=128, "),
    # the selected option's keys, not the default option's
    (["method=full", "method.rank=4"], "method.rank: unknown key for method=full; its keys: none"),
    (
        ["method=adapter", "model=tiny_bert", "data=bbc", "method.rank=4"],
        "method.rank: unknown key for method=adapter; its keys: bottleneck=16, activation=gelu (gelu|relu|tanh)",
    ),
    (
        ["+method.rnk=4"],
        "method.rnk: unknown key for method=lora; its keys: rank=4, alpha=1.0, init_std=0.01, "
        "target_modules=null, aggregation=naive (naive|ffa|exact|hetlora|flexlora), ranks=null, "
        "rank_by=client (client|bandwidth)",
    ),
    (
        ["method.aggregation=avg"],
        "method.aggregation='avg': must be one of: naive, ffa, exact, hetlora, flexlora",
    ),
    (
        ["compression/up=int8", "compression.up.granularity=col"],
        "compression.up.granularity='col': must be one of: tensor, row",
    ),
    (["fl.engine=gpu"], "fl.engine='gpu': must be one of: exact, vectorized"),
    # only registered components: nothing else is imported
    (["method._target_=os.system"], "method._target_='os.system': is not a registered method component"),
    (["strategy._target_=fedbench.methods.lora.LoRA"], "names a method, not a strategy"),
    (["fl.clients_per_round=11"], "fl.clients_per_round=11: must be <= fl.num_clients (10)"),
    (["method.rank=0"], "method.rank=0: must be an integer >= 1"),
    (["fl.lr=0"], "fl.lr=0.0: must be a float > 0"),
    (["fl.lr=-0.1"], "fl.lr=-0.1: must be a float > 0"),
    (["fl.num_rounds=0"], "fl.num_rounds=0: must be an integer >= 1"),
    (["fl.batch_size=0"], "fl.batch_size=0: must be an integer >= 1"),
    (["fl.local_epochs=-1"], "fl.local_epochs=-1: must be an integer >= 1"),
    (["fl.num_clients=0"], "fl.num_clients=0: must be an integer >= 1"),
    (["model.num_classes=5"], "model.num_classes=5: must be >= data.num_classes (10)"),
    (["model.input_dim=64", "data.dim=128"], "model.input_dim=64: must equal data.dim (128)"),
    (["seed=-1"], "seed=-1: must be an integer >= 0"),
    (["threads=0"], "threads=0: must be null"),
    (["fl.num_rounds=[1"], "cannot parse the override 'fl.num_rounds=[1': no viable alternative"),
    (["method=lora,full"], "a sweep needs multirun mode (add -m)"),
    (["-m", "method=lora,full", "method.rank=0"], "method.rank=0: must be an integer >= 1"),
    (["-m", "method=lora,full", "method.rank=2"], "method.rank: unknown key for method=full"),
    (["-m", "experiment=comm_efficiency", "fl.num_rounds=0"], "fl.num_rounds=0: must be an integer >= 1"),
]


@pytest.mark.parametrize("args,message", BAD_INPUTS, ids=[" ".join(a) for a, _ in BAD_INPUTS])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, args, message):
    run_dir = tmp_path / "run"
    res = run_cli([*args, f"hydra.run.dir={run_dir}", f"hydra.sweep.dir={tmp_path / 'sweep'}"], cwd=tmp_path)
    assert res.returncode == 2, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("fedbench: ") and message in lines[0], lines[0]
    assert "Traceback" not in res.stderr + res.stdout
    assert not run_dir.exists() and not (tmp_path / "sweep").exists()
    assert not list(tmp_path.rglob("metrics.*"))
