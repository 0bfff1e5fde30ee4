"""seg2tflite.converters.parity: the figures on logits worked out by hand, the gates, the error message."""

import math

import numpy as np
import pytest

from seg2tflite.converters.config import ConvertConfig
from seg2tflite.converters.parity import ParityError, apply_gates, format_table, measure_parity, raise_on_failure

K, H, W = 3, 4, 5


def _logits(seed=0, n=2):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, K, H, W)).astype(np.float32) * 4


def _runner(table):
    """A runner that answers each image by looking it up (images are constant per item)."""
    return lambda x: table[int(x[0, 0, 0, 0])][None]


def _images(n=2):
    return np.stack([np.full((3, H, W), i, np.float32) for i in range(n)])


def _config(**kw):
    return ConvertConfig(input_size=(8, 8), **kw)


def test_identical_stages_agree_exactly():
    ref = _logits()
    report = measure_parity({"pytorch": _runner(ref), "onnx": _runner(ref.copy())}, _images(), None, K, progress=False)
    m = report.stages["onnx"].vs_pytorch
    assert m["max_abs"] == 0 and m["mean_abs"] == 0
    assert m["cosine"] == pytest.approx(1.0)
    assert m["argmax_agreement"] == 1.0
    assert report.logit_range == pytest.approx(float(ref.max() - ref.min()))
    assert apply_gates(report, _config()) == []
    assert report.stages["onnx"].gate == "pass"


def test_drift_and_agreement_by_hand():
    ref = _logits()
    out = ref.copy()
    out[0, :, 0, 0] = -ref[0, :, 0, 0]  # one pixel of image 0 negated: its argmax becomes its argmin
    out[1] += 0.5  # a constant shift never changes the argmax
    report = measure_parity({"pytorch": _runner(ref), "onnx": _runner(out)}, _images(), None, K, progress=False)
    m = report.stages["onnx"].vs_pytorch
    diff = np.abs(out - ref)
    assert m["max_abs"] == pytest.approx(float(diff.max()))
    assert m["mean_abs"] == pytest.approx(float(diff.mean()))
    cos = float((ref * out).sum() / np.sqrt((ref * ref).sum() * (out * out).sum()))
    assert m["cosine"] == pytest.approx(cos)
    agree = float((ref.argmax(1) == out.argmax(1)).mean())
    assert m["argmax_agreement"] == pytest.approx(agree)
    assert agree == pytest.approx(1 - 1 / (2 * H * W))


def test_previous_stage_and_chain_order():
    ref = _logits()
    a = ref + 0.01
    b = a + 0.02
    report = measure_parity(
        {"float32": _runner(b), "pytorch": _runner(ref), "saved_model": _runner(a)}, _images(), None, K, progress=False
    )
    assert list(report.stages) == ["pytorch", "saved_model", "float32"]
    assert report.stages["float32"].previous == "saved_model"
    assert report.stages["float32"].vs_previous["max_abs"] == pytest.approx(0.02, abs=1e-5)
    assert report.stages["float32"].vs_pytorch["max_abs"] == pytest.approx(0.03, abs=1e-5)


def test_float_gates_name_stage_and_figure():
    ref = _logits()
    bad = ref.copy()
    bad[0, 0] += 1.0  # drift of 1.0 on a range of ~30: breaks the 1e-3 drift gate
    report = measure_parity(
        {"pytorch": _runner(ref), "onnx": _runner(ref), "float32": _runner(bad)}, _images(), None, K, progress=False
    )
    failures = apply_gates(report, _config())
    assert report.stages["onnx"].gate == "pass"
    assert report.stages["float32"].gate == "fail"
    assert any(f.startswith("float32: ") and "of the logits drift more than 0.001 of the logit range" in f for f in failures)
    with pytest.raises(ParityError, match="float32: "):
        raise_on_failure(report)


def test_nan_fails_naming_the_stage():
    ref = _logits()
    bad = ref.copy()
    bad[1, 2, 3, 4] = np.nan
    report = measure_parity({"pytorch": _runner(ref), "full_int8": _runner(bad)}, _images(), None, K, progress=False)
    failures = apply_gates(report, _config())  # untrained: the mIoU is not gated, NaN still is
    assert report.stages["full_int8"].nonfinite == 1
    assert failures == ["full_int8: 1 NaN/Inf values in the logits"]


