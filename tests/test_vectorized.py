"""The vectorised engine: same contract as the exact engine, every client's gradients right,
accuracies close to the exact engine's (not bit-exact: batched matmuls round differently)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from conftest import compose_cfg, engine_for
from torch import nn

from fedbench.config import ConfigError, FLConfig, validate
from fedbench.data import FederatedData
from fedbench.fl.comm import NoCompression
from fedbench.fl.engine import Engine
from fedbench.fl.local import train_client
from fedbench.fl.mlp_step import fast_step
from fedbench.fl.optim import FlatAdamW
from fedbench.fl.state import FlatParams
from fedbench.fl.strategies import FedAvg
from fedbench.fl.vectorized import (
    BatchedMLPStep,
    RoundPlan,
    StackedModules,
    StackedState,
    VectorizedEngine,
    make_engine,
)
from fedbench.methods.full import Full
from fedbench.run import build

SMALL = [
    "model.hidden_dim=32",
    "model.num_layers=3",
    "data.samples_per_client=60",
    "data.test_size=100",
    "fl.num_rounds=4",
    "fl.num_clients=6",
    "fl.clients_per_round=3",
]


def _engine(overrides, kind, data=None):
    spec = validate(compose_cfg([*overrides, "threads=1"]))
    torch.set_num_threads(1)
    built, model, state = build(spec)
    spec.fl.engine = kind
    return make_engine(spec, model, state, built if data is None else data), spec


def _rows(engine, n):
    return [engine.run_round() for _ in range(n)]


def _run(overrides, kind, n, tweak=None):
    """Build and run at once: engines share torch's global RNG (the shuffles come from it)."""
    engine, _ = _engine(overrides, kind)
    if tweak is not None:
        tweak(engine)
    return engine, _rows(engine, n)


METHODS = {
    "lora": ["method=lora"],
    "full": ["method=full"],
    "head_only": ["method=head_only"],
    "lora_ffa": ["method=lora", "method.aggregation=ffa"],  # B trains, A frozen and shared
    "lora_exact_aggregation": ["method=lora", "method.aggregation=exact"],  # merges into the base
    "fedadam_int8": ["strategy=fedadam", "compression=int8"],
}


@pytest.mark.parametrize("method", sorted(METHODS))
def test_rows_match_exact_engine(method):
    ex, a = _run([*SMALL, *METHODS[method]], "exact", 4)
    vec, b = _run([*SMALL, *METHODS[method]], "vectorized", 4)
    assert isinstance(vec, VectorizedEngine) and type(ex) is Engine
    assert [set(r) for r in a] == [set(r) for r in b]
    for x, y in zip(a, b):
        for key in (
            "round",
            "bytes_up",
            "bytes_down",
            "clients",
            "reported",
            "rejected",
            "selected",
            "trainable_params",
            "_all_nonfinite",
        ):
            assert x[key] == y[key], key
        assert abs(x["accuracy"] - y["accuracy"]) <= 0.02
        assert y["train_loss"] == pytest.approx(x["train_loss"], rel=1e-4)
        assert y["test_loss"] == pytest.approx(x["test_loss"], rel=1e-4)


def _stacked_vs_single(model, state, clients, step_kind):
    """Gradients of K stacked clients (one step) vs each client alone through autograd."""
    K = len(clients)
    gen = torch.Generator().manual_seed(3)
    starts = [state.flat + 0.05 * torch.randn(state.numel, generator=gen) for _ in range(K)]
    mlp = BatchedMLPStep.build(model, state) if step_kind == "batched" else None
    st = StackedState(state, K, mlp.transposed() if mlp else frozenset())
    for k, s in enumerate(starts):  # a different state per client
        for n, v in st.views(st.W).items():
            src = state.views(s)[n]
            v[k].copy_(src.t() if n in st.transposed else src)
    orders = [[torch.randperm(len(y), generator=gen)] for _, y in clients]
    plan = RoundPlan(clients, orders, batch_size=16, num_classes=mlp.num_classes if mlp else None)
    b = plan.batches[0]
    P, G = st.views(st.W, b.m), st.views(st.G, b.m)
    if mlp is not None:
        with torch.no_grad():
            mlp.refresh()
            losses = mlp(P, G, b)
    else:
        gen_step = StackedModules(model, state, st)
        st.G.zero_()
        with torch.no_grad(), gen_step.installed():
            losses = gen_step(P, G, b)
    for j, k in enumerate(plan.perm):
        x, y = clients[k]
        rows = b.x[j * b.B : (j + 1) * b.B]
        keep = rows.abs().sum(1) > 0 if b.w is not None else slice(None)
        state.flat.copy_(starts[k])
        state.grad.zero_()
        loss = F.cross_entropy(model(rows[keep]), b.y[j * b.B : (j + 1) * b.B][keep])
        loss.backward()
        assert losses[j].item() == pytest.approx(loss.item(), rel=1e-5)
        grads = {}
        for n, v in st.views(st.G).items():
            grads[n] = v[j].t() if n in st.transposed else v[j]
        for n, ref in state.views(state.grad).items():
            torch.testing.assert_close(grads[n], ref, rtol=1e-4, atol=1e-6, msg=n)


