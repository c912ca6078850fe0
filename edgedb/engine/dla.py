"""Keeping a float16 model's float32 islands in float32 on a DLA build (TensorRT 10.x).

A DLA build is weakly typed with the FP16 flag (``edgedb.engine.compat``): there, the
types of the ONNX are not constraints, and TensorRT may run any layer in FP16. But
``to_float16`` keeps some layers in float32 on purpose (the fused preprocessing, the sums
and logits in front of the final Sigmoid): in FP16 they lose the accuracy they were kept
for. So every layer of such a model computing a float32 tensor is pinned: precision and
output type float32, on the GPU (the DLA runs FP16/INT8 only), with
``OBEY_PRECISION_CONSTRAINTS`` so a layer that cannot run in float32 fails the build
instead of quietly running in FP16 (``NvInfer.h`` v10.3.0, ``ILayer::setPrecision``).

A model without float16 tensors (FP32, INT8 Q/DQ) has no islands: there, the flags decide
the precision of what Q/DQ does not, as intended.
"""

from __future__ import annotations

from edgedb.errors import InvalidInputError

# Layers that compute nothing in a precision: they keep their types as they are.
_TYPELESS = ("CONSTANT", "SHAPE", "CAST", "QUANTIZE", "DEQUANTIZE")


def _tensors(layer, count, get):
    for index in range(count):
        tensor = get(index)
        if tensor is not None:
            yield index, tensor


def float32_islands(trt, network) -> list:
    """The layers of a float16 network that compute float32 tensors (empty for a network
    with no float16 tensor)."""
    layers = [network.get_layer(i) for i in range(network.num_layers)]
    has_half = any(tensor.dtype == trt.float16 for layer in layers
                   for _, tensor in _tensors(layer, layer.num_outputs, layer.get_output))
    if not has_half:
        return []
    typeless = {getattr(trt.LayerType, name) for name in _TYPELESS if hasattr(trt.LayerType, name)}
    return [layer for layer in layers if layer.type not in typeless
            and any(tensor.dtype == trt.float32 for _, tensor in _tensors(layer, layer.num_outputs, layer.get_output))]


def pin_float32_islands(trt, network, config, *, gpu_fallback: bool) -> int:
    """Pins the islands of ``float32_islands`` to float32 on the GPU; returns how many.

    Raises:
        InvalidInputError: there are islands and GPU fallback is off (the DLA cannot run
            float32, and without fallback the build would fail on the first of them).
    """
    islands = float32_islands(trt, network)
    if not islands:
        return 0
    if not gpu_fallback:
        names = ", ".join(layer.name for layer in islands[:3]) + (", ..." if len(islands) > 3 else "")
        raise InvalidInputError(
            f"this float16 model keeps {len(islands)} layers in float32 ({names}), which the DLA cannot run: "
            "allow GPU fallback (gpu_fallback=True, --gpu-fallback) so they run on the GPU in float32")
    for layer in islands:
        layer.precision = trt.float32
        for index, tensor in _tensors(layer, layer.num_outputs, layer.get_output):
            if tensor.dtype == trt.float32:
                layer.set_output_type(index, trt.float32)
        config.set_device_type(layer, trt.DeviceType.GPU)
    obey = getattr(trt.BuilderFlag, "OBEY_PRECISION_CONSTRAINTS", None)  # 10.x: the only DLA builds there are
    if obey is not None:
        config.set_flag(obey)
    return len(islands)
