"""Native PyTorch training for any registered model: AdamW, poly LR with warm-up, periodic val mIoU.

Runs on a 2-core CPU (deterministic for a seed), on one GPU with mixed precision, or on several
GPUs when launched with ``torchrun`` (DistributedDataParallel). Writes ``best`` and ``last``
checkpoints (safetensors + JSON config) and ``train_state.pt`` (optimizer, scheduler, step) for
``--resume``.
"""

from __future__ import annotations

import json
import math
import os
import random
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler
from torchvision.transforms import v2
from tqdm import tqdm

from seg2tflite.app.class_weights import CLASS_WEIGHTINGS, median_frequency_weights
from seg2tflite.app.train_config import TrainConfig
from seg2tflite.atomic import atomic_path, atomic_write_text
from seg2tflite.data import IGNORE_INDEX, Preprocess, TorchSegDataset, load_dataset
from seg2tflite.errors import UserError, setting
from seg2tflite.metrics import ConfusionMatrix
from seg2tflite.models import create_model, get_model_config
from seg2tflite.models.checkpoint import save_checkpoint


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def augmentation(size: tuple[int, int]) -> v2.Compose:
    """Joint image+mask augmentation: scale jitter, crop, flip, photometric jitter (image only)."""
    return v2.Compose(
        [
            v2.RandomResizedCrop(size, scale=(0.5, 1.0), ratio=(0.75, 1.333), antialias=True),
            v2.RandomHorizontalFlip(),
            v2.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2),
        ]
    )


def poly_lr_lambda(warmup_steps: int, total_steps: int, power: float):
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return max(0.0, 1.0 - progress) ** power

    return factor


@torch.no_grad()
def evaluate_model(model: nn.Module, loader: DataLoader, num_classes: int, device: torch.device) -> dict:
    """Val metrics of a PyTorch model over a loader of preprocessed (image, mask) batches."""
    model.eval()
    matrix = ConfusionMatrix(num_classes, ignore_index=IGNORE_INDEX)
    for images, masks in loader:
        logits = model(images.to(device))
        matrix.update(logits.argmax(1).cpu(), masks)
    return matrix.compute().as_dict()


def check_train_settings(config: TrainConfig, size, num_classes: int, data_classes: int) -> None:
    """Refuse, before the model is built, what training could only fail on later: a size the model
    cannot take, a head smaller than the data's labels, settings AdamW rejects, BatchNorm on a
    batch of one, or more memory than the machine has."""
    from seg2tflite.memory import check_fits
    from seg2tflite.models import check_input_size
    from seg2tflite.models.footprint import activation_bytes, probe

    check_input_size(config.model, size)
    if num_classes < data_classes:
        raise UserError(
            f"{setting('num_classes')} {num_classes}: {config.data} has {data_classes} classes (labels up to {data_classes - 1}), "
            f"more than a {num_classes}-class head can predict; pass {setting('num_classes')} {data_classes} or drop it"
        )
    if not (math.isfinite(config.lr) and config.lr > 0):
        raise UserError(f"{setting('lr')} {config.lr}: must be a finite number > 0")
    if not (math.isfinite(config.weight_decay) and config.weight_decay >= 0):
        raise UserError(f"{setting('weight_decay')} {config.weight_decay}: must be a finite number >= 0")
    if config.class_weighting not in (None, *CLASS_WEIGHTINGS):
        raise UserError(
            f"{setting('class_weighting')} {config.class_weighting}: not a class weighting; use {', '.join(CLASS_WEIGHTINGS)} or leave it out"
        )
    if config.workers < 0 or config.warmup_steps < 0:
        raise UserError(
            f"{setting('workers')} {config.workers} / {setting('warmup_steps')} {config.warmup_steps}: must be 0 or more"
        )
    footprint = probe(config.model, size, num_classes)
    if footprint is None:
        return
    if config.batch_size == 1 and footprint.single_value_batchnorms:
        raise UserError(
            f"{setting('batch_size')} 1: {config.model}'s BatchNorm layer {footprint.single_value_batchnorms[0]} sees one value per "
            f"channel per image (a 1x1 map), which cannot be normalised over a batch of one image; use {setting('batch_size')} 2 or more"
        )

    def need(h: int, w: int) -> float:  # the activations autograd keeps for the backward pass, per image
        return config.batch_size * (activation_bytes(config.model, (h, w), num_classes) or 0)

    what = f"training {config.model} with {setting('batch_size')} {config.batch_size}"
    check_fits(need, size, what, divisor=get_model_config(config.model).size_divisor)


def _distributed() -> tuple[int, int, int]:
    """(rank, local_rank, world_size); initialises the process group under torchrun."""
    if "LOCAL_RANK" not in os.environ:
        return 0, 0, 1
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")
    return dist.get_rank(), int(os.environ["LOCAL_RANK"]), dist.get_world_size()


