"""What SegNet's unpooling loses when its pre-pool maps are on an 8-bit grid, simulated in PyTorch.

SegNet's decoder puts each value where its 2x2 window's maximum was in the encoder's pre-pool map
(the deploy form finds that position by comparing the map with its pooled maximum, the first tie
in row-major order winning, as PyTorch's max-pool records it). In a full-int8 file that map is
int8: values within one step of each other tie, and the first of them takes the value. This
benchmark isolates that effect on a run's trained SegNet-VGG16 (its checkpoint, its conversion's
calibration images, the run's test split): the deploy form's test mIoU in float32, then with each
pre-pool map put on a 256-level grid over [0, its largest value on the calibration images] (a ReLU
output under min/max ranges) for the unpooling's positions alone (the pooled values that go on
stay float32), and for the positions and the pooled values. Beside them, the run's own full-int8
file (its record). Nothing else is quantized: the gap between the two is everything else. The same
two on the integer form the file is built from (``SegNetEqualized``: each pre-pool map's channels
scaled to the map's maximum on the calibration images), whose grid resolves every channel.

    python benchmarks/segnet_unpool.py --runs runs/seed0 runs/seed1 --record results/segnet_unpool.json

A benchmark, not a test: not part of the default test run.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from int8_ranges import (  # noqa: E402
    _arrays,
    _pytorch_miou,
    conversion_inputs,
    miou_points,
    per_image_confusions,
    record_options,
    rendered_only,
    write_record,
)

from seg2tflite.eval.run_dir import RunDir  # noqa: E402

MODEL = "segnet_vgg16"
MODES = ("float32", "positions_8bit", "positions_and_pooled_8bit")
INTEGER_FORM_MODES = ("positions_8bit", "positions_and_pooled_8bit")  # recorded as integer_form_<mode>


def measure_run(run: Path) -> dict:
    import torch
    import torch.nn.functional as F

    from seg2tflite.data import load_dataset
    from seg2tflite.eval.record import load_record
    from seg2tflite.models.registry import load_model
    from seg2tflite.models.segnet import SegNetDeploy, SegNetEqualized, pre_pool_maxima, unpool_first_max

    _, manifest, preprocess, data, calib = conversion_inputs(run, MODEL)
    images, masks = _arrays(load_dataset(data, "test"), preprocess)
    k = manifest["model"].get("num_classes") or int(masks.max()) + 1
    calibration = torch.from_numpy(calib.images)

    class OnGrid(SegNetDeploy):
        mode = "float32"

        def __init__(self, model):
            super().__init__(model)
            # per pre-pool map, its largest value on the calibration images
            self.largest = [float(peaks.max()) for peaks in pre_pool_maxima(model, calibration)]

        def forward(self, x):
            self.maps = 0
            return super().forward(x)

        def _pool_context(self, x):
            index, self.maps = self.maps, self.maps + 1
            if self.mode == "float32":
                return F.max_pool2d(x, 2, 2), F.max_pool2d(x, 2, 2), x
            step = self.largest[index] / 255
            on_grid = torch.round(x / step).clamp(0, 255) * step
            pooled_on_grid = F.max_pool2d(on_grid, 2, 2)
            going_on = pooled_on_grid if self.mode == "positions_and_pooled_8bit" else F.max_pool2d(x, 2, 2)
            return going_on, pooled_on_grid, on_grid

        def _unpool(self, x, context):
            _, pooled, before_pool = context
            return unpool_first_max(x, pooled, before_pool)

    trained = load_model(RunDir(run).checkpoint(MODEL)).eval()
    plain, equalized = OnGrid(trained), OnGrid(SegNetEqualized(trained, calibration))
    out = {"run": str(run), "pytorch_miou": _pytorch_miou(run, MODEL), "calibration_images": len(calib)}
    with torch.no_grad():
        for model, modes, prefix in ((plain, MODES, ""), (equalized, INTEGER_FORM_MODES, "integer_form_")):
            for mode in modes:
                model.mode = mode
                batches = [model(torch.from_numpy(images[i : i + 10])).argmax(1).numpy() for i in range(0, len(images), 10)]
                out[prefix + mode] = float(miou_points(per_image_confusions(np.concatenate(batches), masks, k).sum(0)))
    rows = {r.stage: r for r in load_record(run).rows if r.model == MODEL}
    out["full_int8_file"] = 100 * rows["full_int8"].miou if "full_int8" in rows else None
    return out


def render(results: dict) -> str:
    lines = [
        "| run | PyTorch | deploy form, float32 | positions on 8 bits (Δ) | positions and pooled values on 8 bits (Δ) "
        "| integer form: positions on 8 bits (Δ) | integer form: positions and pooled values (Δ) | full-int8 file (Δ) |",
        "| --- | --: | --: | --: | --: | --: | --: | --: |",
    ]
    for r in results["runs"]:
        ref = r["float32"]

        def cell(v):
            return "-" if v is None else f"{v:.2f} ({v - ref:+.2f})"

        lines.append(
            f"| `{Path(r['run']).name}` | {r['pytorch_miou']:.2f} | {ref:.2f} | {cell(r['positions_8bit'])} | "
            f"{cell(r['positions_and_pooled_8bit'])} | {cell(r.get('integer_form_positions_8bit'))} | "
            f"{cell(r.get('integer_form_positions_and_pooled_8bit'))} | {cell(r['full_int8_file'])} |"
        )  # fmt: skip
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = record_options(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    parser.add_argument("--runs", type=Path, nargs="+", help="run folders written by `seg2tflite demo` with SegNet-VGG16")
    args = parser.parse_args(argv)
    if rendered_only(parser, args, render, required="runs"):
        return 0
    from seg2tflite.converters.manifest import package_versions

    command = ["python", "benchmarks/segnet_unpool.py", *(argv or sys.argv[1:])]
    results = {"command": command, "versions": package_versions(), "runs": [measure_run(run) for run in args.runs]}
    write_record(results, [run / "segnet_unpool.json" for run in args.runs] + ([args.record] if args.record else []))
    print(render(results), end="")
    return 0


if __name__ == "__main__":
    from seg2tflite.quiet import quiet_libraries

    quiet_libraries()  # no start-up lines from TensorFlow, absl or LiteRT
    sys.exit(main())
