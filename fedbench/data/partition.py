"""Split a pooled labelled dataset over clients: ``iid``, ``dirichlet`` (label skew) or ``shards``.

Every partitioner returns one sorted index array per client; together they hold every index
exactly once (nothing dropped, nothing duplicated). The result depends only on the labels, the
parameters and ``seed`` (a private ``numpy.random.Generator``; no global RNG is touched).

- ``iid``: a random permutation cut into ``num_clients`` nearly equal parts (sizes differ by <= 1).
- ``dirichlet``: for every class, client proportions drawn from Dirichlet(alpha * 1); small
  ``alpha`` = strong label skew (0.1: most clients see one or two classes), large ``alpha`` ->
  iid. Redrawn (up to 100 times) until every client holds at least ``min_size`` samples; if no
  draw does, samples move one at a time from the largest client to the smallest until it does.
- ``shards``: every client holds exactly ``shards_per_client`` distinct classes. Classes are
  dealt round-robin over a random class order (client i gets classes ``order[(i*k + j) % C]``,
  j < k), so every class goes to ``num_clients * k / C`` clients (+-1), and each class's samples
  are split evenly among the clients that hold it.

``min_size`` is guaranteed by all three (an error says when it cannot be met).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from fedbench.errors import ConfigError

PARTITIONS = ("iid", "dirichlet", "shards")
MAX_REDRAWS = 100


def check_params(
    partition: str,
    alpha: float,
    shards_per_client: int,
    min_size: int,
    num_classes: int | None = None,
    num_clients: int | None = None,
    num_samples: int | None = None,
    prefix: str = "data",
) -> None:
    """Refuse partition parameters that cannot work, with one ConfigError line."""
    if partition not in PARTITIONS:
        raise ConfigError(f"{prefix}.partition", f"must be one of: {', '.join(PARTITIONS)}", partition)
    if not alpha > 0:
        raise ConfigError(f"{prefix}.alpha", "must be a float > 0", alpha)
    if shards_per_client < 1:
        raise ConfigError(f"{prefix}.shards_per_client", "must be an integer >= 1", shards_per_client)
    if min_size < 1:
        raise ConfigError(f"{prefix}.min_size", "must be an integer >= 1", min_size)
    if partition == "shards" and num_classes is not None:
        if shards_per_client > num_classes:
            raise ConfigError(
                f"{prefix}.shards_per_client",
                f"must be <= the number of classes ({num_classes})",
                shards_per_client,
            )
        if num_clients is not None and num_clients * shards_per_client < num_classes:
            raise ConfigError(
                f"{prefix}.shards_per_client",
                f"too few for fl.num_clients={num_clients}: every one of the {num_classes} "
                f"classes must go to some client (need num_clients * shards_per_client >= "
                f"{num_classes})",
                shards_per_client,
            )
    if num_clients is not None and num_samples is not None and min_size * num_clients > num_samples:
        raise ConfigError(
            f"{prefix}.min_size",
            f"times fl.num_clients ({num_clients}) exceeds the {num_samples} training samples",
            min_size,
        )


def partition(
    labels: Sequence[int] | np.ndarray,
    num_clients: int,
    method: str = "iid",
    *,
    alpha: float = 0.5,
    shards_per_client: int = 2,
    min_size: int = 1,
    seed: int = 0,
    num_classes: int | None = None,
) -> list[np.ndarray]:
    """Indices of each client's samples (sorted int64 arrays), see the module docstring."""
    y = np.asarray(labels, dtype=np.int64).reshape(-1)
    classes = num_classes if num_classes is not None else (int(y.max()) + 1 if len(y) else 0)
    check_params(method, alpha, shards_per_client, min_size, classes, num_clients, len(y))
    rng = np.random.default_rng(seed)
    if method == "iid":
        parts = np.array_split(rng.permutation(len(y)), num_clients)
    elif method == "dirichlet":
        parts = _dirichlet(y, num_clients, alpha, min_size, rng)
    else:
        parts = _shards(y, num_clients, shards_per_client, classes, rng)
    parts = [np.sort(np.asarray(p, dtype=np.int64)) for p in parts]
    small = min(len(p) for p in parts)
    if small < min_size:
        raise ConfigError(
            "data.min_size",
            f"cannot be met by partition={method} here (the smallest client gets {small} samples)",
            min_size,
        )
    return parts


