"""Fixtures shared across test modules, and the fast lane's guard.

The fast lane (``pytest -m "not chain"``) imports no TensorFlow: a test that does while that lane
runs fails, naming itself, so it is marked ``chain`` (it needs the conversion chain) or fixed.
"""

import socket
import sys

import pytest

from seg2tflite.converters import ConvertConfig, convert_model

from small_chain import SIZE, BlobDataset, small_model


def _fast_lane(config) -> bool:
    return "not chain" in (config.getoption("markexpr") or "")


@pytest.fixture(autouse=True)
def _no_tensorflow_in_the_fast_lane(request):
    before = "tensorflow" in sys.modules
    yield
    if _fast_lane(request.config) and not before and "tensorflow" in sys.modules:
        pytest.fail(f"{request.node.nodeid} imported TensorFlow in the fast lane; mark it chain", pytrace=False)


@pytest.fixture(scope="session")
def offline_result(tmp_path_factory):
    """Convert with every AF_INET/AF_INET6 connection and every requests.get refused, recording attempts."""
    import requests

    attempts = []
    real_connect = socket.socket.connect

    def connect(self, address):
        if self.family in (socket.AF_INET, socket.AF_INET6):
            attempts.append(("connect", address))
            raise OSError("network forbidden in this test")
        return real_connect(self, address)

    def refuse(address, *args, **kwargs):
        attempts.append(("create_connection/get", address))
        raise OSError("network forbidden in this test")

    out = tmp_path_factory.mktemp("small")
    config = ConvertConfig(input_size=SIZE, calib_size=8, parity_images=4)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(socket.socket, "connect", connect)
        mp.setattr(socket, "create_connection", refuse)
        mp.setattr(requests, "get", refuse)
        result = convert_model(
            small_model(), out, config, BlobDataset("train"), BlobDataset("val"), command=["test"], log=None, progress=False
        )
        during_conversion = list(attempts)
        # Unguarded, onnx2tf's own test-image helper goes to the network (from a folder without its .npy):
        import onnx2tf.utils.common_functions as common

        mp.chdir(out)
        with pytest.raises(OSError, match="network forbidden"):
            common.download_test_image_data()
    return result, during_conversion, attempts
