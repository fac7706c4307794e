"""Server strategies: turn the clients' decoded updates into the next global payload.

Each is a :class:`fedbench.contracts.Strategy` registered as ``strategy=<name>``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fedbench.contracts import Strategy
from fedbench.errors import ConfigError
from fedbench.fl.state import Payload
from fedbench.registry import register

__all__ = [
    "Strategy",
    "FedAvg",
    "Median",
    "TrimmedMean",
    "FedProx",
    "ServerOptimizer",
    "FedAvgM",
    "FedAdagrad",
    "FedAdam",
    "FedYogi",
]


@register("strategy", "fedavg")
@dataclass
class FedAvg(Strategy):
    """McMahan et al. 2017: average of client weights, weighted by their sample counts.

    Written as the tutorial writes it (a Python ``sum`` of ``(n_k / n) * w_k`` in client order),
    because float addition order decides the last bits.
    """

    weighted_mean = True

    def aggregate(self, global_payload: Payload, updates: list[tuple[int, Payload]]) -> Payload:
        total = sum(n for n, _ in updates)
        return {key: sum((n / total) * u[key].float() for n, u in updates) for key in updates[0][1]}


def _stack(updates: list[tuple[int, Payload]], key: str):
    return torch.stack([u[key].float() for _, u in updates])


@register("strategy", "median")
@dataclass
class Median(Strategy):
    """Coordinate-wise median of the client states (Yin et al. 2018): robust to a minority of
    arbitrary (Byzantine) updates; ignores sample counts. With an even number of clients the
    two middle values are averaged."""

    def aggregate(self, global_payload: Payload, updates: list[tuple[int, Payload]]) -> Payload:
        out = {}
        for key in updates[0][1]:
            s = _stack(updates, key).sort(dim=0).values
            k = s.shape[0]
            out[key] = s[k // 2] if k % 2 else (s[k // 2 - 1] + s[k // 2]) / 2
        return out


@register("strategy", "trimmed_mean")
@dataclass
class TrimmedMean(Strategy):
    """Coordinate-wise trimmed mean (Yin et al. 2018): drop the ``beta`` fraction of largest and
    of smallest values per coordinate, average the rest (unweighted)."""

    beta: float = 0.2

    def __post_init__(self) -> None:
        if not 0.0 <= self.beta < 0.5:
            raise ConfigError("strategy.beta", "must be a fraction in [0, 0.5)", self.beta)

    def aggregate(self, global_payload: Payload, updates: list[tuple[int, Payload]]) -> Payload:
        out = {}
        for key in updates[0][1]:
            s = _stack(updates, key).sort(dim=0).values
            k = s.shape[0]
            cut = min(int(self.beta * k), (k - 1) // 2)
            out[key] = s[cut : k - cut].mean(dim=0)
        return out


@register("strategy", "fedprox")
@dataclass
class FedProx(FedAvg):
    """FedProx (Li et al. 2020): FedAvg's aggregation; each client adds the proximal term
    ``mu/2 ||w - w_global||^2`` to its local loss (the engine passes it to local training)."""

    mu: float = 0.01

    def __post_init__(self) -> None:
        if not self.mu >= 0:
            raise ConfigError("strategy.mu", "must be a float >= 0", self.mu)

    @property
    def proximal_mu(self) -> float:
        return self.mu


class ServerOptimizer(Strategy):
    """A server optimizer on the pseudo-gradient ``delta = FedAvg(updates) - global``
    (Reddi et al. 2021, "Adaptive Federated Optimization", Algorithm 2).

    The new global payload is ``global + step(delta)``; the optimizer's moments are per payload
    key, created on first use (zeros for the first moment, ``tau^2`` for the second as in the
    paper's ``v_{-1} >= tau^2``) and are part of the checkpoint (:meth:`state_dict`). Keys the
    updates do not carry are left alone. As in the paper there is no bias correction.
    """

    def _ensure_state(self) -> None:
        if not hasattr(self, "_m"):
            self._m: dict = {}
            self._v: dict = {}
            self.steps = 0

    def aggregate(self, global_payload: Payload, updates: list[tuple[int, Payload]]) -> Payload:
        self._ensure_state()
        mean = FedAvg.aggregate(self, global_payload, updates)
        self.steps += 1
        out = dict(global_payload)
        for key, avg in mean.items():
            w = global_payload[key].float()
            out[key] = w + self._step(key, avg - w)
        return out

    def _step(self, key: str, delta):
        raise NotImplementedError

    def state_dict(self):
        self._ensure_state()
        tensors = {f"m/{k}": v for k, v in self._m.items()}
        tensors.update({f"v/{k}": v for k, v in self._v.items()})
        return tensors, {"steps": self.steps}

    def load_state_dict(self, tensors, meta) -> None:
        self._ensure_state()
        self._m = {k[2:]: v.clone() for k, v in tensors.items() if k.startswith("m/")}
        self._v = {k[2:]: v.clone() for k, v in tensors.items() if k.startswith("v/")}
        self.steps = int(meta.get("steps", 0))


def _check(name: str, value: float, ok: bool, allowed: str) -> None:
    if not ok:
        raise ConfigError(f"strategy.{name}", allowed, value)


@register("strategy", "fedavgm")
@dataclass
class FedAvgM(ServerOptimizer):
    """FedAvg with server momentum (Hsu et al. 2019): ``v = momentum * v + delta``,
    ``w = w + lr * v``. ``momentum = 0, lr = 1`` is FedAvg (up to rounding)."""

    lr: float = 1.0
    momentum: float = 0.9

    def __post_init__(self) -> None:
        _check("lr", self.lr, self.lr > 0, "must be a float > 0")
        _check("momentum", self.momentum, 0 <= self.momentum < 1, "must be a float in [0, 1)")

    def _step(self, key, delta):
        v = self._m.get(key)
        v = delta.clone() if v is None else v.mul_(self.momentum).add_(delta)
        self._m[key] = v
        return self.lr * v


@dataclass
class _Adaptive(ServerOptimizer):
    lr: float = 0.03  # server learning rate (eta)
    beta1: float = 0.9
    beta2: float = 0.99
    tau: float = 1e-3  # adaptivity: larger tau = closer to server SGD with momentum

    def __post_init__(self) -> None:
        _check("lr", self.lr, self.lr > 0, "must be a float > 0")
        _check("beta1", self.beta1, 0 <= self.beta1 < 1, "must be a float in [0, 1)")
        _check("beta2", self.beta2, 0 <= self.beta2 < 1, "must be a float in [0, 1)")
        _check("tau", self.tau, self.tau > 0, "must be a float > 0")

    def _step(self, key, delta):
        m = self._m.get(key)
        m = (1 - self.beta1) * delta if m is None else m.mul_(self.beta1).add_(delta, alpha=1 - self.beta1)
        self._m[key] = m
        v = self._v.get(key)
        if v is None:
            v = torch.full_like(delta, self.tau**2)
        self._v[key] = v = self._second_moment(v, delta * delta)
        return self.lr * m / (v.sqrt() + self.tau)

    def _second_moment(self, v, sq):
        raise NotImplementedError


@register("strategy", "fedadagrad")
@dataclass
class FedAdagrad(_Adaptive):
    """Reddi et al. 2021: ``m = b1 m + (1-b1) delta``, ``v = v + delta^2``,
    ``w = w + lr * m / (sqrt(v) + tau)`` (``beta2`` is unused)."""

    lr: float = 0.1

    def _second_moment(self, v, sq):
        return v.add_(sq)


@register("strategy", "fedadam")
@dataclass
class FedAdam(_Adaptive):
    """Reddi et al. 2021: ``v = b2 v + (1-b2) delta^2``; otherwise as FedAdagrad."""

    def _second_moment(self, v, sq):
        return v.mul_(self.beta2).add_(sq, alpha=1 - self.beta2)


@register("strategy", "fedyogi")
@dataclass
class FedYogi(_Adaptive):
    """Reddi et al. 2021: ``v = v - (1-b2) delta^2 sign(v - delta^2)`` (additive, sign-controlled
    growth of the second moment); otherwise as FedAdam."""

    def _second_moment(self, v, sq):
        return v.sub_((1 - self.beta2) * sq * torch.sign(v - sq))
