"""``seg2tflite convert``: a model down PyTorch -> ONNX -> TF -> TFLite, with parity gates at every step."""

from __future__ import annotations

import argparse
import sys

from seg2tflite.app.cli_options import (
    DATA_SPEC_SHORT,
    Formatter,
    add_input_size,
    add_tflite_options,
    class_count,
    config_from_args,
    finite_float,
    non_negative_float,
    non_negative_int,
    positive_float,
    positive_int,
)


def add(sub) -> None:
    from seg2tflite.converters.config import VARIANTS, ConvertConfig

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
    add_tflite_options(p, d)
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
    p.set_defaults(handler=run)


def run(args) -> None:
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
