"""The registry: one source of truth for settings, growth-proof config hashes, plugins, layering."""

from __future__ import annotations

import ast
import dataclasses
import json
import re
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import ROOT, StopAfter, compose_cfg, run_cli

from fedbench import registry
from fedbench.config import ConfigError, config_hash, validate
from fedbench.contracts import Strategy
from fedbench.fl.strategies import FedAvg
from fedbench.registry import register
from fedbench.run import execute

GROUP_DIRS = {
    "model": ["model"],
    "method": ["method"],
    "data": ["data"],
    "strategy": ["strategy"],
    "codec": ["compression/up", "compression/down"],
    "privacy": ["privacy"],
    "system": ["system"],
    "logger": ["logger"],
}


@pytest.fixture
def scratch_registry():
    """Register test-only components; the registry is restored afterwards."""
    entries, by_name = dict(registry._entries), dict(registry._by_name)
    yield
    registry._entries.clear()
    registry._entries.update(entries)
    registry._by_name.clear()
    registry._by_name.update(by_name)


def _yaml_option(path: Path) -> tuple[str, str] | None:
    """(group, name) of the ``/fedbench/<group>/<name>@_here_`` schema a YAML file builds on."""
    for line in path.read_text().splitlines():
        line = line.strip()
        if line.startswith("- /fedbench/") and line.endswith("@_here_"):
            group, name = line[len("- /fedbench/") : -len("@_here_")].split("/")
            return group, name
    return None


def test_every_option_file_names_a_registered_component_and_every_component_has_one():
    registry.load()
    used = set()
    for group, dirs in GROUP_DIRS.items():
        for d in dirs:
            for path in sorted((ROOT / "conf" / d).glob("*.yaml")):
                option = _yaml_option(path)
                assert option is not None, f"{path} does not select a /fedbench/<group>/<name> schema"
                assert option[0] == group, f"{path} builds on a {option[0]}, not a {group}"
                assert option in registry._by_name, path
                used.add(option)
                assert "_target_" not in path.read_text(), f"{path} repeats the _target_ the registry sets"
    own = {(e.group, e.name) for e in registry.entries() if e.origin == "fedbench"}
    assert own - used == set(), f"registered components without an option file: {sorted(own - used)}"


def _default_text(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list):
        return "[" + ",".join(map(str, value)) + "]"
    return str(value)


def test_every_field_of_every_option_is_settable_with_plain_key_value():
    """No ``++`` anywhere: the composed config holds every field of the selected component."""
    checked = 0
    for group, dirs in GROUP_DIRS.items():
        d = dirs[0]
        for path in sorted((ROOT / "conf" / d).glob("*.yaml")):
            _, name = _yaml_option(path)
            cls = registry._by_name[(group, name)].cls
            # a logger's section is logger.<name> (several are selected at once: logger=[csv,mlflow])
            key = f"logger.{path.stem}" if group == "logger" else d.replace("/", ".")
            for f in dataclasses.fields(cls):
                default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
                cfg = compose_cfg([f"{d}={path.stem}", f"{key}.{f.name}={_default_text(default)}"])
                node = cfg
                for part in key.split("."):
                    node = node[part]
                assert f.name in node
                checked += 1
    assert checked > 40


def test_no_plus_plus_overrides_in_docs_tests_or_experiments():
    files = [
        *ROOT.glob("conf/**/*.yaml"),
        ROOT / "README.md",
        *ROOT.glob("docs/**/*.md"),
        *ROOT.glob("scripts/*"),
        *ROOT.glob("tests/*.py"),
        *ROOT.glob("notebooks/*.ipynb"),
        ROOT / "Makefile",
    ]
    me = Path(__file__).resolve()
    # `++key=value` on a command line, `++key: a,b` in a sweeper's params
    pattern = re.compile(r"(^|[\s\"'\[,])\+\+[A-Za-z_][\w.]*\s*[=:]", re.M)
    offenders = [
        str(p.relative_to(ROOT))
        for p in files
        if p.is_file() and p.resolve() != me and pattern.search(p.read_text())
    ]
    assert offenders == []


def test_a_target_outside_the_registry_is_refused_before_it_is_imported():
    assert "tabnanny" not in sys.modules
    cfg = compose_cfg(["method._target_=tabnanny.NannyNag"])
    with pytest.raises(ConfigError, match="method._target_='tabnanny.NannyNag': is not a registered method"):
        validate(cfg)
    assert "tabnanny" not in sys.modules
    # a registered component of another group is refused too
    with pytest.raises(ConfigError, match="names a method, not a strategy"):
        validate(compose_cfg(["strategy._target_=fedbench.methods.lora.LoRA"]))