def train(config: TrainConfig) -> dict:
    """Train ``config.model`` on ``config.data``; return the best validation metrics."""
    rank, local_rank, world_size = _distributed()
    is_main = rank == 0
    seed_everything(config.seed + rank)
    use_cuda = torch.cuda.is_available()
    device = torch.device(f"cuda:{local_rank}" if use_cuda else "cpu")
    if not use_cuda:
        torch.use_deterministic_algorithms(True, warn_only=True)

    model_config = get_model_config(config.model)
    size = tuple(config.input_size or model_config.input_size)
    train_split = load_dataset(config.data, "train", num_classes=config.num_classes)
    val_split = load_dataset(config.data, "val", num_classes=config.num_classes)
    num_classes = config.num_classes or train_split.info.num_classes
    if len(train_split) == 0 or len(val_split) == 0:
        raise UserError(f"{setting('data')} {config.data}: the train or val split is empty")
    check_train_settings(config, size, num_classes, train_split.info.num_classes)

    preprocess = Preprocess.for_model(model_config, size)
    train_set = TorchSegDataset(train_split, preprocess, transform=augmentation(size))
    val_set = TorchSegDataset(val_split, preprocess)
    if config.val_images is not None:
        val_set = torch.utils.data.Subset(val_set, range(min(config.val_images, len(val_set))))

    sampler = DistributedSampler(train_set, seed=config.seed, drop_last=True) if world_size > 1 else None
    val_loader = DataLoader(val_set, batch_size=config.batch_size, num_workers=config.workers)
    batches_per_epoch = (len(sampler) if sampler else len(train_set)) // config.batch_size
    if batches_per_epoch == 0:
        raise UserError(
            f"{setting('data')} {config.data}: {len(train_set)} training images is fewer than "
            f"{setting('batch_size')} {config.batch_size}; lower the batch size"
        )

    extra = {"encoder_checkpoint": config.encoder_checkpoint} if config.encoder_checkpoint else {}
    model = create_model(config.model, num_classes=num_classes, **extra).to(device)
    # The checkpoint's config says the size the model was trained at, so later steps default to it.
    model.model_config = replace(model.model_config, input_size=tuple(size))
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, poly_lr_lambda(config.warmup_steps, config.steps, config.poly_power))
    amp = config.amp and use_cuda
    scaler = torch.amp.GradScaler("cuda", enabled=amp)
    weights = None
    if config.class_weighting == "median_frequency":
        weights = median_frequency_weights((train_split[i][1] for i in range(len(train_split))), num_classes)
        weights = torch.tensor(weights, dtype=torch.float32, device=device)
    criterion = nn.CrossEntropyLoss(weight=weights, ignore_index=IGNORE_INDEX)

    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    state_path = out / "train_state.pt"
    step, best, history = 0, {"miou": -1.0}, []
    if config.resume and state_path.is_file():
        step, best, history = _load_train_state(state_path, config, model, optimizer, scheduler, scaler)
    if world_size > 1:
        model = nn.parallel.DistributedDataParallel(model, device_ids=[local_rank] if use_cuda else None)
    bare_model = model.module if world_size > 1 else model

    bar = tqdm(total=config.steps, initial=step, desc=f"train {config.model}", disable=not (is_main and config.progress))
    try:  # the bar is closed (a line of its own) before anything else is printed, an interrupt too
        batches = step_batches(train_set, config.batch_size, config.seed, config.workers, config.steps, step, sampler)
        for step, images, masks in batches:
            model.train()
            started = time.perf_counter()
            try:
                loss = optimization_step(model, criterion, images, masks, optimizer, scheduler, scaler, step, "training")
            except ValueError as e:  # what the footprint probe could not foresee
                if "Expected more than 1 value per channel" not in str(e):
                    raise
                raise UserError(
                    f"{setting('batch_size')} {config.batch_size}: a BatchNorm layer of {config.model} saw one value per channel; "
                    f"use a larger {setting('batch_size')}"
                ) from None
            step += 1
            speed = images.shape[0] * world_size / (time.perf_counter() - started)
            bar.set_postfix(loss=f"{loss:.3f}", lr=f"{scheduler.get_last_lr()[0]:.2e}", img_s=f"{speed:.1f}")
            bar.update(1)
            if (step % config.val_every == 0 or step == config.steps) and is_main:
                metrics = evaluate_model(bare_model, val_loader, num_classes, device)
                history.append({"step": step, "loss": loss, **_summary(metrics)})
                bar.write(f"step {step}: val mIoU {100 * metrics['miou']:.2f}  pixel acc {100 * metrics['pixel_accuracy']:.2f}")
                train_extra = {"step": step, "val": _summary(metrics), "train_config": asdict(config)}
                if metrics["miou"] > best["miou"]:
                    best = {"step": step, **_summary(metrics)}
                    save_checkpoint(bare_model, out / "best.safetensors", extra=train_extra)
                save_checkpoint(bare_model, out / "last.safetensors", extra=train_extra)
                _save_train_state(state_path, config, step, best, history, bare_model, optimizer, scheduler, scaler)
    finally:
        bar.close()
    if is_main:
        record = {"config": asdict(config), "best": best, "history": history}
        atomic_write_text(out / "train_log.json", json.dumps(record, indent=2) + "\n")
    if world_size > 1:
        dist.destroy_process_group()
    return best


