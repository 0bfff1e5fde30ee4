"""The quiet terminal (issue 28, item 12): without --verbose, a conversion prints its own lines only,
and a refused code pickle is its one error line, no torch warning before it."""

import os
import pickle
import re
import subprocess
import sys

import pytest
from hostile import SMALL, Bench

# absl's C++ log lines ("I0000 00:00:1796571965.159530   14016 devices.cc:67] ...") and its preamble
LIBRARY_LINE = re.compile(r"^[IWEF]\d{4} \d\d:\d\d:\d\d\.\d+\s+\d+ \S+:\d+\]|absl::InitializeLog")


def _run(*argv, verbose=False):
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "SEG2TFLITE_VERBOSE")}
    command = [sys.executable, "-m", "seg2tflite.app", *(["--verbose"] if verbose else []), *map(str, argv)]
    return subprocess.run(command, capture_output=True, text=True, env=env)


def _library_lines(stderr: str) -> list[str]:
    return [line for line in re.split(r"[\r\n]", stderr) if LIBRARY_LINE.search(line)]


@pytest.mark.chain
def test_a_conversion_prints_no_library_lines_unless_verbose(tmp_path):
    onnx = Bench(tmp_path, None).onnx()
    argv = ["convert", "--onnx", onnx, "--calib-data", SMALL, "--variants", "float32", "--parity-images", "2"]
    quiet = _run(*argv, "--out", tmp_path / "quiet")
    assert quiet.returncode == 0, quiet.stderr[-3000:]
    assert _library_lines(quiet.stderr) == [], quiet.stderr[-3000:]
    assert "mediapipe: float32 not run in MediaPipe's ImageSegmenter" in quiet.stdout  # said once, not as a failure
    assert "failed" not in quiet.stdout.lower(), quiet.stdout


class _RunsCode:
    def __reduce__(self):
        return (print, ("ran",))


def test_a_code_pickle_is_refused_without_a_warning_before_it(tmp_path):
    evil = tmp_path / "evil.pt"
    evil.write_bytes(pickle.dumps({"weight": _RunsCode()}, protocol=4))
    done = _run("convert", "--model", "segformer_b0", "--checkpoint", evil, "--input-size", "32", "32",
                "--calib-data", SMALL, "--calib-size", "8", "--out", tmp_path / "out")  # fmt: skip
    lines = [line for line in re.split(r"[\r\n]", done.stderr) if line.strip() and not re.search(r"\d+/\d+ \[", line)]
    assert done.returncode == 2 and len(lines) == 1 and lines[0].startswith("seg2tflite: error: "), done.stderr
    assert "ran" not in done.stdout


def test_segnet_training_steps_print_no_determinism_warning(monkeypatch):
    """Training SegNet on CPU (deterministic algorithms, warn only) warned about max_unpool2d at
    every step; its 2x2/stride-2 positions never collide, so the warning is muted."""
    import warnings

    import torch
    import torch.nn.functional as F

    from seg2tflite.quiet import quiet_libraries

    monkeypatch.delenv("SEG2TFLITE_VERBOSE", raising=False)
    before = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quiet_libraries()
        torch.use_deterministic_algorithms(True, warn_only=True)
        try:
            pooled, positions = F.max_pool2d(torch.rand(1, 2, 4, 4), 2, 2, return_indices=True)
            F.max_unpool2d(pooled, positions, 2, 2)
        finally:
            torch.use_deterministic_algorithms(before[0], warn_only=before[1])
    assert not [w for w in caught if "deterministic" in str(w.message)]
