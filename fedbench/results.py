"""The run-folder contract: metrics rows, their files, and the run summary.

A run folder holds ``metrics.csv`` (appended and flushed every round, so a killed run keeps
its rows), ``metrics.parquet`` and ``summary.json`` (both written atomically when the run
ends), next to Hydra's ``.hydra/``. With per-client evaluation (``data.client_test_fraction``)
it also holds ``client_metrics.csv`` (appended at every evaluation) and
``client_metrics.parquet`` (written when the run ends): one row per (round, client).

Rounds that are not evaluated (``fl.eval_every``) have ``accuracy``, ``test_loss`` and the
``client_acc_*`` columns NaN; the ``client_acc_*`` columns are NaN in every row without
per-client evaluation, ``epsilon`` in every row of a run without privacy accounting.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pandas costs ~0.3 s of import: the CLI's run path writes without it
    import pandas as pd
    import pyarrow as pa

METRICS_CSV = "metrics.csv"
METRICS_PARQUET = "metrics.parquet"
SUMMARY_JSON = "summary.json"

# Column order of a metrics row. ``cum_*`` are running totals over rounds.
COLUMNS = [
    "round",
    "accuracy",
    "test_loss",
    "perplexity",
    "train_loss",
    "client_acc_mean",
    "client_acc_std",
    "client_acc_p10",
    "client_acc_min",
    "bytes_up",
    "bytes_down",
    "cum_bytes_up",
    "cum_bytes_down",
    "cum_bytes",
    "wire_bytes_up",
    "wire_bytes_down",
    "cum_wire_bytes",
    "zstd_bytes_up",
    "zstd_bytes_down",
    "clients",
    "reported",
    "rejected",
    "stragglers",
    "sim_round_s",
    "sim_time_s",
    "merge_rank",
    "epsilon",
    "trainable_params",
    "wall_s",
    "elapsed_s",
    "selected",
]
# The per-client evaluation columns (fedbench.fl.client_eval): a row of a run without per-client
# splits lacks them and they are recorded as NaN.
CLIENT_COLUMNS = ("client_acc_mean", "client_acc_std", "client_acc_p10", "client_acc_min")
# ``epsilon``: cumulative privacy loss at privacy.delta after the round (fedbench.fl.privacy);
# NaN under privacy=none and in run folders written before privacy existed, inf without noise.
# ``wire_bytes_*`` (float: NaN in rows of run folders written before wire sizes): each message as a
# safetensors file; ``zstd_bytes_*``: that file after zstd (NaN unless compression.entropy=zstd);
# ``stragglers``: clients past system.deadline_s; ``sim_round_s``/``sim_time_s``: the simulated
# clock (NaN under system=none); ``merge_rank``: exact LoRA's stacked rank (NaN otherwise).
WIRE_COLUMNS = ("wire_bytes_up", "wire_bytes_down", "cum_wire_bytes", "zstd_bytes_up", "zstd_bytes_down")
SYSTEM_COLUMNS = ("sim_round_s", "sim_time_s", "merge_rank")
# ``perplexity``: exp(test loss per predicted token) of next-token prediction (causal LMs); NaN for
# classification and in run folders written before causal LMs.
OPTIONAL_COLUMNS = frozenset((*CLIENT_COLUMNS, "epsilon", "perplexity", *WIRE_COLUMNS, *SYSTEM_COLUMNS))
# Columns that rows of older run folders lack, with the value that is true for those rows.
LEGACY_DEFAULTS = {"stragglers": 0}
INT_COLUMNS = {
    "round",
    "bytes_up",
    "bytes_down",
    "cum_bytes_up",
    "cum_bytes_down",
    "cum_bytes",
    "clients",
    "reported",
    "rejected",
    "stragglers",
    "trainable_params",
}
CLIENTS_PARQUET = "clients.parquet"
CLIENTS_CSV = "clients.csv"  # the histogram in run folders written before clients.parquet
CLIENT_METRICS_CSV = "client_metrics.csv"
CLIENT_METRICS_PARQUET = "client_metrics.parquet"
CLIENT_METRIC_COLUMNS = ["round", "client", "samples", "accuracy", "loss"]


def _file_mode() -> int:
    """The mode a plainly created file gets (0o666 less the umask); mkstemp's own is 0o600."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write via a temp file in the same folder and rename: readers never see half a file.
    The file gets the permissions of a plainly created one; an OSError names ``path``."""
    path = Path(path)
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as fh:
            os.fchmod(fh.fileno(), _file_mode())
            fh.write(data)
            fh.flush()
        os.replace(tmp, path)
    except BaseException as exc:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError) and exc.filename is None:
            exc.filename = str(path)
        raise


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode())


def _strings(values) -> pa.Array:
    """A pyarrow string array from buffers (pyarrow's list conversion would import pandas, ~0.3 s,
    which a CLI run does not otherwise need)."""
    import numpy as np
    import pyarrow as pa

    encoded = [str(v).encode() for v in values]
    offsets = np.zeros(len(encoded) + 1, dtype=np.int32)
    np.cumsum([len(b) for b in encoded], out=offsets[1:])
    return pa.Array.from_buffers(
        pa.string(), len(encoded), [None, pa.py_buffer(offsets), pa.py_buffer(b"".join(encoded))]
    )


def _numbers(values, integer: bool) -> pa.Array:
    """A pyarrow int64 or float64 array from a numpy buffer (no pandas import, as :func:`_strings`)."""
    import numpy as np
    import pyarrow as pa

    dtype, kind = (np.int64, pa.int64()) if integer else (np.float64, pa.float64())
    buf = np.ascontiguousarray(np.asarray(values, dtype=dtype))
    return pa.Array.from_buffers(kind, len(buf), [None, pa.py_buffer(buf)])


def _arrow_table(rows: list[dict]):
    """The rows as a pyarrow table with fixed column types, built from numpy buffers."""
    import pyarrow as pa

    arrays = []
    for c in COLUMNS:
        values = [r[c] for r in rows]
        arrays.append(_strings(values) if c == "selected" else _numbers(values, c in INT_COLUMNS))
    return pa.Table.from_arrays(arrays, names=COLUMNS)


def _write_table_atomic(table, path: Path) -> None:
    """A pyarrow table to ``path`` as parquet, via a temporary sibling renamed into place."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    sink = pa.BufferOutputStream()  # in memory, so that a full disk is a plain OSError
    pq.write_table(table, sink)
    atomic_write_bytes(path, sink.getvalue().to_pybytes())


