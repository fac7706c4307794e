"""``fedbench-report``: tables and figures from fedbench run folders (``python -m fedbench.report``).

Writes into ``--out``:

- ``runs.parquet`` + ``runs.csv``: one tidy table, one row per run per round, the run's identity
  (model, method, data, strategy, compression, partition, rank, key hyperparameters, seed,
  threads, config_hash, config_id, label) next to its metrics;
- ``summary.csv`` + ``summary.md``: one row per configuration (runs that differ only in
  ``seed``), aggregated over seeds: final accuracy mean ± std, best accuracy, MB up/down, MB and
  rounds to reach the target accuracy, trainable parameters, wall time;
- figures (PNG + PDF).

One module per job, each importing only those before it in this list:

- :mod:`.errors`: ``ReportError`` and the one-line messages on stderr;
- :mod:`.identity`: what identifies a configuration (identity columns, ``config_id``);
- :mod:`.discovery`: finding run folders, loading complete runs, dropping duplicates;
- :mod:`.tables`: the runs table (built from runs, or read back from a saved ``runs.parquet``);
- :mod:`.statistics`: aggregation over seeds, bytes/rounds to the target, the Pareto front;
- :mod:`.labels`: short human labels from the factors that vary;
- :mod:`.figures`: the plots;
- :mod:`.markdown`: ``summary.md``;
- :mod:`.cli`: arguments, ``report()``, writing the outputs atomically.
"""

from fedbench.report.cli import main, parser, report, write_outputs
from fedbench.report.discovery import (
    Run,
    collect_runs,
    deduplicate,
    display_path,
    find_run_dirs,
    is_run_dir,
    load_run,
)
from fedbench.report.errors import PROG, ReportError
from fedbench.report.figures import FIGURES, make_figures, plan
from fedbench.report.identity import KEY_PARAMS, config_id, flatten, identity
from fedbench.report.labels import human_labels, varying_factors
from fedbench.report.markdown import summary_markdown
from fedbench.report.statistics import DEFAULT_TARGET_FRACTION, MB, build_summary, curves, pareto_front
from fedbench.report.tables import build_runs_table, load_table, varying_keys

__all__ = [
    "DEFAULT_TARGET_FRACTION",
    "FIGURES",
    "KEY_PARAMS",
    "MB",
    "PROG",
    "ReportError",
    "Run",
    "build_runs_table",
    "build_summary",
    "collect_runs",
    "config_id",
    "curves",
    "deduplicate",
    "display_path",
    "find_run_dirs",
    "flatten",
    "human_labels",
    "identity",
    "is_run_dir",
    "load_run",
    "load_table",
    "main",
    "make_figures",
    "pareto_front",
    "parser",
    "plan",
    "report",
    "summary_markdown",
    "varying_factors",
    "varying_keys",
    "write_outputs",
]
