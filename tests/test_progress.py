"""Progress display: the rounds/clients bars on a terminal, plain output elsewhere, logging that
lands above the bars, and the sweep callback's job counts (in-process, pickled, real multirun)."""

from __future__ import annotations

import io
import logging
import os
import pickle
import subprocess
import sys
import textwrap

import pytest
from conftest import ROOT
from hydra.core.utils import JobReturn, JobStatus
from omegaconf import OmegaConf

from fedbench.progress import JobProgress, RunProgress, progress_enabled, progress_logging, sweep_jobs


class FakeTTY(io.StringIO):
    def isatty(self) -> bool:
        return True


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def row(r: int, acc: float = 0.5, cum_bytes: float = 0.0) -> dict:
    return {
        "round": r,
        "accuracy": acc,
        "test_loss": 1.0,
        "train_loss": 1.0,
        "bytes_up": 1,
        "bytes_down": 1,
        "cum_bytes": cum_bytes,
        "wall_s": 0.1,
        "clients": 4,
    }


def last_segment_of_line_with(text: str, needle: str) -> str:
    """What a terminal shows on the line where ``needle`` was written: the text after the last
    carriage return of that line."""
    (line,) = [ln for ln in text.split("\n") if needle in ln]
    return line.split("\r")[-1]


@pytest.fixture
def logger():
    lg = logging.getLogger("fedbench.test_progress")
    saved = lg.handlers, lg.propagate, lg.level
    lg.handlers, lg.propagate = [], False
    lg.setLevel(logging.INFO)
    yield lg
    lg.handlers, lg.propagate, _ = saved
    lg.setLevel(saved[2])


# -- RunProgress ------------------------------------------------------------------------------


def test_disabled_writes_nothing_and_keeps_plain_log_lines(logger):
    stream = FakeTTY()
    handler = logging.StreamHandler(stream)
    logger.addHandler(handler)
    with RunProgress(3, 4, enabled=False, stream=stream, loggers=[logger]) as p:
        assert p.client_callback is None  # the engine can skip per-client calls entirely
        p.client_done(1, 0, 4)
        p.client_done(1, 4, 4)
        p.round_done(row(1, cum_bytes=5e6))
        logger.info("round 1 line")
        assert handler.stream is stream
    p.close()
    assert stream.getvalue() == "round 1 line\n"


def test_rounds_bar_shows_round_count_accuracy_and_decimal_mb():
    stream = FakeTTY()
    with RunProgress(5, 4, enabled=True, stream=stream, loggers=[]) as p:
        assert p.client_callback == p.client_done
        p.round_done(row(1, acc=0.25, cum_bytes=1_250_000))
        after_one = stream.getvalue()
        p.round_done(row(2, acc=0.8125, cum_bytes=2_500_000))  # decimal: 2.5e6 B = 2.50 MB
        shown = stream.getvalue()[len(after_one) :].split("\r")[-1]
    assert "1/5" in after_one and "acc 0.2500" in after_one and "1.25 MB" in after_one
    assert "2/5" in shown and "acc 0.8125" in shown and "2.50 MB" in shown, shown
    assert stream.getvalue().endswith("\n")  # the bar stays on screen once rounds finished


def test_small_totals_keep_three_decimals_of_mb():
    stream = FakeTTY()
    with RunProgress(2, 4, enabled=True, stream=stream, loggers=[]) as p:
        p.round_done(row(1, cum_bytes=41_300))
    assert "0.041 MB" in stream.getvalue()


