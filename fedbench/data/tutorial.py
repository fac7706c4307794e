"""Tutorial 166's synthetic data: Gaussian features with a +signal bump at column (label % dim).

The tutorial gives each dataset a seed (``seed + i`` per client, 999 for the test set), but that
seed only reseeds numpy while the values come from torch's global RNG, in creation order:
clients first, then the test set. fedbench draws them the same way, so the per-dataset seeds
have no knob here; their only effect (numpy's state is that of seed 999 when clients are
sampled) is ``fl.sampling_seed``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from fedbench.contracts import DataConfig
from fedbench.data import FederatedData
from fedbench.data.client_split import check_fraction, check_validation_fraction
from fedbench.errors import ConfigError
from fedbench.registry import register


@register("data", "tutorial")
@dataclass
class TutorialData(DataConfig):
    dim: int = 128
    num_classes: int = 10
    samples_per_client: int = 500
    test_size: int = 500
    signal: float = 1.0
    # Share of each client's samples held out as its own test set (0 = no per-client evaluation).
    client_test_fraction: float = 0.0
    # Share of each client's training samples pooled into a validation set that the run evaluates
    # on instead of the test set (tuning: experiment=tune_lr); 0 = the test set.
    validation_fraction: float = 0.0

    def __post_init__(self) -> None:
        check_fraction(self.client_test_fraction)
        check_validation_fraction(self.validation_fraction)
        for key in ("dim", "samples_per_client", "test_size"):
            if getattr(self, key) < 1:
                raise ConfigError(f"data.{key}", "must be an integer >= 1", getattr(self, key))
        if self.num_classes < 2:
            raise ConfigError("data.num_classes", "must be an integer >= 2", self.num_classes)
        check_validation_fraction(
            self.validation_fraction, self.samples_per_client, self.client_test_fraction
        )

    @property
    def input_dim(self) -> int:
        return self.dim

    def check_compatible(self, components: dict, fl) -> None:
        """Refuse, before anything is allocated, client rows that cannot fit in memory: over
        half of this machine's physical memory (the rest is for the model and training)."""
        need = fl.num_clients * self.samples_per_client * (4 * self.dim + 8)
        have = physical_memory_bytes()
        if have and need > have / 2:
            raise ConfigError(
                "fl.num_clients",
                f"data=tutorial would hold {need / 1e9:.1f} GB of client rows in memory "
                f"({fl.num_clients} clients x {self.samples_per_client} samples), more than half "
                f"of this machine's {have / 1e9:.1f} GB; use data=tutorial_lazy (each client's rows "
                "are drawn when it is selected)",
                fl.num_clients,
            )

    def _make(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.randn(n, self.dim, dtype=torch.float32)
        y = torch.randint(0, self.num_classes, (n,), dtype=torch.long)
        x[torch.arange(n), y % self.dim] += self.signal  # one entry per row: same as the loop
        return x, y

    def build(self, num_clients: int, seed: int) -> FederatedData:
        clients = [self._make(self.samples_per_client) for _ in range(num_clients)]
        test = self._make(self.test_size)
        return FederatedData(clients=clients, test=test, num_classes=self.num_classes, partition="per-client")


def physical_memory_bytes() -> int | None:
    """This machine's physical memory (None where the OS does not say)."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None
