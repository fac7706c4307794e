"""The report's figures (matplotlib, no pyplot: nothing global is touched, no display needed).

Every figure encodes configurations the same way, so they can be read side by side:

- colour = the first varying factor (the method when methods differ), the same in every panel;
- line style (lines), marker (points) and hatch (bars) = the next varying factor(s);
- more than :data:`MAX_PER_PANEL` configurations are split into small multiples: one panel per
  value of the factor(s) that give the fewest panels of at most that many, with shared axes;
- one legend per figure, of short labels built from the varying factors (:mod:`.labels`);
  a panel's title names its facet value, so the legend never repeats it.

Inputs are the report's tables: ``runs`` (one row per run per round) and ``summary`` (one row
per configuration, in display order). Lines are the mean over seeds with a band of its 95%
bootstrap confidence interval (:func:`fedbench.report.statistics.bootstrap_ci`).
"""

from __future__ import annotations

import itertools
import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import matplotlib as mpl
import matplotlib.ticker as mticker
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from fedbench.report.labels import METHOD_NAMES, Factor, join_parts, varying_factors
from fedbench.report.statistics import curves, pareto_front

FIGURES = ("accuracy_vs_round", "accuracy_vs_mb", "mb_to_target", "pareto")
TIMED_FIGURES = ("accuracy_vs_time",)  # only when some run has a simulated clock (system=)


def figure_names(summary: pd.DataFrame) -> list[str]:
    """The figures a report of ``summary`` draws: :data:`FIGURES`, plus accuracy vs simulated
    time when some configuration ran with a clock."""
    timed = "sim_s_total" in summary and bool(summary["sim_s_total"].notna().any())
    return [*FIGURES, *(TIMED_FIGURES if timed else ())]


FORMATS = ("png", "pdf")
MAX_PER_PANEL = 8  # configurations one panel can show legibly
PALETTE = (
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
)
NOT_APPLICABLE = "#7f7f7f"
LINESTYLES = (
    "-",
    (0, (5, 2)),
    (0, (1, 1.3)),
    (0, (6, 2, 1, 2)),
    (0, (2, 2)),
    (0, (9, 3)),
    (0, (4, 1, 1, 1, 1, 1)),
)
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
HATCHES = ("", "///", "..", "xx", "\\\\\\", "++", "oo", "--")
_RC = {
    "figure.dpi": 100,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "svg.hashsalt": "fedbench",
    "pdf.fonttype": 42,
    "font.size": 9,
    "hatch.linewidth": 0.6,
}


# --------------------------------------------------------------------------- layout
@dataclass(frozen=True)
class Style:
    color: str
    linestyle: object
    marker: str
    hatch: str


@dataclass
class Layout:
    """How the configurations of one report are drawn: panels, styles and legend labels.

    Rows are positions in ``summary``; ``panels`` holds (title, rows) in display order.
    """

    factors: list[Factor]  # every varying factor, in priority order
    colour: Factor | None  # the first of them
    facets: list[Factor]  # one panel per combination of their values
    styles: list[Factor]  # the others: line style, then marker
    panels: list[tuple[str, list[int]]]
    style: list[Style]
    legend: list[str]

    def entries(self) -> list[tuple[str, Style]]:
        """The legend: each (label, style) once, in display order."""
        seen: dict[str, Style] = {}
        for i in sorted(range(len(self.legend)), key=self.row_key):
            seen.setdefault(self.legend[i], self.style[i])
        return list(seen.items())

    def row_key(self, i: int) -> tuple:
        """Display order inside a panel and in the legend: by colour, then by style."""
        return (*(f.keys[i] for f in [*([self.colour] if self.colour else []), *self.styles]), i)


def _choose_facets(rest: list[Factor], n: int) -> list[Factor]:
    """The factor(s) whose values split ``n`` configurations into the fewest panels of <= 8.

    If none do, the split with the smallest largest panel (panels are then cut into chunks).
    """
    if n <= MAX_PER_PANEL or not rest:
        return []
    best, best_score = [], None
    for size in range(1, len(rest) + 1):
        for combo in itertools.combinations(range(len(rest)), size):
            sizes = Counter(tuple(rest[j].values[i] for j in combo) for i in range(n)).values()
            biggest = max(sizes)
            fits = biggest <= MAX_PER_PANEL
            # later factors facet first: the earlier, more important ones stay inside a panel
            score = (not fits, len(sizes) if fits else biggest, size, [-j for j in combo])
            if best_score is None or score < best_score:
                best, best_score = [rest[j] for j in combo], score
    return best


