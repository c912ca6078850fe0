"""ONNX operators as torch functions: one builder per op type, the table ``OnnxModule``
runs a graph with. Only the operators DBNet exports are made of are here (``SUPPORTED_OPS``).
"""

from __future__ import annotations

import math
from typing import Callable, Mapping, Optional, Sequence

import numpy as np
import onnx
from onnx import helper

from edgedb.errors import MissingDependencyError, ModelError

try:
    import torch
    import torch.nn.functional as F
except ImportError as error:  # edgedb.train is the only place torch is imported
    raise MissingDependencyError(
        "edgedb.train needs PyTorch, which is not installed: pip install 'dbnet-edge[train]', or pip install -e '.[train]' in a checkout"
    ) from error

_TORCH_DTYPES = {
    onnx.TensorProto.FLOAT: torch.float32,
    onnx.TensorProto.DOUBLE: torch.float64,
    onnx.TensorProto.FLOAT16: torch.float16,
    onnx.TensorProto.BFLOAT16: torch.bfloat16,
    onnx.TensorProto.INT8: torch.int8,
    onnx.TensorProto.UINT8: torch.uint8,
    onnx.TensorProto.INT16: torch.int16,
    onnx.TensorProto.INT32: torch.int32,
    onnx.TensorProto.INT64: torch.int64,
    onnx.TensorProto.BOOL: torch.bool,
}


# --- small helpers -------------------------------------------------------------------


def _attributes(node: onnx.NodeProto) -> dict:
    attrs = {}
    for attribute in node.attribute:
        value = helper.get_attribute_value(attribute)
        if isinstance(value, bytes):
            value = value.decode()
        elif isinstance(value, list) and value and isinstance(value[0], bytes):
            value = [v.decode() for v in value]
        attrs[attribute.name] = value
    return attrs


def _torch_pads(begins: Sequence[int], ends: Sequence[int]) -> list:
    """ONNX per-axis (begin, end) pads -> F.pad's order, which starts at the last axis."""
    return [p for begin, end in reversed(list(zip(begins, ends))) for p in (begin, end)]


