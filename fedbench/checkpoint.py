"""Round checkpoints in a run folder: safetensors + JSON, written atomically, never pickled.

Layout: ``checkpoint/round_000007.safetensors`` (tensors: global trainable state, strategy and
codec state, RNG states) and ``checkpoint/latest.json`` (round, config hash, scalar RNG
state, the tensor file's name and sha256). ``latest.json`` is replaced only after its tensor
file is complete, so a kill at any moment leaves the previous checkpoint usable.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from fedbench.results import atomic_write_bytes, atomic_write_json

CHECKPOINT_DIR = "checkpoint"
LATEST = "latest.json"
FORMAT = 1


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def save(run_dir: Path, tensors: dict[str, torch.Tensor], meta: dict) -> Path:
    folder = Path(run_dir) / CHECKPOINT_DIR
    folder.mkdir(parents=True, exist_ok=True)
    name = f"round_{int(meta['round']):06d}.safetensors"
    tmp = folder / f".{name}.tmp"
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp))
    tmp.replace(folder / name)
    atomic_write_json(
        folder / LATEST, {"format": FORMAT, "tensors": name, "sha256": _sha256(folder / name), **meta}
    )
    for old in folder.glob("round_*.safetensors"):  # keep only the one latest.json names
        if old.name != name:
            old.unlink(missing_ok=True)
    return folder / name


def load(run_dir: Path) -> tuple[dict[str, torch.Tensor], dict] | None:
    """The latest checkpoint, or None if there is none. Raises ValueError if it is corrupt."""
    folder = Path(run_dir) / CHECKPOINT_DIR
    latest = folder / LATEST
    if not latest.is_file():
        return None
    meta = json.loads(latest.read_text())
    path = folder / meta["tensors"]
    if meta.get("format") != FORMAT or not path.is_file() or _sha256(path) != meta["sha256"]:
        raise ValueError(f"checkpoint in {folder} is corrupt or from another fedbench version")
    return load_file(str(path)), meta


def clear(run_dir: Path) -> None:
    folder = Path(run_dir) / CHECKPOINT_DIR
    if folder.is_dir():
        for f in folder.iterdir():
            f.unlink()
        folder.rmdir()


__all__ = ["save", "load", "clear", "atomic_write_bytes"]
