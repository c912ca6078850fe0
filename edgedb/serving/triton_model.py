"""The Python-backend model Triton runs: ``EdgeDetector`` behind Triton's request API.

The repository's ``model.py`` (written by ``export_triton``) imports ``TritonPythonModel``
from here. Tensors cross the Triton stub by DLPack, never by ``as_numpy()`` or
``Tensor(name, array)``: the stub's pybind11 reads NumPy 2 arrays' descriptors wrongly and
sends empty outputs without an error (seen with tritonserver 2.51 and NumPy 2.4).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from edgedb.detector import EdgeDetector
from edgedb.errors import EdgeDBError, InvalidInputError
from edgedb.preprocess import as_bgr_image, decode_image
from edgedb.serving.protocol import INPUT_ENCODED, INPUT_IMAGE, pack_boxes

#: The config parameter holding the detector's options (JSON), written by export_triton.
OPTIONS_PARAMETER = "edgedb"


def request_images(image, encoded, max_pixels: int) -> list[np.ndarray]:
    """The BGR images of one request, from its ``IMAGE`` or ``ENCODED`` tensor (NumPy
    arrays, batch first, or None), each checked against ``max_pixels``."""
    if (image is None) == (encoded is None):
        raise InvalidInputError(f"send exactly one of {INPUT_IMAGE} (uint8 BxHxWxC) and {INPUT_ENCODED} "
                                "(uint8 BxN file bytes)")
    if encoded is not None:
        return [decode_image(row, max_pixels=max_pixels, name=f"{INPUT_ENCODED}[{b}]") for b, row in enumerate(encoded)]
    if image.ndim != 4 or image.shape[3] not in (1, 3, 4):
        raise InvalidInputError(f"{INPUT_IMAGE} must be uint8 B x H x W x C with C = 1, 3 or 4 (gray, BGR, BGRA), "
                                f"not shape {list(image.shape)}")
    height, width = image.shape[1:3]
    if height * width > max_pixels:
        raise InvalidInputError(f"a {height}x{width} frame is {height * width:,} pixels, over this model's limit of "
                                f"{max_pixels:,} (export it with a larger max_pixels / --max-pixels)")
    return [as_bgr_image(frame) for frame in image]


def input_array(pb_utils, request, name: str):
    """A request's input ``name`` as a NumPy array (by DLPack), or None where it is absent."""
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    return None if tensor is None else np.from_dlpack(tensor)


class TritonPythonModel:
    """One instance per Triton model instance; each holds its own ``EdgeDetector``."""

    def initialize(self, args: dict) -> None:
        import triton_python_backend_utils as pb_utils  # only inside Triton's stub

        self._pb = pb_utils
        config = json.loads(args["model_config"])
        options = json.loads(config["parameters"][OPTIONS_PARAMETER]["string_value"])
        model = Path(args["model_repository"]) / args["model_version"] / options.pop("model_file")
        self.max_pixels = options.pop("max_pixels")
        if args.get("model_instance_kind") == "GPU":
            options["device"] = int(args["model_instance_device_id"])
        self.detector = EdgeDetector(model, **options)

    def execute(self, requests: list) -> list:
        pb = self._pb
        images, owners, errors = [], [], {}
        for index, request in enumerate(requests):
            try:
                found = request_images(input_array(pb, request, INPUT_IMAGE), input_array(pb, request, INPUT_ENCODED),
                                       self.max_pixels)
            except EdgeDBError as error:
                errors[index] = str(error)
                continue
            images += found
            owners += [index] * len(found)
        try:  # frames of one size from several requests run as one batch
            results = self.detector.detect_batch(images) if images else []
        except (EdgeDBError, MemoryError) as error:
            results, errors = [], {**errors, **{i: f"detection failed: {error}" for i in set(owners)}}
        per_request: dict[int, list] = {}
        for owner, boxes in zip(owners, results):
            per_request.setdefault(owner, []).append(boxes)
        responses = []
        for index in range(len(requests)):
            if index in errors:
                responses.append(pb.InferenceResponse(error=pb.TritonError(errors[index])))
                continue
            packed = pack_boxes(per_request.get(index, []))
            responses.append(pb.InferenceResponse([pb.Tensor.from_dlpack(name, array)
                                                   for name, array in packed.items()]))
        return responses

    def finalize(self) -> None:
        self.detector.close()
