"""``seg2tflite profile``: every op of a run's .tflite files timed alone."""

from __future__ import annotations

from pathlib import Path

from seg2tflite.app.cli_options import Formatter, positive_int


def add(sub) -> None:
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
    p.set_defaults(handler=run)


def run(args) -> None:
    from seg2tflite.atomic import atomic_write_text
    from seg2tflite.eval.profile_run import run_profile
    from seg2tflite.eval.report import REPORT_DIR, render_profile_md

    path = run_profile(args.run, tuple(args.models), threads=args.threads)
    print(f"profile written to {path}")
    report = Path(args.run) / REPORT_DIR / "profile.md"
    report.parent.mkdir(exist_ok=True)
    atomic_write_text(report, render_profile_md(args.run))
    print(f"report written to {report}")
