"""Fuzzed configuration (hypothesis): every override set either runs or is refused cleanly.

Each generated set picks options of the component groups (model, method, data, strategy,
compression and its up/down sides; sometimes an unknown option) and values for keys drawn
mostly from the chosen components' own fields (sometimes from other components', sometimes
keys that exist nowhere): typical values, boundaries, out-of-range numbers, nan/inf, wrong
types, strings that do not parse. On top of a tiny configuration (1 round, 3 clients, a few
samples), the property is the CLI's contract:

- refused: :func:`fedbench.cli_check.check_command_line` (what ``fedbench`` runs before Hydra
  makes a folder) raises one line with exit code 2 (bad input) or 3 (the machine), and no run
  folder exists; ``test_refusals_are_one_line_exit_2_through_the_cli`` proves the same through
  a real ``fedbench`` process for the regression cases;
- or accepted: the run completes its rounds in-process (or stops as diverged, a recorded
  outcome), with one metrics row per round. A refusal raised only once the run has started
  (when Hydra has already made the folder) or any other exception is a failure.

Cost: ``size keys`` (rounds, clients, samples, widths, ranks, threads) only take small valid
values or invalid ones, so an accepted run stays tiny. ``FEDBENCH_FUZZ_EXAMPLES`` (default
500) sets the count; CI draws the same examples every run (derandomised) so a failure is
reproducible; ``FEDBENCH_FUZZ_SEED=<int>`` explores other examples (``make fuzz``). Every
failure found goes into ``tests/fuzz_regressions.yaml`` (the seed database), replayed below.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
import typing
from functools import lru_cache
from pathlib import Path

import pytest
import yaml
from conftest import CONF, compose_cfg, run_cli
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from fedbench import registry
from fedbench.cli_check import CommandLineError, check_command_line
from fedbench.config import RunSettings, load_registry

REGRESSIONS = Path(__file__).resolve().parent / "fuzz_regressions.yaml"
EXAMPLES = int(os.environ.get("FEDBENCH_FUZZ_EXAMPLES", "500"))
SEED = os.environ.get("FEDBENCH_FUZZ_SEED")

# Groups as the command line names them -> the config section their keys live in.
GROUPS = {
    "model": "model",
    "method": "method",
    "data": "data",
    "strategy": "strategy",
    "compression": None,  # a pair of sides: its keys are compression.up.* / compression.down.*
    "compression/up": "compression.up",
    "compression/down": "compression.down",
    "system": "system",
}
# How often each option is drawn: MiniLM (22.7M parameters) is the slow one.
# SmolLM2 (134.5M) likewise; tiny_llama is the causal LM's tiny one.
WEIGHT = {"model": {"tutorial_mlp": 6, "tiny_bert": 3, "minilm": 1, "tiny_llama": 2, "smollm2": 1}}

# Keys that set the cost of a run: only small valid values (at most this) or invalid ones.
SIZE = {
    "threads": 2,
    "fl.num_rounds": 2,
    "fl.num_clients": 6,
    "fl.clients_per_round": 6,
    "fl.local_epochs": 2,
    "fl.eval_every": 3,
    "data.samples_per_client": 48,
    "data.test_size": 48,
    "data.train_size": 48,
    "data.dim": 24,
    "data.num_classes": 20,
    "data.shards_per_client": 6,
    "data.min_size": 12,
    "model.input_dim": 24,
    "model.hidden_dim": 24,
    "model.num_layers": 3,
    "model.num_classes": 20,
    "model.hidden_size": 48,
    "model.intermediate_size": 48,
    "model.num_heads": 4,
    "model.max_position_embeddings": 96,
    "method.rank": 12,
    "method.bottleneck": 12,
    "method.num_virtual_tokens": 6,
    "method.last_k": 6,
    "data.max_windows": 4,
    "model.num_kv_heads": 4,
    "model.sample_tokens": 4,
}
# Token windows: the whole dataset is tokenised (and cached) once per length.
FIXED = {"data.max_length": ("16", "32"), "data.seq_len": ("16", "24")}

# The tiny configuration each set is laid over (a fuzzed value of the same key wins).
BASE = ["fl.num_rounds=1", "fl.num_clients=3", "fl.clients_per_round=2", "fl.local_epochs=1", "threads=1"]
TINY_FOR_DATA = {
    "tutorial": ["data.samples_per_client=24", "data.test_size=24"],
    "tutorial_lazy": ["data.samples_per_client=24", "data.test_size=24"],
    "text": ["data.train_size=36", "data.test_size=12", "data.max_length=16", "data.min_size=4"],
    "shakespeare": ["data.seq_len=16", "data.max_windows=4", "data.test_size=8"],
}
TINY_FOR_MODEL = {
    "tutorial_mlp": ["model.hidden_dim=16", "model.num_layers=1"],
    "tiny_bert": [],
    "minilm": [],
    "tiny_llama": ["model.sample_tokens=2"],
    "smollm2": ["model.sample_tokens=2"],
}
TEXT_DATA = ("bbc", "sms_spam", "r8", "20news")


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


@lru_cache(maxsize=1)
def _fields() -> dict[tuple[str, str], list[tuple[str, object, tuple | None]]]:
    """(group, option) -> [(field, annotation, choices)] of the component the option selects."""
    load_registry()
    out = {}
    for group, section in GROUPS.items():
        if section is None:
            continue
        key = section
        for option in _options(group):
            cfg = compose_cfg([f"{group}={option}"] + (["data=bbc"] if group == "model" else []))
            node = cfg
            for part in section.split("."):
                node = node[part]
            cls = registry.lookup(node["_target_"], key).cls
            hints = typing.get_type_hints(cls)
            out[group, option] = [
                (f.name, hints[f.name], f.metadata.get("choices"))
                for f in dataclasses.fields(cls)
                if not f.name.startswith("_")
            ]
    hints = typing.get_type_hints(RunSettings)
    out["top", ""] = [
        (f.name, hints[f.name], f.metadata.get("choices")) for f in dataclasses.fields(RunSettings)
    ]
    from fedbench.config import FLConfig

    hints = typing.get_type_hints(FLConfig)
    out["fl", ""] = [(f.name, hints[f.name], f.metadata.get("choices")) for f in dataclasses.fields(FLConfig)]
    return out


WRONG = st.sampled_from(["abc", "1.5", "null", "[1,2]", "{a: 1}", "''", "true", "-1", "0", "1e400", "x y"])


def _values(key: str, annotation: object, choices: tuple | None) -> st.SearchStrategy[str]:
    """Values as the command line writes them: mostly valid for the type, else wrong."""
    args = typing.get_args(annotation)
    optional = type(None) in args
    inner = next((a for a in args if a is not type(None)), annotation) if optional else annotation
    extra = ["null"] if optional else []
    if key in FIXED:
        valid = st.sampled_from([*FIXED[key], *extra])
    elif choices:
        valid = st.sampled_from([*map(str, choices), *extra])
    elif inner is bool:
        valid = st.sampled_from(["true", "false", *extra])
    elif inner is int:
        top = SIZE.get(key)
        valid = (
            st.integers(0, top).map(str) if top is not None else st.sampled_from(["0", "1", "2", "7", "1000"])
        )
        valid = st.one_of(valid, st.sampled_from(["-1", "-7", *extra]))
    elif inner is float:
        valid = st.sampled_from(
            ["0.0", "1e-4", "0.01", "0.1", "0.5", "0.9", "1.0", "2.0", "-0.5", "1e9", "nan", "inf", *extra]
        )
    elif typing.get_origin(inner) in (list, typing.List):  # noqa: UP006
        valid = st.sampled_from(["[]", "[query]", "[nope]", "[fc1,fc2]", "[drop:0:1]", "[nan:1:1]", *extra])
    else:
        valid = st.sampled_from(["nope", "''", "/nonexistent/folder", *extra])
    return st.integers(0, 5).flatmap(lambda i: WRONG if i == 0 else valid)


def _weighted(group: str) -> st.SearchStrategy[str]:
    options = _options(group)
    weights = WEIGHT.get(group, {})
    pool = [o for o in options for _ in range(weights.get(o, 1))]
    return st.integers(0, 15).flatmap(lambda i: st.just("nope") if i == 0 else st.sampled_from(pool))


@st.composite
def override_sets(draw) -> list[str]:
    fields = _fields()
    chosen: dict[str, str] = {}
    for group in GROUPS:
        if draw(st.booleans()) or group in ("model", "data"):
            chosen[group] = draw(_weighted(group))
    model = chosen.get("model", "tutorial_mlp")
    data = chosen.get("data", "tutorial")
    if model in ("tiny_bert", "minilm") and "data" in chosen and draw(st.integers(0, 3)) > 0:
        data = chosen["data"] = draw(st.sampled_from(TEXT_DATA))  # mostly a pairing that can run
    if model in ("tiny_llama", "smollm2") and "data" in chosen and draw(st.integers(0, 3)) > 0:
        data = chosen["data"] = "shakespeare"
    # the keys of the chosen components (sections as the config names them)
    own: list[tuple[str, object, tuple | None]] = []
    sides = {
        "compression/up": chosen.get("compression/up", "none"),
        "compression/down": chosen.get("compression/down", "none"),
    }
    for group, section in GROUPS.items():
        if section is None:
            continue
        option = (
            sides.get(group) or chosen.get(group) or {"method": "lora", "strategy": "fedavg"}.get(group, "")
        )
        option = {"model": model, "data": data}.get(group, option)
        for name, ann, ch in fields.get((group, option), []):
            own.append((f"{section}.{name}", ann, ch))
    own += [(name, ann, ch) for name, ann, ch in fields["top", ""]]
    own += [(f"fl.{name}", ann, ch) for name, ann, ch in fields["fl", ""]]
    anywhere = sorted(
        {
            (f"{GROUPS[g]}.{name}", str(ann), ch)
            for (g, _), fs in fields.items()
            if g in GROUPS and GROUPS[g]
            for name, ann, ch in fs
        }
    )
    overrides: dict[str, str] = {}
    for _ in range(draw(st.integers(0, 4))):
        kind = draw(st.integers(0, 24))
        if kind < 20:
            key, ann, ch = draw(st.sampled_from(own))
            overrides[key] = draw(_values(key, ann, ch))
        elif kind < 23:
            key, _, _ = draw(st.sampled_from(anywhere))
            overrides[key] = draw(st.sampled_from(["1", "0.5", "abc", "true"]))
        else:
            key = draw(
                st.sampled_from(["nope", "fl.nope", "model.nope", "method.nope", "compression.up.nope"])
            )
            overrides[key] = "1"
    tiny = [
        *BASE,
        *TINY_FOR_DATA.get("text" if data in TEXT_DATA else data, []),
        *TINY_FOR_MODEL.get(model, []),
    ]
    pinned = [o for o in tiny if o.split("=", 1)[0] not in overrides]
    return [*pinned, *(f"{g}={o}" for g, o in chosen.items()), *(f"{k}={v}" for k, v in overrides.items())]


def _with_run_dir(overrides: list[str], default: Path) -> tuple[Path, list[str]]:
    """The run folder a command line names (its own ``hydra.run.dir`` wins) and the command."""
    own = [o.split("=", 1)[1] for o in overrides if o.startswith("hydra.run.dir=")]
    if own:
        return Path(own[-1]), list(overrides)
    return default, [*overrides, f"hydra.run.dir={default}"]


def outcome(overrides: list[str], folder: Path) -> str:
    """ "refused" or "ran", asserting the contract for either; raises on anything else."""
    from fedbench.run import execute

    run_dir, command = _with_run_dir(overrides, folder / "run")
    try:
        check_command_line(command)
    except CommandLineError as exc:
        line = str(exc)
        assert line and "\n" not in line, f"refusal is not one line: {line!r}"
        assert exc.exit_code in (2, 3), exc.exit_code
        assert not run_dir.exists(), "a refused command line left a run folder"
        return "refused"
    rows = execute(compose_cfg([o for o in overrides if not o.startswith("hydra.")]), out_dir=run_dir)
    spec_rounds = int(next(o.split("=")[1] for o in reversed(overrides) if o.startswith("fl.num_rounds=")))
    assert 1 <= len(rows) <= spec_rounds, (len(rows), spec_rounds)
    assert (run_dir / "metrics.csv").is_file() and (run_dir / "summary.json").is_file()
    return "ran"


def _settings():
    kw = {
        "max_examples": EXAMPLES,
        "deadline": None,
        "database": None,
        "print_blob": True,
        "suppress_health_check": [
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
            HealthCheck.filter_too_much,
        ],
    }
    return settings(derandomize=SEED is None, **kw)


def _fuzz(test):
    test = given(override_sets())(test)
    test = _settings()(test)
    return seed(int(SEED))(test) if SEED is not None else test


@pytest.mark.slow
@_fuzz
def test_every_fuzzed_override_set_runs_or_is_refused_in_one_line(overrides):
    with tempfile.TemporaryDirectory() as tmp:
        outcome(overrides, Path(tmp))


def _regressions() -> list[dict]:
    return yaml.safe_load(REGRESSIONS.read_text()) or []


@pytest.mark.parametrize("case", _regressions(), ids=lambda c: c["id"])
def test_regression_case(case, tmp_path):
    """Each override set the fuzzer once found failing: now its recorded outcome."""
    assert outcome([*BASE, *case["overrides"]], tmp_path) == case["expect"], case["found"]


def test_refusals_are_one_line_exit_2_through_the_cli(tmp_path):
    """The in-process check is the CLI's: the refused regression cases through ``fedbench``."""
    refused = [c for c in _regressions() if c["expect"] == "refused"][:4]
    assert refused, "the seed database holds refusal cases"
    for case in refused:
        run_dir, command = _with_run_dir([*BASE, *case["overrides"]], tmp_path / case["id"])
        r = run_cli(command, cwd=tmp_path)
        lines = r.stderr.strip().splitlines()
        assert r.returncode in (2, 3), (case["id"], r.returncode, r.stderr[-2000:])
        assert len(lines) == 1 and lines[0].startswith("fedbench: "), (case["id"], r.stderr)
        assert not run_dir.exists()


def test_the_generator_reaches_both_outcomes_and_every_group():
    """The fuzzer is not vacuous: over a fixed sample it produces refused and running sets, and
    every group's every option, unknown options and unknown keys."""
    seen: list[list[str]] = []

    @settings(max_examples=1500, derandomize=True, database=None, deadline=None)
    @given(override_sets())
    def collect(overrides):
        seen.append(overrides)

    collect()
    flat = {o for s in seen for o in s}
    for group in GROUPS:
        for option in _options(group):
            assert f"{group}={option}" in flat, f"{group}={option} never drawn"
    assert any(o.endswith("=nope") for o in flat)
    assert any(o.startswith(("nope=", "fl.nope=")) for o in flat)
    with tempfile.TemporaryDirectory() as tmp:
        outcomes = set()
        for overrides in seen[:60]:
            try:
                check_command_line([*overrides, f"hydra.run.dir={tmp}/run"])
                outcomes.add("accepted")
            except CommandLineError:
                outcomes.add("refused")
    assert outcomes == {"accepted", "refused"}
