"""Checkpoints: this project's safetensors + JSON pair, Hugging Face folders, plain state dicts.

Nothing here unpickles code: safetensors files are read as tensors, and ``.pt``/``.pth``/``.bin``
files only with ``torch.load(weights_only=True)``, which refuses any pickle that would run code.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from seg2tflite.atomic import atomic_path, atomic_write_text
from seg2tflite.errors import UserError, setting

WEIGHTS_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin")
HF_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


def save_checkpoint(model: nn.Module, path: str | Path, extra: dict | None = None) -> Path:
    """Write ``path`` (``.safetensors``) and the JSON config beside it; return the weights path."""
    path = Path(path).with_suffix(".safetensors")
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    config = asdict(model.model_config) if hasattr(model, "model_config") else {}
    config.update(extra or {})
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata={"format": "pt"})
    atomic_write_text(path.with_suffix(".json"), json.dumps(config, indent=2, default=list) + "\n")
    return path


def read_checkpoint_config(path: str | Path) -> dict:
    """The JSON config saved beside this project's checkpoint."""
    weights = resolve_weights_file(path)
    config_path = weights.with_suffix(".json")
    if not config_path.is_file():
        raise UserError(
            f"{weights}: no {config_path.name} beside it; pass {setting('model', 'NAME', 'the model name')} explicitly"
        )
    try:
        config = json.loads(config_path.read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"{config_path}: unreadable checkpoint config ({e})") from None
    return checked_config(config, config_path)


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _numbers(value, n: int) -> bool:
    return (
        isinstance(value, list)
        and len(value) == n
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) and v == v for v in value)
    )


def checked_config(config, source: Path) -> dict:
    """The checkpoint config with the fields later steps read checked for type; a wrong one is a
    ``UserError`` naming the field and the file."""
    if not isinstance(config, dict):
        raise UserError(f"{source}: expected a JSON object (the checkpoint config), found {type(config).__name__}")
    problems = {
        "name": "a registered model name" if "name" in config and not isinstance(config["name"], str) else None,
        "num_classes": "a class count in 1..255"
        if config.get("num_classes") is not None and not (_is_int(config["num_classes"]) and 0 < config["num_classes"] <= 255)
        else None,
        "kwargs": "an object of keyword arguments" if config.get("kwargs") is not None and not isinstance(config["kwargs"], dict) else None,
        "input_size": "[H, W], two positive integers"
        if config.get("input_size") is not None
        and not (isinstance(config["input_size"], list) and len(config["input_size"]) == 2
                 and all(_is_int(v) and v > 0 for v in config["input_size"]))
        else None,
        "mean": "three numbers" if config.get("mean") is not None and not _numbers(config["mean"], 3) else None,
        "std": "three positive numbers"
        if config.get("std") is not None and not (_numbers(config["std"], 3) and min(config["std"]) > 0)
        else None,
    }  # fmt: skip
    for key, expected in problems.items():
        if expected:
            raise UserError(f"{source}: {key!r} is {config[key]!r}, not {expected}; fix the file or save the checkpoint again")
    return config


def resolve_weights_file(path: str | Path) -> Path:
    """The weights file a checkpoint path means (a file, or a folder holding one)."""
    path = Path(path)
    if path.is_dir():
        for name in ("model.safetensors", *HF_WEIGHT_FILES, "best.safetensors", "last.safetensors"):
            if (path / name).is_file():
                return path / name
        raise UserError(f"{path}: no model.safetensors or pytorch_model.bin in this folder")
    if not path.is_file():
        raise UserError(f"{path}: checkpoint not found")
    if path.suffix not in WEIGHTS_SUFFIXES:
        raise UserError(f"{path}: unknown checkpoint type; use one of {', '.join(WEIGHTS_SUFFIXES)}")
    return path


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Load tensors from a checkpoint without ever running pickled code."""
    weights = resolve_weights_file(path)
    try:
        if weights.suffix == ".safetensors":
            return load_file(str(weights))
        state = torch.load(weights, map_location="cpu", weights_only=True)
    except (SafetensorError, OSError, RuntimeError, EOFError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"{weights}: not a readable weights file ({first[:200]})") from None
    except Exception as e:  # pickle.UnpicklingError and friends: refused, never executed
        raise UserError(
            f"{weights}: refused to load: it is not a plain tensor checkpoint ({type(e).__name__}); re-save it as safetensors"
        ) from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"{weights}: does not hold a state dict of tensors")
    return state


def load_state_dict_strict(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Copy ``state`` into ``model``; every key must map and every shape must match."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    mismatched = [
        f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
        for k in sorted(set(own) & set(state))
        if own[k].shape != state[k].shape
    ]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing keys ({', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys ({', '.join(unexpected[:5])}{' ...' if len(unexpected) > 5 else ''})")
    if mismatched:
        problems.append(
            f"{len(mismatched)} shape mismatches ({', '.join(mismatched[:3])}{' ...' if len(mismatched) > 3 else ''})"
        )
    if problems:
        name = getattr(getattr(model, "model_config", None), "name", type(model).__name__)
        raise UserError(
            f"{source}: does not fit {name}: {'; '.join(problems)}. Check {setting('model')} and {setting('num_classes')} match the checkpoint"
        )
    model.load_state_dict(state, strict=True)


def load_weights_into(model: nn.Module, checkpoint: str | Path) -> None:
    """Load a local checkpoint into ``model``, mapping foreign key names where the model can."""
    state = read_state_dict(checkpoint)
    if hasattr(model, "convert_foreign_state_dict"):
        state = model.convert_foreign_state_dict(state, source=str(checkpoint))
    load_state_dict_strict(model, state, str(checkpoint))
