"""Check a command line before Hydra starts a job: bad input is one line, exit 2, no run folder.

Hydra creates the run folder before calling the task and reports composition errors as
multi-line messages. This composes every job the command line describes (the Cartesian product
of sweeps in multirun mode, including ``hydra.sweeper.params`` from experiment files) with the
Compose API and validates each, so an error names the key and what is allowed.
"""

from __future__ import annotations

import itertools
import re
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

from fedbench.config import ConfigError, validate

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"

# Hydra flags after which no job runs (or that take a value we must skip over).
_NO_JOB_FLAGS = {"--help", "-h", "--hydra-help", "--info", "-i", "--cfg", "-c", "--shell-completion",
                 "-sc", "--version", "--resolve", "-p", "--package", "--experimental-rerun"}
_VALUE_FLAGS = {"--config-path", "-cp", "--config-name", "-cn", "--config-dir", "-cd"}
MAX_CHECKED_JOBS = 2000


class CommandLineError(Exception):
    """One line describing what is wrong with the command line."""


def split_argv(argv: list[str]) -> tuple[list[str], dict, bool, bool]:
    """(overrides, flag values, multirun?, runs a job?)"""
    overrides, flags, multirun, runs_job = [], {}, False, True
    it = iter(argv)
    for arg in it:
        if arg in ("-m", "--multirun"):
            multirun = True
        elif arg in _VALUE_FLAGS:
            flags[arg] = next(it, None)
        elif arg.split("=")[0] in _NO_JOB_FLAGS:
            runs_job = False
            if arg in ("--cfg", "-c", "--info", "-i", "--package", "-p", "--shell-completion", "-sc"):
                next(it, None)  # these take a value
        elif arg.startswith("-"):
            continue
        else:
            overrides.append(arg)
    return overrides, flags, multirun, runs_job


def _one_line(exc: BaseException, base_cfg=None) -> str:
    """Hydra's (multi-line) composition error as one line; ``base_cfg`` lists known keys."""
    text = str(exc)
    missing = re.search(r"Could not find '([^']+)'", text)
    if missing:
        group, _, option = missing.group(1).rpartition("/")
        opts = re.search(r"Available options in '[^']+':\n((?:\t.*\n?)*)", text)
        allowed = ", ".join(o.strip() for o in opts.group(1).splitlines() if o.strip()) if opts else "none"
        return f"{group.replace('/', '.')}={option}: unknown option for group '{group}'; allowed: {allowed}"
    override = re.search(r"Could not override '([^']+)'", text)
    if override:
        key = override.group(1)
        parent, _, _leaf = key.rpartition(".")
        known = ""
        if base_cfg is not None:
            node = OmegaConf.select(base_cfg, parent) if parent else base_cfg
            if OmegaConf.is_dict(node):
                known = "; known keys" + (f" of {parent}" if parent else "") + ": " + ", ".join(map(str, node.keys()))
        return f"{key}: unknown key{known}"
    first = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
    return first


def job_overrides(overrides: list[str], multirun: bool, sweeper_params: dict | None) -> list[list[str]]:
    """The override list of every job the command line launches."""
    parser = OverridesParser.create()
    try:
        parsed = parser.parse_overrides(overrides)
    except Exception as exc:  # noqa: BLE001 - hydra's grammar errors
        raise CommandLineError(f"cannot parse the overrides {' '.join(overrides)!r}: {_one_line(exc)}") from None
    if not multirun:
        for ov in parsed:
            if ov.is_sweep_override():
                raise CommandLineError(f"{ov.input_line}: a sweep needs multirun mode (add -m)")
        return [overrides]
    by_key: dict[str, list[str]] = {}
    if sweeper_params:
        for key, value in sweeper_params.items():
            try:
                ov = parser.parse_override(f"{key}={value}")
            except Exception as exc:  # noqa: BLE001
                raise CommandLineError(f"hydra.sweeper.params.{key}: {_one_line(exc)}") from None
            by_key[ov.get_key_element()] = _values(ov)
    for ov in parsed:
        by_key[ov.get_key_element()] = _values(ov)  # the command line wins over the config
    keys = list(by_key)
    return [[f"{k}={v}" if not k.startswith("~") else k for k, v in zip(keys, combo)]
            for combo in itertools.product(*(by_key[k] for k in keys))]


def _values(ov) -> list[str]:
    if not ov.is_sweep_override():
        return [ov.get_value_element_as_str()]
    if not ov.is_discrete_sweep():
        raise CommandLineError(f"{ov.input_line}: only choice and range sweeps are supported by fedbench's check")
    return list(ov.sweep_string_iterator())


def check_command_line(argv: list[str]) -> None:
    """Raise :class:`CommandLineError` if any job of this command line cannot run."""
    overrides, flags, multirun, runs_job = split_argv(argv)
    if not runs_job:
        return
    conf_dir = Path(flags.get("--config-dir") or flags.get("-cd") or CONF_DIR).resolve()
    config_name = flags.get("--config-name") or flags.get("-cn") or "config"
    if "--config-path" in flags or "-cp" in flags:
        return  # a different primary config: leave it to Hydra
    job_overrides(overrides, multirun, None)  # syntax first: grammar errors, sweeps without -m
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(conf_dir), version_base="1.3"):
            def base_cfg():  # only composed to explain an error
                return compose(config_name)

            jobs = [overrides]
            if multirun:
                fixed = [o for o in overrides if not _is_sweep(o)]
                try:
                    head = compose(config_name, overrides=fixed, return_hydra_config=True)
                except Exception as exc:  # noqa: BLE001
                    raise CommandLineError(_one_line(exc, base_cfg())) from None
                node = OmegaConf.select(head, "hydra.sweeper.params")
                params = OmegaConf.to_container(node) if node is not None else None
                jobs = job_overrides(overrides, multirun, params)
            for job in jobs[:MAX_CHECKED_JOBS]:
                try:
                    cfg = compose(config_name, overrides=job)
                except Exception as exc:  # noqa: BLE001
                    raise CommandLineError(_one_line(exc, base_cfg())) from None
                try:
                    validate(cfg)
                except ConfigError as exc:
                    raise CommandLineError(str(exc)) from None
    finally:
        GlobalHydra.instance().clear()


def _is_sweep(text: str) -> bool:
    try:
        return OverridesParser.create().parse_override(text).is_sweep_override()
    except Exception:  # noqa: BLE001 - reported later by the full parse
        return False
