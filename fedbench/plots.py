"""Comparison figures for a fedbench report (matplotlib, Agg backend).

Every figure takes the report's tidy tables: ``runs`` (one row per run per round, with
``config_id``, ``label``, ``method``, ``seed``, ``round``, ``accuracy``, ``cum_bytes``) and
``summary`` (one row per configuration, in display order). Lines are the mean over seeds with a
min-max band; each configuration keeps one colour/line style/marker in every figure, and all
configurations of one method share that method's hue.

:func:`pareto_front` is a pure function (no plotting), used for the Pareto figure and the
summary table.
"""

from __future__ import annotations

import colorsys
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: never needs a display

import matplotlib.colors as mcolors  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker as mticker  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

MB = 1e6  # decimal megabytes, as communication budgets are quoted
FIGURES = ("accuracy_vs_round", "accuracy_vs_mb", "mb_to_target", "pareto")
FORMATS = ("png", "pdf")
_PALETTE = [
    "#1f77b4",
    "#d62728",
    "#2ca02c",
    "#ff7f0e",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#17becf",
    "#bcbd22",
    "#7f7f7f",
]
_LINESTYLES = ["-", "--", "-.", ":"]
MAX_NAMED_POINTS = 8  # the Pareto figure names every point up to this many configurations
_MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*"]


# --------------------------------------------------------------------------- Pareto front
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


# --------------------------------------------------------------------------- styles
def _shade(color: str, k: int, n: int) -> tuple:
    """The k-th of n shades of ``color`` (darker to lighter, same hue)."""
    if n <= 1:
        return mcolors.to_rgb(color)
    h, lum, s = colorsys.rgb_to_hls(*mcolors.to_rgb(color))
    lo, hi = max(0.18, lum - 0.2), min(0.78, lum + 0.22)
    return colorsys.hls_to_rgb(h, lo + (hi - lo) * k / (n - 1), s)


def method_colors(methods) -> dict:
    """Method -> base colour, by sorted method name (the same methods always get the same colours)."""
    return {m: _PALETTE[i % len(_PALETTE)] for i, m in enumerate(sorted(set(map(str, methods))))}


def config_styles(summary: pd.DataFrame) -> dict:
    """config_id -> {color, linestyle, marker, label}: one hue per method, shades within it."""
    colors = method_colors(summary["method"])
    styles: dict = {}
    for method, group in summary.groupby("method", sort=False):
        n = len(group)
        for k, (_, row) in enumerate(group.iterrows()):
            styles[row["config_id"]] = {
                "color": _shade(colors[str(method)], k, n),
                "linestyle": _LINESTYLES[k % len(_LINESTYLES)],
                "marker": _MARKERS[k % len(_MARKERS)],
                "label": row["label"],
            }
    return styles


# --------------------------------------------------------------------------- helpers
def curves(runs: pd.DataFrame) -> pd.DataFrame:
    """Per configuration and round: mean/min/max/std accuracy over seeds and mean cumulative MB."""
    g = runs.groupby(["config_id", "round"], sort=True)
    out = g["accuracy"].agg(["mean", "min", "max", "std", "count"]).rename(columns=lambda c: f"acc_{c}")
    out["cum_mb"] = g["cum_bytes"].mean() / MB
    return out.reset_index()


def _seeds_note(summary: pd.DataFrame) -> str:
    n = sorted(set(int(v) for v in summary["n_seeds"]))
    seeds = f"{n[0]} seed{'s' if n[0] != 1 else ''}" if len(n) == 1 else f"{n[0]}-{n[-1]} seeds"
    return f"mean over {seeds}" + ("; band = min-max over seeds" if max(n) > 1 else "")


def _target_line(ax, target: float | None, horizontal: bool = True) -> None:
    if target is not None and math.isfinite(target):
        ax.axhline(
            target, color="0.35", linestyle=(0, (4, 3)), linewidth=1.0, zorder=1, label=f"target {target:.3f}"
        )


def _save(fig, out_dir: Path, name: str) -> list[Path]:
    paths = []
    for fmt in FORMATS:
        path = Path(out_dir) / f"{name}.{fmt}"
        # no timestamps in the files: re-running the report gives byte-identical figures
        meta = {"CreationDate": None} if fmt == "pdf" else {"Software": None}
        fig.savefig(path, dpi=150, bbox_inches="tight", metadata=meta)
        paths.append(path)
    plt.close(fig)
    return paths


