"""Wire sizes: each message measured as the safetensors file it would be sent as (and its zstd)."""

from __future__ import annotations

import math
import struct

import pytest
import torch
from conftest import compose_cfg, run_cli
from safetensors.torch import save

from fedbench.config import validate
from fedbench.errors import ConfigError
from fedbench.fl.comm import Int8, NoCompression, TopK
from fedbench.fl.wire import Sizes, Wire, flatten, merge, payload_bytes
from fedbench.run import build, run

SMALL = ["fl.num_rounds=2", "model.hidden_dim=32", "model.num_layers=2", "threads=1"]


def _payload(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"layer.lora_A": torch.randn(32, 4, generator=g), "head.weight": torch.randn(10, 32, generator=g)}


@pytest.mark.parametrize("codec", [NoCompression(), Int8(), Int8(granularity="row"), TopK(fraction=0.1)])
def test_header_overhead_is_what_safetensors_writes(codec):
    message = codec.encode(_payload(), key=0)
    written = save(flatten(message))
    (header_len,) = struct.unpack("<Q", written[:8])
    wire = Wire()
    sizes = wire.sizes(message)
    assert sizes.payload == payload_bytes(message)
    # the file is: 8-byte length, the JSON header, then exactly the payload's bytes
    assert sizes.wire == len(written) == 8 + header_len + sizes.payload
    assert wire.header_bytes(message) == 8 + header_len
    # the header depends on names, dtypes and shapes only: measured once, reused for new values
    again = wire.sizes(codec.encode(_payload(seed=1), key=1))
    assert again.wire == sizes.wire and len(wire._headers) == 1


def test_topk_indices_and_int8_scales_are_on_the_wire():
    payload = _payload()
    none = Wire().sizes(NoCompression().encode(payload))
    int8 = Wire().sizes(Int8().encode(payload))
    assert int8.payload == sum(v.numel() for v in payload.values()) + 4 * len(payload)  # values + scales
    topk = Wire().sizes(TopK(fraction=0.25, error_feedback=False).encode(payload))
    k = [math.ceil(0.25 * v.numel()) for v in payload.values()]
    # float32 values + indices: uint8 for the 128-value tensor, int16 for the 320-value one
    assert topk.payload == k[0] * (4 + 1) + k[1] * (4 + 2)
    assert none.wire > none.payload and int8.wire > int8.payload and topk.wire > topk.payload


def test_zstd_of_an_all_zero_update_is_tiny_and_of_noise_is_not():
    zero = Wire("zstd").sizes({"w": (torch.zeros(1000, 100),)})
    assert zero.payload == 400_000 and zero.zstd < 0.01 * zero.payload
    noise = Wire("zstd").sizes({"w": (torch.randn(1000, 100, generator=torch.Generator().manual_seed(0)),)})
    assert noise.zstd > 0.8 * noise.payload  # float32 noise hardly compresses
    assert noise.sent == noise.zstd and Sizes(1, 2, None).sent == 2


def test_merged_messages_keep_their_parts_apart():
    a = {"x": (torch.zeros(3),)}
    m = merge(dp=a, update=a)
    assert set(m) == {"dp:x", "update:x"} and Wire().sizes(m).payload == 24


def test_rows_carry_wire_sizes_recomputed_here():
    """bytes_down's wire size is clients x the safetensors file of the encoded global payload."""
    cfg = compose_cfg(SMALL)
    df = run(cfg)
    _, _, state = build(validate(cfg))
    file = save(flatten(NoCompression().encode(state.snapshot())))
    assert (df["wire_bytes_down"] == df["clients"] * len(file)).all()
    assert (df["wire_bytes_up"] == df["reported"] * len(file)).all()  # clients send the same layout
    assert (df["wire_bytes_up"] > df["bytes_up"]).all()
    assert df["cum_wire_bytes"].tolist() == (df["wire_bytes_up"] + df["wire_bytes_down"]).cumsum().tolist()
    assert df["zstd_bytes_up"].isna().all() and df["zstd_bytes_down"].isna().all()


@pytest.mark.parametrize("codec", ["none", "int8", "topk"])
def test_entropy_zstd_records_compressed_sizes(codec):
    df = run(compose_cfg([*SMALL, f"compression={codec}", "compression.entropy=zstd"]))
    assert (df["zstd_bytes_up"] > 0).all() and (df["zstd_bytes_down"] > 0).all()
    assert (df["zstd_bytes_up"] <= df["wire_bytes_up"] + 64).all()  # zstd's frame adds a few bytes at most
    assert (df["wire_bytes_up"] >= df["bytes_up"]).all() and (df["wire_bytes_down"] >= df["bytes_down"]).all()


def test_entropy_is_outside_the_identity_at_its_default_and_inside_otherwise():
    plain = validate(compose_cfg(SMALL))
    assert validate(compose_cfg([*SMALL, "compression.entropy=none"])).config_hash == plain.config_hash
    assert validate(compose_cfg([*SMALL, "compression.entropy=zstd"])).config_hash != plain.config_hash
    without = {
        **plain.resolved,
        "compression": {k: v for k, v in plain.resolved["compression"].items() if k != "entropy"},
    }
    from fedbench.config import config_hash

    assert config_hash(without) == plain.config_hash


def test_unknown_entropy_is_one_line_exit_2(tmp_path):
    with pytest.raises(ConfigError, match="^compression.entropy='gzip': must be one of: none, zstd$"):
        validate(compose_cfg(["compression.entropy=gzip"]))
    res = run_cli(["compression.entropy=gzip"], cwd=tmp_path)
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1
    assert "compression.entropy" in res.stderr and not (tmp_path / "outputs").exists()
