"""Sweeps through Hydra's launchers (joblib, submitit_local), the experiment configs, and the
per-job thread count each launcher gives a run."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from conftest import CONF, TINY_MLP, compose_cfg, run_cli
from omegaconf import OmegaConf

from fedbench import report as rep
from fedbench.config import load_registry, validate

TINY = [t for t in TINY_MLP if not t.startswith("threads=")]  # threads come from the launcher


def experiment(name: str) -> str:
    """``experiment=NAME`` once conf/config.yaml lists an experiment default, else ``+experiment=NAME``."""
    defaults = OmegaConf.to_container(OmegaConf.load(CONF / "config.yaml")).get("defaults", [])
    listed = any(isinstance(d, dict) and any(str(k).split()[-1] == "experiment" for k in d) for d in defaults)
    return f"{'' if listed else '+'}experiment={name}"


def run_dirs(sweep: Path) -> list[Path]:
    return sorted(
        (p for p in sweep.iterdir() if p.is_dir() and not p.name.startswith(".")),
        key=lambda p: int(p.name.split("_")[0]),
    )


def summaries(sweep: Path) -> list[dict]:
    return [json.loads((p / "summary.json").read_text()) for p in run_dirs(sweep)]


def has_plugin(name: str) -> bool:
    try:
        __import__(f"hydra_plugins.{name}")
        return True
    except ImportError:
        return False


needs_joblib = pytest.mark.skipif(
    not has_plugin("hydra_joblib_launcher"),
    reason="hydra-joblib-launcher not installed (pip install -e '.[sweep]')",
)
needs_submitit = pytest.mark.skipif(
    not has_plugin("hydra_submitit_launcher"),
    reason="hydra-submitit-launcher not installed (pip install -e '.[sweep]')",
)


@needs_joblib
def test_joblib_sweep_runs_jobs_with_one_thread_each_and_reports(tmp_path):
    """No ``threads`` set: the joblib launcher's jobs get cores / n_jobs threads (here 1)."""
    sweep = tmp_path / "multirun"
    res = run_cli(
        [
            "-m",
            "method=lora,full,head_only",
            "seed=0,1",
            *TINY,
            "hydra/launcher=joblib",
            "hydra.launcher.n_jobs=2",
            f"hydra.sweep.dir={sweep}",
        ],
        cwd=tmp_path,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert "Joblib.Parallel" in res.stdout + res.stderr  # really the joblib launcher
    s = summaries(sweep)
    assert len(s) == 6 and {x["status"] for x in s} == {"complete"}
    assert [x["threads"] for x in s] == [1] * 6
    assert all(x["config"]["threads"] is None for x in s)  # derived from the launcher, not configured
    out = rep.report([str(sweep)], tmp_path / "report", figures=False)
    runs = out["runs"]
    assert len(runs) == 6 * 2 and set(runs["threads"]) == {1}
    assert sorted(out["summary"]["label"]) == ["full", "head_only", "lora"]


@needs_submitit
def test_submitit_local_sweep(tmp_path):
    sweep = tmp_path / "multirun"
    res = run_cli(
        [
            "-m",
            "method=lora,head_only",
            *TINY,
            "hydra/launcher=submitit_local",
            "hydra.launcher.timeout_min=5",
            f"hydra.sweep.dir={sweep}",
        ],
        cwd=tmp_path,
        timeout=600,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert (sweep / ".submitit").is_dir()  # the jobs went through submitit
    s = summaries(sweep)
    assert [x["choices"]["method"] for x in s] == ["lora", "head_only"]
    assert {x["status"] for x in s} == {"complete"} and [x["threads"] for x in s] == [1, 1]
    out = rep.report([str(sweep)], tmp_path / "report", figures=False)  # .submitit/ is not a run
    assert out["runs"]["run_dir"].nunique() == 2 and not out["skipped"]


def test_comm_efficiency_sweep_is_defined_in_the_experiment_and_every_job_is_valid(tmp_path):
    """``-m experiment=comm_efficiency`` alone sweeps arms x seeds (from hydra.sweeper.params)."""
    cfg = compose_cfg([experiment("comm_efficiency")])
    hydra_cfg = OmegaConf.load(CONF / "experiment" / "comm_efficiency.yaml")
    params = hydra_cfg.hydra.sweeper.params
    arms = str(params.arm).split(",")
    assert {"full", "head_only"} <= set(arms) and len([a for a in arms if a.startswith("lora_r")]) >= 3
    assert len(str(params.seed).split(",")) >= 3
    assert cfg.threads == 1
    ranks = set()
    for arm in arms:
        spec = validate(compose_cfg([experiment("comm_efficiency"), f"arm={arm}"]))
        method = type(spec.method).__name__
        if arm.startswith("lora_r"):
            assert method == "LoRA" and spec.method.rank == int(arm.removeprefix("lora_r"))
            ranks.add(spec.method.rank)
        else:
            assert method != "LoRA" and "rank" not in spec.resolved["method"]
    assert len(ranks) == len([a for a in arms if a.startswith("lora_r")])


def test_comm_efficiency_multirun_and_report(tmp_path):
    """The real experiment, shrunk: every arm runs (basic launcher) and the report labels them."""
    sweep = tmp_path / "multirun"
    res = run_cli(
        ["-m", experiment("comm_efficiency"), "seed=0", *TINY, f"hydra.sweep.dir={sweep}"],
        cwd=tmp_path,
        timeout=600,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    arms = str(OmegaConf.load(CONF / "experiment" / "comm_efficiency.yaml").hydra.sweeper.params.arm).split(
        ","
    )
    s = summaries(sweep)
    assert [x["choices"]["arm"] for x in s] == arms
    assert {x["threads"] for x in s} == {1}  # pinned by the experiment
    out = rep.report([str(sweep)], tmp_path / "report")
    summary = out["summary"]
    expected = {a if not a.startswith("lora_r") else f"lora r={a.removeprefix('lora_r')}" for a in arms}
    assert set(summary["label"]) == expected
    lora = summary[summary["method"] == "lora"]
    # LoRA's bytes grow with the rank; the rank column is an integer column
    assert lora.sort_values("rank")["mb_total"].is_monotonic_increasing
    assert pd.api.types.is_integer_dtype(out["runs"]["rank"])
    assert (tmp_path / "report" / "pareto.png").is_file()


@needs_joblib
def test_tutorial_166_pins_the_seed_thread_count_under_a_parallel_launcher(tmp_path):
    """joblib would give the job 1 thread; experiment=tutorial_166 keeps the seed's 2."""
    sweep = tmp_path / "multirun"
    res = run_cli(
        [
            "-m",
            experiment("tutorial_166"),
            *TINY,
            "hydra/launcher=joblib",
            "hydra.launcher.n_jobs=2",
            f"hydra.sweep.dir={sweep}",
        ],
        cwd=tmp_path,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    (s,) = summaries(sweep)
    assert s["threads"] == 2 and s["config"]["threads"] == 2
    # (without the experiment the same launcher gives 1: test_joblib_sweep_runs_jobs_with_one_thread_each)


def test_tutorial_166_is_the_default_run_with_two_threads_and_the_tutorial_stream():
    base = OmegaConf.to_container(compose_cfg([]), resolve=True)
    exp = OmegaConf.to_container(compose_cfg([experiment("tutorial_166")]), resolve=True)
    assert exp.pop("threads") == 2 and base.pop("threads") is None
    assert exp.pop("rng") == "tutorial" and base.pop("rng") == "paired"
    assert exp == base


@needs_submitit
def test_slurm_preset_composes():
    """The cluster preset is valid Hydra config (it cannot be run here: no Slurm)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    load_registry()  # the components' schemas (alone, this test would not find them)
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(
            "config", overrides=["hydra/launcher=submitit_slurm_fedbench"], return_hydra_config=True
        )
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher") and launcher.cpus_per_task == 1
    from fedbench.threads import threads_for_job

    assert threads_for_job(None, OmegaConf.to_container(launcher)) == 1


needs_ray = pytest.mark.skipif(
    not has_plugin("hydra_ray_launcher"), reason="hydra-ray-launcher not installed (pip install -e '.[ray]')"
)


@needs_ray
@pytest.mark.slow
def test_ray_sweep_on_a_local_ray_instance(tmp_path):
    """hydra/launcher=ray starts a local Ray instance and runs the jobs as Ray tasks. (With
    ``ray.init.address: null``, the plugin's default, Ray would join a cluster that ``ray start``
    left on this machine; ``local`` always starts a new instance.)"""
    sweep = tmp_path / "multirun"
    res = run_cli(
        [
            "-m",
            "method=lora,head_only",
            *TINY,
            "hydra/launcher=ray",
            "hydra.launcher.ray.init.address=local",
            f"hydra.sweep.dir={sweep}",
        ],
        cwd=tmp_path,
        timeout=600,
        env={"RAY_ADDRESS": ""},  # nor does the environment point it at one
    )
    assert res.returncode == 0, res.stderr[-3000:]
    out = res.stdout + res.stderr
    assert "Ray Launcher is launching 2 jobs" in out and "Started a local Ray instance" in out
    s = summaries(sweep)
    assert [x["choices"]["method"] for x in s] == ["lora", "head_only"]
    assert {x["status"] for x in s} == {"complete"} and [x["threads"] for x in s] == [1, 1]
    report = rep.report([str(sweep)], tmp_path / "report", figures=False)
    assert report["runs"]["run_dir"].nunique() == 2 and not report["skipped"]


@needs_ray
def test_ray_cluster_preset_points_at_an_existing_cluster():
    """The cluster preset composes (no cluster runs in the tests); a job gets the CPUs it asks
    Ray for as torch threads."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from fedbench.threads import threads_for_job

    load_registry()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        preset = compose("config", overrides=["hydra/launcher=ray_cluster"], return_hydra_config=True)
        client = compose(
            "config",
            overrides=[
                "hydra/launcher=ray_cluster",
                "hydra.launcher.ray.init.address=ray://head-node:10001",
                "hydra.launcher.ray.remote.num_cpus=2",
            ],
            return_hydra_config=True,
        )
    GlobalHydra.instance().clear()
    launcher = OmegaConf.to_container(preset.hydra.launcher)
    assert launcher["_target_"].endswith("RayLauncher")
    # ray.init refuses an object store size when it connects: the preset leaves it to the cluster
    assert launcher["ray"]["init"] == {"address": "auto", "object_store_memory": None}
    assert threads_for_job(None, launcher) == 1
    launcher = OmegaConf.to_container(client.hydra.launcher)
    assert launcher["ray"]["init"]["address"] == "ray://head-node:10001"
    assert threads_for_job(None, launcher) == 2
