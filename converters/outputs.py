"""What a foreign model returns, turned into the one (1, K, H, W) logits tensor the chain carries.

torchvision's segmentation models return ``{'out': ..., 'aux': ...}``, Hugging Face models a
``ModelOutput`` (a dict with attributes) whose ``logits`` are at 1/4 of the input resolution,
others a tuple whose first element is the logits. ``adapt_outputs`` runs the model once on a
zero image and, when its output is anything but full-size logits, wraps it in ``LogitsAdapter``:
one module used both for the ONNX export and as the PyTorch reference, so parity compares the
function that was converted. How the logits were found is recorded in the manifest.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from seg2tflite.errors import UserError, setting

PREFERRED_KEYS = ("out", "logits")  # torchvision, Hugging Face


@dataclass(frozen=True)
class OutputChoice:
    """Where the logits are in what the model returns, and whether they are resized."""

    path: str  # "tensor", "tuple[0]", "dict['out']", ".logits"
    key: str | None  # the dict key or attribute read; None for a tensor or a tuple
    logits_size: tuple[int, int]  # (h, w) the model itself returns
    upsampled: bool  # resized bilinearly (half-pixel centres) to the input size

    def to_dict(self) -> dict:
        return {"selected": self.path, "logits_size": list(self.logits_size), "upsampled_to_input": self.upsampled}


def _is_tensor(value) -> bool:
    return isinstance(value, torch.Tensor)


def find_logits(output, key: str | None = None) -> tuple[str, str | None]:
    """(how to read the logits, the key) from one model output; UserError naming what it found."""
    if key is not None:
        if isinstance(output, Mapping) and _is_tensor(output.get(key)):
            return f"dict[{key!r}]", key
        if _is_tensor(getattr(output, key, None)):
            return f".{key}", key
        option = setting("output_key", key, f"output_key={key!r}")
        raise UserError(f"{option}: the model's output ({_describe(output)}) has no tensor under that name")
    if _is_tensor(output):
        return "tensor", None
    if isinstance(output, Mapping):  # Hugging Face's ModelOutput is one too
        tensors = [k for k, v in output.items() if _is_tensor(v)]
        for k in PREFERRED_KEYS:
            if k in tensors:
                return f"dict[{k!r}]", k
        if len(tensors) == 1:
            return f"dict[{tensors[0]!r}]", tensors[0]
        raise UserError(
            f"the model returns a dict with tensors {tensors}; name the logits with "
            f"{setting('output_key', tensors[0], f'output_key={tensors[0]!r}')} (or another of them)"
        )
    if isinstance(output, (tuple, list)) and output and _is_tensor(output[0]):
        return "tuple[0]", None
    if _is_tensor(getattr(output, "logits", None)):
        return ".logits", "logits"
    raise UserError(
        f"the model returns {_describe(output)}; expected logits: a tensor, a tuple, a dict or an object with .logits"
    )


def _describe(output) -> str:
    if _is_tensor(output):
        return f"a tensor of shape {tuple(output.shape)}"
    if isinstance(output, Mapping):
        return f"a {type(output).__name__} with keys {list(output.keys())}"
    return f"a {type(output).__name__}"


def _read(output, path: str, key: str | None):
    if path == "tensor":
        return output
    if path == "tuple[0]":
        return output[0]
    if path.startswith("dict"):
        return output[key]
    return getattr(output, key)


class LogitsAdapter(nn.Module):
    """``model`` whose forward returns the (1, K, H, W) logits tensor at input resolution."""

    def __init__(self, model: nn.Module, choice: OutputChoice):
        super().__init__()
        self.model = model
        self.path, self.key, self.upsample = choice.path, choice.key, choice.upsampled

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = _read(self.model(x), self.path, self.key)
        if self.upsample:
            logits = F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return logits


def choose_output(model: nn.Module, input_size: tuple[int, int], key: str | None = None, upsample: bool = False) -> OutputChoice:
    """Run ``model`` once on a zero image and say where its logits are; refuse what cannot be logits."""
    with torch.no_grad():
        output = model(torch.zeros(1, 3, *input_size))
    path, key = find_logits(output, key)
    logits = _read(output, path, key)
    if logits.dim() != 4 or logits.shape[0] != 1:
        raise UserError(f"the model's logits ({path}) have shape {tuple(logits.shape)}; expected (1, K, H, W)")
    size = tuple(int(s) for s in logits.shape[-2:])
    if size != tuple(input_size) and tuple(int(s) for s in logits.shape[1:3]) == tuple(input_size):
        raise UserError(
            f"the model's logits ({path}) have shape {tuple(logits.shape)}: channels-last (1, H, W, K) for a "
            f"{input_size[0]}x{input_size[1]} input; the chain takes channels-first logits (1, K, H, W): return "
            "logits.permute(0, 3, 1, 2) from the model"
        )
    if size != tuple(input_size) and not upsample:
        raise UserError(
            f"the model returns logits at {size[0]}x{size[1]} for a {input_size[0]}x{input_size[1]} input; pass "
            f"{setting('upsample_logits', python='upsample_logits=True')} to resize them bilinearly to the input size"
        )
    return OutputChoice(path, key, size, upsampled=size != tuple(input_size))


def adapt_outputs(
    model: nn.Module, deploy: nn.Module, input_size: tuple[int, int], key: str | None = None, upsample: bool = False
) -> tuple[nn.Module, nn.Module, OutputChoice]:
    """(reference, deploy form, choice): both wrapped in ``LogitsAdapter`` unless ``model`` already
    returns full-size logits as a tensor, in which case both are returned unchanged."""
    choice = choose_output(model, input_size, key, upsample)
    if choice.path == "tensor" and not choice.upsampled:
        return model, deploy, choice
    adapted_deploy = LogitsAdapter(deploy, choice).eval()
    adapted = adapted_deploy if deploy is model else LogitsAdapter(model, choice).eval()
    return adapted, adapted_deploy, choice
