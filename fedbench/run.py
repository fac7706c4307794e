"""``run(cfg) -> DataFrame``: one federated run, with no Hydra globals (tests call it directly)."""

from __future__ import annotations

import contextlib
import csv
import datetime as _dt
import json
import logging
import math
import random
import signal
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from omegaconf import DictConfig

import fedbench
from fedbench import checkpoint, registry, rng, samples
from fedbench.config import RunSpec, config_hash, validate
from fedbench.data.client_split import carve_validation, hold_out
from fedbench.device import apply_precision, resolve_device
from fedbench.errors import ConfigError, DamagedRunFolder
from fedbench.fl.faults import FaultPlan
from fedbench.fl.state import FlatParams
from fedbench.fl.vectorized import make_engine
from fedbench.lock import run_folder_lock
from fedbench.registry import CONFIG_GROUPS
from fedbench.results import (
    COLUMNS,
    INT_COLUMNS,
    LEGACY_DEFAULTS,
    METRICS_CSV,
    METRICS_PARQUET,
    OPTIONAL_COLUMNS,
    SUMMARY_JSON,
    ClientMetricsWriter,
    MetricsWriter,
    frame,
    participants,
    read_parquet_rows,
    summarize,
    write_label_histogram,
)
from fedbench.rng import Streams
from fedbench.trackers import TrackedRun, Trackers

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger("fedbench")


def set_threads(threads: int | None) -> int:
    """Apply the configured intra-op thread count (None keeps torch's default); return the count."""
    if threads is not None and torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    return torch.get_num_threads()


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def build(spec: RunSpec):
    """Data, model (method injected, head attached) and flat trainable state, in the tutorial's
    random-stream order: data first, then the backbone, the method's modules, the head. Under
    ``rng=paired`` each of them draws from its own stream (the method's modules per name)."""
    streams = Streams(spec.rng, spec.seed)
    torch.manual_seed(spec.seed)
    np.random.seed(spec.seed)
    random.seed(spec.seed)
    streams.seed_global("data")
    if getattr(spec.data, "task", None) == "lm":  # language data: tokenised by the model's tokenizer
        data = spec.data.build(spec.fl.num_clients, spec.seed, tokenizer_dir=spec.model.tokenizer_dir())
    else:
        data = spec.data.build(spec.fl.num_clients, spec.seed)
    data = hold_out(data, getattr(spec.data, "client_test_fraction", 0.0), spec.seed)
    # tuning: a validation split of the clients' training data replaces the test set
    data = carve_validation(data, getattr(spec.data, "validation_fraction", 0.0), spec.seed)
    streams.seed_global("init", "backbone")
    model = spec.model.build()
    streams.seed_global("init", "method")  # for modules a method creates without rng.module_init
    with rng.building(streams):
        spec.method.inject(model)
    streams.seed_global("init", "head")
    model.attach_head()
    device = resolve_device(getattr(spec, "device", "cpu"))
    if device.type != "cpu":  # before the flat state: its buffer is made where the parameters are
        model.to(device)
    apply_precision(model, getattr(spec, "precision", "fp32"))
    names = spec.method.trainable(model)
    state = FlatParams(model, names)
    return data, model, state


def component_names(resolved: dict) -> dict:
    """Group -> registered component name (used when Hydra's choices are unknown)."""
    out = {}
    for key in CONFIG_GROUPS:
        head, _, side = key.partition(".")
        section = resolved.get(head, {})
        section = section.get(side, {}) if side else section
        try:
            out[key] = registry.lookup(section.get("_target_"), key).name
        except ConfigError:
            out[key] = str(section.get("_target_", "")).rsplit(".", 1)[-1]
    return out


