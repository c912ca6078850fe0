"""An ``OnnxModule``'s trained weights written back into a copy of the ONNX it was built
from, which keeps the base model's interface, node names and structure."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import onnx
from onnx import numpy_helper

from edgedb.errors import ModelError

if TYPE_CHECKING:  # nn.Module, not OnnxModule: onnx_torch re-exports export_onnx, so no import back
    from torch import nn


def export_onnx(module: nn.Module, model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` with each weight of ``module`` (an OnnxModule built from it)
    written back into the initializer or Constant node it came from (same name, shape and
    dtype): the result has exactly ``model``'s interface and structure.

    Raises:
        ModelError: the module was not built from this model (a weight's tensor is missing
            or has another shape).
    """
    exported = onnx.ModelProto()
    exported.CopyFrom(model)
    initializers = {t.name: t for t in exported.graph.initializer}
    constant_nodes = {n.output[0]: n for n in exported.graph.node if n.op_type == "Constant"}
    for key, name in module.onnx_names.items():
        value = module.weights[key].detach().cpu().numpy()
        if name in initializers:
            tensor = initializers[name]
            original = numpy_helper.to_array(tensor)
            _check_same_shape(name, original, value)
            tensor.CopyFrom(numpy_helper.from_array(value.astype(original.dtype), name))
        elif name in constant_nodes:
            attribute = constant_nodes[name].attribute[0]
            if attribute.name == "value":
                original = numpy_helper.to_array(attribute.t)
                _check_same_shape(name, original, value)
                attribute.t.CopyFrom(numpy_helper.from_array(value.astype(original.dtype), attribute.t.name))
            elif attribute.name == "value_float":
                _check_same_shape(name, np.zeros(()), value)
                attribute.f = float(value)
            else:  # value_floats
                _check_same_shape(name, np.zeros(len(attribute.floats)), value)
                del attribute.floats[:]
                attribute.floats.extend(value.astype(np.float32).tolist())
        else:
            raise ModelError(f"the model has no initializer or Constant named {name!r}: "
                             "export into the model the module was built from")
    return exported


def _check_same_shape(name: str, original: np.ndarray, value: np.ndarray) -> None:
    if tuple(original.shape) != tuple(value.shape):
        raise ModelError(f"weight {name!r} has shape {tuple(value.shape)} but the model's tensor has "
                         f"{tuple(original.shape)}: export into the model the module was built from")
