"""The float gates are not weaker where it matters: a mutation table of real conversion errors.

Each row plants one error a converter really makes into the graph the chain hands to onnx2tf (the
exported, simplified ONNX model), runs the mutated graph in ONNX Runtime and measures it against
PyTorch with the project's own parity code. The gates of the runtime issue (argmax agreement plus
the share of outlying logits) must fail every row exactly as the old max-drift gate (max |drift| <=
1e-3 x the logit range, plus agreement) did, and pass the unmutated graph as it did. The last row
replaces SegNet's tie rule by the tie-blind one in the deploy form itself.

Each row also checks the float16 gate of issue 30: the mutated graph with its weights rounded to
float16 (a float16 file that carries the planted error) against the float16 model of the
unmutated graph (folded, rounded), by the float32 rule: every row fails it, the unmutated graph passes.
"""

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from onnx import helper, numpy_helper
from torch import nn

from seg2tflite.converters.config import ConvertConfig
from seg2tflite.converters.float16_reference import float16_model, rounded_to_float16
from seg2tflite.converters.onnx_export import export_onnx, prepare_onnx
from seg2tflite.converters.parity import apply_gates, measure_parity
from seg2tflite.converters.runtimes import OnnxRunner, TorchRunner
from seg2tflite.models.segnet import SegNet, SegNetDeploy

from model_helpers import randomise_batchnorm

SIZE, K = (32, 32), 4
GATES = ConvertConfig(input_size=SIZE)


class MutationNet(nn.Module):
    """Every construct a row mutates: conv biases, a BatchNorm that no conv absorbs, a residual add,
    a channel LayerNorm (permute -> LayerNorm -> permute) and a half-pixel bilinear resize."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.branch = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 1))
        self.norm = nn.LayerNorm(8)
        self.head = nn.Conv2d(8, K, 1)

    def forward(self, x):
        y = self.bn(F.relu(self.stem(x)))  # after the ReLU: stays a BatchNormalization node
        y = y + self.branch(y)
        y = F.avg_pool2d(y, 2)
        y = self.norm(y.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        return F.interpolate(self.head(y), size=x.shape[-2:], mode="bilinear", align_corners=False)


def _node(model: onnx.ModelProto, op_type: str) -> onnx.NodeProto:
    nodes = [n for n in model.graph.node if n.op_type == op_type]
    assert nodes, f"the exported graph has no {op_type} node: {sorted({n.op_type for n in model.graph.node})}"
    return nodes[0]


def _set_attribute(node: onnx.NodeProto, name: str, value) -> None:
    for i, attribute in enumerate(node.attribute):
        if attribute.name == name:
            del node.attribute[i]
            break
    node.attribute.append(helper.make_attribute(name, value))


def resize_corner_rule(model):
    """Resize with align_corners where PyTorch used half-pixel centres (onnx2tf above opset 17)."""
    _set_attribute(_node(model, "Resize"), "coordinate_transformation_mode", "align_corners")


def layernorm_epsilon(model):
    """LayerNorm's epsilon 1e-5 read as 1e-1 (a converter substituting its own default). The
    chain's surgery writes the channel LayerNorm as ReduceMean/Sub/Mul/Sqrt/Div: the epsilon is the
    constant added to the variance before the Sqrt."""
    sqrt = _node(model, "Sqrt")
    add = next(n for n in model.graph.node if n.output[0] == sqrt.input[0])
    init = next(i for i in model.graph.initializer if i.name in add.input)
    epsilon = numpy_helper.to_array(init)
    assert np.allclose(epsilon, 1e-5), epsilon
    init.CopyFrom(numpy_helper.from_array(np.full_like(epsilon, 1e-1), init.name))


BATCHNORM = {}  # the BatchNorm's running statistics, filled by the ``exported`` fixture


def batchnorm_epsilon(model):
    """BatchNorm's epsilon 1e-5 read as 1e-2. The chain computes the BatchNorm no conv absorbs as a
    depthwise 1x1 conv (``batchnorm_as_depthwise_conv``): its weights and bias become the ones
    epsilon 1e-2 gives."""
    conv = next(n for n in model.graph.node if n.op_type == "Conv" and "BatchNormalization" in n.name)
    weight, bias = (next(i for i in model.graph.initializer if i.name == name) for name in conv.input[1:3])
    w, b = numpy_helper.to_array(weight).reshape(-1), numpy_helper.to_array(bias)
    mean, var = BATCHNORM["mean"], BATCHNORM["var"]
    wrong = w * np.sqrt((var + 1e-5) / (var + 1e-2))
    weight.CopyFrom(numpy_helper.from_array(wrong.reshape(-1, 1, 1, 1).astype(np.float32), weight.name))
    bias.CopyFrom(numpy_helper.from_array((b + mean * (w - wrong)).astype(np.float32), bias.name))


def one_bias_shifted(model):
    """One channel of the head's bias off by 0.5 (a mis-indexed constant)."""
    head = [n for n in model.graph.node if n.op_type == "Conv"][-1]
    init = next(i for i in model.graph.initializer if i.name == head.input[2])
    bias = numpy_helper.to_array(init).copy()
    bias[1] += 0.5
    init.CopyFrom(numpy_helper.from_array(bias, init.name))


