"""Finding run folders, loading the complete ones, and counting a run found twice once.

A run folder is a folder holding ``.hydra/``, ``summary.json`` or ``metrics.csv``. Folders whose
run did not complete (no summary, status other than ``complete``) or cannot be read are skipped
with a warning naming them. The same folder reached twice counts once; two folders with the same
``config_hash`` and seed (a sweep run twice) count once: the newest complete one is kept.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from fedbench.report.errors import ReportError, info, warn
from fedbench.report.identity import identity

RUN_MARKERS = (".hydra", "summary.json", "metrics.csv")
# Metric columns a run must have to be reported (others, present or future, are carried along).
REQUIRED_METRICS = (
    "round",
    "accuracy",
    "bytes_up",
    "bytes_down",
    "cum_bytes_up",
    "cum_bytes_down",
    "cum_bytes",
)


def display_path(path: Path) -> str:
    """Relative to the working directory where possible: tables and messages stay short."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def is_run_dir(path: Path) -> bool:
    return any((path / m).exists() for m in RUN_MARKERS)


def _inside(path: Path, roots: list[Path]) -> bool:
    return any(path == r or r in path.parents for r in roots)


def find_run_dirs(paths: list[str | Path]) -> list[Path]:
    """Every run folder under ``paths`` (each resolved, each once, sorted).

    Does not descend into a run folder or into hidden folders (``.hydra``, ``.submitit``).
    Follows symbolic links only to folders inside the given ``paths``, and never into a folder
    already searched (so a link loop ends); each link it does not follow is named on stderr.
    """
    roots: list[Path] = []
    for p in paths:
        root = Path(p)
        if not root.exists():
            raise ReportError(f"no such file or folder: {p}")
        if not root.is_dir():
            raise ReportError(f"not a folder: {p} (give run or multirun folders, or one saved runs.parquet)")
        roots.append(root.resolve())
    found: set[Path] = set()
    searched: set[Path] = set()
    for root in roots:
        if is_run_dir(root):
            found.add(root)
            continue
        for dirpath, dirnames, _ in os.walk(root, followlinks=True):
            here = Path(dirpath)
            searched.add(here.resolve())
            keep = []
            for d in sorted(dirnames):
                if d.startswith("."):
                    continue
                sub = here / d
                real = sub.resolve()
                if sub.is_symlink() and not _inside(real, roots):
                    warn(f"not following {display_path(sub)}: a link to {real}, outside the given folders")
                    continue
                if real in searched or real in found:
                    if sub.is_symlink():
                        warn(f"not following {display_path(sub)}: a link to a folder already searched")
                    continue
                if is_run_dir(sub):
                    found.add(real)
                else:
                    searched.add(real)
                    keep.append(d)
            dirnames[:] = keep
    return sorted(found)


@dataclass
class Run:
    path: Path
    summary: dict
    metrics: pd.DataFrame
    identity: dict = field(default_factory=dict)

    @property
    def key(self) -> tuple:
        return (self.summary.get("config_hash"), self.identity.get("seed"))


def _read_metrics(path: Path) -> pd.DataFrame:
    pq = path / "metrics.parquet"
    if pq.is_file():
        return pd.read_parquet(pq)
    return pd.read_csv(path / "metrics.csv")


