"""The runs table: one tidy row per run per round, the run's identity next to its metrics.

Built from loaded runs (:func:`build_runs_table`) or read back from a report's saved
``runs.parquet`` (:func:`load_table`), so a committed report can be redrawn without its run
folders. Identity columns come first and end with ``seed``; each configuration gets a ``label``
that names what differs between the configurations of this report.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from fedbench.report.discovery import REQUIRED_METRICS, Run, display_path
from fedbench.report.errors import ReportError
from fedbench.report.identity import GROUPS, KEY_PARAMS, flatten, non_identity_keys

MB = 1e6  # decimal megabytes, as communication budgets are quoted
_SHORT = {"method.rank": "r", "method.alpha": "alpha"}
_ORDER = ("method.", "compression", "data.partition", "strategy.", "model.", "data.", "fl.")
# What build_summary reads besides the identity: a saved table without these cannot be reported.
TABLE_COLUMNS = (
    "run_dir",
    "method",
    "seed",
    "threads",
    "config_hash",
    "config_id",
    "label",
    *REQUIRED_METRICS,
    "trainable_params",
    "elapsed_s",
)


def _sort_value(v):
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return (2, 0, "")
    if isinstance(v, (bool, np.bool_)):
        return (0, float(v), "")
    if isinstance(v, (int, float, np.integer, np.floating)):
        return (0, float(v), "")
    return (1, 0, str(v))


def varying_keys(runs: list[Run]) -> list[str]:
    """Dotted config keys whose value differs between configurations (not seed/threads/...)."""
    reps = {r.identity["config_id"]: r.summary["config"] for r in runs}
    skip = set()
    for cfg in reps.values():
        skip |= non_identity_keys(cfg)
    skip.add("seed")
    values: dict[str, set] = {}
    for cfg in reps.values():
        for k, v in flatten(cfg).items():
            if k.split(".")[0] in skip or k.endswith("_target_"):
                continue
            values.setdefault(k, set()).add(json.dumps(v, sort_keys=True, default=str))
    keys = [k for k, vals in values.items() if len(vals) > 1]

    def prio(k: str) -> tuple:
        for i, p in enumerate(_ORDER):
            if k.startswith(p):
                return (i, k)
        return (len(_ORDER), k)

    return sorted(keys, key=prio)


def _label(ident: dict, flat: dict, vary: list[str], varying_choices: list[str]) -> str:
    parts = [str(ident["method"])]
    for g in varying_choices:
        if g in ("compression_up", "compression_down"):
            if ident.get(g) and ident[g] != ident.get("compression"):  # "fp16" says it already
                parts.append(f"{g.removeprefix('compression_')}={ident[g]}")
        elif g != "method" and ident.get(g):
            parts.append(str(ident[g]))
    for k in vary:
        if k not in flat:
            continue
        name = (
            k.removeprefix("compression.")
            if k.startswith("compression.")
            else _SHORT.get(k, k.rsplit(".", 1)[-1])
        )
        v = flat[k]
        if isinstance(v, float) and v.is_integer() and abs(v) < 1e15:
            v = f"{v:g}"
        parts.append(f"{name}={v}")
    return " ".join(parts)


def build_runs_table(runs: list[Run]) -> pd.DataFrame:
    """The tidy long table: one row per run per round, in display order."""
    vary = varying_keys(runs)
    choice_cols = [*GROUPS, "compression"]
    varying_choices = [g for g in choice_cols if len({r.identity.get(g) for r in runs}) > 1]
    # a direction's codec is shown where the compression option does not already tell it
    # (e.g. compression=topk with compression/down=int8 next to plain compression=topk)
    for side in ("compression_up", "compression_down"):
        per_choice: dict = {}
        for r in runs:
            per_choice.setdefault(r.identity.get("compression"), set()).add(r.identity.get(side))
        if any(len(v) > 1 for v in per_choice.values()) or (
            "compression" not in varying_choices and len({r.identity.get(side) for r in runs}) > 1
        ):
            varying_choices.append(side)
    labels = {}
    for r in runs:
        labels[r.identity["config_id"]] = _label(
            r.identity, flatten(r.summary["config"]), vary, varying_choices
        )
    # two configurations must never share a label
    by_label: dict[str, set] = {}
    for cid, lab in labels.items():
        by_label.setdefault(lab, set()).add(cid)
    for lab, cids in by_label.items():
        if len(cids) > 1:
            for cid in cids:
                labels[cid] = f"{lab} [{cid[:6]}]"
    id_cols = ["run_dir", *GROUPS, "compression", "compression_up", "compression_down"]
    known = {
        *GROUPS,
        "compression",
        "seed",
        "threads",
        "config_hash",
        "config_id",
        *KEY_PARAMS,
        "compression_up",
        "compression_down",
    }
    id_cols += sorted({k for r in runs for k in r.identity if k not in known})
    id_cols += [c for c in KEY_PARAMS if any(c in r.identity for r in runs)]
    extra = [k for k in vary if k not in KEY_PARAMS.values()]
    id_cols += extra + ["seed", "threads", "config_hash", "config_id", "label"]
    frames = []
    for r in runs:
        m = r.metrics.copy()
        flat = flatten(r.summary["config"])
        ident = {**r.identity, "run_dir": display_path(r.path), "label": labels[r.identity["config_id"]]}
        for k in extra:
            ident[k] = flat.get(k)
        for c in id_cols:
            m.insert(id_cols.index(c), c, ident.get(c))
        if "selected" in m.columns:
            m["selected"] = m["selected"].map(_selected_str)
        # per run, not per round; in the table so that a saved table alone makes the summary
        m["total_params"] = r.summary.get("total_params")
        frames.append(m)
    df = pd.concat(frames, ignore_index=True)
    df["cum_mb"] = df["cum_bytes"] / MB
    df["cum_mb_up"] = df["cum_bytes_up"] / MB
    df["cum_mb_down"] = df["cum_bytes_down"] / MB
    df["total_params"] = df.pop("total_params").astype("Int64")
    for c in extra + [c for c in KEY_PARAMS if c in df.columns]:
        df[c] = _tidy_column(df[c])
    # display order: method, then the varying hyperparameters, then label
    order = sorted(labels, key=lambda cid: _config_sort_key(runs, cid, vary, varying_choices))
    rank = {cid: i for i, cid in enumerate(order)}
    df["_o"] = df["config_id"].map(rank)
    df = df.sort_values(["_o", "seed", "run_dir", "round"], kind="stable").drop(columns="_o")
    return df.reset_index(drop=True)


def _tidy_column(col: pd.Series) -> pd.Series:
    """Integers stay integers where some runs lack the key (nullable Int64), lists become JSON."""
    vals = [v for v in col if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if any(isinstance(v, (list, dict)) for v in vals):
        return col.map(lambda v: json.dumps(v) if isinstance(v, (list, dict)) else v)
    if vals and all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in vals):
        return col.astype("Int64")
    return col


def _selected_str(v) -> str:
    if isinstance(v, (list, tuple, np.ndarray)):
        return " ".join(str(int(x)) for x in v)
    return "" if v is None or (isinstance(v, float) and math.isnan(v)) else str(v)


def _config_sort_key(runs: list[Run], cid: str, vary: list[str], choices: list[str]) -> tuple:
    """Display order: method, then the other differing choices, then differing values (as labelled)."""
    r = next(r for r in runs if r.identity["config_id"] == cid)
    flat = flatten(r.summary["config"])
    return (
        str(r.identity["method"]),
        *(str(r.identity.get(g, "")) for g in choices if g != "method"),
        *(_sort_value(flat.get(k)) for k in vary),
        cid,
    )


def is_saved_table(path: str | Path) -> bool:
    p = Path(path)
    return p.suffix == ".parquet" and p.is_file()


def load_table(path: str | Path) -> pd.DataFrame:
    """A runs table a report saved (``runs.parquet``), checked, rows in their saved order.

    Its labels and identity columns are kept as written; the summary and the figures are
    computed from it exactly as from run folders.
    """
    try:
        df = pd.read_parquet(path)
    except Exception as exc:  # noqa: BLE001 - pyarrow raises many kinds
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise ReportError(f"cannot read {path} as a runs table ({type(exc).__name__}: {first})") from None
    missing = [c for c in TABLE_COLUMNS if c not in df.columns]
    if missing:
        raise ReportError(f"{path} is not a fedbench runs table (no column(s) {', '.join(missing)})")
    if df.empty:
        raise ReportError(f"{path} holds no rows", code=1)
    for run_dir, g in df.groupby("run_dir", sort=False):
        if list(g["round"]) != list(range(1, len(g) + 1)):
            raise ReportError(f"{path}: the rounds of {run_dir} are not 1..N in order")
    for col in ("cum_mb", "cum_mb_up", "cum_mb_down"):
        if col not in df.columns:
            df[col] = df[col.replace("mb", "bytes")] / MB
    return df.reset_index(drop=True)
