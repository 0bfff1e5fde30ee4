"""Weight clustering (weight sharing) with fine-tuning, done on the PyTorch model before export.

Every BatchNorm that follows a conv is folded into it first (``fold_batchnorm``): the conversion
chain folds it anyway, and its per-channel factors would give every output channel its own
values, undoing the sharing. Then each Conv2d and Linear with at least ``min_params`` weights
gets ``clusters`` shared values: 1-D k-means over the layer's weights (linear initialisation
between min and max, as tensorflow-model-optimization's default, then Lloyd iterations), and a
parametrization weight = centroids[assignment]. Fine-tuning trains the centroids, each receiving
the summed gradient of its weights; the assignments stay fixed after initialisation. At the end
the weights are baked: plain tensors with at most ``clusters`` distinct values per layer, which
the float ``.tflite`` stores unchanged. As with pruning, the file shrinks once compressed (zip).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.nn.utils import parametrize

from seg2tflite.app.compress.finetune import FinetuneConfig, example_input, finetune
from seg2tflite.data import SegmentationDataset
from seg2tflite.errors import UserError, setting
from seg2tflite.models.layers import fold_batchnorm, layer_weights, remaining_batchnorm


@dataclass(frozen=True)
class ClusterConfig:
    clusters: int = 16  # shared values per layer (16 or 32 are usual)
    kmeans_iterations: int = 20  # Lloyd iterations after the linear initialisation
    min_params: int = 1024  # layers with fewer weights keep their own values

    def __post_init__(self) -> None:
        if not isinstance(self.clusters, int) or not 2 <= self.clusters <= 256:
            raise UserError(f"{setting('clusters')}: {self.clusters!r} must be a whole number in 2..256; 16 or 32 are usual")
        if not isinstance(self.kmeans_iterations, int) or self.kmeans_iterations < 0:
            raise UserError(f"{setting('kmeans_iterations')}: {self.kmeans_iterations!r} must be a whole number, 0 or more")
        if not isinstance(self.min_params, int) or self.min_params < 0:
            raise UserError(f"{setting('min_params')}: {self.min_params!r} must be a whole number, 0 or more")


def kmeans_1d(values: torch.Tensor, k: int, iterations: int = 20) -> tuple[torch.Tensor, torch.Tensor]:
    """(centroids (k,), assignment like ``values``): linear init over [min, max], then Lloyd.

    Runs in float64 on the CPU, so it gives the same result on every device. A centroid that
    loses all its values keeps its place.
    """
    flat = values.detach().flatten().to("cpu", torch.float64)
    centroids = torch.linspace(flat.min().item(), flat.max().item(), k, dtype=torch.float64)
    for _ in range(iterations):
        assignment = _nearest(flat, centroids)
        counts = torch.bincount(assignment, minlength=k)
        sums = torch.zeros(k, dtype=torch.float64).index_add_(0, assignment, flat)
        updated = torch.where(counts > 0, sums / counts.clamp(min=1), centroids).sort().values
        if torch.equal(updated, centroids):
            break
        centroids = updated
    return centroids, _nearest(flat, centroids).view(values.shape)


def _nearest(flat: torch.Tensor, sorted_centroids: torch.Tensor) -> torch.Tensor:
    return torch.bucketize(flat, (sorted_centroids[1:] + sorted_centroids[:-1]) / 2)


class _Clustered(nn.Module):
    def __init__(self, weight: torch.Tensor, k: int, iterations: int):
        super().__init__()
        centroids, assignment = kmeans_1d(weight, k, iterations)
        self.centroids = nn.Parameter(centroids.to(weight.device, weight.dtype))
        self.register_buffer("assignment", assignment.to(weight.device))

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return self.centroids[self.assignment]


def cluster_model(
    model: nn.Module,
    dataset: SegmentationDataset,
    cluster_config: ClusterConfig,
    finetune_config: FinetuneConfig,
    progress: bool = True,
    *,
    val_dataset: SegmentationDataset | None = None,
) -> tuple[nn.Module, dict]:
    """A BN-folded, clustered, fine-tuned copy of ``model`` (eval mode) and its report."""
    device = next(model.parameters()).device
    clustered = fold_batchnorm(model, example_input(model, dataset, finetune_config).to(device))
    layers = list(layer_weights(clustered, cluster_config.min_params))
    if not layers:
        raise UserError(
            f"{setting('min_params')}: no Conv2d or Linear layer has {cluster_config.min_params} weights or more; lower it"
        )
    for _, module in layers:
        parametrize.register_parametrization(
            module, "weight", _Clustered(module.weight, cluster_config.clusters, cluster_config.kmeans_iterations)
        )
        module.parametrizations.weight.original.requires_grad_(False)  # only the centroids train
    stats = finetune(clustered, dataset, finetune_config, progress=progress, val_dataset=val_dataset, desc="cluster")
    for _, module in layers:
        parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)
        module.weight.requires_grad_(True)
    report = {
        "layers": {
            name: {"params": module.weight.numel(), "unique_values": int(module.weight.unique().numel())}
            for name, module in layers
        },
        "unfolded_batchnorm": remaining_batchnorm(clustered),
        "config": asdict(cluster_config),
        "finetune": stats,
    }
    return clustered.eval(), report
