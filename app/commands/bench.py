"""``seg2tflite bench``: latency and peak memory of artifacts, each in a fresh process."""

from __future__ import annotations

from seg2tflite.app.cli_options import Formatter, add_input_size, non_negative_int, positive_int
from seg2tflite.errors import UserError


def add(sub) -> None:
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
    p.set_defaults(handler=run)


def run(args) -> None:
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
