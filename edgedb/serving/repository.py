"""``export_triton``: a Triton model repository that serves edgedb's detector.

Two layouts:

``python`` (the default): one Python-backend model (``edgedb_det`` unless named
otherwise): its ``config.pbtxt`` (inputs, outputs, dynamic batching with a bounded queue,
instance groups, the detector's options and edgedb's version as parameters),
``<version>/model.py`` (a few lines that import ``edgedb.serving.triton_model``) and the
model itself beside it: the deployable ONNX (rewritten, converted to the asked precision
once, here) or a TensorRT engine with its sidecar. Everything ``EdgeDetector`` does,
tiling included, runs in the instance.

``ensemble``: Triton runs the network itself (``<name>_net``: ``tensorrt_plan`` for an
engine, ``onnxruntime_onnx`` for an ONNX model) between two Python-backend steps,
``<name>_pre`` (resize and pad) and ``<name>_post`` (box formation), under an ensemble
named ``<name>`` with the same inputs (``IMAGE`` only) and outputs as the python layout.
Same-size frames of concurrent requests batch on the device with no Python process in
the way. Images above ``max_side_len`` are scaled down (no tiling: one network call per
frame).

The node that serves either needs edgedb installed in the Python that Triton's stub runs;
the exporting environment's site-packages are named in each ``model.py`` and used where
they exist (``edgedb serve`` on this machine).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np

from edgedb._checks import integer_at_least, thread_count
from edgedb._files import save_onnx, write_atomically
from edgedb._version import __version__
from edgedb.boxes import DEFAULT_BOXES, boxes_from_prob
from edgedb.errors import InvalidInputError
from edgedb.engine.sidecar import read_sidecar, sidecar_path
from edgedb.models import DEFAULT_MODEL, is_engine_file, load_deployable
from edgedb.preprocess import DEFAULT_LIMIT_SIDE_LEN, DEFAULT_LIMIT_TYPE, check_fixed_size, check_limits
from edgedb.serving.ensemble_steps import FRAME_INFO, PROB, STEP_PARAMETER
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
LAYOUTS = ("python", "ensemble")
#: A network model's ``platform`` in the ensemble layout -> the Triton backend that runs it.
PLATFORM_BACKENDS = {"onnxruntime_onnx": "onnxruntime", "tensorrt_plan": "tensorrt"}
#: The detector options the ensemble layout's steps take (the rest need EdgeDetector itself).
ENSEMBLE_OPTIONS = ("limit_side_len", "limit_type", "max_side_len", "input_size", *DEFAULT_BOXES)

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

{import_line}  # noqa: E402,F401
'''
_IMPORT_DETECTOR = "from edgedb.serving.triton_model import TritonPythonModel"


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
    layout: str = "python",
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
        layout: ``"python"`` (EdgeDetector in each instance) or ``"ensemble"`` (Triton
            runs the network between a Python preprocessing and a box-formation step; see
            the module doc). In the ensemble, ``instances`` and ``threads`` apply to each
            step and to an ONNX network, and ``backend`` must be ``"auto"``, or
            ``"tensorrt"`` with an engine, or ``"onnxruntime"`` with an ONNX model.
    """
    if layout not in LAYOUTS:
        raise InvalidInputError(f"layout must be one of {', '.join(LAYOUTS)}, not {layout!r}")
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
    if is_engine_file(model) and precision is not None:
        raise InvalidInputError("an engine carries its precision; leave precision out")
    output = Path(output)
    if site_paths is None:
        site_paths = [p for p in sys.path if p.endswith(("site-packages", "dist-packages")) and os.path.isdir(p)]
    if layout == "ensemble":
        _write_ensemble(model, output, name=name, version=version, backend=backend, precision=precision, calib=calib,
                        max_batch=max_batch, instances=instances, threads=threads, max_queue=max_queue,
                        queue_delay_us=queue_delay_us, max_pixels=max_pixels, options=options,
                        site_paths=list(site_paths))
        return output
    folder = output / name / str(version)
    folder.mkdir(parents=True, exist_ok=True)
    gpu = is_engine_file(model) or backend == "tensorrt"
    if is_engine_file(model):
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
    write_atomically(folder / "model.py", _MODEL_PY.format(version=__version__, site_paths=list(site_paths),
                                                           import_line=_IMPORT_DETECTOR))
    write_atomically(output / name / "config.pbtxt", _config(
        name, max_batch=max_batch, instances=instances, gpu=gpu, max_queue=max_queue, queue_delay_us=queue_delay_us,
        parameters={OPTIONS_PARAMETER: json.dumps(stored), "edgedb_version": __version__,
                    "edgedb_model": str(model), "edgedb_spec": spec_json or "from the engine's sidecar"}))
    return output


