"""Numbers over seeds: one summary row per configuration, the target, the Pareto front.

Everything here is computed from the runs table alone (no run folders), so a saved
``runs.parquet`` gives the same summary as the folders it was built from. Curves are the mean
over seeds per round; bytes and rounds to the target are read where that mean first reaches it.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

MB = 1e6  # decimal megabytes, as communication budgets are quoted
DEFAULT_TARGET_FRACTION = 0.9
_EPS = 1e-12  # a mean that equals the target up to float rounding reaches it


def pareto_front(
    df: pd.DataFrame, x: str, y: str, minimize_x: bool = True, maximize_y: bool = True
) -> pd.Series:
    """Boolean Series (aligned with ``df.index``): True for rows no other row dominates.

    With the defaults (less ``x`` is better, more ``y`` is better) row *i* is dominated when
    some row *j* has ``x_j <= x_i`` and ``y_j >= y_i`` with at least one strict inequality.
    Identical points are all on the front; rows with a missing ``x`` or ``y`` never are.
    """
    xs = df[x].to_numpy(dtype=float) * (1.0 if minimize_x else -1.0)
    ys = df[y].to_numpy(dtype=float) * (-1.0 if maximize_y else 1.0)  # both "smaller is better"
    ok = ~(np.isnan(xs) | np.isnan(ys))
    on_front = np.zeros(len(df), dtype=bool)
    for i in np.flatnonzero(ok):
        others = ok.copy()
        others[i] = False
        le = (xs[others] <= xs[i]) & (ys[others] <= ys[i])
        lt = (xs[others] < xs[i]) | (ys[others] < ys[i])
        on_front[i] = not np.any(le & lt)
    return pd.Series(on_front, index=df.index, name="pareto")


def curves(runs: pd.DataFrame) -> pd.DataFrame:
    """Per configuration and round: mean/min/max/std/count of accuracy over seeds, mean cumulative MB."""
    g = runs.groupby(["config_id", "round"], sort=True)
    out = g["accuracy"].agg(["mean", "min", "max", "std", "count"]).rename(columns=lambda c: f"acc_{c}")
    out["cum_mb"] = g["cum_bytes"].mean() / MB
    return out.reset_index()


def default_target(summary_rows: pd.DataFrame, fraction: float) -> tuple[float, str]:
    best = summary_rows.loc[summary_rows["final_acc_mean"].idxmax()]
    return fraction * float(best["final_acc_mean"]), str(best["label"])


def _median_int(values: pd.Series):
    vals = pd.to_numeric(values, errors="coerce").dropna()
    return int(np.median(vals)) if len(vals) else np.nan


def build_summary(
    df: pd.DataFrame, target: float | None = None, fraction: float = DEFAULT_TARGET_FRACTION
) -> tuple[pd.DataFrame, dict]:
    """One row per configuration (in the table's display order) and the target's description."""
    # identity columns: everything the runs table puts before ``seed`` (constant per configuration)
    id_cols = ["label", *(c for c in df.columns[: df.columns.get_loc("seed")] if c != "run_dir")]
    rows = []
    for cid, g in df.groupby("config_id", sort=False):
        finals = g.sort_values("round").groupby("run_dir", sort=False).tail(1)
        first = g.iloc[0]
        row = {"config_id": cid, **{c: first[c] for c in id_cols}}
        row["n_seeds"] = int(finals["seed"].nunique())
        row["seeds"] = " ".join(str(s) for s in sorted(finals["seed"].unique()))
        row["threads"] = " ".join(str(t) for t in sorted({str(t) for t in finals["threads"]}))
        row["rounds"] = int(finals["round"].max())
        acc = finals["accuracy"].astype(float)
        row["final_acc_mean"] = acc.mean()
        row["final_acc_std"] = acc.std(ddof=1) if len(acc) > 1 else np.nan
        row["final_acc_min"], row["final_acc_max"] = acc.min(), acc.max()
        best = g.groupby("run_dir")["accuracy"].max()
        row["best_acc_mean"] = best.mean()
        row["best_acc_max"] = best.max()
        row["mb_up"] = finals["cum_bytes_up"].mean() / MB
        row["mb_down"] = finals["cum_bytes_down"].mean() / MB
        row["mb_total"] = finals["cum_bytes"].mean() / MB
        row["mb_per_round"] = row["mb_total"] / row["rounds"]
        row["trainable_params"] = _median_int(finals["trainable_params"])
        row["total_params"] = _median_int(finals["total_params"]) if "total_params" in finals else np.nan
        # a run's wall time is its last round's elapsed_s (what summary.json records as wall_s)
        row["wall_s_mean"] = float(finals["elapsed_s"].mean())
        row["run_dirs"] = " ".join(finals["run_dir"])
        rows.append(row)
    summary = pd.DataFrame(rows)
    if target is None:
        target, best_label = default_target(summary, fraction)
        how = {
            "target": target,
            "fraction": fraction,
            "best_label": best_label,
            "best_final": target / fraction,
            "given": False,
        }
    else:
        how = {"target": target, "given": True}
    mean = (
        df.groupby(["config_id", "round"], sort=True)
        .agg(acc=("accuracy", "mean"), cum=("cum_bytes", "mean"))
        .reset_index()
    )
    r_to, mb_to, reached = [], [], []
    for cid in summary["config_id"]:
        c = mean[mean["config_id"] == cid]
        hit = c[c["acc"] >= target - _EPS]
        if len(hit):
            r_to.append(int(hit["round"].iloc[0]))
            mb_to.append(float(hit["cum"].iloc[0]) / MB)
        else:
            r_to.append(np.nan)
            mb_to.append(np.nan)
        g = df[df["config_id"] == cid]
        reached.append(int((g.groupby("run_dir")["accuracy"].max() >= target - _EPS).sum()))
    summary["target_accuracy"] = target
    summary["rounds_to_target"] = pd.array(r_to, dtype="Int64")
    summary["mb_to_target"] = mb_to
    summary["seeds_reaching_target"] = reached
    summary["pareto"] = pareto_front(summary, "mb_total", "final_acc_mean")
    return summary, how
