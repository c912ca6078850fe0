"""Exact simplifications that cut elementwise passes over large activations.

Lightweight backbones (PP-LCNet in PP-OCRv4 det, MobileNetV3) export their activations
and learnable affine layers as chains of Add/Clip/Mul/Div. On a CPU each link is one
more pass over memory: in PP-OCRv4 det they cost a third of the inference time. These
passes drop the Identity nodes newer exporters scatter between layers, fold what is
linear into the convolution before it and fuse the HardSwish
decomposition into the single ONNX operator (opset >= 14; ONNX Runtime and TensorRT both
run it natively). ``residual_scale_as_one_mul`` turns x + x * gate into one Mul, and
``subpixel_head`` rewrites the DBNet head's two stride-2 ConvTranspose
as 1x1 convolutions and a DepthToSpace. The results equal the originals up to float
rounding.
"""

from __future__ import annotations

import logging
from typing import Optional

import numpy as np
import onnx_graphsurgeon as gs

log = logging.getLogger(__name__)


def _only_consumer(tensor: gs.Tensor) -> Optional[gs.Node]:
    return tensor.outputs[0] if len(tensor.outputs) == 1 else None


def _constant_operand(node: gs.Node, variable: gs.Tensor) -> Optional[np.ndarray]:
    """The constant operand of a binary node whose other operand is ``variable``."""
    if len(node.inputs) != 2:
        return None
    other = node.inputs[1] if node.inputs[0] is variable else node.inputs[0]
    if other is variable or not isinstance(other, gs.Constant):
        return None
    return np.asarray(other.values)


def _per_channel(values: np.ndarray, channels: int) -> Optional[np.ndarray]:
    """A constant broadcast over an NCHW tensor as one value per channel, or None."""
    if values.size == 1:
        return np.full(channels, values.reshape(()), np.float64)
    if values.ndim in (3, 4) and values.size == channels and values.shape[-3] == channels:
        return values.reshape(channels).astype(np.float64)
    return None


def remove_identities(graph: gs.Graph) -> gs.Graph:
    """Drops Identity nodes (newer Paddle2ONNX exports put one after nearly every layer:
    147 in PP-OCRv6 small det). Runtimes skip them anyway, but they hide the patterns the
    passes below look for (a ConvTranspose -> Relu -> ConvTranspose head, a Conv's only
    consumer). An Identity that produces a graph output is kept, so output names hold."""
    outputs = {id(t) for t in graph.outputs}
    removed = 0
    for node in [n for n in graph.nodes if n.op == "Identity"]:
        source, target = node.inputs[0], node.outputs[0]
        if id(target) in outputs:
            continue
        for consumer in list(target.outputs):
            for index, tensor in enumerate(consumer.inputs):
                if tensor is target:
                    consumer.inputs[index] = source
        node.outputs.clear()
        removed += 1
    graph.cleanup().toposort()
    if removed:
        log.info("removed %d Identity nodes", removed)
    return graph


def spatial_mean_as_global_pool(graph: gs.Graph) -> gs.Graph:
    """ReduceMean over H and W with keepdims on an NCHW tensor as the GlobalAveragePool it
    is (PP-OCRv6's squeeze-excite blocks use both spellings). ONNX Runtime keeps
    GlobalAveragePool in its blocked NCHWc layout but reorders around ReduceMean, and
    quantizers have an integer GlobalAveragePool. Exact."""
    count = 0
    for node in [n for n in graph.nodes if n.op == "ReduceMean" and n.attrs.get("keepdims", 1) == 1]:
        axes = node.attrs.get("axes")
        if axes is None and len(node.inputs) > 1 and isinstance(node.inputs[1], gs.Constant):
            axes = np.asarray(node.inputs[1].values).tolist()  # opset 18 moved axes to an input
        shape = node.inputs[0].shape
        if axes is None or shape is None or len(shape) != 4 or sorted(a % 4 for a in axes) != [2, 3]:
            continue
        node.op, node.attrs = "GlobalAveragePool", {}
        while len(node.inputs) > 1:
            node.inputs.pop()
        count += 1
    if count:
        log.info("%d spatial ReduceMean as GlobalAveragePool", count)
    return graph


