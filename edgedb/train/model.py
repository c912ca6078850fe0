"""A DBNet export as a trainable PyTorch model: the export's own graph (``OnnxModule``)
for the probability map, plus a threshold head on the features the probability head
reads, for the DB loss.

Inference exports (PP-OCR's among them) drop the threshold branch. The head added here
is the DB paper's (3x3 conv, BN, ReLU, then stride-2 transposed convolutions up to the
map's resolution) with its last layer initialized to a constant threshold near 0.3, the
binarization threshold: a copy of the probability head would predict T = P, making
B = 0.5 everywhere, where the binary loss cannot learn.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Optional, Union

import numpy as np

from edgedb.errors import ModelError
from edgedb.spec import ModelSpec

log = logging.getLogger(__name__)

INITIAL_THRESHOLD = 0.3
# Ops a DBNet probability head is made of, from the FPN features to the Sigmoid.
_HEAD_OPS = ("Conv", "ConvTranspose", "BatchNormalization", "Relu", "Add", "Mul", "Sub", "Div",
             "DepthToSpace", "HardSwish", "Clip", "Identity", "Sigmoid")


def load_base(base: Union[str, Path], spec: Optional[ModelSpec] = None):
    """(ModelProto, ModelSpec) of a zoo name or ONNX file to fine-tune: the file itself, not
    its rewritten form, so the trained weights go back into a model with the same
    interface."""
    import onnx

    from edgedb.models import resolve_model, zoo_spec
    from edgedb.spec import guess_spec, spec_from_metadata

    path = resolve_model(base)
    try:
        model = onnx.load(str(path))
    except Exception as error:  # protobuf's DecodeError and friends
        raise ModelError(f"{path} is not an ONNX model onnx can read: {error}") from error
    spec = spec or spec_from_metadata(model) or zoo_spec(base) or guess_spec(model)
    return model, spec


def head_features(model, prob_output: str) -> str:
    """The tensor the probability head reads: walking back from the map through the
    head's single-input layers to the first tensor a multi-input layer (the FPN's
    Concat or Add) produced."""
    graph = model.graph
    producers = {o: n for n in graph.node for o in n.output}
    constants = {i.name for i in graph.initializer} | {n.output[0] for n in graph.node if n.op_type == "Constant"}
    for node in graph.node:  # what is computed from constants alone (PP-OCRv3 reshapes its head's biases)
        if node.input and all(not i or i in constants for i in node.input):
            constants.update(node.output)
    name = prob_output
    seen_conv = False
    while name in producers:
        node = producers[name]
        variables = [i for i in node.input if i and i not in constants]
        if node.op_type not in _HEAD_OPS or len(variables) != 1:
            break
        if node.op_type in ("Conv", "ConvTranspose"):
            seen_conv = True
        name = variables[0]
    if not seen_conv or name == prob_output:
        raise ModelError(f"cannot find the features the probability head reads (walking back from {prob_output!r})")
    return name


def _threshold_head(channels: int, upsamplings: int):
    import torch
    from torch import nn

    inner = max(channels // 4, 16)
    layers = [nn.Conv2d(channels, inner, 3, padding=1, bias=False), nn.BatchNorm2d(inner), nn.ReLU(inplace=True)]
    width = inner
    for index in range(upsamplings):
        last = index == upsamplings - 1
        out = 1 if last else inner
        layers.append(nn.ConvTranspose2d(width, out, 2, stride=2))
        if not last:
            layers += [nn.BatchNorm2d(out), nn.ReLU(inplace=True)]
        width = out
    if upsamplings == 0:
        layers.append(nn.Conv2d(width, 1, 1))
    head = nn.Sequential(*layers)
    final = head[-1]
    with torch.no_grad():  # T = 0.3 everywhere to start with
        final.weight.zero_()
        final.bias.fill_(math.log(INITIAL_THRESHOLD / (1 - INITIAL_THRESHOLD)))
    return head


class TrainableDBNet:
    """Holds the export's graph as a torch module, the threshold head and the spec.

    ``forward(images)`` takes uint8 BGR frames (N, H, W, 3) as a torch tensor and returns
    (P, T), each (N, 1, H, W); T is None without a threshold head.
    """

    def __init__(self, model, spec: ModelSpec, *, threshold_head: bool = True):
        import torch

        from edgedb.train.onnx_torch import OnnxModule

        self.model, self.spec = model, spec
        self.graph = OnnxModule(model)
        self.features = head_features(model, spec.prob_output) if threshold_head else None
        self.head = None
        self._mean = torch.tensor(spec.mean, dtype=torch.float32).view(1, 3, 1, 1) * 255.0
        self._std = torch.tensor(spec.std, dtype=torch.float32).view(1, 3, 1, 1) * 255.0
        if threshold_head:
            probe = torch.zeros(1, spec.stride * 4, spec.stride * 4, 3, dtype=torch.uint8)
            with torch.no_grad():
                outputs = self.graph(self._network_input(probe), outputs=[self.features])
            feature, prob = outputs[self.features], outputs[spec.prob_output]
            factor = prob.shape[-1] // feature.shape[-1]
            if factor < 1 or factor & (factor - 1) or prob.shape[-2] // feature.shape[-2] != factor:
                raise ModelError(f"the head's features ({tuple(feature.shape)}) and map ({tuple(prob.shape)}) are "
                                 "not a power-of-two scale apart")
            self.head = _threshold_head(feature.shape[1], int(math.log2(factor)))

    def modules(self):
        return [m for m in (self.graph, self.head) if m is not None]

    def parameters(self):
        """The tensors that train (frozen ones excluded)."""
        return [p for m in self.modules() for p in m.parameters() if p.requires_grad]

    def freeze_early(self, fraction: float) -> int:
        """Keeps the first ``fraction`` of the base model's weights (in graph order: the
        stem and early backbone, at the highest resolutions) fixed; returns how many
        tensors that is. Their backward pass is skipped, so each step is cheaper
        (0.3: about a quarter less time per step of PP-OCRv4 det)."""
        first_use = {}
        for position, node in enumerate(self.model.graph.node):
            for name in node.input:
                first_use.setdefault(name, position)
        weights = self.graph.weights
        ordered = sorted(weights, key=lambda key: first_use.get(self.graph.onnx_names[key], len(first_use)))
        count = int(len(ordered) * fraction)
        for index, key in enumerate(ordered):
            weights[key].requires_grad_(index >= count)
        return count

    def train(self, mode: bool = True):
        for module in self.modules():
            module.train(mode)
        return self

    def to(self, device):
        for module in self.modules():
            module.to(device)
        self._mean, self._std = self._mean.to(device), self._std.to(device)
        return self

    def _network_input(self, images):
        """uint8 BGR NHWC -> what the export takes."""
        x = images.float()
        if self.spec.fused_preprocessing:
            return x
        if self.spec.channel_order == "RGB":
            x = x.flip(-1)
        x = x.permute(0, 3, 1, 2)
        return (x - self._mean) / self._std

    def __call__(self, images):
        wanted = [self.features] if self.head is not None else []
        outputs = self.graph(self._network_input(images), outputs=wanted)
        prob = outputs[self.spec.prob_output]
        if self.head is None:
            return prob, None
        thresh = self.head(outputs[self.features]).sigmoid()
        if thresh.shape[-2:] != prob.shape[-2:]:
            thresh = thresh[..., : prob.shape[-2], : prob.shape[-1]]
        return prob, thresh

    def export(self):
        """The base ONNX with the trained weights: same interface, same graph."""
        from edgedb.train.onnx_torch import export_onnx

        return export_onnx(self.graph, self.model)

    def tensors(self) -> dict:
        """Every trained tensor (and BN statistic), live: no copy."""
        return {f"{i}:{k}": v for i, m in enumerate(self.modules()) for k, v in m.state_dict().items()}

    def state(self) -> dict:
        """A copy of every trained tensor (to keep the best checkpoint in memory)."""
        return {k: v.detach().clone() for k, v in self.tensors().items()}

    def load_state(self, state: dict) -> None:
        for i, module in enumerate(self.modules()):
            module.load_state_dict({k.split(":", 1)[1]: v for k, v in state.items() if k.startswith(f"{i}:")})


def prob_map(net: TrainableDBNet, frame: np.ndarray) -> np.ndarray:
    """P for one prepared uint8 frame (H, W, 3), as float32 (H, W), in inference mode."""
    import torch

    with torch.no_grad():
        prob, _ = net(torch.from_numpy(np.ascontiguousarray(frame))[None])
    return prob[0, 0].numpy()
