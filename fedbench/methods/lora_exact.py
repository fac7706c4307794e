"""Exact aggregation of LoRA updates (``method.aggregation=exact``), FLoRA-style: the server
side of :class:`fedbench.methods.lora.LoRA` (its ``server_protocol``).

Averaging the factors separately (``naive``) does not average the updates:
``mean(B) mean(A) != mean(B A)``. Here the server aggregates the true update
``dW = scale * sum_k p_k A_k B_k`` (``p_k = n_k / n``) and merges it into the frozen base
weights; every client then restarts its adapter from the shared, seeded initialisation
(A = A0, B = 0), which costs no bytes: it is the same for everyone and known in advance.

What crosses the wire
---------------------
- Uplink: each client's factors A_k, B_k (and the head), exactly as ``naive``.
- Merge message (once per round, encoded with the downlink codec):
  * when the strategy is a sample-weighted mean (fedavg, fedprox), the **stacked factors**
    (FLoRA, Wang et al. 2024): ``A_s = [A_1 ... A_K]`` (in x K r) and
    ``B_s = [p_1 s B_1; ...; p_K s B_K]`` (K r x out), so ``A_s B_s = dW`` exactly; this grows
    with the number of clients aggregated, ``K r (in + out)`` values per layer;
  * otherwise (server optimizers, median, trimmed mean), the strategy aggregates the clients'
    dense products ``s A_k B_k`` like any other tensor (the "global" value of a fresh adapter
    update is 0, so a server optimizer's pseudo-gradient is the mean product) and the result,
    which is no longer low-rank, is sent **dense**: ``in x out`` values per layer.
- Downlink to a selected client: the non-LoRA payload (the head), plus every merge message it
  has not received yet (clients hold their own copy of the base weights, so one that sat out
  rounds catches up with those rounds' messages; a client selected every round gets one). The
  catch-up is capped: when the missed messages together are larger than the dense change of
  the adapted weights since the client's last round (``in x out`` float32 values per layer, sent
  lossless), the dense change is sent instead, and counted.

The server merges the *decoded* merge message, so its global model is exactly what every
client reconstructs. Heterogeneous client ranks (``method.ranks``): each client restarts from
the leading r_k columns of the shared initialisation and sends factors of rank r_k; the stacked
rank is the sum of the aggregated clients' ranks, recorded per round as ``merge_rank`` (the
growth the downlink pays for).
"""

from __future__ import annotations

import logging
import math

import torch
from torch import nn

from fedbench.contracts import Codec, Strategy
from fedbench.fl.state import FlatParams, Payload
from fedbench.fl.wire import Sizes
from fedbench.methods.lora_ranks import ClientRanks, LoRAServer

log = logging.getLogger("fedbench")


