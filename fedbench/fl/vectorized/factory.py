"""Choosing the run's engine: exact or vectorised, with or without the feature cache."""

from __future__ import annotations

import logging

from torch import nn

from fedbench.errors import ConfigError
from fedbench.fl.engine import Engine
from fedbench.fl.faults import FaultPlan
from fedbench.fl.feature_cache import cache_features, why_not_cacheable
from fedbench.fl.privacy import NoPrivacy
from fedbench.fl.state import FlatParams
from fedbench.fl.vectorized.engine import VectorizedEngine
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
    )
