"""The litert-torch benchmark's own parts that run in the project's environment.

The benchmark itself (``benchmarks/vs_litert_torch.py``) makes litert-torch's environment and is
not part of the default tests; what it claims about fairness is tested here: litert-torch
calibrates on exactly the images the seg2tflite conversion did, rebuilt from the manifest's names.
"""

import subprocess
import sys
from pathlib import Path

import numpy as np

from seg2tflite.calibration.representative import build_calibration_set
from seg2tflite.data import Preprocess, load_dataset

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import vs_litert_torch  # noqa: E402

SPEC = "synthetic:size=32,train=40,val=4,test=4"
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def test_calibration_images_are_the_conversions_own():
    dataset = load_dataset(SPEC, "train")
    chosen = build_calibration_set(dataset, Preprocess((32, 32), MEAN, STD), size=8, seed=3, progress=False)
    manifest = {
        "calibration": {"source": "synthetic:train", "images": list(chosen.names)},
        "preprocessing": {"size": [32, 32], "mean": list(MEAN), "std": list(STD)},
    }
    rebuilt = vs_litert_torch.calibration_images(manifest, SPEC)
    assert rebuilt.dtype == np.float32 and np.array_equal(rebuilt, chosen.images)
    first_eight = build_calibration_set(dataset, Preprocess((32, 32), MEAN, STD), size=8, strategy="random", progress=False)
    assert not np.array_equal(rebuilt, first_eight.images)  # another selection is told apart


def test_table_puts_mixed_beside_litert_torchs_int8():
    timing = lambda ms, n: {"median_ms": ms, "rounds_ms": [ms, 2 * ms, ms], "delegated": n, "ops": 10}  # noqa: E731
    row = {
        "model": "m",
        "size": [96, 96],
        "latency": {
            "seg2tflite float32": timing(4.0, 10),
            "seg2tflite full_int8": timing(3.0, 8),
            "seg2tflite mixed_int8": timing(1.5, 10),
            "litert-torch float32": timing(5.0, 10),
            "litert-torch full_int8": timing(2.0, 9),
        },
        "accuracy": {
            "pytorch": {"miou": 50.0},
            "seg2tflite float32": {"miou": 50.0},
            "seg2tflite full_int8": {"miou": 49.0},
            "seg2tflite mixed_int8": {"miou": 49.5},
            "litert-torch float32": {"miou": 50.0},
            "litert-torch full_int8": {"miou": 48.0},
        },
    }
    lines = vs_litert_torch.markdown([row]).splitlines()
    assert lines[2] == "| m | 96x96 | float32 | 4.00 | 5.00 | 0.80 | 50.00 (+0.00) | 50.00 (+0.00) | 10/10 / 10/10 |"
    assert lines[3] == "| m | 96x96 | full int8 | 3.00 | 2.00 | 1.50 | 49.00 (-1.00) | 48.00 (-2.00) | 8/10 / 9/10 |"
    assert lines[4] == "| m | 96x96 | mixed int8 | 1.50 | 2.00 | 0.75 | 49.50 (-0.50) | 48.00 (-2.00) | 10/10 / 9/10 |"
    assert len(lines) == 5  # no noise table without --noise-check
    row["noise"] = {"median_ms": 4.4, "ratio": 4.0 / 4.4}
    assert vs_litert_torch.markdown([row]).splitlines()[-1] == "| m | 96x96 | 4.00 | 4.40 | 0.91 |"


def test_a_folder_that_is_no_run_is_one_line(tmp_path):
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "vs_litert_torch.py"), "--run", str(tmp_path)],
        capture_output=True, text=True,
    )  # fmt: skip
    assert done.returncode != 0 and done.stderr.strip() == f"{tmp_path}: not a `seg2tflite demo` run folder (no demo.json)"


def test_ratio_pairs_each_round():
    # The machine was slow for the first rounds and turned fast during round 3, between the two
    # files: the medians set ours' slow median against theirs' fast one (1.62); the rounds' own
    # ratios say ours is the faster file in four rounds of five.
    ours, theirs = [3.4, 3.4, 3.4, 1.9, 1.9], [3.6, 3.6, 2.1, 2.1, 2.1]
    assert np.median(ours) / np.median(theirs) > 1.6
    ratio = vs_litert_torch.paired_ratio({"rounds_ms": ours}, {"rounds_ms": theirs})
    assert ratio == 3.4 / 3.6


def test_the_files_compared_are_timed_one_right_after_the_other():
    names = ["seg2tflite float32", "seg2tflite full_int8", "seg2tflite mixed_int8", "litert-torch float32"]
    names += ["litert-torch full_int8", vs_litert_torch.NOISE]
    assert sorted(names, key=vs_litert_torch._turn_position) == [
        vs_litert_torch.NOISE, "seg2tflite float32", "litert-torch float32",
        "seg2tflite full_int8", "litert-torch full_int8", "seg2tflite mixed_int8",
    ]  # fmt: skip
