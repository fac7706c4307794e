#!/usr/bin/env python3
"""Reproduce Tutorial 166 with ``experiment=tutorial_166`` and check its logged accuracies.

    python scripts/reproduce_tutorial.py                      # one run (Hydra's basic launcher)
    python scripts/reproduce_tutorial.py --launcher joblib    # as a one-job sweep via joblib
    python scripts/reproduce_tutorial.py --launcher submitit_local

The experiment pins ``threads: 2`` (the seed's thread count), so the numbers are the same under
every launcher, although joblib/submitit would otherwise give the job 1 thread (where the seed
itself ends at 0.1940). Exit 0 when rounds 10/20/30 read 0.1660/0.1800/0.1960 and the run
recorded 2 threads; 1 otherwise. Extra arguments go to ``fedbench`` unchanged.
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
EXPECTED = {10: 0.1660, 20: 0.1800, 30: 0.1960}  # the tutorial's log lines
THREADS = 2


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
    ok = summary["threads"] == THREADS
    print(f"threads {summary['threads']} (expected {THREADS})")
    for rnd, want in EXPECTED.items():
        got = float(metrics.get(rnd, float("nan")))
        ok &= round(got, 4) == want
        print(
            f"round {rnd}: accuracy {got:.4f} (tutorial {want:.4f}) {'ok' if round(got, 4) == want else 'DIFFERS'}"
        )
    print(f"reproduce_tutorial: {'reproduced' if ok else 'NOT reproduced'} ({run_dir})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
