"""``seg2tflite evaluate``: mIoU of any artifact on a dataset."""

from __future__ import annotations

from seg2tflite.app.cli_options import DATA_SPEC_SHORT, Formatter, add_input_size, finite_float, positive_float, positive_int


def _default_workers() -> int:
    import os

    return max(1, min(4, os.cpu_count() or 1))


def add(sub) -> None:
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
    p.set_defaults(handler=run)


def run(args) -> None:
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