def one_pixel_shift(model):
    """The output moved one pixel right (a padding applied on the wrong side)."""
    out = model.graph.output[0].name
    shifted = out + "_before_shift"
    for node in model.graph.node:
        node.output[:] = [shifted if o == out else o for o in node.output]
    consts = {
        "shift_pads": np.array([0, 0, 0, 1, 0, 0, 0, 0], np.int64),
        "shift_starts": np.array([0], np.int64),
        "shift_ends": np.array([SIZE[1]], np.int64),
        "shift_axes": np.array([3], np.int64),
    }
    model.graph.initializer.extend(numpy_helper.from_array(v, k) for k, v in consts.items())
    model.graph.node.extend([
        helper.make_node("Pad", [shifted, "shift_pads"], ["shift_padded"], mode="edge"),
        helper.make_node("Slice", ["shift_padded", "shift_starts", "shift_ends", "shift_axes"], [out]),
    ])  # fmt: skip


def residual_dropped(model):
    """The residual add loses its branch (a skip connection dropped in a rewrite)."""
    add = _node(model, "Add")
    add.op_type = "Identity"
    del add.input[1]


def channels_swapped(model):
    """Channels reversed after the stem (NHWC read as NCHW along the channel axis, or a bad permutation)."""
    stem = _node(model, "Conv")
    out = stem.output[0]
    stem.output[0] = out + "_unswapped"
    model.graph.initializer.append(numpy_helper.from_array(np.arange(7, -1, -1, dtype=np.int64), "swap_order"))
    model.graph.node.insert(
        list(model.graph.node).index(stem) + 1, helper.make_node("Gather", [out + "_unswapped", "swap_order"], [out], axis=1)
    )


MUTATIONS = [
    resize_corner_rule,
    layernorm_epsilon,
    batchnorm_epsilon,
    one_bias_shifted,
    one_pixel_shift,
    residual_dropped,
    channels_swapped,
]


def _old_gate_fails(figures: dict) -> bool:
    return not (figures["argmax_agreement"] >= GATES.float_min_agreement and figures["max_abs_over_range"] <= 1e-3)


def _verdicts(torch_model, onnx_model, images, tmp_path, reference_graph=None) -> tuple[bool, bool, list[str]]:
    """(old gate failed, new gate failed, the new gate's lines) for the ONNX stage against PyTorch.

    With ``reference_graph`` (the unmutated graph), also the float16 gate: the mutated graph with
    its weights rounded to float16 (a float16 file carrying the planted error) against the float16
    model of the unmutated graph; its lines are added to the new gate's."""
    path = tmp_path / "mutated.onnx"
    onnx.save(onnx_model, str(path))
    report = measure_parity({"pytorch": TorchRunner(torch_model), "onnx": OnnxRunner(path)}, images, None, K, progress=False)
    failures = apply_gates(report, GATES)
    m = report.stages["onnx"].vs_pytorch
    old = _old_gate_fails(m)
    half = ""
    if reference_graph is not None:
        float16_file = OnnxRunner(rounded_to_float16(onnx_model).SerializeToString())
        reference = OnnxRunner(float16_model(reference_graph))
        runners = {"pytorch": TorchRunner(torch_model), "float16": float16_file}
        report = measure_parity(runners, images, None, K, progress=False, float16_reference=reference)
        half_failures = apply_gates(report, GATES)
        f = report.stages["float16"].vs_float16_model
        half = (
            f", float16 gate {'fail' if half_failures else 'pass'} (vs the float16 model: agreement "
            f"{100 * f['argmax_agreement']:.2f}%, outliers {100 * f['outlier_share']['0.001']:.2f}%)"
        )
        failures = failures + half_failures
    # the README's mutation table is these lines (pytest tests/test_gate_mutations.py -s)
    print(
        f"\nmax drift/range {m['max_abs_over_range']:.2e}, agreement {100 * m['argmax_agreement']:.2f}%, "
        f"outliers {100 * m['outlier_share']['0.001']:.2f}%, old gate {'fail' if old else 'pass'}, "
        f"new gates {'fail' if failures else 'pass'}{half}"
    )
    return old, bool(failures), failures