def _config(name: str, *, max_batch: int, instances: int, gpu: bool, max_queue: int, queue_delay_us: int,
            parameters: dict) -> str:
    return _python_config(
        name, "edgedb export triton", max_batch=max_batch, instances=instances, gpu=gpu, max_queue=max_queue,
        queue_delay_us=queue_delay_us, parameters=parameters, outputs=_OUTPUTS,
        inputs=[(INPUT_IMAGE, "TYPE_UINT8", [-1, -1, -1], "optional: true"),
                (INPUT_ENCODED, "TYPE_UINT8", [-1], "optional: true allow_ragged_batch: true")])


# -- the ensemble layout ---------------------------------------------------------------


def _write_ensemble(model, output: Path, *, name: str, version: int, backend: str, precision, calib,
                    max_batch: int, instances: int, threads: int, max_queue: int, queue_delay_us: int,
                    max_pixels: int, options: dict, site_paths: list) -> None:
    """The four models of the ensemble layout (module doc), written under ``output``."""
    unknown = sorted(set(options) - set(ENSEMBLE_OPTIONS))
    if unknown:
        raise InvalidInputError(f"layout 'ensemble' takes the detector options {', '.join(ENSEMBLE_OPTIONS)}; "
                                f"not {', '.join(unknown)} (those need EdgeDetector itself: layout 'python')")
    boxes = {key: options.get(key, value) for key, value in DEFAULT_BOXES.items()}
    boxes_from_prob(np.zeros((1, 1), np.float32), **boxes)  # bad box options fail at export, not per request
    limit_side_len, limit_type, max_side_len = check_limits(options.get("limit_side_len", DEFAULT_LIMIT_SIDE_LEN),
                                                            options.get("limit_type", DEFAULT_LIMIT_TYPE),
                                                            options.get("max_side_len", 4096))
    net_folder = output / f"{name}_net" / str(version)
    net_folder.mkdir(parents=True, exist_ok=True)
    if is_engine_file(model):
        if backend not in ("auto", "tensorrt"):
            raise InvalidInputError(f"an engine runs on Triton's TensorRT backend, not {backend!r}: leave backend out")
        sidecar = read_sidecar(model)
        spec, profile = sidecar.spec, sidecar.profiles[0]
        if profile.layout != "NHWC":
            raise InvalidInputError(f"{model} takes {profile.layout} float input (a plain export); the ensemble feeds "
                                    "uint8 frames: build the engine from the model edgedb rewrites (edgedb build)")
        if max_batch > profile.max_batch or profile.min[0] != 1:
            raise InvalidInputError(f"max_batch {max_batch} must lie within the engine's profile batches "
                                    f"{profile.min[0]}..{profile.max_batch}, from 1: lower max_batch or rebuild")
        frame_dims = [-1, -1] if not profile.static else list(profile.min[1:])
        shutil.copyfile(model, net_folder / "model.plan")
        shutil.copyfile(sidecar_path(model), net_folder / sidecar_path(model).name)
        net = _net_config(f"{name}_net", "tensorrt_plan", spec.input_name, frame_dims, max_batch=max_batch,
                          instances=instances, gpu=True, max_queue=max_queue, queue_delay_us=queue_delay_us)
    else:
        if backend not in ("auto", "onnxruntime", "cpu"):
            raise InvalidInputError(f"layout 'ensemble' runs an ONNX model on Triton's ONNX Runtime backend, not "
                                    f"{backend!r}: for TensorRT, build an engine on the GPU node (edgedb build) and "
                                    "export that")
        from edgedb.engine.precision import precision_model

        proto, spec = load_deployable(model)
        if precision is not None:
            proto = precision_model(proto, precision, calib=calib, limit_side_len=limit_side_len,
                                    limit_type=limit_type, input_size=options.get("input_size"))
        dims = [d.dim_value or -1 for d in next(i for i in proto.graph.input if i.name == spec.input_name)
                .type.tensor_type.shape.dim]
        if len(dims) != 4 or dims[3] != 3:
            raise InvalidInputError(f"the model's input {spec.input_name!r} is {dims}, not uint8 N x H x W x 3")
        save_onnx(proto, net_folder / "model.onnx")
        net = _net_config(f"{name}_net", "onnxruntime_onnx", spec.input_name, dims[1:3], max_batch=max_batch,
                          instances=instances, gpu=False, max_queue=max_queue, queue_delay_us=queue_delay_us,
                          threads=threads)
    input_size = options.get("input_size")
    if input_size is not None:
        input_size = list(check_fixed_size(tuple(input_size), spec.stride))
    pre_options = {"limit_side_len": limit_side_len, "limit_type": limit_type, "max_side_len": max_side_len,
                   "input_size": input_size, "stride": spec.stride, "max_pixels": max_pixels,
                   "input_name": spec.input_name}
    common = {"edgedb_version": __version__, "edgedb_model": str(model)}
    steps = (("pre", "PreprocessModel", pre_options), ("post", "BoxesModel", {"boxes": boxes}))
    for step, cls, step_options in steps:
        folder = output / f"{name}_{step}" / str(version)
        folder.mkdir(parents=True, exist_ok=True)
        write_atomically(folder / "model.py", _MODEL_PY.format(
            version=__version__, site_paths=site_paths,
            import_line=f"from edgedb.serving.ensemble_steps import {cls} as TritonPythonModel"))
    write_atomically(output / f"{name}_pre" / "config.pbtxt", _step_config(
        f"{name}_pre", max_batch=max_batch, instances=instances, max_queue=max_queue,
        inputs=[(INPUT_IMAGE, "TYPE_UINT8", [-1, -1, -1])],
        outputs=[(spec.input_name, "TYPE_UINT8", [-1, -1, 3]), (FRAME_INFO, "TYPE_INT32", [4])],
        parameters={STEP_PARAMETER: json.dumps(pre_options), **common}))
    write_atomically(output / f"{name}_post" / "config.pbtxt", _step_config(
        f"{name}_post", max_batch=max_batch, instances=instances, max_queue=max_queue,
        inputs=[(PROB, "TYPE_FP32", [1, -1, -1]), (FRAME_INFO, "TYPE_INT32", [4])], outputs=_OUTPUTS,
        parameters={STEP_PARAMETER: json.dumps({"boxes": boxes}), **common}))
    write_atomically(output / f"{name}_net" / "config.pbtxt", net)
    (output / name / str(version)).mkdir(parents=True, exist_ok=True)  # an ensemble's version folder is empty
    write_atomically(output / name / "config.pbtxt", _ensemble_config(name, spec.input_name, max_batch=max_batch))


