"""``fedbench-report PATH... [--out DIR] [--target-accuracy X]`` (also ``python -m fedbench.report``).

Finds every run folder under the given run or multirun folders, and writes into ``--out``:

- ``runs.parquet`` + ``runs.csv``: one tidy table, one row per run per round, the run's
  identity (model, method, data, strategy, compression, partition, rank, key hyperparameters,
  seed, threads, config_hash, config_id, label) next to its metrics;
- ``summary.csv`` + ``summary.md``: one row per configuration (runs that differ only in
  ``seed``), aggregated over seeds: final accuracy mean ± std, best accuracy, MB up/down, MB and
  rounds to reach the target accuracy, trainable parameters, wall time;
- figures (PNG + PDF, see :mod:`fedbench.plots`).

A run folder is a folder holding ``.hydra/``, ``summary.json`` or ``metrics.csv``. Folders whose
run did not complete (no summary, status other than ``complete``) or cannot be read are skipped
with a warning naming them. The same folder reached twice counts once; two folders with the same
``config_hash`` and seed (a sweep run twice) count once: the newest complete one is kept.
Outputs are built in a temporary folder and moved into place only when everything succeeded.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from fedbench.config import config_hash

PROG = "fedbench-report"
DEFAULT_TARGET_FRACTION = 0.9
MB = 1e6
RUN_MARKERS = (".hydra", "summary.json", "metrics.csv")
# Metric columns a run must have to be reported (others, present or future, are carried along).
REQUIRED_METRICS = (
    "round",
    "accuracy",
    "bytes_up",
    "bytes_down",
    "cum_bytes_up",
    "cum_bytes_down",
    "cum_bytes",
)
# Named hyperparameter columns: column -> dotted config key (present only if some run has it).
KEY_PARAMS = {
    "partition": "data.partition",
    "rank": "method.rank",
    "alpha": "method.alpha",
    "num_rounds": "fl.num_rounds",
    "num_clients": "fl.num_clients",
    "clients_per_round": "fl.clients_per_round",
    "local_epochs": "fl.local_epochs",
    "batch_size": "fl.batch_size",
    "lr": "fl.lr",
}
GROUPS = ("model", "method", "data", "strategy")
_SHORT = {"method.rank": "r", "method.alpha": "alpha"}
_ORDER = ("method.", "compression", "data.partition", "strategy.", "model.", "data.", "fl.")


class ReportError(Exception):
    """Bad input: reported as one line on stderr and a non-zero exit."""

    def __init__(self, message: str, code: int = 2) -> None:
        super().__init__(message)
        self.code = code


def warn(message: str) -> None:
    print(f"{PROG}: warning: {message}", file=sys.stderr)


def info(message: str) -> None:
    print(f"{PROG}: {message}", file=sys.stderr)


# --------------------------------------------------------------------------- discovery
def is_run_dir(path: Path) -> bool:
    return any((path / m).exists() for m in RUN_MARKERS)


def find_run_dirs(paths: list[str | Path]) -> list[Path]:
    """Every run folder under ``paths`` (each resolved, each once, sorted).

    Does not descend into a run folder or into hidden folders (``.hydra``, ``.submitit``).
    """
    found: set[Path] = set()
    for p in paths:
        root = Path(p)
        if not root.exists():
            raise ReportError(f"no such file or folder: {p}")
        if not root.is_dir():
            raise ReportError(f"not a folder: {p} (give run or multirun folders)")
        root = root.resolve()
        if is_run_dir(root):
            found.add(root)
            continue
        for dirpath, dirnames, _ in os.walk(root, followlinks=True):
            here = Path(dirpath)
            keep = []
            for d in sorted(dirnames):
                if d.startswith("."):
                    continue
                sub = here / d
                if is_run_dir(sub):
                    found.add(sub.resolve())
                else:
                    keep.append(d)
            dirnames[:] = keep
    return sorted(found)


# --------------------------------------------------------------------------- loading
@dataclass
class Run:
    path: Path
    summary: dict
    metrics: pd.DataFrame
    identity: dict = field(default_factory=dict)

    @property
    def key(self) -> tuple:
        return (self.summary.get("config_hash"), self.identity.get("seed"))


def _read_metrics(path: Path) -> pd.DataFrame:
    pq = path / "metrics.parquet"
    if pq.is_file():
        return pd.read_parquet(pq)
    return pd.read_csv(path / "metrics.csv")


def load_run(path: Path) -> tuple[Run | None, str | None]:
    """A complete, readable run, or ``(None, why it is skipped)``."""
    sp = path / "summary.json"
    if not sp.is_file():
        rounds = ""
        if (path / "metrics.csv").is_file():
            try:
                rounds = f", {len(pd.read_csv(path / 'metrics.csv'))} round(s) in metrics.csv"
            except Exception:  # noqa: BLE001 - any unreadable csv
                rounds = ", unreadable metrics.csv"
        return None, f"incomplete: no summary.json (killed or still running{rounds})"
    try:
        summary = json.loads(sp.read_text())
    except (OSError, ValueError) as exc:
        return None, f"unreadable summary.json ({type(exc).__name__}: {str(exc).splitlines()[0]})"
    if not isinstance(summary, dict):
        return None, "unreadable summary.json (not a JSON object)"
    status = summary.get("status")
    if status != "complete":
        done = summary.get("rounds_completed")
        total = summary.get("num_rounds")
        return None, f"status {status!r}" + (f" after {done}/{total} rounds" if done is not None else "")
    if not isinstance(summary.get("config"), dict):
        return None, "summary.json has no 'config'"
    try:
        metrics = _read_metrics(path)
    except Exception as exc:  # noqa: BLE001 - pyarrow/pandas raise many kinds
        return (
            None,
            f"unreadable metrics ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})",
        )
    missing = [c for c in REQUIRED_METRICS if c not in metrics.columns]
    if missing:
        return None, f"metrics lack column(s) {', '.join(missing)}"
    expected = summary.get("rounds_completed", summary.get("num_rounds"))
    if len(metrics) == 0 or (expected is not None and len(metrics) != expected):
        return None, f"metrics have {len(metrics)} row(s) but summary.json says {expected} round(s)"
    if list(metrics["round"]) != list(range(1, len(metrics) + 1)):
        return None, "metrics rounds are not 1..N"
    run = Run(path=path, summary=summary, metrics=metrics.reset_index(drop=True))
    run.identity = identity(summary)
    return run, None


# --------------------------------------------------------------------------- identity
def flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = json.dumps(v) if isinstance(v, (list, tuple)) else v
    return out


def _non_identity_keys(config: dict) -> set[str]:
    """Top-level keys that :func:`fedbench.config.config_hash` leaves out (threads, ...)."""
    base = config_hash(config)
    return {k for k in config if config_hash({**config, k: "\0probe"}) == base}


def config_id(config: dict) -> str:
    """Identity of a configuration across seeds: the config hash without ``seed``."""
    return config_hash({k: v for k, v in config.items() if k != "seed"})


def _cls(section) -> str | None:
    if isinstance(section, dict) and "_target_" in section:
        return str(section["_target_"]).rsplit(".", 1)[-1]
    return None


def _codec(section) -> str | None:
    """A codec as ``Class`` or ``Class(k=v, ...)``."""
    name = _cls(section)
    if name is None:
        return None
    params = {k: v for k, v in section.items() if k != "_target_"}
    return name + (f"({', '.join(f'{k}={v}' for k, v in params.items())})" if params else "")


def _choice_col(group: str) -> str:
    return group.replace("/", "_")


def identity(summary: dict) -> dict:
    config = summary["config"]
    choices = summary.get("choices") or {}
    flat = flatten(config)
    ident = {}
    for g in GROUPS:
        ident[g] = choices.get(g) or _cls(config.get(g)) or ""
    comp = config.get("compression") or {}
    ident["compression"] = choices.get("compression") or ""
    for side in ("up", "down"):  # the option chosen per direction, else the codec's class
        ident[f"compression_{side}"] = choices.get(f"compression/{side}") or _codec(comp.get(side)) or ""
    for g, opt in sorted(choices.items()):  # other groups (experiment, arm, ...) as columns too
        if g not in GROUPS and g.split("/")[0] != "compression" and opt is not None:
            ident[_choice_col(g)] = opt
    for col, key in KEY_PARAMS.items():
        if key in flat:
            ident[col] = flat[key]
    ident["seed"] = config.get("seed")
    ident["threads"] = summary.get("threads", config.get("threads"))
    ident["config_hash"] = summary.get("config_hash") or config_hash(config)
    ident["config_id"] = config_id(config)
    return ident


# --------------------------------------------------------------------------- de-duplication
def _finished(run: Run) -> tuple:
    stamp = run.summary.get("finished_at") or ""
    try:
        mtime = (run.path / "summary.json").stat().st_mtime
    except OSError:
        mtime = 0.0
    return (str(stamp), mtime)


def deduplicate(runs: list[Run]) -> tuple[list[Run], list[tuple[Run, Run]]]:
    """Keep the newest complete run per (config_hash, seed); return (kept, [(dropped, kept)])."""
    by_key: dict[tuple, list[Run]] = {}
    for r in runs:
        by_key.setdefault(r.key, []).append(r)
    kept, dropped = [], []
    for group in by_key.values():
        group = sorted(group, key=_finished)
        newest = group[-1]
        kept.append(newest)
        dropped.extend((old, newest) for old in group[:-1])
    kept.sort(key=lambda r: str(r.path))
    return kept, dropped


# --------------------------------------------------------------------------- tables
def _display_path(path: Path) -> str:
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _sort_value(v):
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return (2, 0, "")
    if isinstance(v, (bool, np.bool_)):
        return (0, float(v), "")
    if isinstance(v, (int, float, np.integer, np.floating)):
        return (0, float(v), "")
    return (1, 0, str(v))


def varying_keys(runs: list[Run]) -> list[str]:
    """Dotted config keys whose value differs between configurations (not seed/threads/...)."""
    reps = {r.identity["config_id"]: r.summary["config"] for r in runs}
    skip = set()
    for cfg in reps.values():
        skip |= _non_identity_keys(cfg)
    skip.add("seed")
    values: dict[str, set] = {}
    for cfg in reps.values():
        for k, v in flatten(cfg).items():
            if k.split(".")[0] in skip or k.endswith("_target_"):
                continue
            values.setdefault(k, set()).add(json.dumps(v, sort_keys=True, default=str))
    keys = [k for k, vals in values.items() if len(vals) > 1]

    def prio(k: str) -> tuple:
        for i, p in enumerate(_ORDER):
            if k.startswith(p):
                return (i, k)
        return (len(_ORDER), k)

    return sorted(keys, key=prio)


def _label(ident: dict, flat: dict, vary: list[str], varying_choices: list[str]) -> str:
    parts = [str(ident["method"])]
    for g in varying_choices:
        if g in ("compression_up", "compression_down"):
            if ident.get(g) and ident[g] != ident.get("compression"):  # "fp16" says it already
                parts.append(f"{g.removeprefix('compression_')}={ident[g]}")
        elif g != "method" and ident.get(g):
            parts.append(str(ident[g]))
    for k in vary:
        if k not in flat:
            continue
        name = (
            k.removeprefix("compression.")
            if k.startswith("compression.")
            else _SHORT.get(k, k.rsplit(".", 1)[-1])
        )
        v = flat[k]
        if isinstance(v, float) and v.is_integer() and abs(v) < 1e15:
            v = f"{v:g}"
        parts.append(f"{name}={v}")
    return " ".join(parts)


def build_runs_table(runs: list[Run]) -> pd.DataFrame:
    """The tidy long table: one row per run per round."""
    vary = varying_keys(runs)
    choice_cols = [*GROUPS, "compression"]
    varying_choices = [g for g in choice_cols if len({r.identity.get(g) for r in runs}) > 1]
    # a direction's codec is shown where the compression option does not already tell it
    # (e.g. compression=topk with compression/down=int8 next to plain compression=topk)
    for side in ("compression_up", "compression_down"):
        per_choice: dict = {}
        for r in runs:
            per_choice.setdefault(r.identity.get("compression"), set()).add(r.identity.get(side))
        if any(len(v) > 1 for v in per_choice.values()) or (
            "compression" not in varying_choices and len({r.identity.get(side) for r in runs}) > 1
        ):
            varying_choices.append(side)
    labels = {}
    for r in runs:
        labels[r.identity["config_id"]] = _label(
            r.identity, flatten(r.summary["config"]), vary, varying_choices
        )
    # two configurations must never share a label
    by_label: dict[str, set] = {}
    for cid, lab in labels.items():
        by_label.setdefault(lab, set()).add(cid)
    for lab, cids in by_label.items():
        if len(cids) > 1:
            for cid in cids:
                labels[cid] = f"{lab} [{cid[:6]}]"
    id_cols = ["run_dir", *GROUPS, "compression", "compression_up", "compression_down"]
    known = {
        *GROUPS,
        "compression",
        "seed",
        "threads",
        "config_hash",
        "config_id",
        *KEY_PARAMS,
        "compression_up",
        "compression_down",
    }
    id_cols += sorted({k for r in runs for k in r.identity if k not in known})
    id_cols += [c for c in KEY_PARAMS if any(c in r.identity for r in runs)]
    extra = [k for k in vary if k not in KEY_PARAMS.values()]
    id_cols += extra + ["seed", "threads", "config_hash", "config_id", "label"]
    frames = []
    for r in runs:
        m = r.metrics.copy()
        flat = flatten(r.summary["config"])
        ident = {**r.identity, "run_dir": _display_path(r.path), "label": labels[r.identity["config_id"]]}
        for k in extra:
            ident[k] = flat.get(k)
        for c in id_cols:
            m.insert(id_cols.index(c), c, ident.get(c))
        if "selected" in m.columns:
            m["selected"] = m["selected"].map(_selected_str)
        frames.append(m)
    df = pd.concat(frames, ignore_index=True)
    df["cum_mb"] = df["cum_bytes"] / MB
    df["cum_mb_up"] = df["cum_bytes_up"] / MB
    df["cum_mb_down"] = df["cum_bytes_down"] / MB
    for c in extra + [c for c in KEY_PARAMS if c in df.columns]:
        df[c] = _tidy_column(df[c])
    # display order: method, then the varying hyperparameters, then label
    order = sorted(labels, key=lambda cid: _config_sort_key(runs, cid, vary, varying_choices))
    rank = {cid: i for i, cid in enumerate(order)}
    df["_o"] = df["config_id"].map(rank)
    df = df.sort_values(["_o", "seed", "run_dir", "round"], kind="stable").drop(columns="_o")
    return df.reset_index(drop=True)


def _tidy_column(col: pd.Series) -> pd.Series:
    """Integers stay integers where some runs lack the key (nullable Int64), lists become JSON."""
    vals = [v for v in col if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if any(isinstance(v, (list, dict)) for v in vals):
        return col.map(lambda v: json.dumps(v) if isinstance(v, (list, dict)) else v)
    if vals and all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in vals):
        return col.astype("Int64")
    return col


def _selected_str(v) -> str:
    if isinstance(v, (list, tuple, np.ndarray)):
        return " ".join(str(int(x)) for x in v)
    return "" if v is None or (isinstance(v, float) and math.isnan(v)) else str(v)


def _config_sort_key(runs: list[Run], cid: str, vary: list[str], choices: list[str]) -> tuple:
    """Display order: method, then the other differing choices, then differing values (as labelled)."""
    r = next(r for r in runs if r.identity["config_id"] == cid)
    flat = flatten(r.summary["config"])
    return (
        str(r.identity["method"]),
        *(str(r.identity.get(g, "")) for g in choices if g != "method"),
        *(_sort_value(flat.get(k)) for k in vary),
        cid,
    )


def default_target(summary_rows: pd.DataFrame, fraction: float) -> tuple[float, str]:
    best = summary_rows.loc[summary_rows["final_acc_mean"].idxmax()]
    return fraction * float(best["final_acc_mean"]), str(best["label"])


def build_summary(
    df: pd.DataFrame, runs: list[Run], target: float | None, fraction: float = DEFAULT_TARGET_FRACTION
) -> tuple[pd.DataFrame, dict]:
    """One row per configuration (display order) and the target's description."""
    by_run = {_display_path(r.path): r for r in runs}
    # identity columns: everything the runs table puts before ``seed`` (constant per configuration)
    id_cols = ["label", *(c for c in df.columns[: df.columns.get_loc("seed")] if c != "run_dir")]
    rows = []
    for cid, g in df.groupby("config_id", sort=False):
        finals = g.sort_values("round").groupby("run_dir", sort=False).tail(1)
        first = g.iloc[0]
        summaries = [by_run[d].summary for d in finals["run_dir"]]
        row = {"config_id": cid, **{c: first[c] for c in id_cols}}
        row["n_seeds"] = int(finals["seed"].nunique())
        row["seeds"] = " ".join(str(s) for s in sorted(finals["seed"].unique()))
        row["threads"] = " ".join(str(t) for t in sorted({str(t) for t in finals["threads"]}))
        row["rounds"] = int(finals["round"].max())
        acc = finals["accuracy"].astype(float)
        row["final_acc_mean"] = acc.mean()
        row["final_acc_std"] = acc.std(ddof=1) if len(acc) > 1 else np.nan
        row["final_acc_min"], row["final_acc_max"] = acc.min(), acc.max()
        best = g.groupby("run_dir")["accuracy"].max()
        row["best_acc_mean"] = best.mean()
        row["best_acc_max"] = best.max()
        row["mb_up"] = finals["cum_bytes_up"].mean() / MB
        row["mb_down"] = finals["cum_bytes_down"].mean() / MB
        row["mb_total"] = finals["cum_bytes"].mean() / MB
        row["mb_per_round"] = row["mb_total"] / row["rounds"]
        tp = [s.get("trainable_params") for s in summaries if s.get("trainable_params") is not None]
        row["trainable_params"] = int(np.median(tp)) if tp else int(finals["trainable_params"].iloc[0])
        totp = [s.get("total_params") for s in summaries if s.get("total_params") is not None]
        row["total_params"] = int(np.median(totp)) if totp else np.nan
        walls = [s.get("wall_s") for s in summaries if s.get("wall_s") is not None]
        row["wall_s_mean"] = float(np.mean(walls)) if walls else float(finals["elapsed_s"].mean())
        row["run_dirs"] = " ".join(finals["run_dir"])
        rows.append(row)
    summary = pd.DataFrame(rows)
    if target is None:
        target, best_label = default_target(summary, fraction)
        how = {
            "target": target,
            "fraction": fraction,
            "best_label": best_label,
            "best_final": target / fraction,
            "given": False,
        }
    else:
        how = {"target": target, "given": True}
    curves = (
        df.groupby(["config_id", "round"], sort=True)
        .agg(acc=("accuracy", "mean"), cum=("cum_bytes", "mean"))
        .reset_index()
    )
    r_to, mb_to, reached = [], [], []
    for _, row in summary.iterrows():
        c = curves[curves["config_id"] == row["config_id"]]
        hit = c[c["acc"] >= target - 1e-12]
        if len(hit):
            r_to.append(int(hit["round"].iloc[0]))
            mb_to.append(float(hit["cum"].iloc[0]) / MB)
        else:
            r_to.append(np.nan)
            mb_to.append(np.nan)
        g = df[df["config_id"] == row["config_id"]]
        reached.append(int((g.groupby("run_dir")["accuracy"].max() >= target - 1e-12).sum()))
    summary["target_accuracy"] = target
    summary["rounds_to_target"] = pd.array(r_to, dtype="Int64")
    summary["mb_to_target"] = mb_to
    summary["seeds_reaching_target"] = reached
    from fedbench.plots import pareto_front

    summary["pareto"] = pareto_front(summary, "mb_total", "final_acc_mean")
    return summary, how