def test_clients_bar_appears_only_in_a_slow_round_and_is_cleared_after():
    stream, clock = FakeTTY(), Clock()
    with RunProgress(3, 4, enabled=True, stream=stream, clock=clock, client_bar_after_s=3.0, loggers=[]) as p:
        p.client_done(1, 0, 4)  # round 1: 4 clients in 2 s
        for c in range(1, 5):
            clock.t += 0.5
            p.client_done(1, c, 4)
        p.round_done(row(1))
        assert "clients" not in stream.getvalue()

        clock.t += 10.0  # a long gap between rounds (e.g. checkpointing) does not count:
        p.client_done(2, 0, 4)  # done=0 starts round 2's clock
        clock.t += 2.0
        p.client_done(2, 1, 4)
        assert "clients" not in stream.getvalue()
        clock.t += 2.0  # 4 s into the round
        p.client_done(2, 2, 4)
        text = stream.getvalue()
        assert "round 2 clients" in text and "2/4" in text.split("round 2 clients")[-1]
        p.client_done(2, 3, 4)
        p.round_done(row(2))
        text = stream.getvalue()
        bar_line = text[text.rindex("round 2 clients") :].split("\x1b[A")[0].split("\r")[0]
        after = text[text.rindex("round 2 clients") + len(bar_line) :]
        assert "\r" + " " * len(bar_line) in after  # its line was blanked at the round's end

        p.client_done(3, 0, 4)  # round 3 is fast again: no clients bar
        clock.t += 1.0
        p.client_done(3, 4, 4)
        p.round_done(row(3))
    assert "round 3 clients" not in stream.getvalue()
    assert "3/3" in stream.getvalue()


def test_resumed_run_starts_the_bar_at_its_round():
    stream = FakeTTY()
    with RunProgress(10, 4, enabled=True, stream=stream, loggers=[]) as p:
        p.round_done(row(7))
        assert p._rounds.n == 7 and p._rounds.initial == 6  # the rate counts only new rounds
    assert "7/10" in stream.getvalue()


def test_a_run_with_no_new_rounds_clears_its_bar():
    stream = FakeTTY()
    with RunProgress(10, 4, enabled=True, stream=stream, loggers=[]):
        pass  # e.g. the run folder already held the complete result
    text = stream.getvalue()
    assert "0/10" in text and "\n" not in text
    assert text.endswith("\r") and text.split("\r")[-2].strip() == ""  # its line blanked, cursor home


def test_log_lines_land_above_the_bar_and_none_are_lost(logger):
    stream = FakeTTY()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("[LOG] %(message)s"))
    logger.addHandler(handler)
    messages = [f"round {r} acc {r / 10:.4f}" for r in range(1, 4)]
    with RunProgress(3, 4, enabled=True, stream=stream, loggers=[logger]) as p:
        for r, msg in enumerate(messages, 1):
            p.round_done(row(r, acc=r / 10))
            logger.info(msg)
    logger.info("after the bar")
    text = stream.getvalue()
    for msg in messages:  # each line starts clean: the bar was cleared before it was written
        assert last_segment_of_line_with(text, msg) == f"[LOG] {msg}", repr(text)
        assert text.count(msg) == 1
    assert handler.stream is stream  # logging is back as it was
    assert text.endswith("[LOG] after the bar\n")


def test_progress_logging_defaults_to_every_console_handler_and_leaves_others(logger, tmp_path):
    stream = FakeTTY()
    console = logging.StreamHandler(stream)
    to_file = logging.FileHandler(tmp_path / "run.log")
    logger.addHandler(console)
    logger.addHandler(to_file)
    with progress_logging(stream=stream):
        assert console.stream is not stream  # routed through tqdm
        assert to_file.stream is not None and to_file.stream.name == str(tmp_path / "run.log")
        logger.info("hello")
    assert console.stream is stream
    to_file.close()
    assert stream.getvalue() == "hello\n"
    assert (tmp_path / "run.log").read_text() == "hello\n"


