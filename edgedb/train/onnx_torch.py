"""A DBNet ONNX export as a PyTorch module, and its trained weights written back.

``OnnxModule(model)`` runs the export's own graph node by node with ``torch.nn.functional``
(the operators are ``edgedb.train.onnx_ops``), so a detector can be fine-tuned in PyTorch
without re-implementing its architecture; ``export_onnx(module, model)``
(``edgedb.train.onnx_export``) then writes the trained values into a copy of the same ONNX.
A graph with an operator outside ``SUPPORTED_OPS`` raises ``ModelError`` at construction,
naming every unsupported type.

What trains: float constants that are layer weights, whether the export stores them as
initializers (PyTorch exporters) or as ``Constant`` nodes (paddle2onnx, so every PP-OCR
detector):

- the weight and bias of Conv and ConvTranspose, the scale and bias of BatchNormalization;
- the operands of Add, Sub, Mul and Div that act on a tensor computed by one of those
  layers (the learnable scales and shifts of PP-LCNet's blocks, biases added after a
  Reshape), except rank-0 values, which is how exporters write literals such as the 3 and
  6 of a decomposed hard-swish. Constants applied to the input before any layer (fused
  preprocessing's mean and scale) stay fixed.

Reshape, Unsqueeze, Squeeze, Flatten, Transpose and Identity are followed, so a bias
reshaped before its Add trains too. Everything else (BatchNormalization's running
statistics, shapes, Resize scales, Clip bounds) is a constant; computations on constants
alone are folded once at construction.
"""

from __future__ import annotations

import logging
import re
from typing import Callable, Mapping, Optional, Sequence, Union

import numpy as np
import onnx
from onnx import numpy_helper

from edgedb.errors import InvalidInputError, MissingDependencyError, ModelError
from edgedb.train.onnx_export import export_onnx
from edgedb.train.onnx_fusions import _gelu_chains, _hard_swish_chains
from edgedb.train.onnx_ops import _BUILDERS, SUPPORTED_OPS, _attributes, _Node, _op_key

try:
    import torch
    import torch.nn.functional as F
    from torch import nn
except ImportError as error:  # edgedb.train is the only place torch is imported
    raise MissingDependencyError(
        "edgedb.train needs PyTorch, which is not installed: pip install 'dbnet-edge[train]', or pip install -e '.[train]' in a checkout"
    ) from error

__all__ = ["SUPPORTED_OPS", "OnnxModule", "check_supported", "export_onnx"]

log = logging.getLogger(__name__)

_FLOAT_DTYPES = (np.float16, np.float32, np.float64)

# Where a layer reads its trainable weights: input positions.
_WEIGHT_INPUTS = {"Conv": (1, 2), "ConvTranspose": (1, 2), "BatchNormalization": (1, 2),
                  "LayerNormalization": (1, 2), "MatMul": (1,), "Gemm": (1, 2), "PRelu": (1,)}
_AFFINE_OPS = ("Add", "Sub", "Mul", "Div")
# Ops a weight may pass through (as input 0) on its way to the layer that uses it.
_WEIGHT_PASSTHROUGH = ("Reshape", "Unsqueeze", "Squeeze", "Flatten", "Transpose", "Identity")


def check_supported(model: onnx.ModelProto, builders: Optional[Mapping[str, Callable]] = None) -> None:
    """Raises ModelError naming every operator of ``model`` OnnxModule cannot run: the
    check ``edgedb train`` and ``edgedb quantize --qat`` make before reading images,
    calibrating or correcting anything."""
    _check_supported(model.graph, {**_BUILDERS, **(builders or {})})


def _check_supported(graph: onnx.GraphProto, builders: Mapping[str, Callable]) -> None:
    unsupported = sorted({_op_key(n) for n in graph.node if _op_key(n) not in builders and n.op_type != "Constant"})
    if unsupported:
        raise ModelError(f"cannot run this model in PyTorch: unsupported operators {', '.join(unsupported)} "
                         f"(supported: {', '.join(sorted(set(builders) | {'Constant'}))})")


# --- reading the graph ---------------------------------------------------------------


def _default_opset(model: onnx.ModelProto) -> int:
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx"):
            return entry.version
    raise ModelError("the model imports no version of the default ONNX operator set")


def _constant_value(node: onnx.NodeProto) -> np.ndarray:
    attrs = _attributes(node)
    if "value" in attrs:
        return numpy_helper.to_array(attrs["value"])
    if "value_float" in attrs:
        return np.array(attrs["value_float"], np.float32)
    if "value_floats" in attrs:
        return np.array(attrs["value_floats"], np.float32)
    if "value_int" in attrs:
        return np.array(attrs["value_int"], np.int64)
    if "value_ints" in attrs:
        return np.array(attrs["value_ints"], np.int64)
    raise ModelError(f"Constant node {node.name!r}: only numeric values are supported, found {sorted(attrs)}")