def batchnorm_as_affine(graph: gs.Graph) -> gs.Graph:
    """Rewrites inference-mode BatchNormalization with constant statistics as the per-channel
    ``Mul`` and ``Add`` it computes, so ``fold_conv_affine`` can fold it into the
    convolution before it (ONNX Runtime fuses Conv+BN in float, but not after ConvTranspose
    or once the graph is quantized)."""
    rewritten = 0
    for bn in [n for n in graph.nodes if n.op == "BatchNormalization"]:
        if len(bn.outputs) != 1 or not all(isinstance(t, gs.Constant) for t in bn.inputs[1:5]):
            continue
        gamma, beta, mean, var = (np.asarray(t.values, np.float64) for t in bn.inputs[1:5])
        scale = gamma / np.sqrt(var + bn.attrs.get("epsilon", 1e-5))
        shift = beta - mean * scale
        shape = (1, -1, 1, 1)
        x, y = bn.inputs[0], bn.outputs[0]
        scaled = gs.Variable(f"{bn.name}_scaled", dtype=np.float32)
        bn.outputs = []
        graph.nodes += [
            gs.Node("Mul", name=f"{bn.name}_mul", inputs=[x, gs.Constant(f"{bn.name}_scale", scale.reshape(shape).astype(np.float32))], outputs=[scaled]),
            gs.Node("Add", name=f"{bn.name}_add", inputs=[scaled, gs.Constant(f"{bn.name}_shift", shift.reshape(shape).astype(np.float32))], outputs=[y]),
        ]
        rewritten += 1
    graph.cleanup(remove_unused_graph_inputs=True).toposort()
    log.info("rewrote %d BatchNormalization nodes as affine", rewritten)
    return graph


def fold_conv_affine(graph: gs.Graph) -> gs.Graph:
    """Folds ``Mul(Conv(x), s)`` and ``Add(., t)`` with constant per-channel s, t into the
    Conv's (or ungrouped ConvTranspose's) weights and bias (x*W*s + b*s + t), when the
    convolution's output feeds nothing else."""
    folded = 0
    for conv in [n for n in graph.nodes if n.op == "Conv" or (n.op == "ConvTranspose" and n.attrs.get("group", 1) == 1)]:
        if len(conv.inputs) < 2 or not isinstance(conv.inputs[1], gs.Constant):
            continue
        if len(conv.inputs) == 3 and not isinstance(conv.inputs[2], gs.Constant):
            continue
        weight = np.asarray(conv.inputs[1].values, np.float64)
        out_axis = 1 if conv.op == "ConvTranspose" else 0  # ConvTranspose weights: (in, out, kh, kw)
        channels = weight.shape[out_axis]
        bias = (np.asarray(conv.inputs[2].values, np.float64) if len(conv.inputs) == 3
                else np.zeros(channels, np.float64))
        out = conv.outputs[0]
        folded_here = 0
        while not any(t is out for t in graph.outputs):
            node = _only_consumer(out)
            if node is None or node.op not in ("Mul", "Add"):
                break
            values = _constant_operand(node, out)
            vector = None if values is None else _per_channel(values, channels)
            if vector is None:
                break
            if node.op == "Mul":
                weight = weight * (vector[:, None, None, None] if out_axis == 0 else vector[None, :, None, None])
                bias = bias * vector
            else:
                bias = bias + vector
            # The affine node's output becomes the Conv's output.
            result = node.outputs[0]
            node.outputs = []
            conv.outputs = [result]
            out = result
            folded_here += 1
        if folded_here:
            folded += folded_here
            dtype = np.asarray(conv.inputs[1].values).dtype
            conv.inputs[1] = gs.Constant(f"{conv.name}_folded_weight", weight.astype(dtype))
            if len(conv.inputs) == 3:
                conv.inputs[2] = gs.Constant(f"{conv.name}_folded_bias", bias.astype(dtype))
            else:
                conv.inputs.append(gs.Constant(f"{conv.name}_folded_bias", bias.astype(dtype)))
    graph.cleanup(remove_unused_graph_inputs=True).toposort()
    log.info("folded %d affine nodes into convolutions", folded)
    return graph


