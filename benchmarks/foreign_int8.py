"""Full int8 on trained models nobody here wrote: each range method, on the models people bring.

Each model (segmentation_models_pytorch Unet, FPN, DeepLabV3+ and PSPNet with a ResNet-18 encoder;
torchvision LR-ASPP and DeepLabV3 with MobileNetV3-Large; a Hugging Face SegFormer from a small
config) is built without downloads, trained briefly on the built-in synthetic data (the demo's
spec, 96x96, 8 classes; ``compress.finetune`` with BatchNorm statistics updated), converted with
``convert_model`` (float32 and full int8, every float gate), and its SavedModel quantized to full
int8 once per range method, with and without bias correction (``int8_ranges.compare_methods``),
each evaluated on the test split against the model's own PyTorch mIoU.

    python benchmarks/foreign_int8.py --out runs/foreign --record results/int8_foreign.json

``--reuse`` measures the methods again on the conversion folders already in ``--out`` (after a
change of the range rules), keeping each row's training and PyTorch mIoU.

A benchmark, not a test: not part of the default test run.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))
from int8_ranges import _arrays, compare_methods, record_options, render, rendered_only, write_record  # noqa: E402

SPEC = "synthetic:size=96,train=1000,val=100,test=50,colour_hint=0.9"
SIZE, K = (96, 96), 8


class Logits(nn.Module):
    """A model whose output is a dict or an object, as a module returning the logits tensor at the input size."""

    def __init__(self, model: nn.Module, key: str):
        super().__init__()
        self.model, self.key = model, key

    def forward(self, x):
        out = self.model(x)
        out = out[self.key] if isinstance(out, dict) else getattr(out, self.key)
        return (
            out if out.shape[-2:] == x.shape[-2:] else F.interpolate(out, size=x.shape[-2:], mode="bilinear", align_corners=False)
        )


def _smp(arch: str):
    import segmentation_models_pytorch as smp

    return getattr(smp, arch)(encoder_name="resnet18", encoder_weights=None, classes=K)


def _torchvision(name: str):
    from torchvision.models import segmentation

    return Logits(getattr(segmentation, name)(weights=None, weights_backbone=None, num_classes=K), "out")


def _hf_segformer():
    from transformers import SegformerConfig, SegformerForSemanticSegmentation

    config = SegformerConfig(num_labels=K, hidden_sizes=[32, 64, 160, 256], decoder_hidden_size=128, depths=[2, 2, 2, 2])
    return Logits(SegformerForSemanticSegmentation(config), "logits")


MODELS = {
    "smp_unet_resnet18": lambda: _smp("Unet"),
    "smp_fpn_resnet18": lambda: _smp("FPN"),
    "smp_deeplabv3plus_resnet18": lambda: _smp("DeepLabV3Plus"),
    "smp_pspnet_resnet18": lambda: _smp("PSPNet"),
    "tv_lraspp_mobilenet_v3_large": lambda: _torchvision("lraspp_mobilenet_v3_large"),
    "tv_deeplabv3_mobilenet_v3_large": lambda: _torchvision("deeplabv3_mobilenet_v3_large"),
    "hf_segformer_b0_config": _hf_segformer,
}


def recalibrate_batchnorm(model: nn.Module, images: torch.Tensor, batch_size: int = 8) -> int:
    """Every BatchNorm's running statistics re-estimated as plain averages over ``images`` (weights
    unchanged): torchvision's MobileNetV3 keeps momentum 0.01, so after a short training its
    running statistics trail its weights and the eval-mode model predicts one class."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average
    model.eval()  # dropout off: only the BatchNorms see training batches
    for m in norms:
        m.train()
    with torch.no_grad():
        for i in range(0, len(images), batch_size):
            model(images[i : i + batch_size])
    model.eval()
    return len(norms)


def _convert_config():
    from seg2tflite.converters import ConvertConfig

    return ConvertConfig(input_size=SIZE, variants=("float32", "full_int8"), calib_size=64, parity_images=8, trained=True)


def _methods(folder, turns: int, threads: int) -> tuple[dict, float]:
    """Every range method on a conversion folder's SavedModel, calibrated on exactly the images its
    conversion was (checked against its manifest), evaluated on the test split; and the seconds it took."""
    from seg2tflite.converters.images import calibration_set
    from seg2tflite.data import Preprocess, load_dataset
    from seg2tflite.models.registry import IMAGENET_MEAN, IMAGENET_STD

    preprocess = Preprocess(SIZE, IMAGENET_MEAN, IMAGENET_STD)
    calib = calibration_set(load_dataset(SPEC, "train"), preprocess, _convert_config(), progress=False)
    if list(calib.names) != json.loads(folder.manifest_path.read_text())["calibration"]["images"]:
        raise SystemExit(f"{folder.path}: the calibration images differ from its conversion's")
    images, masks = _arrays(load_dataset(SPEC, "test"), preprocess)
    t = time.perf_counter()
    result = compare_methods(
        folder.int8_source(), folder.artifact("float32"), calib, images, masks, K, turns=turns, threads=threads
    )
    return result, time.perf_counter() - t