class Interrupted(KeyboardInterrupt):
    """SIGTERM (or SIGINT) arrived: the run stops after recording what it has."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"signal {signum}")
        self.signum = signum


@contextlib.contextmanager
def _signals_interrupt():
    """Turn SIGTERM into :class:`Interrupted` (SIGINT already raises KeyboardInterrupt)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise Interrupted(signum)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _read_rows(out: Path, up_to_round: int) -> list[dict]:
    """The rows of rounds 1..``up_to_round`` with their exact values (floats are repr'd), from
    metrics.csv, else from metrics.parquet; a folder holding neither intact is
    :class:`DamagedRunFolder` (the checkpoint cannot be continued without its rows)."""
    problem = "it is missing"
    csv_path = out / METRICS_CSV
    if csv_path.is_file():
        try:
            rows = _parse_rows(csv_path, up_to_round)
            if len(rows) == up_to_round:
                return rows
            problem = f"it has {len(rows)} rows up to round {up_to_round}"
        except (ValueError, TypeError, csv.Error, UnicodeDecodeError) as exc:
            problem = f"it cannot be read ({type(exc).__name__}: {exc})"
    parquet = out / METRICS_PARQUET
    if parquet.is_file():
        with contextlib.suppress(Exception):  # damaged too: the error below names the csv
            rows = [r for r in read_parquet_rows(parquet) if r["round"] <= up_to_round]
            if [r["round"] for r in rows] == list(range(1, up_to_round + 1)):
                log.warning("%s: %s; resuming with the rows of %s", csv_path, problem, METRICS_PARQUET)
                return rows
    raise DamagedRunFolder(
        "resume",
        f"run folder {out}: {METRICS_CSV} is damaged ({problem}) and the checkpoint after round "
        f"{up_to_round} cannot be continued without its rows; start over with resume=false "
        "(nothing was deleted)",
        True,
    )


def _float(text: str) -> float:
    """A CSV value as a float; NaN as the one ``math.nan`` (rows then compare equal as dicts)."""
    value = float(text)
    return math.nan if value != value else value


def _parse_rows(csv_path: Path, up_to_round: int) -> list[dict]:
    rows = []
    with open(csv_path, newline="", encoding="utf-8") as fh:
        for raw in csv.DictReader(fh):
            row = {}
            for k in COLUMNS:
                v = raw.get(k)
                if v is None and k in LEGACY_DEFAULTS:  # a folder from before the column
                    v = str(LEGACY_DEFAULTS[k])
                if v is None and k in OPTIONAL_COLUMNS:  # a folder from before per-client eval
                    v = "nan"
                if v is None:
                    raise ValueError(f"round row {len(rows) + 1} has no {k!r}")
                row[k] = v if k == "selected" else (int(v) if k in INT_COLUMNS else _float(v))
            if row["round"] <= up_to_round:
                rows.append(row)
    if [r["round"] for r in rows] != list(range(1, len(rows) + 1)):
        raise ValueError("its rounds are not 1, 2, 3, ...")
    return rows


def _read_summary(out: Path) -> dict | None:
    """The folder's summary.json, or None when there is none or it is damaged (then the
    checkpoint, which carries its own config hash, decides; summary.json is rewritten)."""
    path = out / SUMMARY_JSON
    if not path.is_file():
        return None
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        value, why = None, f"{type(exc).__name__}: {exc}"
    else:
        why = f"it holds a {type(value).__name__}, not an object"
    if isinstance(value, dict):
        return value
    log.warning("%s is damaged (%s); ignoring it: the checkpoint decides", path, why)
    return None


def _stored_hash(record: dict) -> str | None:
    """The identity of the config a summary or checkpoint recorded, recomputed with today's
    schemas when the config itself is there (so a field added since, left at its default,
    does not make an old run folder foreign); else the hash it recorded."""
    config = record.get("config")
    return config_hash(config) if isinstance(config, dict) else record.get("config_hash")


def _mismatch(out: Path, found: str, spec: RunSpec) -> ConfigError:
    return ConfigError(
        "resume",
        f"run folder {out} holds a different configuration (config_hash "
        f"{found}, this run {spec.config_hash}); use another folder or resume=false",
        spec.resume,
    )


