"""A converted .tflite file's graph, to rewrite: TensorFlow's flatbuffer object API with who writes
and who reads each tensor, and the small edits the rewrites share (add a constant, an op code)."""

from __future__ import annotations

import numpy as np


class TFLiteGraph:
    """The first subgraph of a flatbuffer model, with producer/reader maps."""

    def __init__(self, model):
        from seg2tflite.converters.ops import BUILTIN_NAMES, TENSOR_TYPES

        self.model, self.graph = model, model.subgraphs[0]
        self.op_names, self.tensor_types = BUILTIN_NAMES, TENSOR_TYPES
        self.ends = {int(t) for t in self.graph.inputs} | {int(t) for t in self.graph.outputs}
        self.reindex()

    @classmethod
    def read(cls, content: bytes) -> TFLiteGraph | None:
        """The graph of ``content``, or None for a file of several subgraphs (left as it is)."""
        from tensorflow.lite.tools import flatbuffer_utils

        model = flatbuffer_utils.read_model_from_bytearray(bytearray(content))
        return cls(model) if len(model.subgraphs) == 1 else None

    def write(self) -> bytes:
        from tensorflow.lite.tools import flatbuffer_utils

        return bytes(flatbuffer_utils.convert_object_to_bytearray(self.model))

    def reindex(self) -> None:
        self.producer = {int(t): op for op in self.graph.operators for t in op.outputs}
        self.readers: dict[int, list] = {}
        for op in self.graph.operators:
            for t in op.inputs:
                if t >= 0:
                    self.readers.setdefault(int(t), []).append(op)

    def name(self, op) -> str:
        code = self.model.operatorCodes[op.opcodeIndex]
        return self.op_names[max(code.builtinCode, code.deprecatedBuiltinCode)]

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
        from tensorflow.lite.python import schema_py_generated as fb

        values = np.asarray(values, np.int32)
        buffer = fb.BufferT()
        buffer.data = np.frombuffer(values.tobytes(), np.uint8)
        self.model.buffers.append(buffer)
        tensor = fb.TensorT()
        tensor.shape, tensor.type = np.array([values.size], np.int32), fb.TensorType.INT32
        tensor.buffer, tensor.name = len(self.model.buffers) - 1, name
        self.graph.tensors.append(tensor)
        return len(self.graph.tensors) - 1

    def operator(self, opcode_index: int, inputs, outputs):
        """A new operator (not yet placed in the graph) without options."""
        from tensorflow.lite.python import schema_py_generated as fb

        op = fb.OperatorT()
        op.opcodeIndex = opcode_index
        op.inputs, op.outputs = np.array(inputs, np.int32), np.array(outputs, np.int32)
        return op

    def opcode(self, builtin: int, version: int = 1) -> int:
        """The index of ``builtin``'s operator code, added (at ``version``) when the model has none."""
        from tensorflow.lite.python import schema_py_generated as fb

        for i, code in enumerate(self.model.operatorCodes):
            if max(code.builtinCode, code.deprecatedBuiltinCode) == builtin and code.version >= version:
                return i
        code = fb.OperatorCodeT()
        code.builtinCode, code.deprecatedBuiltinCode, code.version = builtin, min(builtin, 127), version
        self.model.operatorCodes.append(code)
        return len(self.model.operatorCodes) - 1
