"""The one reader and editor of .tflite flatbuffers: the schema, op names, load and save, a graph to rewrite.

``schema`` is LiteRT's generated flatbuffer schema (``ai_edge_litert.schema_py_generated``), the
only one the package uses: it imports without TensorFlow, so evaluation and benchmark processes
read files with it too. ``builtin_name``/``opcode_name`` name an operator code; ``read_model`` and
``write_model`` turn a file's bytes into the schema's object API (``ModelT``) and back, as
TensorFlow's ``flatbuffer_utils`` does (the same bytes out). ``TFLiteGraph`` is a converted file's
first subgraph with who writes and who reads each tensor, and the small edits the rewrites share
(add a constant, an operator, an op code).
"""

from __future__ import annotations

import numpy as np
from ai_edge_litert import schema_py_generated as schema

BUILTIN_NAMES = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
TENSOR_TYPES = {v: k for k, v in vars(schema.TensorType).items() if not k.startswith("_")}
FILE_IDENTIFIER = b"TFL3"


def builtin_name(builtin: int) -> str:
    """The name of builtin operator ``builtin`` (``BUILTIN_<n>`` for one the schema does not know)."""
    return BUILTIN_NAMES.get(builtin, f"BUILTIN_{builtin}")


def builtin_code(code) -> int:
    """The builtin operator of ``code``, an ``OperatorCodeT``: the larger of its two builtin fields
    (codes above 127 live in ``builtinCode`` only)."""
    return max(code.builtinCode, code.deprecatedBuiltinCode)


def opcode_name(code) -> str:
    """The builtin name of ``code``, an ``OperatorCodeT``."""
    return builtin_name(builtin_code(code))


def read_model(content: bytes):
    """``content`` as the schema's ``ModelT``; buffers and custom options stored past the 2 GB
    flatbuffer limit (at an offset) read into place, as ``flatbuffer_utils.read_model_from_bytearray``
    does (on a little-endian host, as every LiteRT wheel is)."""
    content = bytearray(content)
    model = schema.ModelT.InitFromObj(schema.Model.GetRootAs(content, 0))
    for buffer in model.buffers or []:
        if buffer.offset:
            buffer.data = content[buffer.offset : buffer.offset + buffer.size]
            buffer.offset = buffer.size = 0
    for graph in model.subgraphs or []:
        for op in graph.operators or []:
            if op.largeCustomOptionsOffset:
                start = op.largeCustomOptionsOffset
                op.customOptions = content[start : start + op.largeCustomOptionsSize]
                op.largeCustomOptionsOffset = op.largeCustomOptionsSize = 0
    return model


def write_model(model) -> bytes:
    """``model`` (a ``ModelT``) serialized, as ``flatbuffer_utils.convert_object_to_bytearray`` does."""
    import flatbuffers

    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=FILE_IDENTIFIER)
    return bytes(builder.Output())


class TFLiteGraph:
    """The first subgraph of a flatbuffer model, with producer/reader maps."""

    def __init__(self, model):
        self.model, self.graph = model, model.subgraphs[0]
        self.tensor_types = TENSOR_TYPES
        self.ends = {int(t) for t in self.graph.inputs} | {int(t) for t in self.graph.outputs}
        self.reindex()

    @classmethod
    def read(cls, content: bytes) -> TFLiteGraph | None:
        """The graph of ``content``, or None for a file of several subgraphs (left as it is)."""
        model = read_model(content)
        return cls(model) if len(model.subgraphs) == 1 else None

    def write(self) -> bytes:
        return write_model(self.model)

    def reindex(self) -> None:
        self.producer = {int(t): op for op in self.graph.operators for t in op.outputs}
        self.readers: dict[int, list] = {}
        for op in self.graph.operators:
            for t in op.inputs:
                if t >= 0:
                    self.readers.setdefault(int(t), []).append(op)

    def name(self, op) -> str:
        return opcode_name(self.model.operatorCodes[op.opcodeIndex])

    def float_name(self, t: int) -> bytes:
        """The name tensor ``t`` has in the float file the int8 file was quantized from: the
        quantizer renames a model input it QUANTIZEs and a model output it DEQUANTIZEs."""
        producer = self.producer.get(t)
        if producer is not None and self.name(producer) == "QUANTIZE":
            return self.graph.tensors[int(producer.inputs[0])].name
        readers = self.readers.get(t, [])
        if len(readers) == 1 and self.name(readers[0]) == "DEQUANTIZE" and int(readers[0].outputs[0]) in self.ends:
            return self.graph.tensors[int(readers[0].outputs[0])].name
        return self.graph.tensors[t].name

    def shape(self, t: int) -> list[int]:
        return [int(d) for d in self.graph.tensors[t].shape]

    def constant(self, t: int) -> np.ndarray | None:
        """The int32 values of constant tensor ``t`` (a permutation, a shape), else None."""
        data = self.model.buffers[self.graph.tensors[t].buffer].data
        return None if data is None else np.frombuffer(bytes(data), np.int32)

    def params(self, t: int) -> tuple | None:
        q = self.graph.tensors[t].quantization
        if q is None or q.scale is None or len(q.scale) != 1:
            return None
        return float(q.scale[0]), int(q.zeroPoint[0])

    def is_int8(self, t: int) -> bool:
        return self.tensor_types[self.graph.tensors[t].type] == "INT8"

    def is_constant(self, t: int) -> bool:
        return self.model.buffers[self.graph.tensors[t].buffer].data is not None

    def add_int32_constant(self, values, name: bytes) -> int:
        """A new constant int32 tensor holding ``values``; its index."""
        values = np.asarray(values, np.int32)
        buffer = schema.BufferT()
        buffer.data = np.frombuffer(values.tobytes(), np.uint8)
        self.model.buffers.append(buffer)
        tensor = schema.TensorT()
        tensor.shape, tensor.type = np.array([values.size], np.int32), schema.TensorType.INT32
        tensor.buffer, tensor.name = len(self.model.buffers) - 1, name
        self.graph.tensors.append(tensor)
        return len(self.graph.tensors) - 1

    def operator(self, opcode_index: int, inputs, outputs):
        """A new operator (not yet placed in the graph) without options."""
        op = schema.OperatorT()
        op.opcodeIndex = opcode_index
        op.inputs, op.outputs = np.array(inputs, np.int32), np.array(outputs, np.int32)
        return op

    def opcode(self, builtin: int, version: int = 1) -> int:
        """The index of ``builtin``'s operator code, added (at ``version``) when the model has none."""
        for i, code in enumerate(self.model.operatorCodes):
            if builtin_code(code) == builtin and code.version >= version:
                return i
        code = schema.OperatorCodeT()
        code.builtinCode, code.deprecatedBuiltinCode, code.version = builtin, min(builtin, 127), version
        self.model.operatorCodes.append(code)
        return len(self.model.operatorCodes) - 1
