"""The tutorial MLP's hand-written training step equals autograd bit for bit."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import compose_cfg

from fedbench.config import validate
from fedbench.fl.mlp_step import TutorialMLPStep, fast_step
from fedbench.run import build, run

SHAPES = {
    "default": [],
    "changed": ["model.hidden_dim=48", "model.num_layers=2", "model.num_classes=13"],
}
LORA_CHANGED = ["method.rank=3", "method.alpha=2.5"]


def _grads_autograd(model, state, x, y):
    state.grad.zero_()
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    return loss.detach(), state.grad.clone()


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("shape", sorted(SHAPES))
@pytest.mark.parametrize("method", ["lora", "full", "head_only"])
def test_step_equals_autograd(method, shape, threads):
    torch.set_num_threads(threads)
    extra = LORA_CHANGED if (method, shape) == ("lora", "changed") else []
    spec = validate(compose_cfg([f"method={method}", *SHAPES[shape], *extra]))
    _, model, state = build(spec)
    step = fast_step(model, state)
    assert isinstance(step, TutorialMLPStep)
    gen = torch.Generator().manual_seed(1)
    # move away from the init (LoRA B = 0 makes some gradients trivially zero)
    state.flat.add_(torch.randn(state.numel, generator=gen) * 0.05)
    for batch in (16, 7, 1):
        x = torch.randn(batch, spec.model.input_dim, generator=gen)
        y = torch.randint(0, 10, (batch,), generator=gen)
        loss_ref, grad_ref = _grads_autograd(model, state, x, y)
        state.grad.fill_(float("nan"))  # the step must write every trainable gradient
        loss = step(x, y)
        assert torch.equal(loss, loss_ref)
        assert torch.equal(state.grad, grad_ref), f"{method}/{shape}/{threads} batch {batch}"


def test_step_declines_what_it_does_not_cover():
    spec = validate(compose_cfg(["model.use_bias=true"]))
    _, model, state = build(spec)
    assert fast_step(model, state) is None  # base biases in forward: autograd path


def test_runs_equal_with_and_without_fast_step():
    base = ["fl.num_rounds=3", "method.rank=2", "fl.clients_per_round=3"]
    fast = run(compose_cfg([*base, "fl.fast_step=true"]))
    slow = run(compose_cfg([*base, "fl.fast_step=false"]))
    assert fast["accuracy"].tolist() == slow["accuracy"].tolist()
    assert fast["test_loss"].tolist() == slow["test_loss"].tolist()
    assert fast["train_loss"].tolist() == slow["train_loss"].tolist()
