"""The ``seg2tflite`` command line: one subcommand per job, heavy imports only when a job runs."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
import traceback
from pathlib import Path

from seg2tflite.app import commands
from seg2tflite.app.cli_options import (
    DATA_SPEC_SHORT,
    Formatter,
    Parser,
    config_from_args,
    non_negative_float,
    non_negative_int,
    positive_float,
    positive_int,
)
from seg2tflite.app.flags import COMMAND_LINE_NAMES
from seg2tflite.app.matrix import command as matrix_command
from seg2tflite.errors import Terminated, UserError, command_line_wording, one_line, os_error_line
from seg2tflite.quiet import VERBOSE_VARIABLE, quiet_libraries

# -- demo ------------------------------------------------------------------------------------


def _add_demo(sub) -> None:
    from seg2tflite.app.demo_config import DEFAULT_TRAIN_STEPS, DemoConfig
    from seg2tflite.converters.int8_ranges import RANGE_METHODS

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
    p.add_argument(
        "--input", dest="image_input", default=d.image_input, choices=["float", "uint8"],
        help="what every .tflite takes (see convert --input; uint8: the files MediaPipe's ImageSegmenter loads)",
    )  # fmt: skip
    p.add_argument(
        "--output", dest="image_output", default=d.image_output, choices=["logits", "classes", "lowres"],
        help="what every .tflite returns (see convert --output)",
    )  # fmt: skip
    p.add_argument(
        "--int8-ranges", default=d.int8_ranges, choices=RANGE_METHODS,
        help="how full int8 chooses each activation's range (see convert --int8-ranges)",
    )  # fmt: skip
    p.add_argument(
        "--int8-bias-correction", action=argparse.BooleanOptionalAction, default=d.int8_bias_correction,
        help="take the full-int8 weights' mean error out of the biases (see convert --int8-bias-correction)",
    )  # fmt: skip
    p.add_argument("--seed", type=non_negative_int, default=d.seed, help="random seed (data, init, training)")
    p.add_argument("--strict", action="store_true", help="exit non-zero when any conversion gate fails")
    p.set_defaults(handler=_run_demo)


def _run_demo(args) -> None:
    from seg2tflite.app.demo import run_demo
    from seg2tflite.app.demo_config import DemoConfig

    config = config_from_args(DemoConfig, args)
    if run_demo(config) != 0:
        raise SystemExit(1)


# -- compress --------------------------------------------------------------------------------


def _add_compress(sub) -> None:
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
    p.set_defaults(handler=_run_compress)


def _run_compress(args) -> None:
    from seg2tflite.app.compress.pipeline import run_compress
    from seg2tflite.app.compress_config import CompressConfig

    config = config_from_args(CompressConfig, args)
    if run_compress(config) != 0:
        raise SystemExit(1)


# -- latency at the deploy size -------------------------------------------------------------


def _add_latency(sub) -> None:
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
    p.set_defaults(handler=_run_latency)


def _run_latency(args) -> None:
    from seg2tflite.app.latency import LatencyConfig, run_latency
    from seg2tflite.eval.report import build_report

    path = run_latency(config_from_args(LatencyConfig, args))
    print(f"latency written to {path}")
    if (Path(args.run) / "record.json").is_file():
        print(f"report written to {build_report(args.run)}")


# -- per-op profile of a run's files --------------------------------------------------------


def _add_profile(sub) -> None:
    p = sub.add_parser(
        "profile",
        help="where the time of every .tflite of a run goes: each op timed alone, XNNPACK or builtin",
        formatter_class=Formatter,
        description=(
            "Profiles every .tflite in RUN/models/M/convert/ (each op cut out and timed alone, as `bench --profile` "
            "does; int16x8 is skipped, its reference kernels are too slow), each file in a fresh process, merges the "
            "figures into RUN/profile.json and writes report/profile.md."
        ),
    )
    p.add_argument("--run", required=True, help="run folder (the demo's --out)")
    p.add_argument("--models", nargs="+", default=[], help="models of the run to profile (default: all)")
    p.add_argument("--threads", type=positive_int, default=2, help="LiteRT threads")
    p.set_defaults(handler=_run_profile)


def _run_profile(args) -> None:
    from seg2tflite.atomic import atomic_write_text
    from seg2tflite.eval.profile_run import run_profile
    from seg2tflite.eval.report import REPORT_DIR, render_profile_md

    path = run_profile(args.run, tuple(args.models), threads=args.threads)
    print(f"profile written to {path}")
    report = Path(args.run) / REPORT_DIR / "profile.md"
    report.parent.mkdir(exist_ok=True)
    atomic_write_text(report, render_profile_md(args.run))
    print(f"report written to {report}")


# -- entry point -----------------------------------------------------------------------------

COMMANDS = (
    _add_demo,
    commands.add_data,
    commands.add_models,
    commands.add_train,
    commands.add_convert,
    commands.add_evaluate,
    commands.add_bench,
    commands.add_report,
    _add_compress,
    _add_latency,
    _add_profile,
    matrix_command.add,
)


def build_parser() -> Parser:
    parser = Parser(
        prog="seg2tflite",
        description="Carry PyTorch segmentation models to TensorFlow Lite and measure what each step costs.",
        formatter_class=Formatter,
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


def _terminate(signum, frame) -> None:
    raise Terminated(signum)


def main(argv: list[str] | None = None) -> int:
    """Run one command; a refusal is one ``seg2tflite: error:`` line on stderr (exit 2, or the
    error's own ``exit_code``), never a traceback unless ``--debug``. Messages name flags."""
    with command_line_wording(COMMAND_LINE_NAMES):
        return _run(argv)


def _run(argv: list[str] | None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except UserError as e:  # a refused option: argparse printed the usage
        print(f"seg2tflite: error: {one_line(e)}", file=sys.stderr)
        return 2
    if args.verbose or args.debug:
        os.environ[VERBOSE_VARIABLE] = "1"
    quiet_libraries()
    keep_tool_caches_in_temp()
    # SIGTERM (kill, a batch system's time limit) unwinds like Ctrl-C, so every temporary is removed.
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        args.handler(args)
    except UserError as e:
        _close_progress_bars()
        if args.debug:
            traceback.print_exc()
        print(f"seg2tflite: error: {one_line(e)}", file=sys.stderr)
        return getattr(e, "exit_code", 2)
    except OSError as e:  # disk full, no permission, a file where a folder should be...
        _close_progress_bars()
        if args.debug:
            traceback.print_exc()
        print(f"seg2tflite: error: {os_error_line(e, _output_option(args))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        _close_progress_bars()
        print("seg2tflite: interrupted", file=sys.stderr)
        return 130
    except Terminated:
        _close_progress_bars()
        print("seg2tflite: terminated", file=sys.stderr)
        return 128 + signal.SIGTERM
    finally:
        signal.signal(signal.SIGTERM, previous)
    return 0


def _close_progress_bars() -> None:
    """Close the progress bars still open, so the last line is on a line of its own and no bar is
    redrawn after it (an open tqdm bar is closed, and drawn again, when it is collected)."""
    std = sys.modules.get("tqdm.std")
    for bar in list(getattr(getattr(std, "tqdm", None), "_instances", ())):
        try:
            bar.close()
        except Exception:  # noqa: BLE001 - a bar that cannot draw any more is closed enough
            pass
    sys.stderr.flush()


def _output_option(args) -> str | None:
    """The option naming where this command writes, for the advice in an OS error."""
    if getattr(args, "out", None):
        return "--out"
    if getattr(args, "json", None):
        return "--json"
    return None


if __name__ == "__main__":
    sys.exit(main())
