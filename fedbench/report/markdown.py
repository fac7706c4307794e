"""``summary.md``: the summary table as Markdown, with how the target and the columns were read."""

from __future__ import annotations

import math

import pandas as pd


def _fmt_mb(v) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "not reached"
    return f"{v:,.0f}" if v >= 100 else f"{v:.3g}"


def _fmt_s(v) -> str:
    return f"{v:.1f}" if v >= 10 else f"{v:.2g}"


def summary_markdown(
    summary: pd.DataFrame,
    how: dict,
    n_runs: int,
    skipped: int,
    dropped: int,
    figures: list[str],
    table: str | None = None,
) -> str:
    """The report's Markdown; ``table`` names the saved runs table it was redrawn from, if any."""
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
    lines = [
        "# fedbench report",
        "",
        f"{n_runs} runs in {len(summary)} configurations"
        + (f" ({dropped} duplicate run(s) ignored)" if dropped else "")
        + f"; {source}"
        f"torch threads per run: {', '.join(threads)}.",
        "",
        target_line + " *MB to target* and *rounds to target* are read where the seed-mean accuracy "
        "first reaches the target. MB = 10^6 bytes, up + down unless stated; accuracy is the "
        "fraction of the test set classified correctly; ± is the std over seeds. "
        "★ = on the Pareto front of final accuracy vs total MB.",
        "",
    ]
    head = [
        "configuration",
        "seeds",
        "final acc. (mean ± std)",
        "best acc.",
        "MB up",
        "MB down",
        f"MB to target {t:.3f}",
        "rounds to target",
        "trainable params",
        "wall s / run",
    ]
    lines.append("| " + " | ".join(head) + " |")
    lines.append("|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|")
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
            f"{int(r['trainable_params']):,}",
            _fmt_s(r["wall_s_mean"]),
        ]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    if figures:
        lines += ["", "## Figures", ""]
        lines += [f"![{name}]({name}.png) ([PDF]({name}.pdf))" for name in figures]
    return "\n".join(lines) + "\n"
