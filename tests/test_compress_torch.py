"""PyTorch-side compression (pruning, clustering, QAT, BatchNorm folding) on the small CNN.

Each method fine-tunes a few steps on the blob dataset; the last test carries the compressed
models through ``seg2tflite.converters.convert_model`` and reads the weights back out of the ``.tflite``.
"""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from timm.layers import BatchNormAct2d
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.utils import parametrize

from seg2tflite.app.compress import (
    ClusterConfig,
    FinetuneConfig,
    PruneConfig,
    QATConfig,
    cluster_model,
    finetune,
    fold_batchnorm,
    kmeans_1d,
    layer_weights,
    polynomial_sparsity,
    prune_model,
    qat_model,
    remaining_batchnorm,
)
from seg2tflite.errors import UserError

from small_chain import SIZE, BlobDataset, K, SmallSegNet, small_model

FT = FinetuneConfig(steps=8, batch_size=4, input_size=SIZE)
TRAIN = BlobDataset("train")


def _example(n=2):
    return torch.randn(n, 3, *SIZE, generator=torch.Generator().manual_seed(1))


def _assert_plain(model):
    """Ordinary float Parameters only: no parametrization, no hook, eval mode."""
    assert not model.training
    for name, m in model.named_modules():
        assert not parametrize.is_parametrized(m), name
        assert not (m._forward_hooks or m._forward_pre_hooks or m._backward_hooks), name
    assert all(type(m) in (nn.Conv2d, nn.Linear) for _, m in layer_weights(model))
    for name, p in model.named_parameters():
        assert type(p) is nn.Parameter and p.dtype == torch.float32 and p.requires_grad, name


def _convs(model):
    return {name: m.weight.detach().clone() for name, m in layer_weights(model)}


def test_polynomial_sparsity_schedule():
    assert polynomial_sparsity(0, 0.0, 0.5, 0, 100) == 0.0
    assert polynomial_sparsity(50, 0.0, 0.5, 0, 100) == pytest.approx(0.5 - 0.5 * 0.5**3)
    assert polynomial_sparsity(100, 0.0, 0.5, 0, 100) == 0.5
    assert polynomial_sparsity(150, 0.0, 0.5, 0, 100) == 0.5
    assert polynomial_sparsity(25, 0.2, 0.8, 0, 100) == pytest.approx(0.8 - 0.6 * 0.75**3)
    assert polynomial_sparsity(3, 0.1, 0.9, 0, 0) == 0.9


@pytest.mark.chain
def test_polynomial_sparsity_is_tfmots_schedule():
    """The schedule is tensorflow-model-optimization's own PolynomialDecay, step for step."""
    import tensorflow as tf
    import tensorflow_model_optimization as tfmot

    for initial, final, begin, end, power in [(0.0, 0.5, 0, 105, 3), (0.2, 0.8, 10, 70, 3), (0.0, 0.8, 0, 40, 2)]:
        schedule = tfmot.sparsity.keras.PolynomialDecay(initial, final, begin, end, power=power, frequency=1)
        for step in range(begin, end + 1):
            expected = float(schedule(tf.constant(step, dtype=tf.int64))[1])
            assert polynomial_sparsity(step, initial, final, begin, end, power) == pytest.approx(expected, abs=1e-6), step


def test_pruning_reaches_target_sparsity_with_exact_zeros():
    model = small_model()
    before = _convs(model)
    pruned, report = prune_model(model, TRAIN, PruneConfig(sparsity=0.6, frequency=2, min_params=0), FT, progress=False)
    _assert_plain(pruned)
    assert set(report["layers"]) == {"stem.0", "body.0", "head"}
    for name, m in layer_weights(pruned):
        n = m.weight.numel()
        zeros = int((m.weight == 0).sum())
        assert abs(zeros / n - 0.6) <= 0.5 / n + 1e-9, name
        assert report["layers"][name] == {"params": n, "zeros": zeros, "sparsity": zeros / n}
    assert report["sparsity"] == pytest.approx(0.6, abs=2e-3)
    assert 0 < report["sparsity_all_parameters"] < report["sparsity"]
    assert report["end_step"] == 6 and report["finetune"]["steps"] == 8
    assert all(torch.equal(before[k], v) for k, v in _convs(model).items())  # the input model is untouched
    assert len(remaining_batchnorm(pruned)) == 2  # pruning needs no folding


