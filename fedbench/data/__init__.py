"""Datasets. A data component's ``build(num_clients, seed)`` returns a :class:`FederatedData`."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class FederatedData:
    """Client training sets and one shared test set, as tensors; ``client_tests``: each
    client's own held-out split (None: no per-client evaluation). ``evaluated_on``: what
    ``test`` holds: the test set, or (``data.validation_fraction``) a validation split carved
    from the clients' training data, which then replaces it."""

    clients: list[tuple[torch.Tensor, torch.Tensor]]
    test: tuple[torch.Tensor, torch.Tensor]
    num_classes: int
    partition: str
    client_tests: list[tuple[torch.Tensor, torch.Tensor]] | None = None
    evaluated_on: str = "test"  # "test" | "validation"
    # Clients made when asked for (data=tutorial_lazy): nothing may loop over every client.
    on_demand: bool = False

    def client_sizes(self) -> list[int]:
        return [len(y) for _, y in self.clients]

    def common_size(self) -> int | None:
        """The size every client has by construction (data made on demand), else None. Weighted
        sampling over such clients is uniform sampling and is drawn as such, without a weight
        per client."""
        return None

    def client_labels(self, i: int) -> torch.Tensor:
        """Client ``i``'s labels (for histograms; data made on demand may skip the features)."""
        return self.clients[i][1]
