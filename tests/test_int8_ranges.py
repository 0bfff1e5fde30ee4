"""Full int8's activation ranges (``converters.int8_ranges``): chosen per tensor, written into the file.

The range rules are checked on sampled values (a heavy tail gets a narrower range and a smaller
int8 error than min/max); the rest on a small block converted by the real TF converter: the
chosen range is the written file's scale and zero point, tensors the int8 spec ties keep one
scale and the file runs in LiteRT with XNNPACK and with the builtin kernels, ``minmax`` is the
converter's own file, ``auto`` scores every method on held-out images, and a conversion with
every method passes every float gate and builds every variant.
"""

import json

import numpy as np
import pytest

from seg2tflite.converters.int8_range_rules import BINS, CANDIDATES, RANGE_METHODS, Histogram, choose_range, merged
from seg2tflite.converters.int8_ranges import RANGES_FILE


def _histogram(values: np.ndarray) -> Histogram:
    h = Histogram(float(values.min()), float(values.max()))
    h.add(values)
    return h


def _int8_mse(values: np.ndarray, lo: float, hi: float) -> float:
    """What int8 with range (lo, hi) does to ``values``, as TFLite quantizes (zero on the grid)."""
    scale = (hi - lo) / 255
    zero_point = np.round(-128 - lo / scale)
    q = np.clip(np.round(values / scale + zero_point), -128, 127)
    return float(np.mean(((q - zero_point) * scale - values) ** 2))


def test_a_heavy_tail_gets_a_narrower_range_and_less_error():
    for values in (
        np.random.default_rng(0).standard_t(2, size=200_000),
        np.concatenate([np.random.default_rng(0).normal(size=200_000), [40.0, -30.0, 55.0]]),
    ):
        h = _histogram(values.astype(np.float32))
        wide, narrow = choose_range(h, "minmax"), choose_range(h, "mse")
        assert wide == (float(values.min().astype(np.float32)), float(values.max().astype(np.float32)))
        assert narrow[1] - narrow[0] < 0.8 * (wide[1] - wide[0])
        assert _int8_mse(values, *narrow) < 0.8 * _int8_mse(values, *wide)


def test_percentile_cuts_the_outermost_hundredth_of_a_percent():
    values = np.random.default_rng(4).normal(size=1_000_000).astype(np.float32)
    lo, hi = choose_range(_histogram(values), "percentile")
    width = (values.max() - values.min()) / BINS
    assert abs(lo - np.percentile(values, 0.01)) <= 2 * width
    assert abs(hi - np.percentile(values, 99.99)) <= 2 * width


def test_mse_finds_the_least_error_range_of_its_candidates():
    """The searched range is at least as good as min/max and the percentiles, measured on the values."""
    rng = np.random.default_rng(1)
    relu = np.maximum(rng.normal(size=100_000), 0).astype(np.float32)  # half exact zeros, as after a ReLU
    outliers = np.concatenate([rng.normal(size=100_000), [60.0, -45.0]]).astype(np.float32)
    for values in (relu, outliers):
        h = _histogram(values)
        errors = {m: _int8_mse(values, *choose_range(h, m)) for m in CANDIDATES}
        assert errors["mse"] <= min(errors.values()) * 1.05, errors


def test_ranges_hold_zero_and_stay_inside_what_was_seen():
    positive = _histogram(np.random.default_rng(2).uniform(2.0, 5.0, 10_000).astype(np.float32))
    for method in CANDIDATES:
        lo, hi = choose_range(positive, method)
        assert lo == 0.0 and hi <= 5.0
    relu = _histogram(np.maximum(np.random.default_rng(3).normal(size=10_000), 0).astype(np.float32))
    assert all(choose_range(relu, m)[0] == 0.0 for m in CANDIDATES)
    constant = _histogram(np.zeros(100, np.float32))
    assert all(choose_range(constant, m) == (0.0, 0.0) for m in CANDIDATES)
    with pytest.raises(ValueError, match="unknown range method"):
        choose_range(positive, "kl")


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))


def _on_grid(values: np.ndarray, lo: float, hi: float) -> np.ndarray:
    scale = (hi - lo) / 255
    zero_point = np.round(-128 - lo / scale)
    return (np.clip(np.round(values / scale + zero_point), -128, 127) - zero_point) * scale


