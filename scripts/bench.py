#!/usr/bin/env python3
"""fedbench's speed, in one invocation: seed script vs fedbench exact vs fedbench vectorised,
the distance to the hardware limit, memory vs number of clients, and MiniLM per-round times.

1. Whole process (``--repeats`` alternating triples: seed, exact, vectorised; fresh processes):
   wall-time ratios to the seed script, medians of the per-triple ratios (machine noise hits a
   triple alike). The seed's logged accuracies (rounds 10/20/30, final) must equal fedbench
   exact's; the vectorised run's largest per-round accuracy difference to exact is printed.
2. In process (no start-up): training + evaluation time of the 30 rounds, exact vs vectorised,
   alternating, medians.
3. Hardware limit: the workload's matmul FLOPs (counted by torch's FlopCounterMode on one
   training step and one evaluation batch, scaled to the run's rows) and this machine's measured
   matmul throughput (best of several shapes, same thread count), so that
   ``limit = FLOPs / throughput`` and ``distance = measured time / limit`` is one number.
4. Client count: fresh ``fedbench`` processes of 3 rounds x 10 clients out of 1,000 and out of
   1,000,000 lazy clients (``data=tutorial_lazy``), alternating: the ratios of their peak RSS
   (``ru_maxrss``) and wall times; one eager run of 1,000 clients for reference.
5. MiniLM (``all-MiniLM-L6-v2``, if installed): per-round time for lora (exact, vectorised) and
   head_only (uncached, cached), on synthetic token ids (no dataset download needed).
6. SmolLM2-135M-Instruct (if installed): LoRA seconds per local step and per round on
   Shakespeare windows, the step's distance to the matmul limit, peak RSS for 10 and 100 clients.

Flower on the same workload is ``scripts/bench_flower.py`` (``make bench-flower``: it builds the
Flower venv once).

    python scripts/bench.py --repeats 3 --threads 1

``--threads N`` runs everything (the seed too, via OMP_NUM_THREADS) with N intra-op threads;
without it each process keeps torch's default. On a busy machine use 1: two threads that
share cores with other processes wait on each other and times explode.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
from seed_reference import DEFAULT_SEED_MD, extract_seed_code  # noqa: E402

TARGETS = {
    "exact": 0.40,
    "vectorized": 0.15,
    "limit": 1.5,
    "rss_ratio": 1.2,
    "wall_ratio": 1.3,
    "cache": 10.0,
}


# --------------------------------------------------------------------------------------------
# child processes
# --------------------------------------------------------------------------------------------
def _child_env(threads: int | None) -> dict:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
        env["MKL_NUM_THREADS"] = str(threads)
    return env


def timed(cmd: list[str], cwd: Path, threads: int | None) -> tuple[float, subprocess.CompletedProcess]:
    t0 = time.perf_counter()
    res = subprocess.run(cmd, cwd=cwd, env=_child_env(threads), capture_output=True, text=True)
    elapsed = time.perf_counter() - t0
    if res.returncode != 0:
        sys.exit(f"bench: {' '.join(cmd)} failed:\n{res.stderr[-2000:]}")
    return elapsed, res


def fedbench_cmd(engine: str, run_dir: Path, threads: int | None) -> list[str]:
    args = ["rng=tutorial", f"fl.engine={engine}", f"hydra.run.dir={run_dir}"]
    return [sys.executable, "-m", "fedbench", *args] + ([f"threads={threads}"] if threads is not None else [])


def seed_accuracies(res: subprocess.CompletedProcess) -> dict:
    logged = {int(r): float(a) for r, a in re.findall(r"Round (\d+): acc=([0-9.]+)", res.stderr + res.stdout)}
    final = re.search(r"Final accuracy: ([0-9.]+)", res.stdout)
    if final:
        logged["final"] = float(final.group(1))
    return logged


# --------------------------------------------------------------------------------------------
# 1. whole process
# --------------------------------------------------------------------------------------------
def whole_process(repeats: int, seed_md: Path, threads: int | None) -> dict:
    import pandas as pd

    times = {"seed": [], "exact": [], "vectorized": []}
    acc_gap = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        seed_py = tmp / "tutorial_166.py"
        seed_py.write_text(extract_seed_code(seed_md))
        for i in range(repeats):
            t_seed, res_seed = timed([sys.executable, str(seed_py)], tmp, threads)
            runs = {}
            for engine in ("exact", "vectorized"):
                run_dir = tmp / f"{engine}{i}"
                t, _ = timed(fedbench_cmd(engine, run_dir, threads), tmp, threads)
                times[engine].append(t)
                runs[engine] = pd.read_parquet(run_dir / "metrics.parquet")
            times["seed"].append(t_seed)
            df = runs["exact"]
            ours = {r: round(float(df.accuracy.iloc[r - 1]), 4) for r in (10, 20, 30)}
            ours["final"] = round(float(df.accuracy.iloc[-1]), 4)
            theirs = seed_accuracies(res_seed)
            if theirs != ours:
                sys.exit(f"bench: accuracies differ: seed {theirs} vs fedbench exact {ours}")
            gap = float((runs["vectorized"].accuracy - df.accuracy).abs().max())
            acc_gap.append(gap)
            print(
                f"  triple {i + 1}/{repeats}: seed {t_seed:6.2f} s  exact {times['exact'][-1]:6.2f} s "
                f"({times['exact'][-1] / t_seed:.3f})  vectorised {times['vectorized'][-1]:6.2f} s "
                f"({times['vectorized'][-1] / t_seed:.3f})  seed == exact accuracies; vectorised "
                f"max |d acc| {gap:.3f}, final {runs['vectorized'].accuracy.iloc[-1]:.3f} vs "
                f"{df.accuracy.iloc[-1]:.3f}",
                flush=True,
            )
    out = {k: statistics.median(v) for k, v in times.items()}
    for engine in ("exact", "vectorized"):
        out[f"{engine}/seed"] = statistics.median([e / s for e, s in zip(times[engine], times["seed"])])
    out["acc_gap"] = max(acc_gap)
    out["times"] = times
    return out


# --------------------------------------------------------------------------------------------
# 2. in process, 3. hardware limit
# --------------------------------------------------------------------------------------------
def _spec(overrides=()):
    sys.path.insert(0, str(ROOT / "tests"))
    from conftest import compose_cfg

    from fedbench.config import validate

    return validate(compose_cfg(list(overrides)))


def train_eval_time(engine: str, overrides=()) -> tuple[float, list[float]]:
    """Seconds of all rounds (training + communication + evaluation), start-up excluded."""
    from fedbench.fl.vectorized import make_engine
    from fedbench.run import build

    spec = _spec(overrides)
    data, model, state = build(spec)
    spec.fl.engine = engine
    eng = make_engine(spec, model, state, data)
    t0 = time.perf_counter()
    acc = [eng.run_round()["accuracy"] for _ in range(spec.fl.num_rounds)]
    return time.perf_counter() - t0, acc


def in_process(repeats: int) -> dict:
    times = {"exact": [], "vectorized": []}
    for i in range(repeats):
        for engine in ("exact", "vectorized"):
            t, _ = train_eval_time(engine)
            times[engine].append(t)
        print(
            f"  pair {i + 1}/{repeats}: exact {times['exact'][-1]:.2f} s  vectorised "
            f"{times['vectorized'][-1]:.2f} s",
            flush=True,
        )
    out = {k: statistics.median(v) for k, v in times.items()}
    out["vectorized/exact"] = statistics.median([v / e for v, e in zip(times["vectorized"], times["exact"])])
    out["times"] = times
    return out


def thread_counts(repeats: int) -> dict:
    """In process, both engines at 2 and at 1 intra-op thread, alternating: medians."""
    import torch

    before = torch.get_num_threads()
    times = {f"{e}/{t}": [] for e in ("exact", "vectorized") for t in (2, 1)}
    try:
        for i in range(repeats):
            for key in times:
                engine, t = key.split("/")
                torch.set_num_threads(int(t))
                times[key].append(train_eval_time(engine)[0])
            print(
                "  round "
                + f"{i + 1}/{repeats}: "
                + "  ".join(f"{k} {v[-1]:.2f} s" for k, v in times.items())
            )
    finally:
        torch.set_num_threads(before)
    return {k: statistics.median(v) for k, v in times.items()}


def workload_flops(overrides=()) -> dict:
    """Matmul FLOPs of the run: one autograd training step and one evaluation batch counted by
    FlopCounterMode (per row), times the rows trained and evaluated."""
    import torch
    import torch.nn.functional as F
    from torch.utils.flop_counter import FlopCounterMode

    from fedbench.run import build

    spec = _spec(overrides)
    data, model, state = build(spec)
    x, y = data.clients[0]
    b = min(spec.fl.batch_size, len(y))
    with FlopCounterMode(display=False) as fc:
        F.cross_entropy(model(x[:b]), y[:b]).backward()
    train_row = fc.get_total_flops() / b
    xt = data.test[0][:64]
    with FlopCounterMode(display=False) as fc, torch.no_grad():
        model(xt)
    eval_row = fc.get_total_flops() / len(xt)
    fl = spec.fl
    rows_trained = (
        fl.num_rounds
        * fl.clients_per_round
        * fl.local_epochs
        * int(sum(data.client_sizes()) / fl.num_clients)
    )
    rows_eval = fl.num_rounds * len(data.test[1])
    total = train_row * rows_trained + eval_row * rows_eval
    return {
        "train_row": train_row,
        "eval_row": eval_row,
        "rows_trained": rows_trained,
        "rows_eval": rows_eval,
        "total": total,
    }


def matmul_throughput(reps: int = 7) -> dict:
    """GFLOP/s of torch.mm at the workload's shapes and a large one (best of ``reps`` timings)."""
    import torch

    shapes = {
        "16x256 @ 256x256 (exact engine)": (16, 256, 256),
        "80x256 @ 256x256 (vectorised, 5 clients)": (80, 256, 256),
        "512x256 @ 256x256": (512, 256, 256),
        "1024x1024 @ 1024x1024": (1024, 1024, 1024),
    }
    out = {}
    for name, (m, k, n) in shapes.items():
        a, w = torch.randn(m, k), torch.randn(n, k).t()
        inner = max(1, int(2e8 / (2 * m * k * n)))
        for _ in range(3):
            a.mm(w)
        best = float("inf")
        for _ in range(reps):
            t0 = time.perf_counter()
            for _ in range(inner):
                a.mm(w)
            best = min(best, (time.perf_counter() - t0) / inner)
        out[name] = 2 * m * k * n / best / 1e9
    out["peak"] = max(out.values())
    return out


