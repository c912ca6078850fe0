"""``TritonDetector``: ``EdgeDetector``'s API over a Triton server (``edgedb serve`` or a
repository from ``export_triton``), so moving from in-process to served is one line.

HTTP or gRPC through ``tritonclient`` (the ``serve`` extra: ``pip install
'dbnet-edge[serve]'``), imported on first use. Arrays are sent raw (uint8 frames);
image paths are sent as their file bytes (``ENCODED``), decoded by the server, where the
served model takes them (the ``python`` layout); otherwise (the ``ensemble`` layout) they
are decoded here and sent as frames.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np

from edgedb._extras import import_optional
from edgedb.boxes import TextBox
from edgedb.errors import InvalidInputError, InvalidInputTypeError, ServingError
from edgedb.preprocess import read_image
from edgedb.serving.protocol import DEFAULT_MODEL_NAME, INPUT_ENCODED, INPUT_IMAGE, OUTPUTS, unpack_boxes

EXTRA = "pip install 'dbnet-edge[serve]' (tritonclient[http,grpc])"


def _import_client(protocol: str):
    client = import_optional("tritonclient.grpc" if protocol == "grpc" else "tritonclient.http", "the Triton client", EXTRA)
    return client, import_optional("tritonclient.utils", "the Triton client", EXTRA).InferenceServerException


class TritonDetector:
    """Text detection by a served edgedb model.

    Args:
        url: ``host:port``, optionally ``http://`` or ``grpc://`` first (default
            ``127.0.0.1:8000``, HTTP).
        protocol: ``"http"`` or ``"grpc"`` (default: from the URL's scheme, else HTTP).
        model_name: the served model (default ``edgedb_det``).
        timeout: seconds a request may take before it fails (not hangs).

    Raises:
        ServingError: the server cannot be reached or the model is not ready.
    """

    def __init__(self, url: str = "127.0.0.1:8000", *, protocol: Optional[str] = None,
                 model_name: str = DEFAULT_MODEL_NAME, timeout: float = 60.0):
        scheme, _, rest = url.partition("://")
        if rest:
            url = rest
            protocol = protocol or scheme
        protocol = protocol or "http"
        if protocol not in ("http", "grpc"):
            raise InvalidInputError(f"protocol must be 'http' or 'grpc', not {protocol!r}")
        self.url, self.protocol, self.model_name, self.timeout = url, protocol, model_name, timeout
        self._module, self._server_error = _import_client(protocol)
        if protocol == "http":
            self._client = self._module.InferenceServerClient(url, connection_timeout=timeout, network_timeout=timeout)
        else:
            self._client = self._module.InferenceServerClient(url)
        try:
            ready = self._client.is_model_ready(model_name)
        except Exception as error:  # connection refused, DNS, ...: tritonclient raises several kinds
            self.close()
            raise ServingError(f"cannot reach a Triton server at {url} ({protocol}): {error}") from None
        if not ready:
            self.close()
            raise ServingError(f"the Triton server at {url} has no ready model {model_name!r}")
        try:
            metadata = (self._client.get_model_metadata(model_name) if protocol == "http"
                        else self._client.get_model_metadata(model_name, as_json=True))
        except self._server_error as error:
            self.close()
            raise ServingError(f"cannot read {model_name!r}'s metadata at {url}: {error.message()}") from None
        #: Whether the served model decodes image files itself (ENCODED), or takes frames only.
        self.takes_encoded = INPUT_ENCODED in {item["name"] for item in metadata.get("inputs", [])}

    def detect(self, image: Union[np.ndarray, str, Path]) -> list[TextBox]:
        """Text boxes of one image: a BGR uint8 array (H, W, 3; gray or BGRA too) or an
        image file's path (sent encoded)."""
        if isinstance(image, (str, Path)):
            if not self.takes_encoded:
                return self._infer(INPUT_IMAGE, read_image(image)[None])[0]
            return self.detect_encoded(Path(image).read_bytes())
        return self._infer(INPUT_IMAGE, _as_frame(image)[None])[0]

    def detect_encoded(self, data: bytes) -> list[TextBox]:
        """Text boxes of one JPEG/PNG file's bytes, decoded by the server."""
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise InvalidInputTypeError(f"detect_encoded takes bytes, not {type(data).__name__}")
        if not self.takes_encoded:
            raise InvalidInputError(f"{self.model_name} takes frames only (IMAGE; an ensemble layout): decode the "
                                    "file first (edgedb.preprocess.decode_image) and call detect()")
        return self._infer(INPUT_ENCODED, np.frombuffer(data, np.uint8)[None])[0]

    def detect_batch(self, images: Sequence[Union[np.ndarray, str, Path]]) -> list[list[TextBox]]:
        """Text boxes of several images; frames of one size go as one request."""
        if isinstance(images, (np.ndarray, str, Path)):
            raise InvalidInputError("detect_batch takes a sequence of images; use detect() for one")
        results: list = [None] * len(images)
        groups: dict = {}
        for index, image in enumerate(images):
            if isinstance(image, (str, Path)):
                results[index] = self.detect(image)
            else:
                frame = _as_frame(image)
                groups.setdefault(frame.shape, []).append((index, frame))
        for members in groups.values():
            found = self._infer(INPUT_IMAGE, np.stack([frame for _, frame in members]))
            for (index, _), boxes in zip(members, found):
                results[index] = boxes
        return results

    def _infer(self, name: str, array: np.ndarray) -> list[list[TextBox]]:
        module = self._module
        tensor = module.InferInput(name, list(array.shape), "UINT8")
        if self.protocol == "http":
            tensor.set_data_from_numpy(array, binary_data=True)
            outputs = [module.InferRequestedOutput(output, binary_data=True) for output in OUTPUTS]
        else:
            tensor.set_data_from_numpy(array)
            outputs = [module.InferRequestedOutput(output) for output in OUTPUTS]
        try:
            if self.protocol == "http":
                result = self._client.infer(self.model_name, [tensor], outputs=outputs)
            else:
                result = self._client.infer(self.model_name, [tensor], outputs=outputs, client_timeout=self.timeout)
        except self._server_error as error:
            raise ServingError(f"{self.model_name} at {self.url} refused the request: {error.message()}") from None
        except Exception as error:  # the connection dropped, a timeout
            raise ServingError(f"request to {self.model_name} at {self.url} failed: {error}") from None
        return unpack_boxes({output: result.as_numpy(output) for output in OUTPUTS})

    def close(self) -> None:
        client, self._client = getattr(self, "_client", None), None
        if client is not None:
            client.close()

    def __enter__(self) -> "TritonDetector":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"TritonDetector({self.protocol}://{self.url}, model_name={self.model_name!r})"


def _as_frame(image) -> np.ndarray:
    if not isinstance(image, np.ndarray):
        raise InvalidInputTypeError(f"image must be a numpy array or a path, not {type(image).__name__}")
    if image.dtype != np.uint8:
        raise InvalidInputTypeError(f"image must be uint8 (0..255), not {image.dtype}")
    if image.ndim == 2:
        image = image[:, :, None]
    if image.ndim != 3 or image.size == 0:
        raise InvalidInputError(f"image must be (H, W, 3) BGR, (H, W) gray or (H, W, 4) BGRA, not shape {image.shape}")
    return np.ascontiguousarray(image)