_OUTPUTS = [(OUTPUT_BOXES, "TYPE_FP32", [-1, -1, 2]), (OUTPUT_SIZES, "TYPE_INT32", [-1]),
            (OUTPUT_SCORES, "TYPE_FP64", [-1]), (OUTPUT_COUNTS, "TYPE_INT32", [1])]


def _text(value: str) -> str:
    return json.dumps(value)  # a protobuf text-format string: JSON's escapes are valid there


def _tensors(tensors) -> str:
    """Config entries of (name, data type, dims[, further fields]) tuples."""
    return ",\n".join(f"  {{ name: {_text(n)} data_type: {t} dims: [ {', '.join(str(d) for d in dims)} ]"
                      f"{''.join(' ' + field for field in more)} }}" for n, t, dims, *more in tensors)


def _parameters(parameters: dict) -> str:
    return ",\n".join(f'  {{ key: {_text(key)} value: {{ string_value: {_text(value)} }} }}'
                      for key, value in parameters.items())


def _batching(max_queue: int, queue_delay_us: int) -> str:
    return f"""dynamic_batching {{
  max_queue_delay_microseconds: {queue_delay_us}
  default_queue_policy {{ max_queue_size: {max_queue} }}
}}"""


def _python_config(name: str, written_by: str, *, max_batch: int, instances: int, gpu: bool, max_queue: int,
                   queue_delay_us: int, inputs, outputs, parameters: dict) -> str:
    """A Python-backend model's config: the python layout's model and the ensemble's steps."""
    return f"""\
# Written by {written_by} (edgedb {__version__}).
name: {_text(name)}
backend: "python"
max_batch_size: {max_batch}
input [
{_tensors(inputs)}
]
output [
{_tensors(outputs)}
]
{_batching(max_queue, queue_delay_us)}
instance_group [ {{ count: {instances} kind: {"KIND_GPU" if gpu else "KIND_CPU"} }} ]
parameters [
{_parameters(parameters)}
]
"""


