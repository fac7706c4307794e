"""``python -m fedbench.tuning SWEEP... --out conf/tuned_lr/<name>``: tuned learning rates as YAML.

Each SWEEP is the folder of one ``fedbench -m experiment=tune_lr arm=...`` study
(hydra-optuna-sweeper writes its ``optimization_results.yaml`` there). For every study this
writes ``<out>/<arm or method>.yaml``: a ``# @package _global_`` file setting ``fl.lr`` to the
best value found, with where it came from in its comments. A comparison experiment includes
the file of each job's arm through Hydra's defaults-list interpolation::

    defaults:
      - /arm: lora_r4
      - /tuned_lr/tutorial: ${arm}     # conf/tuned_lr/tutorial/<arm>.yaml

(``conf/experiment/compare_tuned.yaml``). A study is refused, with nothing written, unless
every trial evaluated on the validation split (``evaluated_on: validation`` in its
summary.json): a learning rate chosen on the test set would make the comparison unfair.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import sys
from pathlib import Path

import yaml

from fedbench.errors import EXIT_BAD_INPUT

PROG = "python -m fedbench.tuning"
RESULTS = "optimization_results.yaml"


class TuningError(Exception):
    """A study folder that cannot give a tuned value: one line, exit 2."""


def _trials(sweep: Path) -> list[dict]:
    out = []
    for summary in sorted(sweep.glob("*/summary.json")):
        try:
            s = json.loads(summary.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise TuningError(f"{summary}: cannot be read ({type(exc).__name__}: {exc})") from None
        if isinstance(s, dict):
            out.append({**s, "_dir": summary.parent})
    return out


def study(sweep: str | Path) -> dict:
    """What one tune_lr study found: ``key`` (the arm, else the method), ``lr``, ``value`` (its
    final validation accuracy), the trials and the settings they shared."""
    sweep = Path(sweep)
    results = sweep / RESULTS
    if not results.is_file():
        raise TuningError(f"{sweep}: no {RESULTS} (not an optuna study folder, or the study did not finish)")
    found = yaml.safe_load(results.read_text(encoding="utf-8")) or {}
    best = (found.get("best_params") or {}).get("fl.lr")
    if best is None:
        raise TuningError(f"{results}: holds no best fl.lr (was fl.lr the swept parameter?)")
    trials = _trials(sweep)
    if not trials:
        raise TuningError(f"{sweep}: no trial run folders (*/summary.json)")
    not_validation = [t["_dir"].name for t in trials if t.get("evaluated_on") != "validation"]
    if not_validation:
        raise TuningError(
            f"{sweep}: {len(not_validation)} of {len(trials)} trials evaluated on the test set, not a "
            f"validation split (e.g. {not_validation[0]}); tune with data.validation_fraction > 0 "
            "(experiment=tune_lr sets it)"
        )
    keys = {
        (t["choices"].get("arm") and f"arm={t['choices']['arm']}") or f"method={t['choices'].get('method')}"
        for t in trials
    }
    if len(keys) != 1:
        raise TuningError(
            f"{sweep}: its trials tuned several methods ({', '.join(sorted(keys))}); one per study"
        )
    (key,) = keys
    lrs = sorted(float(t["config"]["fl"]["lr"]) for t in trials)
    command = _command(trials[0]["_dir"])
    match = [t for t in trials if math.isclose(float(t["config"]["fl"]["lr"]), float(best), rel_tol=1e-12)]
    first = trials[0]["config"]
    return {
        "sweep": sweep,
        "key": key,
        "name": key.split("=", 1)[1],
        "lr": float(best),
        "value": float(found.get("best_value")),
        "trials": len(trials),
        "lr_range": (lrs[0], lrs[-1]),
        "best_run": match[0]["_dir"].name if match else None,
        "seed": first.get("seed"),
        "validation_fraction": (first.get("data") or {}).get("validation_fraction"),
        "num_rounds": (first.get("fl") or {}).get("num_rounds"),
        "command": command,
    }


def _command(trial: Path) -> str | None:
    """The command that ran the study: a trial's overrides without the value tried and Hydra's."""
    try:
        overrides = yaml.safe_load((trial / ".hydra" / "overrides.yaml").read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return None
    if not isinstance(overrides, list):
        return None
    kept = [str(o) for o in overrides if not str(o).startswith(("fl.lr=", "hydra.", "quiet="))]
    return "fedbench -m " + " ".join(kept)


def render(found: dict) -> str:
    """The YAML file for one study."""
    today = _dt.date.today().isoformat()
    lo, hi = found["lr_range"]
    lines = [
        "# @package _global_",
        f"# fl.lr for {found['key']}, tuned by experiment=tune_lr (hydra-optuna-sweeper): the best of",
        f"# {found['trials']} trials (fl.lr tried from {lo:.3g} to {hi:.3g}), final validation accuracy",
        f"# {found['value']:.4f} (data.validation_fraction={found['validation_fraction']}, seed {found['seed']}, "
        f"{found['num_rounds']} rounds).",
        *([f"# Study: {found['command']}"] if found.get("command") else []),
        f"# Best trial: {found['best_run']}.",
        f"# Written by `{PROG}` on {today}. Included by comparison experiments, e.g.",
        "# conf/experiment/compare_tuned.yaml (defaults: - /tuned_lr/<name>: ${arm}).",
        "fl:",
        f"  lr: {found['lr']!r}",
        "",
    ]
    return "\n".join(lines)


def write(sweeps: list[str | Path], out: str | Path) -> list[Path]:
    """Read every study first (a bad one writes nothing), then one YAML per study into ``out``."""
    studies = [study(s) for s in sweeps]
    names = [s["name"] for s in studies]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise TuningError(f"several studies tuned {', '.join(twice)}: give one study per method")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for s in studies:
        path = out / f"{s['name']}.yaml"
        path.write_text(render(s), encoding="utf-8")
        written.append(path)
        print(
            f"{path}: fl.lr={s['lr']:.6g} (final validation accuracy {s['value']:.4f}, {s['trials']} trials)"
        )
    return written


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog=PROG, description="Write each tune_lr study's best fl.lr as a YAML file."
    )
    p.add_argument("sweeps", nargs="+", metavar="SWEEP", help="folders of experiment=tune_lr studies")
    p.add_argument(
        "--out", required=True, help="folder for <arm or method>.yaml, e.g. conf/tuned_lr/tutorial"
    )
    args = p.parse_args(argv)
    try:
        write(args.sweeps, args.out)
    except TuningError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    return 0


if __name__ == "__main__":
    sys.exit(main())
