"""A table over (model, method): what trains, what is sent, and what stays frozen."""

from __future__ import annotations

import pytest
import torch
from conftest import compose_cfg, engine_for
from torch import nn

from fedbench.config import ConfigError, validate
from fedbench.methods.full import Full
from fedbench.methods.head_only import HeadOnly
from fedbench.methods.lora import LoRA
from fedbench.run import build

SMALL = [
    "fl.num_rounds=1",
    "fl.num_clients=3",
    "fl.clients_per_round=2",
    "fl.local_epochs=1",
    "data.samples_per_client=64",
    "data.test_size=32",
    "model.hidden_dim=32",
    "model.num_layers=2",
    "model.input_dim=16",
]

EXPECTED_TRAINABLE = {
    "lora": lambda n: ".lora_A" in n or ".lora_B" in n or n.startswith("head."),
    "full": lambda n: True,
    "head_only": lambda n: n.startswith("head."),
}


def _setup(method: str, extra=()):
    spec = validate(compose_cfg([*SMALL, f"method={method}", *extra]))
    data, model, state = build(spec)
    engine = engine_for(spec, data, model, state)
    return spec, model, state, engine


@pytest.mark.parametrize("method", sorted(EXPECTED_TRAINABLE))
def test_only_method_parameters_change(method):
    _, model, state, engine = _setup(method)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    engine.run_round()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    expected = {n for n in before if EXPECTED_TRAINABLE[method](n)}
    assert changed == expected
    assert set(state.names) == expected
    # the payload that crosses the wire is exactly the trainable state
    assert list(engine.global_payload) == state.names


@pytest.mark.parametrize("method", sorted(EXPECTED_TRAINABLE))
def test_frozen_parameters_have_no_grad(method):
    _, model, state, _ = _setup(method)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == set(state.names)


def test_lora_at_init_leaves_output_unchanged():
    torch.manual_seed(0)
    spec = validate(compose_cfg([*SMALL, "method=lora"]))
    plain = spec.model.build()
    adapted = spec.model.build()
    adapted.load_state_dict(plain.state_dict())
    LoRA(rank=3, alpha=2.0).inject(adapted)
    plain.attach_head()
    adapted.attach_head()
    adapted.head.load_state_dict(plain.head.state_dict())
    x = torch.randn(10, 16)
    assert torch.equal(plain(x), adapted(x))
    assert all(torch.count_nonzero(m.lora_A) > 0 for m in adapted.modules() if hasattr(m, "lora_A"))


def test_lora_parametrization_matches_tutorial():
    spec, model, state, _ = _setup("lora", ["method.rank=3", "method.alpha=6.0"])
    lora = model.layers[0]
    assert lora.lora_A.shape == (16, 3) and lora.lora_B.shape == (3, 32)
    assert torch.count_nonzero(lora.lora_B) == 0
    assert lora.scale == 2.0
    assert 0.005 < lora.lora_A.std().item() < 0.02  # N(0, 0.01^2)


def test_default_lora_trainable_params_is_10250():
    spec = validate(compose_cfg([]))
    _, _, state = build(spec)
    assert state.numel == 10_250


class _TinyNet(nn.Module):
    """Not the tutorial MLP: other module names, a bias, a non-Linear layer."""

    head_name = "classifier"
    architecture = "mlp"  # LoRA's default for it: every nn.Linear but the head

    def __init__(self):
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 8))
        self.norm = nn.LayerNorm(8)
        self.classifier = nn.Linear(8, 3)

    def forward(self, x):
        return self.classifier(self.norm(self.encoder(x)))


@pytest.mark.parametrize(
    "method,expected",
    [
        (
            LoRA(rank=2, target_modules=["encoder.2"]),
            {"encoder.2.lora_A", "encoder.2.lora_B", "classifier.weight", "classifier.bias"},
        ),
        (
            LoRA(rank=2),
            {
                "encoder.0.lora_A",
                "encoder.0.lora_B",
                "encoder.2.lora_A",
                "encoder.2.lora_B",
                "classifier.weight",
                "classifier.bias",
            },
        ),
        (HeadOnly(), {"classifier.weight", "classifier.bias"}),
        (
            Full(),
            {
                "encoder.0.weight",
                "encoder.0.bias",
                "encoder.2.weight",
                "encoder.2.bias",
                "norm.weight",
                "norm.bias",
                "classifier.weight",
                "classifier.bias",
            },
        ),
    ],
)
def test_methods_are_generic_over_module_names(method, expected):
    net = _TinyNet()
    method.inject(net)
    assert set(method.trainable(net)) == expected


def test_lora_target_matching_nothing_is_refused():
    with pytest.raises(ConfigError, match="method.target_modules"):
        LoRA(target_modules=["nope"]).inject(_TinyNet())
