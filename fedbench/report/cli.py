"""``fedbench-report PATH... [--out DIR] [--target-accuracy X] [--baseline KEY=VALUE ...] [--mlflow [URI]]``.

Arguments, the run, the files. PATH is run or multirun folders (searched recursively), or one
``runs.parquet`` that an earlier report saved (to redraw a committed report without its run
folders). Every input is checked before anything is written (a ``--baseline`` that matches no
configuration or several is refused like a bad path: one line, exit 2, no files). Every output
file is built in a temporary sibling folder and moved into ``--out`` only when all of them
succeeded, so a failure never leaves a half-written report.
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import sys
import tempfile
from pathlib import Path

import pandas as pd

import fedbench.report.figures as _figures
from fedbench.report.discovery import collect_runs
from fedbench.report.errors import PROG, ReportError, info, warn
from fedbench.report.markdown import summary_markdown
from fedbench.report.paired import paired_differences, parse_pair, select_configuration
from fedbench.report.statistics import DEFAULT_TARGET_FRACTION, build_summary
from fedbench.report.tables import build_runs_table, is_saved_table, load_table
from fedbench.report.tracking import REPORT_EXPERIMENT
from fedbench.trackers.mlflow_logger import DEFAULT_URI


def write_outputs(
    out: Path,
    df: pd.DataFrame,
    summary: pd.DataFrame,
    md: str,
    target: float,
    figures: bool,
    paired: pd.DataFrame | None = None,
) -> list[Path]:
    """Build every file in a temporary sibling folder, then move them into ``out``."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-"))
    try:
        df.to_parquet(tmp / "runs.parquet", index=False)
        df.to_csv(tmp / "runs.csv", index=False)
        summary.to_csv(tmp / "summary.csv", index=False)
        if paired is not None:
            paired.to_csv(tmp / "paired.csv", index=False)
        (tmp / "summary.md").write_text(md)
        if figures:
            _figures.make_figures(df, summary, target, tmp)  # looked up here: tests replace it
        out.mkdir(parents=True, exist_ok=True)
        written = []
        for f in sorted(tmp.iterdir()):
            os.replace(f, out / f.name)
            written.append(out / f.name)
        return written
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, not usage + message
        raise ReportError(message)


