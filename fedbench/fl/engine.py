"""The round loop. It knows payloads, codecs and a strategy, not which model or method runs.

One round: sample clients; encode the global payload once and send it to each of them (bytes
counted per recipient); each client starts from the decoded payload, trains locally and
encodes its update (bytes counted); the server decodes and validates every update (expected
keys, shapes, dtypes, all finite), the strategy aggregates the accepted ones; the new global
state is evaluated and one metrics row is returned.

Everything that decides later rounds (global payload, strategy and codec state, every RNG) is
in :meth:`Engine.state_dict`, so a run resumed from a checkpoint continues bit for bit.

Randomness follows ``rng`` (:mod:`fedbench.rng`): under ``tutorial`` selection, dropout and
shuffles draw from the seed script's coupled streams in its order; under ``paired`` each draw
comes from its own stream keyed by (round, client, epoch), so a round's selection and batches do
not depend on anything that happened before it. ``fl.eval_every`` evaluates every N rounds (and
the last); with per-client splits (``data.client_test_fraction``) every evaluation also scores
each client's split (:mod:`fedbench.fl.client_eval`).

The engine calls its components only through :mod:`fedbench.contracts`. A method may change
how its state is sent and aggregated (e.g. exact LoRA aggregation merges the clients' mean
update into the base weights): when ``method.server_protocol(model, state)`` returns a
:class:`~fedbench.contracts.ServerProtocol`, the engine calls its ``downlink`` and
``aggregate`` instead of its own two steps, and checkpoints its ``state_dict()`` under
``method/``.

Privacy (``privacy=``, :mod:`fedbench.fl.privacy`): under an active mechanism each client sends
its change, passed through ``privacy.client`` (clip; for local DP also noise) before encoding;
``privacy.aggregate`` turns the accepted updates into one noised average for the strategy (central
DP) or leaves them to it (local DP); every row records ``privacy.epsilon(round)``.

Every message is also measured as sent (:mod:`fedbench.fl.wire`: ``wire_bytes_*``, and
``zstd_bytes_*`` under ``compression.entropy=zstd``). With a system (``system=``,
:mod:`fedbench.fl.clock`) each client's downlink, modelled compute and uplink give the round's
simulated length (``sim_round_s``); a client past ``system.deadline_s`` is a straggler whose
update is discarded. A server protocol may start clients from different payloads (each client's
LoRA rank, :mod:`fedbench.methods.lora_ranks`) and slice what they send (``to_wire``/``from_wire``).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from fedbench.config import FLConfig
from fedbench.contracts import Codec, Method, Population, Privacy, Stateful, Strategy
from fedbench.data import FederatedData
from fedbench.errors import ConfigError
from fedbench.fl.client_eval import ClientEvaluator, empty_summary
from fedbench.fl.clock import Clock
from fedbench.fl.faults import FaultPlan
from fedbench.fl.local import evaluate, shuffled_order, train_client
from fedbench.fl.loss import perplexity
from fedbench.fl.mlp_step import fast_step
from fedbench.fl.optim import FlatAdamW
from fedbench.fl.privacy import NoPrivacy
from fedbench.fl.state import FlatParams, Payload
from fedbench.fl.wire import Sizes, Wire, merge, total
from fedbench.rng import Streams

log = logging.getLogger("fedbench")


def check_update(update: Payload, template: Payload) -> str | None:
    """Why a decoded client update cannot be aggregated, or None if it can."""
    missing = [k for k in template if k not in update]
    if missing:
        return f"missing keys {missing[:3]}{'...' if len(missing) > 3 else ''}"
    extra = [k for k in update if k not in template]
    if extra:
        return f"unexpected keys {extra[:3]}{'...' if len(extra) > 3 else ''}"
    for key, ref in template.items():
        t = update[key]
        if not isinstance(t, torch.Tensor):
            return f"{key}: not a tensor"
        if t.shape != ref.shape:
            return f"{key}: shape {tuple(t.shape)} != {tuple(ref.shape)}"
        if t.dtype != ref.dtype:
            return f"{key}: dtype {t.dtype} != {ref.dtype}"
        if not bool(torch.isfinite(t).all()):
            return f"{key}: non-finite values"
    return None


def _device_rng_states() -> dict[str, torch.Tensor]:
    """The accelerators' generators (dropout on a GPU draws from them, not from torch's CPU one),
    as CPU uint8 tensors; CUDA's only once initialised, so a CPU run never starts CUDA to save it."""
    states = {}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states.update({f"rng/cuda/{i}": s.cpu() for i, s in enumerate(torch.cuda.get_rng_state_all())})
    if torch.backends.mps.is_available():
        states["rng/mps"] = torch.mps.get_rng_state().cpu()
    return states