def _position(f: Factor, v: str) -> int:
    """Index of ``v`` among the factor's values; "" (not applicable) shares the first style."""
    return [x for x in f.order() if x].index(v) if v else 0


def _styles(n: int, factors: list[Factor], colour: Factor | None, styles: list[Factor]) -> list[Style]:
    """Colour from ``colour``; line style from ``styles[0]``; marker from the rest (else as the line).

    The same (colour, style) values get the same style in every panel, and two different
    configurations never get the same colour, line and marker.
    """
    colours = {}
    if colour is not None:
        colours = {v: PALETTE[k % len(PALETTE)] for k, v in enumerate(v for v in colour.order() if v)}
    combos = sorted(
        {tuple(f.values[i] for f in styles[1:]) for i in range(n)},
        key=lambda key: [(v == "", styles[1 + j].order().index(v)) for j, v in enumerate(key)],
    )
    given: dict[tuple, Style] = {}
    taken: set[tuple] = set()
    for i in sorted(range(n), key=lambda i: tuple(f.keys[i] for f in factors)):
        what = tuple(f.values[i] for f in [*([colour] if colour else []), *styles])
        if what in given:
            continue
        line = _position(styles[0], styles[0].values[i]) if styles else 0
        mark = combos.index(tuple(f.values[i] for f in styles[1:])) if len(styles) > 1 else line
        color = colours.get(colour.values[i], NOT_APPLICABLE) if colour is not None else PALETTE[0]
        while (color, line, mark) in taken:
            mark += 1
        taken.add((color, line, mark))
        given[what] = Style(
            color,
            LINESTYLES[line % len(LINESTYLES)],
            MARKERS[mark % len(MARKERS)],
            HATCHES[line % len(HATCHES)],
        )
    return [given[tuple(f.values[i] for f in [*([colour] if colour else []), *styles])] for i in range(n)]


def _legend_labels(summary: pd.DataFrame, factors: list[Factor], facets: list[Factor]) -> list[str]:
    """Each configuration's label without its panel's facet values (the panel title says them)."""
    n = len(summary)
    inside = [f for f in factors if f not in facets]
    if not inside:  # nothing varies inside a panel: name the method
        legend = [METHOD_NAMES.get(str(m), str(m)) for m in summary["method"]]
    else:
        legend = [join_parts([(f.values[i], f.with_method) for f in inside]) for i in range(n)]
    # configurations that no described factor tells apart get their id's first digits
    full = [join_parts([(f.values[i], f.with_method) for f in factors]) for i in range(n)]
    count = Counter(full)
    return [
        f"{lab} [{str(cid)[:6]}]" if count[whole] > 1 else lab
        for lab, whole, cid in zip(legend, full, summary["config_id"])
    ]


def plan(summary: pd.DataFrame) -> Layout:
    """Colour, style, facets and legend labels for ``summary``'s configurations."""
    n = len(summary)
    factors = varying_factors(summary)
    colour = factors[0] if factors else None
    facets = _choose_facets(factors[1:], n)
    styles = [f for f in factors[1:] if f not in facets]
    layout = Layout(
        factors,
        colour,
        facets,
        styles,
        panels=[],
        style=_styles(n, factors, colour, styles),
        legend=_legend_labels(summary, factors, facets),
    )
    groups: dict[tuple, list[int]] = {}
    for i in range(n):
        groups.setdefault(tuple(f.values[i] for f in facets), []).append(i)
    for key in sorted(groups, key=lambda k: tuple(f.keys[groups[k][0]] for f in facets)):
        rows = sorted(groups[key], key=layout.row_key)
        title = join_parts([(v, f.with_method) for v, f in zip(key, facets)])
        chunks = [rows[k : k + MAX_PER_PANEL] for k in range(0, len(rows), MAX_PER_PANEL)]
        for c, chunk in enumerate(chunks):
            part = f"({c + 1}/{len(chunks)})" if len(chunks) > 1 else ""
            layout.panels.append((" ".join(t for t in (title, part) if t), chunk))
    return layout


# --------------------------------------------------------------------------- helpers
def _seeds_note(summary: pd.DataFrame) -> str:
    n = sorted({int(v) for v in summary["n_seeds"]})
    seeds = f"{n[0]} seed{'s' if n[0] != 1 else ''}" if len(n) == 1 else f"{n[0]}-{n[-1]} seeds"
    return f"mean over {seeds}" + ("; band = 95% CI of the mean" if max(n) > 1 else "")


