"""``seg2tflite demo``: the main job, every model trained, converted, evaluated and benchmarked."""

from __future__ import annotations

from seg2tflite.app.cli_options import (
    DATA_SPEC_SHORT,
    Formatter,
    add_tflite_options,
    config_from_args,
    non_negative_float,
    non_negative_int,
    positive_float,
    positive_int,
)


def add(sub) -> None:
    from seg2tflite.app.demo_config import DEFAULT_TRAIN_STEPS, DemoConfig

    d = DemoConfig()
    steps = ", ".join(f"{k} {v}" for k, v in DEFAULT_TRAIN_STEPS.items())
    p = sub.add_parser(
        "demo",
        help="the main job: train, convert, evaluate and benchmark every model, then write the report",
        formatter_class=Formatter,
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
        "--input-size", type=positive_int, nargs=2, metavar=("H", "W"), default=None,
        help="train/convert/evaluate size for every model (default: 96x96, segnet_vgg16 64x64)",
    )  # fmt: skip
    p.add_argument(
        "--train-steps", type=positive_int, default=None, help=f"optimizer steps per model (default per model: {steps})"
    )
    p.add_argument("--batch-size", type=positive_int, default=d.batch_size, help="training batch size")
    p.add_argument("--lr", type=positive_float, default=d.lr, help="peak AdamW learning rate")
    p.add_argument("--calib-size", type=positive_int, default=d.calib_size, help="representative images for full int8 / int16x8")
    p.add_argument("--parity-images", type=positive_int, default=d.parity_images, help="images the conversion gates compare on")
    p.add_argument("--eval-limit", type=positive_int, default=None, help="evaluate only the first N test images (default: all)")
    p.add_argument(
        "--int16x8-eval-images", type=positive_int, default=d.int16x8_eval_images,
        help="evaluate the int16x8 file (LiteRT reference kernels, 30-40x slower) on the first N test images only",
    )  # fmt: skip
    p.add_argument("--workers", type=positive_int, default=d.workers, help="processes evaluating each .tflite")
    p.add_argument("--bench-threads", type=positive_int, default=d.bench_threads, help="threads for the latency benchmark")
    p.add_argument(
        "--max-miou-drop", type=non_negative_float, default=d.max_miou_drop, help="mIoU points a quantized variant may lose"
    )
    add_tflite_options(p, d)
    p.add_argument("--seed", type=non_negative_int, default=d.seed, help="random seed (data, init, training)")
    p.add_argument("--strict", action="store_true", help="exit non-zero when any conversion gate fails")
    p.set_defaults(handler=run)


def run(args) -> None:
    from seg2tflite.app.demo import run_demo
    from seg2tflite.app.demo_config import DemoConfig

    config = config_from_args(DemoConfig, args)
    if run_demo(config) != 0:
        raise SystemExit(1)
