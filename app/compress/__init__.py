"""Compression on the PyTorch side, before export.

tensorflow-model-optimization cannot act on the graphs onnx2tf builds, so each method here works
on the PyTorch model, fine-tunes it with one shared loop (``finetune``), and returns a plain
``nn.Module`` with ordinary float weights (no parametrization, no hook) that
``seg2tflite.converters.convert_model`` carries unchanged, with a report of what was done:

- ``prune_model``: magnitude pruning on tfmot's polynomial sparsity schedule; exact zeros.
- ``cluster_model``: weight sharing, k values per layer from k-means, centroids fine-tuned.
- ``qat_model``: quantization-aware training; weights end on TFLite's per-channel int8 grid.

``layer_weights`` is the one rule for which layers are compressed; ``fold_batchnorm`` folds each
BatchNorm into the conv before it (clustering and QAT need it, or the converter's own folding
would rescale every output channel after them).
"""

from seg2tflite.app.compress.cluster import ClusterConfig, cluster_model, kmeans_1d
from seg2tflite.app.compress.finetune import FinetuneConfig, finetune, validate
from seg2tflite.app.compress.prune import PruneConfig, polynomial_sparsity, prune_model, sparsity_report
from seg2tflite.app.compress.qat import QATConfig, qat_model, snap_to_int8_grid
from seg2tflite.models.layers import FoldedBatchNorm, fold_batchnorm, layer_weights, remaining_batchnorm

__all__ = [
    "ClusterConfig",
    "FinetuneConfig",
    "FoldedBatchNorm",
    "PruneConfig",
    "QATConfig",
    "cluster_model",
    "finetune",
    "fold_batchnorm",
    "kmeans_1d",
    "layer_weights",
    "polynomial_sparsity",
    "prune_model",
    "qat_model",
    "remaining_batchnorm",
    "snap_to_int8_grid",
    "sparsity_report",
    "validate",
]
