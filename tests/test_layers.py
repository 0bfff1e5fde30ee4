"""The package's structure: one installed namespace, layers whose imports only point down, no cycles.

The imports are read from the source with ``ast`` (every import, also those inside functions), so
a lazy import that climbs a floor is caught as surely as a top-level one.
"""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Folder in the checkout -> the installed package it becomes (pyproject's package-dir).
FOLDERS = {
    "seg2tflite": "seg2tflite",
    "models": "seg2tflite.models",
    "calibration": "seg2tflite.calibration",
    "converters": "seg2tflite.converters",
    "eval": "seg2tflite.eval",
}
# Lowest floor first; a module may import its own floor and the floors below it.
LAYERS = (
    ("base", (
        "seg2tflite", "seg2tflite.errors", "seg2tflite.atomic", "seg2tflite.quiet", "seg2tflite.data", "seg2tflite.metrics",
        "seg2tflite.memory", "seg2tflite.records",
    )),
    ("models", ("seg2tflite.models",)),
    ("calibration", ("seg2tflite.calibration",)),
    ("converters", ("seg2tflite.converters",)),
    ("eval", ("seg2tflite.eval",)),
    ("app", (
        "seg2tflite.cli", "seg2tflite.cli_options", "seg2tflite.commands", "seg2tflite.convert_checks", "seg2tflite.__main__",
        "seg2tflite.demo", "seg2tflite.demo_config", "seg2tflite.train", "seg2tflite.train_config", "seg2tflite.compress",
        "seg2tflite.compress_config", "seg2tflite.latency", "seg2tflite.user_module",
    )),
)  # fmt: skip


def source_modules() -> dict[str, Path]:
    """Every module of the package, by its installed name."""
    modules = {}
    for folder, package in FOLDERS.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = list(path.relative_to(ROOT / folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            modules[".".join([package, *parts])] = path
    return modules


def layer_of(module: str) -> int:
    """The floor of a module: the longest prefix named in LAYERS decides."""
    best, floor = -1, None
    for i, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            inside = module == prefix or (prefix != "seg2tflite" and module.startswith(prefix + "."))  # the root: itself only
            if inside and len(prefix) > best:
                best, floor = len(prefix), i
    if floor is None:
        raise AssertionError(f"{module} is on no floor; add it to LAYERS in {Path(__file__).name}")
    return floor


def imports_of(path: Path, modules: set[str]) -> set[str]:
    """The project modules ``path`` imports (``from pkg import submodule`` counts as the submodule)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [
                f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in modules else node.module for alias in node.names
            ]
        else:
            continue
        found.update(name for name in names if name in modules)
    return found


def import_graph() -> dict[str, set[str]]:
    modules = source_modules()
    return {name: imports_of(path, set(modules)) - {name} for name, path in modules.items()}


def test_no_top_level_import_outside_the_namespace():
    for name, path in source_modules().items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                targets = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                bad = [t for t in targets if t.split(".")[0] in ("models", "converters", "calibration", "eval")]
                assert not bad, f"{path.relative_to(ROOT)}:{node.lineno} imports {bad[0]}; use seg2tflite.{bad[0]}"


def test_imports_only_point_down():
    upward = []
    for module, targets in import_graph().items():
        for target in targets:
            if layer_of(target) > layer_of(module):
                upward.append(f"{module} ({LAYERS[layer_of(module)][0]}) imports {target} ({LAYERS[layer_of(target)][0]})")
    assert not upward, "imports that climb a floor:\n" + "\n".join(sorted(upward))


def test_no_import_cycles():
    graph = import_graph()
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)):
            pytest.fail("import cycle: " + " -> ".join(cycle))


def test_the_layer_check_catches_a_planted_upward_import(tmp_path):
    """The checks above would fail on the two mistakes they exist for."""
    upward = tmp_path / "upward.py"
    upward.write_text("def f():\n    from seg2tflite.eval.report import build_report\n")
    assert imports_of(upward, {"seg2tflite.eval.report"}) == {"seg2tflite.eval.report"}
    assert layer_of("seg2tflite.eval.report") > layer_of("seg2tflite.converters.pipeline")
    assert layer_of("seg2tflite.data.spec") < layer_of("seg2tflite.models.registry")
    with pytest.raises(AssertionError, match="on no floor"):
        layer_of("seg2tflite.somewhere_new")


def test_wheel_holds_one_top_level_package(tmp_path):
    """A built wheel installs ``seg2tflite`` alone, with the four library folders inside it."""
    source = tmp_path / "source"  # a copy, so the build writes nothing into the checkout
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    for name in FOLDERS:
        shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), str(source)],
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("seg2tflite-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names if not n.split("/")[0].endswith((".dist-info", ".data"))}
    assert top == {"seg2tflite"}
    for package in ("models", "converters", "calibration", "eval"):
        assert f"seg2tflite/{package}/__init__.py" in names
    top_level = next(n for n in names if n.endswith(".dist-info/top_level.txt"))
    assert zipfile.ZipFile(wheel).read(top_level).decode().split() == ["seg2tflite"]