@pytest.mark.parametrize(
    ("quiet", "tty", "env", "expected"),
    [
        (False, True, {"TERM": "xterm-256color"}, True),
        (True, True, {"TERM": "xterm-256color"}, False),
        (False, False, {"TERM": "xterm-256color"}, False),
        (False, True, {"TERM": "xterm", "CI": "true"}, False),
        (False, True, {"TERM": "xterm", "CI": "1"}, False),
        (False, True, {"TERM": "xterm", "CI": "false"}, True),
        (False, True, {"TERM": "dumb"}, False),
        (False, True, {}, True),
    ],
)
def test_progress_enabled(quiet, tty, env, expected):
    stream = FakeTTY() if tty else io.StringIO()
    assert progress_enabled(quiet, stream, env=env) is expected


def test_progress_enabled_reads_the_environment_and_stderr(monkeypatch):
    monkeypatch.setenv("TERM", "xterm")
    monkeypatch.delenv("CI", raising=False)
    assert progress_enabled(False, FakeTTY()) is True
    monkeypatch.setenv("CI", "true")
    assert progress_enabled(False, FakeTTY()) is False
    monkeypatch.delenv("CI")
    monkeypatch.setattr(sys, "stderr", FakeTTY())
    assert progress_enabled(False) is True
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    assert progress_enabled(False) is False
    with open(os.devnull, "w") as closed:
        pass
    assert progress_enabled(False, closed) is False


# -- JobProgress ------------------------------------------------------------------------------

BASIC = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"


def multirun_cfg(sweep_dir, task, params=None, target=BASIC, **sweeper):
    return OmegaConf.create(
        {
            "hydra": {
                "sweeper": {"_target_": target, "params": params, **sweeper},
                "overrides": {"task": task},
                "sweep": {"dir": str(sweep_dir)},
                "job": {"num": None},
            },
        }
    )


def job(num: int, overrides: list[str], status=JobStatus.COMPLETED, error=None):
    cfg = OmegaConf.create({"hydra": {"job": {"num": num}}})
    ret = JobReturn(overrides=overrides, status=status)
    ret._return_value = error
    return cfg, ret


def test_sweep_jobs_counts_params_and_command_line(tmp_path):
    cfg = multirun_cfg(tmp_path, ["method=lora,full", "fl.num_rounds=2"], params={"seed": "0,1,2"})
    assert sweep_jobs(cfg) == (6, ["seed", "method"])
    cfg = multirun_cfg(tmp_path, ["seed=5", "x=range(0,4)"], params={"seed": "0,1,2"})
    assert sweep_jobs(cfg)[0] == 4  # the command line replaces the params' seed sweep
    assert sweep_jobs(multirun_cfg(tmp_path, ["x=1,2"], target="some.OtherSweeper")) == (None, [])
    assert sweep_jobs(multirun_cfg(tmp_path, [], target="optuna.Sweeper", n_trials=20)) == (20, [])


def test_job_progress_counts_jobs_across_worker_copies(tmp_path, capsys):
    cb = JobProgress()
    cfg = multirun_cfg(tmp_path / "sweep", ["method=a,b", "fl.num_rounds=2"], params={"seed": "0,1"})
    cb.on_multirun_start(cfg)
    # joblib and submitit run each job with a pickled copy of the callback
    jobs = [
        job(0, ["seed=0", "method=a", "fl.num_rounds=2"]),
        job(
            1,
            ["seed=0", "method=b", "fl.num_rounds=2"],
            JobStatus.FAILED,
            ValueError("bad config\ntraceback..."),
        ),
        job(2, ["seed=1", "method=a", "fl.num_rounds=2"]),
        job(3, ["seed=1", "method=b", "fl.num_rounds=2"]),
    ]
    for c, ret in jobs:
        pickle.loads(pickle.dumps(cb)).on_job_end(c, ret)
    cb.on_multirun_end(cfg)
    lines = capsys.readouterr().err.splitlines()
    assert lines == [
        f"fedbench: sweep of 4 jobs -> {tmp_path / 'sweep'}",
        "fedbench: job 1/4 done (#0 seed=0 method=a: completed)",
        "fedbench: job 2/4 failed (#1 seed=0 method=b: ValueError: bad config); 1 failed so far",
        "fedbench: job 3/4 done (#2 seed=1 method=a: completed); 1 failed so far",
        "fedbench: job 4/4 done (#3 seed=1 method=b: completed); 1 failed so far",
        f"fedbench: sweep done: 4/4 jobs, 1 failed -> {tmp_path / 'sweep'}",
    ]
    assert not (tmp_path / "sweep" / JobProgress.LEDGER).exists()  # the sweep folder is left clean


