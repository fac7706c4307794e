"""Check a command line before Hydra starts a job: bad input is one line, exit 2, no run folder.

Hydra creates the run folder before calling the task and reports composition errors as
multi-line messages. This reads the command line with Hydra's own argument parser and override
grammar, expands a multirun sweep as Hydra's basic sweeper does (its ``split_arguments``, with
``hydra.sweeper.params`` from experiment files first), composes every job with the Compose API
and validates it. Composition errors are explained from the exceptions' fields (the missing
option and the group's options; the key that does not exist and the selected option's keys),
never by matching message texts.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra._internal.utils import get_args_parser
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException, MissingConfigException, OverrideParseException
from omegaconf import OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException, ValidationError

from fedbench import registry
from fedbench.config import CONF_DIR, FLConfig, RunSettings, _type_text, load_registry, validate
from fedbench.errors import EXIT_BAD_INPUT, EXIT_ENVIRONMENT, ConfigError, environment_problem
from fedbench.registry import describe_fields

MAX_CHECKED_JOBS = 2000
BASIC_SWEEPER = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"

__all__ = ["CONF_DIR", "CommandLineError", "check_command_line", "is_multirun"]


class CommandLineError(Exception):
    """One line describing what is wrong with the command line; ``exit_code`` 2 for bad input,
    3 for the machine (a missing package, an output folder that cannot be written)."""

    def __init__(self, message: str, exit_code: int = EXIT_BAD_INPUT) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def parse_args(argv: list[str]):
    """Hydra's own reading of the command line (flags, ``-m``, overrides)."""
    return get_args_parser().parse_args(argv)


def is_multirun(argv: list[str]) -> bool:
    return bool(parse_args(argv).multirun)


def _runs_job(args) -> bool:
    return not (
        args.help
        or args.hydra_help
        or args.cfg
        or args.info
        or args.shell_completion
        or args.experimental_rerun
    )


def _parse(overrides: list[str]):
    try:
        return OverridesParser.create().parse_overrides(overrides)
    except OverrideParseException as exc:
        reason = str(exc.message).strip().splitlines()[0]
        raise CommandLineError(f"cannot parse the override {exc.override!r}: {reason}") from None


def _section(key: str) -> tuple[str, str | None]:
    """(the config group a key belongs to, the choice name Hydra records it under)."""
    head = key.split(".")[0]
    if head == "compression" and key.count(".") >= 1:
        side = key.split(".")[1]
        return f"compression.{side}", f"compression/{side}"
    return head, head


