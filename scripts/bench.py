#!/usr/bin/env python3
"""Whole-process wall time of fedbench's default run vs the Tutorial 166 seed script.

Both run as fresh processes with torch's default threads, alternating (seed, fedbench, seed,
...), so machine noise hits both alike; the figure of merit is the median of the per-pair
ratios. The accuracies the seed logs (rounds 10/20/30 and final) must equal fedbench's.

    python scripts/bench.py --repeats 5
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
from seed_reference import DEFAULT_SEED_MD, extract_seed_code  # noqa: E402

TARGET = 0.45


def timed(cmd: list[str], cwd: Path) -> tuple[float, subprocess.CompletedProcess]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    t0 = time.perf_counter()
    res = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - t0
    if res.returncode != 0:
        sys.exit(f"bench: {' '.join(cmd)} failed:\n{res.stderr[-2000:]}")
    return elapsed, res


def seed_accuracies(res: subprocess.CompletedProcess) -> dict[int, float]:
    logged = {int(r): float(a) for r, a in re.findall(r"Round (\d+): acc=([0-9.]+)", res.stderr + res.stdout)}
    final = re.search(r"Final accuracy: ([0-9.]+)", res.stdout)
    if final:
        logged["final"] = float(final.group(1))
    return logged


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3, help="alternating pairs (median over them)")
    ap.add_argument("--seed-md", type=Path, default=DEFAULT_SEED_MD)
    args = ap.parse_args()
    if args.repeats < 1:
        sys.exit("bench: --repeats must be >= 1")
    import pandas as pd

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        seed_py = tmp / "tutorial_166.py"
        seed_py.write_text(extract_seed_code(args.seed_md))
        seed_times, ours_times = [], []
        for i in range(args.repeats):
            t_seed, res_seed = timed([sys.executable, str(seed_py)], tmp)
            run_dir = tmp / f"run{i}"
            t_ours, _ = timed([sys.executable, "-m", "fedbench", f"hydra.run.dir={run_dir}"], tmp)
            seed_times.append(t_seed)
            ours_times.append(t_ours)
            df = pd.read_parquet(run_dir / "metrics.parquet")
            ours = {r: round(float(df.accuracy.iloc[r - 1]), 4) for r in (10, 20, 30)}
            ours["final"] = round(float(df.accuracy.iloc[-1]), 4)
            theirs = seed_accuracies(res_seed)
            same = theirs == ours
            print(f"pair {i + 1}/{args.repeats}: seed {t_seed:6.2f} s  fedbench {t_ours:6.2f} s  "
                  f"ratio {t_ours / t_seed:.3f}  accuracies {'identical' if same else 'DIFFER'}", flush=True)
            if not same:
                sys.exit(f"bench: accuracies differ: seed {theirs} vs fedbench {ours}")
    ratios = [o / s for o, s in zip(ours_times, seed_times)]
    med = statistics.median(ratios)
    print(f"\nmedian seed {statistics.median(seed_times):.2f} s, fedbench {statistics.median(ours_times):.2f} s")
    print(f"median ratio fedbench/seed = {med:.3f}  (target <= {TARGET}: {'met' if med <= TARGET else 'NOT met'})")


if __name__ == "__main__":
    main()
