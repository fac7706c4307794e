"""``logger=mlflow``: one MLflow run per fedbench run.

The store is an embedded SQLite database, ``sqlite:///outputs/mlflow.db`` (relative to the
working directory, like ``outputs/``), unless ``logger.mlflow.tracking_uri=`` names another
database (``sqlite:////abs/path.db``, ``postgresql://...``) or a tracking server
(``http://host:5000``). MLflow 3 refuses its old file store (``./mlruns``) unless forced, so
none is used. With a SQLite store, artifacts (fedbench-report's figures) go to
``mlartifacts/`` beside the database.

- experiment: ``logger.mlflow.experiment``, else the sweep folder for the jobs of a multirun
  (one experiment per sweep) and ``fedbench`` for single runs;
- run name: the run folder's name; tags: the chosen options (``fedbench.method=lora``, ...),
  ``fedbench.run_dir``, ``fedbench.config_hash``, ``fedbench.status``;
- params: the flattened resolved config (``fl.lr``, ``method.rank``, ...);
- metrics: every numeric column of each row at step = round (NaN, a value the round did not
  measure, is left out; MLflow stores an infinite epsilon as +-1.797e308).

Resume: the MLflow run's id is kept in the run folder (``mlflow_run.json``); the continued run
reopens that MLflow run, logs only the rounds it does not hold yet (the recomputed rounds are
bit-identical to the lost ones) and marks it finished at the end. A fresh start in a folder
(``resume=false``) starts a new MLflow run.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from fedbench.contracts import Tracker
from fedbench.errors import ConfigError, MissingPackage
from fedbench.registry import register
from fedbench.results import atomic_write_json
from fedbench.trackers import TrackedRun, flatten_config, metric_values

DEFAULT_URI = "sqlite:///outputs/mlflow.db"
RUN_FILE = "mlflow_run.json"  # in the run folder: which MLflow run holds this run
STATUS = {"complete": "FINISHED", "diverged": "FINISHED", "interrupted": "KILLED", "failed": "FAILED"}
MAX_PARAM_VALUE = 6000  # MLflow's limit on a param value's length
BATCH = 100  # MLflow's limit on params per log_batch


def missing_package() -> MissingPackage | None:
    import importlib.util

    if importlib.util.find_spec("mlflow") is None or importlib.util.find_spec("sqlalchemy") is None:
        return MissingPackage(
            "logger",
            "mlflow needs the packages mlflow-skinny, sqlalchemy and alembic, which are not "
            "installed (pip install -c constraints.txt -e '.[track]')",
            "mlflow",
        )
    return None


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI (relative or absolute), else None."""
    if not uri.startswith("sqlite:///"):
        return None
    path = uri[len("sqlite:///") :]
    return None if path in ("", ":memory:") else Path(path)


def normalized(uri: str) -> str:
    """``uri`` with a relative SQLite path made absolute: how run folders record their store,
    so that a report or a resume from another working directory finds the same one."""
    db = sqlite_path(uri)
    return f"sqlite:///{db.resolve()}" if db is not None and not db.is_absolute() else uri


def client(uri: str, http_retries: int = 2, http_timeout_s: float = 10.0):
    """An ``MlflowClient`` on ``uri`` (a SQLite file's folder is created first), with bounded
    HTTP retries so that an unreachable server costs seconds, not minutes, and MLflow's usage
    telemetry off."""
    # MLflow 3 sends usage telemetry to its own servers unless told not to: a run contacts
    # nothing but the store it was given (the environment may still say otherwise)
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = str(http_retries)
    os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = str(int(http_timeout_s))
    for name in ("alembic", "mlflow.store.db.utils"):  # schema creation talks at INFO
        logging.getLogger(name).setLevel(logging.WARNING)
    # each retry of a request is a warning of urllib3's: a failure is one line (fedbench.trackers)
    logging.getLogger("urllib3.connectionpool").setLevel(logging.ERROR)
    from mlflow.tracking import MlflowClient

    with store_lock(uri):  # the first client creates the database's tables: one process at a time
        mlflow_client = MlflowClient(tracking_uri=uri)
        mlflow_client.search_experiments(max_results=1)  # opens (and if new, creates) the store
    return mlflow_client


