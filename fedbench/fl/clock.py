"""The simulated clock: how long a round takes over the clients' links and devices (``system=``).

Modelled, not measured, so it is the same on any machine and engine. For client ``k``:

- downlink: the bytes it is sent / its downlink bandwidth + latency;
- compute: ``local_epochs * n_k * flops_per_sample`` / (``system.device_gflops`` * 1e9 *
  its ``compute_scale``), with ``flops_per_sample`` the FLOPs of one training step (forward and
  backward) per sample, counted once per run by torch's FLOP counter
  (:func:`train_flops_per_sample`);
- uplink: the bytes it sends / its uplink bandwidth + latency.

Bytes are the messages' wire sizes (:mod:`fedbench.fl.wire`; zstd sizes under
``compression.entropy=zstd``). A round lasts as long as its slowest reporting client; with
``system.deadline_s``, clients that cannot finish in time are stragglers: their downlink is
counted, their update is discarded and its uplink not counted, and the round lasts the deadline.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from fedbench.contracts import Population
from fedbench.fl.loss import task_loss
from fedbench.fl.state import FlatParams


def train_flops_per_sample(model: nn.Module, state: FlatParams, x: torch.Tensor, y: torch.Tensor) -> float:
    """FLOPs of one training step per sample: forward and backward (gradients of the trainable
    parameters only, as autograd computes them) of the batch ``x, y``, counted by
    :class:`torch.utils.flop_counter.FlopCounterMode` (matmuls, attention, convolutions; the
    elementwise rest is not counted). Leaves every parameter, gradient and RNG as it was."""
    from torch.utils.flop_counter import FlopCounterMode

    rng = torch.get_rng_state()
    training = model.training
    grads = state.grad.clone()
    model.eval()  # no dropout draws; dropout costs no matmul FLOPs
    try:
        counter = FlopCounterMode(display=False)
        with counter, torch.enable_grad():
            loss = task_loss(model(x.to(state.flat.device)), y.to(state.flat.device))
            if loss.requires_grad:
                loss.backward()
        flops = counter.get_total_flops()
    finally:
        state.grad.copy_(grads)
        model.train(training)
        torch.set_rng_state(rng)
    return flops / max(1, len(y))


@dataclass
class ClientTime:
    """One client's simulated seconds: downlink, compute, uplink (``up_s`` NaN: not sent)."""

    down_s: float
    compute_s: float
    up_s: float

    @property
    def total(self) -> float:
        return self.down_s + self.compute_s + self.up_s


@dataclass
class Clock:
    """Simulated time for one run: the clients' links (``population``) and the FLOPs per sample."""

    population: Population
    flops_per_sample: float
    local_epochs: int

    @property
    def deadline_s(self) -> float | None:
        return self.population.system.deadline_s

    def client(self, client: int, samples: int, down_bytes: int, up_bytes: int) -> ClientTime:
        link = self.population.link(client)
        gflops = self.population.system.device_gflops * link.compute_scale
        return ClientTime(
            down_s=down_bytes * 8 / (link.down_mbps * 1e6) + link.latency_ms / 1000,
            compute_s=self.local_epochs * samples * self.flops_per_sample / (gflops * 1e9),
            up_s=up_bytes * 8 / (link.up_mbps * 1e6) + link.latency_ms / 1000,
        )

    def late(self, t: ClientTime) -> bool:
        """Whether a client with times ``t`` misses the deadline (never, without one)."""
        return self.deadline_s is not None and t.total > self.deadline_s

    def round_seconds(self, reported: list[ClientTime], tried: list[ClientTime], stragglers: int) -> float:
        """The round's length: the deadline if anyone missed it, else the slowest reporting
        client; with no report at all, the deadline or the slowest client's download+compute."""
        if stragglers and self.deadline_s is not None:
            return float(self.deadline_s)
        if reported:
            return max(t.total for t in reported)
        if self.deadline_s is not None:
            return float(self.deadline_s)
        return max((t.down_s + t.compute_s for t in tried), default=0.0)
