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
  rounds catches up with those rounds' messages; a client selected every round gets one).

The server merges the *decoded* merge message, so its global model is exactly what every
client reconstructs. Heterogeneous client ranks are not supported.
"""

from __future__ import annotations

import torch
from torch import nn

from fedbench.contracts import Codec, Strategy
from fedbench.fl.comm import message_bytes
from fedbench.fl.state import FlatParams, Payload
from fedbench.methods.lora_layer import LoRALinear


class ExactLoRA:
    """The server side of exact LoRA aggregation; the engine calls :meth:`downlink` and
    :meth:`aggregate` instead of its defaults, and checkpoints :meth:`state_dict`."""

    def __init__(self, model: nn.Module, state: FlatParams) -> None:
        names = set(state.names)
        self.names = list(state.names)
        self.layers: list[tuple[str, LoRALinear]] = []
        for name, mod in model.named_modules():
            if isinstance(mod, LoRALinear) and f"{name}.lora_A" in names and f"{name}.lora_B" in names:
                self.layers.append((name, mod))
        lora = {f"{n}.lora_{f}" for n, _ in self.layers for f in "AB"}
        self.rest = [n for n in self.names if n not in lora]
        # The shared, seeded adapter initialisation every round restarts from.
        self.init = {f"{n}.lora_A": m.lora_A.detach().clone() for n, m in self.layers}
        self.init.update({f"{n}.lora_B": torch.zeros_like(m.lora_B) for n, m in self.layers})
        self.merge_bytes: list[int] = []  # bytes of each round's merge message (0: no merge)
        self.synced: dict[int, int] = {}  # client -> last round whose merge it holds

    # -- downlink -----------------------------------------------------------------------------
    def downlink(
        self, global_payload: Payload, codec: Codec, selected: list[int], rnd: int
    ) -> tuple[Payload, int]:
        """(the payload every selected client starts from, bytes sent to them all)."""
        self._pad(rnd - 1)
        message = codec.encode({k: global_payload[k] for k in self.rest}, key="server")
        sent = message_bytes(message) * len(selected)
        for cid in selected:
            sent += sum(self.merge_bytes[self.synced.get(cid, 0) : rnd - 1])
            self.synced[cid] = rnd - 1
        decoded = codec.decode(message, key="server") if message else {}
        return {k: decoded[k] if k in decoded else self.init[k] for k in self.names}, sent

    # -- aggregation --------------------------------------------------------------------------
    def aggregate(
        self,
        global_payload: Payload,
        updates: list[tuple[int, Payload]],
        strategy: Strategy,
        codec: Codec,
        rnd: int,
    ) -> Payload:
        """Merge the clients' exact mean update into the base weights; return the new global
        payload (adapters back at their initialisation, the rest as the strategy aggregates)."""
        self._pad(rnd - 1)
        total = sum(n for n, _ in updates)
        if strategy.weighted_mean:
            rest = self._strategy(strategy, global_payload, updates, self.rest)
            merge = {}
            for name, mod in self.layers:
                merge[f"{name}.A"] = torch.cat([u[f"{name}.lora_A"].float() for _, u in updates], dim=1)
                merge[f"{name}.B"] = torch.cat(
                    [(n / total * mod.scale) * u[f"{name}.lora_B"].float() for n, u in updates], dim=0
                )
        else:
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
        self.merge_bytes.append(message_bytes(message))
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

    def _pad(self, rounds: int) -> None:
        while len(self.merge_bytes) < rounds:
            self.merge_bytes.append(0)

    def finite(self) -> bool:
        return all(bool(torch.isfinite(m.base.weight).all()) for _, m in self.layers)

    # -- checkpointing ------------------------------------------------------------------------
    def state_dict(self) -> tuple[dict[str, torch.Tensor], dict]:
        tensors = {f"base/{name}": m.base.weight.detach().clone() for name, m in self.layers}
        meta = {
            "merge_bytes": list(self.merge_bytes),
            "synced": [[int(c), int(r)] for c, r in sorted(self.synced.items())],
        }
        return tensors, meta

    def load_state_dict(self, tensors: dict[str, torch.Tensor], meta: dict) -> None:
        with torch.no_grad():
            for name, m in self.layers:
                m.base.weight.copy_(tensors[f"base/{name}"])
        self.merge_bytes = [int(b) for b in meta.get("merge_bytes", [])]
        self.synced = {int(c): int(r) for c, r in meta.get("synced", [])}
