"""Experiment trackers (``logger=``): what TensorBoard and MLflow hold, read back with their own
readers (TensorBoard's EventAccumulator, ``mlflow.tracking.MlflowClient``) and compared with
the run folder's metrics.parquet; resume without duplicates; a tracker failure is one warning
line and the run goes on; the default run writes no tracker files."""

from __future__ import annotations

import errno
import json
import logging
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import TINY_MLP, StopAfter, compose_cfg, run_cli, run_report

from fedbench import report as rep
from fedbench.config import validate
from fedbench.errors import EXIT_ENVIRONMENT, MissingPackage
from fedbench.run import run
from fedbench.trackers import METRIC_COLUMNS, flatten_config
from fedbench.trackers.csv_logger import CSVLogger

pytest.importorskip("tensorboard", reason="the track extra: pip install -e '.[track]'")
pytest.importorskip("mlflow", reason="the track extra: pip install -e '.[track]'")

from mlflow.tracking import MlflowClient  # noqa: E402
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

TRACKED = ["logger=[csv,tensorboard,mlflow]"]
THREE_ROUNDS = [*(t for t in TINY_MLP if not t.startswith("fl.num_rounds=")), "fl.num_rounds=3"]


def tb_scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def tb_text(folder: Path, tag: str) -> list[str]:
    acc = EventAccumulator(str(folder), size_guidance={"tensors": 0})
    acc.Reload()
    return [e.tensor_proto.string_val[0].decode() for e in acc.Tensors(f"{tag}/text_summary")]


def expected(parquet: pd.DataFrame, column: str) -> list[tuple[int, float]]:
    """A column's (round, value) pairs as a tracker records them: NaN (not measured) left out."""
    return [(int(r), float(v)) for r, v in zip(parquet["round"], parquet[column]) if not math.isnan(v)]


