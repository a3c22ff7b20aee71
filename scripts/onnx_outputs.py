"""Choosing which tensor of an ONNX model is its output, so that ORT and dconv are compared on
the same one: the logits (the input of the final Softmax) say far more than probabilities
that have saturated to 0 and 1."""
import onnx
from onnx import TensorProto, helper


def final_softmax(model: onnx.ModelProto) -> onnx.NodeProto:
    """The Softmax that writes a graph output, else the last Softmax (nodes are topological)."""
    softmaxes = [n for n in model.graph.node if n.op_type == "Softmax"]
    if not softmaxes:
        raise ValueError("the model has no Softmax node, so no logits to expose")
    outputs = {o.name for o in model.graph.output}
    writing_output = [n for n in softmaxes if n.output[0] in outputs]
    return (writing_output or softmaxes)[-1]


def with_logits(model: onnx.ModelProto, name: str = "logits", only: bool = False) -> onnx.ModelProto:
    """A copy whose outputs include `name`, an Identity of the final Softmax's input (the
    original outputs are kept after it unless `only`). A model that already has `name` as an
    output is returned as it is (or reduced to it, when `only`)."""
    if any(o.name == name for o in model.graph.output):
        return with_only_output(model, name) if only else model
    edited = onnx.ModelProto()
    edited.CopyFrom(model)
    softmax = final_softmax(edited)
    edited.graph.node.append(helper.make_node("Identity", [softmax.input[0]], [name], name=f"{name}_output"))
    edited.graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, None))
    return with_only_output(edited, name) if only else edited


def with_only_output(model: onnx.ModelProto, name: str) -> onnx.ModelProto:
    """A copy whose single output is `name`: a graph output, or any tensor a node writes."""
    edited = onnx.ModelProto()
    edited.CopyFrom(model)
    existing = [o for o in edited.graph.output if o.name == name]
    if existing:
        output = onnx.ValueInfoProto()
        output.CopyFrom(existing[0])
    elif any(name in n.output for n in edited.graph.node):
        output = helper.make_tensor_value_info(name, TensorProto.FLOAT, None)
    else:
        raise ValueError(f"no tensor named '{name}' in the model; outputs are "
                         f"{[o.name for o in model.graph.output]}")
    del edited.graph.output[:]
    edited.graph.output.append(output)
    return edited