def load_run(path: Path) -> tuple[Run | None, str | None]:
    """A complete, readable run, or ``(None, why it is skipped)``."""
    sp = path / "summary.json"
    if not sp.is_file():
        rounds = ""
        if (path / "metrics.csv").is_file():
            try:
                rounds = f", {len(pd.read_csv(path / 'metrics.csv'))} round(s) in metrics.csv"
            except Exception:  # noqa: BLE001 - any unreadable csv
                rounds = ", unreadable metrics.csv"
        return None, f"incomplete: no summary.json (killed or still running{rounds})"
    try:
        summary = json.loads(sp.read_text())
    except (OSError, ValueError) as exc:
        return None, f"unreadable summary.json ({type(exc).__name__}: {str(exc).splitlines()[0]})"
    if not isinstance(summary, dict):
        return None, "unreadable summary.json (not a JSON object)"
    status = summary.get("status")
    if status != "complete":
        done = summary.get("rounds_completed")
        total = summary.get("num_rounds")
        return None, f"status {status!r}" + (f" after {done}/{total} rounds" if done is not None else "")
    if not isinstance(summary.get("config"), dict):
        return None, "summary.json has no 'config'"
    try:
        metrics = _read_metrics(path)
    except Exception as exc:  # noqa: BLE001 - pyarrow/pandas raise many kinds
        return (
            None,
            f"unreadable metrics ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})",
        )
    missing = [c for c in REQUIRED_METRICS if c not in metrics.columns]
    if missing:
        return None, f"metrics lack column(s) {', '.join(missing)}"
    text = [c for c in REQUIRED_METRICS if not pd.api.types.is_numeric_dtype(metrics[c])]
    if text:
        return None, f"metrics column(s) {', '.join(text)} hold non-numeric values"
    expected = summary.get("rounds_completed", summary.get("num_rounds"))
    if len(metrics) == 0 or (expected is not None and len(metrics) != expected):
        return None, f"metrics have {len(metrics)} row(s) but summary.json says {expected} round(s)"
    if list(metrics["round"]) != list(range(1, len(metrics) + 1)):
        return None, "metrics rounds are not 1..N"
    run = Run(path=path, summary=summary, metrics=metrics.reset_index(drop=True))
    run.identity = identity(summary)
    return run, None


def _finished(run: Run) -> tuple:
    stamp = run.summary.get("finished_at") or ""
    try:
        mtime = (run.path / "summary.json").stat().st_mtime
    except OSError:
        mtime = 0.0
    return (str(stamp), mtime)


def deduplicate(runs: list[Run]) -> tuple[list[Run], list[tuple[Run, Run]]]:
    """Keep the newest complete run per (config_hash, seed); return (kept, [(dropped, kept)])."""
    by_key: dict[tuple, list[Run]] = {}
    for r in runs:
        by_key.setdefault(r.key, []).append(r)
    kept, dropped = [], []
    for group in by_key.values():
        group = sorted(group, key=_finished)
        newest = group[-1]
        kept.append(newest)
        dropped.extend((old, newest) for old in group[:-1])
    kept.sort(key=lambda r: str(r.path))
    return kept, dropped


def collect_runs(paths: list[str | Path]) -> tuple[list[Run], list[tuple[Path, str]], list[tuple[Run, Run]]]:
    """Complete runs under ``paths`` (deduplicated), the skipped folders and the dropped duplicates.

    Every skipped folder and every duplicate is named on stderr as it is found.
    """
    dirs = find_run_dirs(paths)
    runs, skipped = [], []
    for d in dirs:
        try:
            run, why = load_run(d)
        except Exception as exc:  # noqa: BLE001 - never crash on one bad folder
            run, why = None, f"unreadable ({type(exc).__name__}: {exc})"
        if run is None:
            skipped.append((d, why))
            warn(f"skipping {display_path(d)}: {why}")
        else:
            runs.append(run)
    info(
        f"skipped {len(skipped)} run folder(s)"
        + (" (incomplete or unreadable; named above)" if skipped else "")
    )
    if not runs:
        where = ", ".join(map(str, paths))
        raise ReportError(
            f"no complete runs found under {where} ({len(dirs)} run folder(s) found, {len(skipped)} skipped)",
            code=1,
        )
    runs, dropped = deduplicate(runs)
    for old, new in dropped:
        warn(
            f"duplicate run (config_hash {old.summary.get('config_hash')}, seed {old.identity['seed']}): "
            f"keeping the newest {display_path(new.path)}, ignoring {display_path(old.path)}"
        )
    return runs, skipped, dropped
