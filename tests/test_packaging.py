"""The wheel: every module and every config file ships; an installed fedbench runs anywhere."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest
from conftest import ROOT


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            str(ROOT),
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=out,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    (whl,) = out.glob("fedbench-*.whl")
    return whl


def test_the_wheel_holds_every_module_and_every_config_file(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    modules = {p.relative_to(ROOT).as_posix() for p in (ROOT / "fedbench").rglob("*.py")}
    configs = {
        "fedbench/conf/" + p.relative_to(ROOT / "conf").as_posix() for p in (ROOT / "conf").rglob("*.yaml")
    }
    assert len(configs) > 50
    assert modules - names == set(), "modules missing from the wheel (list the package in pyproject.toml)"
    assert configs - names == set()


@pytest.mark.slow
def test_an_installed_wheel_runs_from_another_directory(wheel, tmp_path):
    """``pip install <wheel>`` into a fresh venv (its dependencies taken from this environment's
    site-packages, fedbench itself only from the wheel), then ``fedbench`` outside the repo."""
    env_dir = tmp_path / "fresh"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    py = env_dir / "bin" / "python"
    site = subprocess.run(
        [str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    # this environment's packages (torch, hydra, ...) without its editable fedbench
    (Path(site) / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    inst = subprocess.run(
        [str(py), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert inst.returncode == 0, inst.stderr[-3000:]
    work = tmp_path / "elsewhere"
    work.mkdir()
    where = subprocess.run(
        [str(py), "-c", "import fedbench, fedbench.config as c; print(fedbench.__file__); print(c.CONF_DIR)"],
        capture_output=True,
        text=True,
        env=env,
        cwd=work,
    )
    module_file, conf_dir = where.stdout.split()
    assert module_file.startswith(site) and conf_dir.startswith(site), where.stdout
    run = subprocess.run(
        [str(env_dir / "bin" / "fedbench"), "fl.num_rounds=1", "threads=1", "hydra.run.dir=run"],
        capture_output=True,
        text=True,
        env=env,
        cwd=work,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert (work / "run" / "summary.json").is_file() and "final accuracy" in run.stdout