def _same_pads(sizes, kernel, strides, dilations, upper: bool) -> tuple[list, list]:
    """auto_pad SAME_UPPER / SAME_LOWER: out = ceil(in / stride); the odd pixel goes at the
    end (upper) or the beginning (lower)."""
    begins, ends = [], []
    for size, k, s, d in zip(sizes, kernel, strides, dilations):
        out = -(-size // s)
        total = max(0, (out - 1) * s + (k - 1) * d + 1 - size)
        small = total // 2
        begins.append(small if upper else total - small)
        ends.append(total - small if upper else small)
    return begins, ends


class _Node:
    """What an operator builder knows about its node at construction: attributes, opset,
    the constant inputs' values (trainable ones excepted) and the shapes of all constants."""

    def __init__(self, node: onnx.NodeProto, opset: int, constants: Mapping, shapes: Mapping):
        self.proto, self.opset = node, opset
        self.attrs = _attributes(node)
        self._constants, self._shapes = constants, shapes

    def attr(self, name: str, default=None):
        return self.attrs.get(name, default)

    def has(self, index: int) -> bool:
        return index < len(self.proto.input) and self.proto.input[index] != ""

    def static(self, index: int) -> Optional[torch.Tensor]:
        """The input's value if it is a fixed constant, else None."""
        return self._constants.get(self.proto.input[index]) if self.has(index) else None

    def static_list(self, index: int) -> Optional[list]:
        value = self.static(index)
        return None if value is None else value.reshape(-1).tolist()

    def shape(self, index: int) -> Optional[tuple]:
        return self._shapes.get(self.proto.input[index]) if self.has(index) else None

    def error(self, why: str) -> ModelError:
        return ModelError(f"{self.proto.op_type} node {self.proto.name!r}: {why}")


def _listed(value: Optional[torch.Tensor], fixed: Optional[list]) -> Optional[list]:
    """A fixed list known at construction, else the run-time tensor's values."""
    if fixed is not None:
        return fixed
    return None if value is None else value.reshape(-1).tolist()


# --- operators -------------------------------------------------------------------------
# Each builder takes a _Node and returns fn(*inputs) -> Tensor, where inputs are the
# node's inputs in order (None for an omitted optional one). Builders check attributes
# and read what is fixed once, so the function does no parsing per call.


def _plain(fn: Callable) -> Callable:
    """A builder for an op with no attributes: the torch function itself."""
    return lambda n: fn


def _div(a, b):
    if a.is_floating_point():
        return torch.div(a, b)
    return torch.div(a, b, rounding_mode="trunc")  # ONNX integer division truncates


def _pow(n):
    return lambda a, b: torch.pow(a, b).to(a.dtype)  # ONNX: the result has the base's type


def _identity(n):
    return lambda x: x


def _leaky_relu(n):
    alpha = n.attr("alpha", 0.01)
    return lambda x: F.leaky_relu(x, alpha)


def _clamp(x, low, high):
    """torch.clamp, through hardtanh when both bounds are numbers: its backward is one
    kernel where clamp's is four (about half the time of fine-tuning's clamps)."""
    if isinstance(low, (int, float)) and isinstance(high, (int, float)) and x.is_floating_point():
        return F.hardtanh(x, low, high)
    return torch.clamp(x, low, high)


def _hard_sigmoid(n):
    alpha, beta = n.attr("alpha", 0.2), n.attr("beta", 0.5)
    return lambda x: F.hardtanh(x * alpha + beta, 0.0, 1.0)


def _hard_swish(n):
    return F.hardswish  # x * relu6(x + 3) / 6: ONNX's HardSigmoid(alpha=1/6, beta=0.5) times x


def _clip(n):
    if n.opset < 11:  # bounds were attributes until opset 11
        low, high = n.attr("min"), n.attr("max")
        return (lambda x: x) if low is None and high is None else (lambda x: _clamp(x, low, high))
    bounds = [n.static(i) for i in (1, 2)]  # None when omitted or computed at run time
    if all(b is not None or not n.has(i) for i, b in zip((1, 2), bounds)):
        low, high = (None if b is None else b.item() for b in bounds)
        if low is None and high is None:
            return lambda x, *unused: x
        return lambda x, *unused: _clamp(x, low, high)
    return lambda x, low=None, high=None: _clamp(x, low, high)


def _batch_normalization(n):
    if n.attr("spatial", 1) != 1:
        raise n.error("spatial=0 (per-activation statistics) is not supported")
    if n.attr("training_mode", 0):
        raise n.error("training_mode=1: export the model in inference mode")
    epsilon = n.attr("epsilon", 1e-5)

    def batch_norm(x, scale, bias, mean, var):
        return F.batch_norm(x, mean, var, scale, bias, False, 0.0, epsilon)

    return batch_norm


def _concat(n):
    axis = n.attr("axis")
    return lambda *xs: torch.cat([x for x in xs if x is not None], dim=axis)


def _rank(n, weighted: bool) -> int:
    """The number of spatial axes of a convolution or pooling node, from its attributes
    or its weight's shape."""
    for name in ("kernel_shape", "strides", "dilations"):
        if n.attr(name):
            return len(n.attr(name))
    weight = n.shape(1) if weighted else None
    if weight is not None:
        return len(weight) - 2
    if n.attr("pads"):
        return len(n.attr("pads")) // 2
    raise n.error("cannot tell the number of spatial axes (no kernel_shape and no constant weight)")


_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
_CONV_TRANSPOSE = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}
_MAX_POOL = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}
_AVG_POOL = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}


