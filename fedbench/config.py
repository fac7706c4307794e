"""Config schemas and validation.

Every component (model, method, data, strategy, codec) is a dataclass named by the ``_target_``
of its YAML file; that dataclass *is* its schema. :func:`instantiate` merges a YAML section into
it (catching unknown keys and wrong types) and its ``__post_init__`` checks values, so a bad
config fails with one :class:`ConfigError` line before any training starts.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from dataclasses import dataclass, field
from typing import Any, List

from hydra.utils import get_class
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

COMPONENT_GROUPS = ("model", "method", "data", "strategy")


class ConfigError(ValueError):
    """A config value that cannot run. ``str()`` is one line naming the key and what is allowed."""

    def __init__(self, key: str, allowed: str, value: Any = dataclasses.MISSING) -> None:
        self.key, self.allowed, self.value = key, allowed, value
        shown = "" if value is dataclasses.MISSING else f"={value!r}"
        super().__init__(f"{key}{shown}: {allowed}")


@dataclass
class FLConfig:
    """The federated loop. Names follow the tutorial's ``FoundationConfig``."""

    num_rounds: int = 30
    num_clients: int = 10
    clients_per_round: int = 5
    local_epochs: int = 2
    batch_size: int = 16
    lr: float = 0.001
    weight_decay: float = 0.01
    # Client selection draws from numpy's legacy RandomState with this seed. The tutorial's test
    # set reseeds numpy's global RNG with 999 last, so its selection always starts from 999.
    sampling_seed: int = 999
    eval_batch_size: int = 64
    # Use a model's hand-written training step when it has one (bit-identical to autograd).
    fast_step: bool = True
    # "exact" (bit-exact with the tutorial) or "vectorized" (all selected clients at once).
    engine: str = "exact"
    # Head-only training on a frozen backbone: compute backbone features once and cache them.
    feature_cache: bool = True
    # Client sampling: "uniform" (the tutorial) or "weighted" by local data size.
    sampling: str = "uniform"
    # Probability that a selected client trains but its update never arrives.
    dropout: float = 0.0
    # Injected faults, "KIND:CLIENT:ROUND" (see fedbench.fl.faults).
    faults: List[str] = field(default_factory=list)  # noqa: UP006 (OmegaConf)

    def __post_init__(self) -> None:
        for key in ("num_rounds", "num_clients", "clients_per_round", "local_epochs", "batch_size",
                    "eval_batch_size"):
            if getattr(self, key) < 1:
                raise ConfigError(f"fl.{key}", "must be an integer >= 1", getattr(self, key))
        if self.clients_per_round > self.num_clients:
            raise ConfigError("fl.clients_per_round",
                              f"must be <= fl.num_clients ({self.num_clients})",
                              self.clients_per_round)
        if not self.lr > 0:
            raise ConfigError("fl.lr", "must be a float > 0", self.lr)
        if self.weight_decay < 0:
            raise ConfigError("fl.weight_decay", "must be a float >= 0", self.weight_decay)
        if self.engine not in ("exact", "vectorized"):
            raise ConfigError("fl.engine", "must be one of: exact, vectorized", self.engine)
        if self.sampling not in ("uniform", "weighted"):
            raise ConfigError("fl.sampling", "must be one of: uniform, weighted", self.sampling)
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError("fl.dropout", "must be a probability in [0, 1)", self.dropout)
        from fedbench.fl.faults import parse_fault

        for spec in self.faults:
            parse_fault(spec)
        if self.sampling_seed < 0:
            raise ConfigError("fl.sampling_seed", "must be an integer >= 0", self.sampling_seed)


@dataclass
class RunSpec:
    """A validated run: typed top-level values and instantiated components."""

    seed: int
    threads: int | None
    resume: bool
    checkpoint_every: int
    fl: FLConfig
    model: Any
    method: Any
    data: Any
    strategy: Any
    compression_up: Any
    compression_down: Any
    resolved: dict = field(repr=False)

    @property
    def config_hash(self) -> str:
        return config_hash(self.resolved)


def config_hash(resolved: dict) -> str:
    """Identity of a resolved config: sha256 of its canonical JSON, minus ``threads``.

    Thread count is recorded separately (it changes float rounding, not the experiment);
    ``resume``/``checkpoint_every`` say how a run is executed, not what it computes.
    """
    ident = {k: v for k, v in resolved.items() if k not in ("threads", "resume", "checkpoint_every")}
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:12]