def methods_again(name: str, out: Path, earlier: dict, turns: int, threads: int) -> dict:
    """``earlier``'s row of ``name`` with every method measured again on the SavedModel its
    conversion folder in ``out`` holds: the same trained weights, the range rules of today."""
    from seg2tflite.converters.stages import ConversionDir

    result, seconds = _methods(ConversionDir(out / name), turns, threads)
    kept = {key: earlier[key] for key in ("pytorch_miou", "train", "gates")}
    return {**result, **kept, "seconds": {**earlier["seconds"], "int8": seconds}}


def measure(name: str, out: Path, steps: int, turns: int, threads: int, recalibrate: bool = False) -> dict:
    from seg2tflite.app.compress.finetune import FinetuneConfig, example_input, finetune, validate
    from seg2tflite.converters import ParityError, convert_model
    from seg2tflite.converters.stages import ConversionDir
    from seg2tflite.data import load_dataset

    torch.manual_seed(0)
    model = MODELS[name]()
    train, val, test = (load_dataset(SPEC, split) for split in ("train", "val", "test"))
    tune = FinetuneConfig(steps=steps, lr=1e-3, input_size=SIZE, train_batchnorm=True)
    t = time.perf_counter()
    trained = finetune(model, train, tune, progress=False)
    if recalibrate:
        trained["batchnorm_recalibrated"] = recalibrate_batchnorm(model, example_input(model, train, tune, n=400))
    seconds = {"train": time.perf_counter() - t}
    pytorch = validate(model, test, tune)
    t = time.perf_counter()
    try:
        convert_model(model, out / name, _convert_config(), train, val, log=None, progress=False)
        gates = "pass"
    except ParityError as e:  # a broken gate is a finding of the row, the files are written
        gates = str(e)
    seconds["convert"] = time.perf_counter() - t
    result, seconds["int8"] = _methods(ConversionDir(out / name), turns, threads)
    return {**result, "pytorch_miou": 100 * pytorch["miou"], "train": trained, "gates": gates, "seconds": seconds}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/foreign"), help="conversion folders")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--steps", type=int, default=300, help="training steps per model (batch 8)")
    parser.add_argument("--turns", type=int, default=10, help="latency turns (0: no latency)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--recalibrate-batchnorm",
        action="store_true",
        help="re-estimate BatchNorm statistics on 400 training images after training",
    )
    parser.add_argument(
        "--reuse",
        action="store_true",
        help="no training or conversion: measure the methods again on the conversion folders in --out, "
        "keeping each model's training and PyTorch mIoU from --record",
    )
    record_options(parser)
    args = parser.parse_args(argv)
    if rendered_only(parser, args, render, required=None):
        return 0
    if args.reuse and not (args.record and args.record.is_file()):
        parser.error("--reuse needs --record: the record whose rows it measures again")
    from seg2tflite.converters.manifest import package_versions

    command = ["python", "benchmarks/foreign_int8.py", *(argv or sys.argv[1:])]
    results = {"command": command, "versions": package_versions()}
    results.update(data=SPEC, steps=args.steps, models={})
    if args.record and args.record.is_file():  # rows of other models stay, each naming the command that measured it
        earlier = json.loads(args.record.read_text())
        if earlier["versions"] != results["versions"]:
            parser.error(f"{args.record} was measured with other versions: write a new record")
        kept = {name: row for name, row in earlier["models"].items() if name not in args.models}
        results["models"] = {
            name: {"command": earlier["command"], "steps": earlier["steps"], **row} for name, row in kept.items()
        }
    for name in args.models:
        t = time.perf_counter()
        if args.reuse:  # the row keeps the command that trained it
            before = earlier["models"][name]
            row = {**before, **methods_again(name, args.out, before, args.turns, args.threads)}
            results["models"][name] = {**row, "command": command, "trained_by": before.get("trained_by", before["command"])}
        else:
            row = measure(name, args.out, args.steps, args.turns, args.threads, args.recalibrate_batchnorm)
            results["models"][name] = {"command": command, "steps": args.steps, **row}
        print(f"{name}: {time.perf_counter() - t:.0f} s", flush=True)
        write_record(results, [args.out / "int8_foreign.json", *([args.record] if args.record else [])])
    print(render(results))
    return 0


if __name__ == "__main__":
    from seg2tflite.quiet import quiet_libraries

    quiet_libraries()  # no start-up lines from TensorFlow, absl or LiteRT
    sys.exit(main())
