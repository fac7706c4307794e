"""Client-level differential privacy (``privacy=``): clipping, Gaussian noise, accounting.

Each mechanism is a :class:`fedbench.contracts.Privacy` registered as ``privacy=<name>``:

* ``none`` (default): nothing changes.
* ``central``: DP-FedAvg with fixed clipping (McMahan et al. 2018). Each client clips its change
  ``w_k - w_start`` (the whole trainable state, one L2 norm) to ``clip`` and encodes the clipped
  change; the server decodes it and clips it again (so the bound holds on what is summed,
  whatever the codec did: int8 rounding, top-k's error-feedback residual), sums the clipped
  changes, adds ``N(0, (sigma * clip)^2)`` per coordinate and divides by the expected number of
  participants ``fl.clients_per_round``. Every client counts once (no sample weights: the
  sensitivity of a sum is per client). The strategy then aggregates that one noised average
  (FedAvg takes it as is; a server optimizer steps on ``average - global``).
* ``central_adaptive``: ``central`` with the clip adapted towards the ``target_quantile`` of the
  clients' change norms (Andrew et al. 2021, geometric update). Each client also sends one byte,
  whether its norm was within the clip; the server adds ``N(0, count_stddev^2)`` to their count.
  The two releases share the noise multiplier ``z``: the changes get
  ``z_update = (z^-2 - (2 count_stddev)^-2)^-1/2``, so the round is accounted as one Gaussian
  of multiplier ``z``.
* ``local``: each client clips its change and adds ``N(0, (sigma * clip)^2)`` itself, before
  encoding; the server aggregates the noised updates with the strategy, as usual.

Accounting (:mod:`fedbench.fl.accounting`) uses dp-accounting's RDP or PLD accountant; rows get
``epsilon`` (cumulative, at ``delta``), ``summary.json`` the final values. ``noise_multiplier``
gives sigma; ``target_epsilon`` instead calibrates sigma before the run for all its
``fl.num_rounds`` rounds.

Noise draws from its own streams (:mod:`fedbench.rng`, purpose ``privacy``): the server's per
round, a local client's per (round, client), the clipped count's per round, under ``rng=paired``
and ``rng=tutorial`` alike (derived from the run's seed either way), so privacy noise shifts no
other draw and a resumed run draws the same noise. The adaptive clip and the local reports per
client are checkpointed.

With ``clip: null`` and ``noise_multiplier: 0`` a mechanism does nothing (bit-equal to
``privacy=none``); with a clip and ``noise_multiplier: 0`` it clips without noise (epsilon
infinite).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar, Optional  # noqa: UP035 (OmegaConf reads typing generics)

import torch

from fedbench import registry
from fedbench.contracts import Privacy
from fedbench.errors import ConfigError
from fedbench.fl import accounting
from fedbench.fl.state import Payload
from fedbench.registry import check_choices, choice, register

__all__ = ["NoPrivacy", "Central", "CentralAdaptive", "Local", "l2_norm", "clip_to"]


def l2_norm(payload: Payload) -> float:
    """The L2 norm of a payload taken as one vector (float64 accumulation)."""
    return math.sqrt(sum(float(t.double().pow(2).sum()) for t in payload.values()))


def clip_to(payload: Payload, bound: float) -> tuple[Payload, float]:
    """(the payload scaled to L2 norm <= ``bound``, its norm before clipping)."""
    norm = l2_norm(payload)
    if norm <= bound:
        return {k: v.float() for k, v in payload.items()}, norm
    factor = bound / norm
    return {k: v.float() * factor for k, v in payload.items()}, norm


def gaussian_like(payload: Payload, std: float, generator: torch.Generator) -> Payload:
    """Independent N(0, std^2) values shaped like ``payload`` (drawn as one vector, in key order)."""
    sizes = [t.numel() for t in payload.values()]
    flat = torch.randn(sum(sizes), generator=generator, dtype=torch.float32) * std
    out, lo = {}, 0
    for (k, t), n in zip(payload.items(), sizes):
        out[k] = flat[lo : lo + n].view(t.shape)
        lo += n
    return out


@register("privacy", "none")
@dataclass
class NoPrivacy(Privacy):
    """No clipping, no noise, no accounting (``epsilon`` is NaN)."""


@dataclass
class _Gaussian(Privacy):
    """Shared settings and checks of the Gaussian mechanisms."""

    mode: ClassVar[str] = ""
    # L2 bound on a client's change (the whole trainable state); null = no clipping, allowed
    # only with noise_multiplier 0 (then the mechanism does nothing).
    clip: Optional[float] = 1.0  # noqa: UP045 (OmegaConf)
    # sigma: the noise's std is sigma * clip. null = 1.0, or calibrated from target_epsilon.
    noise_multiplier: Optional[float] = None  # noqa: UP045
    # Calibrate sigma up front so that epsilon after fl.num_rounds rounds is at most this.
    target_epsilon: Optional[float] = None  # noqa: UP045
    delta: float = 1e-5
    accountant: str = choice("rdp", accounting.ACCOUNTANTS)

    def __post_init__(self) -> None:
        check_choices(self, "privacy")
        sigma, target = self.noise_multiplier, self.target_epsilon
        if sigma is not None and not sigma >= 0:
            raise ConfigError(
                "privacy.noise_multiplier", "must be a float >= 0 (the noise's std is sigma * clip)", sigma
            )
        if self.clip is not None and not self.clip > 0:
            raise ConfigError("privacy.clip", "must be a float > 0 (null: no clipping)", self.clip)
        if not 0.0 < self.delta < 1.0:
            raise ConfigError("privacy.delta", "must be a probability in (0, 1)", self.delta)
        if target is not None:
            if not target > 0:
                raise ConfigError("privacy.target_epsilon", "must be a float > 0 (null: not used)", target)
            if sigma is not None:
                raise ConfigError(
                    "privacy.target_epsilon",
                    "set privacy.noise_multiplier or privacy.target_epsilon, not both "
                    "(set the other to null)",
                    target,
                )
        self._sigma = sigma if sigma is not None else (None if target is not None else 1.0)
        if self.clip is None and (target is not None or self._sigma):
            raise ConfigError(
                "privacy.clip",
                "null (no clipping) needs privacy.noise_multiplier=0: the noise is scaled to the clip",
                self.clip,
            )
        self._fl: tuple[int, int, int] | None = None  # (num_clients, clients_per_round, num_rounds)

    # -- settings that need the run (check_compatible) -----------------------------------------
    def check_compatible(self, components: dict[str, Any], fl: Any) -> None:
        if fl.sampling != "uniform":
            raise ConfigError(
                "fl.sampling",
                f"privacy={self.mode} accounts for uniform client sampling "
                "(q = clients_per_round / num_clients); use fl.sampling=uniform",
                fl.sampling,
            )
        method = components.get("method")
        if method is not None and method.has_server_protocol():
            raise ConfigError(
                f"privacy={self.mode}",
                "clips and noises the engine's aggregation, but "
                f"{type(method).__name__} aggregates with its own server protocol "
                "(method.aggregation=exact); use another aggregation",
            )
        self._fl = (fl.num_clients, fl.clients_per_round, fl.num_rounds)
        if self.target_epsilon is not None:
            try:
                self._sigma = self._calibrate()
            except accounting.Unreachable as exc:
                raise ConfigError(
                    "privacy.target_epsilon",
                    f"cannot be met in fl.num_rounds={fl.num_rounds} rounds at privacy.delta={self.delta} "
                    f"({exc}); raise the target, lower fl.num_rounds or raise privacy.delta",
                    self.target_epsilon,
                ) from None

    def _calibrate(self) -> float:
        raise NotImplementedError

    @property
    def sigma(self) -> float:
        """The noise multiplier in use (given, or calibrated from ``target_epsilon``)."""
        if self._sigma is None:
            raise RuntimeError("target_epsilon is calibrated by check_compatible (fedbench.config.validate)")
        return float(self._sigma)

    @property
    def sends_change(self) -> bool:  # type: ignore[override]
        return self.clip is not None

    @property
    def expected_participants(self) -> int:
        if self._fl is None:
            raise RuntimeError("privacy needs check_compatible (fedbench.config.validate) first")
        return self._fl[1]

    def summary(self, round: int) -> dict:
        num_clients, per_round, num_rounds = self._fl
        return {
            "mode": self.mode,
            "epsilon": self.epsilon(round),
            "delta": self.delta,
            "noise_multiplier": self.sigma,
            "clip": self.clip,
            "target_epsilon": self.target_epsilon,
            "accountant": self.accountant,
            "sampling_probability": per_round / num_clients,
        }


@register("privacy", "central")
@dataclass
class Central(_Gaussian):
    """DP-FedAvg with fixed clipping: clip on the client, noise on the decoded sum at the server."""

    mode: ClassVar[str] = "central"
    # What the accountant assumes of client selection (fedbench.fl.accounting).
    sampling: str = choice("poisson", accounting.SAMPLINGS)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.accountant == "pld" and self.sampling == "fixed_size":
            raise ConfigError(
                "privacy.sampling",
                "fixed_size is accounted with privacy.accountant=rdp only (dp-accounting has no "
                "fixed-size sampling for PLD); use rdp, or sampling=poisson",
                self.sampling,
            )
        self.norms: list[float] = []  # norms of the changes summed in the last round (diagnostic)

    def check_compatible(self, components: dict[str, Any], fl: Any) -> None:
        from fedbench.fl.strategies import Median, TrimmedMean

        strategy = components.get("strategy")
        if isinstance(strategy, (Median, TrimmedMean)):
            name = next(e.name for e in registry.entries("strategy") if e.cls is type(strategy))
            raise ConfigError(
                f"privacy={self.mode}",
                "calibrates its noise to the sensitivity of a sum of clipped changes, not of "
                f"strategy={name}'s output; use a mean-based strategy "
                "(fedavg, fedprox, fedavgm, fedadam, fedyogi, fedadagrad)",
            )
        super().check_compatible(components, fl)

    def _epsilon(self, sigma: float, rounds: int) -> float:
        num_clients, per_round, _ = self._fl
        return accounting.central_epsilon(
            sigma, rounds, self.delta, self.accountant, self.sampling, num_clients, per_round
        )

    def _calibrate(self) -> float:
        num_clients, per_round, num_rounds = self._fl
        return accounting.calibrate_central(
            self.target_epsilon,
            num_rounds,
            self.delta,
            self.accountant,
            self.sampling,
            num_clients,
            per_round,
        )

    def current_clip(self) -> float:
        return float(self.clip)

    def update_noise_multiplier(self) -> float:
        """The multiplier of the noise on the sum of changes (sigma; less under adaptive clipping)."""
        return self.sigma

    def client(self, change: Payload, round: int, client: int, streams: Any):
        clipped, _ = clip_to(change, self.current_clip())
        return clipped, {}

    def aggregate(self, start, updates, round, streams):
        if not self.sends_change:
            return None  # clipping off (and no noise): the strategy aggregates as privacy=none
        bound = self.current_clip()
        total = {k: torch.zeros(v.shape, dtype=torch.float32) for k, v in start.items()}
        self.norms = []
        for _, _, update in updates:
            change, _ = clip_to({k: update[k].float() - start[k].float() for k in start}, bound)
            self.norms.append(l2_norm(change))
            for k in total:
                total[k] += change[k]
        z = self.update_noise_multiplier()
        if z > 0:
            noise = gaussian_like(total, z * bound, streams.torch("privacy", round))
            for k in total:
                total[k] += noise[k]
        m = self.expected_participants
        return {k: start[k].float() + total[k] / m for k in start}

    def epsilon(self, round: int) -> float:
        return self._epsilon(self.sigma, round) if self.sends_change else math.inf

    def summary(self, round: int) -> dict:
        return {
            **super().summary(round),
            "sampling": self.sampling,
            "epsilon_per_round": self.epsilon(1),
        }


@register("privacy", "central_adaptive")
@dataclass
class CentralAdaptive(Central):
    """Central DP with the clip adapted to a quantile of the change norms (Andrew et al. 2021)."""

    mode: ClassVar[str] = "central_adaptive"
    target_quantile: float = 0.5  # the fraction of clients whose change should fit the clip
    clip_lr: float = 0.2  # eta of the geometric update clip *= exp(-eta (unclipped - quantile))
    # std of the noise on the count of unclipped clients; null = the noise multiplier
    count_stddev: Optional[float] = None  # noqa: UP045 (OmegaConf)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.clip is None:
            raise ConfigError("privacy.clip", "adaptive clipping starts from privacy.clip; it cannot be null")
        if not 0.0 < self.target_quantile < 1.0:
            raise ConfigError("privacy.target_quantile", "must be a fraction in (0, 1)", self.target_quantile)
        if not self.clip_lr > 0:
            raise ConfigError("privacy.clip_lr", "must be a float > 0", self.clip_lr)
        if self.count_stddev is not None and not self.count_stddev >= 0:
            raise ConfigError("privacy.count_stddev", "must be a float >= 0 (null: sigma)", self.count_stddev)
        self._clip_now = float(self.clip)
        self._bits: dict[int, int] = {}

    def check_compatible(self, components, fl) -> None:
        super().check_compatible(components, fl)
        z, s = self.sigma, self.count_stddev_value()
        if z > 0 and not 2 * s > z:
            raise ConfigError(
                "privacy.count_stddev",
                f"must be > noise_multiplier / 2 = {z / 2:.4g}: the count's noise and the update's "
                "share the noise multiplier (z^-2 = z_update^-2 + (2 count_stddev)^-2)",
                s,
            )

    def count_stddev_value(self) -> float:
        return self.sigma if self.count_stddev is None else float(self.count_stddev)

    def update_noise_multiplier(self) -> float:
        z = self.sigma
        if z <= 0:
            return 0.0
        return (z**-2 - (2 * self.count_stddev_value()) ** -2) ** -0.5

    def current_clip(self) -> float:
        return self._clip_now

    def client(self, change, round, client, streams):
        clipped, norm = clip_to(change, self._clip_now)
        bit = int(norm <= self._clip_now)
        self._bits[client] = bit
        # whether the change fitted the clip: one byte on the wire
        return clipped, {"unclipped": (torch.tensor([bit], dtype=torch.uint8),)}

    def aggregate(self, start, updates, round, streams):
        out = super().aggregate(start, updates, round, streams)
        count = float(sum(self._bits.get(cid, 0) for cid, _, _ in updates))
        s = self.count_stddev_value()
        if s > 0:
            count += float(streams.numpy("privacy", round, "count").normal(0.0, s))
        fraction = count / self.expected_participants
        self._clip_now = self._clip_now * math.exp(-self.clip_lr * (fraction - self.target_quantile))
        self._bits = {}
        return out

    def state_dict(self):
        return {}, {"clip": self._clip_now}

    def load_state_dict(self, tensors, meta) -> None:
        self._clip_now = float(meta.get("clip", self.clip))
        self._bits = {}

    def summary(self, round: int) -> dict:
        return {
            **super().summary(round),
            "final_clip": self._clip_now,
            "target_quantile": self.target_quantile,
            "update_noise_multiplier": self.update_noise_multiplier(),
            "count_stddev": self.count_stddev_value(),
        }


@register("privacy", "local")
@dataclass
class Local(_Gaussian):
    """Local DP at the update level: each client clips and noises its change before encoding."""

    mode: ClassVar[str] = "local"

    def __post_init__(self) -> None:
        super().__post_init__()
        self._reports: dict[int, int] = {}  # client -> noised changes it has sent

    def _calibrate(self) -> float:
        # the worst case: a client that reports in every round
        return accounting.calibrate_local(self.target_epsilon, self._fl[2], self.delta, self.accountant)

    def client(self, change, round, client, streams):
        clipped, _ = clip_to(change, float(self.clip))
        if self.sigma > 0:
            noise = gaussian_like(
                clipped, self.sigma * float(self.clip), streams.torch("privacy", round, client)
            )
            clipped = {k: v + noise[k] for k, v in clipped.items()}
        self._reports[client] = self._reports.get(client, 0) + 1
        return clipped, {}

    def epsilon(self, round: int) -> float:
        if not self.sends_change:
            return math.inf
        return accounting.local_epsilon(
            self.sigma, max(self._reports.values(), default=0), self.delta, self.accountant
        )

    def state_dict(self):
        return {}, {"reports": [[int(c), int(n)] for c, n in sorted(self._reports.items())]}

    def load_state_dict(self, tensors, meta) -> None:
        self._reports = {int(c): int(n) for c, n in meta.get("reports", [])}

    def summary(self, round: int) -> dict:
        per_round = (
            accounting.local_epsilon(self.sigma, 1, self.delta, self.accountant)
            if self.sends_change
            else math.inf
        )
        return {
            **super().summary(round),
            "epsilon_per_round": per_round,
            "max_reports": max(self._reports.values(), default=0),
            "accounting": "per client, over its reports; worst case over clients",
        }
