"""The two Python-backend steps of the ``ensemble`` layout, around a network model that
Triton runs itself (``tensorrt_plan`` on a GPU node, ``onnxruntime_onnx`` on a CPU node):

    IMAGE --[edgedb_det_pre]--> network frame + FRAME --[edgedb_det_net]--> prob
          --[edgedb_det_post]--> BOXES, SIZES, SCORES, COUNTS

``PreprocessModel`` resizes and pads each request's frames as ``EdgeDetector`` does
(``prepare_request``); ``BoxesModel`` forms the boxes of each map in the original image's
pixels (``request_boxes``). The network in between batches same-size frames of concurrent
requests on the device, without a Python process in the way. Tensors cross the stub by
DLPack, as in ``triton_model``.
"""

from __future__ import annotations

import json

import numpy as np

from edgedb.boxes import TextBox, boxes_from_prob
from edgedb.errors import EdgeDBError, InvalidInputError
from edgedb.preprocess import prepare_frame
from edgedb.serving.protocol import INPUT_IMAGE, pack_boxes
from edgedb.serving.triton_model import input_array, request_images

#: The tensor between the steps that says where each image sits in its network frame:
#: int32 (content height, content width, original height, original width) per image.
FRAME_INFO = "FRAME"
#: The network's output, the probability map (N, 1, H', W').
PROB = "prob"
#: The config parameter holding a step's options (JSON), written by export_triton.
STEP_PARAMETER = "edgedb_step"


def prepare_request(images: list[np.ndarray], options: dict) -> tuple[np.ndarray, np.ndarray]:
    """The network frames (B, H', W', 3) uint8 of one request's BGR images, sized as
    ``EdgeDetector`` sizes them (``limit_side_len``/``limit_type``/``max_side_len`` and the
    model's ``stride``, or a fixed ``input_size``), and their ``FRAME_INFO`` rows (B, 4)."""
    prepared = [prepare_frame(image, input_size=options.get("input_size"), limit_side_len=options["limit_side_len"],
                              limit_type=options["limit_type"], stride=options["stride"],
                              max_side_len=options["max_side_len"]) for image in images]
    if len({item.frame.shape for item in prepared}) != 1:  # one request's frames share a size
        raise InvalidInputError("the frames of one request must have one size")
    frames = np.stack([item.frame for item in prepared])
    info = np.array([[*item.content, *item.original] for item in prepared], np.int32).reshape(len(prepared), 4)
    return frames, info


def request_boxes(prob: np.ndarray, info: np.ndarray, box_options: dict) -> list[list[TextBox]]:
    """The boxes of each (1, H', W') map of ``prob`` in its original image's pixels, from
    its ``FRAME_INFO`` row: the padding cut off, the scale undone."""
    if prob.ndim != 4 or prob.shape[1] != 1 or info.shape != (prob.shape[0], 4):
        raise InvalidInputError(f"expected prob (N, 1, H, W) and {FRAME_INFO} (N, 4), got {list(prob.shape)} and "
                                f"{list(info.shape)}")
    results = []
    for b in range(prob.shape[0]):
        ch, cw, height, width = (int(v) for v in info[b])
        if not (0 < ch <= prob.shape[2] and 0 < cw <= prob.shape[3]):
            raise InvalidInputError(f"{FRAME_INFO} row {b} says {ch}x{cw}, the map is {prob.shape[2]}x{prob.shape[3]}")
        results.append(boxes_from_prob(prob[b, 0, :ch, :cw], dest_size=(height, width), **box_options))
    return results


class _Step:
    """What both steps share: the stub's utilities, the options, tensors by DLPack."""

    def initialize(self, args: dict) -> None:
        import triton_python_backend_utils as pb_utils  # only inside Triton's stub

        self._pb = pb_utils
        config = json.loads(args["model_config"])
        self.options = json.loads(config["parameters"][STEP_PARAMETER]["string_value"])

    def execute(self, requests: list) -> list:
        pb = self._pb
        responses = []
        for request in requests:  # each request on its own: its frames have their own size
            try:
                outputs = self.run(request)
            except (EdgeDBError, MemoryError) as error:
                responses.append(pb.InferenceResponse(error=pb.TritonError(str(error))))
                continue
            responses.append(pb.InferenceResponse([pb.Tensor.from_dlpack(name, np.ascontiguousarray(array))
                                                   for name, array in outputs.items()]))
        return responses

    def run(self, request) -> dict:
        raise NotImplementedError

    def finalize(self) -> None:
        pass


class PreprocessModel(_Step):
    """``IMAGE`` (uint8 B x H x W x C) -> the network's input frames and ``FRAME_INFO``."""

    def run(self, request) -> dict:
        images = request_images(input_array(self._pb, request, INPUT_IMAGE), None, self.options["max_pixels"])
        frames, info = prepare_request(images, self.options)
        return {self.options["input_name"]: frames, FRAME_INFO: info}


class BoxesModel(_Step):
    """``prob`` and ``FRAME_INFO`` -> ``BOXES``, ``SIZES``, ``SCORES``, ``COUNTS``."""

    def run(self, request) -> dict:
        prob = input_array(self._pb, request, PROB)
        info = input_array(self._pb, request, FRAME_INFO)
        return pack_boxes(request_boxes(prob, info, self.options["boxes"]))
