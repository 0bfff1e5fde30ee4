"""``seg2tflite compress``: prune, cluster, quantization-aware training, mixed precision and a calibration study on a run's models."""

from __future__ import annotations

from seg2tflite.app.cli_options import (
    Formatter,
    config_from_args,
    non_negative_float,
    non_negative_int,
    positive_float,
    positive_int,
)


def add(sub) -> None:
    from seg2tflite.app.compress_config import DEFAULT_METHODS, CompressConfig

    d = CompressConfig(run="")
    p = sub.add_parser(
        "compress",
        help="prune, cluster, quantization-aware train, mixed precision and a calibration study on a run's models",
        formatter_class=Formatter,
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
    p.add_argument(
        "--finetune-steps", type=positive_int, default=d.finetune_steps, help="fine-tuning steps for prune, cluster and qat"
    )
    p.add_argument("--lr", dest="finetune_lr", type=positive_float, default=d.finetune_lr, help="fine-tuning AdamW learning rate")
    p.add_argument("--batch-size", type=positive_int, default=d.batch_size, help="fine-tuning batch size")
    p.add_argument(
        "--max-miou-drop", type=non_negative_float, default=d.max_miou_drop, help="mIoU points mixed precision may lose"
    )
    p.add_argument(
        "--val-images", type=positive_int, default=d.val_images, help="validation images the mixed-precision search measures on"
    )
    p.add_argument(
        "--calib-sizes", type=positive_int, nargs="+", default=list(d.calib_sizes), help="calibration set sizes of the study"
    )
    p.add_argument("--threads", type=positive_int, default=d.threads, help="LiteRT threads for evaluation and the benchmark")
    p.add_argument("--seed", type=non_negative_int, default=d.seed, help="random seed (fine-tuning)")
    p.add_argument("--strict", action="store_true", help="exit non-zero when a compressed model's conversion gate fails")
    p.set_defaults(handler=run)


def run(args) -> None:
    from seg2tflite.app.compress.pipeline import run_compress
    from seg2tflite.app.compress_config import CompressConfig

    config = config_from_args(CompressConfig, args)
    if run_compress(config) != 0:
        raise SystemExit(1)
