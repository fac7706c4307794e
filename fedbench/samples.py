"""``samples.md``: what a causal LM writes for a few fixed prompts before round 1 and after the
last round, so that a reader sees what federated fine-tuning changed.

The prompts come from the dataset (:meth:`prompts` of :mod:`fedbench.data.lm`'s datasets: plain
verse openings for Shakespeare, chat-formatted instructions for JSON-lines data); continuations
are greedy (argmax, deterministic), ``model.sample_tokens`` new tokens at most, generated through
the model's forward pass (so with the method's adapters, prompts or prefixes). The "before" text
is kept in ``samples.json`` so that a resumed run still shows it.
"""

from __future__ import annotations

import json
from pathlib import Path

from fedbench.results import atomic_write_bytes, atomic_write_json

SAMPLES_MD = "samples.md"
SAMPLES_JSON = "samples.json"


def supported(model, data_cfg) -> bool:
    return (
        hasattr(model, "generate_greedy")
        and getattr(model, "sample_tokens", 0) > 0
        and hasattr(data_cfg, "prompts")
    )


def generate(model, prompts: list[str]) -> list[str]:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(Path(model.tokenizer_dir) / "tokenizer.json"))
    out = []
    for p in prompts:
        ids = tok.encode(p, add_special_tokens=False).ids
        new = model.generate_greedy(ids, model.sample_tokens)
        out.append(tok.decode(new, skip_special_tokens=True))
    return out


def write_before(out: Path, prompts: list[str], texts: list[str]) -> None:
    atomic_write_json(out / SAMPLES_JSON, {"prompts": prompts, "before": texts})


def read_before(out: Path) -> dict | None:
    try:
        return json.loads((out / SAMPLES_JSON).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _quote(text: str) -> str:
    return "\n".join("> " + line if line else ">" for line in text.split("\n"))


def write_markdown(
    out: Path, prompts: list[str], before: list[str] | None, after: list[str], title: str
) -> None:
    lines = [
        f"# Samples: {title}",
        "",
        "Greedy continuations of fixed prompts: each prompt, then what the model wrote before round 1 and after the last round.",
        "",
    ]
    for i, p in enumerate(prompts):
        lines += [f"## Prompt {i + 1}", "", "```", p, "```", ""]
        if before is not None:
            lines += ["**Before round 1**", "", _quote(before[i]), ""]
        lines += ["**After the last round**", "", _quote(after[i]), ""]
    atomic_write_bytes(out / SAMPLES_MD, ("\n".join(lines)).encode("utf-8"))
