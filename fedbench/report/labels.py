"""Short human labels for the figures, built from the factors that vary between configurations.

A *factor* is one thing a configuration is made of (method, rank, partition, strategy, codec,
clients, ...), read from the summary's identity columns and shown the way people write it:
``LoRA r=8``, ``Dirichlet α=0.5``, ``FedAdam``, ``top-k 10% + int8``. Only factors whose value
differs between configurations are kept, and a factor that earlier ones already determine is
dropped (the learning rate each method was tuned to, an ``arm`` that is method + rank, ...), so
labels name what a reader has to tell apart and nothing else.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd

METHOD_NAMES = {
    "lora": "LoRA",
    "full": "Full FT",
    "head_only": "Head only",
    "bitfit": "BitFit",
    "adapter": "Adapter",
    "prompt_tuning": "Prompt tuning",
    "prefix_tuning": "Prefix tuning",
    "selective": "Selective FT",
}
STRATEGY_NAMES = {
    "fedavg": "FedAvg",
    "fedavgm": "FedAvgM",
    "fedprox": "FedProx",
    "fedadam": "FedAdam",
    "fedyogi": "FedYogi",
    "fedadagrad": "FedAdagrad",
    "median": "Median",
    "trimmed_mean": "Trimmed mean",
}
MODEL_NAMES = {"minilm": "MiniLM", "tiny_bert": "tiny BERT", "tutorial_mlp": "MLP"}
DATA_NAMES = {
    "bbc": "BBC News",
    "20news": "20 Newsgroups",
    "r8": "Reuters R8",
    "sms_spam": "SMS spam",
    "tutorial": "synthetic",
    "tutorial_lazy": "synthetic (lazy)",
}
PARTITION_NAMES = {"iid": "IID", "dirichlet": "Dirichlet", "shards": "shards"}
AGGREGATION_NAMES = {
    "naive": "naive agg.",
    "ffa": "FFA agg.",
    "exact": "exact agg.",
    "hetlora": "HetLoRA agg.",
    "flexlora": "FlexLoRA agg.",
}
# codec option or class (lower case) -> name on the wire; the order is the display order
CODEC_NAMES = {
    "none": "float32",
    "nocompression": "float32",
    "fp16": "fp16",
    "float16": "fp16",
    "bf16": "bf16",
    "bfloat16": "bf16",
    "int8": "int8",
    "int8_row": "int8/row",
    "topk": "top-k",
}
# compression presets whose directions differ, for tables without per-direction columns
_PRESETS = {"topk": ("topk", "none"), "topk_int8": ("topk", "int8")}
# identity columns the factors below read; any other identity column becomes a generic factor
_HANDLED = {
    "method",
    "rank",
    "method.ranks",
    "alpha",
    "model",
    "data",
    "partition",
    "partition_alpha",
    "data.alpha",
    "strategy",
    "compression",
    "compression_up",
    "compression_down",
    "fraction_up",
    "fraction_down",
    "compression.up.fraction",
    "compression.down.fraction",
    "num_clients",
    "clients_per_round",
    "num_rounds",
    "local_epochs",
    "batch_size",
    "lr",
}


@dataclass(frozen=True)
class Factor:
    """One varying factor: its display value and sort key per configuration ("" = not applicable)."""

    name: str
    values: tuple[str, ...]
    keys: tuple[tuple, ...]
    with_method: bool = False  # written right after the method's name: "LoRA r=8", not "LoRA, r=8"

    def order(self) -> list[str]:
        """The distinct values, in display order ("" last)."""
        first = {}
        for v, k in zip(self.values, self.keys):
            first.setdefault(v, k)
        return sorted(first, key=lambda v: (v == "", first[v], v))


def _missing(v) -> bool:
    if v is None or v is pd.NA or (isinstance(v, str) and v == ""):
        return True
    try:
        return isinstance(v, float) and math.isnan(v)
    except TypeError:
        return False


def _num(v) -> str:
    """1.0 -> "1", 0.005 -> "0.005" (as people write numbers, not as floats print)."""
    try:
        f = float(v)
    except (TypeError, ValueError):
        return str(v)
    return str(int(f)) if f.is_integer() and abs(f) < 1e15 else f"{f:g}"


def _numkey(v) -> tuple:
    try:
        return (0, float(v), "")
    except (TypeError, ValueError):
        return (1, 0.0, str(v))


def _named(v, names: dict, alphabetical: bool = False) -> tuple[str, tuple]:
    """An option's display name; sorted as listed in ``names`` (or by option name)."""
    if _missing(v):
        return "", (1, 0, "")
    s = str(v)
    order = [] if alphabetical else list(names)
    return names.get(s, s), ((0, order.index(s), "") if s in order else (0, len(order), s))


