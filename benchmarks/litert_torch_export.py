"""Convert a seg2tflite checkpoint with Google's direct converter, litert-torch (run in its own venv).

litert-torch needs numpy 2 and protobuf 7, against onnx2tf's exact pins, so this file runs with
the interpreter of the environment ``vs_litert_torch.py`` makes (``.venv-litert-torch``), never in
the project's. It writes, for one model and one input size:

- ``float32.tflite``: ``litert_torch.convert`` of the model as trained (eval mode);
- ``full_int8.tflite``: litert-torch's documented static PT2E recipe: ``torch.export``, its
  ``PT2EQuantizer`` with ``get_symmetric_quantization_config(is_per_channel=True)`` (int8
  per-channel symmetric weights, int8 per-tensor activations with histogram observers),
  calibrated on the same images seg2tflite calibrates on, ``convert_pt2e``, then
  ``litert_torch.convert`` with that quantizer.

Both files take and return what the PyTorch model does: NCHW float32 in, NCHW logits out.

    .venv-litert-torch/bin/python benchmarks/litert_torch_export.py CHECKPOINT --size H W \
        --calib calib.npy --out DIR
"""

from __future__ import annotations

import argparse
import json
import traceback
from pathlib import Path

import numpy as np
import torch


def convert(checkpoint: str, size: tuple[int, int], calib: np.ndarray, out: Path, variants: list[str]) -> dict:
    import litert_torch
    from litert_torch.quantize import pt2e_quantizer
    from litert_torch.quantize.quant_config import QuantConfig
    from torchao.quantization.pt2e import quantize_pt2e

    from seg2tflite.models import load_model

    model = load_model(checkpoint).eval()
    sample = (torch.from_numpy(calib[:1]).float(),)
    assert tuple(sample[0].shape[2:]) == tuple(size), f"calibration images are {sample[0].shape[2:]}, not {size}"
    out.mkdir(parents=True, exist_ok=True)

    def float32():
        with torch.no_grad():
            litert_torch.convert(model, sample).export(str(out / "float32.tflite"))

    def full_int8():
        quantizer = pt2e_quantizer.PT2EQuantizer().set_global(
            pt2e_quantizer.get_symmetric_quantization_config(is_per_channel=True, is_dynamic=False)
        )
        exported = torch.export.export(model, sample).module()
        prepared = quantize_pt2e.prepare_pt2e(exported, quantizer)
        with torch.no_grad():
            for image in calib:
                prepared(torch.from_numpy(image[None]).float())
        quantized = quantize_pt2e.convert_pt2e(prepared, fold_quantize=False)
        litert_torch.convert(quantized, sample, quant_config=QuantConfig(pt2e_quantizer=quantizer)).export(
            str(out / "full_int8.tflite")
        )

    written, errors = {}, {}
    for variant, build in (("float32", float32), ("full_int8", full_int8)):
        if variant not in variants:
            continue
        try:
            build()
            written[variant] = f"{variant}.tflite"
        except Exception as e:  # litert-torch refusing a model is the comparison's finding
            traceback.print_exc()
            errors[variant] = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"[:300]
    from importlib.metadata import version

    versions = {p: version(p) for p in ("litert-torch", "torch", "torchao", "ai-edge-litert")}
    return {"files": written, "errors": errors, "versions": versions}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--size", type=int, nargs=2, required=True, metavar=("H", "W"))
    parser.add_argument("--calib", required=True, help="a .npy of (N, 3, H, W) float32 normalised images")
    parser.add_argument("--out", required=True)
    parser.add_argument("--variants", nargs="+", default=["float32", "full_int8"])
    args = parser.parse_args()
    done = convert(args.checkpoint, tuple(args.size), np.load(args.calib), Path(args.out), args.variants)
    (Path(args.out) / "litert_torch.json").write_text(json.dumps(done, indent=1) + "\n")


if __name__ == "__main__":
    from seg2tflite.quiet import quiet_libraries

    quiet_libraries()  # no start-up lines from TensorFlow, absl or LiteRT
    main()
