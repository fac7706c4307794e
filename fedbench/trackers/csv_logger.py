"""``logger=csv``: the run folder's own files, which every run writes whatever is selected."""

from __future__ import annotations

from dataclasses import dataclass

from fedbench.contracts import Tracker
from fedbench.registry import register


@register("logger", "csv")
@dataclass
class CSVLogger(Tracker):
    """metrics.csv (a row per round, appended and flushed), metrics.parquet and summary.json
    (fedbench.results). Always on: selecting it only says so, and ``logger=[tensorboard]``
    still writes them. Nothing to set."""