def _softmax_divergence(logits: np.ndarray, lo: float, hi: float) -> float:
    reference = _log_softmax(logits)
    return float(np.mean(np.sum(np.exp(reference) * (reference - _log_softmax(_on_grid(logits, lo, hi))), -1)))


def test_class_logits_get_the_range_that_moves_their_softmax_least():
    """An output of class logits whose losers reach far below the winners: min/max and the
    value-by-value rules spend int8 levels on values no softmax or argmax sees, and near-equal top
    logits round together. The range chosen for logits keeps the softmax closer and fewer argmaxes move."""
    rng = np.random.default_rng(5)
    logits = rng.normal(0.0, 0.6, size=(40_000, 6)).astype(np.float32)
    logits[:, 5] -= rng.uniform(0, 30, size=len(logits)).astype(np.float32)  # a class that never wins, far below
    plain = _histogram(logits)
    as_logits = _histogram(logits)
    as_logits.add_logits(logits.reshape(1, 200, 200, 6))
    decided = logits.argmax(-1)
    for method in ("percentile", "mse"):
        value_range, logit_range = choose_range(plain, method), choose_range(as_logits, method)
        assert logit_range[1] - logit_range[0] < 0.5 * (value_range[1] - value_range[0]), method
        assert _softmax_divergence(logits, *logit_range) < 0.5 * _softmax_divergence(logits, *value_range), method
        moved = {r: np.mean(_on_grid(logits, *r).argmax(-1) != decided) for r in (value_range, logit_range)}
        assert moved[logit_range] < moved[value_range], method
    assert choose_range(as_logits, "minmax") == choose_range(plain, "minmax")  # min/max stays the converter's


def test_tied_histograms_merge_onto_common_edges():
    a, b = np.linspace(0, 1, 1000), np.linspace(-4, 2, 3000)
    m = merged([_histogram(a), _histogram(b)])
    assert (m.lo, m.hi) == (-4.0, 2.0) and m.counts.sum() == 4000 and len(m.counts) == BINS
    assert (m.seen_min, m.seen_max) == (-4.0, 2.0)


def test_the_setting_is_validated():
    from seg2tflite.converters import ConvertConfig
    from seg2tflite.errors import UserError

    assert ConvertConfig(input_size=(32, 32)).int8_ranges == "auto"
    for method in RANGE_METHODS:
        ConvertConfig(input_size=(32, 32), int8_ranges=method)
    with pytest.raises(UserError, match="int8_ranges: 'kl' is not valid"):
        ConvertConfig(input_size=(32, 32), int8_ranges="kl")


# -- on a converted block ---------------------------------------------------------------------

SIZE = (16, 16)


@pytest.fixture(scope="module")
def block(tmp_path_factory):
    """A SavedModel with a ReLU'd conv, a max pool, a resize and a concatenation (tied scales), and
    heavy-tailed calibration images."""
    import tensorflow as tf

    from seg2tflite.calibration.representative import calibration_from_array

    rng = np.random.default_rng(0)
    w1 = tf.constant(rng.normal(size=(3, 3, 3, 8)).astype(np.float32))
    w2 = tf.constant(rng.normal(size=(1, 1, 16, 4)).astype(np.float32) / 4)

    def f(x):
        a = tf.nn.relu(tf.nn.conv2d(x, w1, 1, "SAME"))
        up = tf.image.resize(tf.nn.max_pool2d(a, 2, 2, "SAME"), SIZE)
        return tf.nn.conv2d(tf.concat([a, up], -1), w2, 1, "SAME")

    module = tf.Module()
    module.f = tf.function(f, input_signature=[tf.TensorSpec([1, *SIZE, 3], tf.float32)])
    folder = tmp_path_factory.mktemp("block")
    tf.saved_model.save(module, str(folder / "saved_model"), signatures=module.f)
    calib = calibration_from_array(rng.standard_t(3, size=(24, 3, *SIZE)).astype(np.float32), "heavy tails")
    return folder / "saved_model", calib


