"""Run settings, config validation and the config's identity (hash).

Every component is a registered dataclass (:mod:`fedbench.registry`) whose fields are its
settings and defaults; :func:`validate` builds each one from its section of a composed config
(unknown keys, wrong types and bad values fail with one :class:`ConfigError` line naming the
selected option and its keys) and runs the cross-component checks, before any training.
:class:`RunSettings` and :class:`FLConfig` are the top level and the ``fl`` section, stored the
same way (``/fedbench/run``, ``/fedbench/fl``) so ``conf/config.yaml`` does not repeat them.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, List, Optional  # noqa: UP035 (OmegaConf reads typing generics)

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from fedbench import registry
from fedbench.errors import ConfigError
from fedbench.fl.wire import ENTROPY, Wire
from fedbench.registry import CONFIG_GROUPS, TRACKERS_KEY, check_choices, choice, describe_fields

__all__ = [
    "ConfigError",
    "FLConfig",
    "RunSettings",
    "RunSpec",
    "validate",
    "config_hash",
    "compose",
    "CONF_DIR",
]

COMPONENT_GROUPS = ("model", "method", "data", "strategy")


def _conf_dir() -> Path:
    """``conf/``: inside the installed package (a wheel), else the source checkout's top level."""
    here = Path(__file__).resolve().parent
    packaged = here / "conf"
    return packaged if (packaged / "config.yaml").is_file() else here.parent / "conf"


CONF_DIR = _conf_dir()


@dataclass
class RunSettings:
    """The top-level settings of a run (beside the component groups and ``fl``)."""

    seed: int = 42
    # torch intra-op threads; null = torch's default (the tutorial's numbers are 2-thread numbers
    # on a 2-core machine). Thread count changes float rounding; it is recorded in summary.json.
    threads: Optional[int] = None  # noqa: UP045 (OmegaConf)
    # Continue a run folder that already holds this config: skip it if complete, else resume from
    # its last checkpoint (bit for bit). On the command line, resume=PATH continues run folder PATH.
    resume: bool = True
    checkpoint_every: int = 1  # rounds between checkpoints (0 = none); the last round always saves
    # Checkpoints kept (the newest N): resume falls back to an older one if the newest is damaged.
    checkpoint_keep: int = 2
    quiet: bool = False  # no progress bar (the per-round log lines stay)
    # Random streams (fedbench.rng): paired = one stream per purpose, so runs that differ only in
    # method, codec, strategy, lr or evaluation schedule see the same clients and batches;
    # tutorial = the seed script's single coupled stream (the only way to reproduce its numbers).
    rng: str = choice("paired", ("paired", "tutorial"))
    # Where the run computes (fedbench.device): auto (cuda if available, else cpu) | cpu | cuda | mps.
    device: str = choice("auto", ("auto", "cpu", "cuda", "mps"))
    # fp32 | bf16 (autocast of Hugging Face models' forward; weights and optimizer stay fp32).
    precision: str = choice("fp32", ("fp32", "bf16"))

    def __post_init__(self) -> None:
        from fedbench.device import check_precision, resolve_device

        resolve_device(self.device)
        check_precision(self.precision, self.device)
        if self.rng not in ("paired", "tutorial"):
            raise ConfigError("rng", "must be one of: paired, tutorial", self.rng)
        if self.seed < 0:
            raise ConfigError("seed", "must be an integer >= 0", self.seed)
        if self.threads is not None and self.threads < 1:
            raise ConfigError("threads", "must be null (torch's default) or an integer >= 1", self.threads)
        if self.checkpoint_every < 0:
            raise ConfigError(
                "checkpoint_every", "must be an integer >= 0 (0 = no checkpoints)", self.checkpoint_every
            )
        if self.checkpoint_keep < 1:
            raise ConfigError(
                "checkpoint_keep",
                "must be an integer >= 1 (the newest checkpoints kept for resume)",
                self.checkpoint_keep,
            )


