"""``seg2tflite matrix FILE --out DIR``: the subcommand (registered in ``app/cli.py``)."""

from __future__ import annotations

import sys

from seg2tflite.app.cli_options import Formatter, positive_int
from seg2tflite.app.matrix.run import SHARD_IMAGES


def add(sub) -> None:
    p = sub.add_parser(
        "matrix",
        help="a regression matrix: models x variants x data with budgets; table, record and JUnit XML",
        formatter_class=Formatter,
        description=(
            "Converts every entry of the TOML matrix FILE (registered models, FILE.py:FUNCTION modules, Hugging Face "
            "folders, ONNX files) into OUT/entries/NAME/convert/, evaluates every (entry, variant) cell on its evaluation "
            "data and judges it by its budgets (the conversion's float gates, the mIoU drop per variant against "
            "model.onnx, optional latency ratios to float32). Writes OUT/matrix.json (the record, with the node that ran "
            "each cell), OUT/report.md (the table) and OUT/junit.xml; exits 1 when a cell fails. A re-run continues "
            'where it stopped. --ray local or --ray ADDRESS runs the tasks on Ray (pip install "seg2tflite[ray]"; on a '
            "cluster OUT must be a filesystem every node sees at the same path). See docs/matrix.md."
        ),
    )
    p.add_argument("file", metavar="FILE", help="matrix file (.toml)")
    p.add_argument("--out", required=True, help="output folder (shared by every node under --ray ADDRESS)")
    p.add_argument(
        "--ray", default=None, metavar="local|ADDRESS",
        help="run conversions and evaluations as Ray tasks: local starts Ray on this machine's cores, ADDRESS joins a cluster",
    )  # fmt: skip
    p.add_argument("--workers", type=positive_int, default=1, help="without --ray: processes running the tasks (1: this one)")
    p.add_argument("--shard-images", type=positive_int, default=SHARD_IMAGES, help="images per evaluation task")
    p.set_defaults(handler=run)


def run(args) -> None:
    from seg2tflite.app.matrix.report import render_table
    from seg2tflite.app.matrix.run import run_matrix
    from seg2tflite.app.matrix.spec import load_matrix
    from seg2tflite.errors import UserError

    matrix = load_matrix(args.file)
    if args.ray and args.workers > 1:
        raise UserError("--workers: applies without --ray; Ray decides how many tasks run at once")
    result = run_matrix(
        matrix, args.out, ray=args.ray, workers=args.workers, shard_images=args.shard_images,
        command=["seg2tflite", *sys.argv[1:]],
    )  # fmt: skip
    print()
    print(render_table(result.record))
    print(f"record {result.out / 'matrix.json'}, table {result.out / 'report.md'}, JUnit {result.out / 'junit.xml'}")
    if result.failed:
        raise SystemExit(1)