def _tensors(content: bytes) -> dict[str, tuple]:
    from ai_edge_litert.interpreter import Interpreter

    return {t["name"]: t["quantization"] for t in Interpreter(model_content=content).get_tensor_details()}


@pytest.mark.chain
def test_the_chosen_range_is_the_written_scale_and_zero_point(block):
    from seg2tflite.converters import int8_ranges

    saved_model, calib = block
    calibrated = int8_ranges.calibrate(saved_model, calib.representative_dataset())
    stats = int8_ranges.collect_statistics(calibrated, calib.representative_dataset(), hold_out=False)
    groups = int8_ranges.tied_groups(calibrated, stats.fit)
    ranges = int8_ranges.choose_ranges(groups, stats.fit, "mse")
    minmax = int8_ranges.choose_ranges(groups, stats.fit, "minmax")
    content = int8_ranges.quantize(int8_ranges.with_ranges(calibrated, ranges), "int8")
    written = _tensors(content)
    graph_names = {i: t.name.decode() for i, t in enumerate(_graph(calibrated).graph.tensors)}
    narrowed = 0
    for t, (lo, hi) in ranges.items():
        scale, zero_point = written[graph_names[t]]
        assert scale == pytest.approx((hi - lo) / 255, rel=1e-5)
        assert zero_point == round(-128 - lo / scale)
        narrowed += hi - lo < minmax[t][1] - minmax[t][0]
    assert narrowed >= 2  # the input and the ReLU group at least


def _graph(content):
    from seg2tflite.converters.tflite_graph import TFLiteGraph

    return TFLiteGraph.read(content)


@pytest.mark.chain
@pytest.mark.parametrize("method", CANDIDATES)
def test_tied_tensors_share_one_scale_and_the_file_runs_everywhere(block, method):
    from seg2tflite.converters.runtimes import TFLiteRunner
    from seg2tflite.converters.tflite_variants import build_tflite

    saved_model, calib = block
    content = build_tflite(saved_model, "full_int8", calib, int8_ranges=method)
    graph = _graph(content)
    for op in graph.graph.operators:
        if graph.name(op) in ("CONCATENATION", "MAX_POOL_2D", "RESIZE_BILINEAR"):
            tied = {
                graph.params(int(t)) for t in [*op.inputs, *op.outputs] if graph.is_int8(int(t)) and not graph.is_constant(int(t))
            }
            assert len(tied) == 1, (graph.name(op), tied)
    x = calib.images[:2]
    with_xnnpack, builtin = TFLiteRunner(content)(x), TFLiteRunner(content, xnnpack=False)(x)
    assert np.isfinite(with_xnnpack).all() and np.isfinite(builtin).all()
    assert TFLiteRunner(content).delegation["delegated"] == TFLiteRunner(content).delegation["ops"]


@pytest.mark.chain
def test_minmax_is_the_converters_own_file(block):
    import tensorflow as tf

    from seg2tflite.converters.tflite_variants import build_tflite

    saved_model, calib = block
    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved_model))
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = calib.representative_dataset()
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8, tf.lite.OpsSet.TFLITE_BUILTINS]
    converter.inference_input_type = converter.inference_output_type = tf.int8
    assert _tensors(build_tflite(saved_model, "full_int8", calib, int8_ranges="minmax")) == _tensors(converter.convert())


@pytest.mark.chain
def test_auto_scores_every_method_on_held_out_images_and_keeps_the_best(block):
    from seg2tflite.converters.int8_build import build_full_int8

    saved_model, calib = block
    built = build_full_int8(saved_model, calib.representative_dataset(), "auto")
    record = built.record()
    assert set(record["held_out_scores"]) == set(CANDIDATES)
    best = min(CANDIDATES, key=lambda m: tuple(record["held_out_scores"][m].values()))
    assert record["method"] == best and record["requested"] == "auto"
    assert record["tensors"] > 0 and 0 <= record["narrower_than_minmax"] <= record["tensors"]
    # the chosen method's file: what build_full_int8 asked for by name
    assert _tensors(built.content) == _tensors(build_full_int8(saved_model, calib.representative_dataset(), best).content)


