"""The catalog: every family declared once, by the module that computes it, named by the
Prometheus conventions; the package has no import cycles."""

from __future__ import annotations

import ast
from pathlib import Path

from bridge import catalog, config

PACKAGE = Path(catalog.__file__).parent


def test_names_are_unique_and_follow_the_conventions() -> None:
    names = [spec.name for spec in catalog.CATALOG]
    assert len(names) == len(set(names))
    for spec in catalog.CATALOG:
        assert spec.name.startswith("airflow_"), spec.name
        assert spec.name.endswith("_total") == (spec.kind == "counter"), spec.name
        assert spec.help.endswith("."), spec.name
        assert "run_id" not in spec.labels and "job" not in spec.labels, spec.name


def test_every_histogram_has_configurable_buckets() -> None:
    """A histogram without bounds would silently lose its empty buckets."""
    settings = config.load(None, {})
    assert set(settings.histogram_buckets) == {spec.name for spec in catalog.HISTOGRAMS}


def test_each_name_is_typed_in_one_module() -> None:
    for spec in catalog.CATALOG:
        holders = [p.relative_to(PACKAGE) for p in PACKAGE.rglob("*.py")
                   if f'"{spec.name}"' in p.read_text(encoding="utf-8")]
        assert len(holders) == 1, (spec.name, holders)


def _imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("bridge"):
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("bridge")}
    return found


def _module_graph() -> dict[str, set[str]]:
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        modules[name] = path
    return {name: {m for m in _imports(path) if m in modules and m != name}
            for name, path in modules.items()}


def test_no_import_cycles() -> None:
    graph = _module_graph()
    assert {"bridge.app", "bridge.stages.dag_runs", "bridge.cli"} <= set(graph)
    state: dict[str, int] = {}  # 1 visiting, 2 done

    def visit(name: str, trail: list[str]) -> None:
        state[name] = 1
        for target in sorted(graph[name]):
            assert state.get(target) != 1, " -> ".join([*trail, name, target])
            if target not in state:
                visit(target, [*trail, name])
        state[name] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [])
