"""Graph rewrites that keep a CPU INT8 (uint8 QDQ) model integer from frame to map.

ONNX Runtime fuses DequantizeLinear -> op -> QuantizeLinear into integer kernels
(QLinearConv, QLinearAdd, ...) only where it has one; every float island costs a
dequantize, a float pass and a quantize over the whole tensor. These rewrites remove such
islands exactly (or, where noted, to within the quantization step):

- ``decompose_activations`` (before quantization): HardSwish and HardSigmoid as
  Add/Clip/Mul, which all have integer kernels.
- ``fold_scalar_muls_into_scales`` (after): a Mul by a positive constant between Q/DQ
  pairs becomes a change of scale.
- ``fold_preprocessing_into_first_convs`` (after): the uint8 frame itself is the first
  convolution's quantized input; the normalization moves into its weights and bias.
- ``upsample_in_nchw`` (after): nearest upsampling kept where ONNX Runtime has a fast
  uint8 kernel for it.
- ``gelu_as_sigmoid`` (after; approximate, within 0.021): GELU's Erf, which has no
  integer kernel, as a quantized Sigmoid.
- ``pad_pixel_channels`` (at load, OpenVINO only): the frame's first convolutions get a
  fourth, zero input channel, so that OpenVINO runs them as integer convolutions.
"""

from __future__ import annotations

import logging

import numpy as np

log = logging.getLogger(__name__)

PREPROCESS_PREFIX = "edgedb_preprocess/"


def decompose_activations(model):
    """HardSwish and HardSigmoid written as the Add/Mul/Clip they compute.

    ONNX Runtime has no integer kernel for either; decomposed, every step maps to an
    integer one (QLinearAdd, QLinearMul, a Clip absorbed into the range), so a CPU INT8
    graph stays in uint8 between convolutions. Calibration always runs on this form: its
    tensors are a superset of the original's, so one pass serves both targets.
    """
    import onnx_graphsurgeon as gs

    graph = gs.import_onnx(model)
    for node in [n for n in graph.nodes if n.op in ("HardSwish", "HardSigmoid")]:
        x, y = node.inputs[0], node.outputs[0]
        node.outputs = []
        name = node.name or y.name

        def const(suffix, value):
            return gs.Constant(f"{name}_{suffix}", np.array(value, np.float32))

        def tensor(suffix):
            return gs.Variable(f"{name}_{suffix}", dtype=np.float32)

        if node.op == "HardSwish":  # x * clip(x + 3, 0, 6) / 6
            shifted, clipped, product = tensor("plus3"), tensor("relu6"), tensor("x_relu6")
            graph.nodes += [
                gs.Node("Add", f"{name}_add", inputs=[x, const("three", 3.0)], outputs=[shifted]),
                gs.Node("Clip", f"{name}_clip", inputs=[shifted, const("zero", 0.0), const("six", 6.0)], outputs=[clipped]),
                gs.Node("Mul", f"{name}_mul", inputs=[x, clipped], outputs=[product]),
                gs.Node("Mul", f"{name}_sixth", inputs=[product, const("one_sixth", 1.0 / 6.0)], outputs=[y]),
            ]
        else:  # clip(alpha * x + beta, 0, 1)
            scaled, shifted = tensor("scaled"), tensor("shifted")
            graph.nodes += [
                gs.Node("Mul", f"{name}_mul", inputs=[x, const("alpha", node.attrs.get("alpha", 0.2))], outputs=[scaled]),
                gs.Node("Add", f"{name}_add", inputs=[scaled, const("beta", node.attrs.get("beta", 0.5))], outputs=[shifted]),
                gs.Node("Clip", f"{name}_clip", inputs=[shifted, const("zero", 0.0), const("one", 1.0)], outputs=[y]),
            ]
    _merge_scalar_muls(graph)
    graph.cleanup().toposort()
    out = gs.export_onnx(graph)
    for prop in model.metadata_props:
        out.metadata_props.add(key=prop.key, value=prop.value)
    return out


