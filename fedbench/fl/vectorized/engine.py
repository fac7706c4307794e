"""The vectorised engine: the round's selected clients train at once, as one batched model.

What stays the same as the exact engine: client selection, dropout and fault draws; the byte
counts (each client's update is encoded and decoded on its own); validation and aggregation;
evaluation; the row contract and the checkpoint (``state_dict``, inherited); each client's
batches (:class:`~fedbench.fl.vectorized.plan.RoundPlan`). Only :meth:`Engine.train_clients` is
replaced: one step of all clients at a time, by the hand-written
:class:`~fedbench.fl.vectorized.mlp_kernel.BatchedMLPStep` where the model has one, else by
:class:`~fedbench.fl.vectorized.stacked_modules.StackedModules`, then one AdamW call for all.
"""

from __future__ import annotations

import contextlib

import torch

from fedbench.errors import ConfigError
from fedbench.fl.engine import Engine
from fedbench.fl.state import Payload
from fedbench.fl.vectorized.mlp_kernel import BatchedMLPStep
from fedbench.fl.vectorized.plan import RoundPlan
from fedbench.fl.vectorized.stacked_modules import StackedModules, why_not_stackable
from fedbench.fl.vectorized.stacked_state import StackedState

# Rows per evaluation pass of a model with the batched MLP step: at most ~EVAL_ROWS x width floats
EVAL_ROWS = 4096


class VectorizedEngine(Engine):
    """Same interface and row contract as :class:`~fedbench.fl.engine.Engine`; trains the round's
    clients at once. ``fl.fast_step`` picks the hand-written batched step where the model has one."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.step = None  # the exact engine's per-client step is not used here
        reason = why_not_stackable(self.model, self.state)
        if reason is not None:
            raise ConfigError("fl.engine", reason, "vectorized")
        self._stacked: StackedState | None = None
        self._mlp_step = BatchedMLPStep.build(self.model, self.state) if self.fl.fast_step else None
        if self._mlp_step is not None:  # a small MLP: the whole test set in one pass (rows independent)
            self.eval_batch = max(self.eval_batch, EVAL_ROWS)
        self.fused_adamw = True

    def _stack(self, K: int) -> StackedState:
        if self._stacked is None or self._stacked.K != K:
            transposed = self._mlp_step.transposed() if self._mlp_step is not None else frozenset()
            self._stacked = StackedState(self.state, K, transposed)
        return self._stacked

    def train_selected(
        self,
        clients: list[tuple[torch.Tensor, torch.Tensor]],
        orders: list[list[torch.Tensor]],
        start_flat: torch.Tensor | list[torch.Tensor],
        mu: float = 0.0,
    ) -> tuple[list[torch.Tensor], list[float]]:
        """Train the clients from ``start_flat`` (one flat start for all, or one per client) with
        their sample orders (``orders[k][epoch]``): (their final flat states, their mean batch
        losses), in the given order."""
        fl = self.fl
        mlp = self._mlp_step
        plan = RoundPlan(clients, orders, fl.batch_size, mlp.num_classes if mlp is not None else None)
        K, T = len(clients), len(plan.batches)
        st = self._stack(K)
        if not isinstance(start_flat, torch.Tensor):  # per client: into the plan's stacked order
            start_flat = [start_flat[k] for k in plan.perm]
        st.load(start_flat)
        full_P, full_G = st.views(st.W), st.views(st.G)
        device = self.state.flat.device
        losses = torch.zeros((T, K), device=device)
        step_numbers = torch.arange(1, T + 1, dtype=torch.float32, device=device)
        self.model.train()
        if mlp is not None:
            mlp.refresh()
        generic = None if mlp is not None else StackedModules(self.model, self.state, st)
        ctx = generic.installed() if generic is not None else contextlib.nullcontext()
        with torch.no_grad(), ctx:
            for t, b in enumerate(plan.batches):
                if device.type != "cpu":
                    b = b.to(device)
                m = b.m
                if m == K:
                    P, G = full_P, full_G
                else:
                    P, G = st.views(st.W, m), st.views(st.G, m)
                if generic is not None:
                    st.G.zero_()
                    losses[t, :m] = generic(P, G, b)
                else:
                    mlp(P, G, b, losses[t, :m])
                st.step(m, step_numbers[t], self.opt, start_flat, mu, fused=self.fused_adamw)
        means = (losses.double().cpu().sum(0) / torch.tensor(plan.steps, dtype=torch.float64)).tolist()
        finals, out_losses = [None] * K, [0.0] * K
        for j, k in enumerate(plan.perm):
            finals[k] = st.export(j)
            out_losses[k] = means[j]
        return finals, out_losses

    def train_clients(self, selected: list[int], starts: list[Payload], mu: float, rnd: int):
        """All selected clients at once (see :meth:`train_selected`), each from its start (one
        shared start, or e.g. each client's LoRA rank); yields what :meth:`Engine.train_clients`
        yields. Draws a model makes while training (dropout layers) come from one stream per
        round here (per client in the exact engine), so with active dropout the two engines differ."""
        flats: dict[int, torch.Tensor] = {}
        for s in starts:
            if id(s) not in flats:
                self.state.load(s)
                flats[id(s)] = self.state.flat.clone()
        shared = all(s is starts[0] for s in starts)
        start_flat = flats[id(starts[0])] if shared else [flats[id(s)] for s in starts]
        clients = [self.data.clients[cid] for cid in selected]
        orders = self.shuffles(rnd, selected, [len(y) for _, y in clients])
        self.streams.seed_global("train", rnd)
        finals, losses = self.train_selected(clients, orders, start_flat, mu)
        for i, cid in enumerate(selected):
            yield i, cid, len(clients[i][1]), self.state.views(finals[i]), losses[i]
