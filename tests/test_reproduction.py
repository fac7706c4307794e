"""fedbench reproduces the Tutorial 166 seed script's per-round accuracies bit for bit.

The fixture was produced by running the unmodified seed script (scripts/seed_reference.py) on
the default and several changed ``FoundationConfig``s, each at a recorded thread count.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import ROOT, compose_cfg, seed_fixture
from fedbench.run import run

CASES = seed_fixture()["cases"]
SEED_MD = ROOT.parent / "shared" / "seed" / "tutorial_166.md"


def test_fixture_is_for_this_torch():
    assert {c["torch"] for c in CASES} == {torch.__version__}, "fixture was recorded on another torch"
    assert {c["name"] for c in CASES} >= {"default", "default_1_thread"}


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_accuracies_equal_seed(case):
    cfg = compose_cfg([*case["fedbench_overrides"], f"threads={case['threads']}"])
    df = run(cfg)
    assert len(case["accuracy"]) == len(df)
    assert df["accuracy"].tolist() == case["accuracy"]  # exact, not approximate


def test_tutorial_logged_numbers():
    """The numbers the tutorial itself logs (rounds 10/20/30) are in the default case."""
    default = next(c for c in CASES if c["name"] == "default")
    assert default["threads"] == 2
    assert [round(default["accuracy"][i], 4) for i in (9, 19, 29)] == [0.166, 0.18, 0.196]


@pytest.mark.slow
@pytest.mark.skipif(not SEED_MD.is_file(), reason=f"seed tutorial not present at {SEED_MD}")
def test_fixture_matches_live_seed_script():
    """Re-run the real seed script on a short changed config: the fixture is not stale."""
    case = next(c for c in CASES if c["name"] == "seed7_short")
    cmd = [sys.executable, str(ROOT / "scripts" / "seed_reference.py"), "--seed-md", str(SEED_MD),
           "--threads", str(case["threads"])]
    for k, v in case["seed_fields"].items():
        cmd += ["--set", f"{k}={v}"]
    out = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=600).stdout)
    assert out["accuracy"] == case["accuracy"]
