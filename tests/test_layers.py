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
# Folder = floor, lowest first: a module may import its own floor and the floors below it. Each
# folder at the repository's top is installed as the package beside it; seg2tflite/ links to the others.
FLOORS = (
    ("seg2tflite", "seg2tflite"),
    ("models", "seg2tflite.models"),
    ("calibration", "seg2tflite.calibration"),
    ("converters", "seg2tflite.converters"),
    ("eval", "seg2tflite.eval"),
    ("app", "seg2tflite.app"),
)
FOLDERS = dict(FLOORS)


def source_modules() -> dict[str, Path]:
    """Every module of the package, by its installed name (the links in seg2tflite/ are the other floors)."""
    modules = {}
    for folder, package in FOLDERS.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            if (ROOT / folder / path.relative_to(ROOT / folder).parts[0]).is_symlink():
                continue
            parts = list(path.relative_to(ROOT / folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            modules[".".join([package, *parts])] = path
    return modules


def layer_of(module: str) -> int:
    """The floor of a module: the folder it lives in (the longest package prefix decides)."""
    floors = [i for i, (_, package) in enumerate(FLOORS) if module == package or module.startswith(package + ".")]
    if not floors:
        raise AssertionError(f"{module} is outside the seg2tflite namespace")
    return max(floors, key=lambda i: len(FLOORS[i][1]))


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
                bad = [t for t in targets if t.split(".")[0] in list(FOLDERS)[1:]]
                assert not bad, f"{path.relative_to(ROOT)}:{node.lineno} imports {bad[0]}; use seg2tflite.{bad[0]}"


def test_imports_only_point_down():
    upward = []
    for module, targets in import_graph().items():
        for target in targets:
            if layer_of(target) > layer_of(module):
                upward.append(f"{module} ({FLOORS[layer_of(module)][0]}) imports {target} ({FLOORS[layer_of(target)][0]})")
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
    assert layer_of("seg2tflite.somewhere_new") == 0  # a new file in seg2tflite/ is on the base floor
    assert layer_of("seg2tflite.app.matrix") == len(FLOORS) - 1
    with pytest.raises(AssertionError, match="outside"):
        layer_of("models.registry")


def test_wheel_holds_one_top_level_package(tmp_path):
    """A built wheel installs ``seg2tflite`` alone, with every floor inside it."""
    source = tmp_path / "source"  # a copy, so the build writes nothing into the checkout
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    for name in FOLDERS:
        shutil.copytree(ROOT / name, source / name, symlinks=True, ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), str(source)],
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("seg2tflite-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names if not n.split("/")[0].endswith((".dist-info", ".data"))}
    assert top == {"seg2tflite"}
    for package in list(FOLDERS)[1:]:
        assert f"seg2tflite/{package}/__init__.py" in names
    assert "seg2tflite/py.typed" in names  # type checkers read the installed package's annotations
    top_level = next(n for n in names if n.endswith(".dist-info/top_level.txt"))
    assert zipfile.ZipFile(wheel).read(top_level).decode().split() == ["seg2tflite"]


@pytest.mark.parametrize("folder", list(FOLDERS)[1:])
def test_a_floor_refuses_its_bare_name(folder):
    """With the checkout's root on sys.path (plain ``python`` there, many IDEs), ``import models``
    would load a second, empty copy of the package: it is one clear ImportError instead."""
    done = subprocess.run([sys.executable, "-c", f"import {folder}"], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 1
    assert f"ImportError: import seg2tflite.{folder}, not {folder}:" in done.stderr.splitlines()[-1]