class _Explainer:
    """Turns a failed composition of one job into one line."""

    def __init__(self, config_name: str, job: list[str]) -> None:
        self.config_name, self.job = config_name, job

    def _without(self, key: str):
        """The job composed without the overrides of ``key`` (to read what is selected)."""
        keep = [o.input_line for o in _parse(self.job) if o.key_or_group != key]
        try:
            return compose(self.config_name, overrides=keep, return_hydra_config=True)
        except HydraException:
            return None

    def _compose_loggers(self):
        keep = [o.input_line for o in _parse(self.job) if not o.key_or_group.startswith("logger.")]
        try:
            return compose(self.config_name, overrides=keep)
        except HydraException:
            return None

    def _selected_loggers(self) -> list[str] | None:
        """The trackers the job selects (``logger=[...]``), read without its ``logger.*`` values."""
        cfg = self._compose_loggers()
        if cfg is None:
            return None
        section = cfg.get(registry.TRACKERS_KEY)
        return list(section.keys()) if OmegaConf.is_dict(section) else []

    def _logger_key(self, key: str) -> str | None:
        """For ``logger.<name>.<field>`` whose tracker is not selected: the line saying so."""
        parts = key.split(".")
        if parts[0] != registry.TRACKERS_KEY or len(parts) < 2:
            return None
        selected = self._selected_loggers()
        if selected is None or parts[1] in selected:
            return None
        known = sorted(e.name for e in registry.entries("logger"))
        with_it = ",".join([*selected, parts[1]]) if parts[1] in known else None
        fix = f"select it: logger=[{with_it}]" if with_it else f"loggers: {', '.join(known)}"
        return f"{key}: logger {parts[1]} is not selected (selected: {', '.join(selected) or 'none'}); {fix}"

    def _schema(self, key: str, base) -> tuple[type | None, str]:
        """(the dataclass that holds ``key``'s section, how to name it)."""
        group, choice_key = _section(key)
        if group == "fl":
            return FLConfig, "fl"
        if group == registry.TRACKERS_KEY and key.count(".") >= 2:
            name = key.split(".")[1]
            section = OmegaConf.select(self._compose_loggers(), f"{group}.{name}")
            target = section.get("_target_") if OmegaConf.is_dict(section) else None
            try:
                return registry.lookup(target, f"{group}.{name}").cls, f"logger={name}"
            except ConfigError:
                return None, group
        if group in registry.CONFIG_GROUPS and base is not None:
            section = OmegaConf.select(base, group)
            target = section.get("_target_") if OmegaConf.is_dict(section) else None
            try:
                entry = registry.lookup(target, group)
            except ConfigError:
                return None, group
            option = base.hydra.runtime.choices.get(choice_key, entry.name)
            return entry.cls, f"{group}={option}"
        return None, group

    def explain(self, exc: Exception) -> str:
        if isinstance(exc, MissingConfigException):
            missing = str(exc.missing_cfg_file or "")
            group, _, option = missing.rpartition("/")
            if group and exc.options is not None:
                return (
                    f"{group.replace('/', '.')}={option}: unknown option for group '{group}'; "
                    f"allowed: {', '.join(exc.options) or 'none'}"
                )
            return str(exc).strip().splitlines()[0]
        cause = exc.__cause__
        if isinstance(cause, OmegaConfBaseException) and cause.full_key:
            key = str(cause.full_key)
            for ov in _parse(self.job):  # logger.<name>.<field>=... for a tracker not selected
                if ov.key_or_group.startswith(key + ".") or ov.key_or_group == key:
                    line = self._logger_key(ov.key_or_group)
                    if line is not None:
                        return line
            base = self._without(key)
            schema, label = self._schema(key, base)
            leaf = key.rsplit(".", 1)[-1]
            if isinstance(cause, ValidationError) and schema is not None:
                fields = {f.name: f for f in dataclasses.fields(schema)}
                if leaf in fields:
                    return f"{key}={cause.value!r}: must be {_type_text(fields[leaf].type)}"
            if isinstance(cause, ValidationError):
                return f"{key}: {str(cause).splitlines()[0]}"
            if schema is not None:
                return f"{key}: unknown key for {label}; its keys: {describe_fields(schema)}"
            if "." not in key:
                groups = ", ".join([*registry.CONFIG_GROUPS, "fl"])
                return (
                    f"{key}: unknown key; top-level keys: {describe_fields(RunSettings)}; sections: {groups}"
                )
            return f"{key}: unknown key"
        text = str(exc).strip()
        return text.splitlines()[0] if text else type(exc).__name__


# Hydra plugin options fedbench's docs use -> the package that provides them (extras in pyproject).
PLUGINS = {
    "hydra/sweeper/optuna": ("hydra-optuna-sweeper", "tune"),
    "hydra/launcher/ray": ("hydra-ray-launcher", "ray"),
    "hydra/launcher/joblib": ("hydra-joblib-launcher", "sweep"),
    "hydra/launcher/submitit_local": ("hydra-submitit-launcher", "sweep"),
    "hydra/launcher/submitit_slurm": ("hydra-submitit-launcher", "sweep"),
}


def _composition_error(config_name: str, job: list[str], exc: Exception) -> CommandLineError:
    """One line for a job that does not compose; a Hydra plugin that is not installed is the
    machine's problem (exit 3), like any missing package."""
    if isinstance(exc, MissingConfigException):
        missing = str(exc.missing_cfg_file or "")
        if missing in PLUGINS:
            package, extra = PLUGINS[missing]
            group, _, option = missing.rpartition("/")
            return CommandLineError(
                f"{group}={option}: needs the package {package}, which is not installed "
                f"(pip install -c constraints.txt -e '.[{extra}]')",
                EXIT_ENVIRONMENT,
            )
    return CommandLineError(_Explainer(config_name, job).explain(exc))


