"""Checkpoints carry the accelerators' RNG states (issue 16): dropout on a GPU draws from CUDA's
generator, so a resumed GPU run is bit-exact only if that state is saved and restored.

Without a GPU the CUDA calls are faked (monkeypatch); the last test runs for real where CUDA is.
"""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch
from conftest import TINY_MLP, StopAfter, compose_cfg

from fedbench import checkpoint
from fedbench.config import validate
from fedbench.fl.vectorized import make_engine
from fedbench.run import build, run

# two fake GPUs whose generator states differ from each other and from anything real
FAKE_STATES = [torch.arange(16, dtype=torch.uint8) + 10 * i for i in range(2)]
TIMING = ["wall_s", "elapsed_s"]


def _engine():
    spec = validate(compose_cfg(TINY_MLP))
    data, model, state = build(spec)
    return make_engine(spec, model, state, data)


def _fake_cuda(monkeypatch, *, available=True, initialized=True, devices=2):
    """Fake CUDA with ``devices`` GPUs; returns the list each set_rng_state_all call is appended to."""
    calls: list[list[torch.Tensor]] = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: available)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: initialized)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: devices if available else 0)
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: [s.clone() for s in FAKE_STATES[:devices]])
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", lambda states: calls.append(list(states)))
    return calls


def test_state_dict_saves_the_cuda_states_once_cuda_is_initialised(monkeypatch, tmp_path):
    engine = _engine()
    _fake_cuda(monkeypatch, initialized=False)  # a CPU run: CUDA present but never started
    assert not any(k.startswith("rng/cuda/") for k in engine.state_dict()[0])
    _fake_cuda(monkeypatch)
    tensors, meta = engine.state_dict()
    assert sorted(k for k in tensors if k.startswith("rng/cuda/")) == ["rng/cuda/0", "rng/cuda/1"]
    for i, s in enumerate(FAKE_STATES):
        assert tensors[f"rng/cuda/{i}"].dtype == torch.uint8 and torch.equal(tensors[f"rng/cuda/{i}"], s)
    checkpoint.save(tmp_path, tensors, meta)  # and they survive the safetensors file
    loaded, _ = checkpoint.load(tmp_path)
    assert all(torch.equal(loaded[f"rng/cuda/{i}"], s) for i, s in enumerate(FAKE_STATES))


def test_load_state_dict_restores_the_cuda_states_unchanged(monkeypatch):
    engine = _engine()
    calls = _fake_cuda(monkeypatch)
    tensors, meta = engine.state_dict()
    engine.load_state_dict(tensors, meta)
    assert len(calls) == 1 and len(calls[0]) == 2
    assert all(torch.equal(got, want) for got, want in zip(calls[0], FAKE_STATES))
    # a machine with fewer GPUs restores the ones it has
    fewer = _fake_cuda(monkeypatch, devices=1)
    engine.load_state_dict(tensors, meta)
    assert len(fewer) == 1 and len(fewer[0]) == 1 and torch.equal(fewer[0][0], FAKE_STATES[0])


def test_checkpoint_with_cuda_states_loads_without_cuda(monkeypatch):
    engine = _engine()
    _fake_cuda(monkeypatch)
    tensors, meta = engine.state_dict()
    engine.run_round()  # move on, so that loading has something to restore
    calls = _fake_cuda(monkeypatch, available=False)
    engine.load_state_dict(tensors, meta)
    assert calls == []
    assert engine.round == meta["round"] and torch.equal(torch.get_rng_state(), tensors["rng/torch"])


def _without_timing(row: dict) -> dict:
    return {k: v for k, v in row.items() if k not in TIMING}


def test_checkpoint_from_before_the_cuda_keys_still_loads(monkeypatch):
    engine = _engine()
    engine.run_round()
    tensors, meta = engine.state_dict()  # CPU here: no CUDA keys, as before this change
    assert not any(k.startswith("rng/cuda") or k == "rng/mps" for k in tensors)
    expected = _without_timing(engine.run_round())
    calls = _fake_cuda(monkeypatch)  # even where CUDA is there now
    engine.load_state_dict(tensors, meta)
    assert calls == []
    monkeypatch.undo()
    assert _without_timing(engine.run_round()) == expected


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_dropout_run_resumes_bit_for_bit(tmp_path):
    """tiny_bert with dropout on the GPU, tutorial streams (one global stream, never reseeded
    per client): round 2's dropout masks depend on the CUDA generator left by round 1."""
    pytest.importorskip("transformers")
    cfg = compose_cfg(
        [
            "model=tiny_bert",
            "model.dropout=0.1",
            # plain attention: a fused kernel's backward may add in any order on a GPU, which
            # would break bit-exactness for a reason other than the generators
            "model.attn_implementation=eager",
            "data=bbc",
            "data.train_size=32",
            "data.test_size=16",
            "data.max_length=32",
            "fl.num_rounds=3",
            "fl.num_clients=2",
            "fl.clients_per_round=2",
            "rng=tutorial",
            "device=cuda",
            "threads=1",
        ]
    )
    reference = run(cfg)
    with pytest.raises(KeyboardInterrupt):
        run(cfg, out_dir=tmp_path, on_round=StopAfter(1))
    saved, _ = checkpoint.load(tmp_path)
    assert "rng/cuda/0" in saved
    resumed = run(cfg, out_dir=tmp_path)
    assert json.loads((tmp_path / "summary.json").read_text())["resumed_from_round"] == 1
    pd.testing.assert_frame_equal(
        resumed.drop(columns=TIMING).reset_index(drop=True),
        reference.drop(columns=TIMING).reset_index(drop=True),
        check_exact=True,
    )