def mlflow_history(client: MlflowClient, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


def assert_tensorboard_matches(folder: Path, parquet: pd.DataFrame) -> None:
    scalars = tb_scalars(folder)
    for column in METRIC_COLUMNS:
        want = expected(parquet, column)
        assert [s for s, _ in scalars.get(column, [])] == [s for s, _ in want], column
        # TensorBoard stores scalars as float32
        assert [v for _, v in scalars.get(column, [])] == [float(np.float32(v)) for _, v in want], column


def assert_mlflow_matches(client: MlflowClient, run_id: str, parquet: pd.DataFrame, skip=()) -> None:
    for column in METRIC_COLUMNS:
        if column in skip:
            continue
        assert mlflow_history(client, run_id, column) == expected(parquet, column), column


@pytest.mark.slow
def test_a_sweep_with_tensorboard_and_mlflow_records_what_metrics_parquet_holds(tmp_path):
    """Two jobs side by side (joblib: both open the new SQLite store at once), every tracker,
    rounds that are not evaluated (NaN accuracy): TensorBoard and MLflow hold each numeric
    column at step = round, the config, and one experiment per sweep; fedbench-report --mlflow
    adds the report's figures as artifacts."""
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher", reason="the sweep extra")
    sweep = tmp_path / "multirun"
    res = run_cli(
        [
            "-m",
            "method=lora,head_only",
            *THREE_ROUNDS,
            "fl.eval_every=2",  # round 1 is not evaluated: its accuracy is NaN, not recorded
            *TRACKED,
            "hydra/launcher=joblib",
            "hydra.launcher.n_jobs=2",
            f"hydra.sweep.dir={sweep}",
        ],
        cwd=tmp_path,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert "logger." not in res.stdout + res.stderr  # no tracker warned
    runs = sorted(p for p in sweep.iterdir() if p.is_dir() and not p.name.startswith("."))
    assert len(runs) == 2
    uri = "sqlite:///" + str(tmp_path / "outputs" / "mlflow.db")  # the default store, under cwd
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(str(sweep))  # the sweep is one experiment
    assert experiment is not None
    tracked = {r.info.run_name: r for r in client.search_runs([experiment.experiment_id])}
    assert set(tracked) == {p.name for p in runs}
    for folder in runs:
        parquet = pd.read_parquet(folder / "metrics.parquet")
        summary = json.loads((folder / "summary.json").read_text())
        assert np.isnan(parquet["accuracy"].iloc[0])
        # TensorBoard: the scalars, and the resolved config as text and as hparams
        assert_tensorboard_matches(folder / "tensorboard", parquet)
        (config_text,) = tb_text(folder / "tensorboard", "config")
        assert yaml.safe_load("\n".join(line[4:] for line in config_text.splitlines())) == summary["config"]
        acc = EventAccumulator(str(folder / "tensorboard"))
        acc.Reload()
        assert "_hparams_/session_start_info" in acc.PluginTagToContent("hparams")
        # MLflow: one run per folder, params = the flattened config, metrics per round
        stored = json.loads((folder / "mlflow_run.json").read_text())
        mlrun = client.get_run(stored["run_id"])
        assert mlrun.info.run_id == tracked[folder.name].info.run_id and mlrun.info.status == "FINISHED"
        assert mlrun.data.params == {k: str(v) for k, v in flatten_config(summary["config"]).items()}
        assert mlrun.data.tags["fedbench.method"] == summary["choices"]["method"]
        assert mlrun.data.tags["fedbench.status"] == "complete"
        assert mlrun.data.tags["fedbench.config_hash"] == summary["config_hash"]
        assert_mlflow_matches(client, stored["run_id"], parquet)
    # the report's figures, as artifacts of one MLflow run in the sweep's experiment
    out = rep.report([str(sweep)], tmp_path / "report", mlflow=uri)
    report_run = client.get_run(out["mlflow_run"])
    assert report_run.info.experiment_id == experiment.experiment_id
    figures = {Path(a.path).name for a in client.list_artifacts(out["mlflow_run"], "figures")}
    assert figures == {p.name for p in out["written"] if p.suffix in (".png", ".pdf")} and figures
    tables = {Path(a.path).name for a in client.list_artifacts(out["mlflow_run"], "tables")}
    assert {"summary.md", "summary.csv"} <= tables
    # a sweep's summaries keep their identity: the loggers are not a choice of the run
    assert all("logger" not in json.loads((p / "summary.json").read_text())["choices"] for p in runs)


def test_the_default_run_writes_no_tracker_files(tmp_path):
    spec = validate(compose_cfg(TINY_MLP))
    assert list(spec.loggers) == ["csv"] and isinstance(spec.loggers["csv"], CSVLogger)
    assert "logger" not in spec.resolved  # how a run is recorded is not part of its config (or hash)
    tracked = validate(compose_cfg([*TINY_MLP, *TRACKED]))
    assert tracked.config_hash == spec.config_hash and tracked.resolved == spec.resolved
    run(spec, out_dir=tmp_path / "run")
    written = {p.name for p in (tmp_path / "run").iterdir()}
    assert written == {
        "metrics.csv",
        "metrics.parquet",
        "summary.json",
        "clients.parquet",
        "checkpoint",
        ".fedbench.lock",
    }


def _uri(tmp_path: Path) -> str:
    return "sqlite:///" + str(tmp_path / "mlflow.db")


def test_a_resumed_run_continues_its_tensorboard_and_mlflow_records_without_duplicates(tmp_path):
    """Killed after round 3 with its checkpoint from round 2: rounds 3.. are recomputed.
    TensorBoard purges the killed process's round 3 (each step once, the final values);
    MLflow continues the same run and logs only the rounds it lacks (each step once)."""
    out = tmp_path / "run"
    cfg = compose_cfg(
        [
            *(t for t in TINY_MLP if not t.startswith("fl.num_rounds=")),
            "fl.num_rounds=5",
            "checkpoint_every=2",
            *TRACKED,
            f"logger.mlflow.tracking_uri={_uri(tmp_path)}",
        ]
    )
    with pytest.raises(KeyboardInterrupt):
        run(cfg, out_dir=out, on_round=StopAfter(3))
    client = MlflowClient(_uri(tmp_path))
    run_id = json.loads((out / "mlflow_run.json").read_text())["run_id"]
    assert client.get_run(run_id).info.status == "KILLED"
    assert [s for s, _ in mlflow_history(client, run_id, "cum_bytes")] == [1, 2, 3]
    first = pd.read_parquet(out / "metrics.parquet")
    resumed = run(cfg, out_dir=out)
    assert json.loads((out / "summary.json").read_text())["resumed_from_round"] == 2
    parquet = pd.read_parquet(out / "metrics.parquet")
    assert parquet["round"].tolist() == [1, 2, 3, 4, 5] and len(resumed) == 5
    assert_tensorboard_matches(out / "tensorboard", parquet)  # round 3: the recomputed values, once
    assert len(tb_text(out / "tensorboard", "config")) == 1  # the config is not written twice
    assert json.loads((out / "mlflow_run.json").read_text())["run_id"] == run_id  # the same MLflow run
    (only,) = client.search_runs([client.get_run(run_id).info.experiment_id])
    assert only.info.run_id == run_id and only.info.status == "FINISHED"
    # every step once; round 3 keeps the killed process's values, which equal the recomputed ones
    # bit for bit except the timing columns
    assert_mlflow_matches(client, run_id, parquet, skip=("wall_s", "elapsed_s"))
    for column in ("wall_s", "elapsed_s"):
        history = mlflow_history(client, run_id, column)
        assert [s for s, _ in history] == [1, 2, 3, 4, 5]
        assert history[:3] == expected(first, column)[:3] and history[3:] == expected(parquet, column)[3:]


def test_resume_false_starts_new_records(tmp_path):
    out = tmp_path / "run"
    base = [*TINY_MLP, *TRACKED, f"logger.mlflow.tracking_uri={_uri(tmp_path)}"]
    run(compose_cfg(base), out_dir=out)
    old_id = json.loads((out / "mlflow_run.json").read_text())["run_id"]
    run(compose_cfg([*base, "resume=false"]), out_dir=out)
    new_id = json.loads((out / "mlflow_run.json").read_text())["run_id"]
    assert new_id != old_id
    assert len(list((out / "tensorboard").glob("events.out.tfevents.*"))) == 1  # the old events went
    assert_tensorboard_matches(out / "tensorboard", pd.read_parquet(out / "metrics.parquet"))


def _warnings(caplog) -> list[str]:
    """Every warning logged, from any logger (urllib3's retries included)."""
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


@pytest.mark.parametrize(
    "uri",
    [
        "sqlite:////proc/fedbench-no-such-folder/mlflow.db",  # a folder that cannot be created
        "http://127.0.0.1:9",  # nothing listens there (loopback): connection refused
    ],
)
@pytest.mark.parametrize("retries", [0, 1])
def test_an_mlflow_store_that_fails_is_one_warning_and_the_run_goes_on(tmp_path, caplog, uri, retries):
    cfg = compose_cfg(
        [*TINY_MLP, *TRACKED, f"logger.mlflow.tracking_uri={uri}", f"logger.mlflow.http_retries={retries}"]
    )
    with caplog.at_level("WARNING", logger="fedbench"):
        df = run(cfg, out_dir=tmp_path / "run")
    (line,) = _warnings(caplog)
    assert line.startswith("logger.mlflow: opening failed (") and "\n" not in line
    assert "the run goes on" in line
    assert (
        len(df) == 2 and json.loads((tmp_path / "run" / "summary.json").read_text())["status"] == "complete"
    )
    assert_tensorboard_matches(
        tmp_path / "run" / "tensorboard", pd.read_parquet(tmp_path / "run" / "metrics.parquet")
    )


def test_a_full_disk_under_tensorboard_is_one_warning_and_the_run_goes_on(tmp_path, caplog, monkeypatch):
    """The event file cannot be written from round 2 on (ENOSPC): one warning, TensorBoard is
    dropped, and MLflow and the run folder's files hold every round."""
    from torch.utils.tensorboard import SummaryWriter

    real = SummaryWriter.add_scalar

    def add_scalar(self, tag, value, step=None, *args, **kwargs):
        if step is not None and step >= 2:
            raise OSError(errno.ENOSPC, "No space left on device", "events.out.tfevents")
        return real(self, tag, value, step, *args, **kwargs)

    monkeypatch.setattr(SummaryWriter, "add_scalar", add_scalar)
    out = tmp_path / "run"
    cfg = compose_cfg([*THREE_ROUNDS, *TRACKED, f"logger.mlflow.tracking_uri={_uri(tmp_path)}"])
    with caplog.at_level("WARNING", logger="fedbench"):
        df = run(cfg, out_dir=out)
    (line,) = _warnings(caplog)
    assert (
        line.startswith("logger.tensorboard: recording round 2 failed (OSError: ") and "No space left" in line
    )
    assert len(df) == 3 and json.loads((out / "summary.json").read_text())["status"] == "complete"
    parquet = pd.read_parquet(out / "metrics.parquet")
    assert [s for s, _ in tb_scalars(out / "tensorboard")["cum_bytes"]] == [1]  # what it wrote before
    client = MlflowClient(_uri(tmp_path))
    assert_mlflow_matches(client, json.loads((out / "mlflow_run.json").read_text())["run_id"], parquet)


def test_a_missing_tracker_package_is_refused_before_the_run_with_exit_3(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "mlflow" else real(name, *a)
    )
    with pytest.raises(MissingPackage) as info:
        validate(compose_cfg([*TINY_MLP, "logger=[csv,mlflow]"]))
    assert info.value.exit_code == EXIT_ENVIRONMENT and "\n" not in str(info.value)
    assert "mlflow" in str(info.value) and "[track]" in str(info.value)


@pytest.mark.parametrize(
    "args, line",
    [
        (
            ["logger.mlflow.tracking_uri=sqlite:///x.db"],
            "fedbench: logger.mlflow.tracking_uri: logger mlflow is not selected (selected: csv); "
            "select it: logger=[csv,mlflow]",
        ),
        (
            ["logger=[csv,mlflow]", "logger.mlflow.trackinguri=x"],
            "fedbench: logger.mlflow.trackinguri: unknown key for logger=mlflow; its keys: "
            "tracking_uri=sqlite:///outputs/mlflow.db, experiment=null, http_retries=2, http_timeout_s=10.0",
        ),
        (
            ["logger=[csv,mlflow]", "logger.mlflow.tracking_uri=nowhere"],
            "fedbench: logger.mlflow.tracking_uri='nowhere': must be a URI: sqlite:///outputs/mlflow.db, "
            "another database or http(s)://host:port",
        ),
        (
            ["logger=wandb"],
            "fedbench: logger=wandb: unknown option for group 'logger'; allowed: csv, mlflow, tensorboard",
        ),
    ],
)
def test_bad_logger_settings_are_one_line_exit_2_and_no_folder(tmp_path, args, line):
    res = run_cli([*args, f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path, timeout=60)
    assert res.returncode == 2 and res.stderr.strip() == line
    assert not (tmp_path / "run").exists() and not (tmp_path / "outputs").exists()


def test_a_tracker_added_on_resume_gets_the_earlier_rounds_too(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        run(compose_cfg(THREE_ROUNDS), out_dir=out, on_round=StopAfter(2))  # no trackers yet
    assert not (out / "tensorboard").exists()
    run(compose_cfg([*THREE_ROUNDS, *TRACKED, f"logger.mlflow.tracking_uri={_uri(tmp_path)}"]), out_dir=out)
    assert json.loads((out / "summary.json").read_text())["resumed_from_round"] == 2
    parquet = pd.read_parquet(out / "metrics.parquet")
    assert_tensorboard_matches(out / "tensorboard", parquet)
    client = MlflowClient(_uri(tmp_path))
    assert_mlflow_matches(client, json.loads((out / "mlflow_run.json").read_text())["run_id"], parquet)


def test_report_mlflow_failure_is_one_warning_after_the_files_are_written(tmp_path):
    run(compose_cfg(TINY_MLP), out_dir=tmp_path / "run")
    res = run_report(
        ["run", "--out", "report", "--no-figures", "--mlflow", "http://127.0.0.1:9"], cwd=tmp_path
    )
    assert res.returncode == 0, res.stderr
    warnings = [line for line in res.stderr.splitlines() if "warning" in line]
    assert len(warnings) == 1 and warnings[0].startswith(
        "fedbench-report: warning: --mlflow http://127.0.0.1:9:"
    )
    assert (tmp_path / "report" / "summary.md").is_file()