# --------------------------------------------------------------------------------------------
# 4. client count: memory and wall time vs fl.num_clients
# --------------------------------------------------------------------------------------------
def cli_rusage(args: list[str], cwd: Path, threads: int | None) -> tuple[float, float]:
    """(wall seconds, peak RSS in MB) of one fresh ``fedbench`` process (``os.wait4``: this
    child's own ru_maxrss, not the largest of every child so far)."""
    cmd = [sys.executable, "-m", "fedbench", *args]
    with tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=cwd, env=_child_env(threads), stdout=subprocess.DEVNULL, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            err.seek(0)
            sys.exit(f"bench: {' '.join(cmd)} failed:\n{err.read().decode()[-2000:]}")
    return wall, usage.ru_maxrss / 1024


def client_count(repeats: int, threads: int | None) -> dict:
    """1,000 vs 1,000,000 lazy clients (10 per round, 3 rounds: the same work), alternating fresh
    processes; plus one eager run of 1,000 clients for reference."""
    runs = {"lazy/1000": [], "lazy/1000000": []}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        base = ["fl.clients_per_round=10", "fl.num_rounds=3", "quiet=true", f"threads={threads or 1}"]
        for i in range(repeats):
            for n in (1000, 1_000_000):
                args = [
                    "data=tutorial_lazy",
                    f"fl.num_clients={n}",
                    *base,
                    f"hydra.run.dir={tmp}/lazy{n}_{i}",
                ]
                runs[f"lazy/{n}"].append(cli_rusage(args, tmp, threads))
            big, small = runs["lazy/1000000"][-1], runs["lazy/1000"][-1]
            print(
                f"  pair {i + 1}/{repeats}: 1,000 clients {small[0]:.2f} s {small[1]:.0f} MB, 1,000,000 "
                f"clients {big[0]:.2f} s {big[1]:.0f} MB",
                flush=True,
            )
        eager = cli_rusage(
            ["data=tutorial", "fl.num_clients=1000", *base, f"hydra.run.dir={tmp}/eager"], tmp, threads
        )
    pairs = list(zip(runs["lazy/1000000"], runs["lazy/1000"]))
    return {
        "runs": runs,
        "eager/1000": eager,
        "wall_ratio": statistics.median(b[0] / s[0] for b, s in pairs),
        "rss_ratio": statistics.median(b[1] / s[1] for b, s in pairs),
    }