@pytest.mark.parametrize("step_kind", ["batched", "autograd"])
@pytest.mark.parametrize("method", ["lora", "lora_ffa", "full", "head_only"])
def test_every_clients_gradient(method, step_kind):
    extra = ["method.rank=3"] if method.startswith("lora") else []
    spec = validate(compose_cfg([*SMALL, *METHODS[method], *extra]))
    data, model, state = build(spec)
    # unequal sizes: 60, 9 (a short, padded batch) and 16 rows
    clients = [data.clients[0], tuple(t[:9] for t in data.clients[1]), tuple(t[:16] for t in data.clients[2])]
    _stacked_vs_single(model, state, clients, step_kind)


def test_unequal_clients_train_like_exact():
    """Clients of 60, 7 and 33 rows, 2 epochs: each final state is close to training it alone."""
    spec = validate(compose_cfg([*SMALL, "fl.local_epochs=2"]))
    data, model, state = build(spec)
    clients = [data.clients[0], tuple(t[:7] for t in data.clients[1]), tuple(t[:33] for t in data.clients[2])]
    torch.set_num_threads(1)
    vec = engine_for(spec, data, model, state, VectorizedEngine)
    start = state.flat.clone()
    orders = vec.shuffles(1, [0, 1, 2], [len(y) for _, y in clients])
    finals, losses = vec.train_selected(clients, orders, start)
    opt = FlatAdamW(state.flat, state.grad, lr=spec.fl.lr, weight_decay=spec.fl.weight_decay)
    step = fast_step(model, state)
    for k, (x, y) in enumerate(clients):
        state.flat.copy_(start)
        opt.reset()
        loss = train_client(
            model, state, opt, x, y, 2, spec.fl.batch_size, step, order=lambda e, k=k: orders[k][e]
        )
        assert losses[k] == pytest.approx(loss, rel=1e-4)
        torch.testing.assert_close(finals[k], state.flat, rtol=0, atol=2e-4)


def test_fused_and_single_tensor_adamw_agree():
    _, a = _run(SMALL, "vectorized", 3)
    _, b = _run(SMALL, "vectorized", 3, tweak=lambda e: setattr(e, "fused_adamw", False))
    for x, y in zip(a, b):
        assert y["train_loss"] == pytest.approx(x["train_loss"], rel=1e-4)


def test_checkpoint_resume_is_exact():
    _, rows = _run(SMALL, "vectorized", 4)
    first, _ = _run(SMALL, "vectorized", 2)
    tensors, meta = first.state_dict()
    second, _ = _engine(SMALL, "vectorized")
    second.load_state_dict(tensors, meta)
    rest = _rows(second, 2)
    for x, y in zip(rows[2:], rest):
        assert {k: v for k, v in x.items() if k != "wall_s"} == {k: v for k, v in y.items() if k != "wall_s"}


