#!/usr/bin/env python3
"""Reproduce Tutorial 166 with ``experiment=tutorial_166`` and check it against the seed script.

    python scripts/reproduce_tutorial.py                      # one run (Hydra's basic launcher)
    python scripts/reproduce_tutorial.py --launcher joblib    # as a one-job sweep via joblib
    python scripts/reproduce_tutorial.py --launcher submitit_local

The experiment pins ``threads: 2`` (the seed's thread count), so the numbers are the same under
every launcher, although joblib/submitit would otherwise give the job 1 thread (where the seed
itself ends at 0.1940). The reference is the unmodified seed script's accuracy in every round
on this machine: float rounding depends on the CPU's kernels, so it is the recorded reference
with this machine's fingerprint (tests/fixtures/seed_reference*.json), else the seed script run
now (../shared/seed/tutorial_166.md). The tutorial's own log lines (0.1660/0.1800/0.1960 at
rounds 10/20/30) are printed beside; they hold on machines that round like the tutorial's.
Exit 0 when all 30 rounds equal the reference and the run recorded 2 threads; 1 otherwise.
Extra arguments go to ``fedbench`` unchanged.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import subprocess
import sys
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
LOGGED = {10: 0.1660, 20: 0.1800, 30: 0.1960}  # the tutorial's log lines
THREADS = 2


def seed_reference() -> tuple[list[float], str]:
    """(the seed script's per-round accuracies on this machine, where they come from)."""
    sys.path.insert(0, str(ROOT / "scripts"))
    from seed_reference import DEFAULT_SEED_MD, extract_seed_code, numeric_fingerprint, run_seed

    here = numeric_fingerprint()
    for path in sorted((ROOT / "tests" / "fixtures").glob("seed_reference*.json")):
        doc = json.loads(path.read_text())
        if doc.get("fingerprint") == here:
            case = next(c for c in doc["cases"] if c["name"] == "default")
            return case["accuracy"], f"{path.name} (fingerprint {here})"
    return run_seed(extract_seed_code(DEFAULT_SEED_MD), {}, THREADS)["accuracy"], "the seed script, run now"


def experiment_override(name: str) -> str:
    """``experiment=NAME`` if conf/config.yaml lists an experiment default, else ``+experiment=NAME``."""
    from omegaconf import OmegaConf

    defaults = OmegaConf.to_container(OmegaConf.load(ROOT / "conf" / "config.yaml")).get("defaults", [])
    listed = any(isinstance(d, dict) and any(str(k).split()[-1] == "experiment" for k in d) for d in defaults)
    return f"{'' if listed else '+'}experiment={name}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--launcher", default="basic", help="basic (a single run), joblib, submitit_local, ...")
    p.add_argument("--out", default=None, help="run/sweep folder (default: outputs/tutorial_166/<time>)")
    args, extra = p.parse_known_args(argv)
    out = Path(
        args.out or ROOT / "outputs" / "tutorial_166" / dt.datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    )
    cmd = [sys.executable, "-m", "fedbench"]
    if args.launcher == "basic":
        cmd += [experiment_override("tutorial_166"), f"hydra.run.dir={out}"]
    else:
        cmd += [
            "-m",
            experiment_override("tutorial_166"),
            f"hydra/launcher={args.launcher}",
            f"hydra.sweep.dir={out}",
            "hydra.sweep.subdir=run",
        ]
    cmd += extra
    print("+", " ".join(cmd), flush=True)
    res = subprocess.run(cmd, cwd=ROOT)
    if res.returncode != 0:
        print(f"reproduce_tutorial: fedbench exited {res.returncode}", file=sys.stderr)
        return 1
    run_dir = out if args.launcher == "basic" else out / "run"
    metrics = pd.read_csv(run_dir / "metrics.csv").set_index("round")["accuracy"]
    summary = json.loads((run_dir / "summary.json").read_text())
    expected, source = seed_reference()
    ok = summary["threads"] == THREADS
    print(f"threads {summary['threads']} (expected {THREADS}); reference: {source}")
    for rnd in LOGGED:
        got, want = float(metrics.get(rnd, float("nan"))), expected[rnd - 1]
        print(
            f"round {rnd}: accuracy {got:.4f} (seed script here {want:.4f}, tutorial's log {LOGGED[rnd]:.4f}) "
            f"{'ok' if got == want else 'DIFFERS'}"
        )
    same = metrics.tolist() == expected
    ok &= same
    print(f"all {len(expected)} rounds {'equal' if same else 'do NOT equal'} the seed script's")
    print(f"reproduce_tutorial: {'reproduced' if ok else 'NOT reproduced'} ({run_dir})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
