"""A real app client: MediaPipe's ImageSegmenter (the Tasks API of Android, iOS and Python), CPU.

``converters.app_client.category_masks`` loads a .tflite exactly as it is (no options beyond the
model path and the CPU delegate: the normalisation and the labels come from the file's metadata)
and segments uint8 RGB images one at a time (the conversion's parity table has a row of it on
the parity images). ``client_agreement`` compares its masks with PyTorch's argmax and
with LiteRT's argmax of the same file on the same images; run from the command line it measures
a conversion folder:

    python -m seg2tflite.eval.mediapipe_client DIR --data SPEC [--split test] [--limit N] [--checkpoint FILE]

MediaPipe takes only uint8 or float32 inputs and only one mean/std for all channels: a file
converted with ``--input uint8`` loads; the default float input of an ImageNet-normalised model
is refused ("Per-channel image normalization is not available").
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def client_agreement(path: str | Path, pixels: np.ndarray, torch_classes: np.ndarray, mean, std, app=None) -> dict:
    """Share of pixels where MediaPipe's mask equals PyTorch's argmax and LiteRT's argmax of ``path``
    (``app``: its ends, default the manifest's next to it)."""
    from seg2tflite.converters.app_client import category_masks, client_figures
    from seg2tflite.converters.app_io import from_pixels
    from seg2tflite.converters.runtimes import TFLiteRunner

    masks, labels = category_masks(path, pixels)
    runner = TFLiteRunner(path, app=app)
    normalised = from_pixels(pixels, mean, std, channel_axis=-1).transpose(0, 3, 1, 2)
    litert = np.concatenate([runner(x[None]).argmax(1) for x in normalised])
    figures = client_figures(masks, torch_classes, litert, None, len(labels))  # vs_reference: PyTorch's argmax
    del figures["miou"]  # no ground truth here (NaN is not JSON)
    return {**figures, "labels": labels}


def measure_folder(folder: Path, data: str, split: str, limit: int | None, checkpoint: str | None = None) -> dict:
    """MediaPipe against PyTorch for every .tflite of a conversion folder (its manifest's settings)."""
    import torch
    from PIL import Image

    from seg2tflite.converters.app_io import from_pixels
    from seg2tflite.data import load_dataset
    from seg2tflite.models.registry import load_model

    manifest = json.loads((folder / "manifest.json").read_text())
    mean, std = manifest["preprocessing"]["mean"], manifest["preprocessing"]["std"]
    h, w = manifest["config"]["input_size"]
    dataset = load_dataset(data, split, option="--data")
    n = len(dataset) if limit is None else min(limit, len(dataset))
    pixels = np.stack([np.asarray(Image.fromarray(dataset[i][0]).resize((w, h), Image.BILINEAR)) for i in range(n)])
    info = manifest["model"]
    weights = checkpoint or info.get("checkpoint") or (str(folder / info["weights"]) if info.get("weights") else None)
    if weights is None:
        raise SystemExit(f"{folder}: no PyTorch weights recorded in manifest.json")
    model = load_model(weights)
    with torch.no_grad():
        normalised = torch.from_numpy(from_pixels(pixels, mean, std, channel_axis=-1).transpose(0, 3, 1, 2).copy())
        torch_classes = np.concatenate([model.eval()(x[None]).argmax(1).numpy() for x in normalised])
    results = {}
    for variant in manifest["config"]["variants"]:
        path = folder / f"model_{variant}.tflite"
        try:
            results[variant] = client_agreement(path, pixels, torch_classes, mean, std)
        except Exception as e:  # noqa: BLE001 - MediaPipe's refusal is the finding
            results[variant] = {"refused": str(e).strip().splitlines()[0][:300]}
    return results


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--data", required=True)
    parser.add_argument("--split", default="test")
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--checkpoint", default=None, help="the PyTorch weights (default: the manifest's)")
    args = parser.parse_args(argv)
    print(json.dumps(measure_folder(args.folder, args.data, args.split, args.limit, args.checkpoint), indent=2))


if __name__ == "__main__":
    main()