def test_dropout_faults_and_fedprox_pass_through():
    over = [*SMALL, "fl.dropout=0.3", "fl.faults=[nan:*:2]"]
    _, a = _run(over, "exact", 4)
    _, b = _run(over, "vectorized", 4)
    assert sum(r["rejected"] for r in a) > 0 and sum(r["reported"] for r in a) < 4 * 3
    for x, y in zip(a, b):
        for key in ("reported", "rejected", "bytes_up", "selected", "_all_nonfinite"):
            assert x[key] == y[key]
    vec, spec = _engine(SMALL, "vectorized")
    start = vec.state.flat.clone()
    clients = [vec.data.clients[i] for i in range(3)]
    orders = vec.shuffles(1, [0, 1, 2], [len(y) for _, y in clients])
    pulled, _ = vec.train_selected(clients, orders, start, mu=0.5)
    free, _ = vec.train_selected(clients, orders, start, mu=0.0)
    assert all((p - start).norm() < (f - start).norm() for p, f in zip(pulled, free))


def test_generic_path_equals_batched_step_closely():
    a, ra = _run([*SMALL, "fl.fast_step=true"], "vectorized", 3)
    b, rb = _run([*SMALL, "fl.fast_step=false"], "vectorized", 3)
    assert a._mlp_step is not None and b._mlp_step is None
    for x, y in zip(ra, rb):
        assert abs(x["accuracy"] - y["accuracy"]) <= 0.02
        assert y["train_loss"] == pytest.approx(x["train_loss"], rel=1e-4)


class _Scaled(nn.Module):
    """A model with a trainable tensor outside Linear/LayerNorm: cannot be stacked."""

    head_name = "head"
    architecture = "custom"

    def __init__(self):
        super().__init__()
        self.gain = nn.Parameter(torch.ones(4))
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        return self.head(x * self.gain)


def test_refuses_what_it_cannot_stack():
    model = _Scaled()
    state = FlatParams(model, ["gain", "head.weight", "head.bias"])
    data = FederatedData(
        clients=[(torch.randn(8, 4), torch.randint(0, 2, (8,)))] * 2,
        test=(torch.randn(8, 4), torch.randint(0, 2, (8,))),
        num_classes=2,
        partition="x",
    )
    fl = FLConfig(num_clients=2, clients_per_round=2)
    with pytest.raises(ConfigError, match="fl.engine.*gain"):
        VectorizedEngine(
            model=model,
            state=state,
            data=data,
            fl=fl,
            strategy=FedAvg(),
            codec_up=NoCompression(),
            codec_down=NoCompression(),
            method=Full(),
        )
    spec = SimpleNamespace(
        fl=fl,
        strategy=FedAvg(),
        compression_up=NoCompression(),
        compression_down=NoCompression(),
        method=None,
    )
    fl.engine = "warp"
    with pytest.raises(ConfigError, match="fl.engine"):
        make_engine(spec, model, state, data)


@pytest.mark.parametrize("method", ["lora", "adapter_ln", "bitfit"])
def test_bert_methods_stack(method):
    """A BERT-family encoder (tiny, random) trained vectorised with LoRA on query/value, adapters
    with trainable LayerNorms, or BitFit (biases of frozen Linears and LayerNorms): every
    client's gradient equals training it alone through autograd, to float tolerance."""
    hf = pytest.importorskip("fedbench.models.hf")
    pytest.importorskip("transformers")

    torch.manual_seed(0)
    model = hf.TinyBert(dropout=0.0, hidden_size=16, intermediate_size=32, num_layers=1).build()
    if method == "lora":
        from fedbench.methods.lora import LoRA

        m = LoRA(rank=2, target_modules=["query", "value"])
    elif method == "adapter_ln":
        from fedbench.methods.adapter import Adapter

        m = Adapter(bottleneck=4, train_layernorm=True)
    else:
        from fedbench.methods.bitfit import BitFit

        m = BitFit()
    m.inject(model)
    model.attach_head()
    state = FlatParams(model, m.trainable(model))
    gen = torch.Generator().manual_seed(0)
    # move off the initialisation (zero adapter_up / LoRA B make some gradients trivially zero)
    state.flat.add_(0.05 * torch.randn(state.numel, generator=gen))

    def ids(n):
        x = torch.randint(1000, 2000, (n, 12), generator=gen)
        x[:, 8:] = 0  # right padding
        return x

    clients = [(ids(16), torch.randint(0, 2, (16,), generator=gen)) for _ in range(2)]
    clients.append((ids(5), torch.randint(0, 2, (5,), generator=gen)))  # a short, padded client
    _stacked_vs_single(model, state, clients, "autograd")
