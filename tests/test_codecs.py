"""Codecs: encode -> decode error bounds, counted bytes = analytic bytes, error feedback, and
the codecs through a run (up and down chosen separately, topk refused on the downlink)."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import compose_cfg, run_cli

from fedbench.config import ConfigError
from fedbench.fl.comm import (
    BFloat16,
    Float16,
    Int8,
    NoCompression,
    TopK,
    index_dtype,
    message_bytes,
    topk_count,
)
from fedbench.run import run

# numel 12, 256 (uint8 indices), 300 (int16), 40,000 (int32), and a 1-D tensor
SHAPES = {"a": (3, 4), "b": (16, 16), "c": (300,), "d": (200, 200), "e": (10,)}


def payload(seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(s, generator=g) * scale for k, s in SHAPES.items()}


def numel(shape):
    return math.prod(shape)


def analytic_bytes(codec) -> int:
    total = 0
    for shape in SHAPES.values():
        n = numel(shape)
        if isinstance(codec, NoCompression):
            total += 4 * n
        elif isinstance(codec, (Float16, BFloat16)):
            total += 2 * n
        elif isinstance(codec, Int8):
            rows = shape[0] if codec.granularity == "row" and len(shape) >= 2 else 1
            total += n + 4 * rows
        elif isinstance(codec, TopK):
            k = math.ceil(codec.fraction * n)
            width = 1 if n <= 256 else 2 if n <= 32768 else 4
            total += k * (4 + width)
    return total


CODECS = [
    NoCompression(),
    Float16(),
    BFloat16(),
    Int8(),
    Int8(granularity="row"),
    TopK(fraction=0.1, error_feedback=False),
    TopK(fraction=0.01),
    TopK(fraction=1.0),
]


@pytest.mark.parametrize(
    "codec",
    CODECS,
    ids=lambda c: f"{type(c).__name__}{getattr(c, 'granularity', '')}{getattr(c, 'fraction', '')}",
)
def test_counted_bytes_equal_analytic_bytes(codec):
    message = codec.encode(payload(), key=0)
    assert message_bytes(message) == analytic_bytes(codec)
    decoded = codec.decode(message, key=0)
    assert {k: tuple(v.shape) for k, v in decoded.items()} == SHAPES
    assert all(v.dtype == torch.float32 for v in decoded.values())


def test_index_width_follows_tensor_size():
    assert [index_dtype(n) for n in (1, 256, 257, 32768, 32769, 2**31)] == [
        torch.uint8,
        torch.uint8,
        torch.int16,
        torch.int16,
        torch.int32,
        torch.int32,
    ]
    assert index_dtype(2**31 + 1) == torch.int64
    assert [topk_count(n, 0.1) for n in (1, 10, 11, 256, 40000)] == [1, 1, 2, 26, 4000]
    message = TopK(fraction=0.1).encode(payload(), key=3)
    widths = {k: parts[1].dtype for k, parts in message.items()}
    assert widths == {
        "a": torch.uint8,
        "b": torch.uint8,
        "c": torch.int16,
        "d": torch.int32,
        "e": torch.uint8,
    }


def test_none_is_exact_and_floats_round_within_their_precision():
    x = payload(1)
    for k, v in NoCompression().decode(NoCompression().encode(x)).items():
        assert torch.equal(v, x[k])
    for codec, rel in ((Float16(), 2.0**-11), (BFloat16(), 2.0**-8)):
        for k, v in codec.decode(codec.encode(x)).items():
            assert ((v - x[k]).abs() <= rel * x[k].abs() + 1e-7).all(), (codec, k)


@pytest.mark.parametrize("granularity", ["tensor", "row"])
def test_int8_error_is_at_most_half_a_step(granularity):
    codec = Int8(granularity=granularity)
    x = payload(2, scale=3.0)
    x["b"][5] *= 100.0  # one row far larger: per-row scales keep the other rows precise
    y = codec.decode(codec.encode(x))
    for k, v in x.items():
        rows = v.reshape(v.shape[0], -1) if granularity == "row" and v.dim() >= 2 else v.reshape(1, -1)
        step = rows.abs().amax(dim=1, keepdim=True) / 127
        err = (y[k].reshape(rows.shape) - rows).abs()
        assert (err <= step / 2 * (1 + 1e-5) + 1e-12).all(), k
    if granularity == "row":
        other = torch.cat([x["b"][:5], x["b"][6:]])
        assert (y["b"][:5] - x["b"][:5]).abs().max() <= other.abs().max() / 254 * (1 + 1e-5)


def test_int8_zero_tensor_and_extremes():
    codec = Int8()
    x = {"z": torch.zeros(4, 3), "m": torch.tensor([-2.0, 0.5, 2.0])}
    y = codec.decode(codec.encode(x))
    assert torch.equal(y["z"], x["z"])
    assert torch.equal(y["m"][[0, 2]], x["m"][[0, 2]])  # the extremes are represented exactly


def test_topk_keeps_the_largest_magnitudes_exactly_and_zeroes_the_rest():
    codec = TopK(fraction=0.1, error_feedback=False)
    x = payload(3)
    y = codec.decode(codec.encode(x, key=0), key=0)
    for k, v in x.items():
        kept = y[k] != 0
        assert int(kept.sum()) == topk_count(v.numel(), 0.1)
        assert torch.equal(y[k][kept], v[kept])
        assert v[kept].abs().min() >= v[~kept].abs().max() if (~kept).any() else True


def test_topk_error_feedback_loses_nothing_and_is_kept_per_client():
    codec = TopK(fraction=0.05)
    inputs = {c: [payload(10 * c + t) for t in range(6)] for c in (0, 1)}
    sent = {c: {k: torch.zeros(s) for k, s in SHAPES.items()} for c in (0, 1)}
    for t in range(6):
        for c in (0, 1):  # interleaved: each client's residual must stay its own
            for k, v in codec.decode(codec.encode(inputs[c][t], key=c), key=c).items():
                sent[c][k] += v
    tensors, meta = codec.state_dict()
    assert sorted(meta["keys"]) == [0, 1]
    for c in (0, 1):
        residual = codec._residual[c]
        for k in SHAPES:
            total = sum(p[k] for p in inputs[c])
            # everything that went in either arrived or is still waiting in the residual
            torch.testing.assert_close(sent[c][k] + residual[k], total, rtol=0, atol=1e-5)
            assert residual[k].abs().max() > 0
    # checkpoint round trip restores the residuals exactly
    other = TopK(fraction=0.05)
    other.load_state_dict(tensors, meta)
    nxt = payload(99)
    a, b = codec.encode(nxt, key=1), other.encode(nxt, key=1)
    assert all(torch.equal(x, y) for k in a for x, y in zip(a[k], b[k]))


def test_bad_codec_values_are_refused():
    with pytest.raises(ConfigError, match="fraction"):
        TopK(fraction=0.0)
    with pytest.raises(ConfigError, match="granularity"):
        Int8(granularity="channel")


# -- through a run: the tutorial LoRA payload ---------------------------------------------------
# name -> shape of the default LoRA's trainable state (4 layers, rank 4, 10-class head)
LORA = {
    "A0": (128, 4),
    "B0": (4, 256),
    "A1": (256, 4),
    "B1": (4, 256),
    "A2": (256, 4),
    "B2": (4, 256),
    "A3": (256, 4),
    "B3": (4, 256),
    "head.weight": (10, 256),
    "head.bias": (10,),
}


def lora_bytes(kind: str, shapes=LORA) -> int:
    if kind == "none":
        return sum(4 * numel(s) for s in shapes.values())
    if kind == "bf16":
        return sum(2 * numel(s) for s in shapes.values())
    if kind == "int8":
        return sum(numel(s) + 4 for s in shapes.values())
    if kind == "int8_row":
        return sum(numel(s) + 4 * (s[0] if len(s) > 1 else 1) for s in shapes.values())
    if kind == "topk":
        return sum(math.ceil(0.1 * numel(s)) * (4 + (1 if numel(s) <= 256 else 2)) for s in shapes.values())
    raise KeyError(kind)


@pytest.mark.parametrize("up,down", [("topk", "none"), ("int8", "bf16"), ("int8_row", "int8")])
def test_run_counts_each_direction_with_its_own_codec(up, down):
    df = run(
        compose_cfg(["fl.num_rounds=2", "threads=1", f"compression/up={up}", f"compression/down={down}"])
    )
    assert (df["bytes_up"] == 5 * lora_bytes(up)).all()
    assert (df["bytes_down"] == 5 * lora_bytes(down)).all()
    assert df["accuracy"].notna().all()


def test_presets_compose_both_directions():
    for preset, up, down in (
        ("int8", "Int8", "Int8"),
        ("bf16", "BFloat16", "BFloat16"),
        ("topk", "TopK", "NoCompression"),
        ("topk_int8", "TopK", "Int8"),
    ):
        comp = compose_cfg([f"compression={preset}"]).compression
        assert comp.up._target_.endswith("." + up) and comp.down._target_.endswith("." + down)


def test_topk_downlink_is_refused_with_one_line(tmp_path):
    res = run_cli(["compression/down=topk"], cwd=tmp_path)
    assert res.returncode == 2
    assert res.stderr.strip().splitlines() == [
        "fedbench: compression.down=topk: unknown option for group "
        "'compression/down'; allowed: bf16, fp16, int8, int8_row, none"
    ]
    with pytest.raises(ConfigError, match="^compression.down: TopK sends changes"):
        run(compose_cfg(["fl.num_rounds=1", "compression.down._target_=fedbench.fl.comm.TopK"]))


def test_dropout_counts_only_bytes_that_were_sent_and_records_reports():
    df = run(
        compose_cfg(
            ["fl.num_rounds=6", "threads=1", "fl.dropout=0.5", "method=head_only", "compression=topk"]
        )
    )
    head = lora_bytes("topk", {"w": (10, 256), "b": (10,)})
    assert (df["bytes_down"] == 5 * 10 * 257 * 4).all()  # the downlink reaches every selected client
    assert (df["bytes_up"] == df["reported"] * head).all()
    assert (df["reported"] < df["clients"]).any() and (df["reported"] > 0).any()
    assert df["cum_bytes_up"].iloc[-1] == head * df["reported"].sum()
