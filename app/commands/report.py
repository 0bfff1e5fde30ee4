"""``seg2tflite report``: rebuild a run's report from its recorded results."""

from __future__ import annotations

from seg2tflite.app.cli_options import Formatter


def add(sub) -> None:
    p = sub.add_parser(
        "report", help="rebuild DIR/report/ from a run's recorded results, recomputing nothing", formatter_class=Formatter
    )
    p.add_argument("--run", required=True, help="run folder holding record.json (e.g. the demo's --out)")
    p.set_defaults(handler=run)


def run(args) -> None:
    from seg2tflite.eval.report import build_report

    print(f"report written to {build_report(args.run)}")
