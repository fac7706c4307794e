"""Progress display for long work: a rounds bar (and a clients bar for slow rounds) for one
run, and "job N/M done" lines for sweeps.

Why this shape: a run on a terminal should show where it is; output that a program or a file
reads (CI, launchers, ``| tee``) keeps the plain per-round log lines, so the bar is drawn only
when :func:`progress_enabled` says the stream is an interactive terminal. The log lines still
flow while a bar is up: :class:`RunProgress`, used as a context manager, routes console
logging through ``tqdm`` so each line lands above the bar instead of in the middle of it.

One run (what ``fedbench/__main__.py`` wires)::

    enabled = progress_enabled(quiet)           # quiet: the `quiet` key, hydra.verbose, ...
    with RunProgress(spec.fl.num_rounds, spec.fl.clients_per_round, enabled) as progress:
        rows = execute(spec, out_dir, on_round=lambda row, s: (log_round(row, s), progress.round_done(row)),
                       on_client=progress.client_callback)

- ``round_done(row)`` after each round: advances the bar to ``row["round"]``; the postfix shows
  ``acc`` (``row["accuracy"]``) and the MB communicated so far (``row["cum_bytes"]``, decimal MB).
- ``client_done(round_no, done, total)`` as clients finish (``done=0`` when a round's training
  starts marks the round's start). The clients bar appears only once a round has run longer
  than ``client_bar_after_s`` (3 s), so fast rounds never flicker one; it is cleared when the
  round ends. ``client_callback`` is ``client_done``, or ``None`` when disabled, so an engine
  can skip the call altogether.
- ``close()`` (or leaving the ``with``) closes the bars and puts logging back as it was. The
  rounds bar stays on screen if any round finished, else it is cleared (e.g. a run folder that
  was already complete).

Disabled, every method returns at once: tqdm is not even imported.

Sweeps: :class:`JobProgress` is a Hydra callback, registered in the config::

    hydra:
      callbacks:
        progress:
          _target_: fedbench.progress.JobProgress
          quiet: ${oc.select:quiet,false}

It prints ``fedbench: job N/M done (#num overrides: completed)`` (or ``job N/M failed (#num
overrides: ValueError: ...)``) to stderr after each job, and a summary at the end. Hydra calls
``on_job_end`` wherever the job runs (``hydra.core.utils.run_job``): in the launching process
for the basic launcher; in a loky worker process for joblib (whose stderr is the terminal's);
on the compute node for submitit, where the line goes to that job's ``.submitit/<id>/*.err``
log, not to the launching terminal (Hydra's submitit launcher waits for all jobs silently;
the end-of-sweep summary is printed locally). N stays right across processes because each job
appends a line to a small ledger file in the sweep folder (``.fedbench_jobs``, removed when the
sweep ends; on NFS, appends from several nodes at once may rarely be lost). M is known for
Hydra's basic sweeper (the product of the sweep overrides and ``hydra.sweeper.params``) and
Optuna's ``n_trials``; otherwise the lines say ``job N done``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, TextIO

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

CLIENT_BAR_AFTER_S = 3.0


def progress_enabled(quiet: bool, stream: TextIO | None = None, env: dict | None = None) -> bool:
    """Draw bars only on an interactive terminal: not when ``quiet``, not under CI (``CI`` set to
    anything but ``""``/``0``/``false``), not with ``TERM=dumb``, not when ``stream`` (default
    ``sys.stderr``) is a pipe or file. Launchers that run jobs side by side in other processes
    share one terminal; the caller passes ``quiet=True`` for those."""
    env = os.environ if env is None else env
    if quiet or env.get("TERM") == "dumb":
        return False
    if env.get("CI", "").strip().lower() not in ("", "0", "false", "no"):
        return False
    stream = sys.stderr if stream is None else stream
    try:
        return bool(stream is not None and stream.isatty())
    except (AttributeError, ValueError, OSError):  # no isatty, or a closed stream
        return False


class _AboveBars:
    """A stream proxy for a logging handler: each write clears the bars drawn on the same
    terminal, writes, and redraws them (``tqdm.external_write_mode``)."""

    def __init__(self, stream: TextIO, tqdm_class: Any) -> None:
        self.stream = stream
        self._tqdm = tqdm_class

    def write(self, s: str) -> int:
        with self._tqdm.external_write_mode(file=self.stream):
            return self.stream.write(s)

    def flush(self) -> None:
        self.stream.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.stream, name)


def _console_handlers(
    loggers: Iterable[logging.Logger] | None, streams: tuple
) -> Iterator[logging.StreamHandler]:
    if loggers is None:  # every configured logger: Hydra puts its console handler on root
        manager = logging.Logger.manager
        loggers = [
            logging.root,
            *(lg for lg in manager.loggerDict.values() if isinstance(lg, logging.Logger)),
        ]
    seen = set()
    for logger in loggers:
        for h in logger.handlers:
            if (
                isinstance(h, logging.StreamHandler)
                and not isinstance(h, logging.FileHandler)
                and any(h.stream is s for s in streams)
                and id(h) not in seen
            ):
                seen.add(id(h))
                yield h


@contextlib.contextmanager
def progress_logging(
    loggers: Iterable[logging.Logger] | None = None, stream: TextIO | None = None
) -> Iterator[None]:
    """While active, console log handlers (those writing to stdout, stderr or ``stream``) write
    above the tqdm bars instead of through them. The handlers themselves (level, formatter,
    filters) stay as they are, and only their stream is swapped, so nothing else notices; file
    handlers are untouched. ``loggers``: default every configured logger."""
    from tqdm import tqdm

    streams = tuple(
        s for s in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__, stream) if s is not None
    )
    swapped = []
    try:
        for h in _console_handlers(loggers, streams):
            original = h.setStream(_AboveBars(h.stream, tqdm))
            swapped.append((h, original))
        yield
    finally:
        for h, original in reversed(swapped):
            h.setStream(original)


class RunProgress:
    """Rounds bar for one run, with a clients bar inside slow rounds; see the module docstring."""

    def __init__(
        self,
        total_rounds: int,
        clients_per_round: int,
        enabled: bool,
        stream: TextIO | None = None,
        *,
        client_bar_after_s: float = CLIENT_BAR_AFTER_S,
        clock: Callable[[], float] = time.monotonic,
        loggers: Iterable[logging.Logger] | None = None,
    ) -> None:
        self.enabled = bool(enabled)
        self._rounds = self._clients = None
        self._logging: contextlib.ExitStack | None = None
        if not self.enabled:
            return
        from tqdm import tqdm

        self._tqdm = tqdm
        self._stream = sys.stderr if stream is None else stream
        self._clients_per_round = clients_per_round
        self._after = client_bar_after_s
        self._clock = clock
        self._loggers = loggers
        self._round_no = 0  # the round the clients bar is timing
        self._round_started = clock()
        # mininterval=0: every round redraws (rounds are seconds apart, not microseconds)
        self._rounds = tqdm(
            total=total_rounds,
            desc="rounds",
            unit="round",
            file=self._stream,
            dynamic_ncols=True,
            mininterval=0,
            miniters=1,
            leave=True,
        )

    @property
    def client_callback(self) -> Callable[[int, int, int], None] | None:
        """``client_done`` for an engine's ``on_client`` hook, ``None`` when disabled."""
        return self.client_done if self.enabled else None

    def __enter__(self) -> RunProgress:
        if self.enabled and self._logging is None:
            self._logging = contextlib.ExitStack()
            self._logging.enter_context(progress_logging(self._loggers, self._stream))
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def round_done(self, row: dict) -> None:
        bar = self._rounds
        if bar is None:
            return
        self._end_clients()
        r = int(row["round"])
        if bar.n == 0 and r > 1:  # a resumed run: start the bar where the run is, without
            bar.n = bar.last_print_n = bar.initial = r - 1  # counting the old rounds in the rate
        mb = row.get("cum_bytes", 0) / 1e6
        mb_text = f"{mb:.2f}" if mb >= 1 else f"{mb:.3f}"  # 0.041 MB, not 0.04
        bar.set_postfix_str(f"acc {row['accuracy']:.4f}, {mb_text} MB", refresh=False)
        if r > bar.n:
            bar.update(r - bar.n)
        else:
            bar.refresh()
        self._round_no = r
        self._round_started = self._clock()

    def client_done(self, round_no: int, done: int, total: int | None = None) -> None:
        if self._rounds is None:
            return
        if round_no != self._round_no:  # a new round: done == 0 marks its start
            self._end_clients()
            self._round_no = round_no
            if done == 0:
                self._round_started = self._clock()
        total = total or self._clients_per_round
        if self._clients is None:
            if self._clock() - self._round_started < self._after:
                return
            self._clients = self._tqdm(
                total=total,
                initial=done,
                desc=f"round {round_no} clients",
                unit="client",
                file=self._stream,
                dynamic_ncols=True,
                leave=False,
            )
        elif done > self._clients.n:
            self._clients.update(done - self._clients.n)

    def _end_clients(self) -> None:
        if self._clients is not None:
            self._clients.close()  # leave=False: its line is cleared
            self._clients = None

    def close(self) -> None:
        """Close the bars (idempotent) and put console logging back as it was."""
        self._end_clients()
        if self._rounds is not None:
            self._rounds.leave = self._rounds.n > 0
            self._rounds.close()
            self._rounds = None
        if self._logging is not None:
            self._logging.close()
            self._logging = None