@dataclass
class FLConfig:
    """The federated loop. Names follow the tutorial's ``FoundationConfig``."""

    num_rounds: int = 30
    num_clients: int = 10
    clients_per_round: int = 5
    local_epochs: int = 2
    batch_size: int = 16
    lr: float = 0.001
    weight_decay: float = 0.01  # torch.optim.AdamW's default, as in the tutorial
    # Client selection draws from numpy's legacy RandomState with this seed. The tutorial's test
    # set reseeds numpy's global RNG with 999 last, so its selection always starts from 999.
    sampling_seed: int = 999
    eval_batch_size: int = 64
    # Use a model's hand-written training step when it has one (bit-identical to autograd).
    fast_step: bool = True
    # exact: bit-exact with the tutorial; vectorized: all selected clients train at once.
    engine: str = choice("exact", ("exact", "vectorized"))
    # Head-only training on a frozen backbone: compute backbone features once and cache them.
    feature_cache: bool = True
    # Client sampling: uniform (the tutorial) or weighted by local data size.
    sampling: str = choice("uniform", ("uniform", "weighted"))
    # Probability that a selected client trains but its update never arrives.
    dropout: float = 0.0
    # Injected faults, "KIND:CLIENT:ROUND" (see fedbench.fl.faults).
    faults: List[str] = field(default_factory=list)  # noqa: UP006 (OmegaConf)
    # Evaluate the global model every N rounds (the last round always); other rounds' rows keep
    # their bytes and losses with accuracy and test loss left empty (NaN).
    eval_every: int = 1

    def __post_init__(self) -> None:
        check_choices(self, "fl")
        for key in (
            "num_rounds",
            "eval_every",
            "num_clients",
            "clients_per_round",
            "local_epochs",
            "batch_size",
            "eval_batch_size",
        ):
            if getattr(self, key) < 1:
                raise ConfigError(f"fl.{key}", "must be an integer >= 1", getattr(self, key))
        if self.clients_per_round > self.num_clients:
            raise ConfigError(
                "fl.clients_per_round",
                f"must be <= fl.num_clients ({self.num_clients})",
                self.clients_per_round,
            )
        if not self.lr > 0:
            raise ConfigError("fl.lr", "must be a float > 0", self.lr)
        if self.weight_decay < 0:
            raise ConfigError("fl.weight_decay", "must be a float >= 0", self.weight_decay)
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError("fl.dropout", "must be a probability in [0, 1)", self.dropout)
        from fedbench.fl.faults import parse_fault

        for spec in self.faults:
            parse_fault(spec)
        if self.sampling_seed < 0:
            raise ConfigError("fl.sampling_seed", "must be an integer >= 0", self.sampling_seed)


def _store_settings() -> None:
    from hydra.core.config_store import ConfigStore

    cs = ConfigStore.instance()
    # Top level: a plain node (the primary config also holds the groups); fl: typed.
    cs.store(
        group="fedbench",
        name="run",
        node=OmegaConf.create(dataclasses.asdict(RunSettings())),
        provider="fedbench",
    )
    cs.store(group="fedbench", name="fl", node=FLConfig, provider="fedbench")


@functools.cache
def load_registry() -> None:
    """Make every component and setting available to Hydra (call before composing; once)."""
    registry.load()
    _store_settings()


