"""Type checkers see the installed package: mypy, run against this venv, resolves every
``seg2tflite.*`` module and types the public API (the lazy exports included), and the README's
Python example checks clean."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from test_layers import ROOT, source_modules

PUBLIC = ("seg2tflite.converters", "seg2tflite.models", "seg2tflite.data", "seg2tflite.calibration", "seg2tflite.eval")
# Third-party packages are not what this test is about (and torch alone takes mypy ~20 s): their names are Any.
CONFIG = """\
[mypy]
follow_imports = silent
[mypy-torch.*,torchvision.*,numpy.*,tensorflow.*,tf_keras.*,onnx.*,onnxruntime.*,onnx2tf.*,timm.*,PIL.*,matplotlib.*,tqdm.*,transformers.*,safetensors.*,ai_edge_litert.*,mediapipe.*,cv2.*]
follow_imports = skip
"""


def _mypy(tmp_path: Path, source: str) -> list[str]:
    (tmp_path / "mypy.ini").write_text(CONFIG)
    (tmp_path / "check.py").write_text(source)
    done = subprocess.run(
        [sys.executable, "-m", "mypy", "--config-file", "mypy.ini", "--python-executable", sys.executable, "--no-incremental",
         "--cache-dir", str(tmp_path / "cache"), "check.py"],
        cwd=tmp_path, capture_output=True, text=True,
    )  # fmt: skip
    assert done.returncode in (0, 1), done.stderr
    return done.stdout.splitlines()


def _public_names() -> dict[str, list[str]]:
    import importlib

    return {module: list(importlib.import_module(module).__all__) for module in PUBLIC}


def test_every_module_and_public_name_resolves_with_a_type(tmp_path):
    public = _public_names()
    lines = [f"import {name}" for name in sorted(source_modules()) if not name.endswith("__main__")]
    for module, names in public.items():
        lines += [f"from {module} import {name} as _{i}_{name}" for i, name in enumerate(names)]
        lines += [f"reveal_type(_{i}_{name})" for i, name in enumerate(names)]
    output = _mypy(tmp_path, "\n".join(lines) + "\n")
    errors = [line for line in output if ": error:" in line]
    assert not errors, "\n".join(errors)
    revealed = [line for line in output if "Revealed type is" in line]
    assert len(revealed) == sum(map(len, public.values()))
    untyped = [line for line in revealed if line.endswith('"Any"')]
    assert not untyped, "public names a type checker sees as Any:\n" + "\n".join(untyped)


def test_a_misspelled_name_is_an_error(tmp_path):
    """The check above can fail: a name the package does not export is reported."""
    output = _mypy(tmp_path, "from seg2tflite.converters import ConvertConfigg\nimport seg2tflite.converters.no_such_module\n")
    assert any("ConvertConfigg" in line and ": error:" in line for line in output)
    assert any("no_such_module" in line and ": error:" in line for line in output)


def test_the_readme_python_example_checks_clean(tmp_path):
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)
    example = next(block for block in blocks if "from seg2tflite" in block)
    output = _mypy(tmp_path, example)
    assert not [line for line in output if ": error:" in line], "\n".join(output)
