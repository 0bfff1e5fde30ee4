"""Training settings, kept apart from the training loop so the command line can show the
defaults without importing PyTorch."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class TrainConfig:
    model: str
    data: str = "synthetic"  # data spec, see `seg2tflite data --help`
    out: str = "runs/train"
    steps: int = 600  # optimizer steps in total
    batch_size: int = 8
    lr: float = 1e-3  # peak AdamW learning rate
    weight_decay: float = 1e-2
    warmup_steps: int = 50  # linear warm-up before the poly decay
    poly_power: float = 0.9
    class_weighting: str | None = None  # "median_frequency" (SegNet's balancing); None: every class weighs 1
    input_size: tuple[int, int] | None = None  # (H, W); default: the model's own
    num_classes: int | None = None  # default: the dataset's
    val_every: int = 100  # steps between validations (and checkpoints)
    val_images: int | None = None  # cap on validation images; None = the whole split
    workers: int = 0  # DataLoader workers; 0 keeps CPU runs bit-deterministic
    seed: int = 0
    encoder_checkpoint: str | None = None  # local timm-format ImageNet weights for the encoder
    resume: bool = False
    amp: bool = True  # mixed precision, used only on CUDA
    progress: bool = True