def _jobs(config_name: str, args, parsed) -> list[list[str]]:
    """The override list of every job the command line launches."""
    overrides = list(args.overrides)
    if not args.multirun:
        for ov in parsed:
            if ov.is_sweep_override():
                raise CommandLineError(f"{ov.input_line}: a sweep needs multirun mode (add -m)")
        return [overrides]
    fixed = [o.input_line for o in parsed if not o.is_sweep_override()]
    try:
        head = compose(config_name, overrides=fixed, return_hydra_config=True)
    except HydraException as exc:
        raise _composition_error(config_name, fixed, exc) from None
    if head.hydra.sweeper.get("_target_") != BASIC_SWEEPER:
        return [fixed]  # another sweeper (e.g. optuna) picks the values: check the fixed part
    node = head.hydra.sweeper.get("params")
    params = OmegaConf.to_container(node, resolve=False) if node is not None else {}
    spec = [f"{k}={v}" for k, v in params.items()] + overrides  # as BasicSweeper.sweep orders them
    try:
        return BasicSweeper.split_arguments(_parse(spec), None)[0]
    except HydraException as exc:
        raise CommandLineError(str(exc).splitlines()[0]) from None


def check_command_line(argv: list[str]) -> None:
    """Raise :class:`CommandLineError` if any job of this command line cannot run."""
    args = parse_args(argv)
    if not _runs_job(args) or args.config_path:
        return  # no job runs, or a different primary config: leave it to Hydra
    conf_dir = Path(args.config_dir or CONF_DIR).resolve()
    config_name = args.config_name or "config"
    parsed = _parse(list(args.overrides))  # grammar first
    load_registry()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(conf_dir), version_base="1.3"):
            single = None  # a single run: one composition serves both checks (~0.1 s each)
            for job in _jobs(config_name, args, parsed)[:MAX_CHECKED_JOBS]:
                try:
                    cfg = compose(config_name, overrides=job, return_hydra_config=not args.multirun)
                except HydraException as exc:
                    raise _composition_error(config_name, job, exc) from None
                if not args.multirun:
                    single = cfg.copy()
                    with open_dict(cfg):
                        del cfg["hydra"]
                try:
                    validate(cfg)
                except ConfigError as exc:
                    raise CommandLineError(str(exc), exc.exit_code) from None
            _check_output_folder(config_name, list(args.overrides), bool(args.multirun), single)
    finally:
        GlobalHydra.instance().clear()


def _nearest_existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _check_output_folder(config_name: str, overrides: list[str], multirun: bool, composed=None) -> None:
    """The folder Hydra is about to create (``hydra.run.dir``, or ``hydra.sweep.dir`` with -m)
    must be creatable and writable: checked here, where a failure is one line, because Hydra
    makes it before fedbench's code runs. Probes with a temporary file, removed at once."""
    import os
    import tempfile

    key = "hydra.sweep.dir" if multirun else "hydra.run.dir"
    fixed = [o.input_line for o in _parse(overrides) if not o.is_sweep_override()]
    try:
        cfg = (
            composed
            if composed is not None
            else compose(config_name, overrides=fixed, return_hydra_config=True)
        )
        target = Path(str(OmegaConf.select(cfg, key)))
    except Exception:  # noqa: BLE001 (an unresolvable folder name: Hydra reports it itself)
        return
    existing = _nearest_existing(target.absolute())
    if existing != target.absolute() and not existing.is_dir():
        raise CommandLineError(f"{key}={target}: {existing} is a file, not a folder; choose another folder")
    if existing == target.absolute() and not target.is_dir():
        raise CommandLineError(f"{key}={target}: exists and is not a folder; choose another folder")
    try:
        fd, probe = tempfile.mkstemp(prefix=".fedbench-write-check-", dir=existing)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        exc.filename = str(existing)  # name the folder, not the probe
        line = environment_problem(exc)
        if line is None:
            raise CommandLineError(f"{key}={target}: cannot write in {existing} ({exc.strerror})") from None
        raise CommandLineError(f"{key}={target}: {line}", EXIT_ENVIRONMENT) from None