@contextlib.contextmanager
def store_lock(uri: str):
    """For a SQLite store: an exclusive lock on ``<database>.lock`` beside it. Parallel sweep jobs
    (joblib, submitit, Ray) that open a new database at once would otherwise race through its
    schema migrations and fail; other stores need no lock."""
    db = sqlite_path(uri)
    if db is None:
        yield
        return
    import fcntl

    db.parent.mkdir(parents=True, exist_ok=True)
    with open(db.parent / (db.name + ".lock"), "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def experiment_id(mlflow_client, name: str, uri: str) -> str:
    """The id of experiment ``name``, created if needed (the jobs of a sweep create it once)."""
    with store_lock(uri):
        found = mlflow_client.get_experiment_by_name(name)
        if found is not None:
            return found.experiment_id
        db = sqlite_path(uri)
        location = (db.parent.resolve() / "mlartifacts").as_uri() if db is not None else None
        try:
            return mlflow_client.create_experiment(name, artifact_location=location)
        except Exception:  # noqa: BLE001 - created meanwhile by a job on another store client
            found = mlflow_client.get_experiment_by_name(name)
            if found is None:
                raise
            return found.experiment_id


@register("logger", "mlflow")
@dataclass
class MLflowLogger(Tracker):
    """Params (the flattened config), metrics per round and tags, in one MLflow run."""

    tracking_uri: str = DEFAULT_URI
    # null: the sweep folder for the jobs of a multirun (one experiment per sweep), else "fedbench"
    experiment: Optional[str] = None  # noqa: UP045 (OmegaConf)
    http_retries: int = 2  # MLflow's retries of a failed request to a tracking server
    http_timeout_s: float = 10.0  # seconds per request to a tracking server

    def __post_init__(self) -> None:
        if not self.tracking_uri or "://" not in self.tracking_uri:
            raise ConfigError(
                "logger.mlflow.tracking_uri",
                "must be a URI: sqlite:///outputs/mlflow.db, another database or http(s)://host:port",
                self.tracking_uri,
            )
        if self.experiment is not None and not self.experiment.strip():
            raise ConfigError("logger.mlflow.experiment", "must be null or a name", self.experiment)
        if self.http_retries < 0:
            raise ConfigError("logger.mlflow.http_retries", "must be an integer >= 0", self.http_retries)
        if not self.http_timeout_s > 0:
            raise ConfigError("logger.mlflow.http_timeout_s", "must be a float > 0", self.http_timeout_s)
        self._client = None
        self._run_id: str | None = None
        self._logged_up_to = 0

    def check_compatible(self, components: dict, fl) -> None:
        problem = missing_package()
        if problem is not None:
            raise problem

    def _experiment_name(self, run: TrackedRun) -> str:
        if self.experiment:
            return self.experiment
        return str(run.sweep_dir) if run.sweep_dir else "fedbench"

    def _stored_run(self, run: TrackedRun) -> str | None:
        """The MLflow run id a resumed run folder recorded for this store, if still there."""
        if run.resumed_from is None or run.run_dir is None:
            return None
        path = Path(run.run_dir) / RUN_FILE
        try:
            stored = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        if not isinstance(stored, dict) or stored.get("tracking_uri") != normalized(self.tracking_uri):
            return None
        run_id = stored.get("run_id")
        try:
            self._client.get_run(run_id)
        except Exception:  # noqa: BLE001 - deleted, or another store: start a new MLflow run
            return None
        return run_id

    def open(self, run: TrackedRun) -> None:
        from mlflow.entities import Param, RunTag

        self._client = client(self.tracking_uri, self.http_retries, self.http_timeout_s)
        self._run_id = self._stored_run(run)
        self._logged_up_to = 0
        if self._run_id is not None:
            steps = [m.step for m in self._client.get_metric_history(self._run_id, "cum_bytes")]
            self._logged_up_to = max(steps, default=0)
            self._client.update_run(self._run_id, status="RUNNING")
        else:
            exp = experiment_id(self._client, self._experiment_name(run), self.tracking_uri)
            tags = {f"fedbench.{g}": str(o) for g, o in run.choices.items()}
            tags.update(
                {
                    "fedbench.config_hash": run.config_hash,
                    "fedbench.status": "running",
                    **({"fedbench.run_dir": str(Path(run.run_dir).resolve())} if run.run_dir else {}),
                    **({"fedbench.sweep_dir": str(run.sweep_dir)} if run.sweep_dir else {}),
                    **({"fedbench.job": str(run.job_num)} if run.job_num is not None else {}),
                }
            )
            created = self._client.create_run(exp, run_name=run.name, tags=tags)
            self._run_id = created.info.run_id
            params = [Param(k, str(v)[:MAX_PARAM_VALUE]) for k, v in flatten_config(run.config).items()]
            for i in range(0, len(params), BATCH):
                self._client.log_batch(self._run_id, params=params[i : i + BATCH])
            if run.run_dir is not None:
                atomic_write_json(
                    Path(run.run_dir) / RUN_FILE,
                    {
                        "tracking_uri": normalized(self.tracking_uri),
                        "experiment_id": exp,
                        "run_id": self._run_id,
                    },
                )
        self._client.log_batch(self._run_id, tags=[RunTag("fedbench.status", "running")])
        for row in run.rows:  # rounds done before this process that the MLflow run lacks
            self.log_row(row)

    def log_row(self, row: dict) -> None:
        from mlflow.entities import Metric

        step = int(row["round"])
        if step <= self._logged_up_to:
            return
        now = int(time.time() * 1000)
        metrics = [Metric(k, v, now, step) for k, v in metric_values(row).items()]
        self._client.log_batch(self._run_id, metrics=metrics)
        self._logged_up_to = step

    def close(self, status: str, summary: dict) -> None:
        from mlflow.entities import RunTag

        if self._run_id is None:
            return
        self._client.log_batch(self._run_id, tags=[RunTag("fedbench.status", status)])
        self._client.set_terminated(self._run_id, STATUS.get(status, "FAILED"))