def _load_device_rng_states(tensors: dict[str, torch.Tensor]) -> None:
    """Restores what :func:`_device_rng_states` saved, as far as this machine has those devices:
    checkpoints load on any device, and ones written before these keys have none."""
    if torch.cuda.is_available():
        cuda = []
        while f"rng/cuda/{len(cuda)}" in tensors:
            cuda.append(tensors[f"rng/cuda/{len(cuda)}"])
        cuda = cuda[: torch.cuda.device_count()]  # a machine with fewer GPUs: the first ones
        if cuda:
            torch.cuda.set_rng_state_all(cuda)
    if "rng/mps" in tensors and torch.backends.mps.is_available():
        torch.mps.set_rng_state(tensors["rng/mps"])


@dataclass
class Engine:
    model: nn.Module
    state: FlatParams
    data: FederatedData
    fl: FLConfig
    strategy: Strategy
    codec_up: Codec
    codec_down: Codec
    method: Method  # the fine-tuning method (its server_protocol may replace downlink/aggregation)
    faults: FaultPlan = field(default_factory=FaultPlan)
    # Progress within a round: on_client(round, clients done, clients selected); not checkpointed.
    on_client: Callable[[int, int, int], None] | None = None
    # The run's random streams (rng=tutorial|paired, and its seed).
    streams: Streams = field(default_factory=lambda: Streams("tutorial", 0))
    # Client-level differential privacy (fedbench.fl.privacy); privacy=none changes nothing.
    privacy: Privacy = field(default_factory=NoPrivacy)
    # Message sizes as sent (fedbench.fl.wire); compression.entropy=zstd measures zstd sizes too.
    wire: Wire = field(default_factory=Wire)
    # The simulated clock (system=, fedbench.fl.clock); None: system=none, sim_* columns NaN.
    clock: Clock | None = None
    # The clients (count, seed, links), for methods whose clients differ (heterogeneous ranks).
    population: Population | None = None

    def __post_init__(self) -> None:
        if self.codec_down.delta:
            raise ConfigError(
                "compression.down",
                f"{type(self.codec_down).__name__} sends changes against per-receiver state, "
                "which the downlink does not keep; use none, fp16, bf16 or int8",
            )
        population = self.population or Population(self.fl.num_clients, self.streams.seed)
        self.protocol = self.method.server_protocol(self.model, self.state, population)
        if self.protocol is not None and self.privacy.sends_change:
            raise ConfigError(
                "privacy",
                f"{type(self.method).__name__} aggregates with its own server protocol, which "
                "privacy does not clip or noise; use another aggregation",
            )
        self.opt = FlatAdamW(
            self.state.flat, self.state.grad, lr=self.fl.lr, weight_decay=self.fl.weight_decay
        )
        # The tutorial samples with numpy's global legacy RNG, last seeded with 999.
        self.sampler = np.random.RandomState(self.fl.sampling_seed)
        # Dropout draws from its own stream so that fl.dropout=0 leaves every other draw alone.
        self.dropout_rng = np.random.RandomState([self.fl.sampling_seed, 1])
        self.global_payload: Payload = self.state.snapshot()
        self.round = 0  # rounds completed
        # A hand-written training step, bit-identical to autograd, where one covers the model.
        self.step = fast_step(self.model, self.state) if self.fl.fast_step else None
        # rows per evaluation batch: the tutorial's 64 (a matmul's last bits can depend on it)
        self.eval_batch = self.fl.eval_batch_size
        splits = getattr(self.data, "client_tests", None)
        self.client_eval = ClientEvaluator(splits, self.fl.eval_batch_size) if splits else None

    # -- randomness (fedbench.rng) ----------------------------------------------------------
    def select_clients(self, rnd: int | None = None) -> list[int]:
        """Round ``rnd``'s clients (default: the next round)."""
        rnd = self.round + 1 if rnd is None else rnd
        n, k = self.fl.num_clients, self.fl.clients_per_round
        sampler = (
            self.streams.numpy("select", self.fl.sampling_seed, rnd) if self.streams.paired else self.sampler
        )
        if self.fl.sampling == "weighted" and self.data.common_size() is None:
            chosen = sampler.choice(n, k, replace=False, p=self._weights)
        else:  # uniform; also weighted over clients of one size (data made on demand)
            chosen = sampler.choice(n, k, replace=False)
        return [int(c) for c in chosen]

    @functools.cached_property
    def _weights(self) -> np.ndarray:
        """Each client's share of all samples (fl.sampling=weighted)."""
        sizes = np.array(self.data.client_sizes(), dtype=np.float64)
        return sizes / sizes.sum()

    def dropped(self, rnd: int, selected: list[int]) -> list[bool] | None:
        """Which selected clients' updates never arrive (None: no client dropout)."""
        if self.fl.dropout <= 0:
            return None
        if self.streams.paired:
            return [bool(self.streams.numpy("dropout", rnd, c).random() < self.fl.dropout) for c in selected]
        return list(self.dropout_rng.random_sample(len(selected)) < self.fl.dropout)

    def shuffle(self, rnd: int, client: int, n: int, epoch: int) -> torch.Tensor:
        """The order in which ``client`` visits its ``n`` samples in ``epoch`` of round ``rnd``."""
        if self.streams.paired:
            return torch.randperm(n, generator=self.streams.torch("shuffle", rnd, client, epoch))
        return shuffled_order(n)  # the tutorial's DataLoader draws, in training order

    def shuffles(self, rnd: int, selected: list[int], sizes: list[int]) -> list[list[torch.Tensor]]:
        """Every selected client's orders for every epoch, in the exact engine's draw order."""
        return [
            [self.shuffle(rnd, c, n, e) for e in range(self.fl.local_epochs)] for c, n in zip(selected, sizes)
        ]

    def evaluates(self, rnd: int) -> bool:
        """Whether round ``rnd`` ends with an evaluation (every ``fl.eval_every`` and the last)."""
        return rnd % self.fl.eval_every == 0 or rnd == self.fl.num_rounds

    # -- one round -----------------------------------------------------------------------

    def train_clients(
        self, selected: list[int], starts: list[Payload], mu: float, rnd: int
    ) -> Iterator[tuple[int, int, int, Payload, float]]:
        """Train each selected client from its start (``starts``, aligned with ``selected``), one
        after another: yields (position in ``selected``, client id, samples, trained payload, mean
        batch loss) per client, in order. ``mu > 0`` adds FedProx's proximal term. Engines that
        train differently override this."""
        start_flat = None
        for i, cid in enumerate(selected):
            x, y = self.data.clients[cid]
            self.state.load(starts[i])
            if mu > 0 and (start_flat is None or starts[i] is not starts[i - 1]):
                start_flat = self.state.flat.clone()
            self.opt.reset()
            self.streams.seed_global("train", rnd, cid)  # e.g. dropout layers (paired only)
            loss = train_client(
                self.model,
                self.state,
                self.opt,
                x,
                y,
                self.fl.local_epochs,
                self.fl.batch_size,
                self.step,
                prox=(mu, start_flat) if mu > 0 else None,
                order=functools.partial(self.shuffle, rnd, cid, len(y)),
            )
            yield i, cid, len(y), self.state.snapshot(), loss

    def run_round(self) -> dict:
        t0 = time.perf_counter()
        rnd = self.round + 1
        selected = self.select_clients(rnd)
        if self.on_client is not None:
            self.on_client(rnd, 0, len(selected))
        drops = self.dropped(rnd, selected)
        if self.protocol is None:
            down_message = self.codec_down.encode(self.global_payload, key="server")
            start = self.codec_down.decode(down_message, key="server")
            starts = [start] * len(selected)
            down_sizes = [self.wire.sizes(down_message)] * len(selected)
        else:
            starts, down_sizes = self.protocol.downlink(
                self.global_payload, self.codec_down, selected, rnd, self.wire
            )
        mu = float(self.strategy.proximal_mu)
        entropy = self.wire.entropy != "none"

        updates: list[tuple[int, Payload]] = []
        accepted: list[int] = []
        up_sizes: list[Sizes] = []
        times, tried = [], []  # simulated ClientTime of the reporting / of every trained client
        # Under privacy every client sends its (clipped) change, whatever the codec.
        sends_change = self.codec_up.delta or self.privacy.sends_change
        loss_sum, sample_sum, reported, rejected, nonfinite, stragglers = 0.0, 0, 0, 0, 0, 0
        for i, cid, n, payload, loss in self.train_clients(selected, starts, mu, rnd):
            if self.on_client is not None:  # a dropped client trained too
                self.on_client(rnd, i + 1, len(selected))
            if drops is not None and drops[i]:
                if self.clock is not None:
                    tried.append(self.clock.client(cid, n, down_sizes[i].sent, 0))
                continue  # trained, but the update never arrives: no uplink bytes
            start = starts[i]
            if sends_change:
                payload = {k: v - start[k] for k, v in payload.items()}
            side: dict = {}
            if self.privacy.sends_change:  # clip (and, for local DP, noise) before encoding
                payload, side = self.privacy.client(payload, rnd, cid, self.streams)
            if self.protocol is not None:
                payload = self.protocol.to_wire(payload, cid)
            up_message = self.codec_up.encode(payload, key=cid)
            sizes = self.wire.sizes(merge(dp=side, update=up_message) if side else up_message)
            if self.clock is not None:
                t = self.clock.client(cid, n, down_sizes[i].sent, sizes.sent)
                tried.append(t)
                if self.clock.late(t):
                    stragglers += 1  # its update arrives after the deadline: discarded, not counted
                    continue
                times.append(t)
            up_sizes.append(sizes)
            reported += 1
            update = self.codec_up.decode(up_message, key=cid)
            if self.protocol is not None:
                update = self.protocol.from_wire(update, cid)
            if sends_change:
                update = {
                    k: start[k] + v if k in start and v.shape == start[k].shape else v
                    for k, v in update.items()
                }
            update = self.faults.apply(update, cid, rnd)
            reason = check_update(update, self.global_payload)
            if reason is not None:
                rejected += 1
                nonfinite += "non-finite" in reason
                log.warning("round %d: rejected the update of client %d: %s", rnd, cid, reason)
                continue
            updates.append((n, update))
            accepted.append(cid)
            loss_sum += loss * n
            sample_sum += n

        all_nonfinite = reported > 0 and nonfinite == reported
        # Central DP: one noised average of the clipped changes (released even if none arrived).
        noised = self.privacy.aggregate(
            starts[0], [(c, n, u) for c, (n, u) in zip(accepted, updates)], rnd, self.streams
        )
        if noised is not None:
            self.global_payload = self.strategy.aggregate(self.global_payload, [(1, noised)])
        elif updates and self.protocol is not None:
            self.global_payload = self.protocol.aggregate(
                self.global_payload, updates, self.strategy, self.codec_down, rnd, accepted, self.wire
            )
        elif updates:
            self.global_payload = self.strategy.aggregate(self.global_payload, updates)
        # (with nothing usable arriving, the global model stays as it was)
        self.state.load(self.global_payload)
        accuracy = test_loss = float("nan")
        # no per-client splits: no client_acc_* keys (the metrics writer records them as NaN)
        clients_summary = empty_summary() if self.client_eval is not None else {}
        per_client = []
        if self.evaluates(rnd):
            with self.protocol.evaluation() if self.protocol is not None else contextlib.nullcontext():
                accuracy, test_loss = evaluate(
                    self.model,
                    *self.data.test,
                    batch_size=self.eval_batch,
                    draw_loader_seed=not self.streams.paired,
                )
                if self.client_eval is not None:
                    clients_summary, per_client = self.client_eval(self.model)
        self.round = rnd
        up, down = total(up_sizes, entropy), total(down_sizes, entropy)
        sim_round = math.nan
        if self.clock is not None:
            sim_round = self.clock.round_seconds(times, tried, stragglers)
        return {
            "round": rnd,
            "accuracy": accuracy,
            "test_loss": test_loss,
            # next-token prediction (targets [n, L]): exp(token loss); else the one math.nan
            "perplexity": perplexity(test_loss) if self.data.test[1].dim() > 1 else math.nan,
            "train_loss": loss_sum / sample_sum if sample_sum else float("nan"),
            **clients_summary,
            "bytes_up": up.payload,
            "bytes_down": down.payload,
            # floats, as in metrics.parquet (NaN in the rows of folders from before wire sizes)
            "wire_bytes_up": float(up.wire),
            "wire_bytes_down": float(down.wire),
            "zstd_bytes_up": math.nan if up.zstd is None else float(up.zstd),
            "zstd_bytes_down": math.nan if down.zstd is None else float(down.zstd),
            "clients": len(selected),
            "reported": reported,
            "rejected": rejected,
            "stragglers": stragglers,
            "sim_round_s": sim_round,
            "epsilon": self.privacy.epsilon(rnd),
            **(self.protocol.row() if self.protocol is not None else {}),
            "selected": " ".join(map(str, selected)),
            "trainable_params": self.state.numel,
            "wall_s": time.perf_counter() - t0,
            "_all_nonfinite": all_nonfinite,
            "_clients": [{"round": rnd, **c} for c in per_client],
        }

    def diverged(self, row: dict) -> bool:
        """The global model is unusable: non-finite weights or test loss, or every update was."""
        return (
            row["_all_nonfinite"]
            or (self.evaluates(row["round"]) and not np.isfinite(row["test_loss"]))
            or not bool(torch.isfinite(self.state.flat).all())
            or (self.protocol is not None and not self.protocol.finite())
        )

    # -- checkpointing ---------------------------------------------------------------------
    def _stateful(self) -> tuple[tuple[str, Stateful], ...]:
        parts = (
            ("strategy", self.strategy),
            ("codec_up", self.codec_up),
            ("codec_down", self.codec_down),
            ("privacy", self.privacy),
        )
        return parts if self.protocol is None else (*parts, ("method", self.protocol))

    def state_dict(self) -> tuple[dict[str, torch.Tensor], dict]:
        """(tensors, JSON-able metadata): everything the next rounds depend on."""
        tensors = {f"global/{k}": v.contiguous() for k, v in self.global_payload.items()}
        tensors["rng/torch"] = torch.get_rng_state()
        tensors.update(_device_rng_states())
        meta: dict = {"round": self.round}
        for name, rs in (("sampler", self.sampler), ("dropout", self.dropout_rng)):
            kind, keys, pos, has_gauss, gauss = rs.get_state()
            tensors[f"rng/{name}"] = torch.from_numpy(keys.astype(np.int64))
            meta[f"rng_{name}"] = [kind, int(pos), int(has_gauss), float(gauss)]
        kind, keys, pos, has_gauss, gauss = np.random.get_state()
        tensors["rng/numpy_global"] = torch.from_numpy(keys.astype(np.int64))
        meta["rng_numpy_global"] = [kind, int(pos), int(has_gauss), float(gauss)]
        version, internal, gauss_next = random.getstate()
        meta["rng_python"] = [version, list(internal), gauss_next]
        for prefix, obj in self._stateful():
            t, m = obj.state_dict()
            if t or m:
                tensors.update({f"{prefix}/{k}": v.contiguous() for k, v in t.items()})
                meta[prefix] = m
        return tensors, meta

    def load_state_dict(self, tensors: dict[str, torch.Tensor], meta: dict) -> None:
        self.round = int(meta["round"])
        self.global_payload = {k: tensors[f"global/{k}"].clone() for k in self.state.names}
        self.state.load(self.global_payload)
        torch.set_rng_state(tensors["rng/torch"])
        _load_device_rng_states(tensors)
        for name, rs in (("sampler", self.sampler), ("dropout", self.dropout_rng)):
            kind, pos, has_gauss, gauss = meta[f"rng_{name}"]
            rs.set_state((kind, tensors[f"rng/{name}"].numpy().astype(np.uint32), pos, has_gauss, gauss))
        kind, pos, has_gauss, gauss = meta["rng_numpy_global"]
        np.random.set_state(
            (kind, tensors["rng/numpy_global"].numpy().astype(np.uint32), pos, has_gauss, gauss)
        )
        version, internal, gauss_next = meta["rng_python"]
        random.setstate((version, tuple(internal), gauss_next))
        for prefix, obj in self._stateful():
            sub = {k[len(prefix) + 1 :]: v for k, v in tensors.items() if k.startswith(prefix + "/")}
            obj.load_state_dict(sub, meta.get(prefix, {}))