def _mb(v: float) -> str:
    """Plain numbers as people read MB: 0.05, 2, 300, 2,708, 10k."""
    if v >= 10_000:
        return f"{v / 1000:g}k"
    return f"{v:,.0f}" if v >= 100 else f"{v:.3g}"


def _log_axis(axis, small: bool = False) -> None:
    """Log scale with plain tick labels at 1, 2, 5 x 10^k (small panels: 10^k only)."""
    axis.set_major_locator(mticker.LogLocator(base=10, subs=(1.0,) if small else (1.0, 2.0, 5.0)))
    axis.set_major_formatter(mticker.FuncFormatter(lambda v, _: _mb(v)))
    axis.set_minor_formatter(mticker.NullFormatter())


def _grid(n_panels: int, panel: tuple[float, float], sharex=True, sharey=True):
    """A figure with ``n_panels`` axes in rows of up to 3 (2 x 2 for four); unused slots removed."""
    ncols = 1 if n_panels == 1 else 2 if n_panels in (2, 4) else 3
    nrows = math.ceil(n_panels / ncols)
    fig = Figure(figsize=(panel[0] * ncols, panel[1] * nrows + 0.9), layout="constrained")
    axes = fig.subplots(nrows, ncols, sharex=sharex, sharey=sharey, squeeze=False)
    flat = list(axes.flat)
    for ax in flat[n_panels:]:
        ax.remove()
    used = flat[:n_panels]
    for k, ax in enumerate(used):
        below = k + ncols < n_panels
        ax.tick_params(labelbottom=not below, labelleft=k % ncols == 0)
    return fig, used


def _axis_labels(fig: Figure, axes, xlabel: str, ylabel: str) -> None:
    """Shared axes get one label each for the whole figure, not one per panel."""
    if len(axes) == 1:
        axes[0].set_xlabel(xlabel)
        axes[0].set_ylabel(ylabel)
    else:
        fig.supxlabel(xlabel, fontsize=9)
        fig.supylabel(ylabel, fontsize=9)


def _handle(st: Style, kind: str):
    if kind == "bar":
        return Patch(facecolor=st.color, hatch=st.hatch, edgecolor="black", linewidth=0.6)
    if kind == "point":
        return Line2D([], [], color=st.color, marker=st.marker, linestyle="none", markersize=6)
    return Line2D([], [], color=st.color, linestyle=st.linestyle, marker=st.marker, markersize=4, lw=1.6)


def _legend(fig: Figure, layout: Layout, kind: str, extra=()) -> None:
    """One legend for the whole figure, right of the panels."""
    entries = layout.entries()
    handles = [_handle(st, kind) for _, st in entries] + [h for h, _ in extra]
    labels = [lab for lab, _ in entries] + [lab for _, lab in extra]
    fig.legend(handles, labels, loc="outside right center", fontsize=8, frameon=False)


def _title(fig: Figure, text: str) -> None:
    fig.suptitle(text, fontsize=10)


def _target(ax, target: float | None) -> bool:
    if target is not None and math.isfinite(target):
        ax.axhline(target, color="0.35", linestyle=(0, (4, 3)), linewidth=1.0, zorder=1)
        return True
    return False


def _save(fig: Figure, out_dir: Path, name: str) -> list[Path]:
    paths = []
    for fmt in FORMATS:
        path = Path(out_dir) / f"{name}.{fmt}"
        # no timestamps in the files: re-running the report gives byte-identical figures
        meta = {"CreationDate": None} if fmt == "pdf" else {"Software": None}
        fig.savefig(path, dpi=150, metadata=meta)
        paths.append(path)
    return paths


