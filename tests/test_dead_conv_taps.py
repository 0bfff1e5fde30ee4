"""``drop_dead_conv_taps``: a Conv's kernel rows and columns that read only zero padding are cut.

1. A 3x3 conv with dilation and padding 12 on a 6x6 map (plain and depthwise) becomes a 1x1 conv
   with no padding, and ONNX Runtime computes the same output before and after.
2. Where every tap reads the input for some output (dilation 2 on 6x6), or cropping would need
   negative padding, the Conv is left as it was; where only some rows are dead (dilation 4 on a
   4x16 map), or a stride leaves the first row and column dead, the kernel is cropped to the live
   part and ONNX Runtime agrees.
3. DeepLabv3+ MobileNetV2 through ``export_onnx`` and ``prepare_onnx``: at 96x96 (6x6 ASPP map) the
   three atrous ASPP convs become 1x1 and the manifest names them; at 256x256 (16x16 map) only
   rate 18 does (rate 6 and 12 reach the map from every output row); at 512x512 none does.
"""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from seg2tflite.converters.onnx_export import export_onnx, prepare_onnx
from seg2tflite.converters.onnx_rewrites_layout import drop_dead_conv_taps
from seg2tflite.models import create_model, deploy_form

from model_helpers import randomise_batchnorm


def _conv_model(shape, out_ch, kernel, group=1, dilations=(1, 1), pads=(0, 0, 0, 0), strides=(1, 1), seed=0):
    """One Conv (random weight and bias) reading a (1, C, H, W) input, at opset 17."""
    rng = np.random.default_rng(seed)
    weight = rng.standard_normal((out_ch, shape[1] // group, *kernel)).astype(np.float32)
    bias = rng.standard_normal(out_ch).astype(np.float32)
    conv = helper.make_node(
        "Conv",
        ["x", "w", "b"],
        ["y"],
        name="conv",
        group=group,
        kernel_shape=list(kernel),
        dilations=list(dilations),
        pads=list(pads),
        strides=list(strides),
    )
    graph = helper.make_graph(
        [conv],
        "conv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(shape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None] * 4)],
        [numpy_helper.from_array(weight, "w"), numpy_helper.from_array(bias, "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def _run(model, x):
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1  # the test machine's cores are shared
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def _rewritten_agrees(model, shape):
    """Rewrite a copy of ``model``; ONNX Runtime must give the same output. Returns the lines and the new Conv."""
    rewritten = onnx.ModelProto.FromString(model.SerializeToString())
    applied = drop_dead_conv_taps(rewritten)
    onnx.checker.check_model(rewritten, full_check=True)
    x = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
    before, after = _run(model, x), _run(rewritten, x)
    assert before.shape == after.shape
    assert np.abs(after - before).max() <= 1e-5 * (before.max() - before.min())
    (conv,) = rewritten.graph.node
    return applied, conv, rewritten


def _attrs(conv):
    return {a.name: list(helper.get_attribute_value(a)) for a in conv.attribute if a.name != "group"}


def _weight(model, conv):
    return next(numpy_helper.to_array(i) for i in model.graph.initializer if i.name == conv.input[1])


@pytest.mark.parametrize("group", [1, 4], ids=["dense", "depthwise"])
def test_atrous_conv_on_a_small_map_becomes_1x1(group):
    shape = (1, 4, 6, 6)
    model = _conv_model(shape, 8 if group == 1 else 4, (3, 3), group, dilations=(12, 12), pads=(12, 12, 12, 12))
    applied, conv, rewritten = _rewritten_agrees(model, shape)
    assert applied == [
        "conv: 3x3 Conv (dilation [12, 12]) on a 6x6 map cropped to 1x1, the taps left out read only zero padding "
        "(same output, less work)"
    ]
    assert _attrs(conv) == {"kernel_shape": [1, 1], "dilations": [1, 1], "pads": [0, 0, 0, 0], "strides": [1, 1]}
    original = numpy_helper.to_array(model.graph.initializer[0])
    assert np.array_equal(_weight(rewritten, conv), original[:, :, 1:2, 1:2])


@pytest.mark.parametrize(
    "shape, kernel, dilations, pads",
    [
        ((1, 4, 6, 6), (3, 3), (2, 2), (2, 2, 2, 2)),  # every tap reads the map for some output pixel
        ((1, 4, 3, 3), (2, 1), (3, 1), (1, 0, 0, 0)),  # only tap 1 is live, but it would need a top pad of -2
    ],
    ids=["all-live", "negative-pad"],
)
def test_conv_with_no_croppable_taps_is_left_alone(shape, kernel, dilations, pads):
    model = _conv_model(shape, 4, kernel, dilations=dilations, pads=pads)
    before = model.SerializeToString()
    assert drop_dead_conv_taps(model) == []
    assert model.SerializeToString() == before


def test_only_the_dead_rows_are_cropped():
    # Height 4, dilation 4, pad 4: row taps 0 and 2 read rows y - 4 in [-4, -1] and y + 4 in [4, 7],
    # never the map; width 16: column taps read x - 4 in [-4, 11] and x + 4 in [4, 19], both live.
    shape = (1, 4, 4, 16)
    model = _conv_model(shape, 6, (3, 3), dilations=(4, 4), pads=(4, 4, 4, 4))
    applied, conv, rewritten = _rewritten_agrees(model, shape)
    assert len(applied) == 1 and "3x3 Conv (dilation [4, 4]) on a 4x16 map cropped to 1x3" in applied[0]
    assert _attrs(conv) == {"kernel_shape": [1, 3], "dilations": [1, 4], "pads": [0, 4, 0, 4], "strides": [1, 1]}
    original = numpy_helper.to_array(model.graph.initializer[0])
    assert np.array_equal(_weight(rewritten, conv), original[:, :, 1:2, :])


def test_strided_conv_keeps_its_live_corner():
    # 2x2 map, stride 2, pad 1: one output, reading rows/columns -1, 0, 1: tap 0 is dead, taps 1 and 2 live.
    shape = (1, 3, 2, 2)
    model = _conv_model(shape, 5, (3, 3), pads=(1, 1, 1, 1), strides=(2, 2))
    applied, conv, rewritten = _rewritten_agrees(model, shape)
    assert len(applied) == 1 and "cropped to 2x2" in applied[0]
    assert _attrs(conv) == {"kernel_shape": [2, 2], "dilations": [1, 1], "pads": [0, 0, 1, 1], "strides": [2, 2]}
    original = numpy_helper.to_array(model.graph.initializer[0])
    assert np.array_equal(_weight(rewritten, conv), original[:, :, 1:, 1:])


@pytest.fixture(scope="module")
def deeplab():
    torch.manual_seed(0)
    model = randomise_batchnorm(create_model("deeplabv3plus_mobilenetv2", num_classes=5))
    return deploy_form(model, 20).eval()


ASPP_ATROUS = {rate: f"/aspp/branches.{i}/branches.{i}.0/Conv" for i, rate in enumerate((6, 12, 18), 1)}


@pytest.mark.parametrize(
    "size, cropped",
    [((96, 96), (6, 12, 18)), ((256, 256), (18,)), ((512, 512), ())],
    ids=["96", "256", "512"],
)
def test_deeplabv3plus_aspp(deeplab, size, cropped, tmp_path):
    exported = export_onnx(deeplab, size)  # the converter's own path, at its default opset 20
    prepared = prepare_onnx(exported, size, "deeplabv3plus")
    lines = [line for line in prepared.rewrites if "taps left out read only zero padding" in line]
    map_size = size[0] // 16
    assert lines == [
        f"{ASPP_ATROUS[rate]}: 3x3 Conv (dilation [{rate}, {rate}]) on a {map_size}x{map_size} map cropped to 1x1, "
        "the taps left out read only zero padding (same output, less work)"
        for rate in cropped
    ]
    convs = {node.name: node for node in prepared.model.graph.node}
    for rate, name in ASPP_ATROUS.items():
        kernel = list(_weight(prepared.model, convs[name]).shape[2:])
        assert kernel == ([1, 1] if rate in cropped else [3, 3]), (name, kernel)
    used = {name for node in prepared.model.graph.node for name in node.input}
    assert all(init.name in used for init in prepared.model.graph.initializer)  # the uncropped weights are gone
    if size == (96, 96):
        plain = prepare_onnx(exported, size, "deeplabv3plus", rewrites=False).model
        x = np.random.default_rng(0).standard_normal((1, 3, *size)).astype(np.float32)
        before, after = _run(plain, x), _run(prepared.model, x)
        assert np.abs(after - before).max() <= 1e-5 * (before.max() - before.min())