# --------------------------------------------------------------------------------------------
# 5. MiniLM
# --------------------------------------------------------------------------------------------
def minilm_rounds(rounds: int) -> dict | None:
    try:
        from fedbench.models.hf import HFEncoder, minilm_path

        minilm_path()
        import transformers  # noqa: F401
    except Exception as exc:  # noqa: BLE001 - any missing piece means: skip this section
        print(f"  MiniLM not available ({type(exc).__name__}: {str(exc)[:120]}); skipped")
        return None
    from types import SimpleNamespace

    import torch

    from fedbench.config import FLConfig
    from fedbench.data import FederatedData
    from fedbench.fl.comm import NoCompression
    from fedbench.fl.state import FlatParams
    from fedbench.fl.strategies import FedAvg
    from fedbench.fl.vectorized import make_engine
    from fedbench.methods.head_only import HeadOnly
    from fedbench.methods.lora import LoRA

    seq, per_client, clients, per_round = 32, 16, 10, 5

    def ids(n, gen):
        lens = torch.randint(seq // 2, seq + 1, (n,), generator=gen)
        x = torch.randint(1000, 20000, (n, seq), generator=gen)
        x[torch.arange(seq).unsqueeze(0) >= lens.unsqueeze(1)] = 0
        x[:, 0] = 101
        return x

    def setup(method, engine, cache, dropout):
        torch.manual_seed(0)
        gen = torch.Generator().manual_seed(1)
        data = FederatedData(
            clients=[
                (ids(per_client, gen), torch.randint(0, 2, (per_client,), generator=gen))
                for _ in range(clients)
            ],
            test=(ids(32, gen), torch.randint(0, 2, (32,), generator=gen)),
            num_classes=2,
            partition="synthetic",
        )
        model = HFEncoder(dropout=dropout).build()
        method.inject(model)
        model.attach_head()
        state = FlatParams(model, method.trainable(model))
        fl = FLConfig(
            num_rounds=rounds, num_clients=clients, clients_per_round=per_round, batch_size=16, local_epochs=1
        )
        fl.engine, fl.feature_cache = engine, cache
        spec = SimpleNamespace(
            fl=fl,
            strategy=FedAvg(),
            compression_up=NoCompression(),
            compression_down=NoCompression(),
            method=method,
        )
        t0 = time.perf_counter()
        eng = make_engine(spec, model, state, data)
        return eng, time.perf_counter() - t0

    print(
        f"  synthetic token ids: {clients} clients x {per_client} rows, {per_round} per round, length {seq}, "
        f"batch 16, 1 local epoch, 32 test rows; {rounds} rounds each"
    )
    cases = [
        (
            "lora r8 q,v",
            lambda: LoRA(rank=8, alpha=16, target_modules=["query", "value"]),
            "exact",
            False,
            None,
        ),
        (
            "lora r8 q,v",
            lambda: LoRA(rank=8, alpha=16, target_modules=["query", "value"]),
            "vectorized",
            False,
            None,
        ),
        ("head_only (dropout 0)", HeadOnly, "exact", False, 0.0),
        ("head_only (dropout 0)", HeadOnly, "exact", True, 0.0),
    ]
    out = {}
    for name, make_method, engine, cache, dropout in cases:
        eng, setup_s = setup(make_method(), engine, cache, dropout)
        walls, warm = [], []  # warm: rounds whose clients' features were all cached already
        for _ in range(rounds):
            before = getattr(eng.data.clients, "computed_rows", None)
            walls.append(eng.run_round()["wall_s"])
            if before is not None and eng.data.clients.computed_rows == before:
                warm.append(walls[-1])
        key = f"{name} / {engine}{' / cached' if cache else ''}"
        out[key] = {
            "setup_s": setup_s,
            "walls": walls,
            "median": statistics.median(walls),
            "warm": statistics.median(warm) if warm else None,
            "total": setup_s + sum(walls),
        }
        extra = f"; rounds with every feature cached: median {out[key]['warm']:.4f} s" if warm else ""
        print(
            f"  {key:42s} per round median {out[key]['median']:7.3f} s  (rounds "
            f"{' '.join(f'{w:.3f}' for w in walls)}; set-up {setup_s:.2f} s{extra})",
            flush=True,
        )
    return out


# --------------------------------------------------------------------------------------------
# --------------------------------------------------------------------------------------------
# 6. SmolLM2-135M LoRA (causal LM)
# --------------------------------------------------------------------------------------------
SMOLLM2 = [
    "model=smollm2",
    "model.sample_tokens=0",
    "data=shakespeare",
    "data.seq_len=64",
    "data.max_windows=8",
    "data.test_size=32",
    "method=lora",
    "fl.num_rounds=1",
    "fl.num_clients=8",
    "fl.clients_per_round=4",
    "fl.local_epochs=1",
    "fl.batch_size=4",
]


def smollm2_lora(peak_gflops: float | None, threads: int | None) -> dict | None:
    """Seconds per local step (batch 4 x 64 tokens) and per round (4 clients x 2 steps + evaluation
    of 32 windows), the step's FLOPs and its distance to the matmul limit; peak RSS of fresh
    processes with 10 and 100 clients (one frozen base shared by all)."""
    try:
        from fedbench.models.causal_lm import smollm2_folder

        smollm2_folder()
    except Exception as exc:  # noqa: BLE001 - a missing package means: skip this section
        print(f"  SmolLM2 not available ({type(exc).__name__}: {str(exc)[:120]}); skipped")
        return None
    from torch.utils.flop_counter import FlopCounterMode

    from fedbench.fl.local import train_client
    from fedbench.fl.loss import task_loss
    from fedbench.fl.vectorized import make_engine
    from fedbench.run import build

    spec = _spec(SMOLLM2)
    data, model, state = build(spec)
    engine = make_engine(spec, model, state, data)
    x, y = data.clients[0]
    xb, yb = x[:4], y[:4]
    with FlopCounterMode(display=False) as fc:
        task_loss(model(xb), yb).backward()
    step_flops = fc.get_total_flops()
    steps = []
    for _ in range(3):
        engine.opt.reset()
        t0 = time.perf_counter()
        train_client(model, state, engine.opt, xb, yb, 1, 4)
        steps.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    row = engine.run_round()
    round_s = time.perf_counter() - t0
    out = {
        "step_s": statistics.median(steps),
        "round_s": round_s,
        "round_steps": 4 * 2,
        "step_gflop": step_flops / 1e9,
        "trainable": state.numel,
        "bytes_per_round": row["bytes_up"] + row["bytes_down"],
    }
    if peak_gflops:
        out["step_limit_s"] = step_flops / (peak_gflops * 1e9)
        out["distance"] = out["step_s"] / out["step_limit_s"]
    for n in (10, 100):
        args = [*SMOLLM2, f"fl.num_clients={n}", "fl.clients_per_round=2", "data.max_windows=4",
                "data.test_size=8", f"threads={threads or 1}", "quiet=true"]  # fmt: skip
        with tempfile.TemporaryDirectory() as tmp:
            _, mb = cli_rusage([*args, f"hydra.run.dir={tmp}/run"], Path(tmp), threads)
        out[f"rss_mb/{n}"] = mb
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3, help="alternating runs per comparison (medians)")
    ap.add_argument(
        "--threads", type=int, default=None, help="intra-op threads for every run (default: torch's)"
    )
    ap.add_argument("--seed-md", type=Path, default=DEFAULT_SEED_MD)
    ap.add_argument("--minilm-rounds", type=int, default=8)
    ap.add_argument(
        "--skip", default="", help="comma-separated sections to skip: process,inproc,limit,rss,minilm,smollm2"
    )
    ap.add_argument(
        "--also", default="", help="sections not run by default: threads (both engines at 2 and 1 thread)"
    )
    args = ap.parse_args()
    args.also = set(filter(None, args.also.split(",")))
    if args.repeats < 1:
        sys.exit("bench: --repeats must be >= 1")
    skip = set(filter(None, args.skip.split(",")))
    import torch

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    load = os.getloadavg()
    print(
        f"fedbench bench: torch {torch.__version__}, {threads} intra-op thread(s), "
        f"{os.cpu_count()} CPUs, load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}\n"
    )
    summary = {"threads": threads, "load_before": load}

    if "process" not in skip:
        print(
            f"1. whole process, {args.repeats} alternating triples (seed script, fedbench exact, vectorised)"
        )
        wp = whole_process(args.repeats, args.seed_md, args.threads)
        summary["process"] = wp
        print(
            f"  medians: seed {wp['seed']:.2f} s, exact {wp['exact']:.2f} s, vectorised {wp['vectorized']:.2f} s"
        )
        for engine in ("exact", "vectorized"):
            r, t = wp[f"{engine}/seed"], TARGETS[engine]
            print(
                f"  median ratio {engine}/seed = {r:.3f}  (target <= {t}: {'met' if r <= t else 'NOT met'})"
            )
        print(f"  vectorised vs exact: largest per-round accuracy difference {wp['acc_gap']:.3f}\n")

    inproc = None
    if "inproc" not in skip:
        print(
            f"2. in process (30 rounds of training + evaluation, no start-up), {args.repeats} alternating pairs"
        )
        inproc = in_process(args.repeats)
        summary["inproc"] = inproc
        print(
            f"  medians: exact {inproc['exact']:.2f} s, vectorised {inproc['vectorized']:.2f} s, "
            f"ratio {inproc['vectorized/exact']:.3f}\n"
        )

    if "threads" in args.also:
        print(
            f"2b. threads: in process, exact and vectorised at 2 and 1 intra-op threads, {args.repeats} rounds"
        )
        tc = thread_counts(args.repeats)
        summary["threads_compare"] = tc
        print("  medians: " + ", ".join(f"{k} thread(s) {v:.2f} s" for k, v in tc.items()) + "\n")

    if "limit" not in skip:
        print("3. hardware limit")
        fl = workload_flops()
        tp = matmul_throughput()
        summary["flops"], summary["matmul_gflops"] = fl, tp
        print(
            f"  workload: {fl['total'] / 1e9:.1f} GFLOP of matmuls ({fl['train_row'] / 1e6:.3f} MFLOP per "
            f"trained row x {fl['rows_trained']:,} + {fl['eval_row'] / 1e6:.3f} MFLOP per evaluated row x "
            f"{fl['rows_eval']:,})"
        )
        for name, g in tp.items():
            if name != "peak":
                print(f"  torch.mm {name:42s} {g:6.1f} GFLOP/s")
        limit = fl["total"] / (tp["peak"] * 1e9)
        summary["limit_s"] = limit
        print(
            f"  limit at the best measured throughput ({tp['peak']:.1f} GFLOP/s, {threads} thread(s)): "
            f"{limit:.2f} s"
        )
        if inproc is not None:
            for engine in ("exact", "vectorized"):
                d = inproc[engine] / limit
                summary[f"distance_{engine}"] = d
                tgt = (
                    f"  (target <= {TARGETS['limit']}: {'met' if d <= TARGETS['limit'] else 'NOT met'})"
                    if engine == "vectorized"
                    else ""
                )
                print(
                    f"  distance to the limit, {engine}: {inproc[engine]:.2f} s / {limit:.2f} s = {d:.2f}x{tgt}"
                )
        print()

    if "rss" not in skip:
        print(
            "4. client count: data=tutorial_lazy, 10 clients per round, 3 rounds, fresh `fedbench` "
            f"processes, {args.repeats} alternating pairs (wall time, ru_maxrss)"
        )
        cc = client_count(args.repeats, args.threads)
        summary["clients"] = cc
        for key, what in (("rss_ratio", "peak RSS"), ("wall_ratio", "wall time")):
            r, t = cc[key], TARGETS[key]
            print(
                f"  1,000,000 / 1,000 clients, {what}: {r:.3f}  (target <= {t}: {'met' if r <= t else 'NOT met'})"
            )
        wall, mb = cc["eager/1000"]
        print(f"  for reference, eager data (data=tutorial) with 1,000 clients: {wall:.2f} s, {mb:.0f} MB\n")

    if "minilm" not in skip:
        print("5. MiniLM per-round time")
        mm = minilm_rounds(args.minilm_rounds)
        summary["minilm"] = mm
        if mm:
            unc = mm["head_only (dropout 0) / exact"]
            cac = mm["head_only (dropout 0) / exact / cached"]
            whole = unc["total"] / cac["total"]
            if cac["warm"] is not None:
                r = unc["median"] / cac["warm"]
                print(
                    f"  head_only per round: uncached {unc['median']:.3f} s, cached (features computed) "
                    f"{cac['warm']:.4f} s: {r:.0f}x  (target >= {TARGETS['cache']}x: "
                    f"{'met' if r >= TARGETS['cache'] else 'NOT met'})"
                )
            print(
                f"  head_only, all {args.minilm_rounds} rounds including set-up and computing every feature "
                f"once: uncached {unc['total']:.2f} s, cached {cac['total']:.2f} s: {whole:.1f}x"
            )
        print()
    if "smollm2" not in skip:
        print("6. SmolLM2-135M LoRA r=4 (q/k/v/o), batch 4 x 64 tokens")
        peak = summary.get("matmul_gflops", {}).get("peak") or matmul_throughput()["peak"]
        lm = smollm2_lora(peak, args.threads)
        summary["smollm2"] = lm
        if lm:
            print(
                f"  {lm['step_s']:.2f} s per local step ({lm['step_gflop']:.1f} GFLOP of matmuls: limit "
                f"{lm['step_limit_s']:.2f} s at {peak:.1f} GFLOP/s, distance {lm['distance']:.2f}x); "
                f"{lm['round_s']:.1f} s per round ({lm['round_steps']} steps + evaluation of 32 windows); "
                f"{lm['trainable']:,} trainable values, {lm['bytes_per_round'] / 1e6:.2f} MB per round"
            )
            print(f"  peak RSS: 10 clients {lm['rss_mb/10']:.0f} MB, 100 clients {lm['rss_mb/100']:.0f} MB")
        print()
    print(f"load average after: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    out = os.environ.get("FEDBENCH_BENCH_JSON")
    if out:
        Path(out).write_text(json.dumps(summary, indent=1, default=str))


if __name__ == "__main__":
    main()
