"""Per-layer figures of pruned and clustered models, on both sides of the conversion.

The PyTorch side is what ``seg2tflite compress`` recorded in ``compress.json`` (zeros, or unique
values, per pruned or clustered layer). The TFLite side is read back out of the converted
``model_float32.tflite``: every float32 constant tensor large enough to be a layer's weights,
with its zeros and unique values, so the report shows that the sparsity and the shared values
reached the file a phone runs (TFLite folds BatchNorm into the pruned convs, which keeps zeros
zero; clustering folds BatchNorm itself first, so the shared values reach TFLite unchanged).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from seg2tflite.converters.stages import ConversionDir
from seg2tflite.converters.tflite_graph import schema

COMPRESS_LOG = "compress.json"


def tflite_weights(path: str | Path, min_params: int = 1024) -> list[dict]:
    """Every float32 constant tensor of at least ``min_params`` values: name, values, zeros, unique values."""
    model = schema.Model.GetRootAs(Path(path).read_bytes(), 0)
    graph = model.Subgraphs(0)
    found = []
    for i in range(graph.TensorsLength()):
        tensor = graph.Tensors(i)
        data = model.Buffers(tensor.Buffer()).DataAsNumpy()
        if tensor.Type() != schema.TensorType.FLOAT32 or isinstance(data, int) or data.size < 4 * min_params:
            continue  # activations have no buffer (DataAsNumpy gives 0)
        values = data.view(np.float32)
        found.append({
            "name": tensor.Name().decode(), "params": int(values.size), "zeros": int((values == 0).sum()),
            "unique_values": int(np.unique(values).size),
        })  # fmt: skip
    return found


def layer_summary(compress_dir: str | Path) -> dict | None:
    """One compressed model's per-layer figures and their TFLite counterpart; None for QAT or when
    the model was not converted."""
    from seg2tflite.records import field, read_json

    compress_dir = Path(compress_dir)
    path = compress_dir / COMPRESS_LOG
    redo = f"delete {compress_dir} and run `seg2tflite compress` again"
    log = read_json(path, redo)
    report, tag = field(log, path, redo, "report", kind=dict), field(log, path, redo, "settings", "method", kind=str)
    tflite = ConversionDir(compress_dir / "convert").artifact("float32")
    if not tflite.is_file() or not tag.startswith(("prune", "cluster")):
        return None
    min_params = field(log, path, redo, "report", "config", "min_params", kind=int)
    field(log, path, redo, "report", "layers")
    field(log, path, redo, "report", *(("sparsity",) if tag.startswith("prune") else ("config", "clusters")))
    weights = tflite_weights(tflite, min_params)
    params = sum(w["params"] for w in weights)
    summary = {"tag": tag, "layers": report["layers"], "tflite_tensors": len(weights), "tflite_params": params}
    if tag.startswith("prune"):
        summary["pytorch_sparsity"] = report["sparsity"]
        summary["tflite_sparsity"] = sum(w["zeros"] for w in weights) / max(params, 1)
    else:
        k = report["config"]["clusters"]
        shared = [w for w in weights if w["unique_values"] <= k]
        summary["clusters"] = k
        summary["tflite_shared_tensors"] = len(shared)
        summary["tflite_shared_params"] = sum(w["params"] for w in shared) / max(params, 1)
    return summary


def render_compression_layers_md(run_dir: str | Path) -> str | None:
    """``compression_layers.md`` for every pruned or clustered model of a run; None when there is none."""
    sections = []
    for log in sorted(Path(run_dir).glob(f"models/*/compress/*/{COMPRESS_LOG}")):
        summary = layer_summary(log.parent)
        if summary is None:
            continue
        model = f"{log.parents[2].name}+{summary['tag']}"
        if "pytorch_sparsity" in summary:
            line = (
                f"{summary['pytorch_sparsity']:.1%} of the pruned layers' weights are zero in PyTorch; in "
                f"`model_float32.tflite`, {summary['tflite_sparsity']:.1%} of the {summary['tflite_params']:,} values of its "
                f"{summary['tflite_tensors']} float32 weight tensors are zero."
            )
            header, cells = (
                ["layer", "weights", "zeros", "sparsity"],
                lambda v: [f"{v['params']:,}", f"{v['zeros']:,}", f"{v['sparsity']:.1%}"],
            )
        else:
            line = (
                f"Every clustered layer holds at most {summary['clusters']} distinct values in PyTorch; in "
                f"`model_float32.tflite`, {summary['tflite_shared_tensors']} of its {summary['tflite_tensors']} float32 weight "
                f"tensors do, holding {summary['tflite_shared_params']:.1%} of their {summary['tflite_params']:,} values."
            )
            header, cells = ["layer", "weights", "unique values"], lambda v: [f"{v['params']:,}", str(v["unique_values"])]
        rows = [f"| `{name}` | " + " | ".join(cells(v)) + " |" for name, v in summary["layers"].items()]
        sections += [
            f"## `{model}`", "", line, "",
            "| " + " | ".join(header) + " |", "| --- |" + " --: |" * (len(header) - 1), *rows, "",
        ]  # fmt: skip
    if not sections:
        return None
    intro = [
        "# Compression per layer",
        "",
        "Each pruned or clustered model's layers as `seg2tflite compress` left them in PyTorch, and the float32",
        "weight tensors read back out of its converted `model_float32.tflite` (tensors of at least the",
        "method's `min_params` values; TFLite's names differ from PyTorch's, so the file is summed up).",
        "",
    ]
    return "\n".join(intro + sections)
