"""The one table from a setting's Python name to how the command line names it.

Library messages name a setting by its Python name through ``seg2tflite.errors.setting``; while the
command line runs (``command_line_wording(SETTING_FLAGS)`` in ``seg2tflite.app.cli.main``) they
name the flag this table gives instead. A setting with no flag here is named by its Python name.
tests/test_flags.py checks every flag is an option of the real parser and every ``setting(name)``
in the source is listed here or in ``FLAGLESS``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from seg2tflite.errors import command_line_wording

# {Python setting name: its command-line flag}; one flag per name and one name per flag.
SETTING_FLAGS = {
    "batch_size": "--batch-size",
    "calib_data": "--calib-data",
    "calib_size": "--calib-size",
    "calib_sizes": "--calib-sizes",
    "checkpoint": "--checkpoint",
    "class_weighting": "--class-weighting",
    "data": "--data",
    "image_input": "--input",
    "image_output": "--output",
    "input_size": "--input-size",
    "int8_io": "--int8-io",
    "int8_ranges": "--int8-ranges",
    "limit": "--limit",
    "lr": "--lr",
    "max_miou_drop": "--max-miou-drop",
    "mean": "--mean",
    "model": "--model",
    "models": "--models",
    "module": "--module",
    "num_classes": "--num-classes",
    "num_threads": "--threads",
    "onnx": "--onnx",
    "opset": "--opset",
    "out": "--out",
    "output_key": "--output-key",
    "parity_images": "--parity-images",
    "run": "--run",
    "std": "--std",
    "upsample_logits": "--upsample-logits",
    "variants": "--variants",
    "warmup_steps": "--warmup-steps",
    "weight_decay": "--weight-decay",
    "weights": "--weights",
    "workers": "--workers",
}

# Settings of the compression methods the command line reaches through a ``--methods`` spec.
METHOD_SETTINGS = {
    "clusters": "cluster:K",
    "sparsity": "prune:SPARSITY",
}

# Settings only Python callers give: messages name them by their Python name everywhere.
FLAGLESS = frozenset(
    {
        "averaging_constant",
        "end_fraction",
        "frequency",
        "initial_sparsity",
        "kmeans_iterations",
        "max_node_trials",
        "min_params",
        "power",
        "strategies",
        "strategy",
    }
)

COMMAND_LINE_NAMES = {**SETTING_FLAGS, **METHOD_SETTINGS}


@contextlib.contextmanager
def flag_wording() -> Iterator[None]:
    """Within this block messages name the command line's flags, as while it runs."""
    with command_line_wording(COMMAND_LINE_NAMES):
        yield
