"""``seg2tflite convert --module FILE.py:FUNCTION [--weights FILE.safetensors]``: the user's own model.

The user's file is their own code, which they trust: it is imported and ``FUNCTION()`` is called
with no arguments; it must return a ``torch.nn.Module``. ``--weights`` loads a safetensors state
dict into it strictly (every key the model has, no key it lacks, the same shapes), so a weights
file of another model is refused with the keys that do not fit rather than converted half-random.
"""

from __future__ import annotations

import contextlib
import importlib.util
import inspect
import io
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
    with _as_a_library(spec, f"importing {file}"):
        module_spec.loader.exec_module(module)
    build = getattr(module, function, None)
    if not callable(build):
        raise UserError(f"--module {spec}: {file} defines no function {function!r}")
    with _as_a_library(spec, f"{function}()"):
        model = build()
    if not isinstance(model, torch.nn.Module):
        raise UserError(f"--module {spec}: {function}() returned a {type(model).__name__}; it must return a torch.nn.Module")
    _check_one_input(model, spec)
    return model.eval()


@contextlib.contextmanager
def _as_a_library(spec: str, doing: str):
    """Run the user's code as a library: it sees an argv of its own file alone (never seg2tflite's
    options), and whatever it raises, ``SystemExit`` included, is one line naming ``--module``.
    What it prints is held back and shown only when it returns (an argparse error of its own is
    quoted in the one line instead of looking like seg2tflite's)."""
    file = spec.rpartition(":")[0]
    argv, out, err = sys.argv, io.StringIO(), io.StringIO()
    sys.argv = [file]
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            yield
    except SystemExit as e:
        said = [line.strip() for line in (err.getvalue() + out.getvalue()).splitlines() if line.strip()]
        quoted = f"; it printed: {said[-1][:200]}" if said else ""
        raise UserError(
            f"--module {spec}: {doing} exited (SystemExit {e.code!r}){quoted}; the file must define the function "
            'without running a script at import (put that under `if __name__ == "__main__":`)'
        ) from None
    except Exception as e:  # noqa: BLE001 - the user's code: say where it failed, in one line
        raise UserError(f"--module {spec}: {doing} failed: {type(e).__name__}: {_first_line(e)}") from None
    finally:
        sys.argv = argv
    sys.stdout.write(out.getvalue())
    sys.stderr.write(err.getvalue())


def _check_one_input(model, spec: str) -> None:
    """The model must take one image tensor: ``forward(x)``."""
    try:
        parameters = inspect.signature(model.forward).parameters.values()
    except (TypeError, ValueError):
        return
    if any(p.kind is p.VAR_POSITIONAL for p in parameters):
        return
    required = [p.name for p in parameters if p.default is p.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if len(required) != 1:
        raise UserError(
            f"--module {spec}: the model's forward takes {len(required)} inputs ({', '.join(required) or 'none'}); "
            "seg2tflite converts single-image models, forward(x) with x a (1, 3, H, W) tensor: wrap it in a module that "
            "takes the image alone"
        )


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