def _merge_scalar_muls(graph) -> None:
    """Mul(Mul(x, a), b) with scalar constants a, b becomes Mul(x, a*b): the HardSwish's
    1/6 joins the learnable scale that usually follows it (one integer pass fewer)."""
    import onnx_graphsurgeon as gs

    def scalar_operand(node):
        constants = [t for t in node.inputs if isinstance(t, gs.Constant)]
        variables = [t for t in node.inputs if not isinstance(t, gs.Constant)]
        if node.op != "Mul" or len(constants) != 1 or len(variables) != 1 or constants[0].values.size != 1:
            return None, None
        return variables[0], float(np.asarray(constants[0].values).reshape(()))

    for first in [n for n in graph.nodes if n.op == "Mul"]:
        x, a = scalar_operand(first)
        if x is None or not first.outputs or len(first.outputs[0].outputs) != 1:
            continue
        second = first.outputs[0].outputs[0]
        _, b = scalar_operand(second)
        if b is None or any(t is first.outputs[0] for t in graph.outputs):
            continue
        second.inputs = [x, gs.Constant(f"{second.name}_merged", np.array(a * b, np.float32))]
        first.outputs = []


def _constant_value(tensor):
    """The value of a constant, or of a DequantizeLinear of constants; else None."""
    import onnx_graphsurgeon as gs

    if isinstance(tensor, gs.Constant):
        return np.asarray(tensor.values, np.float64)
    producer = tensor.inputs[0] if tensor.inputs else None
    if producer is None or producer.op != "DequantizeLinear" or not all(isinstance(t, gs.Constant) for t in producer.inputs):
        return None
    values, scale = (np.asarray(t.values, np.float64) for t in producer.inputs[:2])
    zero = np.asarray(producer.inputs[2].values, np.float64) if len(producer.inputs) > 2 else np.zeros(())
    if scale.ndim == 1 and values.ndim > 1:  # per-axis: align with the axis
        shape = [1] * values.ndim
        shape[producer.attrs.get("axis", 1)] = -1
        scale, zero = scale.reshape(shape), zero.reshape(shape)
    return (values - zero) * scale


def fold_scalar_muls_into_scales(graph) -> int:
    """DQ(q) * c with a positive scalar c, requantized, is q itself read with scale s*c:
    such Muls (HardSwish's 1/6 times the learnable scale after it) disappear from the
    integer graph, and the readers' DequantizeLinear take the new scale (exact)."""
    import onnx_graphsurgeon as gs

    folded = 0
    for mul in [n for n in graph.nodes if n.op == "Mul" and n.outputs]:
        values = [_constant_value(t) for t in mul.inputs]
        constant = [i for i, v in enumerate(values) if v is not None]
        if len(constant) != 1 or values[constant[0]].size != 1:
            continue
        factor = float(values[constant[0]].reshape(()))
        x = mul.inputs[1 - constant[0]]
        dequantize = x.inputs[0] if x.inputs else None
        if factor <= 0 or dequantize is None or dequantize.op != "DequantizeLinear" or len(x.outputs) != 1:
            continue
        if len(mul.outputs[0].outputs) != 1 or mul.outputs[0].outputs[0].op != "QuantizeLinear":
            continue
        requantize = mul.outputs[0].outputs[0]
        readers = list(requantize.outputs[0].outputs)
        if not readers or any(r.op != "DequantizeLinear" for r in readers) or any(t is requantize.outputs[0] for t in graph.outputs):
            continue
        scale = np.asarray(dequantize.inputs[1].values, np.float32) * np.float32(factor)
        zero = np.asarray(dequantize.inputs[2].values)
        for reader in readers:
            reader.inputs = [dequantize.inputs[0], gs.Constant(f"{reader.name}_scale", np.asarray(scale)),
                             gs.Constant(f"{reader.name}_zero_point", zero)]
        requantize.outputs, mul.outputs = [], []
        folded += 1
    return folded


GELU_SIGMOID_SLOPE = 1.702  # x * sigmoid(1.702 x) is within 0.021 of GELU's x * (1 + erf(x / sqrt 2)) / 2