def _window(n, weighted: bool):
    """(rank, strides, dilations, pads, auto_pad) of a Conv, ConvTranspose or pool node."""
    rank = _rank(n, weighted)
    if rank not in _CONV:
        raise n.error(f"{rank} spatial axes; 1, 2 or 3 are supported")
    strides = list(n.attr("strides") or [1] * rank)
    dilations = list(n.attr("dilations") or [1] * rank)
    pads = list(n.attr("pads") or [0] * (2 * rank))
    auto_pad = n.attr("auto_pad", "NOTSET")
    if auto_pad not in ("NOTSET", "VALID", "SAME_UPPER", "SAME_LOWER"):
        raise n.error(f"unknown auto_pad {auto_pad!r}")
    if auto_pad == "VALID":
        pads = [0] * (2 * rank)
    return rank, strides, dilations, pads, auto_pad


def _conv(n):
    rank, strides, dilations, pads, auto_pad = _window(n, weighted=True)
    conv, group = _CONV[rank], n.attr("group", 1)
    begins, ends = pads[:rank], pads[rank:]
    if auto_pad.startswith("SAME"):
        upper = auto_pad == "SAME_UPPER"

        def conv_same(x, w, b=None):
            same = _same_pads(x.shape[2:], w.shape[2:], strides, dilations, upper)
            return conv(F.pad(x, _torch_pads(*same)), w, b, strides, 0, dilations, group)

        return conv_same
    if begins == ends:
        return lambda x, w, b=None: conv(x, w, b, strides, begins, dilations, group)
    explicit = _torch_pads(begins, ends)
    return lambda x, w, b=None: conv(F.pad(x, explicit), w, b, strides, 0, dilations, group)


def _conv_transpose(n):
    rank, strides, dilations, pads, auto_pad = _window(n, weighted=True)
    conv, group = _CONV_TRANSPOSE[rank], n.attr("group", 1)
    output_padding = list(n.attr("output_padding") or [0] * rank)
    output_shape = n.attr("output_shape")
    begins, ends = pads[:rank], pads[rank:]
    native = (output_shape is None and not auto_pad.startswith("SAME") and begins == ends
              and all(p < max(s, d) for p, s, d in zip(output_padding, strides, dilations)))
    if native:
        return lambda x, w, b=None: conv(x, w, b, strides, begins, output_padding, group, dilations)

    def crop(x, w) -> list:
        """Per-axis pads to remove from the full transposed convolution (negative: add)."""
        if output_shape is None and not auto_pad.startswith("SAME"):
            return _torch_pads([-p for p in begins], [op - p for op, p in zip(output_padding, ends)])
        sizes = x.shape[2:]
        targets = output_shape[-rank:] if output_shape else [size * s for size, s in zip(sizes, strides)]
        cut_begin, cut_end = [], []
        for size, k, s, d, op, target in zip(sizes, w.shape[2:], strides, dilations, output_padding, targets):
            total = (size - 1) * s + op + (k - 1) * d + 1 - target
            # The ONNX spec, as ONNX Runtime follows it: SAME_UPPER crops total // 2 at the
            # beginning, SAME_LOWER and an explicit output_shape the other half.
            head = total // 2 if auto_pad == "SAME_UPPER" else total - total // 2
            cut_begin.append(head)
            cut_end.append(total - head)
        return _torch_pads([-c for c in cut_begin], [op - c for op, c in zip(output_padding, cut_end)])

    def conv_transpose(x, w, b=None):
        y = F.pad(conv(x, w, None, strides, 0, 0, group, dilations), crop(x, w))
        return y if b is None else y + b.view(1, -1, *([1] * rank))

    return conv_transpose