def _scalar(node: gs.Node, variable: gs.Tensor) -> Optional[float]:
    values = _constant_operand(node, variable)
    return float(values.reshape(())) if values is not None and values.size == 1 else None


def _clip_bounds(clip: gs.Node) -> Optional[tuple[float, float]]:
    if len(clip.inputs) == 3 and all(isinstance(t, gs.Constant) for t in clip.inputs[1:]):
        return float(np.asarray(clip.inputs[1].values)), float(np.asarray(clip.inputs[2].values))
    if "min" in clip.attrs and "max" in clip.attrs:  # opset < 11 form
        return float(clip.attrs["min"]), float(clip.attrs["max"])
    return None


def fuse_hardswish(graph: gs.Graph) -> gs.Graph:
    """Replaces ``x * clip(x + 3, 0, 6) / 6`` (Add, Clip, Mul, Div; or a final Mul by 1/6)
    by ``HardSwish(x)``: one pass over the tensor instead of four."""
    fused = 0
    for add in [n for n in graph.nodes if n.op == "Add"]:
        if not add.outputs or not add.inputs:
            continue
        x = next((t for t in add.inputs if not isinstance(t, gs.Constant)), None)
        if x is None or _scalar(add, x) != 3.0:
            continue
        clip = _only_consumer(add.outputs[0])
        if clip is None or clip.op != "Clip" or _clip_bounds(clip) != (0.0, 6.0):
            continue
        mul = _only_consumer(clip.outputs[0])
        if mul is None or mul.op != "Mul" or set(map(id, mul.inputs)) != {id(x), id(clip.outputs[0])}:
            continue
        last = _only_consumer(mul.outputs[0])
        if last is None:
            continue
        divisor = _scalar(last, mul.outputs[0])
        if not ((last.op == "Div" and last.inputs[0] is mul.outputs[0] and divisor == 6.0)
                or (last.op == "Mul" and divisor is not None and abs(divisor * 6.0 - 1.0) < 1e-6)):
            continue
        result = last.outputs[0]
        last.outputs = []
        graph.nodes.append(gs.Node("HardSwish", name=f"{add.name}_hardswish", inputs=[x], outputs=[result]))
        fused += 1
    graph.cleanup(remove_unused_graph_inputs=True).toposort()
    log.info("fused %d HardSwish activations", fused)
    return graph


def _unpadded_convs(tensor: gs.Tensor) -> Optional[list[gs.Node]]:
    """The consumers of ``tensor`` if all are ungrouped Convs with constant weights and no
    padding (a constant added to their input then only shifts their bias), else None."""
    convs = list(tensor.outputs)
    for conv in convs:
        if conv.op != "Conv" or conv.inputs[0] is not tensor or not isinstance(conv.inputs[1], gs.Constant):
            return None
        if len(conv.inputs) == 3 and not isinstance(conv.inputs[2], gs.Constant):
            return None
        if conv.attrs.get("group", 1) != 1 or any(conv.attrs.get("pads", [0])) or conv.attrs.get("auto_pad", "NOTSET") not in ("NOTSET", "VALID"):
            return None
    return convs or None


