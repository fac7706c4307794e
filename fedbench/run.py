"""``run(cfg) -> DataFrame``: one federated run, with no Hydra globals (tests call it directly)."""

from __future__ import annotations

import datetime as _dt
import math
import random
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig

import fedbench
from fedbench.config import RunSpec, validate
from fedbench.fl.engine import Engine
from fedbench.fl.state import FlatParams
from fedbench.results import MetricsWriter, summarize


def set_threads(threads: int | None) -> int:
    """Apply the configured intra-op thread count (None keeps torch's default); return the count."""
    if threads is not None and torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    return torch.get_num_threads()


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def build(spec: RunSpec):
    """Data, model (method injected, head attached) and flat trainable state, in the tutorial's
    random-stream order: data first, then the backbone, the method's modules, the head."""
    torch.manual_seed(spec.seed)
    np.random.seed(spec.seed)
    random.seed(spec.seed)
    data = spec.data.build(spec.fl.num_clients, spec.seed)
    model = spec.model.build()
    spec.method.inject(model)
    model.attach_head()
    names = spec.method.trainable(model)
    state = FlatParams(model, names)
    return data, model, state


def component_names(resolved: dict) -> dict:
    """Group -> option name guessed from ``_target_`` (used when Hydra's choices are unknown)."""
    out = {}
    for group in ("model", "method", "data", "strategy"):
        target = resolved.get(group, {}).get("_target_", "")
        out[group] = target.rsplit(".", 1)[-1]
    comp = resolved.get("compression", {})
    for side in ("up", "down"):
        out[f"compression.{side}"] = comp.get(side, {}).get("_target_", "").rsplit(".", 1)[-1]
    return out


def run(cfg: DictConfig | dict | RunSpec, out_dir: str | Path | None = None,
        on_round: Callable[[dict, RunSpec], None] | None = None,
        choices: dict | None = None) -> pd.DataFrame:
    """Run one configuration; write the run-folder files into ``out_dir`` when given.

    ``choices`` (group -> option name, e.g. ``{"method": "lora"}``; the CLI passes Hydra's)
    is recorded in ``summary.json`` as the run's identity for reports. Returns the metrics
    table (one row per completed round).
    """
    spec = cfg if isinstance(cfg, RunSpec) else validate(cfg)
    threads = set_threads(spec.threads)
    started = _now()
    data, model, state = build(spec)
    engine = Engine(model=model, state=state, data=data, fl=spec.fl, strategy=spec.strategy,
                    codec_up=spec.compression_up, codec_down=spec.compression_down)
    writer = MetricsWriter(out_dir)
    status = "running"
    try:
        for _ in range(spec.fl.num_rounds):
            row = writer.append(engine.run_round())
            if on_round is not None:
                on_round(row, spec)
            if not (math.isfinite(row["test_loss"]) and math.isfinite(row["train_loss"])) or engine.diverged():
                status = "diverged"
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
            "torch_version": torch.__version__,
            "fedbench_version": fedbench.__version__,
            "config_hash": spec.config_hash,
            "choices": dict(choices) if choices else component_names(spec.resolved),
            "started_at": started,
            "finished_at": _now(),
            "wall_s": writer.rows[-1]["elapsed_s"] if writer.rows else 0.0,
            "config": spec.resolved,
        }
        df = writer.finish(summary)
    return df