def step_batches(dataset, batch_size: int, seed: int, workers: int, steps: int, start: int = 0, sampler=None):
    """``(step, images, masks)`` for steps ``start`` .. ``steps - 1``, epoch after epoch. An epoch's
    order depends only on (seed, epoch), so a resumed run continues the same sequence; training and
    fine-tuning both draw their batches here."""
    batches_per_epoch = (len(sampler) if sampler else len(dataset)) // batch_size
    step, epoch = start, start // batches_per_epoch
    while step < steps:
        # An explicit generator keeps DataLoader from drawing its worker seed from the global RNG,
        # which would shift the augmentation stream of a resumed run by one draw.
        common = dict(
            batch_size=batch_size,
            drop_last=True,
            num_workers=workers,
            pin_memory=torch.cuda.is_available(),
            generator=torch.Generator().manual_seed(seed * 100_003 + epoch),
        )
        if sampler is not None:
            sampler.set_epoch(epoch)
            loader = DataLoader(dataset, sampler=sampler, **common)
        else:
            skip = step - epoch * batches_per_epoch  # batches of this epoch already trained on
            order = torch.randperm(len(dataset), generator=common["generator"])
            loader = DataLoader(torch.utils.data.Subset(dataset, order[skip * batch_size :].tolist()), **common)
        for images, masks in loader:
            yield step, images, masks
            step += 1
            if step >= steps:
                return
        epoch += 1


def optimization_step(model, criterion, images, masks, optimizer, scheduler, scaler, step: int, what: str) -> float:
    """One optimizer step on a batch (mixed precision when ``scaler`` is enabled); the loss.
    A loss that is not finite is refused: ``what`` ("training", "fine-tuning") diverged."""
    device = next(model.parameters()).device
    images, masks = images.to(device, non_blocking=True), masks.to(device, non_blocking=True)
    with torch.autocast(device.type, dtype=torch.float16, enabled=scaler.is_enabled()):
        loss = criterion(model(images), masks)
    if not torch.isfinite(loss):
        raise UserError(f"{what} diverged at step {step} (loss {loss.item()}); lower {setting('lr')}")
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    scheduler.step()
    return loss.item()


def _summary(metrics: dict) -> dict:
    return {k: metrics[k] for k in ("miou", "pixel_accuracy", "mean_class_accuracy")}


RESUME_SETTINGS = (
    "model",
    "data",
    "steps",
    "batch_size",
    "lr",
    "weight_decay",
    "warmup_steps",
    "poly_power",
    "class_weighting",
    "input_size",
    "seed",
)


def resume_settings(config: TrainConfig) -> dict:
    """The settings a resumed run must share with the run it continues."""
    return json.loads(json.dumps({key: getattr(config, key) for key in RESUME_SETTINGS}))


def _save_train_state(
    path: Path, config: TrainConfig, step: int, best: dict, history: list, model, optimizer, scheduler, scaler
) -> None:
    """Everything a resume needs in one file, renamed into place whole: the weights, the optimizer,
    the step and the history. last.safetensors is a copy for the user; a run killed between the
    two writes resumes from this file alone, so it replays nothing and ends as an uninterrupted run."""
    state = {
        "settings": json.dumps(resume_settings(config)),
        "step": step,
        "best_json": json.dumps(best),
        "history_json": json.dumps(history),
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict(),
        "torch_rng": torch.get_rng_state(),
    }
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def _load_train_state(path: Path, config: TrainConfig, model, optimizer, scheduler, scaler) -> tuple[int, dict, list]:
    from seg2tflite.models.checkpoint import load_weights_into

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a torn or foreign file: say so rather than guess
        raise UserError(f"{path}: cannot resume from it ({type(e).__name__}); delete it to start over") from None
    saved = json.loads(state.get("settings", "{}"))
    changed = [f"{k} {saved.get(k)} -> {v}" for k, v in resume_settings(config).items() if saved.get(k) != v]
    if changed:
        raise UserError(
            f"{path}: saved by a run with other settings ({', '.join(changed)}); "
            "resume with the same settings, or use another --out (or drop --resume) to start over"
        )
    if "model" in state:  # the weights of this very step (last.safetensors may be a later step's)
        model.load_state_dict(state["model"])
    else:  # written before the state held the weights
        load_weights_into(model, path.parent / "last.safetensors")
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    scaler.load_state_dict(state["scaler"])
    torch.set_rng_state(state["torch_rng"])
    return int(state["step"]), json.loads(state["best_json"]), json.loads(state.get("history_json", "[]"))
