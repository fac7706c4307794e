"""Numbers: aggregation over seeds per configuration, the target, confidence intervals, the Pareto front.

Everything here is computed from the runs table alone (no run folders), so a saved
``runs.parquet`` gives the same summary as the folders it was built from.

- **Evaluated rounds.** With ``fl.eval_every`` > 1 some rounds are not evaluated: their rows keep
  bytes and losses, with ``accuracy`` (and ``test_loss``, ``client_acc_*``) NaN. Accuracy is only
  ever read from evaluated rows: a run's final accuracy is its last evaluated round's (the last
  round, which is always evaluated), its best the maximum over evaluated rounds, and a target is
  reached at the first *evaluated* round at or above it (so with evaluation every N rounds a
  "rounds to target" is a multiple of N, or the last round: the first round it was seen).
- **Curves** (:func:`curves`) are the mean over seeds per evaluated round, read only at rounds
  every run of the configuration evaluated (a mean over some of the seeds would jump).
  *MB to target* and *rounds to target* are read where that mean curve first reaches the target.
- **Per seed** (:func:`per_run`): each run's own final and best accuracy and its own rounds / MB
  to the target (NaN where it never reaches it).
- **Confidence intervals** (:func:`bootstrap_ci`): 95% percentile bootstrap of the mean over
  seeds (``scipy.stats.bootstrap``, :data:`N_RESAMPLES` resamples, a fixed
  :data:`RANDOM_STATE`, the values sorted first so the interval does not depend on row order).
  Percentile, not BCa: BCa's jackknife acceleration is unstable with 2-5 seeds and undefined
  (NaN, with a warning) when the values are degenerate. One value gives no interval (NaN);
  identical values give ``[v, v]``. For rounds / MB to the target the mean and interval over
  seeds are given only when every seed reached the target (a mean over the seeds that reached
  it would be biased towards the lucky ones); ``seeds_reaching_target`` says how many did.
- **Simulated time** (``system=``, :mod:`fedbench.fl.clock`): *time to target* is the mean
  simulated seconds (``sim_time_s``) at the round the mean curve first reaches the target, and per
  seed as for MB; NaN for runs without a clock.
"""

from __future__ import annotations

import inspect
import math

import numpy as np
import pandas as pd

MB = 1e6  # decimal megabytes, as communication budgets are quoted
DEFAULT_TARGET_FRACTION = 0.9
_EPS = 1e-12  # a mean that equals the target up to float rounding reaches it

CONFIDENCE = 0.95
N_RESAMPLES = 9999
RANDOM_STATE = 0
CI_METHOD = "percentile"
CI_DESCRIPTION = (
    f"{CONFIDENCE:.0%} percentile bootstrap of the mean over seeds "
    f"(scipy.stats.bootstrap, {N_RESAMPLES} resamples, random_state {RANDOM_STATE})"
)
# Per-seed metrics that get a confidence interval: summary prefix -> per_run column.
CI_METRICS = {
    "final_acc": "final_acc",
    "best_acc": "best_acc",
    "mb_to_target": "mb_to_target",
    "rounds_to_target": "rounds_to_target",
}
TARGET_METRICS = ("mb_to_target", "rounds_to_target", "sim_s_to_target")


# --------------------------------------------------------------------------- intervals
def _rng_kwarg() -> str:
    """``rng`` from scipy 1.15 on (``random_state`` is its older name); both take a Generator."""
    from scipy import stats

    return "rng" if "rng" in inspect.signature(stats.bootstrap).parameters else "random_state"


def _check(values) -> np.ndarray:
    x = np.sort(np.asarray(values, dtype=float).ravel())
    if np.isnan(x).any():
        raise ValueError("bootstrap_ci: values must not hold NaN (drop or count them first)")
    return x


def _percentile_bootstrap(samples, statistic, confidence, n_resamples, random_state) -> tuple[float, float]:
    """scipy's percentile bootstrap of ``statistic`` over ``samples`` (each resampled on its own)."""
    from scipy import stats  # the report's own dependency: never imported by the training CLI

    res = stats.bootstrap(
        samples,
        statistic,
        confidence_level=confidence,
        n_resamples=n_resamples,
        method=CI_METHOD,
        vectorized=True,
        **{_rng_kwarg(): np.random.default_rng(random_state)},
    )
    return (float(res.confidence_interval.low), float(res.confidence_interval.high))


