"""``logger=tensorboard``: TensorBoard event files in the run folder.

Every round, each numeric column of the row (the names of metrics.parquet: ``accuracy``,
``test_loss``, ``bytes_up``, ``cum_bytes``, ...) is a scalar at step = round; NaN (a value the
round did not measure) is left out. The resolved config is written once as text (``config``,
YAML) and as hparams (the flattened config, with ``accuracy`` as the metric), so TensorBoard's
HParams tab compares the runs of a sweep: ``tensorboard --logdir <sweep folder>``.

Resume: the continued run opens its writer with ``purge_step`` = the first recomputed round, so
TensorBoard drops whatever the killed process had logged from that round on and each round
appears once; the config is not written twice. A fresh start in a folder (``resume=false``)
removes the folder's old event files first.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from fedbench.contracts import Tracker
from fedbench.errors import ConfigError, MissingPackage
from fedbench.registry import register
from fedbench.trackers import TrackedRun, flatten_config, metric_values

EVENTS_GLOB = "events.out.tfevents.*"


@register("logger", "tensorboard")
@dataclass
class TensorBoardLogger(Tracker):
    """Scalars per round, the config as text and hparams, in ``<run folder>/<subdir>/``."""

    subdir: str = "tensorboard"  # the event files' folder inside the run folder

    def __post_init__(self) -> None:
        if not self.subdir or Path(self.subdir).is_absolute() or ".." in Path(self.subdir).parts:
            raise ConfigError(
                "logger.tensorboard.subdir", "must be a relative folder inside the run folder", self.subdir
            )
        self._writer = None

    def check_compatible(self, components: dict, fl) -> None:
        import importlib.util

        if importlib.util.find_spec("tensorboard") is None:
            raise MissingPackage(
                "logger",
                "tensorboard needs the package tensorboard, which is not installed "
                "(pip install -c constraints.txt -e '.[track]')",
                "tensorboard",
            )

    def open(self, run: TrackedRun) -> None:
        if run.run_dir is None:
            raise RuntimeError("no run folder to write event files into (pass out_dir)")
        from torch.utils.tensorboard import SummaryWriter

        folder = Path(run.run_dir) / self.subdir
        existing = sorted(folder.glob(EVENTS_GLOB)) if folder.is_dir() else []
        continuing = run.resumed_from is not None and bool(existing)
        if not continuing:
            for f in existing:  # a run started over: its old events are not this run's
                f.unlink()
        folder.mkdir(parents=True, exist_ok=True)
        purge = run.resumed_from + 1 if continuing else None
        self._writer = SummaryWriter(log_dir=str(folder), purge_step=purge, flush_secs=30)
        if not continuing:
            self._write_config(run)
            for row in run.rows:  # resumed with a tracker it did not have before: the earlier rounds
                self._scalars(row)
        self._writer.flush()

    def _write_config(self, run: TrackedRun) -> None:
        import yaml
        from torch.utils.tensorboard.summary import hparams

        text = yaml.safe_dump(run.config, sort_keys=False)
        # markdown: a 4-space indent keeps the YAML a code block in TensorBoard's text tab
        self._writer.add_text("config", "\n".join("    " + line for line in text.splitlines()), 0)
        params = {
            k: v for k, v in flatten_config(run.config).items() if isinstance(v, (bool, int, float, str))
        }
        params["config_hash"] = run.config_hash
        for group, option in run.choices.items():
            params[f"choice.{group}"] = str(option)
        for summary in hparams(params, {"accuracy": 0.0}):
            self._writer.file_writer.add_summary(summary)

    def _scalars(self, row: dict) -> None:
        step = int(row["round"])
        for key, value in metric_values(row).items():
            self._writer.add_scalar(key, value, step)

    def log_row(self, row: dict) -> None:
        self._scalars(row)
        self._writer.flush()  # a killed run keeps its events, as metrics.csv keeps its rows

    def close(self, status: str, summary: dict) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