@pytest.fixture(scope="module")
def exported():
    torch.manual_seed(0)
    model = randomise_batchnorm(MutationNet(), size=SIZE)
    BATCHNORM.update(mean=model.bn.running_mean.numpy().astype(np.float64), var=model.bn.running_var.numpy().astype(np.float64))
    prepared = prepare_onnx(export_onnx(model, SIZE, opset=17), SIZE, "mutation net")
    images = torch.randn(4, 3, *SIZE, generator=torch.Generator().manual_seed(1)).numpy()
    return model, prepared.model, images


def test_the_unmutated_graph_passes_both_gates(exported, tmp_path):
    model, graph, images = exported
    old, new, failures = _verdicts(model, graph, images, tmp_path, reference_graph=graph)
    assert not old and not new, failures


@pytest.mark.parametrize("mutate", MUTATIONS, ids=[m.__name__ for m in MUTATIONS])
def test_a_planted_conversion_error_fails_the_new_gates_as_it_failed_the_old(exported, mutate, tmp_path):
    model, graph, images = exported
    mutated = onnx.ModelProto()
    mutated.CopyFrom(graph)
    mutate(mutated)
    onnx.checker.check_model(mutated)
    old, new, failures = _verdicts(model, mutated, images, tmp_path, reference_graph=graph)
    assert old, f"{mutate.__name__}: the old max-drift gate passes it; the row plants no detectable error"
    assert new, f"{mutate.__name__}: caught by the old gate, missed by the new one"
    assert any(line.startswith("onnx: ") for line in failures)
    assert any(line.startswith("float16: ") for line in failures), f"{mutate.__name__}: the float16 gate misses it"
    assert all(line.startswith(("onnx: ", "float16: ")) for line in failures)


class _TieBlindDeploy(SegNetDeploy):
    """SegNet's deploy form with the tie-blind unpooling: every position equal to the window's
    maximum gets the value, instead of the first maximum (PyTorch's tie rule)."""

    def _unpool(self, x, context):
        pooled, before_pool = context
        up = lambda t: F.interpolate(t, scale_factor=2, mode="nearest")  # noqa: E731
        return up(x) * (before_pool == up(pooled)).to(x.dtype)


def test_segnet_tie_rule_replaced_by_the_tie_blind_one_fails_both_gates(tmp_path):
    torch.manual_seed(0)
    segnet = randomise_batchnorm(SegNet(num_classes=K, stages=((1, 8), (2, 16))), size=SIZE).eval()
    wrong = _TieBlindDeploy(segnet).eval()
    g = torch.Generator().manual_seed(2)
    images = torch.randint(0, 3, (4, 3, *SIZE), generator=g).float().numpy()  # equal neighbours: tied windows
    with torch.no_grad():
        assert not torch.equal(wrong(torch.from_numpy(images)), segnet(torch.from_numpy(images))), "no tie was hit"
    prepared = prepare_onnx(export_onnx(wrong, SIZE, opset=17), SIZE, "tie-blind segnet")
    old, new, failures = _verdicts(segnet, prepared.model, images, tmp_path)
    assert old and new, failures
    right = prepare_onnx(export_onnx(segnet.to_deploy(), SIZE, opset=17), SIZE, "segnet")
    old, new, failures = _verdicts(segnet, right.model, images, tmp_path)
    assert not new, failures
