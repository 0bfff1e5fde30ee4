"""The tool subcommands: data, models, train, convert, evaluate, bench, report.

Each has an ``add_*`` that declares its options and a ``run_*`` that does the work; heavy imports
happen inside ``run_*``, so ``--help`` and a refused argument answer without loading PyTorch or
TensorFlow.
"""

from __future__ import annotations

import argparse
import sys

from seg2tflite.app.cli_options import (
    DATA_SPEC_SHORT,
    Formatter,
    add_input_size,
    class_count,
    config_from_args,
    finite_float,
    non_negative_float,
    non_negative_int,
    positive_float,
    positive_int,
)
from seg2tflite.errors import UserError

# -- data ------------------------------------------------------------------------------------


def add_data(sub) -> None:
    from seg2tflite.data import DATA_SPEC_HELP

    p = sub.add_parser("data", help="write or inspect datasets", description=DATA_SPEC_HELP, formatter_class=Formatter)
    data_sub = p.add_subparsers(dest="data_command", required=True, metavar="{synthetic,check}")
    s = data_sub.add_parser(
        "synthetic",
        help="write the built-in synthetic dataset in the folder layout",
        formatter_class=Formatter,
        description="Write DIR/{train,val,test}/{images,masks}/*.png (masks are class-index PNGs).",
    )
    s.add_argument("--out", required=True, help="output folder")
    s.add_argument("--seed", type=non_negative_int, default=0, help="random seed")
    s.add_argument("--num-train", type=non_negative_int, default=None, help="training images (default: the built-in size)")
    s.add_argument("--num-val", type=non_negative_int, default=None, help="validation images")
    s.add_argument("--num-test", type=non_negative_int, default=None, help="test images")
    s.add_argument("--image-size", type=positive_int, nargs=2, metavar=("H", "W"), default=None, help="image size")
    s.set_defaults(handler=run_data_synthetic)
    c = data_sub.add_parser("check", help="read every item of a dataset split and report problems", formatter_class=Formatter)
    c.add_argument("--data", required=True, help=DATA_SPEC_SHORT)
    c.add_argument("--split", default="val", choices=["train", "val", "test"], help="split")
    c.set_defaults(handler=run_data_check)


def run_data_synthetic(args) -> None:
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


def run_data_check(args) -> None:
    from seg2tflite.data import load_dataset, validate_dataset

    dataset = load_dataset(args.data, args.split)
    validate_dataset(dataset)
    print(f"{args.data} [{args.split}]: {len(dataset)} items, {dataset.info.num_classes} classes, all readable")


# -- models ----------------------------------------------------------------------------------


def add_models(sub) -> None:
    p = sub.add_parser("models", help="list the registered models", formatter_class=Formatter)
    p.set_defaults(handler=run_models)


def run_models(args) -> None:
    from seg2tflite.models import get_model_config, list_models

    for name in list_models():
        config = get_model_config(name)
        h, w = config.input_size
        print(f"{name:28s} input {h}x{w}  classes {config.num_classes:4d}  {config.paper}")


# -- train -----------------------------------------------------------------------------------


def add_train(sub) -> None:
    from seg2tflite.app.train_config import TrainConfig

    d = TrainConfig(model="")
    p = sub.add_parser("train", help="train a registered model natively in PyTorch", formatter_class=Formatter)
    p.add_argument("--model", required=True, help="registered model name (see `seg2tflite models`)")
    p.add_argument("--data", default=d.data, help=DATA_SPEC_SHORT)
    p.add_argument("--out", default=d.out, help="output folder for checkpoints and the training log")
    p.add_argument("--steps", type=positive_int, default=d.steps, help="optimizer steps")
    p.add_argument("--batch-size", type=positive_int, default=d.batch_size, help="batch size (per GPU under torchrun)")
    p.add_argument("--lr", type=positive_float, default=d.lr, help="peak AdamW learning rate")
    p.add_argument("--weight-decay", type=non_negative_float, default=d.weight_decay, help="AdamW weight decay")
    p.add_argument("--warmup-steps", type=non_negative_int, default=d.warmup_steps, help="linear warm-up steps")
    add_input_size(p, "training size (default: the model's)")
    p.add_argument("--num-classes", type=class_count, default=None, help="head size (default: the dataset's)")
    p.add_argument("--val-every", type=positive_int, default=d.val_every, help="steps between validations and checkpoints")
    p.add_argument("--val-images", type=positive_int, default=None, help="cap on validation images (default: whole split)")
    p.add_argument("--workers", type=non_negative_int, default=d.workers, help="DataLoader worker processes")
    p.add_argument("--seed", type=non_negative_int, default=d.seed, help="random seed")
    p.add_argument("--encoder-checkpoint", default=None, help="local timm-format ImageNet weights for the encoder")
    p.add_argument("--resume", action="store_true", help="continue from OUT/train_state.pt")
    p.add_argument("--no-amp", action="store_true", help="disable mixed precision on CUDA")
    p.set_defaults(handler=run_train)