def write_parquet_atomic(rows: list[dict], path: Path) -> None:
    """``metrics.parquet`` from metrics rows (pyarrow, fixed column types; no pandas needed)."""
    _write_table_atomic(_arrow_table(rows), path)


def read_parquet_rows(path: Path) -> list[dict]:
    """The rows of a run's ``metrics.parquet`` as dicts (no pandas needed)."""
    import pyarrow.parquet as pq

    return pq.read_table(path).to_pylist()


def frame(rows: list[dict]) -> pd.DataFrame:
    """Metrics rows as a DataFrame with the contract's columns."""
    import pandas as pd

    df = pd.DataFrame(rows, columns=COLUMNS)
    # the types metrics.parquet has (wire sizes are float64 there: NaN in older folders' rows)
    floats = [c for c in COLUMNS if c not in INT_COLUMNS and c != "selected"]
    return df.astype(dict.fromkeys(floats, "float64")) if rows else df


class MetricsWriter:
    """Accumulates rows, keeps running byte totals, and appends each row to ``metrics.csv``."""

    def __init__(self, out_dir: Path | None, rows: list[dict] | None = None, rewrite: bool = False) -> None:
        """``rows``: rows already done (a resumed run); ``rewrite`` replaces metrics.csv by them."""
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.rows: list[dict] = list(rows or [])
        if self.out_dir is not None:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            if rewrite:
                buf = io.StringIO()
                writer = csv.DictWriter(buf, fieldnames=COLUMNS)
                writer.writeheader()
                for row in self.rows:
                    writer.writerow(_csv_row(row))
                atomic_write_bytes(self.csv_path, buf.getvalue().encode())

    @property
    def csv_path(self) -> Path | None:
        return None if self.out_dir is None else self.out_dir / METRICS_CSV

    def append(self, row: dict) -> dict:
        prev = (
            self.rows[-1]
            if self.rows
            else {
                "cum_bytes_up": 0,
                "cum_bytes_down": 0,
                "elapsed_s": 0.0,
                "cum_wire_bytes": 0.0,
                "sim_time_s": 0.0,
            }
        )
        row = dict(row)
        row["cum_bytes_up"] = prev["cum_bytes_up"] + row["bytes_up"]
        row["cum_bytes_down"] = prev["cum_bytes_down"] + row["bytes_down"]
        row["cum_bytes"] = row["cum_bytes_up"] + row["cum_bytes_down"]
        row["elapsed_s"] = prev["elapsed_s"] + row["wall_s"]
        if "wire_bytes_up" in row:
            row["cum_wire_bytes"] = _plus(
                prev["cum_wire_bytes"], row["wire_bytes_up"] + row["wire_bytes_down"]
            )
        if "sim_round_s" in row:
            row["sim_time_s"] = _plus(prev["sim_time_s"], row["sim_round_s"])
        row = {k: row[k] if k in row or k not in OPTIONAL_COLUMNS else math.nan for k in COLUMNS}
        self.rows.append(row)
        if self.out_dir is not None:
            new = not self.csv_path.exists()
            with open(self.csv_path, "a", newline="") as fh:
                writer = csv.DictWriter(fh, fieldnames=COLUMNS)
                if new:
                    writer.writeheader()
                writer.writerow(_csv_row(row))
                fh.flush()

        return row

    def frame(self) -> pd.DataFrame:
        return frame(self.rows)

    def finish(self, summary: dict) -> list[dict]:
        """Write ``metrics.parquet`` and ``summary.json`` (atomically); return the rows."""
        if self.out_dir is not None:
            write_parquet_atomic(self.rows, self.out_dir / METRICS_PARQUET)
            atomic_write_json(self.out_dir / SUMMARY_JSON, summary)
        return self.rows


