"""Round checkpoints in a run folder: safetensors + JSON, written atomically, never pickled.

Layout: ``checkpoint/round_000007.safetensors`` (tensors: global trainable state, strategy and
codec state, RNG states) and ``checkpoint/round_000007.json`` (round, config hash, scalar RNG
state, the tensor file's name and sha256, and a sha256 of the JSON record itself), for the last
``checkpoint_keep`` checkpointed rounds (default 2); ``checkpoint/latest.json`` repeats the
newest record. A record is written only after its tensor file is complete, so a kill at any
moment leaves the previous checkpoint usable.

On resume (:func:`load`) the checkpoints are tried newest first: one whose record is unreadable,
whose tensor file is missing, fails its checksum or cannot be read is reported in one warning
line and the next older one is used (the rounds after it are recomputed, bit for bit). With
none usable, :func:`load` raises :class:`~fedbench.errors.ConfigError` (one line: start over
with ``resume=false``) and deletes nothing. Folders written before the per-round records
(``format`` 1: ``latest.json`` only) are still read.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from pathlib import Path

import torch
from safetensors.torch import load_file
from safetensors.torch import save as save_bytes

from fedbench.errors import ConfigError
from fedbench.results import atomic_write_bytes, atomic_write_json

CHECKPOINT_DIR = "checkpoint"
LATEST = "latest.json"
FORMAT = 2
READABLE_FORMATS = (1, 2)
DEFAULT_KEEP = 2
_ROUND = re.compile(r"round_(\d+)\.(safetensors|json)$")

log = logging.getLogger("fedbench")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _record_sha(record: dict) -> str:
    """sha256 of a record's canonical JSON, without its own ``record_sha256``."""
    body = {k: v for k, v in record.items() if k != "record_sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _stem(rnd: int) -> str:
    return f"round_{int(rnd):06d}"


def save(run_dir: Path, tensors: dict[str, torch.Tensor], meta: dict, keep: int = DEFAULT_KEEP) -> Path:
    """Write round ``meta["round"]``'s checkpoint; keep the newest ``keep`` rounds' files."""
    if keep < 1:
        raise ValueError(f"keep must be >= 1, got {keep}")
    folder = Path(run_dir) / CHECKPOINT_DIR
    folder.mkdir(parents=True, exist_ok=True)
    stem = _stem(meta["round"])
    name = f"{stem}.safetensors"
    # serialised in memory and written by Python, so that a full disk is a plain OSError
    atomic_write_bytes(folder / name, save_bytes({k: v.contiguous() for k, v in tensors.items()}))
    record = {"format": FORMAT, "tensors": name, "sha256": _sha256(folder / name), **meta}
    record["record_sha256"] = _record_sha(record)
    atomic_write_json(folder / f"{stem}.json", record)
    atomic_write_json(folder / LATEST, record)
    rounds = sorted({int(m.group(1)) for p in folder.iterdir() if (m := _ROUND.fullmatch(p.name))})
    for old in rounds[:-keep]:
        for suffix in (".json", ".safetensors"):
            (folder / f"{_stem(old)}{suffix}").unlink(missing_ok=True)
    return folder / name


def _candidates(folder: Path) -> list[tuple[str, Path]]:
    """(what, record path) newest first: every ``round_*.json``, then a format-1 ``latest.json``."""
    found = sorted(
        ((int(m.group(1)), p) for p in folder.glob("round_*.json") if (m := _ROUND.fullmatch(p.name))),
        reverse=True,
    )
    out = [(f"round {r}", p) for r, p in found]
    if not out and (folder / LATEST).is_file():
        out.append(("latest", folder / LATEST))
    return out


def _open(folder: Path, path: Path) -> tuple[dict[str, torch.Tensor] | None, dict | None, str]:
    """(tensors, record, "") for a good checkpoint, else (None, None, what is wrong)."""
    try:
        record = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        return None, None, f"{path.name} unreadable ({type(exc).__name__})"
    if not isinstance(record, dict) or record.get("format") not in READABLE_FORMATS:
        return None, None, f"{path.name} is not a fedbench checkpoint record of a known format"
    if record["format"] >= 2 and record.get("record_sha256") != _record_sha(record):
        return None, None, f"{path.name} fails its checksum"
    tensors_path = folder / str(record.get("tensors", ""))
    if not tensors_path.is_file():
        return None, None, f"{tensors_path.name} is missing"
    if _sha256(tensors_path) != record.get("sha256"):
        return None, None, f"{tensors_path.name} fails its checksum (truncated or changed)"
    try:
        tensors = load_file(str(tensors_path))
    except Exception as exc:  # noqa: BLE001 - safetensors raises several kinds
        return None, None, f"{tensors_path.name} unreadable ({type(exc).__name__})"
    return tensors, record, ""


def load(run_dir: Path) -> tuple[dict[str, torch.Tensor], dict] | None:
    """The newest good checkpoint (tensors, record), or None if the folder has none at all.

    Damaged ones are skipped with one warning line each; ConfigError if none is good.
    """
    folder = Path(run_dir) / CHECKPOINT_DIR
    if not folder.is_dir():
        return None
    candidates = _candidates(folder)
    if not candidates:
        if any(folder.glob("round_*.safetensors")):
            raise ConfigError(
                "resume",
                f"run folder {run_dir} has checkpoint tensors but no checkpoint record; start over "
                "with resume=false (nothing was deleted)",
            )
        return None
    damaged = []
    for what, path in candidates:
        tensors, record, problem = _open(folder, path)
        if record is not None:
            if damaged:
                log.warning(
                    "run folder %s: checkpoint %s damaged; resuming from round %d, the newest good one",
                    run_dir,
                    "; ".join(damaged),
                    record["round"],
                )
            return tensors, record
        damaged.append(f"{what}: {problem}")
    raise ConfigError(
        "resume",
        f"run folder {run_dir} has no usable checkpoint ({'; '.join(damaged)}); start over with "
        "resume=false (nothing was deleted)",
    )


def clear(run_dir: Path) -> None:
    folder = Path(run_dir) / CHECKPOINT_DIR
    if folder.is_dir():
        for f in folder.iterdir():
            f.unlink()
        folder.rmdir()


__all__ = ["save", "load", "clear", "atomic_write_bytes"]
