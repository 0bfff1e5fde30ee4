"""``seg2tflite convert --module FILE.py:FUNCTION [--weights FILE.safetensors]``: the user's own model.

The user's file is their own code, which they trust: it is imported and ``FUNCTION()`` is called
with no arguments; it must return a ``torch.nn.Module``. ``--weights`` loads a safetensors state
dict into it strictly (every key the model has, no key it lacks, the same shapes), so a weights
file of another model is refused with the keys that do not fit rather than converted half-random.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

from seg2tflite.errors import UserError


def parse_module_spec(spec: str) -> tuple[Path, str]:
    """``path/to/file.py:build`` -> (path, function name); UserError saying the form otherwise."""
    path, sep, function = spec.rpartition(":")
    if not sep or not path or not function.isidentifier():
        raise UserError(f"--module {spec}: expected FILE.py:FUNCTION, e.g. --module my_model.py:build")
    file = Path(path)
    if not file.is_file():
        raise UserError(f"--module {spec}: {file} is not a file")
    return file, function


def build_user_model(spec: str):
    """Import the file, call its function, return the module (eval mode)."""
    import torch

    file, function = parse_module_spec(spec)
    name = f"seg2tflite_user_{file.stem}".replace("-", "_")
    module_spec = importlib.util.spec_from_file_location(name, file)
    if module_spec is None or module_spec.loader is None:
        raise UserError(f"--module {spec}: {file} cannot be imported as Python")
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[name] = module  # dataclasses and pickling look their module up here
    try:
        module_spec.loader.exec_module(module)
    except Exception as e:  # noqa: BLE001 - the user's code: say where it failed, in one line
        raise UserError(f"--module {spec}: importing {file} failed: {type(e).__name__}: {_first_line(e)}") from None
    build = getattr(module, function, None)
    if not callable(build):
        raise UserError(f"--module {spec}: {file} defines no function {function!r}")
    try:
        model = build()
    except Exception as e:  # noqa: BLE001
        raise UserError(f"--module {spec}: {function}() failed: {type(e).__name__}: {_first_line(e)}") from None
    if not isinstance(model, torch.nn.Module):
        raise UserError(f"--module {spec}: {function}() returned a {type(model).__name__}; it must return a torch.nn.Module")
    return model.eval()


def load_weights(model, weights: str | Path) -> None:
    """Load a safetensors state dict into ``model``, every key and shape matching."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(weights)
    if not path.is_file():
        raise UserError(f"--weights {weights}: file not found")
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise UserError(f"--weights {weights}: not a readable safetensors file ({_first_line(e)})") from None
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    mismatched = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or mismatched:
        parts = []
        for what, keys in (("missing", missing), ("not in the model", unexpected), ("of another shape", mismatched)):
            if keys:
                parts.append(f"{len(keys)} keys {what} (first: {keys[0]})")
        raise UserError(f"--weights {weights}: does not fit the model: {'; '.join(parts)}")
    model.load_state_dict(state, strict=True)


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0][:300] if text else "(no message)"
