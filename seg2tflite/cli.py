"""The ``seg2tflite`` command line: one subcommand per job, heavy imports only when a job runs."""

from __future__ import annotations

import argparse
import errno
import os
import sys
import tempfile
import traceback
from dataclasses import fields
from pathlib import Path

from seg2tflite.errors import UserError
from seg2tflite.quiet import VERBOSE_VARIABLE, quiet_libraries

DATA_SPEC_SHORT = (
    "data spec: synthetic | folder:PATH | ade20k:PATH | voc:PATH | cityscapes:PATH | camvid:PATH (see `seg2tflite data --help`)"
)


class _Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    pass


def config_from_args(cls, args: argparse.Namespace, **values):
    """``cls(...)`` from the parsed options named like its fields (lists become tuples), plus ``values``."""
    for f in fields(cls):
        if f.name not in values and hasattr(args, f.name):
            value = getattr(args, f.name)
            values[f.name] = tuple(value) if isinstance(value, list) else value
    return cls(**values)


def _size(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


# -- data ------------------------------------------------------------------------------------


def _add_data(sub) -> None:
    from seg2tflite.data import DATA_SPEC_HELP

    p = sub.add_parser("data", help="write or inspect datasets", description=DATA_SPEC_HELP, formatter_class=_Formatter)
    data_sub = p.add_subparsers(dest="data_command", required=True, metavar="{synthetic,check}")
    s = data_sub.add_parser(
        "synthetic",
        help="write the built-in synthetic dataset in the folder layout",
        formatter_class=_Formatter,
        description="Write DIR/{train,val,test}/{images,masks}/*.png (masks are class-index PNGs).",
    )
    s.add_argument("--out", required=True, help="output folder")
    s.add_argument("--seed", type=int, default=0, help="random seed")
    s.add_argument("--num-train", type=int, default=None, help="training images (default: the built-in size)")
    s.add_argument("--num-val", type=int, default=None, help="validation images")
    s.add_argument("--num-test", type=int, default=None, help="test images")
    s.add_argument("--image-size", type=_size, nargs=2, metavar=("H", "W"), default=None, help="image size")
    s.set_defaults(handler=_run_data_synthetic)
    c = data_sub.add_parser("check", help="read every item of a dataset split and report problems", formatter_class=_Formatter)
    c.add_argument("--data", required=True, help=DATA_SPEC_SHORT)
    c.add_argument("--split", default="val", choices=["train", "val", "test"], help="split")
    c.set_defaults(handler=_run_data_check)


def _run_data_synthetic(args) -> None:
    from dataclasses import replace

    from seg2tflite.data import SyntheticConfig, SyntheticDataset, write_folder_dataset

    config = SyntheticConfig(seed=args.seed)
    overrides = {
        "num_train": args.num_train,
        "num_val": args.num_val,
        "num_test": args.num_test,
        "image_size": tuple(args.image_size) if args.image_size else None,
    }
    config = replace(config, **{k: v for k, v in overrides.items() if v is not None})
    splits = {split: SyntheticDataset(split, config) for split in ("train", "val", "test")}
    write_folder_dataset(splits, args.out, source=config.to_spec())
    print(f"wrote {sum(map(len, splits.values()))} images to {args.out}")


def _run_data_check(args) -> None:
    from seg2tflite.data import load_dataset, validate_dataset

    dataset = load_dataset(args.data, args.split)
    validate_dataset(dataset)
    print(f"{args.data} [{args.split}]: {len(dataset)} items, {dataset.info.num_classes} classes, all readable")


# -- models ----------------------------------------------------------------------------------


def _add_models(sub) -> None:
    p = sub.add_parser("models", help="list the registered models", formatter_class=_Formatter)
    p.set_defaults(handler=_run_models)


def _run_models(args) -> None:
    from seg2tflite.models import get_model_config, list_models

    for name in list_models():
        config = get_model_config(name)
        h, w = config.input_size
        print(f"{name:28s} input {h}x{w}  classes {config.num_classes:4d}  {config.paper}")


# -- train -----------------------------------------------------------------------------------


def _add_train(sub) -> None:
    from seg2tflite.train_config import TrainConfig

    d = TrainConfig(model="")
    p = sub.add_parser("train", help="train a registered model natively in PyTorch", formatter_class=_Formatter)
    p.add_argument("--model", required=True, help="registered model name (see `seg2tflite models`)")
    p.add_argument("--data", default=d.data, help=DATA_SPEC_SHORT)
    p.add_argument("--out", default=d.out, help="output folder for checkpoints and the training log")
    p.add_argument("--steps", type=_size, default=d.steps, help="optimizer steps")
    p.add_argument("--batch-size", type=_size, default=d.batch_size, help="batch size (per GPU under torchrun)")
    p.add_argument("--lr", type=float, default=d.lr, help="peak AdamW learning rate")
    p.add_argument("--weight-decay", type=float, default=d.weight_decay, help="AdamW weight decay")
    p.add_argument("--warmup-steps", type=int, default=d.warmup_steps, help="linear warm-up steps")
    p.add_argument(
        "--input-size", type=_size, nargs=2, metavar=("H", "W"), default=None, help="training size (default: the model's)"
    )
    p.add_argument("--num-classes", type=_size, default=None, help="head size (default: the dataset's)")
    p.add_argument("--val-every", type=_size, default=d.val_every, help="steps between validations and checkpoints")
    p.add_argument("--val-images", type=_size, default=None, help="cap on validation images (default: whole split)")
    p.add_argument("--workers", type=int, default=d.workers, help="DataLoader worker processes")
    p.add_argument("--seed", type=int, default=d.seed, help="random seed")
    p.add_argument("--encoder-checkpoint", default=None, help="local timm-format ImageNet weights for the encoder")
    p.add_argument("--resume", action="store_true", help="continue from OUT/train_state.pt")
    p.add_argument("--no-amp", action="store_true", help="disable mixed precision on CUDA")
    p.set_defaults(handler=_run_train)


def _run_train(args) -> None:
    from seg2tflite.models import list_models
    from seg2tflite.train import train
    from seg2tflite.train_config import TrainConfig

    if args.model not in list_models():
        raise UserError(f"--model {args.model}: unknown model; choose one of {', '.join(list_models())}")
    config = config_from_args(TrainConfig, args, amp=not args.no_amp)
    best = train(config)
    print(f"best val mIoU {100 * best['miou']:.2f} at step {best.get('step')}; checkpoints in {args.out}")


# -- convert ---------------------------------------------------------------------------------


def _add_convert(sub) -> None:
    from seg2tflite.converters.config import VARIANTS, ConvertConfig

    d = ConvertConfig(input_size=(64, 64))
    p = sub.add_parser(
        "convert",
        help="carry a model down PyTorch -> ONNX -> TF -> TFLite, with parity gates at every step",
        formatter_class=_Formatter,
        description=(
            "Writes OUT/model.onnx, OUT/saved_model/, OUT/model_{float32,float16,dynamic_int8,full_int8,int16x8}.tflite, "
            "OUT/parity.json and OUT/manifest.json. Exits non-zero when a parity gate breaks."
        ),
    )
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", help="registered model name (see `seg2tflite models`)")
    source.add_argument("--onnx", help="convert an existing ONNX file instead (NCHW image in, NCHW logits out)")
    p.add_argument(
        "--checkpoint",
        default=None,
        help="local weights (this project's, Hugging Face folder, or a state dict); default: seeded random init",
    )
    p.add_argument("--num-classes", type=_size, default=None, help="head size (default: the calibration dataset's)")
    p.add_argument(
        "--input-size", type=_size, nargs=2, metavar=("H", "W"), default=None, help="fixed input size (default: the model's)"
    )
    p.add_argument("--calib-data", default="synthetic", help="calibration " + DATA_SPEC_SHORT)
    p.add_argument(
        "--calib-split", default=d.calib_split, choices=["train", "val", "test"], help="split the calibration images come from"
    )
    p.add_argument(
        "--parity-split",
        default="val",
        choices=["train", "val", "test"],
        help="split of --calib-data the parity images come from",
    )
    p.add_argument("--calib-size", type=_size, default=d.calib_size, help="representative images for full int8 and int16x8")
    p.add_argument("--parity-images", type=_size, default=d.parity_images, help="real images every artifact is compared on")
    p.add_argument("--variants", nargs="+", default=list(d.variants), choices=VARIANTS, help="TFLite variants to build")
    p.add_argument("--int8-io", default=d.int8_io, choices=["int8", "float"], help="input/output type of the full-int8 model")
    p.add_argument("--opset", type=int, default=d.opset, help="ONNX opset")
    p.add_argument(
        "--max-miou-drop",
        type=float,
        default=d.max_miou_drop,
        help="mIoU points a quantized variant may lose (gated for trained models)",
    )
    p.add_argument(
        "--trained",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="gate quantized mIoU (default: on when --checkpoint is given)",
    )
    p.add_argument("--threads", dest="num_threads", type=_size, default=None, help="LiteRT / ONNX Runtime threads")
    p.add_argument(
        "--mean", type=float, nargs=3, default=None, help="with --onnx: per-channel mean on a 0..1 image (default: ImageNet)"
    )
    p.add_argument("--std", type=float, nargs=3, default=None, help="with --onnx: per-channel std (default: ImageNet)")
    p.add_argument("--seed", type=int, default=0, help="seed for the random init when no --checkpoint is given")
    p.add_argument("--out", required=True, help="output folder")
    p.set_defaults(handler=_run_convert)


def _run_convert(args) -> None:
    from seg2tflite.converters.config import ConvertConfig
    from seg2tflite.data import load_dataset

    # Everything that can be refused is refused here, before the model is built or TensorFlow loaded.
    if args.input_size is not None:
        ConvertConfig(input_size=tuple(args.input_size))
    calib = load_dataset(args.calib_data, args.calib_split)
    parity = load_dataset(args.calib_data, args.parity_split)
    if args.num_classes is not None and args.num_classes != calib.info.num_classes:
        raise UserError(
            f"--num-classes {args.num_classes}: {args.calib_data} has {calib.info.num_classes} classes; "
            f"pass --num-classes {calib.info.num_classes} or calibration data with {args.num_classes} classes"
        )
    if args.model is not None:
        from seg2tflite.models import check_input_size, get_model_config, list_models

        if args.model not in list_models():
            raise UserError(f"--model {args.model}: unknown model; choose one of {', '.join(list_models())}")
        size = check_input_size(args.model, args.input_size or get_model_config(args.model).input_size)
    else:
        from seg2tflite.converters import resolve_onnx_input_size

        size = resolve_onnx_input_size(args.onnx, args.input_size)
    trained = args.trained if args.trained is not None else args.checkpoint is not None
    config = config_from_args(ConvertConfig, args, input_size=size, trained=trained)

    from seg2tflite.converters import convert_onnx, convert_registered
    from seg2tflite.models import IMAGENET_MEAN, IMAGENET_STD

    command = ["seg2tflite", *sys.argv[1:]]
    if args.model is not None:
        result = convert_registered(
            args.model,
            args.out,
            config,
            calib,
            parity,
            num_classes=args.num_classes or calib.info.num_classes,
            checkpoint=args.checkpoint,
            seed=args.seed,
            command=command,
        )
    else:
        result = convert_onnx(
            args.onnx,
            args.out,
            config,
            calib,
            parity,
            mean=tuple(args.mean or IMAGENET_MEAN),
            std=tuple(args.std or IMAGENET_STD),
            command=command,
        )
    print(f"all gates passed; artifacts in {result.out_dir}")


# -- evaluate, bench, report ----------------------------------------------------------------


def _default_workers() -> int:
    import os

    return max(1, min(4, os.cpu_count() or 1))


def _add_evaluate(sub) -> None:
    p = sub.add_parser(
        "evaluate",
        help="mIoU of any artifact (.safetensors/.pt checkpoint, .onnx, SavedModel, .tflite) on a dataset",
        formatter_class=_Formatter,
    )
    p.add_argument("--artifact", required=True, help="checkpoint, .onnx, SavedModel folder or .tflite")
    p.add_argument("--data", default="synthetic", help=DATA_SPEC_SHORT)
    p.add_argument("--split", default="test", choices=["train", "val", "test"], help="split to evaluate")
    p.add_argument(
        "--input-size",
        type=_size,
        nargs=2,
        metavar=("H", "W"),
        default=None,
        help="default: from the artifact's manifest or config",
    )
    p.add_argument("--mean", type=float, nargs=3, default=None, help="default: from the artifact's manifest or config")
    p.add_argument("--std", type=float, nargs=3, default=None, help="default: from the artifact's manifest or config")
    p.add_argument("--workers", type=_size, default=_default_workers(), help="evaluation processes (TFLite, ONNX)")
    p.add_argument("--threads", type=_size, default=None, help="threads per process (default: cores shared out)")
    p.add_argument("--limit", type=_size, default=None, help="evaluate only the first N images")
    p.add_argument("--json", default=None, help="also write the metrics to this JSON file")
    p.set_defaults(handler=_run_evaluate)


def _run_evaluate(args) -> None:
    import json

    from seg2tflite.atomic import atomic_write_text
    from seg2tflite.eval.evaluate import evaluate_artifact, format_eval

    result = evaluate_artifact(
        args.artifact,
        args.data,
        split=args.split,
        input_size=tuple(args.input_size) if args.input_size else None,
        mean=tuple(args.mean) if args.mean else None,
        std=tuple(args.std) if args.std else None,
        workers=args.workers,
        threads=args.threads,
        limit=args.limit,
    )
    print(format_eval(result))
    if args.json:
        atomic_write_text(args.json, json.dumps(result.as_dict(), indent=2) + "\n")


def _add_bench(sub) -> None:
    p = sub.add_parser(
        "bench",
        help="latency (median, p90 at batch 1) and peak memory of artifacts",
        formatter_class=_Formatter,
        description="LiteRT interpreter with XNNPACK, ONNX Runtime or PyTorch eager, each in a fresh process.",
    )
    p.add_argument("--artifact", required=True, nargs="+", help="checkpoint, .onnx, SavedModel folder or .tflite")
    p.add_argument(
        "--input-size",
        type=_size,
        nargs=2,
        metavar=("H", "W"),
        default=None,
        help="default: from the artifact's manifest or config",
    )
    p.add_argument("--threads", type=_size, default=1, help="runtime threads")
    p.add_argument("--warmup", type=int, default=5, help="untimed runs first")
    p.add_argument("--runs", type=_size, default=30, help="timed runs")
    p.set_defaults(handler=_run_bench)


def _run_bench(args) -> None:
    from seg2tflite.eval.bench import benchmark_artifacts, format_bench

    results = benchmark_artifacts(
        args.artifact,
        input_size=tuple(args.input_size) if args.input_size else None,
        threads=args.threads,
        warmup=args.warmup,
        runs=args.runs,
    )
    print(format_bench(results))


def _add_report(sub) -> None:
    p = sub.add_parser(
        "report", help="rebuild DIR/report/ from a run's recorded results, recomputing nothing", formatter_class=_Formatter
    )
    p.add_argument("--run", required=True, help="run folder holding record.json (e.g. the demo's --out)")
    p.set_defaults(handler=_run_report)


def _run_report(args) -> None:
    from seg2tflite.eval.report import build_report

    print(f"report written to {build_report(args.run)}")


# -- demo ------------------------------------------------------------------------------------


def _add_demo(sub) -> None:
    from seg2tflite.demo_config import DEFAULT_TRAIN_STEPS, DemoConfig

    d = DemoConfig()
    steps = ", ".join(f"{k} {v}" for k, v in DEFAULT_TRAIN_STEPS.items())
    p = sub.add_parser(
        "demo",
        help="the main job: train, convert, evaluate and benchmark every model, then write the report",
        formatter_class=_Formatter,
        description=(
            "On the built-in synthetic data (written to OUT/data) or any --data spec: trains each model natively in "
            "PyTorch, converts it through ONNX, TF and five TFLite variants with every parity gate, evaluates every stage "
            "on the test split, benchmarks it and writes OUT/report/. Re-running continues where it stopped."
        ),
    )
    p.add_argument("--out", default=d.out, help="run folder")
    p.add_argument("--models", nargs="+", default=list(d.models), help="registered models to carry")
    p.add_argument("--data", default=d.data, help=DATA_SPEC_SHORT)
    p.add_argument(
        "--input-size", type=_size, nargs=2, metavar=("H", "W"), default=None,
        help="train/convert/evaluate size for every model (default: 96x96, segnet_vgg16 64x64)",
    )  # fmt: skip
    p.add_argument("--train-steps", type=_size, default=None, help=f"optimizer steps per model (default per model: {steps})")
    p.add_argument("--batch-size", type=_size, default=d.batch_size, help="training batch size")
    p.add_argument("--lr", type=float, default=d.lr, help="peak AdamW learning rate")
    p.add_argument("--calib-size", type=_size, default=d.calib_size, help="representative images for full int8 / int16x8")
    p.add_argument("--parity-images", type=_size, default=d.parity_images, help="images the conversion gates compare on")
    p.add_argument("--eval-limit", type=_size, default=None, help="evaluate only the first N test images (default: all)")
    p.add_argument("--workers", type=_size, default=d.workers, help="processes evaluating each .tflite")
    p.add_argument("--bench-threads", type=_size, default=d.bench_threads, help="threads for the latency benchmark")
    p.add_argument("--max-miou-drop", type=float, default=d.max_miou_drop, help="mIoU points a quantized variant may lose")
    p.add_argument("--seed", type=int, default=d.seed, help="random seed (data, init, training)")
    p.add_argument("--strict", action="store_true", help="exit non-zero when any conversion gate fails")
    p.set_defaults(handler=_run_demo)


def _run_demo(args) -> None:
    from seg2tflite.demo import run_demo
    from seg2tflite.demo_config import DemoConfig

    config = config_from_args(DemoConfig, args)
    if run_demo(config) != 0:
        raise SystemExit(1)


# -- compress --------------------------------------------------------------------------------


def _add_compress(sub) -> None:
    from seg2tflite.compress_config import DEFAULT_METHODS, CompressConfig

    d = CompressConfig(run="")
    p = sub.add_parser(
        "compress",
        help="prune, cluster, quantization-aware train, mixed precision and a calibration study on a run's models",
        formatter_class=_Formatter,
        description=(
            "Takes the trained models of a run folder (what `seg2tflite demo --out DIR` wrote), compresses each with "
            "every --methods entry, carries the result through the conversion, measures it and adds it to DIR/report/ "
            "(compression.md, compression.png, calibration_study.md/.png). Methods: mixed (mixed precision within "
            "--max-miou-drop), prune:SPARSITY, cluster:K, qat, calibration; prune, cluster and qat followed by "
            "+mixed (e.g. cluster:16+mixed) also search mixed precision on the compressed model."
        ),
    )
    p.add_argument("--run", required=True, help="run folder written by `seg2tflite demo`")
    p.add_argument("--models", nargs="+", default=None, help="models of the run to compress (default: all)")
    p.add_argument("--methods", nargs="+", default=list(DEFAULT_METHODS), help="what to do")
    p.add_argument("--finetune-steps", type=_size, default=d.finetune_steps, help="fine-tuning steps for prune, cluster and qat")
    p.add_argument("--lr", dest="finetune_lr", type=float, default=d.finetune_lr, help="fine-tuning AdamW learning rate")
    p.add_argument("--batch-size", type=_size, default=d.batch_size, help="fine-tuning batch size")
    p.add_argument("--max-miou-drop", type=float, default=d.max_miou_drop, help="mIoU points mixed precision may lose")
    p.add_argument(
        "--val-images", type=_size, default=d.val_images, help="validation images the mixed-precision search measures on"
    )
    p.add_argument("--calib-sizes", type=_size, nargs="+", default=list(d.calib_sizes), help="calibration set sizes of the study")
    p.add_argument("--threads", type=_size, default=d.threads, help="LiteRT threads for evaluation and the benchmark")
    p.add_argument("--seed", type=int, default=d.seed, help="random seed (fine-tuning)")
    p.add_argument("--strict", action="store_true", help="exit non-zero when a compressed model's conversion gate fails")
    p.set_defaults(handler=_run_compress)


def _run_compress(args) -> None:
    from seg2tflite.compress.pipeline import run_compress
    from seg2tflite.compress_config import CompressConfig

    config = config_from_args(CompressConfig, args)
    if run_compress(config) != 0:
        raise SystemExit(1)


# -- entry point -----------------------------------------------------------------------------

COMMANDS = (_add_demo, _add_data, _add_models, _add_train, _add_convert, _add_evaluate, _add_bench, _add_report, _add_compress)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="seg2tflite",
        description="Carry PyTorch segmentation models to TensorFlow Lite and measure what each step costs.",
        formatter_class=_Formatter,
    )
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors (implies --verbose)")
    parser.add_argument("--verbose", action="store_true", help="show the libraries' own log lines (TensorFlow, absl, LiteRT)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in COMMANDS:
        add(sub)
    return parser


def keep_tool_caches_in_temp() -> None:
    """Point matplotlib's and Keras's config/cache folders (by default ~/.cache/matplotlib,
    ~/.config/matplotlib, ~/.keras) into the system temp dir, so a run writes nothing outside its
    output folder and temp. Settings the user made are kept; worker processes inherit them."""
    base = Path(tempfile.gettempdir()) / f"seg2tflite-{getattr(os, 'getuid', lambda: 'user')()}"
    for variable, folder in (("MPLCONFIGDIR", "matplotlib"), ("KERAS_HOME", "keras")):
        if variable not in os.environ:
            (base / folder).mkdir(parents=True, exist_ok=True)
            os.environ[variable] = str(base / folder)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.verbose or args.debug:
        os.environ[VERBOSE_VARIABLE] = "1"
    quiet_libraries()
    keep_tool_caches_in_temp()
    try:
        args.handler(args)
    except UserError as e:
        if args.debug:
            traceback.print_exc()
        print(f"seg2tflite: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # disk full, no permission, a file where a folder should be...
        if args.debug:
            traceback.print_exc()
        print(f"seg2tflite: error: {os_error_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("seg2tflite: interrupted", file=sys.stderr)
        return 130
    return 0


def os_error_line(error: OSError) -> str:
    """One line for an operating-system error while reading or writing."""
    where = f"{error.filename}: " if error.filename else ""
    reason = error.strerror or str(error) or type(error).__name__
    if error.errno == errno.ENOSPC:
        return f"{where}no space left on the device; free some space or choose another --out (the unfinished file was not kept)"
    if error.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"{where}cannot write here ({reason}); choose a writable --out"
    if error.errno in (errno.ENOTDIR, errno.EEXIST):
        return f"{where}{reason}: a file is in the way of a folder; choose another --out"
    return f"{where}{reason}; rerun with --debug for the traceback"


if __name__ == "__main__":
    sys.exit(main())
