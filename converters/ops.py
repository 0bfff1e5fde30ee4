"""What is inside a .tflite: its operators, read from the flatbuffer, and which of them run in float.

``op_report`` lists every operator by name with its count, the non-builtin ones (custom and
Flex/SELECT_TF_OPS ops, which a phone's stock runtime lacks) and the compute operators that
read or write float32 tensors (QUANTIZE/DEQUANTIZE at the boundaries are counted apart). Of
those, an op whose every float input is a DEQUANTIZE of an int8 tensor and whose output only
QUANTIZEs read is a float island: an int8 op in all but its arithmetic (int8 in, int8 out, like
the int8 kernel it stands for), listed apart from the ops that keep float tensors or float
weights (a mixed-precision file's float convolutions).
``check_builtins_only`` turns any non-builtin op into an error.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from seg2tflite.converters.tflite_graph import TENSOR_TYPES, builtin_name, schema
from seg2tflite.errors import UserError

BOUNDARY_OPS = ("QUANTIZE", "DEQUANTIZE")


class OpsError(UserError):
    """A .tflite needs operators outside the TFLite builtins."""


@dataclass
class OpReport:
    counts: dict[str, int]  # operator name -> how many
    non_builtin: list[str] = field(default_factory=list)  # custom / Flex op names
    float_ops: list[str] = field(default_factory=list)  # "NAME -> output tensor" for compute ops on float32
    boundary_ops: int = 0  # QUANTIZE / DEQUANTIZE operators touching float32
    float_islands: dict[str, int] = field(default_factory=dict)  # op name -> how many int8 ops computed in float
    input_type: str = ""
    output_type: str = ""

    def to_dict(self) -> dict:
        return {
            "ops": dict(sorted(self.counts.items())),
            "non_builtin": self.non_builtin,
            "float_ops": self.float_ops,
            "float_boundary_ops": self.boundary_ops,
            "float_islands": self.float_islands,
            "input_type": self.input_type,
            "output_type": self.output_type,
        }


def _op_name(code) -> tuple[str, bool]:
    builtin = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
    if builtin == schema.BuiltinOperator.CUSTOM:
        custom = code.CustomCode()
        return (custom.decode() if isinstance(custom, bytes) else str(custom)), False
    return builtin_name(builtin), True


def op_report(model_content: bytes) -> OpReport:
    model = schema.Model.GetRootAs(model_content, 0)
    codes = [_op_name(model.OperatorCodes(i)) for i in range(model.OperatorCodesLength())]
    counts: Counter[str] = Counter()
    islands: Counter[str] = Counter()
    non_builtin: set[str] = set()
    float_ops: list[str] = []
    boundary = 0
    input_type = output_type = ""
    for s in range(model.SubgraphsLength()):
        graph = model.Subgraphs(s)
        tensor_type = lambda i: graph.Tensors(i).Type()  # noqa: E731
        if s == 0:
            input_type = ",".join(TENSOR_TYPES.get(tensor_type(graph.Inputs(i)), "?") for i in range(graph.InputsLength()))
            output_type = ",".join(TENSOR_TYPES.get(tensor_type(graph.Outputs(i)), "?") for i in range(graph.OutputsLength()))
        ops = [graph.Operators(j) for j in range(graph.OperatorsLength())]
        inputs = [[op.Inputs(k) for k in range(op.InputsLength())] for op in ops]
        outputs = [[op.Outputs(k) for k in range(op.OutputsLength())] for op in ops]
        names = [codes[op.OpcodeIndex()][0] for op in ops]
        producer = {t: j for j, outs in enumerate(outputs) for t in outs}
        readers: dict[int, list[str]] = {}
        for j, ins in enumerate(inputs):
            for t in ins:
                readers.setdefault(t, []).append(names[j])

        def island(j: int) -> bool:
            floats = [t for t in inputs[j] if t >= 0 and tensor_type(t) == schema.TensorType.FLOAT32]
            return (
                len(outputs[j]) == 1
                and bool(floats)
                and all(t in producer and names[producer[t]] == "DEQUANTIZE" for t in floats)
                and all(tensor_type(inputs[producer[t]][0]) == schema.TensorType.INT8 for t in floats)
                and set(readers.get(outputs[j][0], [])) == {"QUANTIZE"}
            )

        for j, name in enumerate(names):
            counts[name] += 1
            if not codes[ops[j].OpcodeIndex()][1] or name.startswith("Flex"):
                non_builtin.add(name)
            if any(t >= 0 and tensor_type(t) == schema.TensorType.FLOAT32 for t in inputs[j] + outputs[j]):
                if name in BOUNDARY_OPS:
                    boundary += 1
                elif island(j):
                    islands[name] += 1
                else:
                    out = graph.Tensors(outputs[j][0]).Name() if outputs[j] else b""
                    float_ops.append(f"{name} -> {out.decode(errors='replace') if isinstance(out, bytes) else out}")
    return OpReport(
        dict(counts),
        sorted(non_builtin),
        float_ops,
        boundary,
        float_islands=dict(sorted(islands.items())),
        input_type=input_type,
        output_type=output_type,
    )


def check_builtins_only(report: OpReport, artifact: str) -> None:
    if report.non_builtin:
        raise OpsError(
            f"{artifact}: needs non-builtin operators {', '.join(report.non_builtin)} "
            "(Flex/SELECT_TF_OPS or custom); rewrite those layers in the model's deploy form"
        )