def gelu_as_sigmoid(graph) -> int:
    """GELU's ``1 + erf(x / sqrt(2))``, computed in float between Q/DQ pairs (ONNX Runtime has
    no integer Erf), becomes ``2 * sigmoid(1.702 x)``, which it has: the quantized x read
    with its scale times 1.702, a Sigmoid quantized to [0, 1] in steps of 1/255, read back
    with steps of 2/255. ONNX Runtime then fuses QLinearSigmoid and the QLinearMul by x:
    the Div, the Erf, their dequantize and requantize over the whole tensor and the
    QLinearAdd of 1 go. The change to GELU is at most 0.021 (at |x| near 2), about half an
    activation step of these models; accuracy is checked by hmean (bench/RESULTS.md).

    Matches DQ(x) -> Div(sqrt 2) -> Erf -> Q/DQ -> Add(1) -> Q -> DQ readers, as
    ``quantize_static`` writes GELU; returns how many were rewritten.
    """
    import onnx_graphsurgeon as gs

    rewritten = 0
    for erf in [n for n in graph.nodes if n.op == "Erf" and n.outputs]:
        div = erf.inputs[0].inputs[0] if erf.inputs[0].inputs else None
        if div is None or div.op != "Div" or len(div.outputs[0].outputs) != 1:
            continue
        divisor = _constant_value(div.inputs[1])
        x = div.inputs[0]
        dequantize_x = x.inputs[0] if x.inputs else None
        if divisor is None or divisor.size != 1 or abs(float(divisor.reshape(())) - np.sqrt(2)) > 1e-3:
            continue
        if dequantize_x is None or dequantize_x.op != "DequantizeLinear" or np.asarray(dequantize_x.inputs[1].values).size != 1:
            continue
        # Erf -> Q -> DQ -> Add(1) -> Q, whose readers are all DequantizeLinear
        chain = _single_chain(erf, ["QuantizeLinear", "DequantizeLinear", "Add", "QuantizeLinear"])
        if chain is None:
            continue
        _, dequantize_e, add, requantize = chain
        one = [_constant_value(t) for t in add.inputs if t is not dequantize_e.outputs[0]]
        readers = list(requantize.outputs[0].outputs)
        if len(one) != 1 or one[0] is None or one[0].size != 1 or abs(float(one[0].reshape(())) - 1) > 1e-6:
            continue
        if not readers or any(r.op != "DequantizeLinear" for r in readers) or any(
                t is requantize.outputs[0] for t in graph.outputs):
            continue
        name = erf.name + "_as_sigmoid"
        scaled = gs.Variable(name + "/scaled_x", dtype=np.float32)
        gate = gs.Variable(name + "/gate", dtype=np.float32)
        gate_q = gs.Variable(name + "/gate_quantized", dtype=np.uint8)
        scale_x = np.asarray(dequantize_x.inputs[1].values, np.float32) * np.float32(GELU_SIGMOID_SLOPE)
        step = gs.Constant(name + "/gate_step", np.array(1 / 255, np.float32))
        zero = gs.Constant(name + "/gate_zero_point", np.array(0, np.uint8))
        graph.nodes += [
            gs.Node("DequantizeLinear", name + "/dequantize_x",
                    inputs=[dequantize_x.inputs[0], gs.Constant(name + "/x_scale", np.asarray(scale_x, np.float32)), dequantize_x.inputs[2]],
                    outputs=[scaled]),
            gs.Node("Sigmoid", name + "/sigmoid", inputs=[scaled], outputs=[gate]),
            gs.Node("QuantizeLinear", name + "/quantize", inputs=[gate, step, zero], outputs=[gate_q]),
        ]
        for reader in readers:  # 1 + erf = 2 * sigmoid: the same integers read with twice the step
            reader.inputs = [gate_q, gs.Constant(reader.name + "_gate_step", np.array(2 / 255, np.float32)), zero]
        requantize.outputs, erf.outputs = [], []
        rewritten += 1
    return rewritten


def _single_chain(node, ops: list):
    """The nodes of ``ops`` following ``node`` one after another, each the only reader of
    the one before (else None)."""
    chain = []
    for op in ops:
        readers = node.outputs[0].outputs if node.outputs else []
        if len(readers) != 1 or readers[0].op != op:
            return None
        node = readers[0]
        chain.append(node)
    return chain


