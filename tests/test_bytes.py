"""Bytes are counted from the tensors on the wire; they must equal the analytic count."""

from __future__ import annotations

import pytest
from conftest import compose_cfg

from fedbench.run import run

SHORT = ["fl.num_rounds=2"]
IN, HID, LAYERS, CLASSES, RANK = 128, 256, 4, 10, 4
HEAD = HID * CLASSES + CLASSES
ANALYTIC_PARAMS = {
    # A (in x r) + B (r x out) per layer, plus the head
    "lora": RANK * (IN + HID) + (LAYERS - 1) * RANK * (HID + HID) + HEAD,
    # every base weight (the tutorial's unused biases are not part of the model) + head
    "full": IN * HID + (LAYERS - 1) * HID * HID + HEAD,
    "head_only": HEAD,
}


def test_lora_default_is_41000_bytes_per_client_per_direction():
    assert ANALYTIC_PARAMS["lora"] * 4 == 41_000


@pytest.mark.parametrize("compression,width", [("none", 4), ("fp16", 2)])
@pytest.mark.parametrize("method", sorted(ANALYTIC_PARAMS))
def test_counted_bytes_equal_analytic(method, compression, width):
    df = run(compose_cfg([*SHORT, f"method={method}", f"compression={compression}"]))
    per_client = ANALYTIC_PARAMS[method] * width
    assert (df["trainable_params"] == ANALYTIC_PARAMS[method]).all()
    assert (df["clients"] == 5).all()
    assert (df["bytes_up"] == 5 * per_client).all()
    assert (df["bytes_down"] == 5 * per_client).all()
    assert df["cum_bytes"].tolist() == (df["bytes_up"] + df["bytes_down"]).cumsum().tolist()
    assert df["cum_bytes_up"].iloc[-1] == df["bytes_up"].sum()


def test_bytes_scale_with_clients_per_round():
    df = run(compose_cfg(["fl.num_rounds=1", "fl.clients_per_round=3", "method=head_only"]))
    assert df["bytes_up"].iloc[0] == 3 * ANALYTIC_PARAMS["head_only"] * 4
