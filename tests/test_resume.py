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
from fedbench.config import validate
from fedbench.errors import ConfigError
from fedbench.lock import LOCK_FILE
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
    assert files == [  # checkpoint_keep=2: the newest two rounds
        "latest.json",
        "round_000005.json",
        "round_000005.safetensors",
        "round_000006.json",
        "round_000006.safetensors",
    ]
    # loading never unpickles: no torch.load / pickle anywhere in the package
    for src in (ROOT / "fedbench").rglob("*.py"):
        text = src.read_text()
        assert "import pickle" not in text and "pickle.load" not in text, src
        for line in text.splitlines():
            if "torch.load(" in line:
                assert "weights_only=True" in line, f"{src}: {line.strip()}"


def _interrupted(tmp_path, after: int, *extra: str):
    cfg = compose_cfg([*SMALL, *extra])
    with pytest.raises(KeyboardInterrupt):
        run(cfg, out_dir=tmp_path, on_round=StopAfter(after))
    return cfg


def _truncate(path):
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])  # a copy cut short


def test_damaged_latest_checkpoint_falls_back_to_the_previous_one(tmp_path, caplog):
    cfg = _interrupted(tmp_path, 4)
    reference = run(compose_cfg(SMALL))
    _truncate(tmp_path / "checkpoint" / "round_000004.safetensors")
    with caplog.at_level("WARNING", logger="fedbench"):
        resumed = run(cfg, out_dir=tmp_path)
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "round 4" in warnings[0] and "resuming from round 3" in warnings[0]
    _same_rows(resumed, reference)  # round 4 recomputed, bit for bit
    assert json.loads((tmp_path / "summary.json").read_text())["resumed_from_round"] == 3


@pytest.mark.parametrize(
    "damage",
    [
        lambda d: _truncate(d / "round_000004.json"),  # the record cut short
        lambda d: (d / "round_000004.safetensors").unlink(),  # tensors missing
        lambda d: (d / "round_000004.json").write_text(  # the record edited: its checksum fails
            (d / "round_000004.json").read_text().replace('"round": 4', '"round": 5')
        ),
    ],
    ids=["record-truncated", "tensors-missing", "record-edited"],
)
def test_every_kind_of_damage_is_detected(tmp_path, damage):
    _interrupted(tmp_path, 4)
    damage(tmp_path / "checkpoint")
    assert checkpoint.load(tmp_path)[1]["round"] == 3


def test_no_good_checkpoint_is_one_line_exit_2_and_nothing_deleted(tmp_path):
    _interrupted(tmp_path, 2, "checkpoint_keep=2")
    for f in (tmp_path / "checkpoint").glob("round_*.safetensors"):
        _truncate(f)
    # every file but the lock, which names its latest holder
    before = {p.name: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file() and p.name != LOCK_FILE}
    with pytest.raises(ConfigError, match="no usable checkpoint .*resume=false"):
        checkpoint.load(tmp_path)
    res = run_cli([*SMALL, f"hydra.run.dir={tmp_path}"], cwd=tmp_path)
    assert res.returncode == 2, res.stderr[-2000:]
    lines = [line for line in res.stderr.strip().splitlines() if line.startswith("fedbench:")]
    assert len(lines) == 1 and "no usable checkpoint" in lines[0] and "Traceback" not in res.stderr
    after = {p.name: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file() and p.name in before}
    assert after == before


def test_checkpoint_keep_is_validated_and_outside_the_config_hash(tmp_path):
    res = run_cli(["checkpoint_keep=0"], cwd=tmp_path)
    assert res.returncode == 2 and "checkpoint_keep=0: must be an integer >= 1" in res.stderr
    assert validate(compose_cfg(["checkpoint_keep=5"])).config_hash == validate(compose_cfg([])).config_hash
    _interrupted(tmp_path / "k1", 3, "checkpoint_keep=1")
    assert sorted(p.name for p in (tmp_path / "k1" / "checkpoint").iterdir()) == [
        "latest.json",
        "round_000003.json",
        "round_000003.safetensors",
    ]


def test_a_format_1_checkpoint_still_resumes(tmp_path):
    """Run folders written before per-round records: latest.json names the tensor file."""
    cfg = _interrupted(tmp_path, 3, "checkpoint_keep=1")
    folder = tmp_path / "checkpoint"
    record = json.loads((folder / "round_000003.json").read_text())
    record.pop("record_sha256")
    record["format"] = 1
    (folder / "round_000003.json").unlink()
    (folder / "latest.json").write_text(json.dumps(record))
    assert checkpoint.load(tmp_path)[1]["round"] == 3
    _same_rows(run(cfg, out_dir=tmp_path), run(compose_cfg(SMALL)))