def fold_preprocessing_into_first_convs(graph, weight_limit: int = 127) -> bool:
    """Feeds the uint8 frame straight into the first convolutions as their quantized input.

    The fused preprocessing computes ``v[c] = pixel[perm[c]] * a[c] + b[c]`` (Cast, optional
    channel Gather, Mul, Add, Transpose); a quantized Conv reads ``v`` through Q/DQ. With the
    frame read as ``pixel - z`` (DequantizeLinear, scale 1, zero point ``z``), the same Conv
    takes weights ``W[o, perm[c]] * a[c]`` and bias ``b_o + sum W[o, c] (z a[c] + b[c])``:
    no float pass over the frame, no requantization, and the pixels keep all 8 bits. Only
    the convolution's zero padding changes: it now pads with pixel ``z`` (the mean pixel),
    a value within 0.2 of the exact 0 on the normalized scale, on the one-pixel frame.

    The new weights are quantized per output channel to [-weight_limit, weight_limit].
    Returns False, leaving the graph as it is, when the graph is not of that form (for
    example when the normalized frame has readers other than convolutions).
    """
    import onnx_graphsurgeon as gs

    nodes = {n.name: n for n in graph.nodes if n.name.startswith(PREPROCESS_PREFIX)}
    cast, mul, add, transpose = (nodes.get(PREPROCESS_PREFIX + op) for op in ("cast", "mul", "add", "transpose"))
    if any(n is None for n in (cast, mul, add, transpose)) or list(transpose.attrs.get("perm", [])) != [0, 3, 1, 2]:
        return False
    gather = nodes.get(PREPROCESS_PREFIX + "gather")
    channels = 3
    perm = np.arange(channels) if gather is None else np.asarray(gather.inputs[1].values, np.int64)
    a = np.broadcast_to(_constant_value(mul.inputs[1]), (channels,)).astype(np.float64)
    b = np.broadcast_to(_constant_value(add.inputs[1]), (channels,)).astype(np.float64)

    # Every reader of the normalized frame must be Q -> DQ -> Conv (input 0) with constant
    # int8 weights; anything else keeps the float preprocessing.
    convs = []
    if any(t is transpose.outputs[0] for t in graph.outputs):
        return False
    for quantize in transpose.outputs[0].outputs:
        if quantize.op != "QuantizeLinear":
            return False
        for dequantize in quantize.outputs[0].outputs:
            if dequantize.op != "DequantizeLinear":
                return False
            for conv in dequantize.outputs[0].outputs:
                if conv.op != "Conv" or conv.inputs[0] is not dequantize.outputs[0] or conv.attrs.get("group", 1) != 1:
                    return False
                weights = _constant_value(conv.inputs[1])
                if weights is None or weights.ndim != 4 or weights.shape[1] != channels:
                    return False
                convs.append((conv, weights))
    if not convs:
        return False

    image = cast.inputs[0]
    # The pixel value whose normalized value is nearest 0 in every channel on average.
    zero_point = np.uint8(np.clip(np.round(np.mean(-b / a)), 0, 255))
    pixels_nchw = gs.Variable(PREPROCESS_PREFIX + "pixels_nchw", dtype=np.uint8)
    centred = gs.Variable(PREPROCESS_PREFIX + "pixels_centred", dtype=np.float32)
    graph.nodes += [
        gs.Node("Transpose", PREPROCESS_PREFIX + "transpose_pixels", attrs={"perm": [0, 3, 1, 2]},
                inputs=[image], outputs=[pixels_nchw]),
        gs.Node("DequantizeLinear", PREPROCESS_PREFIX + "centre_pixels",
                inputs=[pixels_nchw, gs.Constant(PREPROCESS_PREFIX + "pixel_step", np.array(1.0, np.float32)),
                        gs.Constant(PREPROCESS_PREFIX + "pixel_zero_point", np.array(zero_point))],
                outputs=[centred]),
    ]
    for conv, weights in convs:
        bias = _constant_value(conv.inputs[2]) if len(conv.inputs) > 2 else None
        bias = np.zeros(weights.shape[0]) if bias is None else bias
        folded = np.empty_like(weights)
        folded[:, perm] = weights * a[None, :, None, None]
        bias = bias + np.einsum("ocij,c->o", weights, zero_point * a + b)
        scale = np.maximum(np.abs(folded).reshape(len(folded), -1).max(axis=1), 1e-12) / weight_limit
        q_weights = np.clip(np.round(folded / scale[:, None, None, None]), -weight_limit, weight_limit).astype(np.int8)
        q_bias = np.round(bias / scale).astype(np.int32)  # input step 1: bias step = weight step
        name = conv.name + "_pixels"
        conv.inputs = [centred, _dequantized(graph, name + "_weight", q_weights, scale.astype(np.float32), axis=0),
                       _dequantized(graph, name + "_bias", q_bias, scale.astype(np.float32), axis=0)]
    graph.cleanup()
    return True