# --------------------------------------------------------------------------- markdown
def _fmt_mb(v) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "not reached"
    return f"{v:,.0f}" if v >= 100 else f"{v:.3g}"


def _fmt_s(v) -> str:
    return f"{v:.1f}" if v >= 10 else f"{v:.2g}"


def summary_markdown(
    summary: pd.DataFrame, how: dict, n_runs: int, skipped: int, dropped: int, figures: list[str]
) -> str:
    t = how["target"]
    if how["given"]:
        target_line = f"Target accuracy **{t:.4f}** (given with `--target-accuracy`)."
    else:
        target_line = (
            f"Target accuracy **{t:.4f}** = {how['fraction']:g} × {how['best_final']:.4f}, "
            f"the best configuration's mean final accuracy (*{how['best_label']}*)."
        )
    threads = sorted({t for v in summary["threads"] for t in str(v).split()})
    lines = [
        "# fedbench report",
        "",
        f"{n_runs} runs in {len(summary)} configurations"
        + (f" ({dropped} duplicate run(s) ignored)" if dropped else "")
        + f"; {skipped} incomplete or unreadable run folder(s) skipped. "
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


# --------------------------------------------------------------------------- writing
def _write_outputs(
    out: Path, df: pd.DataFrame, summary: pd.DataFrame, md: str, target: float, figures: bool
) -> list[Path]:
    """Build every file in a temporary sibling folder, then move them into ``out``."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-"))
    try:
        df.to_parquet(tmp / "runs.parquet", index=False)
        df.to_csv(tmp / "runs.csv", index=False)
        summary.to_csv(tmp / "summary.csv", index=False)
        (tmp / "summary.md").write_text(md)
        if figures:
            from fedbench.plots import make_figures

            make_figures(df, summary, target, tmp)
        out.mkdir(parents=True, exist_ok=True)
        written = []
        for f in sorted(tmp.iterdir()):
            os.replace(f, out / f.name)
            written.append(out / f.name)
        return written
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# --------------------------------------------------------------------------- CLI
class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, not usage + message
        raise ReportError(message)


def _fraction(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not (math.isfinite(v) and 0 < v <= 1):
        raise argparse.ArgumentTypeError(f"{text!r} must be in (0, 1] (a fraction, e.g. 0.2 for 20%)")
    return v


def parser() -> argparse.ArgumentParser:
    p = _Parser(prog=PROG, description="Tables and figures from fedbench run or multirun folders.")
    p.add_argument("paths", nargs="+", metavar="PATH", help="run or multirun folders (searched recursively)")
    p.add_argument("--out", default="report", help="output folder (default: ./report)")
    g = p.add_mutually_exclusive_group()
    g.add_argument(
        "--target-accuracy",
        type=_fraction,
        metavar="X",
        help="accuracy to reach (fraction in (0, 1]); default: --target-fraction of the "
        "best configuration's mean final accuracy",
    )
    g.add_argument(
        "--target-fraction",
        type=_fraction,
        default=DEFAULT_TARGET_FRACTION,
        metavar="F",
        help=f"default target = F x best mean final accuracy (default {DEFAULT_TARGET_FRACTION})",
    )
    p.add_argument("--no-figures", action="store_true", help="tables only")
    return p


def report(
    paths: list[str],
    out: str | Path = "report",
    target_accuracy: float | None = None,
    target_fraction: float = DEFAULT_TARGET_FRACTION,
    figures: bool = True,
) -> dict:
    """Run the report; returns what it did (also used by tests and the notebook)."""
    dirs = find_run_dirs(paths)
    runs, skipped = [], []
    for d in dirs:
        try:
            run, why = load_run(d)
        except Exception as exc:  # noqa: BLE001 - never crash on one bad folder
            run, why = None, f"unreadable ({type(exc).__name__}: {exc})"
        if run is None:
            skipped.append((d, why))
            warn(f"skipping {_display_path(d)}: {why}")
        else:
            runs.append(run)
    info(
        f"skipped {len(skipped)} run folder(s)"
        + (" (incomplete or unreadable; named above)" if skipped else "")
    )
    if not runs:
        where = ", ".join(map(str, paths))
        raise ReportError(
            f"no complete runs found under {where} ({len(dirs)} run folder(s) found, {len(skipped)} skipped)",
            code=1,
        )
    runs, dropped = deduplicate(runs)
    for old, new in dropped:
        warn(
            f"duplicate run (config_hash {old.summary.get('config_hash')}, seed {old.identity['seed']}): "
            f"keeping the newest {_display_path(new.path)}, ignoring {_display_path(old.path)}"
        )
    df = build_runs_table(runs)
    summary, how = build_summary(df, runs, target_accuracy, target_fraction)
    fig_names = [] if not figures else list(__import__("fedbench.plots", fromlist=["FIGURES"]).FIGURES)
    md = summary_markdown(summary, how, len(runs), len(skipped), len(dropped), fig_names)
    out = Path(out)
    written = _write_outputs(out, df, summary, md, how["target"], figures)
    info(
        f"{len(runs)} run(s), {len(summary)} configuration(s), {len(df)} rows; "
        f"target accuracy {how['target']:.4f}; wrote {len(written)} files to {out}"
    )
    return {
        "runs": df,
        "summary": summary,
        "target": how,
        "skipped": skipped,
        "dropped": dropped,
        "written": written,
    }


def main(argv: list[str] | None = None) -> int:
    try:
        args = parser().parse_args(argv)
        report(args.paths, args.out, args.target_accuracy, args.target_fraction, not args.no_figures)
    except ReportError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return exc.code
    print(Path(args.out) / "summary.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