def test_job_progress_without_a_known_total_or_a_ledger(tmp_path):
    out = io.StringIO()
    blocked = tmp_path / "file"
    blocked.write_text("")  # a sweep dir that cannot be created: falls back to counting in memory
    cb = JobProgress(stream=out)
    cfg = multirun_cfg(blocked / "sweep", ["x=1,2"], target="some.OtherSweeper")
    cb.on_multirun_start(cfg)
    for n in range(2):
        cb.on_job_end(*job(n, [f"x={n + 1}"]))
    cb.on_multirun_end(cfg)
    assert out.getvalue().splitlines()[1:] == [
        "fedbench: job 1 done (#0: completed)",
        "fedbench: job 2 done (#1: completed)",
        f"fedbench: sweep done: 2 jobs -> {blocked / 'sweep'}",
    ]


def test_job_progress_is_silent_for_single_runs_and_when_quiet(tmp_path):
    out = io.StringIO()
    JobProgress(stream=out).on_job_end(*job(0, []))  # RUN mode: no multirun start
    cb = JobProgress(quiet=True, stream=out)
    cfg = multirun_cfg(tmp_path, ["x=1,2"])
    cb.on_multirun_start(cfg)
    cb.on_job_end(*job(0, ["x=1"]))
    cb.on_multirun_end(cfg)
    assert out.getvalue() == ""
    assert not (tmp_path / JobProgress.LEDGER).exists()


APP = """
import hydra

@hydra.main(version_base="1.3", config_path=".", config_name="config")
def main(cfg):
    return cfg.x

if __name__ == "__main__":
    main()
"""

CONFIG = """
x: 0
y: 0
quiet: false
hydra:
  callbacks:
    progress:
      _target_: fedbench.progress.JobProgress
      quiet: ${oc.select:quiet,false}
"""


def has_joblib() -> bool:
    try:
        import hydra_plugins.hydra_joblib_launcher  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.mark.parametrize(
    "launcher",
    [
        [],
        pytest.param(
            ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"],
            marks=pytest.mark.skipif(not has_joblib(), reason="hydra-joblib-launcher not installed"),
        ),
    ],
    ids=["basic", "joblib"],
)
def test_real_multirun_prints_job_counts(tmp_path, launcher):
    (tmp_path / "app.py").write_text(textwrap.dedent(APP))
    (tmp_path / "config.yaml").write_text(textwrap.dedent(CONFIG))
    env = dict(os.environ, PYTHONPATH=str(ROOT))

    def sweep(*extra: str) -> str:
        res = subprocess.run(
            [
                sys.executable,
                "app.py",
                "-m",
                "x=1,2",
                "y=3",
                *launcher,
                *extra,
                f"hydra.sweep.dir={tmp_path / 'multirun'}",
            ],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert res.returncode == 0, res.stderr[-3000:]
        return "\n".join(ln for ln in res.stderr.splitlines() if ln.startswith("fedbench:"))

    lines = sweep().splitlines()
    assert lines[0] == f"fedbench: sweep of 2 jobs -> {tmp_path / 'multirun'}"
    assert sorted(ln.split(" (")[0] for ln in lines[1:3]) == [
        "fedbench: job 1/2 done",
        "fedbench: job 2/2 done",
    ]
    assert lines[3:] == [f"fedbench: sweep done: 2/2 jobs -> {tmp_path / 'multirun'}"]
    assert sweep("quiet=true") == ""