def test_float16_gate_on_agreement():
    ref = _logits(n=2)
    out = ref.copy()
    out[0, :, :2, :] = out[0, ::-1, :2, :]  # flip the class order on 2 rows: many argmax changes
    report = measure_parity({"pytorch": _runner(ref), "float16": _runner(out)}, _images(), None, K, progress=False)
    failures = apply_gates(report, _config())
    assert failures and failures[0].startswith("float16: decisive-pixel argmax agreement")


def test_quantized_miou_gated_only_when_trained():
    ref = _logits()
    masks = ref.argmax(1)  # PyTorch is perfect against these labels: mIoU 100
    worse = ref.copy()
    worse[:, :, :, :2] = worse[:, ::-1, :, :2]  # wrong classes on two columns
    runners = {"pytorch": _runner(ref), "full_int8": _runner(worse)}
    report = measure_parity(runners, _images(), masks, K, progress=False)
    assert report.pytorch_miou == pytest.approx(1.0)
    drop = report.stages["full_int8"].miou_drop_points
    assert drop > 1.0
    assert apply_gates(report, _config(trained=False)) == []
    assert report.stages["full_int8"].gate == "report"
    report = measure_parity(runners, _images(), masks, K, progress=False)
    failures = apply_gates(report, _config(trained=True, max_miou_drop=1.0))
    assert failures and failures[0].startswith("full_int8: mIoU")
    report = measure_parity(runners, _images(), masks, K, progress=False)
    assert apply_gates(report, _config(trained=True, max_miou_drop=drop + 0.01)) == []


def test_wrong_output_shape_is_an_error():
    ref = _logits()
    with pytest.raises(ParityError, match="onnx: logits have shape"):
        measure_parity({"pytorch": _runner(ref), "onnx": lambda x: ref[:1, :2]}, _images(), None, K, progress=False)


def test_table_and_json():
    ref = _logits()
    runners = {"pytorch": _runner(ref), "onnx": _runner(ref + 1e-6), "saved_model": _runner(ref + 2e-6)}
    report = measure_parity(runners, _images(), ref.argmax(1), K, progress=False)
    apply_gates(report, _config())
    table = format_table(report)
    rows = [line.split()[:2] for line in table.splitlines()[3:]]
    assert rows[:3] == [["pytorch", "-"], ["onnx", "pytorch"], ["saved_model", "pytorch"]] and rows[3][0] == "onnx"
    assert "pass" in table
    data = report.to_dict()
    assert data["stages"]["onnx"]["vs_pytorch"]["argmax_agreement"] == 1.0
    assert math.isclose(data["pytorch_miou"], 1.0)


def test_a_drift_spike_with_every_argmax_equal_is_named_a_near_tie():
    from seg2tflite.converters.divergence import explain_float_failure

    size = (32, 32)  # enough pixels for one spike to stand 1000x above the mean drift
    ref = np.random.default_rng(0).standard_normal((2, K, *size)).astype(np.float32) * 4
    images = np.stack([np.full((3, *size), i, np.float32) for i in range(2)])
    spiked = ref.copy()
    top = spiked[0, :, 1, 1].argmax()
    spiked[0, top, 1, 1] += 5.0  # one pixel moves a lot, its argmax does not
    runners = {"pytorch": _runner(ref), "onnx": _runner(ref), "saved_model": _runner(ref), "float32": _runner(spiked)}
    report = measure_parity(runners, images, None, K, progress=False)
    assert "of the logits drift more than" in apply_gates(report, _config())[0]  # 1 of 6144 values: over 1e-4
    found = explain_float_failure(report, None, None, None, _config(), print)
    assert found["stage"] == "float32" and "discontinuous op" in found["summary"]
    smeared = np.random.default_rng(1).standard_normal(ref.shape).astype(np.float32)  # drift everywhere, argmax flips
    runners["float32"] = _runner(smeared)
    report = measure_parity(runners, images, None, K, progress=False)
    apply_gates(report, _config())
    assert "discontinuous" not in explain_float_failure(report, None, None, None, _config(), print)["summary"]