@pytest.mark.chain
def test_the_conversion_records_its_ranges(offline_result):
    """The default conversion (auto) writes how its full-int8 ranges were chosen, beside the file and in the manifest."""
    result = offline_result[0]
    record = json.loads((result.out_dir / RANGES_FILE).read_text())
    assert record == result.manifest["int8_ranges"]
    assert record["requested"] == "auto" and record["method"] in CANDIDATES
    assert set(record["held_out_scores"]) == set(CANDIDATES)
    assert result.manifest["config"]["int8_ranges"] == "auto"


@pytest.mark.chain
def test_the_sensitivity_table_ranks_int8_ops_by_their_error(block):
    from seg2tflite.converters.int8_sensitivity import model_explorer_node_data, op_sensitivity
    from seg2tflite.converters.tflite_variants import build_tflite

    saved_model, calib = block
    float32 = build_tflite(saved_model, "float32")
    rows = {
        m: op_sensitivity(float32, build_tflite(saved_model, "full_int8", calib, int8_ranges=m), calib.images[:4])
        for m in ("minmax", "mse")
    }
    for found in rows.values():
        assert {r["op"] for r in found} >= {"CONV_2D", "CONCATENATION", "MAX_POOL_2D"}
        assert [r["sqnr_db"] for r in found] == sorted(r["sqnr_db"] for r in found)
        assert all(np.isfinite(r["sqnr_db"]) and r["sqnr_db"] > 0 for r in found)
    by_tensor = {m: {r["tensor"]: r["sqnr_db"] for r in found} for m, found in rows.items()}
    assert by_tensor["mse"]["concat"] > by_tensor["minmax"]["concat"]  # the narrower range is the better one here
    data = model_explorer_node_data(rows["mse"])
    assert set(data["results"]) == set(by_tensor["mse"]) and data["gradient"][0]["stop"] == 0


@pytest.mark.chain
def test_the_conversion_writes_the_sensitivity_table(offline_result):
    from seg2tflite.converters.int8_sensitivity import SENSITIVITY_FILE

    result = offline_result[0]
    parity = json.loads((result.out_dir / "parity.json").read_text())
    table = parity["int8_sensitivity"]
    assert table and table[0]["sqnr_db"] == min(r["sqnr_db"] for r in table)
    node_data = json.loads((result.out_dir / SENSITIVITY_FILE).read_text())
    assert set(node_data["results"]) == {r["tensor"] for r in table}


@pytest.mark.chain
def test_bias_correction_brings_each_channels_mean_error_near_zero(tmp_path):
    """A depthwise convolution with one weight scale for all channels (coarse rounding): the mean
    error per output channel, int8 against float32 on the calibration images, shrinks tenfold."""
    import tensorflow as tf

    from seg2tflite.calibration.representative import calibration_from_array
    from seg2tflite.converters.int8_build import build_full_int8
    from seg2tflite.converters.runtimes import TFLiteRunner
    from seg2tflite.converters.tflite_variants import build_tflite

    rng = np.random.default_rng(0)
    depthwise = tf.constant((rng.normal(size=(3, 3, 8, 1)) * rng.uniform(0.01, 1, size=(1, 1, 8, 1))).astype(np.float32))
    stem = tf.constant(rng.normal(size=(1, 1, 3, 8)).astype(np.float32))
    module = tf.Module()
    module.f = tf.function(
        lambda x: tf.nn.depthwise_conv2d(tf.nn.conv2d(x, stem, 1, "SAME") + 0.5, depthwise, [1, 1, 1, 1], "SAME"),
        input_signature=[tf.TensorSpec([1, *SIZE, 3], tf.float32)],
    )
    tf.saved_model.save(module, str(tmp_path / "saved_model"), signatures=module.f)
    calib = calibration_from_array(rng.normal(size=(32, 3, *SIZE)).astype(np.float32) + 1, "shifted")
    reference = TFLiteRunner(build_tflite(tmp_path / "saved_model", "float32"))(calib.images)
    errors = {}
    for corrected in (False, True):
        built = build_full_int8(
            tmp_path / "saved_model",
            calib.representative_dataset(),
            "minmax",
            "float",
            per_channel=False,
            bias_correction=corrected,
        )
        assert built.bias_corrected == (2 if corrected else 0)  # the stem and the depthwise convolution
        errors[corrected] = np.abs((TFLiteRunner(built.content)(calib.images) - reference).mean(axis=(0, 2, 3)))
    assert errors[True].mean() < 0.2 * errors[False].mean()
    assert errors[True].max() < 0.2 * errors[False].max()