# -- sweeps -----------------------------------------------------------------------------------

_BASIC_SWEEPER = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"


def sweep_jobs(config: DictConfig) -> tuple[int | None, list[str]]:
    """(number of jobs or ``None`` if unknown, swept keys) of a multirun's composed config,
    computed as Hydra's basic sweeper does (``hydra.sweeper.params``, then the command line)."""
    target = str(OmegaConf.select(config, "hydra.sweeper._target_", default="") or "")
    if target != _BASIC_SWEEPER:
        trials = OmegaConf.select(config, "hydra.sweeper.n_trials", default=None)  # Optuna
        return (trials if isinstance(trials, int) and trials > 0 else None), []
    try:
        from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
        from hydra.core.global_hydra import GlobalHydra
        from hydra.core.override_parser.overrides_parser import OverridesParser

        params = OmegaConf.select(config, "hydra.sweeper.params", default=None) or {}
        args = [f"{k}={v}" for k, v in params.items()]
        args += list(OmegaConf.select(config, "hydra.overrides.task", default=None) or [])
        gh = GlobalHydra.instance()  # glob(...) sweeps need the config loader to list options
        parser = OverridesParser.create(config_loader=gh.config_loader() if gh.is_initialized() else None)
        overrides = parser.parse_overrides(args)
        jobs = BasicSweeper.split_arguments(overrides, None)[0]
        swept = list(dict.fromkeys(o.get_key_element() for o in overrides if o.is_sweep_override()))
        return len(jobs), swept
    except Exception:  # a progress line is not worth failing or slowing a sweep for
        return None, []