def _start_fresh(out: Path) -> None:
    for name in (METRICS_CSV, METRICS_PARQUET, SUMMARY_JSON):
        (out / name).unlink(missing_ok=True)
    checkpoint.clear(out)


def run(
    cfg: DictConfig | dict | RunSpec,
    out_dir: str | Path | None = None,
    on_round: Callable[[dict, RunSpec], None] | None = None,
    choices: dict | None = None,
    on_client: Callable[[int, int, int], None] | None = None,
    sweep: dict | None = None,
) -> pd.DataFrame:
    """Run one configuration; write the run-folder files into ``out_dir`` when given.

    With ``resume`` (the default) and an ``out_dir`` that already holds this configuration:
    a complete result is returned as is, and a checkpoint is continued from, bit for bit.
    ``choices`` (group -> option name, e.g. ``{"method": "lora"}``; the CLI passes Hydra's)
    is recorded in ``summary.json`` as the run's identity for reports. Returns the metrics
    table (one row per completed round). ``on_round(row, spec)`` is called after each round,
    ``on_client(round, clients done, clients selected)`` as clients finish local training.
    ``sweep`` (``{"dir": multirun folder, "job": number}``): the multirun this run is a job of,
    for the trackers (``logger=``; an MLflow experiment per sweep).
    """
    return frame(execute(cfg, out_dir, on_round, choices, on_client, sweep))


def execute(
    cfg: DictConfig | dict | RunSpec,
    out_dir: str | Path | None = None,
    on_round: Callable[[dict, RunSpec], None] | None = None,
    choices: dict | None = None,
    on_client: Callable[[int, int, int], None] | None = None,
    sweep: dict | None = None,
) -> list[dict]:
    """:func:`run` returning the metrics rows as dicts (the CLI's path: no pandas import).

    The run folder's lock (:mod:`fedbench.lock`) is held throughout: a second process on the
    same folder gets :class:`~fedbench.lock.RunFolderBusy` before anything is read or written.
    """
    spec = cfg if isinstance(cfg, RunSpec) else validate(cfg)
    out = Path(out_dir) if out_dir is not None else None
    with run_folder_lock(out):
        return _execute(spec, out, on_round, choices, on_client, sweep)


