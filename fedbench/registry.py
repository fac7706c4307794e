"""The registry of components: fedbench's own, plus plugins declared through an entry point.

A component is a dataclass decorated with :func:`register` (``@register("method", "lora")``).
:func:`load` imports fedbench's component modules (every module under the packages in
``OWN_PACKAGES``, so a new method file is found without a list to edit) and the plugins named
in the ``fedbench.components`` entry-point group, then stores each component as a Hydra
structured config ``/fedbench/<group>/<name>`` (its ``_target_`` plus every field with its
default). A YAML file in ``conf/<group>/`` selects one with
``defaults: [/fedbench/<group>/<name>@_here_]`` and overrides only what differs, so every field
is settable with plain ``key=value`` and the dataclass is the one place defaults live.

A config's ``_target_`` must be a registered component: anything else is refused before it is
imported (:func:`lookup`).

Plugins: a package declares, in its ``pyproject.toml``::

    [project.entry-points."fedbench.components"]
    my_method = "my_package.my_method"     # a module whose @register decorators run on import

Its components are then options like fedbench's own (``fedbench method=my_method``); a
plugin component without a YAML of its own is offered under ``<group>/<name>`` directly.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import pkgutil
from contextvars import ContextVar
from dataclasses import dataclass
from importlib.metadata import entry_points

from fedbench.contracts import GROUP_BASES
from fedbench.errors import ConfigError

ENTRY_POINT_GROUP = "fedbench.components"
# Packages (or modules) whose modules hold fedbench's own components.
OWN_PACKAGES = (
    "fedbench.models",
    "fedbench.methods",
    "fedbench.data",
    "fedbench.fl.strategies",
    "fedbench.fl.comm",
    "fedbench.fl.privacy",
    "fedbench.fl.system",
    "fedbench.trackers",
)
# Config keys of a run that name a component, and the registry group each draws from.
CONFIG_GROUPS = {
    "model": "model",
    "method": "method",
    "data": "data",
    "strategy": "strategy",
    "compression.up": "codec",
    "compression.down": "codec",
    "privacy": "privacy",
    "system": "system",
}
SCHEMA_ROOT = "fedbench"  # structured configs live under /fedbench/<group>/<name>
# The config key under which several trackers are selected at once (``logger=[csv,mlflow]``):
# each selected option is its own section, ``logger.<name>``, holding a registered "logger".
TRACKERS_KEY = "logger"


def group_of(key: str) -> str | None:
    """The registry group a config section draws from (``method`` -> method,
    ``compression.up`` -> codec, ``logger.mlflow`` -> logger), or None."""
    if key in CONFIG_GROUPS:
        return CONFIG_GROUPS[key]
    if key.split(".")[0] == TRACKERS_KEY and key.count(".") == 1:
        return "logger"
    return None


@dataclass(frozen=True)
class Entry:
    group: str
    name: str
    cls: type
    origin: str  # "fedbench" or the plugin's entry-point name

    @property
    def target(self) -> str:
        return f"{self.cls.__module__}.{self.cls.__qualname__}"


_building: ContextVar[str | None] = ContextVar("fedbench_building", default=None)
_entries: dict[str, Entry] = {}  # target -> entry
_by_name: dict[tuple[str, str], Entry] = {}
_loaded = False
_origin = "fedbench"


def register(group: str, name: str):
    """Class decorator: make a component dataclass selectable as ``<group>=<name>``."""
    if group not in GROUP_BASES:
        raise ValueError(f"unknown component group {group!r}; groups: {', '.join(GROUP_BASES)}")

    def deco(cls: type) -> type:
        if not dataclasses.is_dataclass(cls):
            raise TypeError(f"{cls.__qualname__}: a registered component must be a dataclass")
        if not issubclass(cls, GROUP_BASES[group]):
            raise TypeError(
                f"{cls.__qualname__}: a {group} must derive from "
                f"fedbench.contracts.{GROUP_BASES[group].__name__}"
            )
        entry = Entry(group, name, cls, _origin)
        old = _by_name.get((group, name))
        if old is not None and old.target != entry.target:
            raise ValueError(f"{group}={name} is registered twice: {old.target} and {entry.target}")
        _entries[entry.target] = entry
        _by_name[(group, name)] = entry
        if _loaded:
            _store(entry)
        return cls

    return deco


def _import_own() -> None:
    for pkg_name in OWN_PACKAGES:
        pkg = importlib.import_module(pkg_name)
        if hasattr(pkg, "__path__"):
            for info in pkgutil.walk_packages(pkg.__path__, prefix=pkg_name + "."):
                importlib.import_module(info.name)


def _import_plugins() -> None:
    global _origin
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        _origin = ep.name
        try:
            ep.load()
        finally:
            _origin = "fedbench"


def _store(entry: Entry) -> None:
    from hydra.core.config_store import ConfigStore
    from omegaconf import OmegaConf

    node = OmegaConf.merge(OmegaConf.create({"_target_": entry.target}), OmegaConf.structured(entry.cls))
    cs = ConfigStore.instance()
    cs.store(group=f"{SCHEMA_ROOT}/{entry.group}", name=entry.name, node=node, provider="fedbench")
    if entry.origin != "fedbench":  # a plugin: also selectable directly as <group>=<name>
        for key, group in CONFIG_GROUPS.items():
            if group == entry.group:
                cs.store(group=key.replace(".", "/"), name=entry.name, node=node, provider=entry.origin)
        if entry.group == "logger":  # logger=[csv,<name>]: its section is logger.<name>
            wrapped = OmegaConf.create({entry.name: node})
            cs.store(group=TRACKERS_KEY, name=entry.name, node=wrapped, provider=entry.origin)


def load() -> None:
    """Import every component and store its structured config (idempotent)."""
    global _loaded
    if _loaded:
        return
    _import_own()
    _import_plugins()
    for entry in list(_entries.values()):
        _store(entry)
    _loaded = True


def entries(group: str | None = None) -> list[Entry]:
    load()
    return [e for e in _entries.values() if group is None or e.group == group]


def entry(group: str, name: str) -> Entry:
    """The component registered as ``<group>=<name>``."""
    load()
    return _by_name[(group, name)]


def lookup(target: object, key: str) -> Entry:
    """The registered component a config's ``_target_`` names; refused (before any import)
    if it names anything else."""
    load()
    entry = _entries.get(target) if isinstance(target, str) else None
    if entry is None:
        group = group_of(key) or key
        known = ", ".join(sorted(f"{e.name} ({e.target})" for e in _entries.values() if e.group == group))
        raise ConfigError(
            f"{key}._target_",
            f"is not a registered {group} component; registered: "
            f"{known or 'none'} (plugins register through the {ENTRY_POINT_GROUP!r} "
            "entry-point group)",
            target,
        )
    expected = group_of(key)
    if expected is not None and entry.group != expected:
        raise ConfigError(f"{key}._target_", f"names a {entry.group}, not a {expected}", target)
    return entry


def describe_fields(cls: type) -> str:
    """``rank=4, alpha=1.0, aggregation=naive (naive|ffa|exact)``: a component's keys, their
    defaults and, where a field declares them, its allowed values."""
    parts = []
    for f in dataclasses.fields(cls):
        if f.name.startswith("_"):
            continue
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = "???"
        text = f"{f.name}={'null' if default is None else default}"
        choices = f.metadata.get("choices")
        if choices:
            text += f" ({'|'.join(map(str, choices))})"
        parts.append(text)
    return ", ".join(parts) or "none"


def choice(default: str, choices: tuple[str, ...], **kw):
    """A string field with a fixed set of values, checked by :func:`check_choices` and listed in
    error messages: ``aggregation: str = choice("naive", ("naive", "ffa", "exact"))``."""
    if default not in choices:
        raise ValueError(f"default {default!r} not in {choices}")
    return dataclasses.field(default=default, metadata={"choices": tuple(choices)}, **kw)


@contextlib.contextmanager
def building(key: str):
    """While a component is built from config section ``key`` (e.g. ``compression.up``), its
    checks name the key in their errors (:func:`config_key`)."""
    token = _building.set(key)
    try:
        yield
    finally:
        _building.reset(token)


def config_key(default: str) -> str:
    """The config key of the component being built, or ``default`` outside :func:`building`."""
    return _building.get() or default


def check_choices(obj: object, key: str | None = None) -> None:
    """Refuse a value outside a ``choice`` field's allowed values (one line). Components call it
    from ``__post_init__``; ``key`` defaults to the section being built."""
    key = key or config_key(type(obj).__name__)
    for f in dataclasses.fields(obj):
        choices = f.metadata.get("choices")
        if choices and getattr(obj, f.name) not in choices:
            raise ConfigError(
                f"{key}.{f.name}", f"must be one of: {', '.join(map(str, choices))}", getattr(obj, f.name)
            )
