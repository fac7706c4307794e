"""Server strategies: turn the clients' decoded updates into the next global payload."""

from __future__ import annotations

from dataclasses import dataclass

from fedbench.fl.state import Payload


class Strategy:
    def aggregate(self, global_payload: Payload, updates: list[tuple[int, Payload]]) -> Payload:
        raise NotImplementedError


@dataclass
class FedAvg(Strategy):
    """McMahan et al. 2017: average of client weights, weighted by their sample counts.

    Written as the tutorial writes it (a Python ``sum`` of ``(n_k / n) * w_k`` in client order),
    because float addition order decides the last bits.
    """

    def aggregate(self, global_payload: Payload, updates: list[tuple[int, Payload]]) -> Payload:
        total = sum(n for n, _ in updates)
        return {key: sum((n / total) * u[key].float() for n, u in updates) for key in updates[0][1]}


def _stack(updates: list[tuple[int, Payload]], key: str):
    import torch

    return torch.stack([u[key].float() for _, u in updates])


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


@dataclass
class TrimmedMean(Strategy):
    """Coordinate-wise trimmed mean (Yin et al. 2018): drop the ``beta`` fraction of largest and
    of smallest values per coordinate, average the rest (unweighted)."""

    beta: float = 0.2

    def __post_init__(self) -> None:
        from fedbench.config import ConfigError

        if not 0.0 <= self.beta < 0.5:
            raise ConfigError("strategy.beta", "must be a fraction in [0, 0.5)", self.beta)

    def aggregate(self, global_payload: Payload, updates: list[tuple[int, Payload]]) -> Payload:
        out = {}
        for key in updates[0][1]:
            s = _stack(updates, key).sort(dim=0).values
            k = s.shape[0]
            cut = min(int(self.beta * k), (k - 1) // 2)
            out[key] = s[cut:k - cut].mean(dim=0)
        return out
