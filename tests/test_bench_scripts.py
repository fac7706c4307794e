"""The benchmark scripts' harness (not their timings): scripts/bench_flower.py parses a Flower
run, times fedbench beside it and refuses a missing Flower venv in one line."""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import ROOT

FAKE_FLOWER = """
import sys
assert sys.argv[1:] == ["--resources", "1cpu"], sys.argv
print("timing [s]: imports 0.01 | total in-process 0.01")
print("Final accuracy: 0.1234")
"""


def _bench_flower(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "bench_flower.py"), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_missing_flower_venv_is_one_line(tmp_path):
    fake = tmp_path / "flower_tutorial.py"
    fake.write_text(FAKE_FLOWER)
    res = _bench_flower("--flower-python", str(tmp_path / "nope" / "python"), "--flower-script", str(fake))
    assert res.returncode == 2
    assert res.stderr.count("\n") == 1 and "make bench-flower" in res.stderr
    res = _bench_flower("--flower-script", str(tmp_path / "missing.py"))
    assert res.returncode == 2 and "not found" in res.stderr


@pytest.mark.slow
def test_bench_flower_reports_ratios_and_accuracies(tmp_path):
    """One triple against a stand-in for Flower that finishes at once: both fedbench engines
    run the tutorial for real, and the report prints their ratios and final accuracies."""
    fake = tmp_path / "flower_tutorial.py"
    fake.write_text(FAKE_FLOWER)
    res = _bench_flower("--repeats", "1", "--flower-python", sys.executable, "--flower-script", str(fake))
    assert res.returncode == 0, res.stderr[-2000:]
    out = res.stdout
    assert "Flower's timing [s]: imports 0.01" in out
    assert "median ratio exact/Flower" in out and "median ratio vectorized/Flower" in out
    assert "NOT met" in out  # a stand-in that takes no time beats fedbench
    assert "Flower median 0.1234" in out
    final = out.split("fedbench exact ")[1].split(" ")[0]
    assert 0.0 < float(final) < 1.0
