"""The fine-tuning loop shared by pruning, clustering and quantization-aware training.

The training loop of ``seg2tflite.app.train`` (its batches, seeded per epoch, and its optimizer
step; joint augmentation, AdamW, poly learning rate, cross entropy that ignores label 255),
without checkpoints or resume: a
compression method runs it for a few hundred steps on an already trained model and updates its
own schedule through ``step_hook``. BatchNorm statistics stay frozen unless asked: a short
fine-tuning at a small batch would pull them away from the ones the model was trained with.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.utils.data import DataLoader
from tqdm import tqdm

from seg2tflite.app.train import augmentation, evaluate_model, optimization_step, poly_lr_lambda, seed_everything, step_batches
from seg2tflite.data import IGNORE_INDEX, Preprocess, SegmentationDataset, TorchSegDataset
from seg2tflite.errors import UserError


@dataclass(frozen=True)
class FinetuneConfig:
    steps: int  # optimizer steps
    batch_size: int = 8
    lr: float = 1e-4  # AdamW learning rate at step 0, decayed to 0 along a poly(0.9) curve
    weight_decay: float = 0.0
    seed: int = 0  # data order, augmentation and every random choice of the method
    input_size: tuple[int, int] | None = None  # (H, W); None: the model's registry input size
    num_workers: int = 0  # DataLoader worker processes
    train_batchnorm: bool = False  # update BatchNorm running statistics while fine-tuning

    def __post_init__(self) -> None:
        if not isinstance(self.steps, int) or self.steps < 1:
            raise UserError(f"--steps: {self.steps!r} must be a whole number of at least 1")
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise UserError(f"--batch-size: {self.batch_size!r} must be a whole number of at least 1")
        if not self.lr > 0:
            raise UserError(f"--lr: {self.lr!r} must be above 0; 1e-4 suits fine-tuning a trained model")
        if not self.weight_decay >= 0:
            raise UserError(f"--weight-decay: {self.weight_decay!r} must be 0 or more")
        if not isinstance(self.num_workers, int) or self.num_workers < 0:
            raise UserError(f"--workers: {self.num_workers!r} must be 0 or more")
        if self.input_size is not None:
            size = tuple(self.input_size)
            if len(size) != 2 or not all(isinstance(s, int) and s >= 8 for s in size):
                raise UserError(f"--input-size: {self.input_size!r} is not two sizes >= 8; pass --input-size H W")
            object.__setattr__(self, "input_size", size)


def preprocess_for(model: nn.Module, config: FinetuneConfig) -> Preprocess:
    """The model's preprocessing at the fine-tuning size (ImageNet statistics for a bare module)."""
    from seg2tflite.models.registry import IMAGENET_MEAN, IMAGENET_STD

    model_config = getattr(model, "model_config", None)
    size = config.input_size or getattr(model_config, "input_size", None)
    if size is None:
        raise UserError(f"--input-size: {type(model).__name__} has no registry config to take it from; pass --input-size H W")
    if model_config is None:
        return Preprocess(tuple(size), IMAGENET_MEAN, IMAGENET_STD)
    return Preprocess.for_model(model_config, size)


def example_input(model: nn.Module, dataset: SegmentationDataset, config: FinetuneConfig, n: int = 2) -> torch.Tensor:
    """The first ``n`` images of ``dataset``, preprocessed for ``model`` (no augmentation)."""
    data = TorchSegDataset(dataset, preprocess_for(model, config))
    return torch.stack([data[i][0] for i in range(min(n, len(data)))])


def finetune(
    model: nn.Module,
    dataset: SegmentationDataset,
    config: FinetuneConfig,
    *,
    step_hook: Callable[[int], None] | None = None,
    progress: bool = True,
    val_dataset: SegmentationDataset | None = None,
    desc: str = "finetune",
) -> dict:
    """Fine-tune ``model`` in place on ``dataset``; ``step_hook(step)`` runs before each step.

    Returns the first and last loss, the mean over the last tenth of the steps, and with
    ``val_dataset`` its metrics after fine-tuning. The model is left in eval mode.
    """
    preprocess = preprocess_for(model, config)
    train_set = TorchSegDataset(dataset, preprocess, transform=augmentation(preprocess.size))
    batches_per_epoch = len(train_set) // config.batch_size
    if batches_per_epoch == 0:
        raise UserError(f"--batch-size: {config.batch_size} is more than the {len(train_set)} training images; lower it")
    device = next(model.parameters()).device
    deterministic = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    if device.type == "cpu":
        torch.use_deterministic_algorithms(True, warn_only=True)
    seed_everything(config.seed)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=config.lr, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, poly_lr_lambda(0, config.steps, 0.9))
    criterion = nn.CrossEntropyLoss(ignore_index=IGNORE_INDEX)

    scaler = torch.amp.GradScaler("cuda", enabled=False)  # full precision: the steps are few and the model trained

    losses: list[float] = []
    bar = tqdm(total=config.steps, desc=desc, disable=not progress)
    try:
        _train_mode(model, config.train_batchnorm)
        for step, images, masks in step_batches(train_set, config.batch_size, config.seed, config.num_workers, config.steps):
            if step_hook is not None:
                step_hook(step)
            losses.append(optimization_step(model, criterion, images, masks, optimizer, scheduler, scaler, step, "fine-tuning"))
            bar.set_postfix(loss=f"{losses[-1]:.3f}")
            bar.update(1)
    finally:
        bar.close()
        model.eval()
        torch.use_deterministic_algorithms(deterministic[0], warn_only=deterministic[1])
    tail = losses[-max(1, len(losses) // 10) :]
    result = {
        "steps": len(losses),
        "loss_first": losses[0],
        "loss_last": losses[-1],
        "loss_mean_last_tenth": sum(tail) / len(tail),
    }
    if val_dataset is not None:
        result["val"] = validate(model, val_dataset, config)
    return result


def validate(model: nn.Module, dataset: SegmentationDataset, config: FinetuneConfig) -> dict:
    """mIoU, pixel accuracy and mean class accuracy of ``model`` on ``dataset`` (no augmentation)."""
    loader = DataLoader(
        TorchSegDataset(dataset, preprocess_for(model, config)), batch_size=config.batch_size, num_workers=config.num_workers
    )
    metrics = evaluate_model(model, loader, dataset.info.num_classes, next(model.parameters()).device)
    return {k: metrics[k] for k in ("miou", "pixel_accuracy", "mean_class_accuracy")}


def _train_mode(model: nn.Module, train_batchnorm: bool) -> None:
    model.train()
    if not train_batchnorm:
        for module in model.modules():
            if isinstance(module, _BatchNorm):
                module.eval()
