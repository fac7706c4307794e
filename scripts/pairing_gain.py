#!/usr/bin/env python3
"""How much narrower paired randomness makes a comparison: ``rng=paired`` against ``rng=tutorial``.

    python scripts/pairing_gain.py PAIRED TUTORIAL --baseline arm=full [--metric final_acc]

PAIRED and TUTORIAL are the same sweep run with ``rng=paired`` and ``rng=tutorial`` (multirun
folders, or the ``runs.parquet`` a report saved). For every configuration but the baseline it
prints the width of the 95% bootstrap interval of its difference to the baseline, three ways:

- *paired, rng=paired*: seed-by-seed differences under paired streams (what ``fedbench-report
  --baseline`` gives for such a sweep);
- *paired, rng=tutorial*: seed-by-seed differences under the tutorial's single stream, where
  runs of one seed share only the data and the backbone's initialisation;
- *shuffled, rng=paired*: the paired sweep's runs matched with the seeds shuffled (the mean
  width over the other matchings of the baseline's seeds to the configuration's), i.e. the
  same runs without the pairing the seed gives them;
- *unpaired, rng=paired*: the paired sweep's runs treated as two independent samples
  (each resampled on its own).

and the ratios of the first to the others, with the correlation over seeds between the
configuration's and the baseline's values under each rng (pairing narrows an interval by as much
as that correlation is positive: var(a - b) = var(a) + var(b) - 2 cov(a, b)). A ratio below 1 is the interval the pairing saves.
Everything is computed in this one invocation from the two tables; no timing is involved.
"""

from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fedbench.report.discovery import collect_runs  # noqa: E402
from fedbench.report.errors import ReportError  # noqa: E402
from fedbench.report.paired import paired_differences, parse_pair, select_configuration  # noqa: E402
from fedbench.report.statistics import bootstrap_ci, bootstrap_diff_ci, build_summary, per_run  # noqa: E402
from fedbench.report.tables import build_runs_table, is_saved_table, load_table  # noqa: E402


def load(path: str):
    if is_saved_table(path):
        return load_table(path)
    runs, _, _ = collect_runs([path])
    if not runs:
        raise ReportError(f"{path}: no complete run folders")
    return build_runs_table(runs)


SHUFFLES = 500  # random matchings when there are too many to enumerate (more than 7 seeds)


def shuffled_width(a, b) -> float:
    """Mean paired-CI width over matchings of ``b``'s seeds to ``a``'s other than the true one:
    every one for up to 7 seeds, else :data:`SHUFFLES` random ones (a fixed generator)."""
    n = len(b)
    if n <= 7:
        perms = [p for p in itertools.permutations(range(n)) if p != tuple(range(n))]
    else:
        gen = np.random.default_rng(0)
        perms = [p for p in (tuple(gen.permutation(n)) for _ in range(SHUFFLES)) if p != tuple(range(n))]
    widths = []
    for perm in perms:
        lo, hi = bootstrap_ci(a - b[list(perm)])
        widths.append(hi - lo)
    return float(np.mean(widths)) if widths else float("nan")


def widths(df, pairs, metric: str) -> dict[str, tuple[float, float, float, float, float]]:
    """label -> (mean paired difference, paired, seeds-shuffled and unpaired CI widths, and the
    correlation over seeds between the configuration's and the baseline's values)."""
    summary, how = build_summary(df)
    base = select_configuration(summary, pairs)
    paired = paired_differences(df, summary, base, how["target"])
    paired = paired[paired["metric"] == metric]
    runs = per_run(df, how["target"])
    b = runs[runs["config_id"] == summary.iloc[base]["config_id"]].set_index("seed")[metric]
    out = {}
    for _, p in paired.iterrows():
        a = runs[runs["config_id"] == p["config_id"]].set_index("seed")[metric]
        seeds = sorted(set(a.dropna().index) & set(b.dropna().index))
        va, vb = a.loc[seeds].to_numpy(float), b.loc[seeds].to_numpy(float)
        lo, hi = bootstrap_diff_ci(va, vb)
        corr = float(np.corrcoef(va, vb)[0, 1]) if len(seeds) > 2 else float("nan")
        out[str(p["label"])] = (
            p["mean_diff"],
            p["ci_high"] - p["ci_low"],
            shuffled_width(va, vb),
            hi - lo,
            corr,
        )
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("paired", help="the sweep run with rng=paired (folder or runs.parquet)")
    ap.add_argument("tutorial", help="the same sweep with rng=tutorial")
    ap.add_argument("--baseline", nargs="+", required=True, metavar="KEY=VALUE")
    ap.add_argument("--metric", default="final_acc", choices=("final_acc", "best_acc"))
    args = ap.parse_args(argv)
    try:
        pairs = [parse_pair(b) for b in args.baseline]
        p = widths(load(args.paired), pairs, args.metric)
        t = widths(load(args.tutorial), pairs, args.metric)
    except (ReportError, ValueError) as exc:
        print(f"pairing_gain: error: {exc}", file=sys.stderr)
        return 2
    print(f"95% interval width of the difference in {args.metric} to {' '.join(args.baseline)}")
    head = (
        "configuration",
        "mean diff.",
        "paired",
        "rng=tutorial, paired",
        "seeds shuffled",
        "unpaired",
        "paired / tutorial",
        "paired / shuffled",
        "paired / unpaired",
        "corr. over seeds",
        "corr. (tutorial)",
    )
    print("| " + " | ".join(head) + " |")
    print("|---" + "|---:" * (len(head) - 1) + "|")
    ratios = []
    for label, (diff, wp, ws, wu, corr) in p.items():
        _, wt, _, _, ct = t.get(label, (float("nan"),) * 5)
        ratios.append((wp / wt, wp / ws, wp / wu))
        print(
            f"| {label} | {diff:+.4f} | {wp:.4f} | {wt:.4f} | {ws:.4f} | {wu:.4f} "
            f"| {wp / wt:.2f} | {wp / ws:.2f} | {wp / wu:.2f} | {corr:+.2f} | {ct:+.2f} |"
        )
    if ratios:
        r = np.array(ratios)
        print(
            f"median ratio: paired / tutorial {np.nanmedian(r[:, 0]):.2f}, paired / shuffled "
            f"{np.nanmedian(r[:, 1]):.2f}, paired / unpaired {np.nanmedian(r[:, 2]):.2f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
