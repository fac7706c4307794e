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
