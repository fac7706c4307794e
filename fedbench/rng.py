"""Random streams: ``rng=tutorial`` (one coupled stream) or ``rng=paired`` (one per purpose).

``tutorial`` is the seed script's randomness: torch's global generator, seeded once, feeds data
generation, model initialisation, every shuffle and every evaluation loader in the order they
happen, and numpy's legacy ``RandomState(fl.sampling_seed)`` selects clients. It is the only
way to reproduce the tutorial's numbers, but any draw one run makes and another does not
(LoRA's initialisation, one more evaluation) shifts every later draw.

``paired`` derives an independent stream for each purpose from ``(seed, purpose, key...)``
(:func:`seed_for`, a :class:`numpy.random.SeedSequence`): the data and its partition, the
initialisation of each module (keyed by its name), client selection (per round), each client's
shuffle (per round and epoch), the draws a client makes while training (e.g. dropout layers;
per round and client), client dropout (per round and client) and any noise added later (e.g.
privacy, per round). Nothing is left to chance order, so two runs that differ only in method,
codec, strategy, learning rate or evaluation schedule select the same clients in every round
and give every client the same batches; and a stream is a pure function of its key, so a
resumed run needs no saved generator state for it.
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

MODES = ("paired", "tutorial")

# A purpose's number is part of every key derived for it: never renumber, only add.
PURPOSES = {
    "data": 1,
    "init": 2,
    "select": 3,
    "shuffle": 4,
    "train": 5,
    "dropout": 6,
    "privacy": 7,
    "client_split": 8,
    "system": 9,
    "validation_split": 10,
}


def _word(part: int | str) -> int:
    """A key part as a non-negative integer (names hash to 64 bits, stably across processes)."""
    if isinstance(part, str):
        return int.from_bytes(hashlib.sha256(part.encode()).digest()[:8], "little")
    if part < 0:
        raise ValueError(f"stream keys are non-negative integers or strings, got {part}")
    return int(part)


def seed_for(seed: int, purpose: str, *key: int | str) -> int:
    """The 64-bit seed of stream ``(seed, purpose, key...)``."""
    words = [_word(seed), PURPOSES[purpose], *(_word(k) for k in key)]
    hi, lo = np.random.SeedSequence(words).generate_state(2, np.uint32)
    return int(hi) << 32 | int(lo)


def torch_generator(seed: int, purpose: str, *key: int | str) -> torch.Generator:
    return torch.Generator().manual_seed(seed_for(seed, purpose, *key))


def numpy_generator(seed: int, purpose: str, *key: int | str) -> np.random.Generator:
    return np.random.default_rng(seed_for(seed, purpose, *key))


@dataclass(frozen=True)
class Streams:
    """The run's random streams: ``mode`` (``paired`` or ``tutorial``) and the run's seed."""

    mode: str
    seed: int

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"rng mode must be one of {MODES}, got {self.mode!r}")

    @property
    def paired(self) -> bool:
        return self.mode == "paired"

    def torch(self, purpose: str, *key: int | str) -> torch.Generator:
        return torch_generator(self.seed, purpose, *key)

    def numpy(self, purpose: str, *key: int | str) -> np.random.Generator:
        return numpy_generator(self.seed, purpose, *key)

    def seed_global(self, purpose: str, *key: int | str) -> None:
        """Under ``paired``, reseed torch's global generator for what draws from it next (code
        that takes no generator: a model's initialisation, dropout layers); no-op for ``tutorial``."""
        if self.paired:
            torch.manual_seed(seed_for(self.seed, purpose, *key))


_ACTIVE: contextvars.ContextVar[Streams | None] = contextvars.ContextVar("fedbench_streams", default=None)


@contextlib.contextmanager
def building(streams: Streams) -> Iterator[None]:
    """While a run's model is built: :func:`module_init` seeds per module under ``paired``."""
    token = _ACTIVE.set(streams)
    try:
        yield
    finally:
        _ACTIVE.reset(token)


def module_init(name: str) -> None:
    """Call just before creating the parameters of module ``name``: under ``paired`` (inside
    :func:`building`) its initialisation draws from its own stream, so it does not depend on
    which other modules exist; otherwise nothing happens (the tutorial's single stream)."""
    streams = _ACTIVE.get()
    if streams is not None:
        streams.seed_global("init", name)
