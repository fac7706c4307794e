"""One writer per run folder: a second process is refused with one line, a dead holder never
blocks, and a re-launched sweep skips the jobs that are running elsewhere."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys

import pytest
from conftest import ROOT, TINY_MLP, compose_cfg, run_cli

from fedbench.lock import LOCK_FILE, RunFolderBusy, holder, run_folder_lock
from fedbench.run import execute

TINY = TINY_MLP


HOLD = (
    "import sys, time\n"
    "from fedbench.lock import run_folder_lock\n"
    "lock = run_folder_lock(sys.argv[1]); lock.__enter__()\n"
    "print('locked', flush=True); time.sleep(600)\n"
)


def hold(folder) -> subprocess.Popen:
    """A separate process that holds ``folder``'s lock until killed."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(folder)], stdout=subprocess.PIPE, text=True, env=env
    )
    assert proc.stdout.readline().strip() == "locked"
    return proc


@pytest.fixture
def held(tmp_path):
    folder = tmp_path / "run"
    proc = hold(folder)
    yield folder, proc
    proc.kill()
    proc.wait()


def test_a_second_writer_is_refused_with_one_line(held, tmp_path):
    folder, proc = held
    res = run_cli([*TINY, f"hydra.run.dir={folder}"], cwd=tmp_path)
    assert res.returncode == 2, res.stderr[-2000:]
    lines = [line for line in res.stderr.strip().splitlines() if line.startswith("fedbench:")]
    assert len(lines) == 1 and "Traceback" not in res.stderr
    assert f"pid {proc.pid} on host {socket.gethostname()}" in lines[0] and str(folder) in lines[0]
    assert not (folder / "metrics.csv").exists() and not (folder / "summary.json").exists()


def test_a_killed_holder_leaves_no_stale_lock(held, tmp_path):
    folder, proc = held
    assert holder(folder)["pid"] == proc.pid
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    res = run_cli([*TINY, f"hydra.run.dir={folder}"], cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    assert (folder / "summary.json").is_file()


def test_in_process_second_writer_is_refused(tmp_path):
    with run_folder_lock(tmp_path), pytest.raises(RunFolderBusy, match="is being written by pid"):
        execute(compose_cfg(TINY), out_dir=tmp_path)
    assert not (tmp_path / "metrics.csv").exists()
    execute(compose_cfg(TINY), out_dir=tmp_path)  # released: the run goes ahead
    assert (tmp_path / "metrics.csv").is_file() and (tmp_path / LOCK_FILE).is_file()


def test_a_relaunched_sweep_skips_jobs_running_elsewhere(tmp_path):
    sweep = tmp_path / "sweep"
    proc = hold(sweep / "job0")
    try:
        res = run_cli(
            ["-m", "seed=0,1", *TINY, f"hydra.sweep.dir={sweep}", "hydra.sweep.subdir=job${hydra.job.num}"],
            cwd=tmp_path,
        )
    finally:
        proc.kill()
        proc.wait()
    assert res.returncode == 0, res.stderr[-3000:]
    assert "fedbench: skipped: run folder" in res.stderr and f"pid {proc.pid}" in res.stderr
    assert not (sweep / "job0" / "summary.json").exists() and (sweep / "job1" / "summary.json").is_file()
