"""Heterogeneous LoRA ranks: which rank each client trains at, and the slicing that follows.

``method.ranks`` gives each client its own rank: ``rank_by: client`` cycles the list over client
ids (client c gets ``ranks[c % len(ranks)]``); ``rank_by: bandwidth`` sorts the clients by uplink
bandwidth (``system=``; ties by id) and gives the slowest share of them the smallest rank, the
next share the next rank, and so on (``len(ranks)`` equal shares).

The shared model is built at the largest rank R, and every client computes with LoRA's scale
at that rank (``alpha / R``), so a client of rank r holds exactly the leading r components of
an R-rank adapter: its start has both factors zero beyond r (``A[:, r:] = 0``, ``B[r:] = 0``),
which also makes their gradients zero, so they stay zero while it trains. What it is sent and
what it sends are the sliced factors (``A[:, :r]``, ``B[:r]``), so bytes follow from its rank;
the server pads them back to R with zeros.
"""

from __future__ import annotations

import functools

import torch
from torch import nn

from fedbench.contracts import Codec, Population, ServerProtocol
from fedbench.fl.state import FlatParams, Payload
from fedbench.fl.wire import Sizes
from fedbench.methods.lora_layer import LoRALinear

RANK_RULES = ("client", "bandwidth")


class ClientRanks:
    """Client id -> LoRA rank (see the module docstring); ``max`` is the built rank R."""

    def __init__(self, rank: int, ranks: list[int] | None, rank_by: str, population: Population) -> None:
        self.ranks = [int(r) for r in ranks] if ranks else [int(rank)]
        self.max = max(self.ranks)
        self.rank_by = rank_by
        self.population = population

    @property
    def heterogeneous(self) -> bool:
        return len(set(self.ranks)) > 1

    @functools.cached_property
    def _by_bandwidth(self) -> list[int]:
        n = self.population.num_clients
        ups = [self.population.link(c).up_mbps for c in range(n)]
        order = sorted(range(n), key=lambda c: (ups[c], c))
        ladder = sorted(self.ranks)
        out = [0] * n
        for pos, c in enumerate(order):
            out[c] = ladder[pos * len(ladder) // n]
        return out

    def __call__(self, client: int) -> int:
        if len(self.ranks) == 1:
            return self.ranks[0]
        if self.rank_by == "bandwidth":
            return self._by_bandwidth[client]
        return self.ranks[client % len(self.ranks)]


class LoRAServer(ServerProtocol):
    """What the LoRA server protocols share: the adapted layers, each client's rank, slicing a
    payload to a rank (:meth:`truncate`) and padding it back (:meth:`pad`), and sending each
    selected client its slice of a payload (:meth:`send`)."""

    def __init__(self, model: nn.Module, state: FlatParams, ranks: ClientRanks | None = None) -> None:
        names = set(state.names)
        self.names = list(state.names)
        self.layers: list[tuple[str, LoRALinear]] = [
            (name, mod)
            for name, mod in model.named_modules()
            if isinstance(mod, LoRALinear) and f"{name}.lora_A" in names and f"{name}.lora_B" in names
        ]
        self.lora = {f"{n}.lora_{f}" for n, _ in self.layers for f in "AB"}
        self.rest = [n for n in self.names if n not in self.lora]
        if ranks is None:  # every client at the rank the layers were built with
            built = self.layers[0][1].lora_A.shape[1] if self.layers else 1
            ranks = ClientRanks(built, None, "client", Population(1, 0))
        self.ranks = ranks
        self.R = ranks.max

    def truncate(self, payload: Payload, r: int) -> Payload:
        """The payload as a rank-``r`` client holds it: A's first r columns, B's first r rows."""
        if r == self.R:
            return payload
        out = {}
        for k, v in payload.items():
            if k in self.lora:
                v = v[:, :r] if k.endswith(".lora_A") else v[:r]
                v = v.contiguous()
            out[k] = v
        return out

    def pad(self, payload: Payload, r: int) -> Payload:
        """A rank-``r`` payload back at rank R, zeros beyond r (keys in the state's order)."""
        if r == self.R:
            return payload
        out = {}
        for k, v in payload.items():
            if k in self.lora and k.endswith(".lora_A") and v.shape[1] == r:
                v = torch.cat([v, v.new_zeros(v.shape[0], self.R - r)], dim=1)
            elif k in self.lora and k.endswith(".lora_B") and v.shape[0] == r:
                v = torch.cat([v, v.new_zeros(self.R - r, v.shape[1])], dim=0)
            out[k] = v
        return out

    def to_wire(self, payload: Payload, client: int) -> Payload:
        return self.truncate(payload, self.ranks(client))

    def from_wire(self, payload: Payload, client: int) -> Payload:
        return self.pad(payload, self.ranks(client))

    def send(
        self, payload: Payload, codec: Codec, selected: list[int], wire
    ) -> tuple[list[Payload], list[Sizes]]:
        """Each selected client gets ``payload`` sliced to its rank, encoded with ``codec``:
        (what each starts from, padded to R; the sizes of what each was sent)."""
        by_rank: dict[int, tuple[Payload, Sizes]] = {}
        starts, sizes = [], []
        for cid in selected:
            r = self.ranks(cid)
            if r not in by_rank:
                message = codec.encode(self.truncate(payload, r), key="server")
                start = self.pad(codec.decode(message, key="server"), r)
                by_rank[r] = ({k: start[k] for k in self.names}, wire.sizes(message))
            starts.append(by_rank[r][0])
            sizes.append(by_rank[r][1])
        return starts, sizes
