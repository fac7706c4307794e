"""The simulated system (``system=``): every client's link (down/up bandwidth, latency) and device
speed, from which :mod:`fedbench.fl.clock` computes how long each round takes.

Presets (conf/system/): ``none`` (no clock), ``datacenter``, ``wifi``, ``lte`` (every client the
same, :class:`UniformSystem`), ``mixed_mobile`` (a bandwidth tier and a device tier drawn per
client from the run's seed, :class:`TieredSystem`) and ``trace`` (one row per client from a CSV,
:class:`TraceSystem`). Mbps = 10^6 bits/s. The numbers of the presets are round modelling
assumptions (documented in docs/system.md), not measurements.

A client's link is a pure function of (seed, client) (:mod:`fedbench.rng` purpose ``system``),
so the population costs nothing until a client is asked for, and a resumed run sees the same links.
"""

from __future__ import annotations

import csv
import functools
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional  # noqa: UP035 (OmegaConf reads typing generics)

from fedbench.contracts import Link, System
from fedbench.errors import ConfigError
from fedbench.registry import register
from fedbench.rng import numpy_generator

TRACE_COLUMNS = ("client", "down_mbps", "up_mbps", "latency_ms", "compute_scale")


def _positive(key: str, value: float) -> None:
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
        raise ConfigError(key, "must be a number > 0", value)


def _common(system) -> None:
    _positive("system.device_gflops", system.device_gflops)
    if system.deadline_s is not None:
        _positive("system.deadline_s", system.deadline_s)


@register("system", "none")
@dataclass
class NoSystem(System):
    """No simulated clock: the ``sim_*`` columns stay NaN and nothing else changes."""

    active = False


@register("system", "uniform")
@dataclass
class UniformSystem(System):
    """Every client has the same link and device (the ``datacenter``, ``wifi``, ``lte`` presets)."""

    down_mbps: float = 100.0
    up_mbps: float = 25.0
    latency_ms: float = 20.0
    compute_scale: float = 1.0
    device_gflops: float = 1000.0
    deadline_s: Optional[float] = None  # noqa: UP045 (OmegaConf)

    active = True

    def __post_init__(self) -> None:
        for key in ("down_mbps", "up_mbps", "compute_scale"):
            _positive(f"system.{key}", getattr(self, key))
        if not self.latency_ms >= 0:
            raise ConfigError("system.latency_ms", "must be a number >= 0", self.latency_ms)
        _common(self)

    def link(self, client: int, seed: int) -> Link:
        return Link(self.down_mbps, self.up_mbps, self.latency_ms, self.compute_scale)


def _check_tiers(key: str, probs: list[float], n: int) -> None:
    if len(probs) != n:
        raise ConfigError(key, f"must have one probability per tier ({n})", probs)
    if any(not p >= 0 for p in probs) or not math.isclose(sum(probs), 1.0, abs_tol=1e-9):
        raise ConfigError(key, "must be probabilities >= 0 that sum to 1", probs)


