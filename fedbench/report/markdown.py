"""``summary.md``: the summary table as Markdown, with how the target and the columns were read,
the confidence intervals over seeds and, with ``--baseline``, the paired differences."""

from __future__ import annotations

import math

import pandas as pd

from fedbench.report.statistics import CI_DESCRIPTION

_ACC = "{:.4f}"


def _missing(v) -> bool:
    return v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v))


def _fmt_mb(v) -> str:
    if _missing(v):
        return "not reached"
    return f"{v:,.0f}" if v >= 100 else f"{v:.3g}"


def _fmt_s(v) -> str:
    return f"{v:.1f}" if v >= 10 else f"{v:.2g}"


def _fmt_rounds(v) -> str:
    return f"{v:.3g}" if float(v) != int(v) else f"{int(v)}"


def _ci(mean, low, high, n: int, fmt) -> str:
    """``0.2160 [0.2040, 0.2280]``; with one seed ``0.2160 (1 seed)``."""
    if _missing(mean):
        return "—"
    if n == 1 or _missing(low):
        return f"{fmt(mean)} (1 seed)" if n == 1 else fmt(mean)
    return f"{fmt(mean)} [{fmt(low)}, {fmt(high)}]"


def _acc(v) -> str:
    return _ACC.format(v)


def _signed(fmt):
    def f(v) -> str:
        s = fmt(abs(v))
        return ("−" if v < 0 else "+") + s if v != 0 else s

    return f


def _row(cells: list[str]) -> str:
    return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"


def _header(head: list[str]) -> list[str]:
    return [_row(head), "|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|"]


def _fmt_sim(v) -> str:
    """Simulated seconds (system=) as s, min or h; '—' without a clock, 'not reached' past it."""
    if _missing(v):
        return "—"
    v = float(v)
    if v < 120:
        return f"{v:.1f} s"
    return f"{v / 60:.1f} min" if v < 7200 else f"{v / 3600:.2f} h"


def _client(r, col: str) -> str:
    v = r[col]
    if _missing(v):
        return "—"
    k = int(r["client_acc_seeds"])
    return _acc(v) + (f" ({k} seed{'s' if k != 1 else ''})" if k != int(r["n_seeds"]) else "")


def _ci_section(summary: pd.DataFrame) -> list[str]:
    timed = bool(summary["sim_s_total"].notna().any()) if "sim_s_total" in summary else False
    lines = [
        "",
        "## Confidence intervals over seeds",
        "",
        f"[low, high] = {CI_DESCRIPTION}; a configuration with 1 seed has none (*1 seed*); seeds that "
        "all give the same value give [v, v]. With few seeds the percentile interval stays inside "
        "the range of the seeds' values, so it is narrow: read it as a lower bound on the "
        "uncertainty. *Per seed*: each seed's own first evaluated round at or above the target "
        "(and the MB sent until then); mean and interval only when every seed reached it.",
        "",
    ]
    lines += _header(
        [
            "configuration",
            "seeds",
            "final acc.",
            "best acc.",
            "seeds reaching target",
            "MB to target, per seed",
            "rounds to target, per seed",
            *(["sim. time to target, per seed"] if timed else []),
        ]
    )
    for _, r in summary.iterrows():
        n = int(r["n_seeds"])
        k = int(r["seeds_reaching_target"])
        per_seed = []
        metrics = [("mb_to_target", _fmt_mb), ("rounds_to_target", _fmt_rounds)]
        for m, fmt in metrics + ([("sim_s_to_target", _fmt_sim)] if timed else []):
            if k == 0:
                per_seed.append("not reached")
            elif k < n:
                per_seed.append(f"{k}/{n} reached")
            else:
                per_seed.append(_ci(r[f"{m}_seed_mean"], r[f"{m}_ci_low"], r[f"{m}_ci_high"], n, fmt))
        cells = [
            r["label"],
            str(n),
            _ci(r["final_acc_mean"], r["final_acc_ci_low"], r["final_acc_ci_high"], n, _acc),
            _ci(r["best_acc_mean"], r["best_acc_ci_low"], r["best_acc_ci_high"], n, _acc),
            f"{k}/{n}",
            *per_seed,
        ]
        lines.append(_row(cells))
    return lines


def _paired_cell(p: pd.Series) -> str:
    n, k = int(p["n_pairs"]), int(p["n_reached"])
    if n == 0:
        return "no shared seed"
    if p["metric"] in ("mb_to_target", "rounds_to_target") and k < n:
        return "not reached" if k == 0 else f"{k}/{n} pairs reached"
    fmt = {
        "final_acc": _acc,
        "best_acc": _acc,
        "mb_to_target": _fmt_mb,
        "rounds_to_target": _fmt_rounds,
    }[p["metric"]]
    text = _ci(p["mean_diff"], p["ci_low"], p["ci_high"], n, _signed(fmt))
    excludes = p["excludes_zero"]  # nullable boolean: NA where there is no interval
    return text + (" **≠0**" if not _missing(excludes) and bool(excludes) else "")


