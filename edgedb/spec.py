"""What edgedb needs to know about a DBNet export to run it: its model spec.

A spec names the input and the probability-map output, says how the network expects its
pixels (channel order, mean and std on the 0..1 scale, stride) and which extra outputs
(threshold map, binary map) the export has. Rewritten models carry their spec in the
ONNX metadata under ``edgedb.spec``, so they need no other argument to run.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from typing import Optional

from edgedb.errors import ModelError

METADATA_KEY = "edgedb.spec"
PRECISION_KEY = "edgedb.precision"  # "fp16", "int8-<target>-<method>"; absent for FP32
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_NAME_THEM = ("if it is a DBNet, name its image input and probability-map output: "
              "spec=ModelSpec(input_name=..., prob_output=...), on the command line --input-name and --prob-output")


@dataclass(frozen=True)
class ModelSpec:
    """How to feed a DBNet export and where its probability map comes out.

    Attributes:
        input_name: the image input of the graph.
        prob_output: the output holding the probability map P, shape (N, 1, H, W).
        extra_outputs: other outputs (threshold map T, approximate binary map B) that
            inference does not need and graph rewriting prunes.
        channel_order: ``"BGR"`` or ``"RGB"``: what the network was trained on.
        mean, std: per-channel normalization on the 0..1 scale, in ``channel_order``.
        stride: input height and width must be multiples of it.
        fused_preprocessing: True once the graph takes uint8 NHWC BGR frames and does
            cast, channel order, normalization and transpose inside (``input_name`` then
            names that uint8 input and ``prob_output`` is ``"prob"``).
    """

    input_name: str = "x"
    prob_output: str = "sigmoid_0.tmp_0"
    extra_outputs: tuple[str, ...] = ()
    channel_order: str = "BGR"
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    stride: int = 32
    fused_preprocessing: bool = False

    def __post_init__(self):
        if self.channel_order not in ("BGR", "RGB"):
            raise ModelError(f"channel_order must be 'BGR' or 'RGB', not {self.channel_order!r}")
        if len(self.mean) != 3 or len(self.std) != 3 or any(s <= 0 for s in self.std):
            raise ModelError("mean and std need three values each, std all positive")
        if self.stride <= 0:
            raise ModelError("stride must be positive")
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))
        object.__setattr__(self, "extra_outputs", tuple(self.extra_outputs))

    def with_(self, **changes) -> "ModelSpec":
        """A copy with some fields changed."""
        return replace(self, **changes)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "ModelSpec":
        try:
            data = json.loads(text)
            data["extra_outputs"] = tuple(data.get("extra_outputs", ()))
            data["mean"], data["std"] = tuple(data["mean"]), tuple(data["std"])
            return cls(**data)
        except (ValueError, TypeError, KeyError) as error:
            raise ModelError(f"the model's {METADATA_KEY} metadata is not a valid spec: {error}") from None


def spec_from_metadata(model) -> Optional[ModelSpec]:
    """The spec stored in an ``onnx.ModelProto``'s metadata, or None."""
    for prop in model.metadata_props:
        if prop.key == METADATA_KEY:
            return ModelSpec.from_json(prop.value)
    return None


def store_spec(model, spec: ModelSpec) -> None:
    """Writes (or replaces) the spec in an ``onnx.ModelProto``'s metadata."""
    for prop in list(model.metadata_props):
        if prop.key == METADATA_KEY:
            model.metadata_props.remove(prop)
    entry = model.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, spec.to_json()


def append_to_precision(model, suffix: str) -> None:
    """Appends ``suffix`` (once) to an ``onnx.ModelProto``'s precision metadata: what a
    later step did to an already quantized model ("-bc", "-qat")."""
    for prop in model.metadata_props:
        if prop.key == PRECISION_KEY and not prop.value.endswith(suffix):
            prop.value += suffix


def guess_spec(model, base: Optional[ModelSpec] = None) -> ModelSpec:
    """A spec for an export without one: its only image input, and the output that looks
    like a probability map (produced by a Sigmoid, or the first 1-channel output).

    Raises:
        ModelError: the graph has no 4-D input or no output that can be a DBNet map.
    """
    base = base or ModelSpec()
    graph = model.graph
    initializers = {init.name for init in graph.initializer}
    inputs = [i for i in graph.input if i.name not in initializers]
    image_inputs = [i for i in inputs if len(i.type.tensor_type.shape.dim) == 4]
    if len(image_inputs) != 1:
        raise ModelError(
            f"not a DBNet export edgedb can run: expected one 4-D image input, found {[i.name for i in inputs]}; "
            f"{_NAME_THEM}"
        )
    outputs = [o.name for o in graph.output]
    producers = {out: node.op_type for node in graph.node for out in node.output}
    sigmoid_outputs = [name for name in outputs if producers.get(name) == "Sigmoid"]

    def one_channel(o):
        dims = o.type.tensor_type.shape.dim
        return len(dims) == 4 and dims[1].dim_value == 1

    candidates = sigmoid_outputs or [o.name for o in graph.output if one_channel(o)]
    if not candidates:
        raise ModelError(
            f"not a DBNet export edgedb can run: no output looks like a probability map "
            f"(a Sigmoid output of shape (N, 1, H, W)); outputs: {outputs}; {_NAME_THEM}"
        )
    prob = candidates[0]
    return base.with_(
        input_name=image_inputs[0].name,
        prob_output=prob,
        extra_outputs=tuple(name for name in outputs if name != prob),
    )
