#!/usr/bin/env python3
"""Run the unmodified Tutorial 166 seed script and print its per-round test accuracies.

The seed lives in ``../shared/seed/tutorial_166.md`` (outside this repository). This script
extracts its Python code block, executes it as written, swaps ``FoundationConfig`` for one with
the requested field overrides, and records the history its ``FoundationServer.train`` returns
(the seed only logs rounds 10/20/30). Nothing in the seed's numerics is touched.

    python scripts/seed_reference.py --set num_rounds=8 --set seed=7 --threads 2

prints one JSON object: {"config": {...}, "threads": N, "torch": "...", "accuracy": [...]}.
Used to build the per-machine references ``tests/fixtures/seed_reference*.json`` (see
``make fixtures``; each records the machine's :func:`numeric_fingerprint`) and by
``scripts/bench.py``, which runs the extracted script as its own process.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import sys
from pathlib import Path

DEFAULT_SEED_MD = Path(__file__).resolve().parents[1].parent / "shared" / "seed" / "tutorial_166.md"


def numeric_fingerprint() -> str:
    """12 hex digits naming how this machine's torch rounds the tutorial's kernels.

    The seed's numbers depend on the CPU's BLAS kernels (AVX2 and AVX-512 MKL paths round matmuls
    differently), not only on torch's version. This hashes the exact bits of the operations the
    tutorial runs (its matmul shapes, both weight-gradient layouts, log-softmax) at 1 and 2 threads,
    so two machines with the same fingerprint give the seed the same numbers.
    """
    import hashlib

    import torch

    before = torch.get_num_threads()
    gen = torch.Generator().manual_seed(0)
    h = hashlib.sha256(torch.__version__.encode())
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            for m, k, n in ((16, 128, 256), (16, 256, 256), (16, 256, 10), (64, 256, 10), (500, 256, 10)):
                a = torch.randn(m, k, generator=gen)
                b = torch.randn(k, n, generator=gen)
                g = torch.randn(m, n, generator=gen)
                for t in (a.mm(b), g.t().mm(a), a.t().mm(g).t(), torch.log_softmax(a.mm(b), 1)):
                    h.update(t.contiguous().numpy().tobytes())
    finally:
        torch.set_num_threads(before)
    return h.hexdigest()[:12]


def extract_seed_code(md_path: Path) -> str:
    """Return the first ```python block of the tutorial markdown."""
    if not md_path.is_file():
        sys.exit(f"seed_reference: seed tutorial not found at {md_path} (pass --seed-md)")
    m = re.search(r"```python\n(.*?)```", md_path.read_text(), flags=re.S)
    if not m:
        sys.exit(f"seed_reference: no ```python block in {md_path}")
    return m.group(1)


def _parse_value(text: str):
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def run_seed(code: str, overrides: dict, threads: int | None) -> dict:
    import torch

    if threads is not None:
        torch.set_num_threads(threads)
    import types

    module = types.ModuleType("tutorial_166")
    sys.modules["tutorial_166"] = module  # dataclasses resolves annotations through it
    ns = module.__dict__
    exec(compile(code, "tutorial_166.py", "exec"), ns)
    base_cfg = ns["FoundationConfig"]
    fields = {f.name for f in dataclasses.fields(base_cfg)}
    unknown = set(overrides) - fields
    if unknown:
        sys.exit(
            f"seed_reference: unknown FoundationConfig field(s) {sorted(unknown)}; known: {sorted(fields)}"
        )
    ns["FoundationConfig"] = lambda: base_cfg(**overrides)  # main() looks it up in ns
    captured: list = []
    orig_train = ns["FoundationServer"].train

    def train(self):
        history = orig_train(self)
        captured.extend(history)
        return history

    ns["FoundationServer"].train = train
    ns["logging"].disable(ns["logging"].INFO)  # keep stdout for the JSON only
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()):
        ns["main"]()
    return {
        "config": dataclasses.asdict(base_cfg(**overrides)),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "accuracy": [round(float(r["accuracy"]), 12) for r in captured],
    }