def _as_tensor(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.array(array, copy=True))


_KEY_CHARS = re.compile(r"[^0-9A-Za-z_]")


def _unique_key(name: str, taken: set, reserved: object) -> str:
    """A module attribute name for an ONNX tensor name: no dots, no clash."""
    base = _KEY_CHARS.sub("_", name) or "tensor"
    key, index = base, 1
    while key in taken or hasattr(reserved, key):
        key, index = f"{base}_{index}", index + 1
    taken.add(key)
    return key


def _trainable_names(graph: onnx.GraphProto, constants: Mapping[str, np.ndarray]) -> list:
    """Float constants that are weights (see the module docstring), in graph order."""
    consumers: dict = {}
    for node in graph.node:
        for index, name in enumerate(node.input):
            consumers.setdefault(name, []).append((node, index))
    after_layers = set()  # tensors computed from some Conv, ConvTranspose or BatchNormalization
    for node in graph.node:
        if node.op_type in _WEIGHT_INPUTS or any(i in after_layers for i in node.input):
            after_layers.update(node.output)

    def is_weight(name: str, rank: int, depth: int = 0) -> bool:
        for node, index in consumers.get(name, ()):
            if index in _WEIGHT_INPUTS.get(node.op_type, ()):
                return True
            if node.op_type in _AFFINE_OPS and rank > 0 and len(node.input) == 2:
                if node.input[1 - index] in after_layers:
                    return True
            if node.op_type in _WEIGHT_PASSTHROUGH and index == 0 and depth < 8:
                if is_weight(node.output[0], rank, depth + 1):
                    return True
        return False

    return [name for name, value in constants.items()
            if value.dtype.type in _FLOAT_DTYPES and value.size and is_weight(name, value.ndim)]


# --- the steps a call runs ------------------------------------------------------------


class _Step:
    """One node to run: fn(*inputs) -> output, then forget the tensors in ``free``."""

    __slots__ = ("fn", "inputs", "output", "free")

    def __init__(self, fn: Callable, inputs: tuple, output: str):
        self.fn, self.inputs, self.output, self.free = fn, inputs, output, ()


def _compile(graph: onnx.GraphProto, opset: int, inputs: Sequence[str], constants: dict, shapes: Mapping,
             weights: set, builders: Mapping[str, Callable]) -> list:
    """The steps that remain to run on each call. Nodes reading only fixed constants are
    evaluated now, their outputs added to ``constants``; hard-swish and GELU chains become one step."""
    available = set(inputs) | set(constants) | weights
    hard_swishes, replaced = _hard_swish_chains(graph, opset, constants)
    gelus, gelu_parts = _gelu_chains(graph, constants)
    fused = {**{p: (F.hardswish, x) for p, x in hard_swishes.items()}, **{p: (F.gelu, x) for p, x in gelus.items()}}
    replaced = replaced | gelu_parts
    steps = []
    with torch.no_grad():
        for position, node in enumerate(graph.node):
            if node.op_type == "Constant" or position in replaced:
                continue
            reads = [fused[position][1]] if position in fused else node.input
            missing = [i for i in reads if i and i not in available]
            if missing:
                raise ModelError(f"{node.op_type} node {node.name!r} reads {missing}, which no earlier node "
                                 "produces: the graph is not topologically sorted or is incomplete")
            extra = [o for o in node.output[1:] if o]
            if extra:
                raise ModelError(f"{node.op_type} node {node.name!r}: only the first output is supported, "
                                 f"but the graph names {extra}")
            available.add(node.output[0])
            if position in fused:
                fn, x = fused[position]
                steps.append(_Step(fn, (x,), node.output[0]))
                continue
            fn = builders[_op_key(node)](_Node(node, opset, constants, shapes))
            if all(i in constants for i in node.input if i):  # constant folding
                constants[node.output[0]] = fn(*[constants[i] if i else None for i in node.input])
            else:
                steps.append(_Step(fn, tuple(node.input), node.output[0]))
    return steps


def _schedule_frees(steps: Sequence[_Step], kept: set) -> None:
    """Sets each step's ``free``: the intermediate tensors no later step reads, so a call
    without autograd holds only the live ones."""
    last_use = {}
    for position, step in enumerate(steps):
        for name in step.inputs:
            if name:
                last_use[name] = position
        last_use.setdefault(step.output, position)
    frees: dict = {}
    for name, position in last_use.items():
        if name not in kept:
            frees.setdefault(position, []).append(name)
    for position, step in enumerate(steps):
        step.free = tuple(frees.get(position, ()))


# --- the module ------------------------------------------------------------------------