def pad_pixel_channels(graph) -> bool:
    """Gives the first convolutions a fourth, all-zero input channel (and the frame a
    fourth channel of pixel ``z``), where ``fold_preprocessing_into_first_convs`` fed them
    the frame: the same function, which OpenVINO's CPU plugin then runs as an integer
    convolution. With three input channels it picks its float32 kernel and reorders the
    frame into float for it (PP-OCRv6 small det's CPU target, 736x1312: the stem 7.8 ms
    against 3.0 ms, 9% of the model). ONNX Runtime is slower with the extra channel, so
    only the OpenVINO backend applies this. Returns False where the graph has no such
    convolutions."""
    import onnx_graphsurgeon as gs

    nodes = {n.name: n for n in graph.nodes if n.name.startswith(PREPROCESS_PREFIX)}
    transpose, centre = nodes.get(PREPROCESS_PREFIX + "transpose_pixels"), nodes.get(PREPROCESS_PREFIX + "centre_pixels")
    if transpose is None or centre is None or centre.inputs[0] is not transpose.outputs[0]:
        return False
    weights = []
    for conv in centre.outputs[0].outputs:
        source = conv.inputs[1].inputs[0] if conv.op == "Conv" and conv.inputs[1].inputs else None
        values = source.inputs[0] if source is not None and source.op == "DequantizeLinear" else None
        if not isinstance(values, gs.Constant) or values.values.ndim != 4 or values.values.shape[1] != 3:
            return False
        weights.append(source)
    if not weights:
        return False
    padded = gs.Variable(PREPROCESS_PREFIX + "pixels_nchw4", dtype=np.uint8)
    graph.nodes.append(gs.Node(
        "Pad", PREPROCESS_PREFIX + "pad_channels",
        inputs=[transpose.outputs[0], gs.Constant(PREPROCESS_PREFIX + "channel_pads", np.array([0, 0, 0, 0, 0, 1, 0, 0],
                                                                                               np.int64)),
                centre.inputs[2]],  # pixel z: the extra channel is 0 after centring
        outputs=[padded]))
    centre.inputs[0] = padded
    for dequantize in weights:
        q = dequantize.inputs[0].values
        dequantize.inputs[0] = gs.Constant(dequantize.inputs[0].name + "_4", np.concatenate([q, np.zeros_like(q[:, :1])], 1))
    graph.toposort()
    return True


def _dequantized(graph, name: str, values: np.ndarray, scale: np.ndarray, axis: int):
    """A DequantizeLinear of constant ``values`` (zero point 0), appended to ``graph``."""
    import onnx_graphsurgeon as gs

    out = gs.Variable(name + "_dequantized", dtype=np.float32)
    graph.nodes.append(gs.Node(
        "DequantizeLinear", name + "_DequantizeLinear", attrs={"axis": axis},
        inputs=[gs.Constant(name + "_quantized", values), gs.Constant(name + "_scale", scale),
                gs.Constant(name + "_zero_point", np.zeros(scale.shape, values.dtype))],
        outputs=[out]))
    return out


