#!/usr/bin/env python3
"""fedbench against Flower on the same workload: Tutorial 166 (LoRA on a frozen MLP, FedAvg, 5 of
10 clients, 30 rounds), fresh processes in alternating triples in one invocation.

The Flower side is the reference script ``../shared/bench/flower_tutorial.py`` (Flower 1.42's
simulation engine on Ray, its fastest setting on 2 cores: 1 CPU and 1 torch thread per client
actor), run from its own venv (``make bench-flower`` builds ``.venv-flower`` once, pinned by
``scripts/flower-constraints.txt``). fedbench runs ``rng=tutorial`` with the exact and the
vectorised engine at torch's default threads, as ``make bench`` does. Printed: every triple's
wall times, the medians of the per-triple ratios fedbench / Flower (noise hits a triple
alike), and Flower's final accuracy beside fedbench's (Flower draws its clients with its own
RNG, so its accuracies are not the seed's bit for bit).

    python scripts/bench_flower.py --repeats 3
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
from bench import fedbench_cmd, timed  # noqa: E402

FLOWER_SCRIPT = ROOT.parent / "shared" / "bench" / "flower_tutorial.py"
FLOWER_PYTHON = ROOT / ".venv-flower" / "bin" / "python"
TARGETS = {"exact": 1 / 3, "vectorized": 0.10}  # fedbench wall / Flower wall


def flower_run(python: Path, script: Path, resources: str, cwd: Path) -> tuple[float, float, str]:
    """(wall seconds, final accuracy, Flower's own timing line) of one fresh Flower process."""
    t0 = time.perf_counter()
    env = dict(os.environ, FLWR_TELEMETRY_ENABLED="0", RAY_USAGE_STATS_ENABLED="0")
    res = subprocess.run(
        [str(python), str(script), "--resources", resources], cwd=cwd, env=env, capture_output=True, text=True
    )
    wall = time.perf_counter() - t0
    final = re.search(r"Final accuracy: ([0-9.]+)", res.stdout)
    if res.returncode != 0 or final is None:
        sys.exit(
            f"bench_flower: the Flower run failed (exit {res.returncode}):\n{(res.stderr or res.stdout)[-2000:]}"
        )
    timing = next((line for line in res.stdout.splitlines() if line.startswith("timing")), "")
    return wall, float(final.group(1)), timing


def fedbench_final(run_dir: Path) -> float:
    import pyarrow.parquet as pq

    return float(pq.read_table(run_dir / "metrics.parquet").column("accuracy")[-1].as_py())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3, help="alternating triples (medians)")
    ap.add_argument("--flower-python", type=Path, default=FLOWER_PYTHON, help="the Flower venv's python")
    ap.add_argument("--flower-script", type=Path, default=FLOWER_SCRIPT)
    ap.add_argument(
        "--resources", choices=["1cpu", "default"], default="1cpu", help="Flower's client resources"
    )
    args = ap.parse_args()
    if args.repeats < 1:
        print("bench_flower: --repeats must be >= 1", file=sys.stderr)
        return 2
    if not args.flower_script.is_file():
        print(f"bench_flower: {args.flower_script} not found (the Flower reference script)", file=sys.stderr)
        return 2
    if not Path(args.flower_python).is_file():
        print(
            f"bench_flower: {args.flower_python} not found; run `make bench-flower` to build it",
            file=sys.stderr,
        )
        return 2
    load = os.getloadavg()
    print(
        f"fedbench vs Flower ({args.resources}): {args.repeats} alternating triples, {os.cpu_count()} CPUs, "
        f"load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}",
        flush=True,
    )
    walls = {"flower": [], "exact": [], "vectorized": []}
    finals = {k: [] for k in walls}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for i in range(args.repeats):
            wall, acc, timing = flower_run(args.flower_python, args.flower_script, args.resources, tmp)
            walls["flower"].append(wall)
            finals["flower"].append(acc)
            for engine in ("exact", "vectorized"):
                run_dir = tmp / f"{engine}{i}"
                t, _ = timed(fedbench_cmd(engine, run_dir, None), tmp, None)
                walls[engine].append(t)
                finals[engine].append(fedbench_final(run_dir))
            print(
                f"  triple {i + 1}/{args.repeats}: Flower {wall:6.2f} s (final {acc:.4f})  exact "
                f"{walls['exact'][-1]:5.2f} s ({walls['exact'][-1] / wall:.3f})  vectorised "
                f"{walls['vectorized'][-1]:5.2f} s ({walls['vectorized'][-1] / wall:.3f})",
                flush=True,
            )
            print(f"    Flower's {timing}", flush=True)
    print(
        f"  medians: Flower {statistics.median(walls['flower']):.2f} s, exact "
        f"{statistics.median(walls['exact']):.2f} s, vectorised {statistics.median(walls['vectorized']):.2f} s"
    )
    for engine in ("exact", "vectorized"):
        r = statistics.median([e / f for e, f in zip(walls[engine], walls["flower"])])
        t = TARGETS[engine]
        print(
            f"  median ratio {engine}/Flower = {r:.3f} ({1 / r:.1f}x faster; target <= {t:.2f}: "
            f"{'met' if r <= t else 'NOT met'})"
        )
    print(
        f"  final accuracy: Flower median {statistics.median(finals['flower']):.4f} "
        f"({', '.join(f'{a:.4f}' for a in finals['flower'])}); fedbench exact "
        f"{finals['exact'][0]:.4f} (the seed's), vectorised {finals['vectorized'][0]:.4f}"
    )
    print(f"load average after: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