class OnnxModule(nn.Module):
    """An ONNX graph run by PyTorch, with its weights as trainable parameters.

    ``weights`` (a ParameterDict) holds the weights, under keys made from their ONNX names
    (``onnx_names`` maps each key back); constants the graph still needs at run time are
    non-persistent buffers of ``constants``, so ``state_dict()`` is exactly the weights.

    BatchNormalization always runs in inference mode, with the export's running mean and
    variance fixed; only its scale and bias train. That is the usual choice when
    fine-tuning with small batches, whose statistics are too noisy to replace the ones the
    model was trained with, and it keeps ``train()`` and ``eval()`` computing the same function.

    ``builders`` adds or replaces operators ({op type, or "domain::op type": builder}, a
    builder as in ``edgedb.train.onnx_ops``: ``_Node -> fn(*inputs)``), and ``trainable``
    names more constants to train; quantization-aware training (``edgedb.train.qat``) uses both.

    Raises:
        ModelError: the graph uses an unsupported operator (all of them are named) or an
            unsupported attribute value, or is not topologically sorted.
    """

    def __init__(self, model: onnx.ModelProto, *, builders: Optional[Mapping[str, Callable]] = None,
                 trainable: Sequence[str] = ()):
        super().__init__()
        graph = model.graph
        builders = {**_BUILDERS, **(builders or {})}
        _check_supported(graph, builders)
        opset = _default_opset(model)

        values = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
        for node in graph.node:
            if node.op_type == "Constant":
                values[node.output[0]] = _constant_value(node)
        trainable = _trainable_names(graph, values) + [name for name in trainable if name in values]
        trainable = list(dict.fromkeys(trainable))
        weight_names = set(trainable)

        self.weights = nn.ParameterDict()
        self.onnx_names: dict = {}
        keys: set = set()
        for name in trainable:
            key = _unique_key(name, keys, self.weights)
            self.weights[key] = nn.Parameter(_as_tensor(values[name]))
            self.onnx_names[key] = name
        constants = {name: _as_tensor(v) for name, v in values.items() if name not in weight_names}
        shapes = {name: tuple(v.shape) for name, v in values.items()}

        self.input_names = [i.name for i in graph.input if i.name not in values]
        self.output_names = [o.name for o in graph.output]
        self._steps = _compile(graph, opset, self.input_names, constants, shapes, weight_names, builders)

        # Constants read at run time become buffers; the rest were used up by folding.
        needed = {i for step in self._steps for i in step.inputs if i in constants}
        needed |= {o for o in self.output_names if o in constants}
        self.constants = nn.Module()
        self._constant_keys: dict = {}
        keys = set()
        for name in sorted(needed):
            key = _unique_key(name, keys, self.constants)
            self.constants.register_buffer(key, constants[name], persistent=False)
            self._constant_keys[key] = name

        _schedule_frees(self._steps, needed | weight_names | set(self.output_names))
        self._computed = {s.output for s in self._steps} | set(self.input_names) | needed
        log.info("OnnxModule runs %d of the graph's %d nodes (the others are constants, folded or fused); "
                 "%d weight tensors, %d values", len(self._steps), len(graph.node), len(trainable),
                 sum(p.numel() for p in self.weights.values()))

    def forward(self, x: Union[torch.Tensor, Mapping[str, torch.Tensor]],
                outputs: Optional[Sequence[str]] = None) -> dict:
        """Runs the graph on ``x`` (a float32 NCHW tensor, or a dict of tensors by input
        name) and returns {name: tensor} for the graph's outputs plus each name in
        ``outputs``, an intermediate tensor of the graph (for example the features a head
        reads). Tensors inside a fused hard-swish (x + 3, its Clip, the product) or GELU and
        tensors computed from constants alone are not available.

        Raises:
            InvalidInputError: a name in ``outputs`` is not a tensor of the graph, or x does
                not match the graph's inputs.
        """
        if isinstance(x, Mapping):
            env = dict(x)
            if set(env) != set(self.input_names):
                raise InvalidInputError(f"the graph's inputs are {self.input_names}, got {sorted(env)}")
        else:
            if len(self.input_names) != 1:
                raise InvalidInputError(f"the graph has inputs {self.input_names}: pass a dict of tensors")
            env = {self.input_names[0]: x}
        wanted = list(self.output_names)
        for name in outputs or ():
            if name not in self._computed:
                raise InvalidInputError(f"no tensor {name!r} in the graph (or it depends only on constants)")
            if name not in wanted:
                wanted.append(name)
        keep = set(wanted)
        for key, name in self.onnx_names.items():
            env[name] = self.weights[key]
        for key, name in self._constant_keys.items():
            env[name] = getattr(self.constants, key)

        for step in self._steps:
            env[step.output] = step.fn(*[env[i] if i else None for i in step.inputs])
            for name in step.free:
                if name not in keep:
                    del env[name]
        return {name: env[name] for name in wanted}