def run_train(args) -> None:
    from seg2tflite.app.train import train
    from seg2tflite.app.train_config import TrainConfig
    from seg2tflite.models import list_models

    if args.model not in list_models():
        raise UserError(f"--model {args.model}: unknown model; choose one of {', '.join(list_models())}")
    config = config_from_args(TrainConfig, args, amp=not args.no_amp)
    best = train(config)
    print(f"best val mIoU {100 * best['miou']:.2f} at step {best.get('step')}; checkpoints in {args.out}")


# -- convert ---------------------------------------------------------------------------------


def add_convert(sub) -> None:
    from seg2tflite.converters.config import VARIANTS, ConvertConfig
    from seg2tflite.converters.int8_ranges import RANGE_METHODS

    d = ConvertConfig(input_size=(64, 64))
    p = sub.add_parser(
        "convert",
        help="carry a model down PyTorch -> ONNX -> TF -> TFLite, with parity gates at every step",
        formatter_class=Formatter,
        description=(
            "Writes OUT/model.onnx, OUT/saved_model/, OUT/model_{float32,float16,dynamic_int8,full_int8,int16x8}.tflite, "
            "OUT/parity.json and OUT/manifest.json. Exits 2 on bad input or a broken parity gate, and 3 when a TFLite "
            "variant could not be built or loaded (each is built and first loaded in a child process, so a native crash "
            "fails only that variant: the others are kept and manifest.json lists the failure). A re-used OUT keeps "
            "nothing another run built that this one does not."
        ),
    )
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", help="registered model name (see `seg2tflite models`)")
    source.add_argument("--onnx", help="convert an existing ONNX file instead (NCHW image in, NCHW logits out)")
    source.add_argument(
        "--module",
        metavar="FILE.py:FUNCTION",
        help="your own model: FUNCTION() in FILE.py (your code, imported and run) returns the torch.nn.Module; needs --input-size",
    )
    p.add_argument("--weights", default=None, help="safetensors state dict loaded strictly into the --module model")
    p.add_argument(
        "--output-key", default=None, help="dict key or attribute holding the logits (default: 'out', 'logits', the only tensor)"
    )
    p.add_argument(
        "--upsample-logits",
        action="store_true",
        help="resize logits below the input size bilinearly to it (Hugging Face's 1/4 resolution); recorded in the manifest",
    )
    p.add_argument(
        "--checkpoint",
        default=None,
        help="local weights (this project's, Hugging Face folder, or a state dict); default: seeded random init",
    )
    p.add_argument("--num-classes", type=class_count, default=None, help="head size (default: the calibration dataset's)")
    add_input_size(p, "fixed input size (default: the model's)")
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
    p.add_argument(
        "--calib-size", type=positive_int, default=d.calib_size, help="representative images for full int8 and int16x8"
    )
    p.add_argument(
        "--parity-images", type=positive_int, default=d.parity_images, help="real images every artifact is compared on"
    )
    p.add_argument("--variants", nargs="+", default=list(d.variants), choices=VARIANTS, help="TFLite variants to build")
    p.add_argument("--int8-io", default=d.int8_io, choices=["int8", "float"], help="input/output type of the full-int8 model")
    p.add_argument(
        "--int8-ranges", default=d.int8_ranges, choices=RANGE_METHODS,
        help="how full int8 chooses each activation's range: min/max, the 99.99th percentiles, the least int8 error, "
        "or auto (the best of the three on held-out calibration images)",
    )  # fmt: skip
    p.add_argument(
        "--int8-bias-correction", action=argparse.BooleanOptionalAction, default=d.int8_bias_correction,
        help="take the full-int8 weights' mean rounding error on the calibration images out of each layer's bias",
    )  # fmt: skip
    p.add_argument(
        "--input", dest="image_input", default=d.image_input, choices=["float", "uint8"],
        help="what every .tflite takes: a normalised float image, or RGB uint8 pixels (normalisation in the graph; "
        "the form MediaPipe's ImageSegmenter loads)",
    )  # fmt: skip
    p.add_argument(
        "--output", dest="image_output", default=d.image_output, choices=["logits", "classes", "lowres"],
        help="what every .tflite returns: float logits at the input size, the int32 class map (argmax in the graph), "
        "or the logits at the model's output stride (the final resize left to the app)",
    )  # fmt: skip
    p.add_argument(
        "--metadata", action=argparse.BooleanOptionalAction, default=d.metadata,
        help="write TFLite metadata (name, version, normalisation, labels) into every .tflite",
    )  # fmt: skip
    p.add_argument("--opset", type=positive_int, default=d.opset, help="ONNX opset")
    p.add_argument(
        "--max-miou-drop",
        type=non_negative_float,
        default=d.max_miou_drop,
        help="mIoU points a quantized variant may lose (gated for trained models)",
    )
    p.add_argument(
        "--trained",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="gate quantized mIoU (default: on when --checkpoint is given)",
    )
    p.add_argument("--threads", dest="num_threads", type=positive_int, default=None, help="LiteRT / ONNX Runtime threads")
    p.add_argument(
        "--mean", type=finite_float, nargs=3, default=None,
        help="per-channel mean on a 0..1 image the model was trained with (default: the model's; ImageNet's for --onnx)",
    )  # fmt: skip
    p.add_argument(
        "--std", type=positive_float, nargs=3, default=None, help="per-channel std (default: the model's; ImageNet's for --onnx)"
    )
    p.add_argument("--seed", type=non_negative_int, default=0, help="seed for the random init when no --checkpoint is given")
    p.add_argument("--out", required=True, help="output folder")
    p.set_defaults(handler=run_convert)


