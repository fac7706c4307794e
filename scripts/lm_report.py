#!/usr/bin/env python3
"""Perplexity and next-token accuracy vs megabytes for a causal-LM sweep (e.g.
experiment=smollm_shakespeare), beside fedbench-report's accuracy tables.

    python scripts/lm_report.py SWEEP_DIR --out docs/smollm_shakespeare

Writes ``perplexity.md`` (one row per arm and partition: seeds, MB sent per run, perplexity after
round 1 and after the last round, next-token accuracy; means and ranges over seeds),
``perplexity_vs_mb.png``, and copies the best run's ``samples.md`` (lowest final perplexity) to
``samples_best.md``.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import pandas as pd


def load(sweep: Path) -> pd.DataFrame:
    rows = []
    for summary in sorted(sweep.glob("*/summary.json")):
        run = summary.parent
        s = json.loads(summary.read_text())
        if s.get("status") != "complete" or not (run / "metrics.parquet").is_file():
            continue
        m = pd.read_parquet(run / "metrics.parquet")
        cfg = s["config"]
        arm = run.name.split("arm=")[1].split(",")[0] if "arm=" in run.name else run.name
        for _, r in m.iterrows():
            rows.append(
                {
                    "run": run.name,
                    "arm": arm,
                    "partition": cfg["data"]["partition"],
                    "seed": cfg["seed"],
                    "round": int(r["round"]),
                    "perplexity": float(r["perplexity"]),
                    "accuracy": float(r["accuracy"]),
                    "mb": float(r["cum_bytes"]) / 1e6,
                    "trainable": int(r["trainable_params"]),
                }
            )
    return pd.DataFrame(rows)


def base_perplexity(sweep: Path, df: pd.DataFrame) -> dict[int, tuple[float, float]]:
    """seed -> (perplexity, next-token accuracy) of the untrained model on that seed's test set
    (the roles, and so the test windows, depend on the seed; LoRA at initialisation is the base)."""
    import torch

    from fedbench.config import validate
    from fedbench.fl.local import evaluate
    from fedbench.fl.loss import perplexity
    from fedbench.run import build

    out = {}
    for seed, runs in df[df["arm"].str.contains("lora")].groupby("seed")["run"]:
        cfg = json.loads((sweep / runs.iloc[0] / "summary.json").read_text())["config"]
        spec = validate(cfg)
        torch.set_num_threads(spec.threads or 1)
        data, model, _ = build(spec)
        acc, loss = evaluate(model, *data.test, batch_size=spec.fl.eval_batch_size, draw_loader_seed=False)
        out[int(seed)] = (perplexity(loss), acc)
    return out


def _markdown(table: pd.DataFrame) -> list[str]:
    def cell(v):
        if isinstance(v, float):
            return f"{v:,.4g}" if abs(v) >= 1 else f"{v:.4f}"
        return f"{v:,}" if isinstance(v, int) else str(v)

    out = ["| " + " | ".join(table.columns) + " |", "|" + "---|" * len(table.columns)]
    out += ["| " + " | ".join(cell(v) for v in row) + " |" for row in table.itertuples(index=False)]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("sweep", type=Path)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--base", action="store_true", help="also evaluate the untrained model (round 0)")
    args = ap.parse_args()
    df = load(args.sweep)
    if df.empty:
        raise SystemExit(f"lm_report: no complete runs under {args.sweep}")
    args.out.mkdir(parents=True, exist_ok=True)
    last = df[df["round"] == df.groupby("run")["round"].transform("max")]
    first = df[df["round"] == 1].set_index("run")
    g = last.groupby(["arm", "partition"])
    table = pd.DataFrame(
        {
            "seeds": g["seed"].nunique(),
            "trainable": g["trainable"].first(),
            "MB per run": g["mb"].mean(),
            "ppl round 1": g["run"].apply(lambda rs: first.loc[list(rs), "perplexity"].mean()),
            "final ppl (mean)": g["perplexity"].mean(),
            "final ppl (min-max)": g["perplexity"].agg(lambda v: f"{v.min():.2f}-{v.max():.2f}"),
            "next-token acc (mean)": g["accuracy"].mean(),
        }
    ).reset_index()
    table = table.sort_values(["partition", "final ppl (mean)"])
    lines = [
        "# Perplexity and next-token accuracy vs MB",
        "",
        f"{len(last)} complete runs under `{args.sweep}`. MB: payload bytes up + down over the run. "
        "Perplexity = exp(mean test cross-entropy per predicted token).",
        "",
        *_markdown(table),
        "",
    ]
    if args.base:
        base = base_perplexity(args.sweep, df)
        lines += [
            "Before any training (the pretrained model on each seed's test windows): "
            + "; ".join(
                f"seed {k}: perplexity {p:.2f}, next-token accuracy {a:.4f}"
                for k, (p, a) in sorted(base.items())
            ),
            "",
        ]
    (args.out / "perplexity.md").write_text("\n".join(lines))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for ax, part in zip(axes, ("speakers", "iid")):
        sub = df[df["partition"] == part]
        for arm, a in sub.groupby("arm"):
            curve = a.groupby("round")[["mb", "perplexity"]].mean()
            ax.plot(curve["mb"], curve["perplexity"], marker="o", label=arm)
        ax.set_xscale("log")
        ax.set_title(f"partition={part}")
        ax.set_xlabel("MB communicated (cumulative)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("test perplexity (mean over seeds)")
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(args.out / "perplexity_vs_mb.png", dpi=120)
    best = last.sort_values("perplexity").iloc[0]["run"]
    samples = args.sweep / best / "samples.md"
    if samples.is_file():
        shutil.copy(samples, args.out / "samples_best.md")
    print(f"lm_report: {args.out / 'perplexity.md'} (best run: {best})")


if __name__ == "__main__":
    main()