def _plus(a: float, b: float) -> float:
    """a + b, or the one ``math.nan`` when either is NaN (so rows compare equal as dicts)."""
    return math.nan if a != a or b != b else a + b


def _csv_row(row: dict) -> dict:
    # repr() round-trips floats exactly, so a resumed run reads back the same values
    return {k: (repr(v) if isinstance(v, float) else v) for k, v in row.items()}


def participants(rows: list[dict]) -> list[int]:
    """The clients selected in any of ``rows`` (each row's ``selected``), sorted."""
    return sorted({int(c) for r in rows for c in str(r["selected"]).split()})


def write_label_histogram(data, out_dir: Path, clients=None) -> None:
    """``clients.parquet``: size and samples per label (causal LMs: windows and predicted
    tokens) of clients ``clients`` (default: every client) and of the test set (or the
    validation set that replaces it), one row each; ``client`` is the id as text, or
    ``test``/``validation``. Data made on demand (``data.on_demand``) is written with the
    clients that took part so far: its size grows with participation, not population."""
    import numpy as np
    import pyarrow as pa
    import torch

    ids = range(len(data.clients)) if clients is None else clients
    held = getattr(data, "evaluated_on", "test")  # "validation" when tuning replaced the test set
    columns = {"client": _strings([*map(str, ids), held])}
    if data.test[1].dim() > 1:  # next-token targets: windows and predicted tokens per client
        ys = [data.clients[i][1] for i in ids] + [data.test[1]]
        columns["size"] = _numbers([len(y) for y in ys], True)
        columns["tokens"] = _numbers([int((y != -100).sum()) for y in ys], True)
        roles = getattr(data, "client_names", None)
        if roles:  # the test set's row has no role
            columns["name"] = _strings([roles[i] for i in ids] + [""])
    else:
        n = int(data.num_classes)
        ys = [data.client_labels(i) for i in ids] + [data.test[1]]
        counts = np.stack([torch.bincount(y.reshape(-1).long(), minlength=n).numpy() for y in ys])
        columns["size"] = _numbers([len(y) for y in ys], True)
        columns.update({f"label_{c}": _numbers(counts[:, c], True) for c in range(n)})
    table = pa.Table.from_arrays(list(columns.values()), names=list(columns))
    _write_table_atomic(table, Path(out_dir) / CLIENTS_PARQUET)


def label_histogram_path(path) -> Path:
    """The label histogram of a run folder (``clients.parquet``, or the ``clients.csv`` of run
    folders written before it); a file path is returned as is."""
    path = Path(path)
    if path.is_dir():
        return path / CLIENTS_PARQUET if (path / CLIENTS_PARQUET).is_file() else path / CLIENTS_CSV
    return path


def read_label_histogram(path):
    """A run folder's (or a file's) label histogram as a DataFrame (:func:`label_histogram_path`)."""
    import pandas as pd

    path = label_histogram_path(path)
    if path.suffix == ".csv":
        return pd.read_csv(path, dtype={"client": str})
    return pd.read_parquet(path)


