"""HetLoRA aggregation (``method.aggregation=hetlora``; Cho et al. 2024): clients train LoRA at
their own ranks (``method.ranks``, :mod:`fedbench.methods.lora_ranks`), the server zero-pads
each client's factors to the largest rank and the strategy averages them (sample-weighted under
fedavg), and each client receives the first r_k columns of A and rows of B of the result.

Downlink bytes per client follow from its rank (the sliced factors and the head, encoded with
the downlink codec); uplink likewise. This is the zero-padding aggregation only: HetLoRA's
rank self-pruning and sparsity-weighted aggregation are not implemented.
"""

from __future__ import annotations

from fedbench.contracts import Codec, Strategy
from fedbench.fl.state import Payload
from fedbench.methods.lora_ranks import LoRAServer


class HetLoRA(LoRAServer):
    def downlink(self, global_payload: Payload, codec: Codec, selected: list[int], rnd: int, wire):
        return self.send(global_payload, codec, selected, wire)

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
        # The updates arrive padded to the largest rank (from_wire): zero-padding aggregation.
        return strategy.aggregate(global_payload, updates)