@register("system", "tiered")
@dataclass
class TieredSystem(System):
    """A bandwidth tier (``down_mbps[t]``, ``up_mbps[t]``, ``latency_ms[t]`` with probability
    ``tier_probs[t]``) and a device tier (``compute_scales[d]`` with probability
    ``compute_probs[d]``) drawn independently for each client from stream (seed, ``system``,
    client): the ``mixed_mobile`` preset."""

    down_mbps: List[float] = field(default_factory=lambda: [2.0, 25.0, 100.0])  # noqa: UP006
    up_mbps: List[float] = field(default_factory=lambda: [0.5, 5.0, 25.0])  # noqa: UP006
    latency_ms: List[float] = field(default_factory=lambda: [150.0, 50.0, 20.0])  # noqa: UP006
    tier_probs: List[float] = field(default_factory=lambda: [0.3, 0.4, 0.3])  # noqa: UP006
    compute_scales: List[float] = field(default_factory=lambda: [0.25, 1.0, 4.0])  # noqa: UP006
    compute_probs: List[float] = field(default_factory=lambda: [0.3, 0.4, 0.3])  # noqa: UP006
    device_gflops: float = 200.0
    deadline_s: Optional[float] = None  # noqa: UP045 (OmegaConf)

    active = True

    def __post_init__(self) -> None:
        n = len(self.down_mbps)
        if n == 0:
            raise ConfigError("system.down_mbps", "must list at least one tier", self.down_mbps)
        for key in ("up_mbps", "latency_ms"):
            if len(getattr(self, key)) != n:
                raise ConfigError(f"system.{key}", f"must have one value per tier ({n})", getattr(self, key))
        for key in ("down_mbps", "up_mbps", "compute_scales"):
            for v in getattr(self, key):
                _positive(f"system.{key}", v)
        if any(not v >= 0 for v in self.latency_ms):
            raise ConfigError("system.latency_ms", "must be numbers >= 0", self.latency_ms)
        _check_tiers("system.tier_probs", self.tier_probs, n)
        _check_tiers("system.compute_probs", self.compute_probs, len(self.compute_scales))
        _common(self)

    def link(self, client: int, seed: int) -> Link:
        rng = numpy_generator(seed, "system", client)
        t = int(rng.choice(len(self.tier_probs), p=self.tier_probs))
        d = int(rng.choice(len(self.compute_probs), p=self.compute_probs))
        return Link(self.down_mbps[t], self.up_mbps[t], self.latency_ms[t], self.compute_scales[d])


@functools.lru_cache(maxsize=4)
def read_trace(path: str) -> dict[int, Link]:
    """A trace CSV (header ``client,down_mbps,up_mbps,latency_ms,compute_scale``) as client ->
    :class:`Link`; one clear :class:`ConfigError` for anything that cannot be used."""
    file = Path(path)
    if not file.is_file():
        raise ConfigError("system.path", "must be an existing CSV file", path)
    links: dict[int, Link] = {}
    try:
        with open(file, newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            if tuple(reader.fieldnames or ()) != TRACE_COLUMNS:
                raise ConfigError(
                    "system.path", f"must have the header {','.join(TRACE_COLUMNS)}", reader.fieldnames
                )
            for line, raw in enumerate(reader, start=2):
                try:
                    cid = int(raw["client"])
                    values = [float(raw[k]) for k in TRACE_COLUMNS[1:]]
                except (TypeError, ValueError):
                    raise ConfigError("system.path", f"line {line}: not numbers", path) from None
                if cid < 0 or cid in links:
                    raise ConfigError(
                        "system.path", f"line {line}: client {cid} is negative or repeated", path
                    )
                down, up, latency, scale = values
                for name, v in (("down_mbps", down), ("up_mbps", up), ("compute_scale", scale)):
                    if not (math.isfinite(v) and v > 0):
                        raise ConfigError("system.path", f"line {line}: {name} must be > 0, got {v}", path)
                if not (math.isfinite(latency) and latency >= 0):
                    raise ConfigError("system.path", f"line {line}: latency_ms must be >= 0", path)
                links[cid] = Link(down, up, latency, scale)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise ConfigError("system.path", f"cannot be read ({type(exc).__name__})", path) from None
    return links


@register("system", "trace")
@dataclass
class TraceSystem(System):
    """Each client's link and device speed from a CSV (``system.path``), one row per client id."""

    path: Optional[str] = None  # noqa: UP045 (OmegaConf)
    device_gflops: float = 200.0
    deadline_s: Optional[float] = None  # noqa: UP045 (OmegaConf)

    active = True

    def __post_init__(self) -> None:
        if self.path is None:
            raise ConfigError(
                "system.path",
                f"is required for system=trace: a CSV with the header {','.join(TRACE_COLUMNS)}",
            )
        _common(self)

    def check_compatible(self, comps: dict, fl) -> None:
        links = read_trace(str(self.path))
        missing = [c for c in range(fl.num_clients) if c not in links]
        if missing:
            raise ConfigError(
                "system.path",
                f"has no row for client {missing[0]} ({len(missing)} of the {fl.num_clients} clients "
                "are missing); give one row per client id 0..fl.num_clients-1",
                self.path,
            )

    def link(self, client: int, seed: int) -> Link:
        return read_trace(str(self.path))[client]