# --------------------------------------------------------------------------- figures
def figure_accuracy(runs, summary, layout: Layout, target, x: str) -> Figure:
    """Test accuracy per round (``x="round"``), per cumulative MB (``x="cum_mb"``, log scale) or
    per simulated second (``x="sim_s"``, log scale; configurations without a clock are left out)."""
    c = curves(runs)
    by_config = {cid: g.sort_values("round") for cid, g in c.groupby("config_id")}
    fig, axes = _grid(len(layout.panels), (4.3, 3.1) if len(layout.panels) > 1 else (6.4, 4.2))
    drew_target = False
    for ax, (title, rows) in zip(axes, layout.panels):
        for i in rows:
            cc = by_config.get(summary["config_id"].iloc[i])
            if cc is None or cc.empty:
                continue
            st = layout.style[i]
            if x == "sim_s":
                cc = cc[cc["sim_s"].notna()]
                if cc.empty:
                    continue
            xs = cc[x].to_numpy()
            ax.plot(
                xs,
                cc["acc_mean"].to_numpy(),
                color=st.color,
                linestyle=st.linestyle,
                marker=st.marker,
                markersize=3.5,
                markevery=max(1, len(cc) // 8),
                linewidth=1.5,
                label=layout.legend[i],
                zorder=3,
            )
            if (cc["acc_count"] > 1).any():
                ax.fill_between(
                    xs, cc["acc_ci_low"], cc["acc_ci_high"], color=st.color, alpha=0.15, linewidth=0, zorder=2
                )
        drew_target |= _target(ax, target)
        if title:
            ax.set_title(title, fontsize=9)
        if x in ("cum_mb", "sim_s"):
            ax.set_xscale("log")
            _log_axis(ax.xaxis, small=len(axes) > 1)
            ax.grid(True, which="minor", alpha=0.08)
        else:
            ax.xaxis.set_major_locator(mticker.MaxNLocator(integer=True))
        ax.grid(True, which="major", alpha=0.3)
    if x == "cum_mb":
        xlabel = "cumulative communication, up + down (MB, log scale)"
        head = "Test accuracy vs data communicated"
    elif x == "sim_s":
        xlabel = "simulated time over the clients' links and devices (s, log scale)"
        head = "Test accuracy vs simulated time"
    else:
        xlabel, head = "round", "Test accuracy per round"
    _axis_labels(fig, axes, xlabel, "test accuracy")
    _title(fig, f"{head} ({_seeds_note(summary)})")
    target_handle = Line2D([], [], color="0.35", linestyle=(0, (4, 3)), linewidth=1.0)
    _legend(fig, layout, "line", [(target_handle, f"target {target:.3f}")] if drew_target else [])
    return fig


def figure_mb_to_target(summary, layout: Layout, target) -> Figure:
    """Horizontal bars: MB communicated until the seed-mean accuracy first reaches the target.

    Panels that list the same configurations (a full grid of factors) sit side by side and
    share the bar labels; otherwise they are stacked, each with its own.
    """
    rows_of = [rows for _, rows in layout.panels]
    names = [[layout.legend[i] for i in rows] for rows in rows_of]
    side_by_side = len(names) > 1 and all(n == names[0] for n in names)
    if side_by_side:
        fig, axes = _grid(len(rows_of), (3.4, 0.3 * len(names[0]) + 0.9), sharey=True)
    else:
        heights = [0.3 * len(rows) + 0.6 for rows in rows_of]
        fig = Figure(figsize=(7.4, sum(heights) + 0.9), layout="constrained")
        axes = list(fig.subplots(len(rows_of), 1, sharex=True, squeeze=False, height_ratios=heights)[:, 0])
    vals = summary["mb_to_target"].to_numpy(dtype=float)
    finite = vals[np.isfinite(vals) & (vals > 0)]
    lo = finite.min() / 3 if finite.size else 0.1
    hi = finite.max() * (30 if side_by_side else 12) if finite.size else 10.0
    for ax, (title, rows) in zip(axes, layout.panels):
        ys = np.arange(len(rows))
        for y, i in zip(ys, rows):
            row = summary.iloc[i]
            st = layout.style[i]
            if pd.notna(row["mb_to_target"]):
                ax.barh(
                    y,
                    row["mb_to_target"] - lo,
                    left=lo,
                    height=0.7,
                    color=st.color,
                    hatch=st.hatch,
                    edgecolor="black",
                    linewidth=0.6,
                    zorder=3,
                )
                text = f"{_mb(row['mb_to_target'])} MB, r{int(row['rounds_to_target'])}"
                ax.annotate(
                    text,
                    (row["mb_to_target"], y),
                    xytext=(3, 0),
                    textcoords="offset points",
                    va="center",
                    fontsize=7,
                    color="0.15",
                )
            else:
                ax.annotate(
                    "not reached",
                    (lo, y),
                    xytext=(3, 0),
                    textcoords="offset points",
                    va="center",
                    fontsize=7,
                    color="0.45",
                )
        ax.set_yticks(ys, [layout.legend[i] for i in rows], fontsize=8)
        ax.set_ylim(len(rows) - 0.5, -0.5)  # first configuration on top
        ax.tick_params(axis="y", length=0)
        if title:
            ax.set_title(title, fontsize=9, loc="center" if side_by_side else "left")
        ax.set_xscale("log")
        _log_axis(ax.xaxis, small=side_by_side)
        ax.set_xlim(lo, hi)
        ax.grid(True, axis="x", which="major", alpha=0.3, zorder=0)
    xlabel = "MB communicated to reach the target (up + down, log scale; r = round)"
    if side_by_side:
        fig.supxlabel(xlabel, fontsize=9)
    else:
        axes[-1].set_xlabel(xlabel)
    tgt = f"{target:.3f}" if target is not None and math.isfinite(target) else "n/a"
    _title(fig, f"Communication to reach target accuracy {tgt} (first round the seed-mean reaches it)")
    return fig


def figure_pareto(summary, layout: Layout) -> Figure:
    """Final accuracy vs total MB; the Pareto front over all configurations in every panel."""
    front = pareto_front(summary, "mb_total", "final_acc_mean").to_numpy()
    many = len(layout.panels) > 1
    fig, axes = _grid(len(layout.panels), (4.3, 3.1) if many else (6.4, 4.2))
    pts = summary[front].sort_values("mb_total")
    for ax, (title, rows) in zip(axes, layout.panels):
        if many:  # the other panels' configurations, for context
            others = [i for i in range(len(summary)) if i not in rows]
            ax.scatter(
                summary["mb_total"].iloc[others],
                summary["final_acc_mean"].iloc[others],
                s=12,
                color="0.82",
                zorder=1,
                linewidths=0,
            )
        if len(pts):
            ax.step(
                pts["mb_total"],
                pts["final_acc_mean"],
                where="post",
                color="black",
                linewidth=0.9,
                linestyle="--",
                alpha=0.6,
                zorder=2,
            )
        for i in rows:
            row = summary.iloc[i]
            st = layout.style[i]
            yerr = row["final_acc_std"] if pd.notna(row["final_acc_std"]) else None
            ax.errorbar(
                row["mb_total"],
                row["final_acc_mean"],
                yerr=yerr,
                color=st.color,
                marker=st.marker,
                markersize=6,
                capsize=2.5,
                linestyle="none",
                label=layout.legend[i],
                zorder=3,
            )
            if front[i]:
                ax.plot(
                    row["mb_total"],
                    row["final_acc_mean"],
                    marker="o",
                    markersize=13,
                    markerfacecolor="none",
                    markeredgecolor="black",
                    markeredgewidth=0.9,
                    linestyle="none",
                    zorder=4,
                )
        if title:
            ax.set_title(title, fontsize=9)
        ax.set_xscale("log")
        _log_axis(ax.xaxis, small=many)
        ax.grid(True, which="major", alpha=0.3)
        ax.grid(True, which="minor", alpha=0.08)
        ax.margins(x=0.12, y=0.1)
    _axis_labels(fig, axes, "total communication, up + down (MB, log scale)", "final test accuracy")
    note = _seeds_note(summary).split(";")[0]
    _title(fig, f"Final accuracy vs total communication ({note}; bar = ±1 std)")
    extra = [
        (Line2D([], [], color="black", linestyle="--", linewidth=0.9, alpha=0.6), "Pareto front"),
        (
            Line2D(
                [], [], marker="o", markersize=10, markerfacecolor="none", markeredgecolor="black", ls="none"
            ),
            "on the front",
        ),
    ]
    if many:
        extra.append((Line2D([], [], marker="o", color="0.82", ls="none", markersize=4), "other panels"))
    _legend(fig, layout, "point", extra)
    return fig


def make_figures(runs: pd.DataFrame, summary: pd.DataFrame, target: float | None, out_dir) -> list[Path]:
    """Write every figure as PNG and PDF into ``out_dir``; return the paths written."""
    with mpl.rc_context(_RC):
        layout = plan(summary)
        figures = {
            "accuracy_vs_round": lambda: figure_accuracy(runs, summary, layout, target, "round"),
            "accuracy_vs_mb": lambda: figure_accuracy(runs, summary, layout, target, "cum_mb"),
            "mb_to_target": lambda: figure_mb_to_target(summary, layout, target),
            "pareto": lambda: figure_pareto(summary, layout),
            "accuracy_vs_time": lambda: figure_accuracy(runs, summary, layout, target, "sim_s"),
        }
        return [p for name in figure_names(summary) for p in _save(figures[name](), out_dir, name)]