def _param(v, fmt: str) -> tuple[str, tuple]:
    if _missing(v):
        return "", (1, 0.0, "")
    return fmt.format(_num(v)), _numkey(v)


def _rank(r: dict) -> tuple[str, tuple]:
    """``r=8``, or with per-client ranks (``method.ranks``) ``r=2/4/8/16`` (sorted after r=16)."""
    ranks = r.get("method.ranks")
    if isinstance(ranks, str):
        ranks = [p for p in ranks.strip("[]").replace(",", " ").split() if p]
    if ranks is not None and not _missing(ranks) and len(ranks):
        values = sorted({int(float(v)) for v in ranks})
        return "r=" + "/".join(map(str, values)), (0, float(max(values)) + 0.5, "")
    return _param(r.get("rank"), "r={}")


def _codec(option, fraction) -> tuple[str, int, float]:
    """(name, display rank, fraction) of one direction's codec: an option name or ``Class(k=v)``."""
    if _missing(option):
        return "", len(CODEC_NAMES), 0.0
    s = str(option)
    base = s.split("(", 1)[0].strip().lower()
    params = dict(p.split("=", 1) for p in s[len(base) + 1 : -1].split(", ") if "=" in p) if "(" in s else {}
    if base == "int8" and params.get("granularity") == "row":
        base = "int8_row"
    if _missing(fraction) and "fraction" in params:
        fraction = params["fraction"]
    name = CODEC_NAMES.get(base, s)
    frac = 0.0
    if base == "topk" and not _missing(fraction):
        frac = float(fraction)
        name = f"top-k {_num(100 * frac)}%"
    rank = list(CODEC_NAMES).index(base) if base in CODEC_NAMES else len(CODEC_NAMES)
    return name, rank, frac


def _compression(r: dict) -> tuple[str, tuple]:
    up, down = r.get("compression_up"), r.get("compression_down")
    if _missing(up) and _missing(down):
        preset = r.get("compression")
        if _missing(preset):
            return "", (1,)
        up, down = _PRESETS.get(str(preset), (preset, preset))
    fu = r.get("fraction_up", r.get("compression.up.fraction"))
    fd = r.get("fraction_down", r.get("compression.down.fraction"))
    (nu, ru, qu), (nd, rd, qd) = _codec(up, fu), _codec(down, fd)
    name = nu if nu == nd else f"{nu} + {nd}"  # up + down
    return name, (0, ru, -qu, rd, -qd, name)


def _partition(r: dict) -> tuple[str, tuple]:
    name, key = _named(r.get("partition"), PARTITION_NAMES)
    alpha = r.get("partition_alpha", r.get("data.alpha"))
    if r.get("partition") == "dirichlet" and not _missing(alpha):
        return f"{name} α={_num(alpha)}", (*key, float(alpha))
    return name, (*key, 0.0)


def _clients(r: dict) -> tuple[str, tuple]:
    n, k = r.get("num_clients"), r.get("clients_per_round")
    if _missing(n):
        return "", (1,)
    n = int(n)
    if n == 1:
        return "centralised (1 client)", (0, 1, 0, 0)  # the reference goes after the federated runs
    if _missing(k) or int(k) == n:
        return f"{n} clients", (0, 0, n, n)
    return f"{int(k)} of {n} clients", (0, 0, n, int(k))


def _generic(col: str):
    short = col.rsplit(".", 1)[-1]

    def read(r: dict) -> tuple[str, tuple]:
        v = r.get(col)
        if _missing(v):
            return "", (1, 0.0, "")
        if "." in col or isinstance(v, (int, float)):  # a config value: name it
            return f"{short}={_num(v)}", _numkey(v)
        return str(v), (0, 0.0, str(v))  # another choice group (arm, experiment): its option

    return read


