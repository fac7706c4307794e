"""Paired differences to a baseline configuration, seed by seed (``fedbench-report --baseline``).

A configuration is selected by ``KEY=VALUE`` pairs over the summary's identity columns
(``arm=full``, ``method=lora rank=4``, ``label=...``, ``config_id=...``). Every other
configuration is compared with it on the seeds both ran: for each shared seed ``s`` the
difference ``d_s = metric(config, s) - metric(baseline, s)``, then the mean of ``d`` and its
:func:`~fedbench.report.statistics.bootstrap_ci` (percentile bootstrap, fixed random state).
Runs whose seed the other side lacks are left out and counted. Runs of one seed share their
data split, client sampling and initialisation, so the seed-to-seed spread that both
configurations share cancels in ``d`` and the interval is narrower than the unpaired one.

For rounds / MB to the target a pair counts only where both runs reached it; the mean and the
interval are given only when every pair did (``n_reached == n_pairs``), as in the summary.
"Excludes zero" means the 95% interval lies wholly above or below 0: the difference is larger
than what reseeding alone would be expected to produce (under the bootstrap's assumptions; with
few seeds the percentile interval is narrow, so read it as a screen, not a proof).
"""

from __future__ import annotations

import math

import pandas as pd

from fedbench.report.errors import ReportError
from fedbench.report.labels import identity_columns
from fedbench.report.statistics import TARGET_METRICS, bootstrap_ci, per_run

# per-run column -> what it is called in summary.md
METRICS = {
    "final_acc": "final accuracy",
    "best_acc": "best accuracy",
    "mb_to_target": "MB to target",
    "rounds_to_target": "rounds to target",
}
PAIRED_COLUMNS = (
    "baseline_config_id",
    "baseline_label",
    "config_id",
    "label",
    "metric",
    "n_pairs",
    "n_reached",
    "n_unpaired",
    "n_baseline_unpaired",
    "mean",
    "baseline_mean",
    "mean_diff",
    "ci_low",
    "ci_high",
    "excludes_zero",
)


def parse_pair(text: str) -> tuple[str, str]:
    """``"arm=full"`` -> ``("arm", "full")``; ValueError naming what is wrong otherwise."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise ValueError(
            f"{text!r} is not KEY=VALUE (e.g. arm=full or method=lora rank=4; PATHs go before it)"
        )
    return key.strip(), value


def selection_keys(summary: pd.DataFrame) -> list[str]:
    """The keys a configuration can be selected by: its identity columns, label and config_id."""
    return ["label", *identity_columns(summary), "config_id"]


def value_text(v) -> str:
    """A cell as it is typed on a command line: 4.0 -> "4", 0.001 -> "0.001", missing -> "null"."""
    if v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v)):
        return "null"
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, float) and v.is_integer() and abs(v) < 1e15:
        return str(int(v))
    return str(v)


def _matches(cell, text: str) -> bool:
    if value_text(cell) == text:
        return True
    try:
        return float(value_text(cell)) == float(text)
    except ValueError:
        return False


def _values(summary: pd.DataFrame, key: str) -> str:
    vals = sorted({value_text(v) for v in summary[key]}, key=lambda s: (s == "null", s))
    return ", ".join(vals)


def select_configuration(
    summary: pd.DataFrame, pairs: list[tuple[str, str]], what: str = "--baseline"
) -> int:
    """The position in ``summary`` of the one configuration every ``(key, value)`` matches.

    ReportError (one line, exit 2) for an unknown or repeated key, no match (naming the values
    the key takes among the configurations the pairs before it left) or several matches
    (naming a key that tells them apart).
    """
    given = " ".join(f"{k}={v}" for k, v in pairs)
    keys = selection_keys(summary)
    seen = set()
    for k, _ in pairs:
        if k not in keys:
            raise ReportError(f"{what} {given}: unknown key {k!r}; keys: {', '.join(keys)}")
        if k in seen:
            raise ReportError(f"{what} {given}: key {k!r} given twice")
        seen.add(k)
    left = summary
    for i, (k, v) in enumerate(pairs):
        hit = left[[_matches(c, v) for c in left[k]]]
        if hit.empty:
            before = " ".join(f"{kk}={vv}" for kk, vv in pairs[:i])
            scope = f" (among those with {before})" if before else ""
            raise ReportError(
                f"{what} {given}: no configuration has {k}={v}{scope}; {k} takes: {_values(left, k)}"
            )
        left = hit
    if len(left) > 1:
        apart = [c for c in identity_columns(summary) if left[c].map(value_text).nunique() == len(left)]
        apart = apart or [c for c in identity_columns(summary) if left[c].map(value_text).nunique() > 1]
        hint = "; ".join(f"{c} takes: {_values(left, c)}" for c in apart[:3]) or (
            f"config_id takes: {_values(left, 'config_id')}"
        )
        raise ReportError(
            f"{what} {given}: matches {len(left)} configurations ({', '.join(map(str, left['label']))}); "
            f"add a KEY=VALUE that tells them apart: {hint}"
        )
    return int(summary.index.get_loc(left.index[0]))


def paired_differences(df: pd.DataFrame, summary: pd.DataFrame, baseline: int, target: float) -> pd.DataFrame:
    """One row per (other configuration, metric): the paired difference to row ``baseline``."""
    runs = per_run(df, target)
    base = summary.iloc[baseline]
    b = runs[runs["config_id"] == base["config_id"]].set_index("seed")
    rows = []
    for _, s in summary.iterrows():
        if s["config_id"] == base["config_id"]:
            continue
        a = runs[runs["config_id"] == s["config_id"]].set_index("seed")
        common = sorted(set(a.index) & set(b.index))
        for metric in METRICS:
            va = a.loc[common, metric].astype(float)
            vb = b.loc[common, metric].astype(float)
            both = va.notna() & vb.notna()
            row = {
                "baseline_config_id": base["config_id"],
                "baseline_label": base["label"],
                "config_id": s["config_id"],
                "label": s["label"],
                "metric": metric,
                "n_pairs": len(common),
                "n_reached": int(both.sum()),
                "n_unpaired": len(set(a.index) - set(b.index)),
                "n_baseline_unpaired": len(set(b.index) - set(a.index)),
                "mean": math.nan,
                "baseline_mean": math.nan,
                "mean_diff": math.nan,
                "ci_low": math.nan,
                "ci_high": math.nan,
                "excludes_zero": pd.NA,
            }
            usable = len(common) > 0 and (metric not in TARGET_METRICS or bool(both.all()))
            if usable:
                d = (va - vb).to_numpy()
                lo, hi = bootstrap_ci(d)
                row.update(mean=float(va.mean()), baseline_mean=float(vb.mean()), mean_diff=float(d.mean()))
                row.update(ci_low=lo, ci_high=hi)
                if not math.isnan(lo):
                    row["excludes_zero"] = bool(lo > 0 or hi < 0)
            rows.append(row)
    out = pd.DataFrame(rows, columns=list(PAIRED_COLUMNS))
    out["excludes_zero"] = out["excludes_zero"].astype("boolean")
    return out
