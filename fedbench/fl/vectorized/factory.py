"""Choosing the run's engine: exact or vectorised, with or without the feature cache."""

from __future__ import annotations

import logging

from torch import nn

from fedbench.contracts import Population
from fedbench.errors import ConfigError
from fedbench.fl.clock import Clock, train_flops_per_sample
from fedbench.fl.engine import Engine
from fedbench.fl.faults import FaultPlan
from fedbench.fl.feature_cache import cache_features, why_not_cacheable
from fedbench.fl.privacy import NoPrivacy
from fedbench.fl.state import FlatParams
from fedbench.fl.vectorized.engine import VectorizedEngine
from fedbench.fl.wire import Wire
from fedbench.rng import Streams

log = logging.getLogger("fedbench")

ENGINES = ("exact", "vectorized")


def make_engine(spec, model: nn.Module, state: FlatParams, data, faults=None) -> Engine:
    """The run's engine: ``fl.engine`` (``exact``, the default, or ``vectorized``), with the
    backbone's features cached when ``fl.feature_cache`` (default true) and the method allows
    it (see :mod:`fedbench.fl.feature_cache`)."""
    fl = spec.fl
    kind = fl.engine
    if kind not in ENGINES:
        raise ConfigError("fl.engine", f"must be one of: {', '.join(ENGINES)}", kind)
    population = Population(fl.num_clients, spec.seed, spec.system)
    clock = None
    if spec.system is not None and spec.system.active:
        # FLOPs counted on the whole model, before any feature cache: what a client computes.
        x, y = next(
            (xy for xy in (data.clients[c] for c in range(fl.num_clients)) if len(xy[1])), data.clients[0]
        )
        b = min(fl.batch_size, len(y))
        flops = train_flops_per_sample(model, state, x[:b], y[:b]) if b else 0.0
        clock = Clock(population, flops, fl.local_epochs)
        log.info("simulated clock: %.4g FLOPs per training sample", flops)
    if fl.feature_cache:
        reason = why_not_cacheable(model, state)
        if reason is None:
            model, data = cache_features(model, data, chunk=fl.eval_batch_size)
            log.info("only the head trains: backbone features are computed once per row and cached")
        elif all(n.startswith(model.head_name + ".") for n in state.names):
            log.info("only the head trains, but its features are not cached: %s", reason)
    cls = VectorizedEngine if kind == "vectorized" else Engine
    return cls(
        model=model,
        state=state,
        data=data,
        fl=fl,
        strategy=spec.strategy,
        codec_up=spec.compression_up,
        codec_down=spec.compression_down,
        faults=faults if faults is not None else FaultPlan.from_config(fl.faults),
        method=spec.method,
        streams=Streams(spec.rng, spec.seed),
        privacy=spec.privacy if spec.privacy is not None else NoPrivacy(),
        wire=Wire(getattr(spec, "entropy", "none")),
        clock=clock,
        population=population,
    )