def _pool(kind: str):
    def build(n):
        rank, strides, dilations, pads, auto_pad = _window(n, weighted=False)
        kernel = list(n.attr("kernel_shape") or [])
        if len(kernel) != rank:
            raise n.error("kernel_shape is required")
        ceil_mode = bool(n.attr("ceil_mode", 0))
        begins, ends = pads[:rank], pads[rank:]
        if kind == "max":
            pool, fill = _MAX_POOL[rank], float("-inf")
            if n.attr("storage_order", 0):
                raise n.error("storage_order=1 is not supported")

            def run(x, padding):
                return pool(x, kernel, strides, padding, dilations, ceil_mode)
        else:
            if any(d != 1 for d in dilations):
                raise n.error("AveragePool with dilations is not supported")
            pool, fill = _AVG_POOL[rank], 0.0
            include = bool(n.attr("count_include_pad", 0))

            def run(x, padding):
                return pool(x, kernel, strides, padding, ceil_mode, include)

        effective = [(k - 1) * d + 1 for k, d in zip(kernel, dilations)]
        torch_padding_ok = begins == ends and all(2 * p <= e for p, e in zip(begins, effective))
        if not auto_pad.startswith("SAME") and torch_padding_ok:
            return lambda x: run(x, begins)

        def explicit(x):
            if auto_pad.startswith("SAME"):
                pad_begin, pad_end = _same_pads(x.shape[2:], kernel, strides, dilations, auto_pad == "SAME_UPPER")
            else:
                pad_begin, pad_end = begins, ends
            torch_pads = _torch_pads(pad_begin, pad_end)
            y = run(F.pad(x, torch_pads, value=fill), [0] * rank)
            if kind == "avg" and not include and any(torch_pads):  # divide by the real pixels only
                ones = F.pad(torch.ones_like(x[:1, :1]), torch_pads)
                y = y / run(ones, [0] * rank)
            return y

        return explicit

    return build


def _global_average_pool(n):
    return lambda x: x.mean(dim=tuple(range(2, x.dim())), keepdim=True)


_RESIZE_COORDINATES = ("half_pixel", "pytorch_half_pixel", "align_corners", "asymmetric", "tf_half_pixel_for_nn",
                       "half_pixel_symmetric")
_NEAREST_MODES = ("round_prefer_floor", "round_prefer_ceil", "floor", "ceil")


def _source_coordinates(out: int, size: int, scale: float, mode: str, device) -> torch.Tensor:
    """Where each output pixel samples the input along one axis, computed in float32 as
    ONNX Runtime does (so nearest neighbours tie-break the same way)."""
    x = torch.arange(out, dtype=torch.float32, device=device)
    if mode == "asymmetric":
        return x / scale
    if mode == "half_pixel" or (mode == "pytorch_half_pixel" and out > 1):
        return (x + 0.5) / scale - 0.5
    if mode == "pytorch_half_pixel":
        return torch.zeros_like(x)
    if mode == "tf_half_pixel_for_nn":
        return (x + 0.5) / scale
    if mode == "align_corners":
        return torch.zeros_like(x) if out == 1 else x * float(size - 1) / float(out - 1)
    # half_pixel_symmetric (opset 19): half_pixel, centred when the output is truncated.
    adjustment = np.float32(out) / (np.float32(scale) * np.float32(size))
    offset = np.float32(size) / np.float32(2) * (np.float32(1) - adjustment)
    return offset + (x + 0.5) / scale - 0.5


def _nearest_indices(coordinates: torch.Tensor, size: int, mode: str, scale: float) -> torch.Tensor:
    if mode == "round_prefer_floor":
        index = torch.ceil(coordinates - 0.5)
    elif mode == "round_prefer_ceil":
        index = torch.floor(coordinates + 0.5)
    elif mode == "floor":
        index = torch.floor(coordinates)
    elif mode == "ceil":
        index = torch.ceil(coordinates)
    else:  # "simple", Resize-10's rounding in ONNX Runtime
        index = torch.ceil(coordinates) if scale < 1 else torch.trunc(coordinates)
    return index.clamp(0, size - 1).long()