def _merge_into(schema: type, section: Any, key: str) -> Any:
    """Merge a config section into a dataclass schema and build the instance."""
    try:
        base = OmegaConf.structured(schema)
        merged = OmegaConf.merge(base, section)
        return OmegaConf.to_object(merged)
    except ConfigError:
        raise
    except OmegaConfBaseException as exc:
        sub = getattr(exc, "key", None)
        full = f"{key}.{sub}" if sub else key
        reason = str(exc).splitlines()[0]
        if "not in struct" in reason or re.search(r"Key '.*' not in '", reason) or "not in the dataclass" in reason or "has no attribute" in reason:
            known = ", ".join(f.name for f in dataclasses.fields(schema))
            raise ConfigError(full, f"unknown key; known keys of {key}: {known}") from None
        conv = re.match(r"Value '(.*)' of type '(\w+)' could not be converted to (\w+)", reason)
        if conv:
            raise ConfigError(full, f"must be of type {conv.group(3).lower()}", conv.group(1)) from None
        raise ConfigError(full, reason) from None


def instantiate(section: Any, key: str) -> Any:
    """Build the component a config section names with ``_target_``."""
    if not isinstance(section, (dict, DictConfig)) or "_target_" not in section:
        raise ConfigError(key, "must be a config group option with a _target_")
    data = OmegaConf.to_container(section, resolve=True) if isinstance(section, DictConfig) else dict(section)
    target = data.pop("_target_")
    try:
        cls = get_class(target)
    except Exception:  # noqa: BLE001 - hydra raises several kinds here
        raise ConfigError(f"{key}._target_", "names no importable class", target) from None
    if not dataclasses.is_dataclass(cls):
        raise ConfigError(f"{key}._target_", "must name a dataclass component", target)
    return _merge_into(cls, data, key)


def validate(cfg: DictConfig | dict) -> RunSpec:
    """Check a composed config and build its components. Raises :class:`ConfigError`."""
    if isinstance(cfg, dict):
        cfg = OmegaConf.create(cfg)
    try:
        resolved = OmegaConf.to_container(cfg, resolve=True)
    except OmegaConfBaseException as exc:
        raise ConfigError(str(getattr(exc, "full_key", "config")), str(exc).splitlines()[0]) from None
    allowed_top = {"seed", "threads", "resume", "checkpoint_every", "fl", "compression", *COMPONENT_GROUPS}
    for key in resolved:
        if key not in allowed_top:
            raise ConfigError(key, f"unknown key; known top-level keys: {', '.join(sorted(allowed_top))}")
    for key in ("seed", "fl", "compression", *COMPONENT_GROUPS):
        if key not in resolved:
            raise ConfigError(key, "is missing")
    seed = resolved["seed"]
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ConfigError("seed", "must be an integer >= 0", seed)
    threads = resolved.get("threads")
    if threads is not None and (not isinstance(threads, int) or isinstance(threads, bool) or threads < 1):
        raise ConfigError("threads", "must be null (torch's default) or an integer >= 1", threads)
    resume = resolved.get("resume", True)
    if not isinstance(resume, bool):
        raise ConfigError("resume", "must be true or false (or, on the command line, a run folder)", resume)
    every = resolved.get("checkpoint_every", 1)
    if not isinstance(every, int) or isinstance(every, bool) or every < 0:
        raise ConfigError("checkpoint_every", "must be an integer >= 0 (0 = no checkpoints)", every)
    fl = _merge_into(FLConfig, resolved["fl"], "fl")
    comps = {k: instantiate(resolved[k], k) for k in COMPONENT_GROUPS}
    # Cross-component checks (e.g. the model's classes cover the data's labels), before training.
    for comp in comps.values():
        check = getattr(comp, "check_compatible", None)
        if check is not None:
            check(comps, fl)
    comp = resolved["compression"]
    if not isinstance(comp, dict) or set(comp) != {"up", "down"}:
        raise ConfigError("compression", "must have exactly the keys 'up' and 'down'")
    up = instantiate(comp["up"], "compression.up")
    down = instantiate(comp["down"], "compression.down")
    return RunSpec(seed=seed, threads=threads, resume=resume, checkpoint_every=every, fl=fl, compression_up=up, compression_down=down,
                   resolved=resolved, **comps)