def _dirichlet(y: np.ndarray, k: int, alpha: float, min_size: int, rng: np.random.Generator) -> list:
    by_class = [np.flatnonzero(y == c) for c in np.unique(y)]
    parts: list[list[int]] = []
    for _ in range(MAX_REDRAWS):
        parts = [[] for _ in range(k)]
        for idx in by_class:
            if not len(idx):
                continue
            idx = rng.permutation(idx)
            p = rng.dirichlet(np.full(k, alpha))
            cuts = (np.cumsum(p)[:-1] * len(idx)).astype(np.int64)
            for client, chunk in enumerate(np.split(idx, cuts)):
                parts[client].extend(chunk.tolist())
        if min(len(p) for p in parts) >= min_size:
            return parts
    # No draw met min_size: top the smallest clients up from the largest, one random sample at a time.
    while True:
        sizes = [len(p) for p in parts]
        lo, hi = int(np.argmin(sizes)), int(np.argmax(sizes))
        if sizes[lo] >= min_size:
            return parts
        j = int(rng.integers(len(parts[hi])))
        parts[lo].append(parts[hi].pop(j))


def _shards(y: np.ndarray, k: int, per_client: int, num_classes: int, rng: np.random.Generator) -> list:
    order = rng.permutation(num_classes)
    holders: list[list[int]] = [[] for _ in range(num_classes)]
    for client in range(k):
        for j in range(per_client):
            holders[int(order[(client * per_client + j) % num_classes])].append(client)
    parts: list[list[int]] = [[] for _ in range(k)]
    for c in range(num_classes):
        idx = rng.permutation(np.flatnonzero(y == c))
        for client, chunk in zip(holders[c], np.array_split(idx, len(holders[c]))):
            parts[client].extend(chunk.tolist())
    return parts


def describe(method: str, alpha: float, shards_per_client: int, min_size: int) -> str:
    """The ``FederatedData.partition`` string."""
    if method == "dirichlet":
        return f"dirichlet(alpha={alpha:g}, min_size={min_size})"
    if method == "shards":
        return f"shards({shards_per_client} classes per client, min_size={min_size})"
    return f"iid(min_size={min_size})"


# -- label histograms -------------------------------------------------------------------------
def label_histogram(data) -> pandas.DataFrame:  # noqa: F821
    """Samples per label of every client (rows ``0..K-1``) and of the test set (row ``test``).

    Columns ``client, size, label_0 .. label_{C-1}``: the layout of the run folder's
    ``clients.parquet``, so :func:`plot_label_histogram` reads either.
    """
    import pandas as pd
    import torch

    n = int(data.num_classes)
    rows = []
    sets = [(str(i), y) for i, (_, y) in enumerate(data.clients)] + [("test", data.test[1])]
    for name, y in sets:
        counts = torch.bincount(torch.as_tensor(y).reshape(-1).long(), minlength=n).tolist()
        rows.append({"client": name, "size": int(len(y)), **{f"label_{i}": c for i, c in enumerate(counts)}})
    return pd.DataFrame(rows)


def plot_label_histogram(csv_or_df, out_png, title: str | None = None, class_names=None):
    """A stacked bar per client (samples per label) from a run's ``clients.parquet`` (or an older
    run's ``clients.csv``) or a :func:`label_histogram` table, saved to ``out_png``; the test
    set's row, if any, is left out. Returns the path."""
    from pathlib import Path

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    from fedbench.results import read_label_histogram

    df = csv_or_df if isinstance(csv_or_df, pd.DataFrame) else read_label_histogram(csv_or_df)
    df = df[df["client"].astype(str) != "test"]
    labels = [c for c in df.columns if c.startswith("label_")]
    names = list(class_names) if class_names is not None else [c.removeprefix("label_") for c in labels]
    fig, ax = plt.subplots(figsize=(max(5.0, 0.45 * len(df) + 2), 3.6))
    bottom = np.zeros(len(df))
    cmap = plt.get_cmap("tab20" if len(labels) > 10 else "tab10")
    xs = np.arange(len(df))
    for i, col in enumerate(labels):
        vals = df[col].to_numpy(dtype=float)
        ax.bar(xs, vals, bottom=bottom, color=cmap(i % cmap.N), label=str(names[i]), width=0.8)
        bottom += vals
    ax.set_xticks(xs, df["client"].astype(str).tolist())
    ax.set_xlabel("client")
    ax.set_ylabel("samples")
    if title:
        ax.set_title(title)
    ax.legend(title="label", bbox_to_anchor=(1.01, 1), loc="upper left", fontsize="small")
    fig.tight_layout()
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out