def _json_number(v: float) -> float | None:
    """A float for summary.json: null where it is NaN (JSON has no NaN)."""
    return None if v != v else v


def summarize(rows: list[dict]) -> dict:
    """The metric part of ``summary.json``."""
    if not rows:
        return {
            "rounds_completed": 0,
            "final_accuracy": None,
            "best_accuracy": None,
            "best_round": None,
            "bytes_up_total": 0,
            "bytes_down_total": 0,
            "bytes_total": 0,
        }
    last = rows[-1]
    evaluated = [r for r in rows if r["accuracy"] == r["accuracy"]]  # not NaN (fl.eval_every)
    best = max(evaluated, key=lambda r: r["accuracy"]) if evaluated else None
    final = evaluated[-1] if evaluated else None
    out = {
        "rounds_completed": last["round"],
        "final_accuracy": final["accuracy"] if final else None,
        "final_round": final["round"] if final else None,
        "best_accuracy": best["accuracy"] if best else None,
        "best_round": best["round"] if best else None,
        "bytes_up_total": last["cum_bytes_up"],
        "bytes_down_total": last["cum_bytes_down"],
        "bytes_total": last["cum_bytes"],
        "wire_bytes_total": _json_number(last.get("cum_wire_bytes", math.nan)),
        "sim_time_s": _json_number(last.get("sim_time_s", math.nan)),
    }
    with_clients = [
        r for r in evaluated if r.get("client_acc_mean", float("nan")) == r.get("client_acc_mean")
    ]
    if final is not None and final.get("perplexity", math.nan) == final.get("perplexity"):
        out["final_perplexity"] = _json_number(final["perplexity"])  # causal LMs (inf: null)
        if out["final_perplexity"] == math.inf:
            out["final_perplexity"] = None
    if with_clients:
        out["final_client_acc_mean"] = with_clients[-1]["client_acc_mean"]
        out["final_client_acc_p10"] = with_clients[-1]["client_acc_p10"]
        out["final_client_acc_min"] = with_clients[-1]["client_acc_min"]
    return out


class ClientMetricsWriter:
    """Per-client evaluation rows: appended to ``client_metrics.csv`` as they come (so a killed
    run keeps them), ``client_metrics.parquet`` at the end. Writes nothing if there are none."""

    def __init__(self, out_dir: Path | None, resume_round: int | None = None) -> None:
        """``resume_round``: a resumed run keeps the rows up to that round and drops the rest."""
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.rows: list[dict] = []
        if self.out_dir is None:
            return
        if resume_round is None:
            for name in (CLIENT_METRICS_CSV, CLIENT_METRICS_PARQUET):
                (self.out_dir / name).unlink(missing_ok=True)
            return
        path = self.out_dir / CLIENT_METRICS_CSV
        if path.is_file():
            with open(path, newline="") as fh:
                for raw in csv.DictReader(fh):
                    row = {k: (float(raw[k]) if k in ("accuracy", "loss") else int(raw[k])) for k in raw}
                    if row["round"] <= resume_round:
                        self.rows.append(row)
            self._rewrite()

    def _rewrite(self) -> None:
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=CLIENT_METRIC_COLUMNS)
        writer.writeheader()
        for row in self.rows:
            writer.writerow(_csv_row(row))
        atomic_write_bytes(self.out_dir / CLIENT_METRICS_CSV, buf.getvalue().encode())

    def append(self, rows: list[dict]) -> None:
        if not rows:
            return
        self.rows.extend(rows)
        if self.out_dir is None:
            return
        path = self.out_dir / CLIENT_METRICS_CSV
        new = not path.exists()
        with open(path, "a", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=CLIENT_METRIC_COLUMNS)
            if new:
                writer.writeheader()
            for row in rows:
                writer.writerow(_csv_row(row))
            fh.flush()

    def finish(self) -> None:
        if self.out_dir is None or not self.rows:
            return
        import numpy as np
        import pyarrow as pa

        columns = {
            c: np.asarray(
                [r[c] for r in self.rows], dtype=np.float64 if c in ("accuracy", "loss") else np.int64
            )
            for c in CLIENT_METRIC_COLUMNS
        }
        _write_table_atomic(pa.table(columns), self.out_dir / CLIENT_METRICS_PARQUET)
