"""Building TensorRT engines: ONNX in the chosen precision -> engine + JSON sidecar.

Every build parses a strongly typed network: the precision is in the ONNX's types and
Q/DQ pairs, which TensorRT 10 and 11 both take (11 removed the FP16/INT8 flags). The one
exception is the DLA on TensorRT 10.x, which runs only FP16/INT8 and is reached through a
weakly typed network with those flags (``edgedb.engine.compat``).

The TensorRT calls are kept to this one function; what can be decided without a GPU
(options, profiles, sidecars, the precision conversion) lives in the modules around it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Union

from edgedb.engine import compat
from edgedb.engine.profiles import Profile, limit_profile, static_profile
from edgedb.engine.sidecar import EngineSidecar, file_sha256, sidecar_path, write_engine
from edgedb.errors import EngineError, InvalidInputError

log = logging.getLogger(__name__)

DEFAULT_WORKSPACE_MIB = 1024


@dataclass(frozen=True)
class BuildOptions:
    """How TensorRT builds (the ``edgedb build`` flags of the same names).

    Attributes:
        workspace_mib: the workspace memory pool limit (TensorRT's default: all the GPU has).
        timing_cache: file of measured kernel timings, read before and written after the
            build, so later builds of the same shapes on this GPU are fast. Default: a
            file per GPU and TensorRT version beside the engine.
        dla_core: build for this DLA core (Jetson AGX Orin/Orin NX) instead of the GPU:
            FP16 or INT8 only, static shapes only.
        gpu_fallback: with dla_core, let layers the DLA cannot run fall back to the GPU
            (without it such a layer fails the build).
        builder_optimization_level: 0..5 (TensorRT's default 3); higher builds slower and
            may find faster kernels.
    """

    workspace_mib: Optional[int] = None
    timing_cache: Optional[Path] = None
    dla_core: Optional[int] = None
    gpu_fallback: bool = False
    builder_optimization_level: Optional[int] = None

    def __post_init__(self):
        if self.workspace_mib is not None and int(self.workspace_mib) <= 0:
            raise InvalidInputError(f"workspace_mib must be positive, not {self.workspace_mib}")
        if self.dla_core is not None and int(self.dla_core) < 0:
            raise InvalidInputError(f"dla_core must be 0 or more, not {self.dla_core}")
        if self.gpu_fallback and self.dla_core is None:
            raise InvalidInputError("gpu_fallback only applies to DLA builds: give dla_core too")
        level = self.builder_optimization_level
        if level is not None and not 0 <= int(level) <= 5:
            raise InvalidInputError(f"builder_optimization_level must be 0..5, not {level}")

    def recorded(self) -> dict:
        """The options as the sidecar records them (and ``rebuild_command`` replays them)."""
        data = dataclasses.asdict(self)
        data["workspace"] = data.pop("workspace_mib")  # the CLI flag is --workspace MiB
        data["timing_cache"] = str(self.timing_cache) if self.timing_cache else None
        return data


def check_dla_profile(profile: Profile, options: BuildOptions, precision: str) -> None:
    """The DLA needs static shapes and FP16 or INT8 (TensorRT's DLA restrictions)."""
    if options.dla_core is None:
        return
    if not profile.static or profile.min != profile.max:
        raise InvalidInputError("the DLA needs static shapes: build with a fixed input size "
                                "(input_size=(H, W), --input-size HxW) and max_batch 1")
    if precision == "fp32":
        raise InvalidInputError("the DLA runs FP16 or INT8 only: choose precision fp16, int8 or best")


def default_timing_cache(engine_path: Path, device_label: str) -> Path:
    slug = re.sub(r"[^A-Za-z0-9.]+", "-", device_label).strip("-").lower()
    return engine_path.parent / f"timing-{slug}.cache"


def choose_profile(
    *,
    input_size: Optional[tuple[int, int]] = None,
    image_sizes: Optional[Sequence[tuple[int, int]]] = None,
    limit_side_len: int = 736,
    limit_type: str = "min",
    max_side_len: int = 4096,
    max_batch: int = 1,
    stride: int = 32,
) -> Profile:
    """The profile of the detector's shape policy: static for ``input_size``, else the
    ``limit`` policy over ``image_sizes`` (see ``edgedb.engine.profiles``)."""
    if input_size is not None:
        if image_sizes:
            raise InvalidInputError("image_sizes apply to limit mode; with input_size every frame has that size")
        return static_profile(input_size, max_batch, stride=stride)
    return limit_profile(image_sizes, limit_side_len=limit_side_len, limit_type=limit_type,
                         max_side_len=max_side_len, stride=stride, max_batch=max_batch)


def build_engine(
    model,
    output: Union[str, Path],
    profile: Profile,
    *,
    options: BuildOptions = BuildOptions(),
    source: Union[str, Path] = "",
    source_sha256: str = "",
    device: int = 0,
    progress: bool = True,
    verbose: bool = False,
    recorded: Optional[dict] = None,
) -> EngineSidecar:
    """Builds an engine from a deployable ModelProto (in its final precision) and writes it
    with its sidecar.

    Args:
        model: the ONNX to build (``edgedb.engine.precision.precision_model`` makes it).
        output: the engine file; the sidecar goes beside it (``NAME.engine.json``).
        profile: the optimization profile of the image input.
        options: TensorRT build options.
        source, source_sha256: the model the user named, recorded in the sidecar.
        device: CUDA device index.
        progress: print a progress line while TensorRT builds.
        verbose: TensorRT's INFO messages too.
        recorded: more options to record in the sidecar (how the ONNX was made), as
            ``edgedb build`` flag names and values, so the rebuild command replays them.

    Raises:
        MissingDependencyError: tensorrt or pycuda is not installed.
        EngineError: TensorRT cannot parse the model or build it (its messages included).
        InvalidInputError: options that do not fit (DLA with dynamic shapes or FP32, ...).
    """
    from edgedb._version import __version__
    from edgedb.engine.gpu import CudaDevice
    from edgedb.engine.gpu import import_tensorrt, tensorrt_logger
    from edgedb.engine.precision import model_precision
    from edgedb.engine.progress import BuildProgress, progress_monitor
    from edgedb.engine.dla import pin_float32_islands
    from edgedb.engine.timing_cache import attach_timing_cache, save_timing_cache
    from edgedb.spec import spec_from_metadata

    trt = import_tensorrt()
    compat.check_supported(trt)
    spec = spec_from_metadata(model)
    if spec is None:
        raise InvalidInputError("build_engine takes a model rewritten by edgedb (see edgedb.engine.precision)")
    precision = model_precision(model)
    check_dla_profile(profile, options, precision)
    output = Path(output)
    if not output.parent.is_dir():
        raise InvalidInputError(f"the folder {output.parent} for the engine does not exist")

    logger = tensorrt_logger(trt, verbose)
    with CudaDevice(device) as cuda_device, cuda_device.activate():
        info = cuda_device.device_info(trt)
        timing_cache = options.timing_cache or default_timing_cache(
            output, f"{info.gpu_name}-sm{''.join(map(str, info.compute_capability))}-trt{info.tensorrt_version}")
        builder = trt.Builder(logger)
        weakly_typed_dla = options.dla_core is not None and compat.has_precision_flags(trt)
        network = builder.create_network(compat.network_flags(trt, strongly_typed=not weakly_typed_dla))
        parser = trt.OnnxParser(network, logger)
        with tempfile.TemporaryDirectory(prefix="edgedb-build-") as folder:
            import onnx

            path = os.path.join(folder, "model.onnx")
            onnx.save(model, path)
            if not parser.parse_from_file(path):
                errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
                raise EngineError(f"TensorRT {trt.__version__} cannot parse the model: {errors}")

        config = builder.create_builder_config()
        if options.workspace_mib:
            config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(options.workspace_mib) << 20)
        if options.builder_optimization_level is not None:
            config.builder_optimization_level = int(options.builder_optimization_level)
        trt_profile = builder.create_optimization_profile()
        minimum, optimum, maximum = profile.tensor_shapes()
        trt_profile.set_shape(spec.input_name, minimum, optimum, maximum)
        config.add_optimization_profile(trt_profile)
        if options.dla_core is not None:
            if options.dla_core >= builder.num_DLA_cores:
                raise InvalidInputError(f"no DLA core {options.dla_core}: this device has {builder.num_DLA_cores}")
            if weakly_typed_dla:
                for flag in compat.precision_flags(trt, fp16=True, int8=precision in ("int8", "best")):
                    config.set_flag(flag)
            config.default_device_type = trt.DeviceType.DLA
            config.DLA_core = int(options.dla_core)
            if options.gpu_fallback:
                config.set_flag(trt.BuilderFlag.GPU_FALLBACK)
            if weakly_typed_dla:  # the ONNX types are no constraints there: pin float32 (edgedb.engine.dla)
                pinned = pin_float32_islands(trt, network, config, gpu_fallback=options.gpu_fallback)
                if pinned:
                    log.info("DLA build: %d float32 layers pinned to float32 on the GPU", pinned)

        cache = attach_timing_cache(config, timing_cache)  # noqa: F841 (alive until the build ends)

        status = BuildProgress(label=f"building {output.name}")
        if progress and hasattr(trt, "IProgressMonitor"):
            config.progress_monitor = progress_monitor(trt, status)
        plan = builder.build_serialized_network(network, config)
        if plan is None:
            raise EngineError(f"TensorRT {trt.__version__} could not build the engine; its messages above say why "
                              "(run with verbose=True / -v for all of them)")
        save_timing_cache(config, timing_cache)

    data = memoryview(plan)

    sidecar = EngineSidecar(
        edgedb_version=__version__,
        device=info,
        precision=precision,
        profiles=(profile,),
        spec=spec,
        source_onnx=str(source),
        source_sha256=source_sha256,
        engine_sha256=hashlib.sha256(data).hexdigest(),
        engine_bytes=data.nbytes,
        build_options={**(recorded or {}), **dataclasses.replace(options, timing_cache=timing_cache).recorded()},
    )
    write_engine(output, data, sidecar)
    if progress:
        status.done(f"wrote {output} ({data.nbytes / 2**20:.1f} MiB) and {sidecar_path(output).name}")
    return sidecar


def build_from_model(
    model: Union[str, Path],
    output: Union[str, Path],
    *,
    precision: Optional[str] = None,
    calib=None,
    method: str = "percentile",
    input_size: Optional[tuple[int, int]] = None,
    image_sizes: Optional[Sequence[tuple[int, int]]] = None,
    limit_side_len: int = 736,
    limit_type: str = "min",
    max_batch: int = 1,
    profile: Optional[Profile] = None,
    options: BuildOptions = BuildOptions(),
    spec=None,
    device: int = 0,
    progress: bool = True,
    verbose: bool = False,
) -> EngineSidecar:
    """``edgedb build``: a zoo name, an export or an edgedb-rewritten/quantized ONNX ->
    engine + sidecar. The profile follows the detector's shape policy unless given (see
    ``choose_profile``); int8 and best calibrate on ``calib`` first. TensorRT is imported
    first, so a missing extra is reported before any CPU work.
    """
    from edgedb.engine.gpu import import_pycuda_driver, import_tensorrt
    from edgedb.engine.precision import model_precision, precision_model
    from edgedb.models import load_deployable, resolve_model

    import_tensorrt()
    import_pycuda_driver()
    path = resolve_model(model)
    deployable, _ = load_deployable(model, spec)
    if profile is None:
        profile = choose_profile(input_size=input_size, image_sizes=image_sizes, limit_side_len=limit_side_len,
                                 limit_type=limit_type, max_batch=max_batch)
    check_dla_profile(profile, options, precision or model_precision(deployable))
    final = precision_model(deployable, precision, calib=calib, method=method, limit_side_len=limit_side_len,
                            limit_type=limit_type, input_size=input_size)
    recorded = {"calib": str(calib) if calib is not None and not isinstance(calib, (list, tuple)) else None,
                "method": method if model_precision(final) in ("int8", "best") and calib is not None else None,
                "min_shape": "x".join(map(str, profile.min)), "opt_shape": "x".join(map(str, profile.opt)),
                "max_shape": "x".join(map(str, profile.max))}
    return build_engine(final, output, profile, options=options, source=model, source_sha256=file_sha256(path),
                        device=device, progress=progress, verbose=verbose, recorded=recorded)


def cached_build(
    model: Union[str, Path],
    deployable,
    profile: Profile,
    *,
    precision: Optional[str] = None,
    calib=None,
    method: str = "percentile",
    limit_side_len: int = 736,
    limit_type: str = "min",
    input_size: Optional[tuple[int, int]] = None,
    options: BuildOptions = BuildOptions(),
    device: int = 0,
    progress: bool = True,
) -> Path:
    """The engine of ``model`` for this GPU from the user's cache folder, built there first
    if missing or stale (``edgedb.engine.cache``). ``deployable`` is the model rewritten."""
    from edgedb._version import __version__
    from edgedb.engine.gpu import CudaDevice
    from edgedb.engine.gpu import import_pycuda_driver, import_tensorrt
    from edgedb.engine.cache import cached_engine_path, calibration_identity, engine_cache_key, usable_cached_engine
    from edgedb.engine.precision import model_precision, precision_model
    from edgedb.graph.rewrite import REWRITE_REVISION
    from edgedb.models import cache_dir, resolve_model
    from edgedb.precision.calibration import calibration_images
    from edgedb.spec import spec_from_metadata

    trt = import_tensorrt()
    import_pycuda_driver()
    with CudaDevice(device) as cuda_device:
        info = cuda_device.device_info(trt)
    final_precision = precision or model_precision(deployable)
    check_dla_profile(profile, options, final_precision)
    images = calibration_images(calib) if calib is not None and final_precision in ("int8", "best") else None
    path = resolve_model(model)
    source_sha256 = file_sha256(path)
    key = engine_cache_key(
        source_sha256=source_sha256, spec_json=spec_from_metadata(deployable).to_json(), precision=final_precision,
        method=method, calibration=calibration_identity(images), profile=profile, device=info,
        edgedb_version=__version__, rewrite_revision=REWRITE_REVISION, options=options.recorded(),
    )
    engine_path = cached_engine_path(cache_dir(), path.stem, final_precision, key)
    if usable_cached_engine(engine_path, info):
        return engine_path
    engine_path.parent.mkdir(parents=True, exist_ok=True)
    log.warning("building a TensorRT engine for %s (%s, %s); it is cached in %s for next time",
                model, final_precision, profile.describe(), engine_path.parent)
    final = precision_model(deployable, precision, calib=images, method=method, limit_side_len=limit_side_len,
                            limit_type=limit_type, input_size=input_size)
    build_engine(final, engine_path, profile, options=options, source=model, source_sha256=source_sha256,
                 device=device, progress=progress)
    return engine_path
