"""The run-folder files written without pandas, and the CLI's run path staying pandas-free."""

from __future__ import annotations

import math
import subprocess
import sys

import pandas as pd
import pytest
from conftest import ROOT

from fedbench.results import COLUMNS, INT_COLUMNS, read_parquet_rows, write_parquet_atomic


def _row(r: int, **over) -> dict:
    row = {c: (r * 1000 + i if c in INT_COLUMNS else r + i / 7) for i, c in enumerate(COLUMNS)}
    row["selected"] = " ".join(str(c) for c in range(r, r + 5))
    row.update(over)
    return row


def test_parquet_round_trips_rows_exactly(tmp_path):
    rows = [_row(1), _row(2, train_loss=float("nan"), selected="é 10 9"), _row(3, accuracy=0.1 + 0.2)]
    path = tmp_path / "metrics.parquet"
    write_parquet_atomic(rows, path)
    back = read_parquet_rows(path)
    assert [list(r) for r in back] == [COLUMNS] * 3
    for got, want in zip(back, rows):
        for c in COLUMNS:
            if isinstance(want[c], float) and math.isnan(want[c]):
                assert math.isnan(got[c])
            else:
                assert got[c] == want[c] and type(got[c]) is type(want[c]), c
    df = pd.read_parquet(path)
    assert list(df.columns) == COLUMNS
    assert all(str(df[c].dtype) == "int64" for c in INT_COLUMNS)
    assert all(str(df[c].dtype) == "float64" for c in COLUMNS if c not in INT_COLUMNS and c != "selected")
    assert not list(tmp_path.glob(".*.tmp"))  # no temp file left behind


def test_parquet_with_no_rows_keeps_the_columns(tmp_path):
    path = tmp_path / "metrics.parquet"
    write_parquet_atomic([], path)
    df = pd.read_parquet(path)
    assert list(df.columns) == COLUMNS and len(df) == 0


@pytest.mark.parametrize("bad", [{"round": "x"}, {"accuracy": "high"}])
def test_a_bad_value_leaves_no_file(tmp_path, bad):
    path = tmp_path / "metrics.parquet"
    with pytest.raises((ValueError, TypeError)):
        write_parquet_atomic([_row(1, **bad)], path)
    assert list(tmp_path.iterdir()) == []


def test_the_cli_run_path_does_not_import_pandas(tmp_path):
    code = (
        "import sys\n"
        "sys.path.insert(0, 'tests')\n"
        "from conftest import compose_cfg\n"
        "from fedbench.run import execute\n"
        f"rows = execute(compose_cfg(['fl.num_rounds=2', 'fl.num_clients=4', 'fl.clients_per_round=2']), "
        f"out_dir={str(tmp_path / 'run')!r})\n"
        "assert len(rows) == 2, rows\n"
        "print('pandas' in sys.modules)\n"
    )
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.strip() == "False"
    assert len(pd.read_parquet(tmp_path / "run" / "metrics.parquet")) == 2
