"""``seg2tflite train``: train a registered model natively in PyTorch."""

from __future__ import annotations

from seg2tflite.app.class_weights import CLASS_WEIGHTINGS
from seg2tflite.app.cli_options import (
    DATA_SPEC_SHORT,
    Formatter,
    add_input_size,
    class_count,
    config_from_args,
    non_negative_float,
    non_negative_int,
    positive_float,
    positive_int,
)
from seg2tflite.errors import UserError


def add(sub) -> None:
    from seg2tflite.app.train_config import TrainConfig

    d = TrainConfig(model="")
    p = sub.add_parser("train", help="train a registered model natively in PyTorch", formatter_class=Formatter)
    p.add_argument("--model", required=True, help="registered model name (see `seg2tflite models`)")
    p.add_argument("--data", default=d.data, help=DATA_SPEC_SHORT)
    p.add_argument("--out", default=d.out, help="output folder for checkpoints and the training log")
    p.add_argument("--steps", type=positive_int, default=d.steps, help="optimizer steps")
    p.add_argument("--batch-size", type=positive_int, default=d.batch_size, help="batch size (per GPU under torchrun)")
    p.add_argument("--lr", type=positive_float, default=d.lr, help="peak AdamW learning rate")
    p.add_argument("--weight-decay", type=non_negative_float, default=d.weight_decay, help="AdamW weight decay")
    p.add_argument("--warmup-steps", type=non_negative_int, default=d.warmup_steps, help="linear warm-up steps")
    p.add_argument(
        "--class-weighting", choices=CLASS_WEIGHTINGS, default=None,
        help="weigh each class's loss by median frequency over its frequency (SegNet's balancing; default: all 1)",
    )  # fmt: skip
    add_input_size(p, "training size (default: the model's)")
    p.add_argument("--num-classes", type=class_count, default=None, help="head size (default: the dataset's)")
    p.add_argument("--val-every", type=positive_int, default=d.val_every, help="steps between validations and checkpoints")
    p.add_argument("--val-images", type=positive_int, default=None, help="cap on validation images (default: whole split)")
    p.add_argument("--workers", type=non_negative_int, default=d.workers, help="DataLoader worker processes")
    p.add_argument("--seed", type=non_negative_int, default=d.seed, help="random seed")
    p.add_argument("--encoder-checkpoint", default=None, help="local timm-format ImageNet weights for the encoder")
    p.add_argument("--resume", action="store_true", help="continue from OUT/train_state.pt")
    p.add_argument("--no-amp", action="store_true", help="disable mixed precision on CUDA")
    p.set_defaults(handler=run)


def run(args) -> None:
    from seg2tflite.app.train import train
    from seg2tflite.app.train_config import TrainConfig
    from seg2tflite.models import list_models

    if args.model not in list_models():
        raise UserError(f"--model {args.model}: unknown model; choose one of {', '.join(list_models())}")
    config = config_from_args(TrainConfig, args, amp=not args.no_amp)
    best = train(config)
    print(f"best val mIoU {100 * best['miou']:.2f} at step {best.get('step')}; checkpoints in {args.out}")
