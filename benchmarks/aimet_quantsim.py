"""AIMET's simulated W8A8 mIoU of a seg2tflite checkpoint (run in AIMET's own venv, ``.venv-aimet``).

The recipe of Qualcomm's AIMET model zoo for its segmentation models: BatchNorm folded into the
convolutions (``fold_all_batch_norms``), per-channel int8 weights and int8 activations
(``QuantizationSimModel`` with the ``default`` per-channel config), activation encodings computed
on the calibration images with each of AIMET's post-training range schemes (``tf_enhanced``,
AIMET's default; ``percentile`` at 99.99, the zoo's setting for DeepLabV3+ Xception; ``min_max``),
then the simulated model evaluated on the test images. AIMET's ``prepare_model`` first makes the
functional ops (additions, concatenations, resizes) modules, so that their outputs are quantized
too; where torch.fx cannot trace a model, only its modules' outputs are, and the result says so
(``prepared``). ``adaround`` is AdaRound's learned weight
rounding (the zoo applies it to DeepLabV3+ MobileNetV2 after cross-layer equalization; here alone):
``Adaround.apply_adaround`` on the calibration images, ``ADAROUND_ITERATIONS`` per layer, its
weight encodings frozen, activations by ``tf_enhanced``. Nothing is converted: this is AIMET's estimate of what int8 costs, the
best-PTQ reference the .tflite files are held against.

    .venv-aimet/bin/python benchmarks/aimet_quantsim.py CHECKPOINT --data data.npz --out result.json
    .venv-aimet/bin/python benchmarks/aimet_quantsim.py CHECKPOINT --data data.npz --schemes adaround --out adaround.json

Beside ``--out`` (``result.json``) it writes ``result.npz``: every scheme's argmax on the test
images and, when the data holds ``val_images``, on those too (keys ``SCHEME/test``, ``SCHEME/val``,
``pytorch/...`` for the float model), so that the caller can score them per image.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

RANGE_SCHEMES = ("tf_enhanced", "percentile", "min_max")  # the default: minutes
SCHEMES = (*RANGE_SCHEMES, "adaround")
ADAROUND_ITERATIONS = 2000  # per layer; AIMET's default is 10000, 2000 keeps a small model under an hour on 2 CPU cores


def _scheme(name: str):
    from aimet_torch.common.defs import QuantScheme

    return {"tf_enhanced": QuantScheme.post_training_tf_enhanced, "percentile": QuantScheme.post_training_percentile,
            "min_max": QuantScheme.min_max, "adaround": QuantScheme.post_training_tf_enhanced}[name]  # fmt: skip


def adarounded(model: torch.nn.Module, dummy: torch.Tensor, calib: np.ndarray, workdir: Path, iterations: int) -> Path:
    """AdaRound ``model``'s weights in place on the calibration images; the frozen weight encodings' file."""
    from aimet_torch.adaround.adaround_weight import Adaround, AdaroundParameters
    from aimet_torch.common.defs import QuantScheme

    batches = torch.utils.data.DataLoader(torch.from_numpy(calib), batch_size=8)
    params = AdaroundParameters(batches, num_batches=len(batches), default_num_iterations=iterations)
    Adaround.apply_adaround(
        model, dummy, params, path=str(workdir), filename_prefix="adaround", default_param_bw=8,
        default_quant_scheme=QuantScheme.post_training_tf_enhanced, default_config_file="default",
    )  # fmt: skip
    return workdir / "adaround.encodings"


def miou(predictions: np.ndarray, masks: np.ndarray, k: int, ignore: int = 255) -> float:
    valid = masks != ignore
    matrix = np.bincount(k * masks[valid].astype(np.int64) + predictions[valid], minlength=k * k).reshape(k, k)
    union = matrix.sum(0) + matrix.sum(1) - np.diag(matrix)
    present = union > 0
    return float(100 * np.mean(np.diag(matrix)[present] / union[present]))


def _without_eval_identities(model: torch.nn.Module) -> torch.nn.Module:
    """Dropout and stochastic depth, the identity in eval mode, as ``nn.Identity`` (AIMET has no
    quantized form of timm's DropPath)."""
    for name, module in list(model.named_modules()):
        if type(module).__name__ in ("DropPath", "Dropout", "Dropout2d"):
            parent = model.get_submodule(name.rpartition(".")[0]) if "." in name else model
            setattr(parent, name.rpartition(".")[2], torch.nn.Identity())
    return model


def predict(model, images: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return np.concatenate([model(torch.from_numpy(x[None])).argmax(1).numpy() for x in images])


def simulate(checkpoint: str, data: dict, schemes: tuple[str, ...], workdir: Path, iterations: int = ADAROUND_ITERATIONS) -> dict:
    from aimet_torch.batch_norm_fold import fold_all_batch_norms
    from aimet_torch.model_preparer import prepare_model
    from aimet_torch.quantsim import QuantizationSimModel

    from seg2tflite.models import load_model

    calib, images, masks, k = data["calib"], data["images"], data["masks"], int(data["num_classes"])
    splits = {"test": images, **({"val": data["val_images"]} if "val_images" in data else {})}
    predictions = {f"pytorch/{split}": predict(load_model(checkpoint).eval(), x) for split, x in splits.items()}
    out = {"pytorch_miou": miou(predictions["pytorch/test"], masks, k), "schemes": {}, "predictions": predictions}
    for scheme in schemes:
        try:
            model = _without_eval_identities(load_model(checkpoint).eval())
            dummy = torch.from_numpy(calib[:1])
            try:  # AIMET's own first step: functional ops as modules, so that their outputs are quantized too
                model = prepare_model(model)
                out["prepared"] = True
            except Exception as e:  # noqa: BLE001 - a graph torch.fx cannot trace: its modules are quantized as they are
                out["prepared"] = f"{type(e).__name__}: {str(e).strip()[:200]}"
                print(f"{scheme}: AIMET's prepare_model failed ({out['prepared']}); functional ops stay unquantized")
                model = _without_eval_identities(load_model(checkpoint).eval())  # a failed trace leaves proxies in hooks
            fold_all_batch_norms(model, tuple(dummy.shape), dummy_input=dummy)
            encodings = adarounded(model, dummy, calib, workdir, iterations) if scheme == "adaround" else None
            sim = QuantizationSimModel(
                model, dummy, quant_scheme=_scheme(scheme), default_output_bw=8, default_param_bw=8, config_file="default"
            )
            if encodings is not None:
                sim.set_and_freeze_param_encodings(str(encodings))
            if scheme == "percentile":
                sim.set_percentile_value(99.99)

            def calibrate(sim_model, _):
                with torch.no_grad():
                    for x in calib:
                        sim_model(torch.from_numpy(x[None]))

            sim.compute_encodings(calibrate, None)
            predictions.update({f"{scheme}/{split}": predict(sim.model, x) for split, x in splits.items()})
            out["schemes"][scheme] = {"miou": miou(predictions[f"{scheme}/test"], masks, k)}
        except Exception as e:  # AIMET refusing a model is the comparison's finding
            print(f"{scheme}: AIMET failed: {type(e).__name__}: {str(e).strip()[:200]}")
            out["schemes"][scheme] = {"error": f"{type(e).__name__}: {str(e).strip()[:300]}"}
    from importlib.metadata import version

    out["versions"] = {p: version(p) for p in ("aimet-torch", "torch")}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--data", required=True, help="npz: calib, images (N, 3, H, W float32), masks, num_classes")
    parser.add_argument("--schemes", nargs="+", default=list(RANGE_SCHEMES), choices=SCHEMES)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--adaround-iterations", type=int, default=ADAROUND_ITERATIONS, help="per layer")
    args = parser.parse_args()
    torch.manual_seed(0)
    data = dict(np.load(args.data))
    result = simulate(args.checkpoint, data, tuple(args.schemes), args.out.parent, args.adaround_iterations)
    np.savez_compressed(args.out.with_suffix(".npz"), **{k: v.astype(np.uint8) for k, v in result.pop("predictions").items()})
    args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    from seg2tflite.quiet import quiet_libraries

    quiet_libraries()  # no start-up lines from TensorFlow, absl or LiteRT
    main()