def bootstrap_ci(
    values,
    confidence: float = CONFIDENCE,
    n_resamples: int = N_RESAMPLES,
    random_state: int = RANDOM_STATE,
) -> tuple[float, float]:
    """``(low, high)`` of the percentile bootstrap interval of the mean of ``values``.

    Fewer than 2 values: ``(nan, nan)``. All values equal: ``(v, v)`` (no resampling needed, and
    scipy would warn about degenerate data). Values are sorted first, so the interval depends
    only on the values, never on the order the table lists them in.
    """
    x = _check(values)
    if x.size < 2:
        return (math.nan, math.nan)
    if x[0] == x[-1]:
        return (float(x[0]), float(x[0]))
    return _percentile_bootstrap((x,), np.mean, confidence, n_resamples, random_state)


def bootstrap_diff_ci(
    a,
    b,
    confidence: float = CONFIDENCE,
    n_resamples: int = N_RESAMPLES,
    random_state: int = RANDOM_STATE,
) -> tuple[float, float]:
    """Unpaired: percentile bootstrap interval of ``mean(a) - mean(b)``, each sample resampled on
    its own (what an analysis that ignores any pairing between them reports)."""
    x, y = _check(a), _check(b)
    if x.size < 2 or y.size < 2:
        return (math.nan, math.nan)
    if x[0] == x[-1] and y[0] == y[-1]:
        d = float(x[0] - y[0])
        return (d, d)
    return _percentile_bootstrap(
        (x, y),
        lambda u, v, axis=-1: np.mean(u, axis=axis) - np.mean(v, axis=axis),
        confidence,
        n_resamples,
        random_state,
    )


# --------------------------------------------------------------------------- fronts and curves
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


def evaluated(runs: pd.DataFrame) -> pd.DataFrame:
    """The rows of evaluated rounds (``accuracy`` not NaN)."""
    return runs[runs["accuracy"].notna()]


def curves(runs: pd.DataFrame, ci: bool = True) -> pd.DataFrame:
    """Per configuration and evaluated round: accuracy over seeds and the mean cumulative MB.

    Columns ``acc_mean/min/max/std/count``, ``n_runs`` (the configuration's runs), ``cum_mb``
    and, with ``ci``, ``acc_ci_low/high``: the :func:`bootstrap_ci` of the mean over seeds
    (NaN with one seed). Rounds that some run of the configuration did not evaluate are left
    out, so every point is a mean over the same seeds.
    """
    n_runs = runs.groupby("config_id", sort=False)["run_dir"].nunique()
    ev = evaluated(runs)
    g = ev.groupby(["config_id", "round"], sort=True)
    out = g["accuracy"].agg(["mean", "min", "max", "std", "count"]).rename(columns=lambda c: f"acc_{c}")
    out["cum_mb"] = g["cum_bytes"].mean() / MB
    # the simulated clock (system=): NaN for runs without one, or from before it
    out["sim_s"] = g["sim_time_s"].mean() if "sim_time_s" in ev.columns else np.nan
    out = out.reset_index()
    out["n_runs"] = out["config_id"].map(n_runs).astype(int)
    out = out[out["acc_count"] == out["n_runs"]].reset_index(drop=True)
    if ci:
        lows, highs = [], []
        values = ev.groupby(["config_id", "round"], sort=True)["accuracy"]
        per_point = {k: v.to_numpy() for k, v in values}
        for cid, rnd in zip(out["config_id"], out["round"]):
            lo, hi = bootstrap_ci(per_point[(cid, rnd)])
            lows.append(lo)
            highs.append(hi)
        out["acc_ci_low"], out["acc_ci_high"] = lows, highs
    return out