class JobProgress(Callback):
    """Hydra callback: "job N/M done" lines for multirun sweeps; see the module docstring.

    State set in ``on_multirun_start`` travels with the callback to joblib and submitit
    workers (Hydra pickles it with the launcher), and the job count is kept in a ledger file
    in the sweep folder, so N is right whichever process runs ``on_job_end``."""

    LEDGER = ".fedbench_jobs"

    def __init__(self, quiet: bool = False, stream: TextIO | None = None) -> None:
        self.quiet = bool(quiet)
        self.stream = stream  # None: sys.stderr when writing (a stream does not pickle)
        self.total: int | None = None
        self.swept: list[str] = []
        self.sweep_dir: str | None = None
        self.ledger: str | None = None
        self._in_sweep = False
        self._done: set = set()  # fallback count when the ledger cannot be written
        self._failed: set = set()

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        if self.quiet:
            return
        self._in_sweep = True
        self.total, self.swept = sweep_jobs(config)
        self.sweep_dir = str(OmegaConf.select(config, "hydra.sweep.dir"))
        try:
            path = Path(self.sweep_dir)
            path.mkdir(parents=True, exist_ok=True)
            (path / self.LEDGER).write_text("")
            self.ledger = str(path / self.LEDGER)
        except OSError:
            self.ledger = None
        jobs = f"{self.total} jobs" if self.total is not None else "jobs"
        self._say(f"sweep of {jobs} -> {self.sweep_dir}")

    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        if self.quiet or not self._in_sweep:  # a single run: RunProgress shows it
            return
        num = OmegaConf.select(config, "hydra.job.num", default=None)
        status = str(getattr(job_return.status, "name", job_return.status)).lower()
        n, failed = self._record(num, status)
        what = [f"#{num}"] + [o for o in (job_return.overrides or []) if o.split("=", 1)[0] in self.swept]
        detail = status
        if status == "failed":
            err = getattr(job_return, "_return_value", None)  # .return_value would re-raise it
            first = str(err).splitlines()[0] if str(err) else ""
            detail = type(err).__name__ + (f": {first}" if first else "")
        of = f"/{self.total}" if self.total is not None else ""
        tail = f"; {failed} failed so far" if failed else ""
        verb = "failed" if status == "failed" else "done"
        self._say(f"job {n}{of} {verb} ({' '.join(what)}: {detail}){tail}")

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if self.quiet or not self._in_sweep:
            return
        done, failed = self._counts()
        of = f"/{self.total}" if self.total is not None else ""
        tail = f", {len(failed)} failed" if failed else ""
        self._say(f"sweep done: {len(done)}{of} jobs{tail} -> {self.sweep_dir}")
        if self.ledger is not None:
            with contextlib.suppress(OSError):
                os.unlink(self.ledger)
        self._in_sweep = False

    # -- the ledger: one line "NUM PID STATUS" per finished job, appended atomically ------------
    def _record(self, num: Any, status: str) -> tuple[int, int]:
        """(jobs done including this one, of them failed), counted up to this job's own line,
        so two jobs that finish together still print different N."""
        line = f"{num} {os.getpid()} {status}"
        if self.ledger is not None:
            try:
                fd = os.open(self.ledger, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
                try:
                    os.write(fd, (line + "\n").encode())  # one write with O_APPEND: not interleaved
                finally:
                    os.close(fd)
                lines = Path(self.ledger).read_text().splitlines()
                mine = len(lines) - 1 - lines[::-1].index(line)
                done, failed = self._tally(lines[: mine + 1])
                return len(done), len(failed)
            except (OSError, ValueError):
                pass
        self._done.add(num)
        if status == "failed":
            self._failed.add(num)
        else:
            self._failed.discard(num)
        return len(self._done), len(self._failed)

    @staticmethod
    def _tally(lines: list[str]) -> tuple[set, set]:
        done, failed = set(), set()
        for ln in lines:  # a job run twice (e.g. requeued) counts once, by its last status
            parts = ln.split()
            if len(parts) == 3:
                done.add(parts[0])
                if parts[2] == "failed":
                    failed.add(parts[0])
                else:
                    failed.discard(parts[0])
        return done, failed

    def _counts(self) -> tuple[set, set]:
        if self.ledger is not None:
            with contextlib.suppress(OSError):
                return self._tally(Path(self.ledger).read_text().splitlines())
        return set(self._done), set(self._failed)

    def _say(self, msg: str) -> None:
        stream = self.stream if self.stream is not None else sys.stderr
        with contextlib.suppress(OSError, ValueError):  # a closed pipe must not fail the sweep
            stream.write(f"fedbench: {msg}\n")
            stream.flush()
