"""``seg2tflite data``: write the built-in synthetic dataset, or read every item of a split."""

from __future__ import annotations

from seg2tflite.app.cli_options import DATA_SPEC_SHORT, Formatter, non_negative_int, positive_int


def add(sub) -> None:
    from seg2tflite.data import DATA_SPEC_HELP

    p = sub.add_parser("data", help="write or inspect datasets", description=DATA_SPEC_HELP, formatter_class=Formatter)
    data_sub = p.add_subparsers(dest="data_command", required=True, metavar="{synthetic,check}")
    s = data_sub.add_parser(
        "synthetic",
        help="write the built-in synthetic dataset in the folder layout",
        formatter_class=Formatter,
        description="Write DIR/{train,val,test}/{images,masks}/*.png (masks are class-index PNGs).",
    )
    s.add_argument("--out", required=True, help="output folder")
    s.add_argument("--seed", type=non_negative_int, default=0, help="random seed")
    s.add_argument("--num-train", type=non_negative_int, default=None, help="training images (default: the built-in size)")
    s.add_argument("--num-val", type=non_negative_int, default=None, help="validation images")
    s.add_argument("--num-test", type=non_negative_int, default=None, help="test images")
    s.add_argument("--image-size", type=positive_int, nargs=2, metavar=("H", "W"), default=None, help="image size")
    s.set_defaults(handler=run)
    c = data_sub.add_parser("check", help="read every item of a dataset split and report problems", formatter_class=Formatter)
    c.add_argument("--data", required=True, help=DATA_SPEC_SHORT)
    c.add_argument("--split", default="val", choices=["train", "val", "test"], help="split")
    c.set_defaults(handler=run)


def run_synthetic(args) -> None:
    from dataclasses import replace

    from seg2tflite.data import SyntheticConfig, SyntheticDataset, write_folder_dataset

    config = SyntheticConfig(seed=args.seed)
    overrides = {
        "num_train": args.num_train,
        "num_val": args.num_val,
        "num_test": args.num_test,
        "image_size": tuple(args.image_size) if args.image_size else None,
    }
    config = replace(config, **{k: v for k, v in overrides.items() if v is not None})
    splits = {split: SyntheticDataset(split, config) for split in ("train", "val", "test")}
    write_folder_dataset(splits, args.out, source=config.to_spec())
    print(f"wrote {sum(map(len, splits.values()))} images to {args.out}")


def run_check(args) -> None:
    from seg2tflite.data import load_dataset, validate_dataset

    dataset = load_dataset(args.data, args.split)
    validate_dataset(dataset)
    print(f"{args.data} [{args.split}]: {len(dataset)} items, {dataset.info.num_classes} classes, all readable")


def run(args) -> None:
    {"synthetic": run_synthetic, "check": run_check}[args.data_command](args)
