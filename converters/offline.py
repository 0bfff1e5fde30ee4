"""Keep conversion off the network.

onnx2tf 1.29 calls ``utils.common_functions.download_test_image_data()`` for every model whose
inputs are all 4-D 3-channel images (onnx2tf.py: its test data for layout checks, and again as
calibration data when it quantizes on its own). That function fetches a .npy from GitHub (or
Wasabi) unless the file sits in the current directory. ``onnx2tf_offline`` replaces it with our
own preprocessed images, and ``no_network`` refuses any internet socket while conversion runs,
so a future onnx2tf that downloads something else fails loudly instead of reaching out.
(``rewrite_tflite_inout_opname`` would also curl a schema when flatc is installed; it only runs
with ``copy_onnx_input_output_names_to_tflite``, which this project never sets.)
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator

import numpy as np


class NetworkForbidden(RuntimeError):
    """A conversion step tried to open an internet connection."""


def _refuse(address, *args, **kwargs):
    raise NetworkForbidden(f"network access during conversion refused (to {address!r})")


@contextlib.contextmanager
def no_network() -> Iterator[None]:
    """Refuse internet (AF_INET/AF_INET6) connections from this process while active."""
    original_connect = socket.socket.connect
    original_connect_ex = socket.socket.connect_ex
    original_create = socket.create_connection

    def connect(self, address):
        if self.family in (socket.AF_INET, socket.AF_INET6):
            _refuse(address)
        return original_connect(self, address)

    def connect_ex(self, address):
        if self.family in (socket.AF_INET, socket.AF_INET6):
            _refuse(address)
        return original_connect_ex(self, address)

    socket.socket.connect = connect
    socket.socket.connect_ex = connect_ex
    socket.create_connection = _refuse
    try:
        yield
    finally:
        socket.socket.connect = original_connect
        socket.socket.connect_ex = original_connect_ex
        socket.create_connection = original_create


@contextlib.contextmanager
def onnx2tf_offline(sample_nhwc: np.ndarray) -> Iterator[None]:
    """Serve ``sample_nhwc`` (N, H, W, 3) float32 wherever onnx2tf would download test images."""
    import onnx2tf.onnx2tf as main
    import onnx2tf.utils.common_functions as common

    sample = np.ascontiguousarray(sample_nhwc, dtype=np.float32)
    if sample.ndim != 4 or sample.shape[-1] != 3 or len(sample) == 0:
        raise ValueError(f"sample images must be (N, H, W, 3), got {sample.shape}")

    def local_test_images() -> np.ndarray:
        return sample.copy()

    patched = [(m, "download_test_image_data") for m in (main, common) if hasattr(m, "download_test_image_data")]
    originals = [(m, name, getattr(m, name)) for m, name in patched]
    for m, name in patched:
        setattr(m, name, local_test_images)
    try:
        with no_network():
            yield
    finally:
        for m, name, original in originals:
            setattr(m, name, original)
