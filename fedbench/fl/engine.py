"""The round loop. It knows payloads, codecs and a strategy, not which model or method runs.

One round: sample clients; encode the global payload once and send it to each of them (bytes
counted per recipient); each client starts from the decoded payload, trains locally and
encodes its update (bytes counted); the strategy aggregates the decoded updates; the new
global state is evaluated and one metrics row is returned.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from fedbench.config import FLConfig
from fedbench.data import FederatedData
from fedbench.fl.comm import Codec, message_bytes
from fedbench.fl.local import evaluate, train_client
from fedbench.fl.optim import FlatAdamW
from fedbench.fl.state import FlatParams, Payload
from fedbench.fl.strategies import Strategy


@dataclass
class Engine:
    model: nn.Module
    state: FlatParams
    data: FederatedData
    fl: FLConfig
    strategy: Strategy
    codec_up: Codec
    codec_down: Codec

    def __post_init__(self) -> None:
        self.opt = FlatAdamW(self.state.flat, self.state.grad, lr=self.fl.lr,
                             weight_decay=self.fl.weight_decay)
        # The tutorial samples with numpy's global legacy RNG, last seeded with 999.
        self.sampler = np.random.RandomState(self.fl.sampling_seed)
        self.global_payload: Payload = self.state.snapshot()
        self.round = 0  # rounds completed
        # A model may offer a hand-written training step that is bit-identical to autograd.
        self.step = None
        if self.fl.fast_step:
            make_step = getattr(self.model, "fast_step", None)
            self.step = make_step(self.state) if make_step is not None else None

    def select_clients(self) -> list[int]:
        chosen = self.sampler.choice(self.fl.num_clients, self.fl.clients_per_round, replace=False)
        return [int(c) for c in chosen]

    def run_round(self) -> dict:
        t0 = time.perf_counter()
        selected = self.select_clients()
        down_message = self.codec_down.encode(self.global_payload)
        bytes_down = message_bytes(down_message) * len(selected)
        start = self.codec_down.decode(down_message)

        updates: list[tuple[int, Payload]] = []
        bytes_up, loss_sum, sample_sum = 0, 0.0, 0
        for cid in selected:
            x, y = self.data.clients[cid]
            self.state.load(start)
            self.opt.reset()
            loss = train_client(self.model, self.state, self.opt, x, y,
                                self.fl.local_epochs, self.fl.batch_size, self.step)
            up_message = self.codec_up.encode(self.state.snapshot())
            bytes_up += message_bytes(up_message)
            updates.append((len(y), self.codec_up.decode(up_message)))
            loss_sum += loss * len(y)
            sample_sum += len(y)

        self.global_payload = self.strategy.aggregate(self.global_payload, updates)
        self.state.load(self.global_payload)
        accuracy, test_loss = evaluate(self.model, *self.data.test, batch_size=self.fl.eval_batch_size)
        self.round += 1
        return {
            "round": self.round,
            "accuracy": accuracy,
            "test_loss": test_loss,
            "train_loss": loss_sum / sample_sum,
            "bytes_up": bytes_up,
            "bytes_down": bytes_down,
            "clients": len(selected),
            "selected": " ".join(map(str, selected)),
            "trainable_params": self.state.numel,
            "wall_s": time.perf_counter() - t0,
        }

    def diverged(self) -> bool:
        return not bool(torch.isfinite(self.state.flat).all())