def identity_columns(summary: pd.DataFrame) -> list[str]:
    """The summary's identity columns: those between ``label`` and ``n_seeds``."""
    cols = list(summary.columns)
    start = cols.index("label") + 1 if "label" in cols else 0
    end = cols.index("n_seeds") if "n_seeds" in cols else len(cols)
    return cols[start:end]


def candidate_factors(summary: pd.DataFrame) -> list[Factor]:
    """Every factor the identity columns describe, in priority order (first = colour)."""
    rows = summary.to_dict("records")
    cols = identity_columns(summary)
    specs: list[tuple[str, object, bool]] = [
        ("method", lambda r: _named(r.get("method"), METHOD_NAMES, alphabetical=True), True),
        ("rank", _rank, True),
        ("alpha", lambda r: _param(r.get("alpha"), "alpha={}"), True),
    ]
    for col in cols:
        if col == "method.aggregation":
            specs.append((col, lambda r: _named(r.get("method.aggregation"), AGGREGATION_NAMES), True))
        elif col.startswith("method.") and col not in _HANDLED:
            specs.append((col, _generic(col), True))
    specs += [
        ("model", lambda r: _named(r.get("model"), MODEL_NAMES), False),
        ("data", lambda r: _named(r.get("data"), DATA_NAMES), False),
        ("partition", _partition, False),
        ("strategy", lambda r: _named(r.get("strategy"), STRATEGY_NAMES), False),
        ("compression", _compression, False),
        ("clients", _clients, False),
        ("num_rounds", lambda r: _param(r.get("num_rounds"), "{} rounds"), False),
        ("local_epochs", lambda r: _param(r.get("local_epochs"), "{} local epochs"), False),
        ("batch_size", lambda r: _param(r.get("batch_size"), "batch {}"), False),
        ("lr", lambda r: _param(r.get("lr"), "lr={}"), False),
    ]
    dotted = [c for c in cols if "." in c and not c.startswith("method.") and c not in _HANDLED]
    others = [c for c in cols if "." not in c and c not in _HANDLED]  # arm, experiment, ...: aliases
    specs += [(c, _generic(c), False) for c in dotted + others]
    factors = []
    for name, read, with_method in specs:
        pairs = [read(r) for r in rows]
        factors.append(Factor(name, tuple(p[0] for p in pairs), tuple(p[1] for p in pairs), with_method))
    return factors


def varying_factors(summary: pd.DataFrame) -> list[Factor]:
    """The factors that tell configurations apart, each not already implied by those before it."""
    kept: list[Factor] = []
    for f in candidate_factors(summary):
        if len(set(f.values)) < 2:
            continue
        if kept:
            seen: dict[tuple, str] = {}
            implied = True
            for i, v in enumerate(f.values):
                if seen.setdefault(tuple(k.values[i] for k in kept), v) != v:
                    implied = False
                    break
            if implied:
                continue
        kept.append(f)
    return kept


def join_parts(parts: list[tuple[str, bool]]) -> str:
    """``[("LoRA", True), ("r=8", True), ("FedAdam", False)]`` -> ``"LoRA r=8, FedAdam"``.

    The method and its own settings read as one phrase; every other factor is its own item.
    """
    head = " ".join(text for text, with_method in parts if with_method and text)
    rest = [text for text, with_method in parts if not with_method and text]
    return ", ".join(([head] if head else []) + rest)


def label_of(factors: list[Factor], i: int) -> str:
    """Configuration ``i``'s label from ``factors`` (its row in the summary)."""
    return join_parts([(f.values[i], f.with_method) for f in factors])


def human_labels(summary: pd.DataFrame) -> list[str]:
    """One short label per summary row; names what varies, and never the same for two rows."""
    factors = varying_factors(summary)
    labels = [label_of(factors, i) for i in range(len(summary))]
    if not factors:  # one configuration (or none differ in a described factor): name the method
        labels = [
            _named(m, METHOD_NAMES)[0] or str(lab) for m, lab in zip(summary["method"], summary["label"])
        ]
    return disambiguate(labels, list(summary["config_id"]))


def disambiguate(labels: list[str], ids: list[str]) -> list[str]:
    """Equal labels of different configurations get the configuration id's first digits."""
    count: dict[str, set] = {}
    for lab, cid in zip(labels, ids):
        count.setdefault(lab, set()).add(cid)
    return [f"{lab} [{cid[:6]}]" if len(count[lab]) > 1 else lab for lab, cid in zip(labels, ids)]
