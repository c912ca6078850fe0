"""``export_triton``: a Triton model repository that serves edgedb's detector.

The repository holds one Python-backend model (``edgedb_det`` unless named otherwise):
its ``config.pbtxt`` (inputs, outputs, dynamic batching with a bounded queue, instance
groups, the detector's options and edgedb's version as parameters), ``<version>/model.py``
(a few lines that import ``edgedb.serving.triton_model``) and the model itself beside it:
the deployable ONNX (rewritten, converted to the asked precision once, here) or a TensorRT
engine with its sidecar. The node that serves it needs edgedb installed in the Python
that Triton's stub runs; the exporting environment's site-packages are named in
``model.py`` and used where they exist (``edgedb serve`` on this machine).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path
from typing import Optional, Sequence, Union

from edgedb._checks import integer_at_least, thread_count
from edgedb._files import save_onnx, write_atomically
from edgedb._version import __version__
from edgedb.errors import InvalidInputError
from edgedb.engine.sidecar import sidecar_path
from edgedb.models import DEFAULT_MODEL, is_engine_file, load_deployable
from edgedb.preprocess import DEFAULT_LIMIT_SIDE_LEN, DEFAULT_LIMIT_TYPE
from edgedb.serving.protocol import (
    DEFAULT_MODEL_NAME,
    INPUT_ENCODED,
    INPUT_IMAGE,
    OUTPUT_BOXES,
    OUTPUT_COUNTS,
    OUTPUT_SCORES,
    OUTPUT_SIZES,
)
from edgedb.serving.triton_model import OPTIONS_PARAMETER

#: A served frame's pixels at most, unless told otherwise: 8K UHD with room (a 20000x20000
#: frame would hold an instance for minutes and its copies take gigabytes).
DEFAULT_MAX_PIXELS = 8192 * 8192
#: Requests waiting beyond these are refused at once ("exceeds maximum queue size").
DEFAULT_MAX_QUEUE = 64
DEFAULT_QUEUE_DELAY_US = 2000

_MODEL_PY = '''\
"""Written by edgedb export triton (edgedb {version}): Triton's Python backend loads this."""
import os
import site
import sys

# The site-packages of the environment that exported this repository, first on the path
# where they exist (Triton's stub runs the system's libpython, which does not know them).
_before = list(sys.path)
for _path in {site_paths!r}:
    if os.path.isdir(_path):
        site.addsitedir(_path)
sys.path[:] = [p for p in sys.path if p not in _before] + _before

