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


def compose_cfg(overrides: list[str] | tuple[str, ...] = ()):
    return compose(list(overrides))


def run_cli(args: list[str], cwd: Path, timeout: float = 300, extra_path=()) -> subprocess.CompletedProcess:
    """``python -m fedbench ARGS`` in a fresh process (outputs go under ``cwd``); ``extra_path``
    folders go on its ``PYTHONPATH`` before the repository."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([*map(str, extra_path), str(ROOT)]))
    return subprocess.run(
        [sys.executable, "-m", "fedbench", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


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
