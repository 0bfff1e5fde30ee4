"""Fixtures shared across test modules."""

import socket

import pytest
from small_chain import SIZE, BlobDataset, small_model

from seg2tflite.converters import ConvertConfig, convert_model


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