def _paired_section(paired: pd.DataFrame, baseline: str) -> list[str]:
    lines = [
        "",
        f"## Paired differences to *{baseline}*",
        "",
        f"Each configuration minus *{baseline}* on the same seed (runs of one seed share data, "
        "client sampling and initialisation), averaged over the seeds both ran; [low, high] = "
        f"{CI_DESCRIPTION.replace('of the mean over seeds', 'of the mean difference')}. **≠0** = "
        "the interval excludes zero: a difference reseeding alone is unlikely to produce. *pairs* "
        "= shared seeds (runs of a seed the other side lacks are left out: *unpaired*). To-target "
        "differences need both runs of every pair to reach the target. Also in `paired.csv`.",
        "",
    ]
    lines += _header(
        [
            "configuration",
            "pairs",
            "unpaired",
            "Δ final acc.",
            "Δ best acc.",
            "Δ MB to target",
            "Δ rounds to target",
        ]
    )
    for _cid, g in paired.groupby("config_id", sort=False):
        by = {m: p for m, p in zip(g["metric"], (row for _, row in g.iterrows()))}
        first = g.iloc[0]
        cells = [
            str(first["label"]),
            str(int(first["n_pairs"])),
            str(int(first["n_unpaired"] + first["n_baseline_unpaired"])),
            *(_paired_cell(by[m]) for m in ("final_acc", "best_acc", "mb_to_target", "rounds_to_target")),
        ]
        lines.append(_row(cells))
    if paired.empty:
        lines.append(_row(["(no other configuration)", "", "", "", "", "", ""]))
    return lines


def summary_markdown(
    summary: pd.DataFrame,
    how: dict,
    n_runs: int,
    skipped: int,
    dropped: int,
    figures: list[str],
    table: str | None = None,
    paired: pd.DataFrame | None = None,
) -> str:
    """The report's Markdown; ``table`` names the saved runs table it was redrawn from, if any;
    ``paired`` is :func:`~fedbench.report.paired.paired_differences`' table (``--baseline``)."""
    t = how["target"]
    if how["given"]:
        target_line = f"Target accuracy **{t:.4f}** (given with `--target-accuracy`)."
    else:
        target_line = (
            f"Target accuracy **{t:.4f}** = {how['fraction']:g} × {how['best_final']:.4f}, "
            f"the best configuration's mean final accuracy (*{how['best_label']}*)."
        )
    threads = sorted({t for v in summary["threads"] for t in str(v).split()})
    source = (
        f"read from the saved runs table `{table}`. "
        if table is not None
        else f"{skipped} incomplete or unreadable run folder(s) skipped. "
    )
    clients = "final_client_acc_p10" in summary.columns
    lines = [
        "# fedbench report",
        "",
        f"{n_runs} runs in {len(summary)} configurations"
        + (f" ({dropped} duplicate run(s) ignored)" if dropped else "")
        + f"; {source}"
        f"torch threads per run: {', '.join(threads)}.",
        "",
        target_line + " *MB to target* and *rounds to target* are read where the seed-mean accuracy "
        "first reaches the target, at evaluated rounds only (with `fl.eval_every` > 1 the first "
        "evaluated round that shows it). MB = 10^6 bytes, up + down unless stated; accuracy is the "
        "fraction of the test set classified correctly, final = the last round's, best = the "
        "highest evaluated round's; ± is the std over seeds. *seeds* = the runs (one per seed) "
        "behind every number of the row; a number backed by fewer says how many. "
        "★ = on the Pareto front of final accuracy vs total MB."
        + (
            " *client acc.*: the final global model on each client's own held-out split, the mean "
            "over clients and its 10th percentile (p10: how the worst-served clients fare), each "
            "averaged over seeds."
            if clients
            else ""
        ),
        "",
    ]
    timed = bool(summary["sim_s_total"].notna().any()) if "sim_s_total" in summary else False
    head = [
        "configuration",
        "seeds",
        "final acc. (mean ± std)",
        "best acc.",
        "MB up",
        "MB down",
        f"MB to target {t:.3f}",
        "rounds to target",
        *(["sim. time to target", "sim. time total"] if timed else []),
        *(["client acc. mean", "client acc. p10"] if clients else []),
        "trainable params",
        "wall s / run",
    ]
    lines += _header(head)
    for _, r in summary.iterrows():
        std = "" if pd.isna(r["final_acc_std"]) else f" ± {r['final_acc_std']:.4f}"
        rt = "not reached" if pd.isna(r["rounds_to_target"]) else f"{int(r['rounds_to_target'])}"
        name = r["label"] + (" ★" if r["pareto"] else "")
        cells = [
            name,
            str(r["n_seeds"]),
            f"{r['final_acc_mean']:.4f}{std}",
            f"{r['best_acc_mean']:.4f}",
            _fmt_mb(r["mb_up"]),
            _fmt_mb(r["mb_down"]),
            _fmt_mb(r["mb_to_target"]),
            rt,
            *(
                [
                    _fmt_sim(r["sim_s_to_target"]) if pd.notna(r["rounds_to_target"]) else "not reached",
                    _fmt_sim(r["sim_s_total"]),
                ]
                if timed
                else []
            ),
            *([_client(r, "final_client_acc_mean"), _client(r, "final_client_acc_p10")] if clients else []),
            f"{int(r['trainable_params']):,}",
            _fmt_s(r["wall_s_mean"]),
        ]
        lines.append(_row(cells))
    lines += _ci_section(summary)
    if paired is not None:
        baseline = str(paired["baseline_label"].iloc[0]) if len(paired) else str(summary["label"].iloc[0])
        lines += _paired_section(paired, baseline)
    if figures:
        lines += ["", "## Figures", ""]
        lines += [f"![{name}]({name}.png) ([PDF]({name}.pdf))" for name in figures]
    return "\n".join(lines) + "\n"
