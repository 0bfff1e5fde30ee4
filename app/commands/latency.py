"""``seg2tflite latency``: PyTorch, TFLite float32 and full int8 timed at each model's deploy size."""

from __future__ import annotations

from pathlib import Path

from seg2tflite.app.cli_options import Formatter, config_from_args, non_negative_int, positive_int


def add(sub) -> None:
    from seg2tflite.app.latency import LatencyConfig

    d = LatencyConfig(run="")
    p = sub.add_parser(
        "latency",
        help="latency of PyTorch, TFLite float32 and full int8 at each model's deploy size",
        formatter_class=Formatter,
        description=(
            "Converts each model of a run at its registry input size (SegFormer and DeepLab 512x512, SegNet 352x480; "
            "the run's trained weights when it has them), times PyTorch and both .tflite files side by side in one fresh "
            "process, in turns, writes RUN/deploy_latency.json and adds report/deploy_latency.md."
        ),
    )
    p.add_argument("--run", required=True, help="run folder (the demo's --out), or any output folder")
    p.add_argument("--models", nargs="+", default=list(d.models), help="models to time (default: the run's)")
    p.add_argument("--threads", type=positive_int, default=d.threads, help="benchmark threads")
    p.add_argument("--runs", type=positive_int, default=d.runs, help="timing turns, each artifact about 0.25 s a turn")
    p.add_argument("--warmup", type=non_negative_int, default=d.warmup, help="untimed runs of each artifact first")
    p.set_defaults(handler=run)


def run(args) -> None:
    from seg2tflite.app.latency import LatencyConfig, run_latency
    from seg2tflite.eval.report import build_report

    path = run_latency(config_from_args(LatencyConfig, args))
    print(f"latency written to {path}")
    if (Path(args.run) / "record.json").is_file():
        print(f"report written to {build_report(args.run)}")
