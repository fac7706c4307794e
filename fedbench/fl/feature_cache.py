"""Frozen-feature caching: when only the head trains, compute the backbone once per dataset.

With ``method=head_only`` every training step and every evaluation pushes its rows through the
frozen backbone only to hand the same features to the head, round after round. If the backbone
is deterministic, the features of a row never change, so they are computed once per row (the
first time its client is selected, or for the test set at start) and the engine trains and
evaluates a head-only model on them. Nothing else changes: the engine, its RNG draws (shuffles,
sampling), payloads and bytes are the same.

What is cached is exactly what the head receives in ``model(x)`` (captured by a forward
pre-hook on ``model.head``), so any model with a ``head`` module works: the tutorial MLP, the
Hugging Face encoders (the pooled sentence embedding). A model may instead offer
``backbone_features(x)``, which is then used.

Applicable when: every trainable tensor belongs to ``model.head``; the backbone has no active
dropout (``nn.Dropout`` with p > 0, or a ``dropout_prob``/``dropout_p`` attribute > 0, as
BERT's SDPA attention has) and no batch-norm (both make features depend on the step, not only
on the row). Otherwise :func:`why_not_cacheable` names the reason and the run trains uncached.

Exactness: features are computed in chunks of ``chunk`` rows (64, the evaluation batch) with
the model in eval mode. A matmul's result row depends only on that row as long as the kernel
does not switch to a small-M path: on torch 2.13 CPU, rows of batches of >= 4 rows (1 thread)
or of a multiple of 4 / >= 12 rows (2 threads) are bit-identical to the big-chunk rows, so on
the tutorial's batch sizes (16 and a last batch of 4; evaluation 64 and 52) the cached run
equals the uncached run bit for bit (``tests/test_feature_cache.py``). A batch of 1-3 rows
(e.g. ``fl.batch_size`` leaving a remainder of 1) goes through matrix-vector kernels and
differs in the last bits (relative ~1e-7); for BERT-family encoders the uncached path also
trims padding per batch, so features agree to ~1e-6 rather than bitwise. The tests check these
tolerances.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from fedbench.data import FederatedData
from fedbench.fl.state import FlatParams


def why_not_cacheable(model: nn.Module, state: FlatParams) -> str | None:
    """None when the backbone's features can be cached for this model and trainable state."""
    if not isinstance(getattr(model, model.head_name, None), nn.Module):
        return "the model has no task head (a causal LM predicts tokens with its own LM head)"
    head = model.get_submodule(model.head_name)
    prefix = model.head_name + "."
    others = [n for n in state.names if not n.startswith(prefix)]
    if others:
        return f"parameters outside the head train ({others[0]}, ...)"
    head_modules = {id(m) for m in head.modules()}
    for name, mod in model.named_modules():
        if id(mod) in head_modules:
            continue
        if isinstance(mod, nn.modules.dropout._DropoutNd) and mod.p > 0:
            return f"dropout in the backbone ({name}, p={mod.p}); set the model's dropout to 0"
        for attr in ("dropout_prob", "dropout_p"):
            p = getattr(mod, attr, None)
            if isinstance(p, float) and p > 0:
                return f"dropout in the backbone ({name}.{attr}={p}); set the model's dropout to 0"
        if isinstance(mod, nn.modules.batchnorm._BatchNorm):
            return f"batch norm in the backbone ({name}) depends on the batch"
    return None


@torch.no_grad()
def backbone_features(model: nn.Module, x: torch.Tensor, chunk: int = 64) -> torch.Tensor:
    """What the model's head receives for each row of ``x``, computed ``chunk`` rows at a time."""
    was_training = model.training
    model.eval()
    try:
        seen: list[torch.Tensor] = []
        hook = model.get_submodule(model.head_name).register_forward_pre_hook(
            lambda mod, args: seen.append(args[0].detach())
        )
        try:
            for i in range(0, len(x), chunk):
                model(x[i : i + chunk])
        finally:
            hook.remove()
        return torch.cat(seen)
    finally:
        model.train(was_training)


class HeadModel(nn.Module):
    """The head alone, as a model over cached features. Parameter names stay ``head.*``, and
    the head's tensors are the very views into the run's flat state."""

    architecture = "head"  # what the engine's hand-written step (fedbench.fl.mlp_step) looks for

    def __init__(self, head: nn.Module, head_name: str = "head") -> None:
        super().__init__()
        self.head_name = head_name
        self.add_module(head_name, head)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return getattr(self, self.head_name)(features)


class CachedClients(Sequence):
    """``clients[i] -> (features, labels)``; a client's features are computed on first use.

    ``max_clients`` bounds the memory (least recently used clients are dropped and recomputed
    when selected again); None keeps every client's features (each row computed once).
    """

    def __init__(
        self, model: nn.Module, clients: Sequence, chunk: int, max_clients: int | None = None
    ) -> None:
        self.model, self.source, self.chunk, self.max_clients = model, clients, chunk, max_clients
        self.cache: OrderedDict[int, tuple[torch.Tensor, torch.Tensor]] = OrderedDict()
        self.computed_rows = 0  # rows pushed through the backbone

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        hit = self.cache.get(i)
        if hit is None:
            x, y = self.source[i]
            hit = (backbone_features(self.model, x, self.chunk), y)
            self.cache[i] = hit
            self.computed_rows += len(y)
            if self.max_clients is not None and len(self.cache) > self.max_clients:
                self.cache.popitem(last=False)
        else:
            self.cache.move_to_end(i)
        return hit

    def labels(self, i: int) -> torch.Tensor:
        return self.source[i][1]


@dataclass
class CachedData(FederatedData):
    """A :class:`FederatedData` whose inputs are the backbone's features."""

    source: FederatedData | None = None

    def client_sizes(self) -> list[int]:
        return self.source.client_sizes()

    def common_size(self) -> int | None:
        return self.source.common_size()

    def client_labels(self, i: int) -> torch.Tensor:
        return self.source.client_labels(i)


def cache_features(
    model: nn.Module, data: FederatedData, chunk: int = 64, max_clients: int | None = None
) -> tuple[HeadModel, CachedData]:
    """(head-only model, data with features for inputs). Call :func:`why_not_cacheable` first."""
    head_name = model.head_name
    clients = CachedClients(model, data.clients, chunk, max_clients)
    x_test, y_test = data.test
    test = (backbone_features(model, x_test, chunk), y_test)
    client_tests = None
    if data.client_tests is not None:  # each client's held-out split, as features (once)
        client_tests = [(backbone_features(model, x, chunk), y) for x, y in data.client_tests]
    cached = CachedData(
        clients=clients,
        test=test,
        num_classes=data.num_classes,
        partition=data.partition,
        client_tests=client_tests,
        evaluated_on=data.evaluated_on,
        on_demand=data.on_demand,
        source=data,
    )
    return HeadModel(model.get_submodule(head_name), head_name), cached