# --------------------------------------------------------------------------- per run
def per_run(df: pd.DataFrame, target: float | None = None) -> pd.DataFrame:
    """One row per run (in the table's order): its own numbers, which seeds are compared by.

    ``config_id``, ``seed``, ``run_dir``, ``final_acc`` (last evaluated round), ``best_acc``
    (max over evaluated rounds), ``cum_bytes`` (last round); where the table has them,
    ``final_client_acc_mean/p10`` (last evaluated round with per-client values, else NaN); with
    a ``target``: ``reached``, ``rounds_to_target`` and ``mb_to_target`` (the first evaluated
    round at or above it; NaN where never).
    """
    runs = df.drop_duplicates("run_dir")[["config_id", "seed", "run_dir"]].set_index("run_dir")
    ev = evaluated(df).sort_values(["run_dir", "round"], kind="stable")
    last_ev = ev.groupby("run_dir").tail(1).set_index("run_dir")
    last = df.sort_values(["run_dir", "round"], kind="stable").groupby("run_dir").tail(1)
    out = runs.copy()
    out["final_acc"] = last_ev["accuracy"].astype(float)
    out["best_acc"] = ev.groupby("run_dir")["accuracy"].max().astype(float)
    out["cum_bytes"] = last.set_index("run_dir")["cum_bytes"].astype(float)
    for col in ("client_acc_mean", "client_acc_p10"):
        if col in df.columns:
            with_vals = ev[ev[col].notna()].groupby("run_dir").tail(1).set_index("run_dir")
            out[f"final_{col}"] = with_vals[col].astype(float)
    if target is not None:
        hit = ev[ev["accuracy"] >= target - _EPS].groupby("run_dir").head(1).set_index("run_dir")
        out["reached"] = out.index.isin(hit.index)
        out["rounds_to_target"] = hit["round"].astype(float)
        out["mb_to_target"] = hit["cum_bytes"].astype(float) / MB
        sim = hit["sim_time_s"].astype(float) if "sim_time_s" in hit.columns else np.nan
        out["sim_s_to_target"] = sim
    return out.reset_index()


def has_client_metrics(df: pd.DataFrame) -> bool:
    """Whether the table holds per-client evaluation values (new runs with it switched on)."""
    return all(c in df.columns for c in ("client_acc_mean", "client_acc_p10")) and bool(
        df["client_acc_p10"].notna().any()
    )


def seed_stats(values: pd.Series, n_seeds: int, need_all: bool) -> tuple[float, float, float]:
    """``(mean, ci_low, ci_high)`` over seeds of one configuration's per-seed values.

    NaN values are seeds without one (a target not reached); with ``need_all`` any such seed
    makes all three NaN (see the module docstring), otherwise they are left out.
    """
    vals = pd.to_numeric(values, errors="coerce").astype(float)
    have = vals.dropna()
    if len(have) == 0 or (need_all and len(have) < n_seeds):
        return (math.nan, math.nan, math.nan)
    lo, hi = bootstrap_ci(have.to_numpy())
    return (float(have.mean()), lo, hi)


# --------------------------------------------------------------------------- summary
def default_target(summary_rows: pd.DataFrame, fraction: float) -> tuple[float, str]:
    best = summary_rows.loc[summary_rows["final_acc_mean"].idxmax()]
    return fraction * float(best["final_acc_mean"]), str(best["label"])


def _median_int(values: pd.Series):
    vals = pd.to_numeric(values, errors="coerce").dropna()
    return int(np.median(vals)) if len(vals) else np.nan


def summary_identity_columns(df: pd.DataFrame) -> list[str]:
    """The runs table's identity columns a summary row carries: ``label`` and every column
    before ``seed`` but ``run_dir`` (constant per configuration)."""
    return ["label", *(c for c in df.columns[: df.columns.get_loc("seed")] if c != "run_dir")]