def _resize(n):
    mode = n.attr("mode", "nearest")
    mode = "linear" if mode == "bilinear" else mode
    if mode not in ("nearest", "linear"):
        raise n.error(f"mode {mode!r} is not supported (nearest and linear are)")
    if n.opset < 11:  # Resize-10: (X, scales), asymmetric coordinates
        coordinates, nearest_mode, scales_at, sizes_at = "asymmetric", "simple", 1, None
    else:
        coordinates = n.attr("coordinate_transformation_mode", "half_pixel")
        nearest_mode = n.attr("nearest_mode", "round_prefer_floor")
        scales_at, sizes_at = 2, 3
        if coordinates not in _RESIZE_COORDINATES:
            raise n.error(f"coordinate_transformation_mode {coordinates!r} is not supported")
        if nearest_mode not in _NEAREST_MODES:
            raise n.error(f"nearest_mode {nearest_mode!r} is not supported")
    if n.attr("antialias", 0):
        raise n.error("antialias=1 is not supported")
    if n.attr("axes") is not None:
        raise n.error("the axes attribute is not supported")
    if n.attr("keep_aspect_ratio_policy", "stretch") != "stretch":
        raise n.error("keep_aspect_ratio_policy other than stretch is not supported")
    fixed_scales = n.static_list(scales_at)
    fixed_sizes = n.static_list(sizes_at) if sizes_at is not None else None
    plans: dict = {}

    def plan(shape: tuple, scales: Optional[list], sizes: Optional[list], device) -> tuple:
        """(kind, details) for this input shape: axes to resize and how."""
        if sizes:
            outs = [int(s) for s in sizes]
            factors = [float(np.float32(o) / np.float32(i)) if i else 1.0 for o, i in zip(outs, shape)]
        elif scales:
            factors = [float(np.float32(s)) for s in scales]
            outs = [int(np.float32(s) * np.float32(i)) for s, i in zip(scales, shape)]
        else:
            raise n.error("neither scales nor sizes is given")
        if len(outs) != len(shape):
            raise n.error(f"{len(outs)} scales or sizes for a rank-{len(shape)} input")
        axes = [a for a, (o, i, f) in enumerate(zip(outs, shape, factors)) if o != i or f != 1.0]
        if mode == "nearest":
            indices = {a: _nearest_indices(_source_coordinates(outs[a], shape[a], factors[a], coordinates, device),
                                           shape[a], nearest_mode, factors[a]) for a in axes}
            indices = {a: i for a, i in indices.items()
                       if outs[a] != shape[a] or not torch.equal(i, torch.arange(shape[a], device=device))}
            repeats = {}
            for a, index in indices.items():
                k = outs[a] // shape[a] if shape[a] else 0
                pattern = torch.arange(outs[a], device=device) // max(k, 1)
                if k < 1 or k * shape[a] != outs[a] or not torch.equal(index, pattern):
                    return "gather", indices
                repeats[a] = k
            return "repeat", repeats
        weights = {}
        for a in axes:
            source = _source_coordinates(outs[a], shape[a], factors[a], coordinates, device).clamp(0, shape[a] - 1)
            low = source.floor().long()
            high = torch.clamp(low + 1, max=shape[a] - 1)
            weights[a] = (low, high, source - low)
        spatial = list(range(2, len(shape)))
        native = (
            coordinates in ("half_pixel", "pytorch_half_pixel", "align_corners") and 3 <= len(shape) <= 5
            and set(axes) <= set(spatial)
            and all(np.float32(outs[a] / shape[a]) == np.float32(factors[a]) for a in axes)
            and not (coordinates == "pytorch_half_pixel" and any(outs[a] == 1 for a in axes))
        )
        if native and axes:
            return "interpolate", [outs[a] for a in spatial]
        return "linear", weights

    def resize(x, *inputs):
        scales = inputs[scales_at - 1] if len(inputs) >= scales_at else None
        sizes = inputs[sizes_at - 1] if sizes_at is not None and len(inputs) >= sizes_at else None
        scales, sizes = _listed(scales, fixed_scales), _listed(sizes, fixed_sizes)
        key = (tuple(x.shape), x.device, tuple(scales or ()), tuple(sizes or ()))
        if key not in plans:
            if len(plans) >= 64:  # validation at many image sizes: keep the cache small
                plans.clear()
            plans[key] = plan(tuple(x.shape), scales, sizes, x.device)
        kind, details = plans[key]
        if kind == "repeat":
            view, expanded, final = [], [], []
            for a, size in enumerate(x.shape):
                k = details.get(a, 1)
                view += [size, 1] if k > 1 else [size]
                expanded += [size, k] if k > 1 else [size]
                final.append(size * k)
            return x.reshape(view).expand(expanded).reshape(final)
        if kind == "gather":
            for a, index in details.items():
                x = x.index_select(a, index)
            return x
        if kind == "interpolate":
            interpolation = {3: "linear", 4: "bilinear", 5: "trilinear"}[x.dim()]
            return F.interpolate(x, size=details, mode=interpolation, align_corners=coordinates == "align_corners")
        for a, (low, high, weight) in details.items():
            start = x.index_select(a, low)
            shape = [1] * x.dim()
            shape[a] = -1
            x = start + (x.index_select(a, high) - start) * weight.view(shape)
        return x

    return resize