class ExactLoRA(LoRAServer):
    """The server side of exact LoRA aggregation; the engine calls :meth:`downlink` and
    :meth:`aggregate` instead of its defaults, and checkpoints :meth:`state_dict`."""

    def __init__(self, model: nn.Module, state: FlatParams, ranks: ClientRanks | None = None) -> None:
        super().__init__(model, state, ranks)
        # The shared, seeded adapter initialisation every round restarts from.
        self.init = {f"{n}.lora_A": m.lora_A.detach().clone() for n, m in self.layers}
        self.init.update({f"{n}.lora_B": torch.zeros_like(m.lora_B) for n, m in self.layers})
        self.merge_sizes: list[Sizes] = []  # each round's merge message (Sizes(): no merge)
        self.synced: dict[int, int] = {}  # client -> last round whose merge it holds
        self.merge_rank = math.nan  # stacked rank of the last merge (NaN: dense, or none yet)
        self._dense: Sizes | None = None

    def dense_sizes(self, wire) -> Sizes:
        """A dense float32 change of every adapted weight, as sent (zstd: not compressed, as the
        simulation keeps no client's last weights to compress the change of)."""
        if self._dense is None:
            message = {
                f"{n}.dW": (torch.zeros(m.lora_A.shape[0], m.lora_B.shape[1]),) for n, m in self.layers
            }
            s = wire.sizes(message)
            self._dense = Sizes(s.payload, s.wire, None if s.zstd is None else s.wire)
        return self._dense

    # -- downlink -----------------------------------------------------------------------------
    def downlink(
        self, global_payload: Payload, codec: Codec, selected: list[int], rnd: int, wire
    ) -> tuple[list[Payload], list[Sizes]]:
        """(the payload each selected client starts from, the sizes of what each was sent)."""
        self._pad(rnd - 1, wire)
        message = codec.encode({k: global_payload[k] for k in self.rest}, key="server")
        head = wire.sizes(message)
        decoded = codec.decode(message, key="server") if message else {}
        start = {k: decoded[k] if k in decoded else self.init[k] for k in self.names}
        starts, sizes, by_rank = [], [], {}
        zero = Sizes(0, 0, None if wire.entropy == "none" else 0)
        for cid in selected:
            missed = sum(self.merge_sizes[self.synced.get(cid, 0) : rnd - 1], zero)
            if missed.sent > self.dense_sizes(wire).sent:
                missed = self.dense_sizes(wire)
            self.synced[cid] = rnd - 1
            r = self.ranks(cid)
            if r not in by_rank:
                by_rank[r] = self.pad(self.truncate(start, r), r)
            starts.append(by_rank[r])
            sizes.append(head + missed)
        return starts, sizes

    # -- aggregation --------------------------------------------------------------------------
    def aggregate(
        self,
        global_payload: Payload,
        updates: list[tuple[int, Payload]],
        strategy: Strategy,
        codec: Codec,
        rnd: int,
        clients: list[int],
        wire,
    ) -> Payload:
        """Merge the clients' exact mean update into the base weights; return the new global
        payload (adapters back at their initialisation, the rest as the strategy aggregates)."""
        self._pad(rnd - 1, wire)
        total = sum(n for n, _ in updates)
        if strategy.weighted_mean:
            rest = self._strategy(strategy, global_payload, updates, self.rest)
            merge = {}
            ranks = [self.ranks(c) for c in clients]
            for name, mod in self.layers:
                merge[f"{name}.A"] = torch.cat(
                    [u[f"{name}.lora_A"][:, :r].float() for (_, u), r in zip(updates, ranks)], dim=1
                )
                merge[f"{name}.B"] = torch.cat(
                    [
                        (n / total * mod.scale) * u[f"{name}.lora_B"][:r].float()
                        for (n, u), r in zip(updates, ranks)
                    ],
                    dim=0,
                )
            self.merge_rank = float(sum(ranks))
        else:
            self.merge_rank = math.nan
            dense_global = {
                f"{name}.dW": torch.zeros(m.lora_A.shape[0], m.lora_B.shape[1]) for name, m in self.layers
            }
            dense_updates = [
                (
                    n,
                    {
                        **{k: u[k] for k in self.rest},
                        **{
                            f"{name}.dW": m.scale
                            * (u[f"{name}.lora_A"].float() @ u[f"{name}.lora_B"].float())
                            for name, m in self.layers
                        },
                    },
                )
                for n, u in updates
            ]
            out = strategy.aggregate(
                {**{k: global_payload[k] for k in self.rest}, **dense_global}, dense_updates
            )
            rest = {k: out[k] for k in self.rest}
            merge = {k: out[k] for k in dense_global}
        message = codec.encode(merge, key="server")
        self.merge_sizes.append(wire.sizes(message))
        decoded = codec.decode(message, key="server")
        with torch.no_grad():
            for name, mod in self.layers:
                dw = (
                    decoded[f"{name}.dW"]
                    if f"{name}.dW" in decoded
                    else decoded[f"{name}.A"] @ decoded[f"{name}.B"]
                )
                mod.base.weight.add_(dw.t().to(mod.base.weight.dtype))
        return {k: rest[k] if k in rest else self.init[k].clone() for k in self.names}

    @staticmethod
    def _strategy(strategy, global_payload, updates, keys):
        if not keys:
            return {}
        return strategy.aggregate(
            {k: global_payload[k] for k in keys}, [(n, {k: u[k] for k in keys}) for n, u in updates]
        )

    def _pad(self, rounds: int, wire) -> None:
        """Rounds without a merge (nothing arrived) send nothing."""
        while len(self.merge_sizes) < rounds:
            self.merge_sizes.append(Sizes(0, 0, None if wire.entropy == "none" else 0))

    def row(self) -> dict:
        return {"merge_rank": self.merge_rank}

    def finite(self) -> bool:
        return all(bool(torch.isfinite(m.base.weight).all()) for _, m in self.layers)

    # -- checkpointing ------------------------------------------------------------------------
    def state_dict(self) -> tuple[dict[str, torch.Tensor], dict]:
        tensors = {f"base/{name}": m.base.weight.detach().clone() for name, m in self.layers}
        meta = {
            "merge_sizes": [[s.payload, s.wire, s.zstd] for s in self.merge_sizes],
            "synced": [[int(c), int(r)] for c, r in sorted(self.synced.items())],
            "merge_rank": None if math.isnan(self.merge_rank) else self.merge_rank,
        }
        return tensors, meta

    def load_state_dict(self, tensors: dict[str, torch.Tensor], meta: dict) -> None:
        with torch.no_grad():
            for name, m in self.layers:
                m.base.weight.copy_(tensors[f"base/{name}"])
        if "merge_sizes" in meta:
            self.merge_sizes = [
                Sizes(int(p), int(w), None if z is None else int(z)) for p, w, z in meta["merge_sizes"]
            ]
        else:  # a checkpoint from before wire sizes: the merges' headers are not known
            log.warning(
                "checkpoint without wire sizes: earlier merge messages are counted at their payload size"
            )
            self.merge_sizes = [Sizes(int(b), int(b), None) for b in meta.get("merge_bytes", [])]
        self.synced = {int(c): int(r) for c, r in meta.get("synced", [])}
        rank = meta.get("merge_rank")
        self.merge_rank = math.nan if rank is None else float(rank)