def compose(
    overrides: list[str] | tuple[str, ...] = (),
    config_name: str = "config",
    return_hydra_config: bool = False,
) -> DictConfig:
    """Compose fedbench's config with overrides, as the CLI does (for Python, tests, notebooks)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    load_registry()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            return hydra_compose(
                config_name, overrides=list(overrides), return_hydra_config=return_hydra_config
            )
    finally:
        GlobalHydra.instance().clear()


@dataclass
class RunSpec:
    """A validated run: typed top-level values and instantiated components."""

    seed: int
    threads: int | None
    resume: bool
    checkpoint_every: int
    fl: FLConfig
    model: Any
    method: Any
    data: Any
    strategy: Any
    compression_up: Any
    compression_down: Any
    resolved: dict = field(repr=False)
    quiet: bool = False
    rng: str = "paired"
    checkpoint_keep: int = 2
    privacy: Any = None  # fedbench.fl.privacy (validate sets it; None reads as privacy=none)
    system: Any = None  # fedbench.fl.system (validate sets it; None reads as system=none)
    entropy: str = "none"  # compression.entropy: also measure each message's zstd size
    # logger=: the selected experiment trackers, name -> fedbench.contracts.Tracker (csv's files
    # are written whatever this holds); not part of ``resolved``, nor of the config hash.
    loggers: dict = field(default_factory=dict)
    device: str = "auto"  # fedbench.device (an execution key: not part of the run's identity)
    precision: str = "fp32"

    @functools.cached_property
    def config_hash(self) -> str:
        """Computed once per spec: the run asks for it at every checkpoint."""
        return config_hash(self.resolved)


# Groups added after run folders existed, and the option such folders ran with: a config that
# lacks the group means that option, and that option at its defaults is left out of the identity.
LATER_GROUPS = {"privacy": "none", "system": "none"}

# How a run is executed, not what it computes: left out of its identity. (``logger`` never
# reaches a recorded config: validate() takes it out; it is listed for configs that hold it.)
EXECUTION_KEYS = ("threads", "resume", "checkpoint_every", "checkpoint_keep", "quiet", "device", TRACKERS_KEY)


def _non_default(section: dict, cls: type) -> dict:
    """A component section without the fields that equal the dataclass's default."""
    defaults = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            defaults[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            defaults[f.name] = f.default_factory()
    return {k: v for k, v in section.items() if k not in defaults or defaults[k] != v}


def canonical(resolved: dict) -> dict:
    """The identity of a resolved config: execution keys dropped, and every component field or
    ``fl`` setting that equals its dataclass default left out. A field added later with a
    default therefore leaves the identity of runs that keep it at the default unchanged."""
    ident = {k: v for k, v in resolved.items() if k not in EXECUTION_KEYS}
    # Configs recorded before ``rng`` existed ran on the tutorial's single stream.
    ident.setdefault("rng", "tutorial")
    # precision (added later) at its default fp32 is left out, as fields at their defaults are.
    if ident.get("precision") == "fp32":
        del ident["precision"]
    # Configs recorded before ``privacy`` existed ran without it: privacy=none at its defaults
    # is left out of the identity (below), so their hash stays what it was.
    if isinstance(ident.get("fl"), dict):
        ident["fl"] = _non_default(ident["fl"], FLConfig)
    for key in CONFIG_GROUPS:
        head, _, side = key.partition(".")
        parent = ident.get(head)
        section = parent.get(side) if side and isinstance(parent, dict) else parent
        if not isinstance(section, dict) or "_target_" not in section:
            continue
        try:
            entry = registry.lookup(section["_target_"], key)
        except ConfigError:  # an unknown or retired component: keep its section whole
            continue
        slim = _non_default(section, entry.cls)
        if side:
            ident[head] = {**ident[head], side: slim}
        else:
            ident[head] = slim
    for key, default in LATER_GROUPS.items():
        if ident.get(key) == {"_target_": registry.entry(key, default).target}:
            del ident[key]
    # compression.entropy (added later) at its default "none" is left out likewise.
    comp = ident.get("compression")
    if isinstance(comp, dict) and comp.get("entropy", "none") == "none" and "entropy" in comp:
        ident["compression"] = {k: v for k, v in comp.items() if k != "entropy"}
    return ident


def config_hash(resolved: dict) -> str:
    """sha256 (12 hex digits) of the canonical JSON of :func:`canonical`."""
    return hashlib.sha256(json.dumps(canonical(resolved), sort_keys=True).encode()).hexdigest()[:12]


def _option(entry: registry.Entry, key: str) -> str:
    return f"{key}={entry.name}"


def _type_text(annotation: Any) -> str:
    """``Optional[int]`` -> ``an integer or null``: a field's type as an error message says it."""
    text = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", str(annotation))
    optional = text.startswith("Optional[")
    inner = text[len("Optional[") : -1] if optional else text
    words = {
        "int": "an integer",
        "float": "a float",
        "bool": "true or false",
        "str": "a string",
        "List[str]": "a list of strings",
        "List[int]": "a list of integers",
    }
    out = words.get(inner, f"of type {inner}")
    return f"{out} or null" if optional else out


def _merge_into(schema: type, section: Any, key: str, label: str | None = None) -> Any:
    """Build a dataclass from a config section; one-line errors name the key and the schema's
    keys (``label``: how to name the selected option, e.g. ``method=lora``)."""
    label = label or key
    try:
        return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(schema), section))
    except ConfigError:
        raise
    except OmegaConfBaseException as exc:
        sub = str(exc.key) if getattr(exc, "key", None) is not None else None
        full = ".".join(p for p in (key, sub) if p) or "config"
        names = {f.name: f for f in dataclasses.fields(schema)}
        if sub is not None and sub not in names:
            raise ConfigError(full, f"unknown key for {label}; its keys: {describe_fields(schema)}") from None
        if sub in names:
            raise ConfigError(
                full, f"must be {_type_text(names[sub].type)}", getattr(exc, "value", None)
            ) from None
        raise ConfigError(full, str(exc).splitlines()[0]) from None