# FoundationConfig field -> fedbench config key (the contract of the core issue).
FIELD_TO_KEY = {
    "seed": "seed",
    "num_rounds": "fl.num_rounds",
    "num_clients": "fl.num_clients",
    "clients_per_round": "fl.clients_per_round",
    "local_epochs": "fl.local_epochs",
    "batch_size": "fl.batch_size",
    "learning_rate": "fl.lr",
    "input_dim": "model.input_dim",
    "hidden_dim": "model.hidden_dim",
    "num_layers": "model.num_layers",
    "num_classes": "model.num_classes",
    "lora_rank": "method.rank",
    "lora_alpha": "method.alpha",
}

# The configurations recorded in the test fixture: the default, and changes to every field.
# The seed's datasets are always 128-dim with 10 classes (FoundationDataset defaults), so it
# only accepts input_dim=128 and num_classes>=10; every case stays inside what it accepts.
FIXTURE_CASES = [
    ("default", {}, 2),
    ("default_1_thread", {}, 1),
    ("seed7_short", {"seed": 7, "num_rounds": 8}, 2),
    (
        "fewer_clients",
        {"num_clients": 6, "clients_per_round": 3, "local_epochs": 1, "batch_size": 32, "num_rounds": 6},
        2,
    ),
    (
        "model_shape",
        {
            "hidden_dim": 96,
            "num_layers": 2,
            "num_classes": 12,
            "lora_rank": 8,
            "lora_alpha": 16.0,
            "learning_rate": 0.003,
            "num_rounds": 6,
        },
        2,
    ),
    (
        "all_clients_wide_head",
        {
            "hidden_dim": 48,
            "num_layers": 1,
            "num_classes": 40,
            "batch_size": 50,
            "clients_per_round": 10,
            "lora_rank": 1,
            "num_rounds": 5,
            "seed": 3,
        },
        2,
    ),
    (
        "deep_small_batches",
        {
            "hidden_dim": 64,
            "num_layers": 6,
            "local_epochs": 3,
            "batch_size": 8,
            "lora_rank": 2,
            "lora_alpha": 4.0,
            "num_rounds": 4,
        },
        2,
    ),
]


def write_fixture(code: str, path: Path, seed_md: Path) -> None:
    """Run the seed on every FIXTURE_CASES entry, each in a fresh process, and save the table."""
    import subprocess

    cases = []
    for name, fields, threads in FIXTURE_CASES:
        cmd = [sys.executable, __file__, "--seed-md", str(seed_md), "--threads", str(threads)]
        for k, v in fields.items():
            cmd += ["--set", f"{k}={v}"]
        print(f"seed_reference: running case {name} ...", file=sys.stderr, flush=True)
        out = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
        overrides = [f"{FIELD_TO_KEY[k]}={v}" for k, v in fields.items()]
        cases.append({"name": name, "seed_fields": fields, "fedbench_overrides": overrides, **out})
    doc = {
        "produced_by": "python scripts/seed_reference.py --fixture "
        + str(path)
        + " (runs the unmodified seed script from shared/seed/tutorial_166.md once per case,"
        " in a fresh process, at the thread count recorded per case)",
        "fingerprint": numeric_fingerprint(),
        "cases": cases,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=1) + "\n")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed-md", type=Path, default=DEFAULT_SEED_MD)
    ap.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--write-code", type=Path, help="only write the extracted script here")
    ap.add_argument("--fixture", type=Path, help="run all FIXTURE_CASES and write them here")
    ap.add_argument("--fingerprint", action="store_true", help="print this machine's numeric fingerprint")
    args = ap.parse_args(argv)
    if args.fingerprint:
        print(numeric_fingerprint())
        return
    code = extract_seed_code(args.seed_md)
    if args.fixture:
        write_fixture(code, args.fixture, args.seed_md)
        return
    if args.write_code:
        args.write_code.write_text(code)
        return
    overrides = {}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            sys.exit(f"seed_reference: --set expects FIELD=VALUE, got {item!r}")
        overrides[key] = _parse_value(value)
    print(json.dumps(run_seed(code, overrides, args.threads)))


if __name__ == "__main__":
    main()
