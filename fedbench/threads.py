"""The one place that decides torch's intra-op thread count for a run.

Two processes that each use every core slow each other down many times over, and the thread
count changes float rounding (the tutorial's numbers are 2-thread numbers). So: an explicit
``threads`` always wins; otherwise a launcher that runs jobs side by side gets cores / jobs
threads per job (joblib: ``n_jobs``; submitit/ray: their CPUs per task, else 1); a sequential
run keeps torch's default. The result is recorded in ``summary.json``.
"""

from __future__ import annotations

import os


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - non-Linux
        return os.cpu_count() or 1


def threads_for_job(configured: int | None, launcher: dict | None) -> int | None:
    """Threads for this job: ``configured`` if set, else derived from the Hydra launcher config.

    ``launcher`` is the resolved ``hydra.launcher`` node (``None`` outside Hydra). Returns
    ``None`` for "keep torch's default".
    """
    if configured is not None:
        return configured
    if not launcher:
        return None
    target = str(launcher.get("_target_", ""))
    cores = cpu_count()
    if "joblib" in target:
        n_jobs = launcher.get("n_jobs", -1)
        n_jobs = cores if n_jobs is None or n_jobs < 1 else n_jobs
        return max(1, cores // min(n_jobs, cores))
    if "submitit" in target or "ray" in target:
        cpus = launcher.get("cpus_per_task") or (launcher.get("ray", {}) or {}).get("remote", {}).get(
            "num_cpus"
        )
        return max(1, int(cpus)) if cpus else 1
    return None
