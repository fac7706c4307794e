"""``fedbench-report ... --mlflow [URI]``: the report's figures and tables as MLflow artifacts.

One MLflow run (named ``report <out folder>``) holds the figures (``figures/``, PNG and PDF)
and the tables (``tables/``: summary.md, summary.csv, paired.csv). It goes into
``--mlflow-experiment`` if given, else into the experiment that the reported runs were
tracked in (``logger=mlflow`` kept its id in each run folder's ``mlflow_run.json``) when they
share one on this store, else into ``fedbench-report``. The report's own files are written
first; a tracker failure is one warning line, never a failed report.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from fedbench.report.errors import ReportError
from fedbench.trackers.mlflow_logger import (
    DEFAULT_URI,
    RUN_FILE,
    client,
    experiment_id,
    missing_package,
    normalized,
)

REPORT_EXPERIMENT = "fedbench-report"
TABLES = ("summary.md", "summary.csv", "paired.csv")


def check_available() -> None:
    """Before anything is written: the packages --mlflow needs (exit 3 without them)."""
    problem = missing_package()
    if problem is not None:
        raise ReportError(f"--mlflow: {problem.allowed}", code=problem.exit_code)


def _tracked_experiments(df: pd.DataFrame, uri: str) -> set[str]:
    found = set()
    for run_dir in df["run_dir"].unique():
        path = Path(str(run_dir)) / RUN_FILE
        try:
            stored = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if (
            isinstance(stored, dict)
            and stored.get("tracking_uri") == normalized(uri)
            and stored.get("experiment_id")
        ):
            found.add(str(stored["experiment_id"]))
    return found


def log_report(
    out: Path, written: list[Path], df: pd.DataFrame, uri: str | None, experiment: str | None, how: dict
) -> str:
    """Log the written report to MLflow; returns the MLflow run id."""
    from mlflow.entities import Param, RunTag

    uri = uri or DEFAULT_URI
    mlflow = client(uri)
    if experiment:
        exp = experiment_id(mlflow, experiment, uri)
    else:
        tracked = _tracked_experiments(df, uri)
        exp = tracked.pop() if len(tracked) == 1 else experiment_id(mlflow, REPORT_EXPERIMENT, uri)
    run = mlflow.create_run(
        exp,
        run_name=f"report {out}",
        tags={"fedbench.report": str(Path(out).resolve()), "fedbench.runs": str(df["run_dir"].nunique())},
    )
    run_id = run.info.run_id
    try:
        rule = "given" if how.get("given") else f"{how['fraction']} x best mean final ({how['best_label']})"
        params = [
            Param("target_accuracy", repr(float(how["target"]))),
            Param("target_rule", rule[:6000]),
            Param("runs", str(int(df["run_dir"].nunique()))),
        ]
        mlflow.log_batch(run_id, params=params, tags=[RunTag("fedbench.status", "complete")])
        for path in written:
            if path.suffix in (".png", ".pdf"):
                mlflow.log_artifact(run_id, str(path), artifact_path="figures")
            elif path.name in TABLES:
                mlflow.log_artifact(run_id, str(path), artifact_path="tables")
    except BaseException:
        mlflow.set_terminated(run_id, "FAILED")
        raise
    mlflow.set_terminated(run_id, "FINISHED")
    return run_id