def test_register_refuses_what_is_not_a_component(scratch_registry):
    with pytest.raises(TypeError, match="must be a dataclass"):
        register("strategy", "not_a_dataclass")(type("X", (Strategy,), {}))

    @dataclass
    class Plain:
        x: int = 1

    with pytest.raises(TypeError, match="must derive from fedbench.contracts.Strategy"):
        register("strategy", "plain")(Plain)
    with pytest.raises(ValueError, match="unknown component group"):
        register("optimizer", "sgd")


def _growth_class(fields: dict):
    """A FedAvg-like strategy whose target name stays the same while its fields grow."""
    ns = {
        "__annotations__": {k: type(v) for k, v in fields.items()},
        **fields,
        "__module__": __name__,
        "__qualname__": "GrowingStrategy",
    }
    cls = dataclass(type("GrowingStrategy", (FedAvg,), ns))
    return register("strategy", "growing")(cls)


def test_adding_a_field_with_a_default_keeps_the_hash_and_the_run_folder(tmp_path, scratch_registry):
    """A test-only component gains a field: runs that leave it at its default keep their identity,
    so an interrupted run folder made before the field existed resumes (bit for bit) after."""
    target = f"{__name__}.GrowingStrategy"
    base = ["fl.num_rounds=3", "threads=1", f"strategy._target_={target}", "+strategy.mix=1"]
    _growth_class({"mix": 1})
    cfg_v1 = compose_cfg(base)
    h1 = validate(cfg_v1).config_hash
    with pytest.raises(KeyboardInterrupt):
        execute(cfg_v1, tmp_path / "run", on_round=StopAfter(1))
    reference = execute(cfg_v1, tmp_path / "reference")

    _growth_class({"mix": 1, "extra": 0.5})  # the component grows a field with a default
    resolved_v2 = {**validate(cfg_v1).resolved}
    resolved_v2["strategy"] = {**resolved_v2["strategy"], "extra": 0.5}  # as composing it now gives
    assert config_hash(resolved_v2) == h1
    assert config_hash({**resolved_v2, "strategy": {**resolved_v2["strategy"], "extra": 0.7}}) != h1
    cfg_v2 = compose_cfg([*base, "+strategy.extra=0.5"])
    assert validate(cfg_v2).config_hash == h1
    resumed = execute(cfg_v2, tmp_path / "run")
    assert [r["accuracy"] for r in resumed] == [r["accuracy"] for r in reference]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["resumed_from_round"] == 1 and summary["status"] == "complete"


def test_defaults_are_left_out_of_the_identity_but_changes_are_not():
    default = validate(compose_cfg([])).config_hash
    assert validate(compose_cfg(["method.rank=4", "method.aggregation=naive"])).config_hash == default
    assert validate(compose_cfg(["method.rank=8"])).config_hash != default
    assert validate(compose_cfg(["threads=1", "checkpoint_every=3"])).config_hash == default


def test_a_plugin_declared_by_an_entry_point_is_an_option(tmp_path):
    """A third-party package registers a method through the ``fedbench.components`` group."""
    pkg = tmp_path / "site"
    (pkg / "fedbench_plugin_demo").mkdir(parents=True)
    (pkg / "fedbench_plugin_demo" / "__init__.py").write_text(
        textwrap.dedent('''
        from dataclasses import dataclass
        from fedbench.methods.head_only import HeadOnly
        from fedbench.registry import register

        @register("method", "demo_probe")
        @dataclass
        class DemoProbe(HeadOnly):
            """Linear probing under another name, with a setting of its own."""
            note: str = "plugin"
    ''')
    )
    dist = pkg / "fedbench_plugin_demo-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: fedbench-plugin-demo\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[fedbench.components]\ndemo = fedbench_plugin_demo\n")
    res = run_cli(
        ["method=demo_probe", "method.note=hello", "fl.num_rounds=1", "threads=1", "hydra.run.dir=run"],
        cwd=tmp_path,
        extra_path=[pkg],
    )
    bad = run_cli(["method=demo_probe", "method.nope=1", "hydra.run.dir=bad"], cwd=tmp_path, extra_path=[pkg])
    assert res.returncode == 0, res.stderr[-2000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["config"]["method"] == {"_target_": "fedbench_plugin_demo.DemoProbe", "note": "hello"}
    assert summary["trainable_params"] == 256 * 10 + 10  # the head only
    assert bad.returncode == 2
    assert "method.nope: unknown key for method=demo_probe; its keys: note=plugin" in bad.stderr


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def test_no_two_modules_import_each_other():
    """Layering without loops: the import graph of fedbench's modules (function-level imports
    included) has no cycle."""
    modules = {_module_name(p): p for p in (ROOT / "fedbench").rglob("*.py")}
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text())):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            for t in targets:
                if t in modules and t != name:
                    graph[name].add(t)
    # Tarjan's strongly connected components
    index, low, stack, on, cycles, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10000))
    for v in graph:
        if v not in index:
            visit(v)
    assert cycles == []