def run_convert(args) -> None:
    from seg2tflite.converters import checks
    from seg2tflite.converters.config import ConvertConfig
    from seg2tflite.data import load_dataset

    # Everything that can be refused is refused here, before the model is built or TensorFlow loaded.
    if args.module is not None:
        from seg2tflite.app.user_module import parse_module_spec

        parse_module_spec(args.module)
    checks.check_convert_settings(
        model=args.model, onnx=args.onnx, module=args.module, checkpoint=args.checkpoint, weights=args.weights,
        input_size=args.input_size, variants=args.variants,
    )  # fmt: skip
    calib = load_dataset(args.calib_data, args.calib_split, option="calib_data")
    parity = load_dataset(args.calib_data, args.parity_split, option="calib_data")
    data_classes = calib.info.num_classes
    checks.check_data_classes(args.num_classes, args.calib_data, data_classes)
    if args.model is not None:
        from seg2tflite.models import check_input_size, get_model_config

        checks.check_model_name(args.model)
        size = check_input_size(args.model, args.input_size or get_model_config(args.model).input_size)
        num_classes = (
            args.num_classes or checks.checkpoint_classes(args.checkpoint, args.calib_data, data_classes) or data_classes
        )
    elif args.module is not None:
        from seg2tflite.app.user_module import build_user_model, load_weights

        size, num_classes = tuple(args.input_size), args.num_classes or data_classes
        user_model = build_user_model(args.module)
        if args.weights is not None:
            load_weights(user_model, args.weights)
    else:
        from seg2tflite.converters import resolve_onnx_input_size

        size = resolve_onnx_input_size(args.onnx, args.input_size)
        num_classes = checks.onnx_classes(args.onnx, size, args.calib_data, data_classes)
    trained = args.trained if args.trained is not None else (args.checkpoint or args.weights) is not None
    config = config_from_args(ConvertConfig, args, input_size=size, trained=trained)
    checks.check_convert_memory(
        config, num_classes, model=args.model, onnx=args.onnx, module=args.module, size_given=bool(args.input_size)
    )

    from seg2tflite.converters import convert_model, convert_onnx, convert_registered
    from seg2tflite.models import IMAGENET_MEAN, IMAGENET_STD

    command = ["seg2tflite", *sys.argv[1:]]
    if args.module is not None:
        result = convert_model(
            user_model, args.out, config, calib, parity, command=command,
            mean=None if args.mean is None else tuple(args.mean), std=None if args.std is None else tuple(args.std),
            model_info={"module": args.module, "weights_file": None if args.weights is None else str(args.weights)},
        )  # fmt: skip
    elif args.model is not None:
        result = convert_registered(
            args.model,
            args.out,
            config,
            calib,
            parity,
            num_classes=num_classes,
            checkpoint=args.checkpoint,
            seed=args.seed,
            command=command,
            mean=None if args.mean is None else tuple(args.mean),
            std=None if args.std is None else tuple(args.std),
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


def add_evaluate(sub) -> None:
    p = sub.add_parser(
        "evaluate",
        help="mIoU of any artifact (.safetensors/.pt checkpoint, .onnx, SavedModel, .tflite) on a dataset",
        formatter_class=Formatter,
    )
    p.add_argument("--artifact", required=True, help="checkpoint, .onnx, SavedModel folder or .tflite")
    p.add_argument("--data", default="synthetic", help=DATA_SPEC_SHORT)
    p.add_argument("--split", default="test", choices=["train", "val", "test"], help="split to evaluate")
    add_input_size(p, "default: from the artifact's manifest or config")
    p.add_argument("--mean", type=finite_float, nargs=3, default=None, help="default: from the artifact's manifest or config")
    p.add_argument("--std", type=positive_float, nargs=3, default=None, help="default: from the artifact's manifest or config")
    p.add_argument("--workers", type=positive_int, default=_default_workers(), help="evaluation processes (TFLite, ONNX)")
    p.add_argument("--threads", type=positive_int, default=None, help="threads per process (default: cores shared out)")
    p.add_argument("--limit", type=positive_int, default=None, help="evaluate only the first N images")
    p.add_argument("--json", default=None, help="also write the metrics to this JSON file")
    p.set_defaults(handler=run_evaluate)


def run_evaluate(args) -> None:
    import json

    from seg2tflite.atomic import atomic_write_text, check_writable_file
    from seg2tflite.eval.evaluate import evaluate_artifact, format_eval

    if args.json:
        check_writable_file(args.json, "--json")
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


def add_bench(sub) -> None:
    p = sub.add_parser(
        "bench",
        help="latency (median, p90 at batch 1) and peak memory of artifacts",
        formatter_class=Formatter,
        description="LiteRT interpreter with XNNPACK, ONNX Runtime or PyTorch eager, each in a fresh process.",
    )
    p.add_argument("--artifact", required=True, nargs="+", help="checkpoint, .onnx, SavedModel folder or .tflite")
    add_input_size(p, "default: from the artifact's manifest or config")
    p.add_argument("--threads", type=positive_int, default=1, help="runtime threads")
    p.add_argument("--warmup", type=non_negative_int, default=5, help="untimed runs first")
    p.add_argument("--runs", type=positive_int, default=30, help="timed runs")
    p.add_argument(
        "--profile", action="store_true", help="also time every op of each .tflite alone: per op type, XNNPACK or builtin"
    )
    p.set_defaults(handler=run_bench)


def run_bench(args) -> None:
    from seg2tflite.eval.bench import benchmark_artifacts, format_bench

    tflite = [path for path in args.artifact if path.endswith(".tflite")]
    if args.profile and not tflite:
        raise UserError("--profile: no .tflite among --artifact; only a .tflite has ops to profile")
    results = benchmark_artifacts(
        args.artifact,
        input_size=tuple(args.input_size) if args.input_size else None,
        threads=args.threads,
        warmup=args.warmup,
        runs=args.runs,
    )
    print(format_bench(results))
    if args.profile:
        from seg2tflite.eval.profile import format_profile, profile_artifact

        for path in tflite:
            print()
            print(format_profile(profile_artifact(path, threads=args.threads)))


def add_report(sub) -> None:
    p = sub.add_parser(
        "report", help="rebuild DIR/report/ from a run's recorded results, recomputing nothing", formatter_class=Formatter
    )
    p.add_argument("--run", required=True, help="run folder holding record.json (e.g. the demo's --out)")
    p.set_defaults(handler=run_report)


def run_report(args) -> None:
    from seg2tflite.eval.report import build_report

    print(f"report written to {build_report(args.run)}")
