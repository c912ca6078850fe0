"""Serving edgedb's detector on NVIDIA Triton Inference Server: a model repository
(``export_triton``), a real server on it (``TritonServer``; ``edgedb serve``), and a
client with ``EdgeDetector``'s API (``TritonDetector``)."""

from edgedb.serving.client import TritonDetector
from edgedb.serving.repository import export_triton
from edgedb.serving.server import TritonServer, find_tritonserver

__all__ = ["TritonDetector", "TritonServer", "export_triton", "find_tritonserver"]