def _nearest_floor_factor(resize) -> int:
    """s when ``resize`` maps output pixel i to input pixel floor(i / s) on H and W, with s
    a power of two given as constant scales [1, 1, s, s]; else 0."""
    import onnx_graphsurgeon as gs

    attrs = resize.attrs
    if attrs.get("mode") != "nearest" or len(resize.inputs) != 3 or not isinstance(resize.inputs[2], gs.Constant):
        return 0
    scales = np.asarray(resize.inputs[2].values, np.float64)
    if scales.shape != (4,) or scales[0] != 1 or scales[1] != 1 or scales[2] != scales[3]:
        return 0
    factor = int(scales[2])
    if factor != scales[2] or factor < 2 or factor & (factor - 1):
        return 0
    transform = attrs.get("coordinate_transformation_mode", "half_pixel")
    rounding = attrs.get("nearest_mode", "round_prefer_floor")
    # asymmetric/floor reads floor(i/s); with half_pixel, i/s + (1/s - 1)/2 rounds to it too.
    floor_like = (transform == "asymmetric" and rounding == "floor") or (
        transform == "half_pixel" and rounding in ("round_prefer_floor", "round_prefer_ceil"))
    return factor if floor_like else 0


def upsample_in_nchw(graph) -> int:
    """Keeps quantized nearest upsampling on ONNX Runtime's fast path.

    ONNX Runtime's CPU provider upsamples uint8 by 2 with a dedicated kernel, but only in
    NCHW. Its layout optimizer runs quantized convolutions in NHWC and carries that layout
    through a Resize, where the generic kernel is some 30 times slower (7 ms against
    0.2 ms for PP-OCRv4's largest). A Reshape of the tensor to its own (run-time) shape is
    a node the optimizer does not move layouts through, so the Resize stays NCHW and pays
    one uint8 transpose instead; upsampling by 4 or 8 becomes a chain of 2x steps. Exact:
    nearest upsampling copies values, so every step keeps the input's quantization.

    Returns the number of Resize nodes rewritten.
    """
    import onnx_graphsurgeon as gs

    rewritten = 0
    for resize in [n for n in graph.nodes if n.op == "Resize"]:
        factor = _nearest_floor_factor(resize)
        x = resize.inputs[0]
        dequantize = x.inputs[0] if x.inputs else None
        if not factor or dequantize is None or dequantize.op != "DequantizeLinear":
            continue
        step, zero = dequantize.inputs[1], dequantize.inputs[2]
        name = resize.name or resize.outputs[0].name

        def requantized(tensor, label):
            """tensor -> Q -> DQ with the input's parameters (what ORT fuses into uint8 ops)."""
            codes = gs.Variable(f"{name}_{label}_q", dtype=np.uint8)
            values = gs.Variable(f"{name}_{label}_dq", dtype=np.float32)
            graph.nodes += [gs.Node("QuantizeLinear", f"{name}_{label}_Q", inputs=[tensor, step, zero], outputs=[codes]),
                            gs.Node("DequantizeLinear", f"{name}_{label}_DQ", inputs=[codes, step, zero], outputs=[values])]
            return values

        shape = gs.Variable(f"{name}_own_shape", dtype=np.int64)
        pinned = gs.Variable(f"{name}_pinned", dtype=np.float32)
        graph.nodes += [gs.Node("Shape", f"{name}_own_shape", inputs=[x], outputs=[shape]),
                        gs.Node("Reshape", f"{name}_pin_layout", inputs=[x, shape], outputs=[pinned])]
        current = requantized(pinned, "pinned")
        output = resize.outputs[0]
        resize.outputs = []
        steps = factor.bit_length() - 1
        two = gs.Constant(f"{name}_scales_2x", np.array([1, 1, 2, 2], np.float32))
        for k in range(steps):
            last = k == steps - 1
            out = output if last else gs.Variable(f"{name}_2x_{k}", dtype=np.float32)
            graph.nodes.append(gs.Node(
                "Resize", f"{name}_2x_{k}", inputs=[current, gs.Variable.empty(), two],
                outputs=[out], attrs={"mode": "nearest", "coordinate_transformation_mode": "asymmetric",
                                      "nearest_mode": "floor"}))
            current = out if last else requantized(out, f"2x_{k}")
        rewritten += 1
    graph.cleanup()
    return rewritten