@pytest.mark.chain
def test_the_report_states_each_files_ranges_and_worst_ops(offline_result, tmp_path):
    import shutil

    from seg2tflite.eval.int8_report import render_int8_md

    result = offline_result[0]
    convert = tmp_path / "models" / "small" / "convert"
    convert.mkdir(parents=True)
    for name in (RANGES_FILE, "parity.json"):
        shutil.copy(result.out_dir / name, convert / name)
    record, parity = (json.loads((convert / n).read_text()) for n in (RANGES_FILE, "parity.json"))
    (row,) = [line for line in render_int8_md(tmp_path).splitlines() if line.startswith("| `small`")]
    cells = [c.strip() for c in row.split("|")[1:-1]]
    assert cells[1] == f"auto -> {record['method']}"
    assert cells[3] == f"{record['narrower_than_minmax']}/{record['tensors']}"
    worst = parity["int8_sensitivity"][0]
    assert cells[5].startswith(f"{worst['op']} `{worst['tensor']}` {worst['sqnr_db']:.1f}")
    assert render_int8_md(tmp_path / "empty") is None


@pytest.mark.chain
def test_a_conversion_with_chosen_ranges_and_bias_correction_passes_every_gate(tmp_path):
    from seg2tflite.converters import ConvertConfig, convert_model
    from seg2tflite.converters.stages import VARIANTS

    from small_chain import SIZE as SMALL
    from small_chain import BlobDataset, small_model

    config = ConvertConfig(input_size=SMALL, calib_size=8, parity_images=4, int8_ranges="mse", int8_bias_correction=True)
    result = convert_model(small_model(), tmp_path, config, BlobDataset("train"), BlobDataset("val"), log=None, progress=False)
    assert result.parity.failures == []
    assert all((tmp_path / f"model_{v}.tflite").is_file() for v in VARIANTS)
    record = result.manifest["int8_ranges"]
    assert (record["requested"], record["method"]) == ("mse", "mse")
    assert record["bias_corrected_ops"] == 3  # the stem, the body and the head


@pytest.mark.chain
def test_logits_read_only_by_argmax_get_the_range_that_decides_it(tmp_path):
    """A file that returns the class map: one of its four logits never wins (far below the
    others), so min/max spreads the int8 levels over values that decide nothing and close
    logits round to one level and tie. The chosen ranges cover what decides the argmax instead:
    a finer scale, and fewer pixels off the float model's class map."""
    import tensorflow as tf
    from ai_edge_litert.interpreter import Interpreter

    from seg2tflite.calibration.representative import calibration_from_array
    from seg2tflite.converters import int8_ranges
    from seg2tflite.converters.tflite_variants import build_tflite

    rng = np.random.default_rng(0)
    weights = tf.constant(rng.normal(size=(1, 1, 3, 4)).astype(np.float32))
    bias = tf.constant([0.0, 0.0, 0.0, -40.0])
    module = tf.Module()
    module.f = tf.function(
        lambda x: tf.argmax(tf.nn.conv2d(x, weights, 1, "SAME") + bias, axis=-1, output_type=tf.int32),
        input_signature=[tf.TensorSpec([1, *SIZE, 3], tf.float32)],
    )
    tf.saved_model.save(module, str(tmp_path / "saved_model"), signatures=module.f)
    calib = calibration_from_array(rng.normal(size=(24, 3, *SIZE)).astype(np.float32), "normal")
    reference = np.concatenate([module.f(x[None]).numpy() for x in calib.nhwc()])

    calibrated = int8_ranges.calibrate(tmp_path / "saved_model", calib.representative_dataset())
    ((logits, axis),) = int8_ranges.argmax_inputs(calibrated).items()
    assert axis in (-1, 3)
    stats = int8_ranges.collect_statistics(calibrated, calib.representative_dataset(), hold_out=False)
    histogram = stats.fit[logits]
    assert histogram.seen_min < -30 < histogram.top1_min  # the never-winning class is outside what decides

    def scale_and_misses(method: str) -> tuple[float, float]:
        content = build_tflite(tmp_path / "saved_model", "full_int8", calib, int8_io="float", int8_ranges=method)
        graph = _graph(content)
        (argmax,) = [op for op in graph.graph.operators if graph.name(op) == "ARG_MAX"]
        scale = graph.params(int(argmax.inputs[0]))[0]
        interpreter = Interpreter(model_content=content)
        interpreter.allocate_tensors()
        (detail,), (out,) = interpreter.get_input_details(), interpreter.get_output_details()
        misses = []
        for x, ref in zip(calib.nhwc(), reference):
            interpreter.set_tensor(detail["index"], x[None])
            interpreter.invoke()
            misses.append(np.mean(interpreter.get_tensor(out["index"])[0] != ref))
        return scale, float(np.mean(misses))

    minmax_scale, minmax_misses = scale_and_misses("minmax")
    for method in ("percentile", "mse"):
        scale, misses = scale_and_misses(method)
        assert scale < minmax_scale / 4, method
        assert scale * 255 >= histogram.top2_max - histogram.top1_min  # the deciding values stay inside
        assert misses < minmax_misses / 2, (method, misses, minmax_misses)