def _fraction(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not (math.isfinite(v) and 0 < v <= 1):
        raise argparse.ArgumentTypeError(f"{text!r} must be in (0, 1] (a fraction, e.g. 0.2 for 20%)")
    return v


def _pair(text: str) -> tuple[str, str]:
    try:
        return parse_pair(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def parser() -> argparse.ArgumentParser:
    p = _Parser(prog=PROG, description="Tables and figures from fedbench run or multirun folders.")
    p.add_argument(
        "paths",
        nargs="+",
        metavar="PATH",
        help="run or multirun folders (searched recursively), or one runs.parquet a report saved",
    )
    p.add_argument("--out", default="report", help="output folder (default: ./report)")
    g = p.add_mutually_exclusive_group()
    g.add_argument(
        "--target-accuracy",
        type=_fraction,
        metavar="X",
        help="accuracy to reach (fraction in (0, 1]); default: --target-fraction of the "
        "best configuration's mean final accuracy",
    )
    g.add_argument(
        "--target-fraction",
        type=_fraction,
        default=DEFAULT_TARGET_FRACTION,
        metavar="F",
        help=f"default target = F x best mean final accuracy (default {DEFAULT_TARGET_FRACTION})",
    )
    p.add_argument("--no-figures", action="store_true", help="tables only")
    p.add_argument(
        "--mlflow",
        nargs="?",
        const=DEFAULT_URI,
        default=None,
        metavar="URI",
        help="also log the figures and tables as artifacts of one MLflow run on this store "
        f"(default {DEFAULT_URI}; or a tracking server, http://host:port)",
    )
    p.add_argument(
        "--mlflow-experiment",
        metavar="NAME",
        help="the MLflow experiment for --mlflow (default: the one the reported runs were tracked "
        f"in, when they share one, else {REPORT_EXPERIMENT})",
    )
    p.add_argument(
        "--baseline",
        nargs="+",
        type=_pair,
        metavar="KEY=VALUE",
        help="the configuration to compare every other one with, seed by seed (paired.csv and a "
        "section of summary.md), selected by its identity columns: e.g. arm=full, "
        "method=lora rank=4",
    )
    return p


def report(
    paths: list[str],
    out: str | Path = "report",
    target_accuracy: float | None = None,
    target_fraction: float = DEFAULT_TARGET_FRACTION,
    figures: bool = True,
    baseline: list[tuple[str, str]] | list[str] | None = None,
    mlflow: str | None = None,
    mlflow_experiment: str | None = None,
) -> dict:
    """Run the report; returns what it did (also used by tests and the notebook).

    ``baseline``: ``(key, value)`` pairs (or ``"key=value"`` strings) selecting the configuration
    the others are compared with, seed by seed; checked before anything is written.
    ``mlflow``: a tracking URI; the written figures and tables then also become artifacts of one
    MLflow run (:mod:`fedbench.report.tracking`; a failure there is one warning line).
    """
    if mlflow is not None:
        from fedbench.report.tracking import check_available

        check_available()
    try:
        pairs = [parse_pair(b) if isinstance(b, str) else tuple(b) for b in baseline or []]
    except ValueError as exc:
        raise ReportError(f"argument --baseline: {exc}") from None
    tables = [p for p in paths if is_saved_table(p)]
    if tables:
        if len(paths) > 1:
            raise ReportError(
                f"a saved runs table is reported on its own: got {tables[0]} with {len(paths) - 1} more path(s)"
            )
        df, skipped, dropped, table = load_table(tables[0]), [], [], Path(tables[0]).name
        n_runs = int(df["run_dir"].nunique())
    else:
        runs, skipped, dropped = collect_runs(paths)
        df, table, n_runs = build_runs_table(runs), None, len(runs)
    summary, how = build_summary(df, target_accuracy, target_fraction)
    paired = None
    if pairs:  # before any file is written: a bad selection leaves nothing behind
        base = select_configuration(summary, pairs)
        paired = paired_differences(df, summary, base, how["target"])
    fig_names = _figures.figure_names(summary) if figures else []
    md = summary_markdown(
        summary, how, n_runs, len(skipped), len(dropped), fig_names, table=table, paired=paired
    )
    out = Path(out)
    written = write_outputs(out, df, summary, md, how["target"], figures, paired)
    info(
        f"{n_runs} run(s), {len(summary)} configuration(s), {len(df)} rows; "
        f"target accuracy {how['target']:.4f}; wrote {len(written)} files to {out}"
    )
    mlflow_run = None
    if mlflow is not None:
        from fedbench.report.tracking import log_report

        try:
            mlflow_run = log_report(out, written, df, mlflow, mlflow_experiment, how)
        except Exception as exc:  # noqa: BLE001 - the report's files are written: a warning
            detail = " ".join(str(exc).split())[:300]
            warn(
                f"--mlflow {mlflow}: logging the report failed ({type(exc).__name__}: {detail}); its files are in {out}"
            )
        else:
            info(f"logged the report to MLflow ({mlflow}, run {mlflow_run})")
    return {
        "mlflow_run": mlflow_run,
        "runs": df,
        "summary": summary,
        "target": how,
        "paired": paired,
        "skipped": skipped,
        "dropped": dropped,
        "written": written,
    }


def main(argv: list[str] | None = None) -> int:
    try:
        args = parser().parse_args(argv)
        report(
            args.paths,
            args.out,
            args.target_accuracy,
            args.target_fraction,
            not args.no_figures,
            baseline=args.baseline,
            mlflow=args.mlflow,
            mlflow_experiment=args.mlflow_experiment,
        )
    except ReportError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return exc.code
    print(Path(args.out) / "summary.md")
    return 0
