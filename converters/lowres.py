"""``--output lowres``: a .tflite whose output is the logits before the graph's final upsampling.

The registry's models end in ``F.interpolate(logits, size=input, mode="bilinear",
align_corners=False)``, which onnx2tf writes as one RESIZE_BILINEAR (half-pixel centers) at the
end of the graph, after every variant's conversion; in a full-int8 file with float output a
DEQUANTIZE follows it. ``cut_final_resize`` removes that op from the flatbuffer's object API
(``tflite_graph.read_model``/``write_model``): the graph output becomes the resize's input (a
DEQUANTIZE after it is fed that input instead and takes its shape). An app upsamples the
(1, h, w, K) logits itself, on the GPU; ``runtimes.TFLiteRunner`` does the same bilinear
upsampling for parity, so the gates compare exactly what the app gets.

A graph that does not end in a resize (SegNet's unpooling decoder, the MediaTek UNet) has its
output at stride 1 already: it is returned unchanged, and ``stride`` says 1.
"""

from __future__ import annotations

from seg2tflite.converters.onnx_to_tf import ConversionError
from seg2tflite.converters.tflite_graph import opcode_name, read_model, write_model
from seg2tflite.errors import setting


def _named(output: str) -> str:
    """``--output lowres`` on the command line, ``image_output='lowres'`` from Python."""
    return setting("image_output", output, f"image_output={output!r}")


def _op_name(model, op) -> str:
    return opcode_name(model.operatorCodes[op.opcodeIndex])


def cut_final_resize(content: bytes) -> tuple[bytes, int]:
    """``content`` without its trailing bilinear resize, and the output stride that leaves."""
    model = read_model(content)
    graph = model.subgraphs[0]
    if len(model.subgraphs) != 1 or len(graph.outputs) != 1:
        raise ConversionError(f"{_named('lowres')}: the graph has more than one subgraph or output; use {_named('logits')}")
    producer = {int(t): op for op in graph.operators for t in op.outputs}
    last = producer.get(int(graph.outputs[0]))
    dequantize = last if last is not None and _op_name(model, last) == "DEQUANTIZE" else None
    resize = producer.get(int(dequantize.inputs[0])) if dequantize is not None else last
    if resize is None or not _op_name(model, resize).startswith("RESIZE_"):
        return content, 1
    name = _op_name(model, resize)
    options = resize.builtinOptions
    if name != "RESIZE_BILINEAR" or options.alignCorners or not options.halfPixelCenters:
        raise ConversionError(
            f"{_named('lowres')}: the graph ends in {name} (align_corners={bool(options.alignCorners)}); only a "
            f"half-pixel bilinear resize (align_corners=False) can be left to the app; use {_named('logits')}"
        )
    consumers = [op for op in graph.operators if int(resize.outputs[0]) in [int(t) for t in op.inputs]]
    if consumers != ([dequantize] if dequantize is not None else []):
        raise ConversionError(f"{_named('lowres')}: the final resize's output feeds other ops; use {_named('logits')}")
    low = int(resize.inputs[0])
    stride = int(graph.tensors[int(resize.outputs[0])].shape[1]) // int(graph.tensors[low].shape[1])
    graph.operators.remove(resize)
    if dequantize is None:
        graph.outputs[0] = low
    else:
        dequantize.inputs[0] = low
        out = graph.tensors[int(dequantize.outputs[0])]
        out.shape = graph.tensors[low].shape.copy()
        out.shapeSignature = None if graph.tensors[low].shapeSignature is None else graph.tensors[low].shapeSignature.copy()
    return write_model(model), stride
