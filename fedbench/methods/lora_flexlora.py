"""FlexLoRA aggregation (``method.aggregation=flexlora``; Bai et al. 2024): the server averages
the clients' full updates ``dW_k = s A_k B_k`` (each at its own rank, ``method.ranks``), keeps
the result ``dW`` as the global adapter, and sends each client the rank-r_k truncation of its
SVD: with ``dW = U S V^T``, ``A = U_r S_r^(1/2) / s^(1/2)`` and ``B = S_r^(1/2) V_r^T / s^(1/2)``
(``s`` = LoRA's scale), so ``s A B`` is the best rank-r_k approximation of ``dW``.

The global model is ``W + dW`` (evaluated exactly: :meth:`FlexLoRA.evaluation` adds what the
rank-R factors do not hold to the base weights for the evaluation only); the global payload's
factors are the rank-R truncation (R = the largest client rank) from which every client's
slice is cut. ``dW`` is aggregated by the strategy like any tensor (its "global" value is the
previous ``dW``), so server optimizers and robust strategies work too. Round 1 starts from
LoRA's usual initialisation (A random, B = 0, so dW = 0). Bytes: each client is sent and sends
its rank's factors and the head; the server's dense ``dW`` never crosses the wire.
"""

from __future__ import annotations

import contextlib

import torch

from fedbench.contracts import Codec, Strategy
from fedbench.fl.state import Payload
from fedbench.methods.lora_hetlora import HetLoRA


class FlexLoRA(HetLoRA):
    """HetLoRA's downlink (each client's slice of the global factors, here the SVD truncation);
    its own aggregation, evaluation and state."""

    def __init__(self, model, state, ranks=None) -> None:
        super().__init__(model, state, ranks)
        self.delta = {name: torch.zeros(m.lora_A.shape[0], m.lora_B.shape[1]) for name, m in self.layers}

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
        dense = [
            (
                n,
                {
                    **{k: u[k] for k in self.rest},
                    **{
                        f"{name}.dW": m.scale * (u[f"{name}.lora_A"].float() @ u[f"{name}.lora_B"].float())
                        for name, m in self.layers
                    },
                },
            )
            for n, u in updates
        ]
        current = {
            **{k: global_payload[k] for k in self.rest},
            **{f"{n}.dW": d for n, d in self.delta.items()},
        }
        out = strategy.aggregate(current, dense)
        self.delta = {name: out[f"{name}.dW"].clone() for name, _ in self.layers}
        factors = {}
        for name, m in self.layers:
            U, S, Vh = torch.linalg.svd(self.delta[name], full_matrices=False)
            root = S[: self.R].sqrt()
            factors[f"{name}.lora_A"] = (U[:, : self.R] * root / m.scale**0.5).to(
                global_payload[f"{name}.lora_A"].dtype
            )
            factors[f"{name}.lora_B"] = (root[:, None] * Vh[: self.R] / m.scale**0.5).to(
                global_payload[f"{name}.lora_B"].dtype
            )
        return {k: out[k].clone() if k in out and k not in factors else factors[k] for k in self.names}

    @contextlib.contextmanager
    def evaluation(self):
        """The live model as ``W + dW``: the part of ``dW`` beyond the rank-R factors is added to
        the base weights for the evaluation and the base weights restored afterwards."""
        saved = [m.base.weight.detach().clone() for _, m in self.layers]
        try:
            with torch.no_grad():
                for name, m in self.layers:
                    held = m.scale * (m.lora_A.detach() @ m.lora_B.detach())
                    m.base.weight.add_((self.delta[name] - held).t().to(m.base.weight.dtype))
            yield
        finally:
            with torch.no_grad():
                for (_, m), w in zip(self.layers, saved):
                    m.base.weight.copy_(w)

    def finite(self) -> bool:
        return all(bool(torch.isfinite(d).all()) for d in self.delta.values())

    def state_dict(self) -> tuple[dict[str, torch.Tensor], dict]:
        return {f"delta/{n}": d.contiguous() for n, d in self.delta.items()}, {"flexlora": 1}

    def load_state_dict(self, tensors: dict[str, torch.Tensor], meta: dict) -> None:
        self.delta = {name: tensors[f"delta/{name}"].clone() for name, _ in self.layers}