from edgedb.serving.triton_model import TritonPythonModel  # noqa: E402,F401
'''


def export_triton(
    model: Union[str, Path] = DEFAULT_MODEL,
    output: Union[str, Path] = "triton_repository",
    *,
    name: str = DEFAULT_MODEL_NAME,
    version: int = 1,
    backend: str = "auto",
    precision: Optional[str] = None,
    calib=None,
    max_batch: int = 8,
    instances: int = 2,
    threads: Optional[int] = None,
    max_queue: int = DEFAULT_MAX_QUEUE,
    queue_delay_us: int = DEFAULT_QUEUE_DELAY_US,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    detector_options: Optional[dict] = None,
    site_paths: Optional[Sequence[str]] = None,
) -> Path:
    """Writes a Triton model repository serving ``model`` to ``output`` and returns it.

    Args:
        model: a zoo name, a DBNet ONNX export or edgedb ONNX, or a TensorRT engine
            (served on GPU instances, ``KIND_GPU``).
        name, version: the served model's name and version folder.
        backend: what each instance's ``EdgeDetector`` runs on (``"auto"``: TensorRT on a
            GPU node with the tensorrt extra, else ONNX Runtime).
        precision, calib: converted here, once (INT8 calibration runs at export).
        max_batch: Triton's ``max_batch_size``: same-size frames of concurrent requests
            run as one ``detect_batch`` of at most this many.
        instances: model instances (each a process with its own detector).
        threads: CPU threads per instance (default: the cores shared among instances).
        max_queue, queue_delay_us: the dynamic batcher's queue bound (requests beyond it
            are refused at once) and how long it waits to fill a batch.
        max_pixels: frames (raw or decoded) above this many pixels get an error response.
        detector_options: further ``EdgeDetector`` keywords (``limit_side_len``,
            ``box_thresh``, ``tile``, ...), stored as JSON in the config.
        site_paths: site-packages for ``model.py`` to put on the stub's path (default:
            this environment's).
    """
    for label, value, low in (("version", version, 1), ("max_batch", max_batch, 1), ("instances", instances, 1),
                              ("max_queue", max_queue, 1), ("queue_delay_us", queue_delay_us, 0),
                              ("max_pixels", max_pixels, 1)):
        integer_at_least(label, value, low)
    if not name or not all(c.isalnum() or c in "_-" for c in name):
        raise InvalidInputError(f"name must be letters, digits, '_' or '-', not {name!r}")
    options = dict(detector_options or {})
    clash = {"model", "backend", "precision", "threads", "max_batch", "calib"} & set(options)
    if clash:
        raise InvalidInputError(f"detector_options must not hold {', '.join(sorted(clash))}: pass them as arguments")
    cores = os.cpu_count() or 1
    threads = threads if threads is not None else max(1, cores // instances)
    thread_count("threads", threads)
    output = Path(output)
    folder = output / name / str(version)
    folder.mkdir(parents=True, exist_ok=True)
    gpu = is_engine_file(model) or backend == "tensorrt"
    if is_engine_file(model):
        if precision is not None:
            raise InvalidInputError("an engine carries its precision; leave precision out")
        model_file = Path(model).name
        shutil.copyfile(model, folder / model_file)
        sidecar = sidecar_path(model)
        if sidecar.is_file():
            shutil.copyfile(sidecar, folder / sidecar.name)
        spec_json = None
    else:
        from edgedb.engine.precision import precision_model

        proto, spec = load_deployable(model)
        if precision is not None:
            proto = precision_model(proto, precision, calib=calib, limit_side_len=options.get("limit_side_len", DEFAULT_LIMIT_SIDE_LEN),
                                    limit_type=options.get("limit_type", DEFAULT_LIMIT_TYPE), input_size=options.get("input_size"))
        model_file = "model.onnx"
        save_onnx(proto, folder / model_file)
        spec_json = spec.to_json()
    stored = dict(options, model_file=model_file, max_pixels=max_pixels, backend=backend, threads=threads,
                  max_batch=max_batch)
    if site_paths is None:
        site_paths = [p for p in sys.path if p.endswith(("site-packages", "dist-packages")) and os.path.isdir(p)]
    write_atomically(folder / "model.py", _MODEL_PY.format(version=__version__, site_paths=list(site_paths)))
    write_atomically(output / name / "config.pbtxt", _config(
        name, max_batch=max_batch, instances=instances, gpu=gpu, max_queue=max_queue, queue_delay_us=queue_delay_us,
        parameters={OPTIONS_PARAMETER: json.dumps(stored), "edgedb_version": __version__,
                    "edgedb_model": str(model), "edgedb_spec": spec_json or "from the engine's sidecar"}))
    return output


def _config(name: str, *, max_batch: int, instances: int, gpu: bool, max_queue: int, queue_delay_us: int,
            parameters: dict) -> str:
    def text(value: str) -> str:
        return json.dumps(value)  # a protobuf text-format string: JSON's escapes are valid there

    params = ",\n".join(f'  {{ key: {text(key)} value: {{ string_value: {text(value)} }} }}'
                        for key, value in parameters.items())
    return f"""\
# Written by edgedb export triton (edgedb {__version__}).
name: {text(name)}
backend: "python"
max_batch_size: {max_batch}
input [
  {{ name: "{INPUT_IMAGE}" data_type: TYPE_UINT8 dims: [ -1, -1, -1 ] optional: true }},
  {{ name: "{INPUT_ENCODED}" data_type: TYPE_UINT8 dims: [ -1 ] optional: true allow_ragged_batch: true }}
]
output [
  {{ name: "{OUTPUT_BOXES}" data_type: TYPE_FP32 dims: [ -1, -1, 2 ] }},
  {{ name: "{OUTPUT_SIZES}" data_type: TYPE_INT32 dims: [ -1 ] }},
  {{ name: "{OUTPUT_SCORES}" data_type: TYPE_FP64 dims: [ -1 ] }},
  {{ name: "{OUTPUT_COUNTS}" data_type: TYPE_INT32 dims: [ 1 ] }}
]
dynamic_batching {{
  max_queue_delay_microseconds: {queue_delay_us}
  default_queue_policy {{ max_queue_size: {max_queue} }}
}}
instance_group [ {{ count: {instances} kind: {"KIND_GPU" if gpu else "KIND_CPU"} }} ]
parameters [
{params}
]
"""
