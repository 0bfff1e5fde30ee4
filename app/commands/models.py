"""``seg2tflite models``: list the registered models."""

from __future__ import annotations

from seg2tflite.app.cli_options import Formatter


def add(sub) -> None:
    p = sub.add_parser("models", help="list the registered models", formatter_class=Formatter)
    p.set_defaults(handler=run)


def run(args) -> None:
    from seg2tflite.models import get_model_config, list_models

    for name in list_models():
        config = get_model_config(name)
        h, w = config.input_size
        print(f"{name:28s} input {h}x{w}  classes {config.num_classes:4d}  {config.paper}")