def fold_affine_into_next_conv(graph: gs.Graph) -> gs.Graph:
    """Folds ``Add(Mul(h, s), t)`` (s, t constant per channel) into the unpadded Convs that
    consume it: Conv(h*s + t) has weights W*s and bias b + sum(W*t). Padded convolutions
    are left alone: their zero border would wrongly receive t."""
    folded = 0
    for mul in [n for n in graph.nodes if n.op == "Mul"]:
        if not mul.outputs:
            continue
        h = next((t for t in mul.inputs if not isinstance(t, gs.Constant)), None)
        add = _only_consumer(mul.outputs[0])
        if h is None or add is None or add.op != "Add":
            continue
        convs = _unpadded_convs(add.outputs[0])
        if convs is None or any(t is add.outputs[0] for t in graph.outputs):
            continue
        channels = np.asarray(convs[0].inputs[1].values).shape[1]
        scale = _constant_operand(mul, h)
        shift = _constant_operand(add, mul.outputs[0])
        scale = None if scale is None else _per_channel(scale, channels)
        shift = None if shift is None else _per_channel(shift, channels)
        if scale is None or shift is None:
            continue
        for conv in convs:
            weight = np.asarray(conv.inputs[1].values)
            w = weight.astype(np.float64)
            bias = (np.asarray(conv.inputs[2].values, np.float64) if len(conv.inputs) == 3
                    else np.zeros(w.shape[0], np.float64))
            bias = bias + np.einsum("ocij,c->o", w, shift)
            w = w * scale[None, :, None, None]
            conv.inputs[0] = h
            conv.inputs[1] = gs.Constant(f"{conv.name}_prefolded_weight", w.astype(weight.dtype))
            new_bias = gs.Constant(f"{conv.name}_prefolded_bias", bias.astype(weight.dtype))
            if len(conv.inputs) == 3:
                conv.inputs[2] = new_bias
            else:
                conv.inputs.append(new_bias)
        folded += 1
    graph.cleanup(remove_unused_graph_inputs=True).toposort()
    log.info("folded %d affine pairs into the convolutions after them", folded)
    return graph


def _stride2_upsampler(node: gs.Node) -> bool:
    """A ConvTranspose with 2x2 kernels and stride 2 and nothing else: every output pixel
    comes from exactly one input pixel (the sub-pixel convolution of DBNet heads)."""
    attrs = node.attrs
    return (node.op == "ConvTranspose" and list(attrs.get("kernel_shape", [])) == [2, 2]
            and list(attrs.get("strides", [])) == [2, 2] and not any(attrs.get("pads", [0] * 4))
            and attrs.get("group", 1) == 1 and list(attrs.get("dilations", [1, 1])) == [1, 1]
            and not any(attrs.get("output_padding", [])) and "output_shape" not in attrs
            and attrs.get("auto_pad", "NOTSET") in ("NOTSET", "VALID")
            and len(node.inputs) >= 2 and all(isinstance(t, gs.Constant) for t in node.inputs[1:]))


