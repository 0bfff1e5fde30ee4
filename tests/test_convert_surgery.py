"""The onnx2tf workarounds, each shown necessary, and the divergence report on a broken conversion.

1. permute->LayerNorm->permute with channels == spatial size: onnx2tf converts it silently wrong.
   Without ``onnx_surgery`` the pipeline must fail the SavedModel gate and name module ``norm``;
   with it the chain passes.
2. A token LayerNorm on an unsimplified graph crashes onnx2tf; ``prepare_onnx`` (onnxsim) fixes it.
"""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from seg2tflite.converters import ConvertConfig, ParityError, convert_model
from seg2tflite.converters.divergence import compare_tensor, module_path
from seg2tflite.converters.onnx_export import export_onnx, prepare_onnx
from seg2tflite.converters.onnx_surgery import apply_workarounds
from seg2tflite.converters.onnx_to_tf import ConversionError, run_onnx2tf
from seg2tflite.converters.runtimes import OnnxRunner, SavedModelRunner
from seg2tflite.data.base import DatasetInfo, SegmentationDataset

SIZE = (32, 32)


class ChannelLayerNorm(nn.Module):
    """LayerNorm over channels written the way SegFormer/ConvNeXt code often does."""

    def __init__(self, channels):
        super().__init__()
        self.ln = nn.LayerNorm(channels)

    def forward(self, x):
        return self.ln(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class ChannelNormNet(nn.Module):
    """stride-2 stem to 16 channels at 16x16: channel count == height == width."""

    def __init__(self, num_classes=4):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, stride=2, padding=1)
        self.norm = ChannelLayerNorm(16)
        self.head = nn.Conv2d(16, num_classes, 1)

    def forward(self, x):
        y = self.head(self.norm(self.stem(x)))
        return F.interpolate(y, size=x.shape[-2:], mode="bilinear", align_corners=False)


class TokenNet(nn.Module):
    """Conv -> tokens (B, N, C) -> LayerNorm -> Linear -> back to a map."""

    def __init__(self, num_classes=4):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, stride=2, padding=1)
        self.norm = nn.LayerNorm(16)
        self.fc = nn.Linear(16, 16)
        self.head = nn.Conv2d(16, num_classes, 1)

    def forward(self, x):
        y = self.stem(x)
        b, c, h, w = y.shape
        t = self.fc(self.norm(y.flatten(2).transpose(1, 2)))
        y = t.transpose(1, 2).reshape(b, c, h, w)
        return F.interpolate(self.head(y), size=x.shape[-2:], mode="bilinear", align_corners=False)


class NoiseDataset(SegmentationDataset):
    def __init__(self, split, n=12):
        self.split, self.n = split, n
        self.info = DatasetInfo("noise", ("a", "b", "c", "d"), ((0, 0, 0),) * 4)

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        rng = np.random.default_rng(i + (100 if self.split == "val" else 0))
        image = rng.integers(0, 256, (*SIZE, 3), dtype=np.uint8)
        mask = (np.arange(SIZE[0] * SIZE[1]).reshape(SIZE) // 256 % 4).astype(np.uint8)
        return image, mask


def _perturbed(model):
    """Random affine parameters, so the LayerNorm's scale and shift matter."""
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    return model.eval()


def _config(**kw):
    return ConvertConfig(input_size=SIZE, variants=("float32",), calib_size=8, parity_images=2, **kw)


@pytest.mark.chain  # it runs the conversion chain (onnx2tf)
def test_channel_layernorm_rewrite_is_needed_and_divergence_names_the_module(tmp_path):
    model = _perturbed(ChannelNormNet())
    data = NoiseDataset("train"), NoiseDataset("val")
    with pytest.raises(ParityError) as broken:
        convert_model(model, tmp_path / "raw", _config(onnx_rewrites=False), *data, log=None, progress=False)
    message = str(broken.value)
    assert "saved_model:" in message  # the first broken stage, by name
    report = broken.value.result.parity
    first = report.divergence["first"]
    assert first["module"] == "norm" and first["module_type"] == "ChannelLayerNorm"
    assert "module `norm` (ChannelLayerNorm)" in message
    assert (tmp_path / "raw" / "parity.json").is_file()  # figures are written before the error

    result = convert_model(model, tmp_path / "fixed", _config(), *data, log=None, progress=False)
    assert result.parity.failures == []
    assert result.manifest["onnx_rewrites"] == [
        "/norm/ln/LayerNormalization: permute->LayerNorm->permute rewritten as a channel norm over axis 1"
    ]
    assert result.parity.stages["float32"].vs_pytorch["argmax_agreement"] == 1.0


def test_rewrite_keeps_the_function_in_onnx_runtime(tmp_path):
    model = _perturbed(ChannelNormNet())
    exported = export_onnx(model, SIZE)
    rewritten, applied = apply_workarounds(exported)
    assert len(applied) == 1
    assert not any(n.op_type in ("LayerNormalization", "Transpose") for n in rewritten.graph.node)
    x = np.random.default_rng(0).standard_normal((1, 3, *SIZE)).astype(np.float32)
    import onnx

    onnx.save(rewritten, str(tmp_path / "r.onnx"))
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    assert np.abs(OnnxRunner(tmp_path / "r.onnx")(x) - ref).max() < 1e-5


def test_token_layernorm_needs_simplification(tmp_path):
    model = _perturbed(TokenNet())
    sample = np.random.default_rng(0).standard_normal((2, *SIZE, 3)).astype(np.float32)
    raw = export_onnx(model, SIZE)  # Shape/Gather/Concat feed the Reshape: shapes unknown to onnx2tf
    with pytest.raises(ConversionError, match="LayerNormalization"):
        run_onnx2tf(raw, tmp_path / "raw", sample)
    prepared = prepare_onnx(raw, SIZE, "token net")
    run_onnx2tf(prepared.model, tmp_path / "ok", sample)
    x = sample[:1].transpose(0, 3, 1, 2)
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    assert np.abs(SavedModelRunner(tmp_path / "ok")(x) - ref).max() < 1e-4


def test_layout_rules_and_module_names():
    a = np.random.default_rng(0).standard_normal((1, 4, 3, 5)).astype(np.float32)
    assert compare_tensor(a, a.transpose(0, 2, 3, 1))[0] == 0.0
    assert compare_tensor(a, a)[0] == 0.0
    err, why = compare_tensor(a, a.transpose(0, 3, 2, 1))  # any other permutation is not accepted
    assert err is None and "layout" in why
    cube = np.random.default_rng(1).standard_normal((1, 4, 4, 4)).astype(np.float32)
    assert compare_tensor(cube, cube.transpose(0, 1, 3, 2))[0] > 0.1  # a wrong transpose is caught

    names = {"", "stem", "stem.0", "encoder", "encoder.blocks.3", "encoder.blocks.3.attn", "norm", "norm.ln"}
    assert module_path("/stem/stem.0/Conv", names) == "stem.0"
    assert module_path("/encoder/blocks.3/attn/MatMul", names) == "encoder.blocks.3.attn"
    assert module_path("/norm/ln/LayerNormalization/Div", names) == "norm.ln"
    assert module_path("/Transpose", names) == ""
    assert module_path("/stem/stem.0/Conv") == "stem.0"
    assert module_path("/norm/ln/LayerNormalization/Div") == "norm.ln"
