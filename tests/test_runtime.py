"""The runtime the figures come from: LiteRT >= 2.3 beside onnx2tf's pin, and the known-bad releases named."""

from importlib import metadata

import pytest

from seg2tflite.converters.runtimes import litert_version, litert_warning


def _release(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split(".")[:3])


def test_the_install_brings_litert_2_3_beside_onnx2tf():
    """The README's install ends with runtime-override.txt: a reinstall that falls back to onnx2tf's
    pinned 2.1.0 (int8 BATCH_MATMUL wrong under XNNPACK) fails here, not silently in the figures."""
    assert metadata.version("onnx2tf") == "1.29.24"
    assert _release(litert_version()) >= (2, 3, 0), (
        f"ai-edge-litert {litert_version()}: pip install --no-deps -r runtime-override.txt"
    )
    assert litert_warning() is None


@pytest.mark.parametrize("version", ["2.0.2", "2.1.0", "2.1.2"])
def test_known_bad_releases_are_named(version):
    line = litert_warning(version)
    assert line is not None and version in line and ">= 2.1.3" in line and "BATCH_MATMUL" in line


@pytest.mark.parametrize("version", ["1.4.0", "2.0.1", "2.1.3", "2.3.0", "3.0.0rc1", "not installed"])
def test_other_releases_pass(version):
    assert litert_warning(version) is None