@pytest.mark.chain
def test_a_logits_output_gets_the_range_its_softmax_reads(tmp_path):
    """A file that returns class logits, one class far below the others: its output's range is
    chosen from the calibration images' sampled logits, so the written output scale is finer than
    min/max's and fewer pixels leave the float model's argmax."""
    import tensorflow as tf
    from ai_edge_litert.interpreter import Interpreter

    from seg2tflite.calibration.representative import calibration_from_array
    from seg2tflite.converters import int8_ranges
    from seg2tflite.converters.tflite_variants import build_tflite

    rng = np.random.default_rng(0)
    weights = tf.constant(rng.normal(size=(1, 1, 3, 4)).astype(np.float32))
    bias = tf.constant([0.0, 0.0, 0.0, -40.0])
    module = tf.Module()
    module.f = tf.function(
        lambda x: tf.nn.conv2d(x, weights, 1, "SAME") + bias, input_signature=[tf.TensorSpec([1, *SIZE, 3], tf.float32)]
    )
    tf.saved_model.save(module, str(tmp_path / "saved_model"), signatures=module.f)
    calib = calibration_from_array(rng.normal(size=(24, 3, *SIZE)).astype(np.float32), "normal")
    reference = np.concatenate([module.f(x[None]).numpy() for x in calib.nhwc()]).argmax(-1)

    calibrated = int8_ranges.calibrate(tmp_path / "saved_model", calib.representative_dataset())
    stats = int8_ranges.collect_statistics(calibrated, calib.representative_dataset(), hold_out=False)
    (output,) = [h for h in stats.fit.values() if h.logit_rows]
    assert sum(len(rows) for rows in output.logit_rows) == len(calib) * SIZE[0] * SIZE[1]

    def scale_and_misses(method: str) -> tuple[float, float]:
        content = build_tflite(tmp_path / "saved_model", "full_int8", calib, int8_io="int8", int8_ranges=method)
        interpreter = Interpreter(model_content=content)
        interpreter.allocate_tensors()
        (detail,), (out,) = interpreter.get_input_details(), interpreter.get_output_details()
        in_scale, in_zero = detail["quantization"]
        misses = []
        for x, ref in zip(calib.nhwc(), reference):
            interpreter.set_tensor(detail["index"], np.clip(np.round(x[None] / in_scale + in_zero), -128, 127).astype(np.int8))
            interpreter.invoke()
            misses.append(np.mean(interpreter.get_tensor(out["index"])[0].argmax(-1) != ref))
        return out["quantization"][0], float(np.mean(misses))

    minmax_scale, minmax_misses = scale_and_misses("minmax")
    for method in ("percentile", "mse"):
        scale, misses = scale_and_misses(method)
        assert scale < minmax_scale / 2, method
        assert misses < minmax_misses / 2, (method, misses, minmax_misses)
