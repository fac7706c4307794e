"""Experiment trackers (``logger=``): a run's rows also go to TensorBoard or MLflow.

``logger=csv`` (the default) is what the run folder always holds (metrics.csv/parquet,
summary.json); ``logger=[csv,tensorboard,mlflow]`` adds the others (Hydra's list syntax; each
selected option is its own section, ``logger.<name>``). A tracker is a registered
:class:`fedbench.contracts.Tracker`; :class:`Trackers` calls every selected one and turns a
failure (a bad URI, a full disk, a server that went away) into one warning line, after which
that tracker is dropped and the run, with its own files, goes on.

Resume (a rerun of a killed run) continues a tracker's record instead of duplicating it: see
each tracker and docs/trackers.md.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedbench.results import COLUMNS

log = logging.getLogger("fedbench")

# The numeric columns of a metrics row that trackers record (``round`` is the step; ``selected``
# is a list of client ids, not a number).
METRIC_COLUMNS = tuple(c for c in COLUMNS if c not in ("round", "selected"))


@dataclass
class TrackedRun:
    """What a tracker knows about the run it records."""

    run_dir: Path | None  # the run folder (None: a run without one, e.g. run(cfg) in Python)
    name: str  # the run folder's name (or "fedbench")
    config: dict  # the resolved config, without the logger section
    config_hash: str
    choices: dict = field(default_factory=dict)  # group -> option (method=lora, arm=lora_r4, ...)
    sweep_dir: str | None = None  # the multirun folder this run is a job of
    job_num: int | None = None
    resumed_from: int | None = None  # the round the run continues after (None: a fresh start)
    rows: list[dict] = field(default_factory=list)  # rows of rounds 1..resumed_from (from disk)


def metric_values(row: dict) -> dict[str, float]:
    """The numbers a tracker records for a row: every numeric column but ``round``, except
    NaN (a value the round did not measure: accuracy in rounds ``fl.eval_every`` skips, the
    per-client columns without per-client splits, epsilon without privacy)."""
    out = {}
    for c in METRIC_COLUMNS:
        v = row.get(c)
        if v is None:
            continue
        v = float(v)
        if not math.isnan(v):
            out[c] = v
    return out


def flatten_config(config: dict, prefix: str = "") -> dict[str, Any]:
    """``{"fl": {"lr": 0.001}}`` -> ``{"fl.lr": 0.001}``; lists (and None) as JSON text."""
    out: dict[str, Any] = {}
    for k, v in config.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten_config(v, key + "."))
        elif isinstance(v, (list, tuple)) or v is None:
            out[key] = json.dumps(v)
        else:
            out[key] = v
    return out


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    if len(text) > 300:
        text = text[:297] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class Trackers:
    """The selected trackers of one run. Every call is guarded: the first exception a tracker
    raises is logged as one warning line and the tracker is not called again."""

    def __init__(self, trackers: dict[str, Any], run: TrackedRun) -> None:
        self.run = run
        self.active = dict(trackers)  # name -> tracker
        self.failed: dict[str, str] = {}

    def _call(self, name: str, what: str, fn, *args) -> None:
        try:
            fn(*args)
        except Exception as exc:  # noqa: BLE001 - a tracker never stops the run
            self.active.pop(name, None)
            self.failed[name] = _one_line(exc)
            log.warning(
                "logger.%s: %s failed (%s); the run goes on without it (its run folder files are unaffected)",
                name,
                what,
                self.failed[name],
            )

    def open(self) -> None:
        for name, tracker in list(self.active.items()):
            self._call(name, "opening", tracker.open, self.run)

    def log_row(self, row: dict) -> None:
        for name, tracker in list(self.active.items()):
            self._call(name, f"recording round {row['round']}", tracker.log_row, row)

    def close(self, status: str, summary: dict) -> None:
        for name, tracker in list(self.active.items()):
            self._call(name, "closing", tracker.close, status, summary)