def test_outlier_share_and_decisive_pixels_by_hand():
    ref = _logits()
    out = ref.copy()
    logit_range = float(ref.max() - ref.min())
    out[0, 1, 2, 3] += 0.5 * 1e-3 * logit_range  # inside the 1e-3 outlier threshold
    out[1, 0, 0, 0] += 2.0 * 1e-3 * logit_range  # one outlier at 1e-3, none at 1e-2
    report = measure_parity({"pytorch": _runner(ref), "onnx": _runner(out)}, _images(), None, K, progress=False)
    m = report.stages["onnx"].vs_pytorch
    assert m["outlier_share"] == {"0.001": pytest.approx(1 / ref.size), "0.01": 0.0}
    top2 = np.sort(ref, axis=1)[:, -2:]
    decisive = (top2[:, 1] - top2[:, 0]) > 0.01 * logit_range
    assert m["decisive_share"] == pytest.approx(decisive.mean())
    assert m["decisive_agreement"] == 1.0


def test_a_lone_flipped_near_tie_passes_where_the_max_drift_rule_failed():
    """SegNet's signature: one value moved across a near-tied window, every argmax equal. The
    outlier share gate lets it through; the old max-drift rule (max |d| <= 1e-3 x range) did not."""
    size = (64, 64)
    ref = np.random.default_rng(0).standard_normal((2, K, *size)).astype(np.float32) * 4
    images = np.stack([np.full((3, *size), i, np.float32) for i in range(2)])
    flipped = ref.copy()
    top = flipped[0, :, 5, 5].argmax()
    flipped[0, top, 5, 5] += 0.5  # 1 value of 24576: far over 1e-3 of the range, argmax unchanged
    report = measure_parity({"pytorch": _runner(ref), "onnx": _runner(flipped)}, images, None, K, progress=False)
    m = report.stages["onnx"].vs_pytorch
    assert m["max_abs_over_range"] > 1e-3  # the old gate's verdict: fail
    assert apply_gates(report, _config()) == []


def test_builtin_kernels_disagreeing_with_xnnpack_fail_the_variant():
    ref = _logits()
    masks = ref.argmax(1)
    wrong = ref.copy()
    wrong[:, :, :, :3] = wrong[:, ::-1, :, :3]  # one kernel set gets three columns wrong
    runners = {"pytorch": _runner(ref), "full_int8": _runner(ref)}
    report = measure_parity(runners, _images(), masks, K, progress=False, builtin={"full_int8": _runner(wrong)})
    assert report.stages["full_int8"].miou == pytest.approx(1.0) and report.stages["full_int8"].builtin["miou"] < 0.9
    failures = apply_gates(report, _config(trained=True, max_miou_drop=1.0))  # the XNNPACK file alone is within budget
    assert failures == [failures[0]] and "XNNPACK and LiteRT's builtin kernels disagree" in failures[0]
    report = measure_parity(runners, _images(), masks, K, progress=False, builtin={"full_int8": _runner(ref)})
    assert apply_gates(report, _config(trained=True, max_miou_drop=1.0)) == []
    f32 = {"pytorch": _runner(ref), "float32": _runner(ref)}
    report = measure_parity(f32, _images(), None, K, progress=False, builtin={"float32": _runner(wrong)})
    failures = apply_gates(report, _config())
    assert failures and failures[0].startswith("float32@builtin: argmax agreement with XNNPACK")


