"""Accuracy vs epsilon vs MB of a privacy sweep, one row per (arm, budget, codec), as markdown.

    python scripts/privacy_table.py outputs/multirun/privacy_compression/sweep [--out FILE]

Reads every complete run folder's summary.json (final accuracy, total bytes, the privacy block):
mean ± std over seeds of the final accuracy, the final epsilon and sigma (equal across seeds),
MB up + down.
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections import defaultdict
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("sweep")
    ap.add_argument("--out")
    args = ap.parse_args()
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for path in sorted(Path(args.sweep).glob("*/summary.json")):
        s = json.loads(path.read_text())
        if s.get("status") != "complete":
            continue
        c = s["choices"]
        groups[(c.get("arm"), c.get("dp"), c.get("compression"))].append(s)
    lines = [
        "| arm | budget | codec | seeds | final acc. (mean ± std) | ε (δ=1e-5) | σ | MB up + down |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    order = {"none": 0, "eps_inf": 1, "eps_8": 2, "eps_2": 3}
    for (arm, dp, codec), runs in sorted(
        groups.items(), key=lambda kv: (kv[0][0], order.get(kv[0][1], 9), kv[0][2])
    ):
        acc = [r["final_accuracy"] for r in runs]
        p = runs[0].get("privacy") or {}
        eps = p.get("epsilon")
        eps_text = "—" if eps is None else ("∞" if eps == float("inf") else f"{eps:.3f}")
        sigma = p.get("noise_multiplier")
        sd = statistics.stdev(acc) if len(acc) > 1 else 0.0
        lines.append(
            f"| {arm} | {dp} | {codec} | {len(runs)} | {statistics.mean(acc):.4f} ± {sd:.4f} | {eps_text} "
            f"| {'—' if sigma is None else f'{sigma:.4g}'} | {runs[0]['bytes_total'] / 1e6:.2f} |"
        )
    text = "\n".join(lines) + "\n"
    if args.out:
        Path(args.out).write_text(text)
    print(text, end="")


if __name__ == "__main__":
    main()