def _execute(
    spec: RunSpec,
    out: Path | None,
    on_round: Callable[[dict, RunSpec], None] | None,
    choices: dict | None,
    on_client: Callable[[int, int, int], None] | None,
    sweep: dict | None = None,
) -> list[dict]:
    saved = None
    if out is not None and out.is_dir():
        if spec.resume:
            done = _read_summary(out)
            if done is not None:
                if _stored_hash(done) != spec.config_hash:
                    raise _mismatch(out, _stored_hash(done), spec)
                if done.get("status") == "complete" and (out / METRICS_PARQUET).is_file():
                    try:
                        complete = read_parquet_rows(out / METRICS_PARQUET)
                    except Exception as exc:  # pyarrow's errors for a damaged file vary by fault
                        log.warning(
                            "%s is damaged (%s); resuming from the checkpoint", out / METRICS_PARQUET, exc
                        )
                    else:
                        log.info("%s already holds this run's complete result; skipping", out)
                        return complete
            saved = checkpoint.load(out)
            if saved is not None and _stored_hash(saved[1]) != spec.config_hash:
                raise _mismatch(out, _stored_hash(saved[1]), spec)
        if saved is None:
            _start_fresh(out)

    threads = set_threads(spec.threads)
    started = _now()
    data, model, state = build(spec)
    engine = make_engine(spec, model, state, data, faults=FaultPlan.from_config(spec.fl.faults))
    engine.on_client = on_client
    rows: list[dict] = []
    resumed_from = None
    if saved is not None:
        engine.load_state_dict(*saved)
        resumed_from = engine.round
        rows = _read_rows(out, engine.round)
        log.info("resuming %s after round %d", out, engine.round)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        # data made on demand: the clients that took part (written again when the run ends)
        write_label_histogram(data, out, participants(rows) if data.on_demand else None)
    sampling = out is not None and samples.supported(model, spec.data)
    if sampling and (saved is None or samples.read_before(out) is None):
        with engine.protocol.evaluation() if engine.protocol is not None else contextlib.nullcontext():
            prompts = spec.data.prompts(spec.model.tokenizer_dir())
            samples.write_before(out, prompts, samples.generate(model, prompts))
    writer = MetricsWriter(out, rows, rewrite=saved is not None)
    client_writer = ClientMetricsWriter(out, resume_round=resumed_from)
    run_choices = dict(choices) if choices else component_names(spec.resolved)
    trackers = Trackers(
        spec.loggers,
        TrackedRun(
            run_dir=out,
            name=out.name if out is not None else "fedbench",
            config=spec.resolved,
            config_hash=spec.config_hash,
            choices=run_choices,
            sweep_dir=(sweep or {}).get("dir"),
            job_num=(sweep or {}).get("job"),
            resumed_from=resumed_from,
            rows=list(rows),
        ),
    )
    trackers.open()
    every = spec.checkpoint_every
    status = "running"
    try:
        with _signals_interrupt():
            while engine.round < spec.fl.num_rounds:
                row = engine.run_round()
                diverged = engine.diverged(row)
                row.pop("_all_nonfinite")
                client_writer.append(row.pop("_clients"))
                row = writer.append(row)
                trackers.log_row(row)
                last = engine.round == spec.fl.num_rounds
                if out is not None and every and (engine.round % every == 0 or last or diverged):
                    tensors, meta = engine.state_dict()
                    checkpoint.save(
                        out,
                        tensors,
                        {**meta, "config_hash": spec.config_hash, "config": spec.resolved},
                        keep=spec.checkpoint_keep,
                    )
                if on_round is not None:
                    on_round(row, spec)
                if diverged:
                    status = "diverged"
                    log.warning("round %d: the global model diverged (non-finite); stopping", engine.round)
                    break
            else:
                status = "complete"
    except KeyboardInterrupt:
        status = "interrupted"
        raise
    except BaseException:
        status = "failed"
        raise
    finally:
        summary = {
            "status": status,
            "num_rounds": spec.fl.num_rounds,
            **summarize(writer.rows),
            "trainable_params": state.numel,
            "total_params": sum(p.numel() for p in model.parameters()),
            "clients_per_round": spec.fl.clients_per_round,
            "threads": threads,
            "rng": spec.rng,
            # what accuracy was measured on: "test", or "validation" (data.validation_fraction)
            "evaluated_on": data.evaluated_on,
            "torch_version": torch.__version__,
            "fedbench_version": fedbench.__version__,
            "config_hash": spec.config_hash,
            "choices": run_choices,
            "resumed_from_round": resumed_from,
            "started_at": started,
            "finished_at": _now(),
            "wall_s": writer.rows[-1]["elapsed_s"] if writer.rows else 0.0,
            "config": spec.resolved,
        }
        privacy = engine.privacy.summary(engine.round)
        if privacy:  # privacy=none records nothing
            summary["privacy"] = privacy
        try:
            client_writer.finish()
            if out is not None and data.on_demand:
                write_label_histogram(data, out, participants(writer.rows))
            rows = writer.finish(summary)
        finally:
            trackers.close(status, summary)
    if sampling and status == "complete":
        record = samples.read_before(out) or {}
        prompts = record.get("prompts") or spec.data.prompts(spec.model.tokenizer_dir())
        with engine.protocol.evaluation() if engine.protocol is not None else contextlib.nullcontext():
            after = samples.generate(model, prompts)
        title = ", ".join(
            f"{k}={v}" for k, v in summary["choices"].items() if k in ("model", "method", "data")
        )
        samples.write_markdown(out, prompts, record.get("before"), after, title)
    return rows
