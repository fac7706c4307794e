"""Client data made on demand, for runs with many clients (``data=tutorial_lazy``).

``data=tutorial`` draws every client's rows from torch's global RNG up front (as the tutorial
does), so memory grows with ``fl.num_clients``: 1,000 clients hold 1,000 x 500 x 128 floats
(~260 MB) before the first round. Here client ``i``'s rows are drawn when it is selected, from
a private generator seeded by ``(seed, i)``, and dropped after the round; only the test set is
kept. Memory then depends on the clients per round, not on the number of clients, and a client
gets the same rows every time it is selected, in any run with the same seed.

The distribution is the tutorial's (Gaussian features, uniform labels, a ``+signal`` bump at
column ``label % dim``); the draws are not the tutorial's (they cannot be: the tutorial's come
from one global stream in creation order), so ``data=tutorial`` stays the reproduction and
this option is for scale studies.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from fedbench.data import FederatedData
from fedbench.data.tutorial import TutorialData
from fedbench.errors import ConfigError
from fedbench.registry import register

_TEST_STREAM = 1  # spawn-key namespaces of the per-dataset generators
_CLIENT_STREAM = 0


def _generator(seed: int, *key: int) -> torch.Generator:
    state = np.random.SeedSequence(seed, spawn_key=key).generate_state(2, np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


@register("data", "tutorial_lazy")
@dataclass
class LazyTutorialData(TutorialData):
    """The tutorial data's settings and distribution; rows drawn per client on demand."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.client_test_fraction:
            raise ConfigError(
                "data.client_test_fraction",
                "must be 0 for data=tutorial_lazy (per-client evaluation scores every client, "
                "which lazy data never holds); use data=tutorial",
                self.client_test_fraction,
            )
        if self.validation_fraction:
            raise ConfigError(
                "data.validation_fraction",
                "must be 0 for data=tutorial_lazy (a validation split is carved from clients held "
                "in memory); use data=tutorial",
                self.validation_fraction,
            )

    def check_compatible(self, components: dict, fl) -> None:
        """Any number of clients: none is held in memory."""

    def labels(self, n: int, gen: torch.Generator) -> torch.Tensor:
        """The first draw of :meth:`make`: a client's labels without its features."""
        return torch.randint(0, self.num_classes, (n,), dtype=torch.long, generator=gen)

    def make(self, n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        y = self.labels(n, gen)
        x = torch.randn(n, self.dim, dtype=torch.float32, generator=gen)
        x[torch.arange(n), y % self.dim] += self.signal
        return x, y

    def build(self, num_clients: int, seed: int) -> LazyFederatedData:
        clients = LazyClients(self, num_clients, seed)
        test = self.make(self.test_size, _generator(seed, _TEST_STREAM))
        return LazyFederatedData(
            clients=clients,
            test=test,
            num_classes=self.num_classes,
            partition="per-client (lazy)",
            on_demand=True,
        )


class LazyClients(Sequence):
    """``clients[i] -> (x, y)``, drawn on each access from client i's own generator."""

    def __init__(self, spec: LazyTutorialData, num_clients: int, seed: int) -> None:
        self.spec, self.n, self.seed = spec, num_clients, seed

    def __len__(self) -> int:
        return self.n

    def _check(self, i) -> int:
        i = int(i)
        if not 0 <= i < self.n:
            raise IndexError(i)
        return i

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(self.n))]
        i = self._check(i)
        return self.spec.make(self.spec.samples_per_client, _generator(self.seed, _CLIENT_STREAM, i))

    def labels(self, i: int) -> torch.Tensor:
        """Client i's labels, the same as ``self[i][1]``, without drawing its features."""
        i = self._check(i)
        return self.spec.labels(self.spec.samples_per_client, _generator(self.seed, _CLIENT_STREAM, i))

    def sizes(self) -> list[int]:
        return [self.spec.samples_per_client] * self.n


@dataclass
class LazyFederatedData(FederatedData):
    def client_sizes(self) -> list[int]:
        return self.clients.sizes()  # without drawing any client's rows

    def common_size(self) -> int:
        return self.clients.spec.samples_per_client

    def client_labels(self, i: int) -> torch.Tensor:
        return self.clients.labels(i)
