"""Nothing lost: checkpoints, bit-exact resume, clean interruption, skip of complete runs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from conftest import ROOT, StopAfter, compose_cfg, run_cli

from fedbench import checkpoint
from fedbench.run import run

SMALL = [
    "fl.num_rounds=6",
    "fl.clients_per_round=3",
    "model.hidden_dim=64",
    "model.num_layers=2",
    "threads=1",
]
TIMING = ["wall_s", "elapsed_s"]


def _same_rows(a: pd.DataFrame, b: pd.DataFrame) -> None:
    pd.testing.assert_frame_equal(
        a.drop(columns=TIMING).reset_index(drop=True),
        b.drop(columns=TIMING).reset_index(drop=True),
        check_exact=True,
    )


def test_interrupted_run_resumes_bit_for_bit(tmp_path):
    cfg = compose_cfg(SMALL)
    reference = run(cfg)
    with pytest.raises(KeyboardInterrupt):
        run(cfg, out_dir=tmp_path, on_round=StopAfter(3))
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "interrupted" and summary["rounds_completed"] == 3
    assert checkpoint.load(tmp_path)[1]["round"] == 3
    resumed = run(cfg, out_dir=tmp_path)
    _same_rows(resumed, reference)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "complete" and summary["resumed_from_round"] == 3
    _same_rows(
        pd.read_csv(tmp_path / "metrics.csv").drop(columns="selected"), reference.drop(columns="selected")
    )


def test_resume_with_sparse_checkpoints_redoes_rounds_after_the_last_one(tmp_path):
    cfg = compose_cfg([*SMALL, "checkpoint_every=2"])
    reference = run(cfg)
    with pytest.raises(KeyboardInterrupt):
        run(cfg, out_dir=tmp_path, on_round=StopAfter(3))  # checkpoint at 2, row 3 on disk
    assert checkpoint.load(tmp_path)[1]["round"] == 2
    _same_rows(run(cfg, out_dir=tmp_path), reference)


def test_complete_run_is_skipped_not_redone(tmp_path):
    cfg = compose_cfg(SMALL)
    first = run(cfg, out_dir=tmp_path)
    stamp = (tmp_path / "metrics.parquet").stat().st_mtime_ns
    again = run(cfg, out_dir=tmp_path)
    assert (tmp_path / "metrics.parquet").stat().st_mtime_ns == stamp
    pd.testing.assert_frame_equal(first, again)


def test_other_config_in_same_folder_is_refused(tmp_path):
    run(compose_cfg(SMALL), out_dir=tmp_path)
    res = run_cli([*SMALL, "seed=5", f"hydra.run.dir={tmp_path}"], cwd=tmp_path)
    assert res.returncode == 2
    assert res.stderr.strip().splitlines() == [res.stderr.strip()]
    assert "holds a different configuration" in res.stderr
    fresh = run_cli([*SMALL, "seed=5", "resume=false", f"hydra.run.dir={tmp_path}"], cwd=tmp_path)
    assert fresh.returncode == 0, fresh.stderr
    assert json.loads((tmp_path / "summary.json").read_text())["config"]["seed"] == 5


def _start(args, cwd):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.Popen(
        [sys.executable, "-m", "fedbench", *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_rows(csv_path: Path, n: int, proc, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if csv_path.is_file() and len(csv_path.read_text().splitlines()) - 1 >= n:
            return
        if proc.poll() is not None:
            raise AssertionError(f"run ended early: {proc.communicate()}")
        time.sleep(0.05)
    raise AssertionError("timed out waiting for rounds")


LONG = ["fl.num_rounds=40", "fl.clients_per_round=3", "threads=1"]


def test_sigkill_then_resume_equals_uninterrupted(tmp_path):
    killed = tmp_path / "killed"
    proc = _start([*LONG, f"hydra.run.dir={killed}"], tmp_path)
    _wait_rows(killed / "metrics.csv", 3, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "summary.json").exists()  # died without a word
    rows_on_disk = len((killed / "metrics.csv").read_text().splitlines()) - 1
    res = run_cli([f"resume={killed}"], cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    summary = json.loads((killed / "summary.json").read_text())
    # a round's row is appended before its checkpoint is saved, so a kill between the two
    # resumes one round before the last row on disk (that round is recomputed)
    assert summary["status"] == "complete"
    assert summary["resumed_from_round"] in (rows_on_disk - 1, rows_on_disk) and rows_on_disk >= 3
    reference = run(compose_cfg(LONG))
    _same_rows(pd.read_parquet(killed / "metrics.parquet"), reference)


def test_sigterm_ends_cleanly_with_interrupted_status(tmp_path):
    folder = tmp_path / "run"
    proc = _start([*LONG, f"hydra.run.dir={folder}"], tmp_path)
    _wait_rows(folder / "metrics.csv", 2, proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM
    assert "interrupted" in err and "Traceback" not in err
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["status"] == "interrupted"
    parquet = pd.read_parquet(folder / "metrics.parquet")
    assert len(parquet) == summary["rounds_completed"] >= 2
    assert len(pd.read_csv(folder / "metrics.csv")) == len(parquet)


def test_rerun_of_a_multirun_skips_complete_and_resumes_incomplete(tmp_path):
    sweep = tmp_path / "sweep"
    args = ["-m", "method=lora,head_only", "fl.num_rounds=3", "threads=1", f"hydra.sweep.dir={sweep}"]
    first = run_cli(args, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir())
    assert len(jobs) == 2
    stamps = {j: (j / "metrics.parquet").stat().st_mtime_ns for j in jobs}
    before = pd.read_parquet(jobs[1] / "metrics.parquet")
    # make job 1 incomplete, as if killed after its last checkpoint
    (jobs[1] / "summary.json").unlink()
    (jobs[1] / "metrics.parquet").unlink()
    second = run_cli(args, cwd=tmp_path)
    assert second.returncode == 0, second.stderr
    assert "skipping" in second.stdout + second.stderr
    assert (jobs[0] / "metrics.parquet").stat().st_mtime_ns == stamps[jobs[0]]
    assert json.loads((jobs[1] / "summary.json").read_text())["resumed_from_round"] == 3
    _same_rows(pd.read_parquet(jobs[1] / "metrics.parquet"), before)


def test_checkpoints_are_safetensors_and_json_only(tmp_path):
    run(compose_cfg(SMALL), out_dir=tmp_path)
    files = sorted(p.name for p in (tmp_path / "checkpoint").iterdir())
    assert files == ["latest.json", "round_000006.safetensors"]
    # loading never unpickles: no torch.load / pickle anywhere in the package
    for src in (ROOT / "fedbench").rglob("*.py"):
        text = src.read_text()
        assert "import pickle" not in text and "pickle.load" not in text, src
        for line in text.splitlines():
            if "torch.load(" in line:
                assert "weights_only=True" in line, f"{src}: {line.strip()}"


def test_corrupt_checkpoint_is_refused(tmp_path):
    cfg = compose_cfg(SMALL)
    with pytest.raises(KeyboardInterrupt):
        run(cfg, out_dir=tmp_path, on_round=StopAfter(2))
    tensors = next((tmp_path / "checkpoint").glob("*.safetensors"))
    tensors.write_bytes(tensors.read_bytes()[:-8] + b"garbage!")
    with pytest.raises(ValueError, match="corrupt"):
        run(cfg, out_dir=tmp_path)
