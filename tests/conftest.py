"""Shared helpers: compose the real Hydra config (conf/) with overrides, as the CLI does."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fedbench.config import compose

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
FIXTURES = Path(__file__).resolve().parent / "fixtures"


# The smallest tutorial-MLP run (2 rounds, 3 clients, 32 samples each) at one thread: for tests
# of the run folder, the CLI and the report that need real runs but not their numbers.
TINY_MLP = [
    "fl.num_rounds=2",
    "fl.num_clients=3",
    "fl.clients_per_round=2",
    "model.hidden_dim=16",
    "model.num_layers=1",
    "data.samples_per_client=32",
    "data.test_size=32",
    "threads=1",
]

# A few short BBC articles over 2 clients, one round at one thread: the text runs that method
# and PEFT-export tests train (add model=..., method=...).
TINY_TEXT = [
    "data=bbc",
    "data.train_size=32",
    "data.test_size=16",
    "data.max_length=32",
    "data.min_size=8",
    "fl.num_rounds=1",
    "fl.num_clients=2",
    "fl.clients_per_round=2",
    "fl.local_epochs=1",
    "fl.batch_size=8",
    "fl.lr=0.01",
    "threads=1",
]


# The same over 3 clients of 16 articles, 24 tokens, without weight decay (so a parameter that
# gets no gradient stays exactly where it started): the method-table tests.
TEXT_THREE_CLIENTS = [
    "data=bbc",
    "data.train_size=48",
    "data.test_size=16",
    "data.max_length=24",
    "data.min_size=4",
    "fl.num_rounds=1",
    "fl.num_clients=3",
    "fl.clients_per_round=2",
    "fl.local_epochs=1",
    "fl.batch_size=8",
    "fl.lr=0.01",
    "threads=1",
    "fl.weight_decay=0.0",
]


# A tiny tutorial MLP (8 -> 16 x 3 -> head) over 3 clients of 32 rows, no weight decay.
MLP_THREE_CLIENTS = [
    "fl.num_rounds=1",
    "fl.num_clients=3",
    "fl.clients_per_round=2",
    "fl.local_epochs=1",
    "data.samples_per_client=32",
    "data.test_size=16",
    "model.hidden_dim=16",
    "model.num_layers=3",
    "model.input_dim=8",
    "threads=1",
    "fl.weight_decay=0.0",
]


def engine_for(spec, data, model, state, engine_cls=None):
    """An engine (the exact one unless ``engine_cls``) over a built run, with the spec's parts."""
    from fedbench.fl.engine import Engine
    from fedbench.fl.privacy import NoPrivacy
    from fedbench.rng import Streams

    return (engine_cls or Engine)(
        model=model,
        state=state,
        data=data,
        fl=spec.fl,
        strategy=spec.strategy,
        codec_up=spec.compression_up,
        codec_down=spec.compression_down,
        method=spec.method,
        streams=Streams(spec.rng, spec.seed),
        privacy=spec.privacy if spec.privacy is not None else NoPrivacy(),
    )


def compose_cfg(overrides: list[str] | tuple[str, ...] = ()):
    return compose(list(overrides))


def _run_module(
    module: str, args: list[str], cwd: Path, timeout: float, extra_path=(), env=None, preexec_fn=None
) -> subprocess.CompletedProcess:
    env = dict(os.environ, **(env or {}), PYTHONPATH=os.pathsep.join([*map(str, extra_path), str(ROOT)]))
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        preexec_fn=preexec_fn,
    )


def run_cli(
    args: list[str], cwd: Path, timeout: float = 300, extra_path=(), env=None, preexec_fn=None
) -> subprocess.CompletedProcess:
    """``python -m fedbench ARGS`` in a fresh process (outputs go under ``cwd``); ``extra_path``
    folders go on its ``PYTHONPATH`` before the repository, ``env`` adds environment variables,
    ``preexec_fn`` runs in the child before it starts (e.g. to set a resource limit)."""
    return _run_module("fedbench", args, cwd, timeout, extra_path, env, preexec_fn)


def run_report(args: list[str], cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    """``python -m fedbench.report ARGS`` in a fresh process."""
    return _run_module("fedbench.report", args, cwd, timeout)


class StopAfter:
    """An ``on_round`` callback that interrupts a run (as Ctrl-C would) after round ``n``."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __call__(self, row, spec) -> None:
        if row["round"] == self.n:
            raise KeyboardInterrupt


@pytest.fixture(autouse=True)
def _restore_torch_threads():
    """Runs may set torch's thread count; keep tests independent of each other."""
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)