def instantiate(section: Any, key: str) -> Any:
    """Build the registered component a config section names with ``_target_``."""
    if not isinstance(section, (dict, DictConfig)) or "_target_" not in section:
        raise ConfigError(key, "must be a config group option with a _target_")
    data = OmegaConf.to_container(section, resolve=True) if isinstance(section, DictConfig) else dict(section)
    entry = registry.lookup(data.pop("_target_"), key)
    with registry.building(key):
        obj = _merge_into(entry.cls, data, key, _option(entry, key))
        check_choices(obj, key)
    return obj


def _loggers(section: Any) -> dict:
    """The trackers ``logger=[csv,tensorboard,...]`` selected: ``logger.<name>`` sections."""
    if section is None:
        return {}
    if not isinstance(section, dict):
        raise ConfigError(TRACKERS_KEY, "must be chosen as an option, e.g. logger=[csv,tensorboard,mlflow]")
    return {name: instantiate(sub, f"{TRACKERS_KEY}.{name}") for name, sub in section.items()}


def validate(cfg: DictConfig | dict) -> RunSpec:
    """Check a composed config and build its components. Raises :class:`ConfigError`."""
    load_registry()
    if isinstance(cfg, dict):
        cfg = OmegaConf.create(cfg)
    try:
        resolved = OmegaConf.to_container(cfg, resolve=True)
    except OmegaConfBaseException as exc:
        raise ConfigError(str(getattr(exc, "full_key", "config")), str(exc).splitlines()[0]) from None
    loggers = _loggers(resolved.pop(TRACKERS_KEY, None))
    settings_keys = [f.name for f in dataclasses.fields(RunSettings)]
    allowed_top = {*settings_keys, "fl", "compression", *COMPONENT_GROUPS, *LATER_GROUPS, TRACKERS_KEY}
    for key in resolved:
        if key not in allowed_top:
            raise ConfigError(key, f"unknown key; known top-level keys: {', '.join(sorted(allowed_top))}")
    for key in ("fl", "compression", *COMPONENT_GROUPS):
        if key not in resolved:
            raise ConfigError(key, "is missing")
    settings = _merge_into(
        RunSettings, {k: resolved[k] for k in settings_keys if k in resolved}, "", "the run's top level"
    )
    fl = _merge_into(FLConfig, resolved["fl"], "fl")
    comps = {k: instantiate(resolved[k], k) for k in COMPONENT_GROUPS}
    comp = resolved["compression"]
    if not isinstance(comp, dict) or not {"up", "down"} <= set(comp) <= {"up", "down", "entropy"}:
        raise ConfigError("compression", "must have the keys 'up' and 'down' (and optionally 'entropy')")
    entropy = comp.get("entropy", "none")
    if entropy not in ENTROPY:
        raise ConfigError("compression.entropy", f"must be one of: {', '.join(ENTROPY)}", entropy)
    if entropy == "zstd":
        Wire(entropy)  # a missing zstandard package is refused here, before the run
    up = instantiate(comp["up"], "compression.up")
    down = instantiate(comp["down"], "compression.down")
    if down.delta:
        raise ConfigError(
            "compression.down",
            f"{type(down).__name__} sends changes against per-receiver "
            "state, which the downlink does not keep; use none, fp16, bf16 or int8",
        )
    for key, default in LATER_GROUPS.items():
        section = resolved.get(key, {"_target_": registry.entry(key, default).target})
        comps[key] = instantiate(section, key)
    # Cross-component checks (e.g. the model's classes cover the data's labels; privacy=central
    # refuses a median), before training.
    for c in [*comps.values(), *loggers.values()]:
        c.check_compatible(comps, fl)
    from fedbench.device import check_precision

    check_precision(settings.precision, settings.device, comps["model"])
    return RunSpec(
        device=settings.device,
        precision=settings.precision,
        seed=settings.seed,
        threads=settings.threads,
        resume=settings.resume,
        checkpoint_every=settings.checkpoint_every,
        checkpoint_keep=settings.checkpoint_keep,
        quiet=settings.quiet,
        rng=settings.rng,
        fl=fl,
        compression_up=up,
        compression_down=down,
        entropy=entropy,
        resolved=resolved,
        loggers=loggers,
        **comps,
    )