def build_summary(
    df: pd.DataFrame, target: float | None = None, fraction: float = DEFAULT_TARGET_FRACTION
) -> tuple[pd.DataFrame, dict]:
    """One row per configuration (in the table's display order) and the target's description."""
    id_cols = summary_identity_columns(df)
    clients = has_client_metrics(df)
    seeds_of = per_run(df)
    rows = []
    for cid, g in df.groupby("config_id", sort=False):
        finals = g.sort_values("round").groupby("run_dir", sort=False).tail(1)
        mine = seeds_of[seeds_of["config_id"] == cid]
        first = g.iloc[0]
        row = {"config_id": cid, **{c: first[c] for c in id_cols}}
        n = int(finals["seed"].nunique())
        row["n_seeds"] = n
        row["seeds"] = " ".join(str(s) for s in sorted(finals["seed"].unique()))
        row["threads"] = " ".join(str(t) for t in sorted({str(t) for t in finals["threads"]}))
        row["rounds"] = int(finals["round"].max())
        acc = mine["final_acc"]
        row["final_acc_mean"] = acc.mean()
        row["final_acc_std"] = acc.std(ddof=1) if len(acc) > 1 else np.nan
        row["final_acc_min"], row["final_acc_max"] = acc.min(), acc.max()
        row["final_acc_ci_low"], row["final_acc_ci_high"] = bootstrap_ci(acc.dropna().to_numpy())
        best = mine["best_acc"]
        row["best_acc_mean"] = best.mean()
        row["best_acc_max"] = best.max()
        row["best_acc_ci_low"], row["best_acc_ci_high"] = bootstrap_ci(best.dropna().to_numpy())
        row["mb_up"] = finals["cum_bytes_up"].mean() / MB
        row["mb_down"] = finals["cum_bytes_down"].mean() / MB
        row["mb_total"] = finals["cum_bytes"].mean() / MB
        row["mb_per_round"] = row["mb_total"] / row["rounds"]
        sim = finals["sim_time_s"] if "sim_time_s" in finals.columns else pd.Series([np.nan])
        row["sim_s_total"] = float(sim.mean()) if sim.notna().all() else np.nan
        row["trainable_params"] = _median_int(finals["trainable_params"])
        row["total_params"] = _median_int(finals["total_params"]) if "total_params" in finals else np.nan
        # a run's wall time is its last round's elapsed_s (what summary.json records as wall_s)
        row["wall_s_mean"] = float(finals["elapsed_s"].mean())
        if clients:
            p10 = mine["final_client_acc_p10"]
            row["final_client_acc_mean"] = mine["final_client_acc_mean"].mean()
            row["final_client_acc_p10"] = p10.mean()
            row["client_acc_seeds"] = int(p10.notna().sum())
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
    mean = curves(df, ci=False)
    seeds_of = per_run(df, target)
    r_to, mb_to, sim_to, reached = [], [], [], []
    per_seed: dict[str, list] = {f"{m}_{s}": [] for m in TARGET_METRICS for s in ("seed_mean", "ci")}
    for cid, n in zip(summary["config_id"], summary["n_seeds"]):
        c = mean[mean["config_id"] == cid]
        hit = c[c["acc_mean"] >= target - _EPS]
        if len(hit):
            r_to.append(int(hit["round"].iloc[0]))
            mb_to.append(float(hit["cum_mb"].iloc[0]))
            sim_to.append(float(hit["sim_s"].iloc[0]))
        else:
            r_to.append(np.nan)
            mb_to.append(np.nan)
            sim_to.append(np.nan)
        mine = seeds_of[seeds_of["config_id"] == cid]
        reached.append(int(mine["reached"].sum()))
        for m in TARGET_METRICS:
            m_mean, lo, hi = seed_stats(mine[m], int(n), need_all=True)
            per_seed[f"{m}_seed_mean"].append(m_mean)
            per_seed[f"{m}_ci"].append((lo, hi))
    summary["target_accuracy"] = target
    summary["rounds_to_target"] = pd.array(r_to, dtype="Int64")
    summary["mb_to_target"] = mb_to
    summary["sim_s_to_target"] = sim_to
    summary["seeds_reaching_target"] = reached
    for m in TARGET_METRICS:
        summary[f"{m}_seed_mean"] = per_seed[f"{m}_seed_mean"]
        summary[f"{m}_ci_low"] = [lo for lo, _ in per_seed[f"{m}_ci"]]
        summary[f"{m}_ci_high"] = [hi for _, hi in per_seed[f"{m}_ci"]]
    summary["pareto"] = pareto_front(summary, "mb_total", "final_acc_mean")
    return summary, how