def _reshape(n):
    allow_zero = n.attr("allowzero", 0)
    fixed = n.attr("shape") if n.opset < 5 else n.static_list(1)

    def reshape(x, shape=None):
        dims = _listed(shape, fixed)
        if not allow_zero:
            dims = [x.shape[i] if d == 0 else d for i, d in enumerate(dims)]
        return x.reshape(dims)

    return reshape


def _transpose(n):
    perm = n.attr("perm")
    return lambda x: x.permute(perm if perm is not None else list(reversed(range(x.dim()))))


def _depth_to_space(n):
    block, mode = n.attr("blocksize"), n.attr("mode", "DCR")
    if mode not in ("DCR", "CRD"):
        raise n.error(f"unknown mode {mode!r}")
    if mode == "CRD":
        return lambda x: F.pixel_shuffle(x, block)

    def depth_to_space(x):
        batch, channels, height, width = x.shape
        y = x.reshape(batch, block, block, channels // (block * block), height, width)
        return y.permute(0, 3, 4, 1, 5, 2).reshape(batch, channels // (block * block), height * block, width * block)

    return depth_to_space


def _cast(n):
    to = n.attr("to")
    if to not in _TORCH_DTYPES:
        raise n.error(f"cast to {onnx.TensorProto.DataType.Name(to)} is not supported")
    dtype = _TORCH_DTYPES[to]
    return lambda x: x.to(dtype)


def _shape(n):
    start, end = n.attr("start", 0), n.attr("end")
    return lambda x: torch.tensor(x.shape[start:end], dtype=torch.int64, device=x.device)


def _gather(n):
    axis = n.attr("axis", 0)

    def gather(data, indices):
        a = axis % data.dim()
        indices = torch.where(indices < 0, indices + data.shape[a], indices)
        out = data.index_select(a, indices.reshape(-1).long())
        return out.reshape(data.shape[:a] + indices.shape + data.shape[a + 1:])

    return gather


def _axes(n, index: int) -> Optional[list]:
    """Axes given as an attribute (before opset 13, 18 for reductions) or as a constant input."""
    return n.attr("axes") if n.attr("axes") is not None else n.static_list(index)


def _unsqueeze(n):
    fixed = _axes(n, 1)

    def unsqueeze(x, axes=None):
        listed = _listed(axes, fixed)
        rank = x.dim() + len(listed)
        for a in sorted(a % rank for a in listed):
            x = x.unsqueeze(a)
        return x

    return unsqueeze


def _squeeze(n):
    fixed = _axes(n, 1)

    def squeeze(x, axes=None):
        listed = _listed(axes, fixed)
        if not listed:
            return x.squeeze()
        return x.squeeze(tuple(a % x.dim() for a in listed))

    return squeeze


def _slice(n):
    if n.opset < 10:
        fixed = [n.attr("starts"), n.attr("ends"), n.attr("axes"), None]
    else:
        fixed = [n.static_list(i) for i in (1, 2, 3, 4)]

    def slice_(x, *inputs):
        inputs = list(inputs) + [None] * (4 - len(inputs))
        starts, ends, axes, steps = (_listed(t, f) for t, f in zip(inputs, fixed))
        axes = axes if axes is not None else list(range(len(starts)))
        steps = steps if steps is not None else [1] * len(starts)
        index = [slice(None)] * x.dim()
        backwards = []
        for start, end, axis, step in zip(starts, ends, axes, steps):
            axis %= x.dim()
            size = x.shape[axis]
            start = start + size if start < 0 else start
            end = end + size if end < 0 else end
            if step > 0:
                index[axis] = slice(min(max(start, 0), size), min(max(end, 0), size), step)
            else:  # torch has no negative steps: gather those axes afterwards
                start, end = min(max(start, 0), size - 1), min(max(end, -1), size - 1)
                backwards.append((axis, torch.arange(start, end, step, device=x.device)))
        x = x[tuple(index)]
        for axis, positions in backwards:
            x = x.index_select(axis, positions)
        return x

    return slice_


def _pad(n):
    mode = n.attr("mode", "constant")
    if mode != "constant":
        raise n.error(f"mode {mode!r} is not supported (constant is)")
    if n.opset < 11:
        fixed_pads, fixed_value, fixed_axes = n.attr("pads", n.attr("paddings")), n.attr("value", 0.0), None
    else:
        fixed_pads = n.static_list(1)
        fixed_value = n.static(2).item() if n.static(2) is not None else (None if n.has(2) else 0.0)
        fixed_axes = n.static_list(3)

    def pad(x, pads=None, value=None, axes=None):
        listed = _listed(pads, fixed_pads)
        fill = fixed_value if fixed_value is not None else value.item()
        axis_list = _listed(axes, fixed_axes)
        axis_list = [a % x.dim() for a in axis_list] if axis_list is not None else list(range(x.dim()))
        begins, ends = [0] * x.dim(), [0] * x.dim()
        for i, a in enumerate(axis_list):
            begins[a], ends[a] = listed[i], listed[i + len(axis_list)]
        return F.pad(x, _torch_pads(begins, ends), value=fill)

    return pad


def _flatten(n):
    axis = n.attr("axis", 1)

    def flatten(x):
        a = axis % x.dim() if axis < 0 else axis
        return x.reshape(math.prod(x.shape[:a]), math.prod(x.shape[a:]))

    return flatten


def _softmax(n):
    axis = n.attr("axis", 1 if n.opset < 13 else -1)
    if n.opset >= 13:
        return lambda x: torch.softmax(x, dim=axis)

    def softmax_2d(x):  # before opset 13: over all axes from `axis` on, as one
        a = axis % x.dim()
        return torch.softmax(x.reshape(math.prod(x.shape[:a]), -1), dim=1).reshape(x.shape)

    return softmax_2d


def _gelu(n):  # opset 20's Gelu; older exports write it out with Erf
    approximate = n.attr("approximate", "none")
    if approximate not in ("none", "tanh"):
        raise n.error(f"approximate={approximate!r} is not an ONNX Gelu mode")
    return lambda x: F.gelu(x, approximate=approximate)


def _layer_normalization(n):
    axis, epsilon = n.attr("axis", -1), n.attr("epsilon", 1e-5)
    if len(n.proto.output) > 1 and any(n.proto.output[1:]):
        raise n.error("the Mean and InvStdDev outputs (training only) are not supported")

    def layer_normalization(x, scale, bias=None):
        axes = tuple(range(axis % x.dim(), x.dim()))
        mean = x.mean(dim=axes, keepdim=True)
        variance = (x - mean).square().mean(dim=axes, keepdim=True)
        y = (x - mean) * torch.rsqrt(variance + epsilon) * scale
        return y if bias is None else y + bias

    return layer_normalization


def _gemm(n):
    alpha, beta = n.attr("alpha", 1.0), n.attr("beta", 1.0)
    trans_a, trans_b = n.attr("transA", 0), n.attr("transB", 0)

    def gemm(a, b, c=None):
        y = alpha * ((a.t() if trans_a else a) @ (b.t() if trans_b else b))
        return y if c is None else y + beta * c

    return gemm


def _prelu(n):
    return lambda x, slope: torch.where(x >= 0, x, x * slope)  # slope broadcasts as in ONNX, not per channel only


def _variadic(fn):
    """Max, Min, Sum: any number of broadcast inputs."""
    def build(n):
        def reduce(*xs):
            out = xs[0]
            for x in xs[1:]:
                out = fn(out, x)
            return out
        return reduce
    return build


def _expand(n):
    fixed = n.static_list(1)

    def expand(x, shape=None):
        dims = _listed(shape, fixed)
        return x.expand(torch.broadcast_shapes(x.shape, tuple(dims)))  # ONNX broadcasts both ways

    return expand


def _reduction(fn: Callable):
    """ReduceMean, ReduceSum, ReduceMax: ``fn`` (torch.mean, torch.sum, torch.amax) over the
    axes given as an attribute or a constant input, all of them when none are given."""
    def build(n):
        fixed = _axes(n, 1)
        keep, noop = bool(n.attr("keepdims", 1)), bool(n.attr("noop_with_empty_axes", 0))

        def reduce(x, axes=None):
            listed = _listed(axes, fixed)
            if not listed:
                if noop:
                    return x
                listed = list(range(x.dim()))
            return fn(x, dim=tuple(a % x.dim() for a in listed), keepdim=keep)

        return reduce
    return build


_BUILDERS: dict[str, Callable[[_Node], Callable]] = {
    "Add": _plain(torch.add),
    "Sub": _plain(torch.sub),
    "Mul": _plain(torch.mul),
    "Div": _plain(_div),
    "Pow": _pow,
    "Sqrt": _plain(torch.sqrt),
    "Exp": _plain(torch.exp),
    "Tanh": _plain(torch.tanh),
    "Sigmoid": _plain(torch.sigmoid),
    "Relu": _plain(torch.relu),
    "LeakyRelu": _leaky_relu,
    "HardSigmoid": _hard_sigmoid,
    "HardSwish": _hard_swish,
    "Clip": _clip,
    "Identity": _identity,
    "BatchNormalization": _batch_normalization,
    "Conv": _conv,
    "ConvTranspose": _conv_transpose,
    "MaxPool": _pool("max"),
    "AveragePool": _pool("avg"),
    "GlobalAveragePool": _global_average_pool,
    "Resize": _resize,
    "Concat": _concat,
    "Reshape": _reshape,
    "Transpose": _transpose,
    "DepthToSpace": _depth_to_space,
    "Flatten": _flatten,
    "Cast": _cast,
    "Shape": _shape,
    "Gather": _gather,
    "Unsqueeze": _unsqueeze,
    "Squeeze": _squeeze,
    "Slice": _slice,
    "Pad": _pad,
    "Softmax": _softmax,
    "ReduceMean": _reduction(torch.mean),
    "ReduceSum": _reduction(torch.sum),
    "ReduceMax": _reduction(torch.amax),
    # GELU and the norms, matrix products and elementwise ops of newer backbones (PP-OCRv6's
    # Erf-written GELU first)
    "Erf": _plain(torch.erf),
    "Gelu": _gelu,
    "LayerNormalization": _layer_normalization,
    "MatMul": _plain(torch.matmul),
    "Gemm": _gemm,
    "PRelu": _prelu,
    "Softplus": _plain(F.softplus),
    "Neg": _plain(torch.neg),
    "Abs": _plain(torch.abs),
    "Reciprocal": _plain(torch.reciprocal),
    "Max": _variadic(torch.maximum),
    "Min": _variadic(torch.minimum),
    "Sum": _variadic(torch.add),
    "Expand": _expand,
    "Where": _plain(torch.where),
    "Equal": _plain(torch.eq),
}
SUPPORTED_OPS = tuple(sorted(set(_BUILDERS) | {"Constant"}))


def _op_key(node: onnx.NodeProto) -> str:
    """The builder table's key: the op type, prefixed by its domain outside the default one."""
    return node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}::{node.op_type}"