def _step_config(name: str, *, max_batch: int, instances: int, max_queue: int, inputs, outputs,
                 parameters: dict) -> str:
    # No batching delay in the steps: they take each request as it comes; the network batches.
    return _python_config(name, "edgedb export triton --layout ensemble", max_batch=max_batch, instances=instances,
                          gpu=False, max_queue=max_queue, queue_delay_us=0, inputs=inputs, outputs=outputs,
                          parameters=parameters)


def _net_config(name: str, platform: str, input_name: str, frame_dims: list, *, max_batch: int, instances: int,
                gpu: bool, max_queue: int, queue_delay_us: int, threads: Optional[int] = None) -> str:
    height, width = frame_dims
    extra = ""
    if threads is not None:  # Triton's ONNX Runtime backend: intra-op threads per instance
        extra = f"""parameters [
{_parameters({"intra_op_thread_count": str(threads), "inter_op_thread_count": "1"})}
]
"""
    return f"""\
# Written by edgedb export triton --layout ensemble (edgedb {__version__}).
name: {_text(name)}
platform: {_text(platform)}
max_batch_size: {max_batch}
input [
{_tensors([(input_name, "TYPE_UINT8", [height, width, 3])])}
]
output [
{_tensors([(PROB, "TYPE_FP32", [1, height, width])])}
]
{_batching(max_queue, queue_delay_us)}
instance_group [ {{ count: {instances} kind: {"KIND_GPU" if gpu else "KIND_CPU"} }} ]
{extra}"""


def _ensemble_config(name: str, input_name: str, *, max_batch: int) -> str:
    outputs = "\n".join(f"      output_map {{ key: {_text(n)} value: {_text(n)} }}" for n, _, _ in _OUTPUTS)
    return f"""\
# Written by edgedb export triton --layout ensemble (edgedb {__version__}).
name: {_text(name)}
platform: "ensemble"
max_batch_size: {max_batch}
input [
{_tensors([(INPUT_IMAGE, "TYPE_UINT8", [-1, -1, -1])])}
]
output [
{_tensors(_OUTPUTS)}
]
ensemble_scheduling {{
  step [
    {{
      model_name: {_text(name + "_pre")}
      model_version: -1
      input_map {{ key: {_text(INPUT_IMAGE)} value: {_text(INPUT_IMAGE)} }}
      output_map {{ key: {_text(input_name)} value: "frames" }}
      output_map {{ key: {_text(FRAME_INFO)} value: "frame_info" }}
    }},
    {{
      model_name: {_text(name + "_net")}
      model_version: -1
      input_map {{ key: {_text(input_name)} value: "frames" }}
      output_map {{ key: {_text(PROB)} value: "prob_map" }}
    }},
    {{
      model_name: {_text(name + "_post")}
      model_version: -1
      input_map {{ key: {_text(PROB)} value: "prob_map" }}
      input_map {{ key: {_text(FRAME_INFO)} value: "frame_info" }}
{outputs}
    }}
  ]
}}
"""
