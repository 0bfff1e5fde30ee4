"""MediaPipe's ImageSegmenter against PyTorch on a dataset, for every .tflite of a conversion folder.

The client itself (loading a file exactly as written, its masks, the agreement figures, what it
refuses) is ``seg2tflite.converters.app_client``; this module measures a folder with it, on a
dataset's images at the manifest's size, against the PyTorch weights the manifest records:

    python -m seg2tflite.eval.mediapipe_client DIR --data SPEC [--split test] [--limit N] [--checkpoint FILE]

It prints (JSON), per file, ``app_client.client_agreement``'s row, or the line MediaPipe refused it with.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def measure_folder(folder: Path, data: str, split: str, limit: int | None, checkpoint: str | None = None) -> dict:
    """MediaPipe against PyTorch for every .tflite of a conversion folder (its manifest's settings)."""
    import torch
    from PIL import Image

    from seg2tflite.converters.app_client import client_agreement
    from seg2tflite.converters.app_io import from_pixels
    from seg2tflite.converters.stages import STAGES, ConversionDir
    from seg2tflite.data import load_dataset
    from seg2tflite.errors import UserError, setting
    from seg2tflite.models.registry import load_model
    from seg2tflite.records import field, inside, read_json

    if not folder.is_dir():
        raise UserError(f"{folder}: not found; give the folder `seg2tflite convert --out` wrote")
    path = folder / "manifest.json"
    redo = f"convert into {folder} again"
    if not path.is_file():
        raise UserError(f"{path}: not found; give the folder `seg2tflite convert --out` wrote")
    manifest = read_json(path, redo)
    mean = field(manifest, path, redo, "preprocessing", "mean", kind=list)
    std = field(manifest, path, redo, "preprocessing", "std", kind=list)
    size = field(manifest, path, redo, "config", "input_size", kind=list)
    variants = field(manifest, path, redo, "config", "variants", kind=list)
    info = field(manifest, path, redo, "model", kind=dict)
    if len(size) != 2 or not all(isinstance(v, int) and v > 0 for v in size):
        raise UserError(f"{path}: config.input_size {size!r} is not [H, W]; {redo}")
    h, w = size
    dataset = load_dataset(data, split, option="data")
    n = len(dataset) if limit is None else min(limit, len(dataset))
    pixels = np.stack([np.asarray(Image.fromarray(dataset[i][0]).resize((w, h), Image.BILINEAR)) for i in range(n)])
    # the weights: --checkpoint, else the folder's own or the one the manifest records (same sha256)
    recorded = ConversionDir(folder).checkpoint()
    if checkpoint is None and recorded is None and info.get("weights"):
        recorded = inside(folder, info["weights"], path)
    weights = checkpoint or recorded
    if weights is None:
        raise UserError(
            f"{path}: no PyTorch weights recorded (or no longer the file recorded); pass {setting('checkpoint', 'FILE')}"
        )
    model = load_model(weights)
    with torch.no_grad():
        normalised = torch.from_numpy(from_pixels(pixels, mean, std, channel_axis=-1).transpose(0, 3, 1, 2).copy())
        torch_classes = np.concatenate([model.eval()(x[None]).argmax(1).numpy() for x in normalised])
    results = {}
    for variant in variants:
        if variant not in STAGES or STAGES[variant].runtime != "litert":
            raise UserError(f"{path}: config.variants names {variant!r}, not a TFLite variant; {redo}")
        path = ConversionDir(folder).artifact(variant)
        try:
            results[variant] = client_agreement(path, pixels, torch_classes, mean, std)
        except Exception as e:  # noqa: BLE001 - MediaPipe's refusal is the finding
            results[variant] = {"refused": str(e).strip().splitlines()[0][:300]}
    return results


def main(argv=None) -> int:
    """The command line; bad input is one ``mediapipe_client: error:`` line and exit 2, as in ``seg2tflite``."""
    import argparse
    import sys

    from seg2tflite.errors import UserError, command_line_wording, one_line, os_error_line, setting

    parser = argparse.ArgumentParser(prog="seg2tflite.eval.mediapipe_client", description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--data", required=True)
    parser.add_argument("--split", default="test", choices=["train", "val", "test"])
    parser.add_argument("--limit", type=int, default=None, help="the first N images (at least 1)")
    parser.add_argument("--checkpoint", default=None, help="the PyTorch weights (default: the manifest's)")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    args = parser.parse_args(argv)
    with command_line_wording({"data": "--data", "limit": "--limit", "checkpoint": "--checkpoint"}):
        try:
            if args.limit is not None and args.limit < 1:
                raise UserError(f"{setting('limit')}: {args.limit} must be at least 1 image")
            print(json.dumps(measure_folder(args.folder, args.data, args.split, args.limit, args.checkpoint), indent=2))
        except (UserError, OSError) as e:
            if args.debug:
                raise
            line = one_line(e) if isinstance(e, UserError) else os_error_line(e, None)
            print(f"{parser.prog}: error: {line}", file=sys.stderr)
            return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