def subpixel_head(graph: gs.Graph) -> dict[str, str]:
    """ConvTranspose(2x2, stride 2) -> Relu -> ConvTranspose(2x2, stride 2), the DBNet head's
    two upsampling steps, as Conv 1x1 -> Relu -> Conv 1x1 -> DepthToSpace(4) at the input's
    resolution. Each output pixel depends on one input pixel through both steps, so the
    half-resolution intermediate never exists: on CPUs the two 1x1 convolutions run on
    their fast GEMM paths (and on integer kernels when quantized) instead of ConvTranspose's
    scatter. Exact up to float rounding.

    Returns ``{new tensor: old tensor}`` for tensors that hold the old ones' values in
    another order (calibration statistics carry over).
    """
    aliases = {}
    for second in [n for n in graph.nodes if _stride2_upsampler(n)]:
        relu = second.inputs[0].inputs[0] if second.inputs[0].inputs else None
        if relu is None or relu.op != "Relu" or _only_consumer(relu.outputs[0]) is not second:
            continue
        first = relu.inputs[0].inputs[0] if relu.inputs[0].inputs else None
        if first is None or not _stride2_upsampler(first) or _only_consumer(first.outputs[0]) is not relu:
            continue
        w1 = np.asarray(first.inputs[1].values, np.float32)  # [in, mid, 2, 2]
        w2 = np.asarray(second.inputs[1].values, np.float32)  # [mid, out, 2, 2]
        c_in, c_mid, c_out = w1.shape[0], w1.shape[1], w2.shape[1]
        if w2.shape[0] != c_mid:
            continue
        b1 = np.asarray(first.inputs[2].values, np.float32) if len(first.inputs) > 2 else np.zeros(c_mid, np.float32)
        b2 = np.asarray(second.inputs[2].values, np.float32) if len(second.inputs) > 2 else np.zeros(c_out, np.float32)
        # First step: channel (a, b, m) of the 1x1 conv is mid channel m at sub-pixel (a, b).
        k1 = w1.transpose(2, 3, 1, 0).reshape(4 * c_mid, c_in, 1, 1)
        # Second step: sub-pixel (a, b) then (e, f) lands at row 2a + e, column 2b + f of
        # a 4x4 block; DepthToSpace (DCR) reads channel ((2a+e) * 4 + (2b+f)) * out + o.
        k2 = np.zeros((16 * c_out, 4 * c_mid), np.float32)
        for a in range(2):
            for b in range(2):
                for e in range(2):
                    for f in range(2):
                        rows = ((2 * a + e) * 4 + (2 * b + f)) * c_out + np.arange(c_out)
                        cols = (a * 2 + b) * c_mid + np.arange(c_mid)
                        k2[np.ix_(rows, cols)] = w2[:, :, e, f].T
        name = first.name or second.name
        mid_pre, mid = gs.Variable(f"{name}_subpixel_pre", np.float32), gs.Variable(f"{name}_subpixel", np.float32)
        logits = gs.Variable(f"{name}_subpixel_blocks", np.float32)
        output = second.outputs[0]
        graph.nodes += [
            gs.Node("Conv", f"{name}_subpixel_conv1", attrs={"kernel_shape": [1, 1]},
                    inputs=[first.inputs[0], gs.Constant(f"{name}_subpixel_w1", k1),
                            gs.Constant(f"{name}_subpixel_b1", np.tile(b1, 4))], outputs=[mid_pre]),
            gs.Node("Relu", f"{name}_subpixel_relu", inputs=[mid_pre], outputs=[mid]),
            gs.Node("Conv", f"{name}_subpixel_conv2", attrs={"kernel_shape": [1, 1]},
                    inputs=[mid, gs.Constant(f"{name}_subpixel_w2", k2.reshape(16 * c_out, 4 * c_mid, 1, 1)),
                            gs.Constant(f"{name}_subpixel_b2", np.tile(b2, 16))], outputs=[logits]),
            gs.Node("DepthToSpace", f"{name}_subpixel_d2s", attrs={"blocksize": 4, "mode": "DCR"},
                    inputs=[logits], outputs=[output]),
        ]
        aliases.update({mid_pre.name: first.outputs[0].name, mid.name: relu.outputs[0].name, logits.name: output.name})
        second.outputs = []
        log.info("head %s + %s as 1x1 convolutions and DepthToSpace", first.name, second.name)
    graph.cleanup().toposort()
    return aliases


def residual_scale_as_one_mul(graph: gs.Graph) -> gs.Graph:
    """x + x * s as x * (1 + s): the squeeze-and-excitation residual of PP-OCR's RSE-FPN,
    where s is a per-channel gate ([N, C, 1, 1]). One pass over the activation instead of
    two; 1 + s is computed on the small gate. Exact up to float rounding."""
    count = 0
    for add in [n for n in graph.nodes if n.op == "Add" and len(n.inputs) == 2]:
        for x, product in (add.inputs, add.inputs[::-1]):
            mul = product.inputs[0] if product.inputs else None
            if (mul is None or mul.op != "Mul" or len(mul.inputs) != 2 or _only_consumer(product) is not add
                    or any(t is product for t in graph.outputs) or x not in mul.inputs or mul.inputs[0] is mul.inputs[1]):
                continue
            gate = mul.inputs[1] if mul.inputs[0] is x else mul.inputs[0]
            if isinstance(gate, gs.Constant):
                continue  # a constant scale: fold_conv_affine's business
            name = add.name or add.outputs[0].name
            lifted = gs.Variable(f"{name}_one_plus_gate", dtype=gate.dtype)
            graph.nodes.append(gs.Node("Add", f"{name}_one_plus", inputs=[gate, gs.Constant(f"{name}_one", np.array(1.0, np.float32))],
                                       outputs=[lifted]))
            add.op, add.name = "Mul", f"{name}_residual_scale"
            add.inputs = [x, lifted]
            mul.outputs = []
            count += 1
            break
    graph.cleanup().toposort()
    if count:
        log.info("folded %d residual gates into one Mul each", count)
    return graph
