"""What identifies a configuration: a run's identity columns, read from its ``summary.json``.

Seeds of one configuration share a ``config_id`` (the config hash without ``seed``); the named
columns (method, rank, partition, ...) are what the tables and the figures' labels are built from.
"""

from __future__ import annotations

import json

from fedbench.config import config_hash

# Named hyperparameter columns: column -> dotted config key (present only if some run has it).
KEY_PARAMS = {
    "partition": "data.partition",
    "partition_alpha": "data.alpha",
    "rank": "method.rank",
    "alpha": "method.alpha",
    "fraction_up": "compression.up.fraction",
    "fraction_down": "compression.down.fraction",
    "num_rounds": "fl.num_rounds",
    "num_clients": "fl.num_clients",
    "clients_per_round": "fl.clients_per_round",
    "local_epochs": "fl.local_epochs",
    "batch_size": "fl.batch_size",
    "lr": "fl.lr",
}
GROUPS = ("model", "method", "data", "strategy")


def flatten(d: dict, prefix: str = "") -> dict:
    """Nested config -> ``{"a.b.c": value}``; lists become JSON so that values stay hashable."""
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = json.dumps(v) if isinstance(v, (list, tuple)) else v
    return out


def non_identity_keys(config: dict) -> set[str]:
    """Top-level keys that ``config_hash`` leaves out (threads, ...), found by probing it.

    Probing instead of a list keeps the report right whatever ``config_hash`` chooses to ignore.
    """
    base = config_hash(config)
    return {k for k in config if config_hash({**config, k: "\0probe"}) == base}


def config_id(config: dict) -> str:
    """Identity of a configuration across seeds: the config hash without ``seed``."""
    return config_hash({k: v for k, v in config.items() if k != "seed"})


def _cls(section) -> str | None:
    if isinstance(section, dict) and "_target_" in section:
        return str(section["_target_"]).rsplit(".", 1)[-1]
    return None


def _codec(section) -> str | None:
    """A codec as ``Class`` or ``Class(k=v, ...)`` (runs composed without a compression/ option)."""
    name = _cls(section)
    if name is None:
        return None
    params = {k: v for k, v in section.items() if k != "_target_"}
    return name + (f"({', '.join(f'{k}={v}' for k, v in params.items())})" if params else "")


def choice_column(group: str) -> str:
    return group.replace("/", "_")


def identity(summary: dict) -> dict:
    """A run's identity columns from its ``summary.json`` (config, Hydra choices, hash)."""
    config = summary["config"]
    choices = summary.get("choices") or {}
    flat = flatten(config)
    ident = {}
    for g in GROUPS:
        ident[g] = choices.get(g) or _cls(config.get(g)) or ""
    comp = config.get("compression") or {}
    ident["compression"] = choices.get("compression") or ""
    for side in ("up", "down"):  # the option chosen per direction, else the codec's class
        ident[f"compression_{side}"] = choices.get(f"compression/{side}") or _codec(comp.get(side)) or ""
    for g, opt in sorted(choices.items()):  # other groups (experiment, arm, ...) as columns too
        if g not in GROUPS and g.split("/")[0] != "compression" and opt is not None:
            ident[choice_column(g)] = opt
    for col, key in KEY_PARAMS.items():
        if key in flat:
            ident[col] = flat[key]
    ident["seed"] = config.get("seed")
    ident["threads"] = summary.get("threads", config.get("threads"))
    ident["config_hash"] = summary.get("config_hash") or config_hash(config)
    ident["config_id"] = config_id(config)
    return ident
