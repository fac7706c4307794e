"""``fedbench [hydra overrides]`` (also ``python -m fedbench``): one run, or a sweep with ``-m``."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from fedbench.cli_check import CommandLineError, check_command_line, is_multirun
from fedbench.config import CONF_DIR, RunSpec, load_registry, validate
from fedbench.errors import EXIT_BAD_INPUT, EXIT_ENVIRONMENT, ConfigError, environment_problem
from fedbench.lock import RunFolderBusy
from fedbench.progress import RunProgress, progress_enabled
from fedbench.threads import threads_for_job

log = logging.getLogger("fedbench")

EXIT_BAD_CONFIG = EXIT_BAD_INPUT  # the exit codes: fedbench.errors
EXIT_INTERRUPTED = 130  # 128 + SIGINT; a SIGTERM'd run exits 143 (128 + SIGTERM)


def human_bytes(n: float) -> str:
    """Decimal units (1 MB = 10^6 bytes), as communication budgets are usually quoted."""
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.2f} {unit}"
    return f"{int(n)} B"


def _log_round(row: dict, spec: RunSpec) -> None:
    sim = row.get("sim_time_s", float("nan"))
    clock = "" if sim != sim else f"  sim {sim:.1f}s"  # the simulated clock (system=)
    if row.get("stragglers"):
        clock += f" ({row['stragglers']} late)"
    log.info(
        "round %*d/%d  acc %.4f  test_loss %.4f  train_loss %.4f  up %s  down %s  total %s  %.2fs%s",
        len(str(spec.fl.num_rounds)),
        row["round"],
        spec.fl.num_rounds,
        row["accuracy"],
        row["test_loss"],
        row["train_loss"],
        human_bytes(row["bytes_up"]),
        human_bytes(row["bytes_down"]),
        human_bytes(row["cum_bytes"]),
        row["wall_s"],
        clock,
    )


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
def _task(cfg: DictConfig) -> float:
    from fedbench.run import execute  # torch import after argument checks: fast errors

    out_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        spec = validate(cfg)
    except ConfigError as exc:
        print(f"fedbench: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
    r = spec.resolved
    log.info(
        "%s + %s on %s, %s, %d rounds x %d/%d clients -> %s",
        r["model"]["_target_"].rsplit(".", 1)[1],
        r["method"]["_target_"].rsplit(".", 1)[1],
        r["data"]["_target_"].rsplit(".", 1)[1],
        r["strategy"]["_target_"].rsplit(".", 1)[1],
        spec.fl.num_rounds,
        spec.fl.clients_per_round,
        spec.fl.num_clients,
        out_dir,
    )
    hc = HydraConfig.get()
    launcher = OmegaConf.to_container(hc.launcher, resolve=True) if hc.mode == RunMode.MULTIRUN else None
    threads = threads_for_job(spec.threads, launcher)
    if threads != spec.threads:
        spec = dataclasses.replace(spec, threads=threads)
    # the run's identity for reports: the trackers (logger=) are how it is recorded, not what it is
    choices = {
        k: v
        for k, v in hc.runtime.choices.items()
        if not k.startswith("hydra/") and k != "logger" and v is not None
    }
    sweep = {"dir": str(hc.sweep.dir), "job": hc.job.num} if hc.mode == RunMode.MULTIRUN else None
    # A bar only for a run in this process on a terminal: launchers' workers share the terminal.
    in_process = launcher is None or "BasicLauncher" in str(launcher.get("_target_", ""))
    quiet = spec.quiet or bool(hc.verbose) or not in_process
    try:
        with RunProgress(spec.fl.num_rounds, spec.fl.clients_per_round, progress_enabled(quiet)) as progress:

            def on_round(row: dict, s: RunSpec) -> None:
                _log_round(row, s)  # the log line prints above the bar; the run's log file keeps it
                progress.round_done(row)

            rows = execute(
                spec,
                out_dir=out_dir,
                on_round=on_round,
                choices=choices,
                on_client=progress.client_callback,
                sweep=sweep,
            )
    except RunFolderBusy as exc:
        if launcher is None:  # a single run: refused
            print(f"fedbench: {exc}", file=sys.stderr)
            sys.exit(EXIT_BAD_CONFIG)
        # a sweep re-launched while some of its jobs still run elsewhere: skip those, go on
        print(f"fedbench: skipped: {exc.allowed}", file=sys.stderr)
        return float("nan")
    except ConfigError as exc:  # e.g. the run folder holds a different configuration
        print(f"fedbench: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except OSError as exc:  # a full disk or a read-only folder is one line; other OS errors are bugs
        line = environment_problem(exc, where=f"a file in {out_dir}")
        if line is None:
            raise
        print(f"fedbench: {line}", file=sys.stderr)
        sys.exit(EXIT_ENVIRONMENT)
    last = rows[-1]
    try:
        print(format_table(rows, ["round", "accuracy", "bytes_up", "bytes_down", "cum_bytes"]))
        print(
            f"final {_measured_on(spec)}accuracy {last['accuracy']:.4f} | communicated "
            f"{human_bytes(last['cum_bytes'])} "
            f"(up {human_bytes(last['cum_bytes_up'])}, down {human_bytes(last['cum_bytes_down'])}) | "
            f"trainable params {int(last['trainable_params']):,} | run folder {out_dir}",
            flush=True,
        )
    except BrokenPipeError:  # `fedbench ... | head`: the reader left; the run folder is complete
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return objective(rows, spec)


def _measured_on(spec: RunSpec) -> str:
    return "validation " if getattr(spec.data, "validation_fraction", 0.0) else ""


def objective(rows: list[dict], spec: RunSpec) -> float:
    """What a sweeper (hydra/sweeper=optuna) maximises: the final accuracy (on the validation
    split under data.validation_fraction). A run that diverged before its last round scores 0.0,
    the worst accuracy, so that a learning rate too high to train loses instead of failing the
    study (a NaN would be a failed trial, and optuna's sweeper stops at the first by default)."""
    last = rows[-1]
    if last["round"] < spec.fl.num_rounds or last["accuracy"] != last["accuracy"]:
        return 0.0
    return float(last["accuracy"])


def format_table(rows: list[dict], columns: list[str]) -> str:
    """Right-aligned text table of metrics rows (accuracy to 4 decimals)."""
    cells = [[f"{r[c]:.4f}" if c == "accuracy" else str(r[c]) for c in columns] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    return "\n".join(" ".join(v.rjust(w) for v, w in zip(line, widths)) for line in [columns, *cells])


def _exit_now(code: int) -> None:
    """End the process without the interpreter's teardown, which spends ~0.45 s freeing torch's
    modules and objects. Every file the run writes is complete and closed by now; buffered
    output and log handlers are flushed first."""
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        # e.g. `fedbench ... | head`: the reader is gone, the run folder is complete
        with contextlib.suppress(OSError):
            stream.flush()
    os._exit(code)


def expand_resume_path(argv: list[str]) -> list[str]:
    """``resume=PATH`` -> that run's own overrides + ``hydra.run.dir=PATH resume=true``."""
    out, folder = [], None
    for arg in argv:
        key, sep, value = arg.partition("=")
        if sep and key == "resume" and value.lower() not in ("true", "false"):
            folder = Path(value)
        else:
            out.append(arg)
    if folder is None:
        return argv
    saved = folder / ".hydra" / "overrides.yaml"
    if not saved.is_file():
        raise CommandLineError(f"resume={folder}: not a fedbench run folder (no .hydra/overrides.yaml)")
    try:
        stored = OmegaConf.to_container(OmegaConf.load(saved))
    except Exception as exc:  # yaml's and OmegaConf's errors for a damaged file vary
        stored, why = None, f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    else:
        why = "it is not a list of overrides"
    if not isinstance(stored, list) or not all(isinstance(o, str) for o in stored):
        raise CommandLineError(
            f"resume={folder}: {saved} is damaged ({why}); resume with the original overrides "
            f"and hydra.run.dir={folder} instead"
        )
    previous = [o for o in stored if not o.startswith(("resume=", "hydra.run.dir="))]
    return [*previous, *out, f"hydra.run.dir={folder.resolve()}", "resume=true"]


def main() -> None:
    """The ``fedbench`` command. A single run that succeeds ends the process at once (see
    :func:`_exit_now`); sweeps, errors and interruptions exit normally. In Python, call
    :func:`fedbench.run.run` instead."""
    try:
        sys.argv[1:] = expand_resume_path(sys.argv[1:])
        check_command_line(sys.argv[1:])
    except CommandLineError as exc:
        print(f"fedbench: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
    load_registry()  # the components' structured configs, before Hydra composes
    try:
        _task()
    except KeyboardInterrupt as exc:
        print(
            "fedbench: interrupted; completed rounds are in the run folder (metrics.csv, "
            "checkpoint/); run again with resume=<run folder> to continue",
            file=sys.stderr,
        )
        sys.exit(128 + getattr(exc, "signum", 2))
    if not is_multirun(sys.argv[1:]):  # not -m: no launcher (joblib, submitit) to shut down
        _exit_now(0)


if __name__ == "__main__":
    main()
