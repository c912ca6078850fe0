"""edgedb: DBNet text detection for edge devices (TensorRT on GPUs, ONNX Runtime on CPUs).

``import edgedb`` never imports TensorRT or pycuda; they load on first use of the
TensorRT backend (the ``tensorrt`` extra: ``pip install 'dbnet-edge[tensorrt]'``, or
``pip install -e '.[tensorrt]'`` in a checkout). The distribution is ``dbnet-edge``
(``edgedb`` on PyPI is the EdgeDB database client); the import package is ``edgedb``.
"""

from edgedb._version import __version__
from edgedb.boxes import TextBox, boxes_from_prob
from edgedb.detector import EdgeDetector
from edgedb.errors import (
    EdgeDBError,
    EngineError,
    InvalidInputError,
    InvalidInputTypeError,
    MissingDependencyError,
    ModelError,
    ServingError,
)
from edgedb.spec import ModelSpec

__all__ = [
    "EdgeDBError",
    "EngineError",
    "InvalidInputError",
    "InvalidInputTypeError",
    "MissingDependencyError",
    "ModelError",
    "ServingError",
    "EdgeDetector",
    "ModelSpec",
    "TextBox",
    "boxes_from_prob",
    "__version__",
]