def test_a_float_file_that_only_the_builtin_kernels_compute_differently_is_named_so():
    """Seen on the demo's trained SegNet: XNNPACK matches PyTorch to 9e-6, the builtin kernels move a
    few values across tied unpooling windows. The explanation names the kernels, not the converter."""
    from seg2tflite.converters.divergence import explain_float_failure

    size = (32, 32)
    ref = np.random.default_rng(0).standard_normal((2, K, *size)).astype(np.float32) * 4
    images = np.stack([np.full((3, *size), i, np.float32) for i in range(2)])
    spiked = ref.copy()
    spiked[0, spiked[0, :, 1, 1].argmax(), 1, 1] += 5.0
    runners = {"pytorch": _runner(ref), "onnx": _runner(ref), "saved_model": _runner(ref), "float32": _runner(ref)}
    report = measure_parity(runners, images, None, K, progress=False, builtin={"float32": _runner(spiked)})
    assert apply_gates(report, _config())[0].startswith("float32@builtin:")
    summary = explain_float_failure(report, None, None, None, _config(), print)["summary"]
    assert "matches PyTorch under XNNPACK" in summary and "builtin kernels" in summary and "discontinuous op" in summary
    assert "TF -> TFLite converter" not in summary
    smeared = np.random.default_rng(1).standard_normal(ref.shape).astype(np.float32)
    report = measure_parity(runners, images, None, K, progress=False, builtin={"float32": _runner(smeared)})
    apply_gates(report, _config())
    summary = explain_float_failure(report, None, None, None, _config(), print)["summary"]
    assert "kernel difference in LiteRT" in summary and "discontinuous" not in summary


class _Discontinuous:
    """A conv whose logits jump where its two channels are near-tied, the jump spread over 5x5
    pixels by the next conv (SegNet's unpooling and decoder, in two ops)."""

    @staticmethod
    def onnx_model():
        import io

        import onnx
        import torch

        class Net(torch.nn.Module):
            def __init__(self):
                super().__init__()
                torch.manual_seed(0)
                self.conv = torch.nn.Conv2d(3, 2, 3, padding=1)
                self.spread = torch.nn.Conv2d(2, 2, 5, padding=2, groups=2)
                with torch.no_grad():  # the two channels near-tied everywhere
                    self.conv.weight[1] = self.conv.weight[0] + 1e-3 * torch.randn_like(self.conv.weight[0])
                    self.conv.bias[1] = self.conv.bias[0]

            def forward(self, x):
                y = self.conv(x)
                jump = (y[:, :1] > y[:, 1:]).float() * 10.0
                return self.spread(torch.cat([y[:, :1] + jump, y[:, 1:]], 1))

        buffer = io.BytesIO()
        torch.onnx.export(Net().eval(), torch.zeros(1, 3, 64, 64), buffer, opset_version=17, dynamo=False)
        return onnx.load_from_string(buffer.getvalue())


def test_a_float16_file_that_is_the_model_with_float16_weights_is_named_so():
    """Seen on the demo's trained SegNet: float16 breaks its outlier gate, and the file equals the
    model with float16-rounded weights. A file that also shifts a bias is named a conversion error."""
    import onnx
    from onnx import numpy_helper

    from seg2tflite.converters.divergence import explain_float16_failure, float16_weights
    from seg2tflite.converters.runtimes import OnnxRunner

    model = _Discontinuous.onnx_model()
    images = np.random.default_rng(0).standard_normal((8, 3, 64, 64)).astype(np.float32)
    exact, as_float16 = OnnxRunner(model.SerializeToString()), OnnxRunner(float16_weights(model))
    report = measure_parity({"pytorch": exact, "float16": as_float16}, images, None, 2, progress=False)
    assert any(f.startswith("float16:") for f in apply_gates(report, _config()))  # the jumps move with the rounding
    found = explain_float16_failure(report, model, as_float16, images, _config())
    assert found["stage"] == "float16" and "model's own response to float16 weights" in found["summary"]
    assert found["float16_weights"]["max_abs"] < 1e-5

    shifted = onnx.ModelProto.FromString(float16_weights(model))
    bias = next(t for t in shifted.graph.initializer if numpy_helper.to_array(t).shape == (2,))
    bias.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(bias) + np.float32(0.5), bias.name))
    wrong = OnnxRunner(shifted.SerializeToString())
    report = measure_parity({"pytorch": exact, "float16": wrong}, images, None, 2, progress=False)
    apply_gates(report, _config())
    assert (
        "changed more than the weights' precision" in explain_float16_failure(report, model, wrong, images, _config())["summary"]
    )
    report = measure_parity({"pytorch": exact, "float16": exact}, images, None, 2, progress=False)
    apply_gates(report, _config())
    assert explain_float16_failure(report, model, exact, images, _config()) is None