def test_min_params_leaves_small_layers_dense():
    pruned, report = prune_model(small_model(), TRAIN, PruneConfig(sparsity=0.5, min_params=1024), FT, progress=False)
    assert list(report["layers"]) == ["body.0"]
    assert (pruned.stem[0].weight == 0).sum() == 0 and (pruned.head.weight == 0).sum() == 0


def test_finetuning_moves_weights_but_not_the_masked_zeros():
    model = small_model()
    before = model.body[0].weight.detach().clone()
    config = PruneConfig(sparsity=0.5, initial_sparsity=0.5, frequency=1000, min_params=1024)  # mask fixed at step 0
    pruned, _ = prune_model(model, TRAIN, config, FT, progress=False)
    after = pruned.body[0].weight.detach()
    smallest = torch.zeros(before.numel(), dtype=torch.bool)
    smallest[before.abs().flatten().argsort(stable=True)[: before.numel() // 2]] = True
    assert torch.equal(after.flatten() == 0, smallest)
    kept = ~smallest.view_as(before)
    assert not torch.equal(after[kept], before[kept])


def test_fold_batchnorm_keeps_outputs():
    model = small_model()
    folded = fold_batchnorm(model, _example())
    assert remaining_batchnorm(folded) == [] and remaining_batchnorm(model) == ["stem.1", "body.1"]
    assert folded.stem[0].bias is not None and not folded.training
    x = _example(3)
    with torch.no_grad():
        want, got = model(x), folded(x)
    assert (want - got).abs().max() <= 1e-5 * want.abs().max()


class _ShapeCheck(nn.Module):
    def forward(self, x):
        if int(x.shape[-1]) % 2:  # int() of a traced shape: torch.fx cannot trace this
            raise ValueError("odd width")
        return x


class _Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8)

    def forward(self, x):
        y = self.conv(x)
        return self.bn(y) + y  # the conv output has a second user: folding would change it


class _Awkward(nn.Module):
    """Untraceable at the top and in ``stem``; one BN after a pool, one beside a residual."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), _ShapeCheck(), nn.ReLU())
        self.mid = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1, bias=False), BatchNormAct2d(8, act_layer=nn.ReLU))
        self.residual = _Residual()
        self.pool_bn = nn.Sequential(nn.MaxPool2d(2), nn.BatchNorm2d(8))
        self.head = nn.Conv2d(8, K, 1)

    def forward(self, x):
        _ShapeCheck()(x)
        return self.head(self.pool_bn(self.residual(self.mid(self.stem(x)))))


def test_fold_batchnorm_untraceable_and_unfoldable():
    torch.manual_seed(0)
    model = _Awkward().eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, _BatchNorm):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
    folded = fold_batchnorm(model, _example())
    assert remaining_batchnorm(folded) == ["residual.bn", "pool_bn.1"]
    assert isinstance(folded.mid[1], nn.Sequential) and isinstance(folded.mid[1][1], nn.ReLU)  # BatchNormAct2d keeps its act
    x = _example(3)
    with torch.no_grad():
        want, got = model(x), folded(x)
    assert (want - got).abs().max() <= 1e-5 * want.abs().max()


def test_kmeans_1d_finds_the_groups():
    generator = torch.Generator().manual_seed(0)
    values = torch.cat([c + 0.01 * torch.randn(200, generator=generator) for c in (-1.0, 0.2, 0.9)])
    centroids, assignment = kmeans_1d(values, 3)
    assert torch.allclose(centroids, torch.tensor([-1.0, 0.2, 0.9], dtype=torch.float64), atol=5e-3)
    assert torch.equal(assignment, torch.arange(3).repeat_interleave(200))
    again = kmeans_1d(values, 3)
    assert torch.equal(again[0], centroids) and torch.equal(again[1], assignment)


def test_clustering_shares_k_values_per_layer():
    model = small_model()
    clustered, report = cluster_model(model, TRAIN, ClusterConfig(clusters=4, min_params=100), FT, progress=False)
    _assert_plain(clustered)
    assert remaining_batchnorm(clustered) == [] and report["unfolded_batchnorm"] == []
    assert list(report["layers"]) == ["stem.0", "body.0"]  # head has 64 weights
    for name in ("stem.0", "body.0"):
        weight = clustered.get_submodule(name).weight
        assert weight.unique().numel() <= 4
        assert report["layers"][name] == {"params": weight.numel(), "unique_values": weight.unique().numel()}
    assert clustered.head.weight.unique().numel() > 4
    images = torch.stack([torch.from_numpy(x) for x, _ in (_preprocessed(i) for i in range(4))])
    masks = torch.stack([torch.from_numpy(y) for _, y in (_preprocessed(i) for i in range(4))])
    with torch.no_grad():
        loss = F.cross_entropy(clustered(images), masks)
    assert torch.isfinite(loss) and loss < 2 * np.log(K)


def _preprocessed(i):
    from seg2tflite.app.compress.finetune import preprocess_for

    return preprocess_for(SmallSegNet(), FT)(*TRAIN[i])


def test_qat_weights_lie_on_the_per_channel_int8_grid():
    trained, report = qat_model(small_model(), TRAIN, QATConfig(), FT, progress=False)
    _assert_plain(trained)
    assert remaining_batchnorm(trained) == [] and report["steps"] == 8
    assert set(report["layers"]) == {"stem.0", "body.0", "head"}  # every layer, however small
    for name, m in layer_weights(trained):
        w = m.weight.detach().flatten(1)
        scale = w.abs().amax(1, keepdim=True) / 127
        q = w / scale
        assert (q - q.round()).abs().max() <= 1e-4, name
        assert torch.equal(q.round().abs().amax(1), torch.full((w.shape[0],), 127.0)), name
        assert report["layers"][name]["max_abs_error"] == 0.0
    for lo, hi in report["activation_ranges"].values():
        assert lo < 0 < hi or lo <= 0 <= hi


@pytest.mark.parametrize(
    "compress",
    [
        lambda model, ft: prune_model(model, TRAIN, PruneConfig(sparsity=0.5, frequency=2, min_params=0), ft, progress=False),
        lambda model, ft: cluster_model(model, TRAIN, ClusterConfig(clusters=8, min_params=0), ft, progress=False),
        lambda model, ft: qat_model(model, TRAIN, QATConfig(), ft, progress=False),
    ],
    ids=["prune", "cluster", "qat"],
)
def test_same_seed_same_weights(compress):
    first = compress(small_model(), FT)[0].state_dict()
    second = compress(small_model(), FT)[0].state_dict()
    other = compress(small_model(), FinetuneConfig(steps=8, batch_size=4, input_size=SIZE, seed=1))[0].state_dict()
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert not all(torch.equal(first[k], other[k]) for k in first)


def test_finetune_report_and_eval_mode():
    model = small_model().train()
    steps = []
    result = finetune(model, TRAIN, FT, step_hook=steps.append, progress=False, val_dataset=BlobDataset("val", n=4))
    assert steps == list(range(8)) and not model.training
    assert result["steps"] == 8 and np.isfinite(result["loss_last"]) and 0 <= result["val"]["miou"] <= 1


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: PruneConfig(sparsity=1.0), "^sparsity: "),
        (lambda: PruneConfig(sparsity=-0.1), "^sparsity: "),
        (lambda: PruneConfig(sparsity=0.5, initial_sparsity=0.6), r"^initial_sparsity: 0.6 must be in \[0, sparsity 0.5\]"),
        (lambda: PruneConfig(frequency=0), "^frequency: "),
        (lambda: PruneConfig(end_fraction=0.0), "^end_fraction: "),
        (lambda: PruneConfig(min_params=-1), "^min_params: "),
        (lambda: ClusterConfig(clusters=1), "^clusters: "),
        (lambda: ClusterConfig(clusters=300), "^clusters: "),
        (lambda: QATConfig(averaging_constant=0.0), "^averaging_constant: "),
        (lambda: FinetuneConfig(steps=0), "--steps"),
        (lambda: FinetuneConfig(steps=4, batch_size=0), "--batch-size"),
        (lambda: FinetuneConfig(steps=4, lr=0.0), "--lr"),
        (lambda: FinetuneConfig(steps=4, input_size=(4, 4)), "--input-size"),
    ],
)
def test_bad_config_values(make, match):
    with pytest.raises(UserError, match=match):
        make()


def test_bad_finetune_inputs():
    with pytest.raises(UserError, match="--input-size: SmallSegNet has no registry config"):
        finetune(small_model(), TRAIN, FinetuneConfig(steps=2), progress=False)
    with pytest.raises(UserError, match="--batch-size: 8 is more than the 4 training images"):
        finetune(small_model(), BlobDataset("train", n=4), FinetuneConfig(steps=2, input_size=SIZE), progress=False)
    with pytest.raises(UserError, match="^min_params: "):
        prune_model(small_model(), TRAIN, PruneConfig(min_params=10**6), FT, progress=False)


def _tflite_filters(path, torch_model):
    """{layer name: (tflite constant tensor, its details)} matched to the PyTorch convs by shape."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path))
    by_shape = {tuple(m.weight.permute(0, 2, 3, 1).shape): name for name, m in layer_weights(torch_model)}
    found = {}
    for details in interpreter.get_tensor_details():
        name = by_shape.get(tuple(details["shape"]))
        if name is not None:
            assert name not in found, f"two tensors of shape {details['shape']}"
            found[name] = (interpreter.get_tensor(details["index"]), details)
    assert set(found) == set(by_shape.values())
    return found


@pytest.mark.chain
def test_compression_survives_conversion(tmp_path):
    from seg2tflite.converters import ConvertConfig, convert_model
    from seg2tflite.eval.compression_layers import tflite_weights

    def convert(model, name, variants):
        config = ConvertConfig(input_size=SIZE, variants=variants, calib_size=8, parity_images=2)
        result = convert_model(model, tmp_path / name, config, TRAIN, BlobDataset("val"), log=None, progress=False)
        assert result.parity.failures == []
        return tmp_path / name

    pruned, _ = prune_model(small_model(), TRAIN, PruneConfig(sparsity=0.5, frequency=2, min_params=0), FT, progress=False)
    out = convert(pruned, "pruned", ("float32",))
    for name, (tensor, _) in _tflite_filters(out / "model_float32.tflite", pruned).items():
        weight = pruned.get_submodule(name).weight.detach().permute(0, 2, 3, 1).numpy()
        assert np.array_equal(tensor == 0, weight == 0), name  # TFLite folded the BN: same zeros, other values
    # the report's reading of the file (seg2tflite.eval.compression_layers) counts exactly those zeros
    zeros = sum(int((m.weight == 0).sum()) for _, m in layer_weights(pruned))
    assert sum(w["zeros"] for w in tflite_weights(out / "model_float32.tflite", min_params=0)) == zeros

    clustered, _ = cluster_model(small_model(), TRAIN, ClusterConfig(clusters=4, min_params=0), FT, progress=False)
    out = convert(clustered, "clustered", ("float32",))
    for name, (tensor, _) in _tflite_filters(out / "model_float32.tflite", clustered).items():
        assert np.unique(tensor).size <= 4, name
        assert np.array_equal(tensor, clustered.get_submodule(name).weight.detach().permute(0, 2, 3, 1).numpy()), name
    shared = [w for w in tflite_weights(out / "model_float32.tflite", min_params=0) if w["unique_values"] <= 4]
    assert len(shared) >= len(list(layer_weights(clustered)))

    trained, _ = qat_model(small_model(), TRAIN, QATConfig(), FT, progress=False)
    out = convert(trained, "qat", ("full_int8",))
    for name, (tensor, details) in _tflite_filters(out / "model_full_int8.tflite", trained).items():
        assert tensor.dtype == np.int8, name
        q = details["quantization_parameters"]
        assert q["quantized_dimension"] == 0 and len(q["scales"]) == tensor.shape[0] and not q["zero_points"].any()
        dequantized = tensor.astype(np.float32) * q["scales"].astype(np.float32)[:, None, None, None]
        weight = trained.get_submodule(name).weight.detach().permute(0, 2, 3, 1).numpy()
        assert np.abs(dequantized - weight).max() <= 1e-6 * np.abs(weight).max(), name  # no weight quantization error
