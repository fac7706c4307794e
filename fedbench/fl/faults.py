"""Fault injection: corrupt chosen clients' updates as the server receives them.

``fl.faults`` is a list of ``KIND:CLIENT:ROUND`` strings (``*`` matches any client or round),
e.g. ``fl.faults=[nan:2:1,missing_key:*:3]``. Kinds: ``nan``, ``inf`` (non-finite values),
``wrong_shape``, ``wrong_dtype``, ``missing_key``, ``extra_key`` (malformed updates the server
must reject) and ``scale`` (a finite update multiplied by -10: a Byzantine client that passes
validation, for studying robust aggregation).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from fedbench.errors import ConfigError
from fedbench.fl.state import Payload

KINDS = ("nan", "inf", "wrong_shape", "wrong_dtype", "missing_key", "extra_key", "scale")


def parse_fault(spec: str) -> tuple[str, int | None, int | None]:
    parts = str(spec).split(":")
    allowed = f"must be KIND:CLIENT:ROUND with KIND in {', '.join(KINDS)} and CLIENT/ROUND an integer or *"
    if len(parts) != 3 or parts[0] not in KINDS:
        raise ConfigError("fl.faults", allowed, spec)
    out = []
    for p in parts[1:]:
        if p == "*":
            out.append(None)
        elif p.isdigit():
            out.append(int(p))
        else:
            raise ConfigError("fl.faults", allowed, spec)
    return parts[0], out[0], out[1]


@dataclass
class FaultPlan:
    faults: list[tuple[str, int | None, int | None]] = field(default_factory=list)

    @classmethod
    def from_config(cls, specs) -> FaultPlan:
        return cls([parse_fault(s) for s in (specs or [])])

    def apply(self, update: Payload, client: int, rnd: int) -> Payload:
        for kind, c, r in self.faults:
            if (c is None or c == client) and (r is None or r == rnd):
                update = corrupt(update, kind)
        return update


def corrupt(update: Payload, kind: str) -> Payload:
    update = dict(update)
    key = next(iter(update))
    t = update[key]
    if kind == "nan":
        update[key] = t.clone().reshape(-1).index_fill_(0, torch.tensor([0]), float("nan")).view_as(t)
    elif kind == "inf":
        update[key] = t.clone().reshape(-1).index_fill_(0, torch.tensor([0]), float("inf")).view_as(t)
    elif kind == "wrong_shape":
        update[key] = t.reshape(-1)[:-1].clone() if t.numel() > 1 else torch.zeros(2, dtype=t.dtype)
    elif kind == "wrong_dtype":
        update[key] = t.to(torch.float64)
    elif kind == "missing_key":
        del update[key]
    elif kind == "extra_key":
        update["injected.extra"] = torch.zeros(1)
    elif kind == "scale":
        update = {k: v * -10.0 for k, v in update.items()}
    return update