def _log_axis(axis) -> None:
    """Log scale with plain tick labels at 1, 2, 5 x 10^k (no overlapping 10^k minor labels)."""
    axis.set_major_locator(mticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(mticker.FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_formatter(mticker.NullFormatter())


def _legend(ax, **kw) -> None:
    handles, labels = ax.get_legend_handles_labels()
    if handles:
        ax.legend(handles, labels, fontsize=8, framealpha=0.9, **kw)


def _order(summary: pd.DataFrame) -> list:
    return list(summary["config_id"])


# --------------------------------------------------------------------------- figures
def _accuracy_plot(runs, summary, styles, x: str, target, title: str, xlabel: str, logx: bool):
    c = curves(runs)
    fig, ax = plt.subplots(figsize=(7.5, 4.6))
    for cid in _order(summary):
        cc = c[c["config_id"] == cid].sort_values("round")
        if cc.empty:
            continue
        st = styles[cid]
        xs = cc[x].to_numpy()
        ax.plot(
            xs,
            cc["acc_mean"],
            color=st["color"],
            linestyle=st["linestyle"],
            marker=st["marker"],
            markersize=3.5,
            markevery=max(1, len(cc) // 10),
            linewidth=1.6,
            label=st["label"],
            zorder=3,
        )
        if (cc["acc_count"] > 1).any():
            ax.fill_between(
                xs, cc["acc_min"], cc["acc_max"], color=st["color"], alpha=0.15, linewidth=0, zorder=2
            )
    _target_line(ax, target)
    if logx:
        ax.set_xscale("log")
        _log_axis(ax.xaxis)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("test accuracy (fraction correct)")
    ax.set_title(f"{title}\n({_seeds_note(summary)})", fontsize=10)
    ax.grid(True, which="major", alpha=0.3)
    if logx:
        ax.grid(True, which="minor", alpha=0.1)
    _legend(ax, loc="center left", bbox_to_anchor=(1.01, 0.5))
    return fig


def plot_accuracy_vs_round(runs, summary, styles, target, out_dir) -> list[Path]:
    fig = _accuracy_plot(
        runs, summary, styles, "round", target, "Test accuracy per round", "round", logx=False
    )
    fig.axes[0].xaxis.get_major_locator().set_params(integer=True)
    return _save(fig, out_dir, "accuracy_vs_round")


def plot_accuracy_vs_mb(runs, summary, styles, target, out_dir) -> list[Path]:
    fig = _accuracy_plot(
        runs,
        summary,
        styles,
        "cum_mb",
        target,
        "Communication efficiency: test accuracy vs data communicated",
        "cumulative communication, up + down (MB, log scale; 1 MB = 10^6 bytes)",
        logx=True,
    )
    return _save(fig, out_dir, "accuracy_vs_mb")


def plot_mb_to_target(summary, styles, target, out_dir) -> list[Path]:
    fig, ax = plt.subplots(figsize=(max(5.5, 0.9 * len(summary) + 2.5), 4.4))
    xs = np.arange(len(summary))
    reached = summary["mb_to_target"].notna()
    heights = summary["mb_to_target"].where(reached, np.nan).to_numpy(dtype=float)
    colors = [styles[cid]["color"] for cid in summary["config_id"]]
    ax.bar(
        xs[reached.to_numpy()],
        heights[reached.to_numpy()],
        color=[c for c, r in zip(colors, reached) if r],
        edgecolor="black",
        linewidth=0.6,
        zorder=3,
    )
    ax.set_yscale("log")
    _log_axis(ax.yaxis)
    finite = heights[np.isfinite(heights)]
    bottom = (finite.min() / 3) if finite.size else 0.1
    top = (finite.max() * 4) if finite.size else 1.0
    ax.set_ylim(bottom, top)
    for i, (_, row) in enumerate(summary.iterrows()):
        if pd.notna(row["mb_to_target"]):
            ax.annotate(
                f"{row['mb_to_target']:.3g} MB\n{int(row['rounds_to_target'])} rnd",
                (i, row["mb_to_target"]),
                xytext=(0, 3),
                textcoords="offset points",
                ha="center",
                va="bottom",
                fontsize=7,
            )
        else:
            ax.annotate(
                "not\nreached",
                (i, bottom),
                xytext=(0, 4),
                textcoords="offset points",
                ha="center",
                va="bottom",
                fontsize=7,
                color="0.3",
            )
    ax.set_xticks(xs)
    ax.set_xticklabels(summary["label"], rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("MB communicated to reach target\n(up + down, log scale)")
    tgt = f"{target:.3f}" if target is not None and math.isfinite(target) else "n/a"
    ax.set_title(
        f"Communication to reach target accuracy {tgt}\n"
        f"(first round where the {_seeds_note(summary).split(';')[0]} reaches it)",
        fontsize=10,
    )
    ax.grid(True, axis="y", which="major", alpha=0.3, zorder=0)
    return _save(fig, out_dir, "mb_to_target")


def plot_pareto(summary, styles, out_dir) -> list[Path]:
    fig, ax = plt.subplots(figsize=(7.5, 4.6))
    front = pareto_front(summary, "mb_total", "final_acc_mean")
    for (_, row), on in zip(summary.iterrows(), front):
        st = styles[row["config_id"]]
        yerr = row["final_acc_std"] if pd.notna(row["final_acc_std"]) else None
        ax.errorbar(
            row["mb_total"],
            row["final_acc_mean"],
            yerr=yerr,
            color=st["color"],
            marker=st["marker"],
            markersize=7,
            capsize=3,
            linestyle="none",
            label=st["label"],
            zorder=3,
        )
        if on:
            ax.plot(
                row["mb_total"],
                row["final_acc_mean"],
                marker="o",
                markersize=15,
                markerfacecolor="none",
                markeredgecolor="black",
                markeredgewidth=1.0,
                linestyle="none",
                zorder=4,
            )
    # name the points in place (all of them when few, else the Pareto ones); coinciding points
    # share one annotation instead of overprinting each other
    named: dict[tuple, list] = {}
    for (_, row), on in zip(summary.iterrows(), front):
        if (len(summary) <= MAX_NAMED_POINTS or on) and pd.notna(row["mb_total"]) and row["mb_total"] > 0:
            key = (round(math.log10(row["mb_total"]), 2), round(float(row["final_acc_mean"]), 3))
            named.setdefault(key, [row["mb_total"], row["final_acc_mean"], []])[2].append(row["label"])
    for x, y, labels in named.values():
        text = "\n".join(labels[:3]) + (f"\n+{len(labels) - 3} more" if len(labels) > 3 else "")
        ax.annotate(
            text, (x, y), xytext=(6, -10), textcoords="offset points", fontsize=7, color="0.2", va="top"
        )
    pts = summary[front].sort_values("mb_total")
    if len(pts):
        ax.step(
            pts["mb_total"],
            pts["final_acc_mean"],
            where="post",
            color="black",
            linewidth=1.0,
            linestyle="--",
            alpha=0.7,
            zorder=2,
            label="Pareto front (circled)",
        )
    ax.set_xscale("log")
    _log_axis(ax.xaxis)
    ax.set_xlabel("total communication, up + down (MB, log scale; 1 MB = 10^6 bytes)")
    ax.set_ylabel("final test accuracy (fraction correct)")
    note = _seeds_note(summary).split(";")[0]
    ax.set_title(
        f"Final accuracy vs total communication ({note}; error bar = ±1 std)\n"
        "Pareto front: no other configuration is both cheaper and more accurate",
        fontsize=10,
    )
    ax.grid(True, which="major", alpha=0.3)
    ax.grid(True, which="minor", alpha=0.1)
    ax.margins(x=0.15, y=0.12)
    _legend(ax, loc="center left", bbox_to_anchor=(1.01, 0.5))
    return _save(fig, out_dir, "pareto")


def make_figures(runs: pd.DataFrame, summary: pd.DataFrame, target: float | None, out_dir) -> list[Path]:
    """Write every figure as PNG and PDF into ``out_dir``; return the paths written."""
    styles = config_styles(summary)
    with plt.rc_context(
        {
            "figure.dpi": 100,
            "axes.spines.top": False,
            "axes.spines.right": False,
            "svg.hashsalt": "fedbench",
            "pdf.fonttype": 42,
        }
    ):
        return [
            *plot_accuracy_vs_round(runs, summary, styles, target, out_dir),
            *plot_accuracy_vs_mb(runs, summary, styles, target, out_dir),
            *plot_mb_to_target(summary, styles, target, out_dir),
            *plot_pareto(summary, styles, out_dir),
        ]
