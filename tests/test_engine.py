"""The GPU-free half of engine building and running: profiles, sidecars, cache keys,
version gates, buffer bookkeeping, the progress line. No tensorrt or pycuda needed."""

from __future__ import annotations

import io
import json
import types

import numpy as np
import pytest

from edgedb import EngineError, InvalidInputError, ModelSpec
from edgedb.engine import compat
from edgedb.engine.buffers import AddressBook, TensorBuffers, check_in_profile, rounded, tensor_nbytes
from edgedb.engine.builder import BuildOptions, check_dla_profile, choose_profile
from edgedb.engine.cache import engine_cache_key
from edgedb.engine.profiles import (
    DEFAULT_IMAGE_SIZES,
    Profile,
    explicit_profile,
    limit_profile,
    parse_shape,
    static_profile,
)
from edgedb.engine.progress import BuildProgress
from edgedb.engine.sidecar import (
    DeviceInfo,
    EngineSidecar,
    check_compatible,
    file_sha256,
    read_sidecar,
    sidecar_path,
    write_engine,
)
from edgedb.preprocess import prepare_limit

# -- profiles --------------------------------------------------------------------------------


def test_limit_profile_covers_every_frame_the_detector_makes_and_opt_is_the_first_size():
    sizes = [(720, 1280), (480, 640), (1080, 1920), (1920, 1080), (333, 2000)]
    profile = limit_profile(sizes, limit_side_len=736, limit_type="min", max_batch=4)
    for height, width in sizes:
        frame = prepare_limit(np.zeros((height, width, 3), np.uint8), 736, "min").frame
        assert profile.covers((1, *frame.shape))
        assert profile.covers((4, *frame.shape))
    first = prepare_limit(np.zeros((720, 1280, 3), np.uint8), 736, "min").frame
    assert profile.opt == (1, *first.shape[:2]) == (1, 736, 1312)
    assert profile.min[0] == 1 and profile.max[0] == 4
    assert not profile.covers((5, 736, 1312, 3))


def test_default_image_sizes_give_a_profile_for_video_and_photos_both_ways():
    profile = limit_profile()
    assert profile.opt == (1, 736, 1312)
    for height, width in DEFAULT_IMAGE_SIZES:
        frame = prepare_limit(np.zeros((height, width, 3), np.uint8), 736, "min").frame
        assert profile.covers((1, *frame.shape))
    assert profile.min == (1, 736, 736) and profile.max == (1, 1920, 1920)


def test_limit_profile_in_max_mode_and_with_a_side_cap():
    profile = limit_profile([(3000, 4000), (100, 100)], limit_side_len=960, limit_type="max", max_side_len=4096)
    assert profile.opt == (1, 736, 960)  # 3000x4000 scaled to 720x960, padded to 736x960
    assert profile.min == (1, 128, 128)  # small images are not enlarged in max mode


def test_static_profile_and_input_size_choice():
    profile = choose_profile(input_size=(736, 1280), max_batch=2)
    assert profile == static_profile((736, 1280), 2)
    assert profile.min == (1, 736, 1280) and profile.max == (2, 736, 1280)
    assert static_profile((736, 1280)).static
    assert profile.tensor_shapes()[2] == (2, 736, 1280, 3)
    with pytest.raises(InvalidInputError, match="multiples of 32"):
        static_profile((700, 1280))
    with pytest.raises(InvalidInputError, match="image_sizes apply to limit mode"):
        choose_profile(input_size=(736, 1280), image_sizes=[(720, 1280)])


def test_profile_checks_and_parsing():
    assert parse_shape("1x736x1312") == (1, 736, 1312)
    for bad in ("736x1312", "1x0x32", "axbxc", ""):
        with pytest.raises(InvalidInputError, match="NxHxW"):
            parse_shape(bad)
    with pytest.raises(InvalidInputError, match="min <= opt <= max"):
        Profile((1, 64, 64), (1, 32, 64), (1, 128, 128))
    with pytest.raises(InvalidInputError, match="max_batch"):
        limit_profile(max_batch=0)
    with pytest.raises(InvalidInputError, match="empty"):
        limit_profile([])
    profile = explicit_profile((1, 320, 320), None, (2, 960, 960))
    assert profile.opt == (1, 960, 960)
    with pytest.raises(InvalidInputError, match="multiples of 32"):
        explicit_profile((1, 300, 320), None, (1, 960, 960))
    assert Profile.from_dict(profile.to_dict()) == profile
    assert Profile((1, 32, 32), (1, 32, 32), (1, 32, 32), "NCHW").tensor_shapes()[0] == (1, 3, 32, 32)


# -- sidecars ----------------------------------------------------------------------------------

DEVICE = DeviceInfo("10.3.0.30", "Orin (nvgpu)", (8, 7))


def _sidecar(plan: bytes, **changes) -> EngineSidecar:
    import hashlib

    fields = dict(
        edgedb_version="0.1.0", device=DEVICE, precision="fp16", profiles=(limit_profile(),),
        spec=ModelSpec(input_name="image", prob_output="prob", fused_preprocessing=True),
        source_onnx="ppocrv4-det", source_sha256="ab" * 32, engine_sha256=hashlib.sha256(plan).hexdigest(),
        engine_bytes=len(plan), build_options={"workspace": 512, "gpu_fallback": False, "calib": None,
                                               "timing_cache": "engines/t.cache"},
    )
    fields.update(changes)
    return EngineSidecar(**fields)


def test_sidecar_round_trip_and_rebuild_command(tmp_path):
    plan = b"\x00engine bytes" * 100
    sidecar = _sidecar(plan)
    engine = tmp_path / "det.engine"
    write_engine(engine, plan, sidecar)
    assert sidecar_path(engine).name == "det.engine.json"
    loaded = read_sidecar(engine)
    assert loaded.to_json() == sidecar.to_json()
    assert loaded.profiles[0] == limit_profile() and loaded.device.compute_capability == (8, 7)
    command = loaded.rebuild_command(engine)
    assert command.startswith(f"edgedb build ppocrv4-det -o {engine} --precision fp16")
    assert "--workspace 512" in command and "--timing-cache engines/t.cache" in command
    assert "--gpu-fallback" not in command and "--calib" not in command
    data = json.loads(sidecar_path(engine).read_text())
    for key in ("edgedb_version", "device", "precision", "profiles", "spec", "source_sha256", "build_options"):
        assert key in data
    assert data["device"]["gpu_name"] == "Orin (nvgpu)"


def test_damaged_missing_or_foreign_engines_are_refused_with_a_rebuild_hint(tmp_path):
    plan = bytes(range(256)) * 40
    engine = tmp_path / "det.engine"
    with pytest.raises(EngineError, match="no engine file"):
        read_sidecar(engine)
    engine.write_bytes(plan)
    with pytest.raises(EngineError, match="no sidecar.*edgedb build"):
        read_sidecar(engine)
    write_engine(engine, plan, _sidecar(plan))
    engine.write_bytes(plan[:-100])  # truncated
    with pytest.raises(EngineError, match="truncated.*edgedb build"):
        read_sidecar(engine)
    engine.write_bytes(plan[::-1])  # same size, other bytes
    with pytest.raises(EngineError, match="sha256"):
        read_sidecar(engine)
    engine.write_bytes(plan)
    for text in ("not json", "[]", json.dumps({"format": 1}), json.dumps({"format": 99})):
        sidecar_path(engine).write_text(text)
        with pytest.raises(EngineError, match="sidecar|format"):
            read_sidecar(engine)


def test_engines_for_another_tensorrt_or_gpu_are_refused():
    sidecar = _sidecar(b"x")
    check_compatible(sidecar, DEVICE, "det.engine", "0.1.3")
    with pytest.raises(EngineError, match=r"TensorRT 10\.3\.0\.30, this is 10\.16.*rebuild it here: edgedb build"):
        check_compatible(sidecar, DeviceInfo("10.16.0.1", "Orin (nvgpu)", (8, 7)), "det.engine")
    with pytest.raises(EngineError, match="built for Orin .*this GPU is NVIDIA RTX 4090"):
        check_compatible(sidecar, DeviceInfo("10.3.0.30", "NVIDIA RTX 4090", (8, 9)), "det.engine")
    with pytest.raises(EngineError, match="edgedb 0.1.0, this is 0.2.0"):
        check_compatible(sidecar, DEVICE, "det.engine", "0.2.0")


def test_file_sha256(tmp_path):
    import hashlib

    path = tmp_path / "f"
    path.write_bytes(b"a" * 3_000_000)
    assert file_sha256(path) == hashlib.sha256(b"a" * 3_000_000).hexdigest()


# -- cache keys ------------------------------------------------------------------------------------


def test_engine_cache_key_changes_with_everything_an_engine_depends_on():
    base = dict(source_sha256="a" * 64, spec_json="{}", precision="int8", method="percentile", calibration="c",
                profile=limit_profile(), device=DEVICE, edgedb_version="0.1.0", rewrite_revision=5, options={})
    key = engine_cache_key(**base)
    assert key == engine_cache_key(**base) and len(key) == 24
    changes = dict(source_sha256="b" * 64, spec_json='{"a": 1}', precision="best", method="entropy",
                   calibration="d", profile=static_profile((736, 1312)),
                   device=DeviceInfo("10.3.0.30", "Orin", (8, 7)), edgedb_version="0.2.0", rewrite_revision=6,
                   options={"workspace": 256})
    for name, value in changes.items():
        assert engine_cache_key(**{**base, name: value}) != key, name
    # the range method does not matter for FP16
    fp16 = {**base, "precision": "fp16"}
    assert engine_cache_key(**fp16) == engine_cache_key(**{**fp16, "method": "max"})


# -- version gates ------------------------------------------------------------------------------------


def _trt(version: str, flags=("FP16", "INT8", "GPU_FALLBACK")):
    return types.SimpleNamespace(
        __version__=version, BuilderFlag=types.SimpleNamespace(**{f: f for f in flags}),
        NetworkDefinitionCreationFlag=types.SimpleNamespace(STRONGLY_TYPED=1),
    )


def test_version_gates():
    assert compat.parse_version("10.3.0.30") == (10, 3, 0, 30)
    assert compat.parse_version("11.1.0rc2+cuda12") == (11, 1, 0)
    with pytest.raises(Exception, match="cannot read"):
        compat.parse_version("dev")
    trt10, trt11 = _trt("10.3.0.30"), _trt("11.1.0.7", flags=("GPU_FALLBACK",))
    compat.check_supported(trt10)
    compat.check_supported(trt11)
    for old in ("8.6.1", "12.0"):
        with pytest.raises(Exception, match="10.x or 11.x"):
            compat.check_supported(_trt(old))
    assert compat.network_flags(trt10, strongly_typed=True) == 2 == compat.network_flags(trt11, strongly_typed=True)
    assert compat.network_flags(trt10, strongly_typed=False) == 0
    assert compat.has_precision_flags(trt10) and not compat.has_precision_flags(trt11)
    assert compat.precision_flags(trt10, fp16=True, int8=True) == ["FP16", "INT8"]
    with pytest.raises(Exception, match="removed in 11.x"):
        compat.precision_flags(trt11, fp16=True, int8=False)


# -- build options ----------------------------------------------------------------------------------------


def test_build_options_are_checked():
    with pytest.raises(InvalidInputError, match="gpu_fallback"):
        BuildOptions(gpu_fallback=True)
    with pytest.raises(InvalidInputError, match="0..5"):
        BuildOptions(builder_optimization_level=7)
    with pytest.raises(InvalidInputError, match="workspace"):
        BuildOptions(workspace_mib=0)
    assert BuildOptions(workspace_mib=64).recorded()["workspace"] == 64
    dla = BuildOptions(dla_core=0, gpu_fallback=True)
    with pytest.raises(InvalidInputError, match="static shapes"):
        check_dla_profile(limit_profile(), dla, "fp16")
    with pytest.raises(InvalidInputError, match="FP16 or INT8"):
        check_dla_profile(static_profile((736, 1280)), dla, "fp32")
    check_dla_profile(static_profile((736, 1280)), dla, "int8")
    check_dla_profile(limit_profile(), BuildOptions(), "fp32")


# -- buffers ------------------------------------------------------------------------------------------------


class _Allocation:
    def __init__(self, nbytes, log):
        self.nbytes, self.host, self.device_address = nbytes, np.zeros(nbytes, np.uint8), 1000 + len(log) * 4096
        self.freed = False
        log.append(self)

    def free(self):
        self.freed = True


def test_buffers_grow_only_for_larger_shapes_and_addresses_bind_only_on_change():
    allocations = []
    buffers = TensorBuffers(lambda n: _Allocation(n, allocations))
    calls = []
    context = types.SimpleNamespace(set_tensor_address=lambda name, address: calls.append((name, address)) or True)
    book = AddressBook(context)
    for shape in [(1, 736, 1312, 3), (1, 736, 1312, 3), (1, 736, 736, 3), (1, 1088, 1920, 3), (1, 736, 1312, 3)]:
        buffer, _ = buffers.ensure("image", tensor_nbytes(shape, np.uint8))
        book.bind("image", buffer.device_address)
    assert [a.nbytes for a in allocations] == [rounded(736 * 1312 * 3), rounded(1088 * 1920 * 3)]
    assert allocations[0].freed and not allocations[1].freed
    assert [name for name, _ in calls] == ["image", "image"]  # once per allocation, not per call
    assert buffers.nbytes == allocations[1].nbytes
    buffers.free()
    assert allocations[1].freed and "image" not in buffers
    refusing = AddressBook(types.SimpleNamespace(set_tensor_address=lambda name, address: False))
    with pytest.raises(InvalidInputError, match="refused the address"):
        refusing.bind("nope", 256)


def test_sizes_and_profile_checks():
    assert tensor_nbytes((2, 1, 736, 1312), np.float32) == 2 * 736 * 1312 * 4
    assert rounded(1) == 256 and rounded(257) == 512
    with pytest.raises(InvalidInputError, match="not concrete"):
        tensor_nbytes((1, -1, 32, 32), np.float32)
    check_in_profile("image", (1, 736, 1312, 3), (1, 736, 736, 3), (1, 1920, 1920, 3))
    with pytest.raises(InvalidInputError, match=r"outside the engine's profile.*image sizes"):
        check_in_profile("image", (1, 736, 4096, 3), (1, 736, 736, 3), (1, 1920, 1920, 3))


# -- progress line ---------------------------------------------------------------------------------------------


class _Tty(io.StringIO):
    def isatty(self):
        return True


def test_progress_line_follows_nested_phases():
    ticks = iter(range(0, 1000, 7))
    stream = _Tty()
    progress = BuildProgress(stream, label="building x", clock=lambda: next(ticks))
    progress.phase_start("Building engine", None, 2)
    progress.phase_start("Tactic selection", "Building engine", 40)
    assert progress.step_complete("Tactic selection", 9) is True
    assert progress.line().endswith("Building engine 0/2 > Tactic selection 10/40")
    progress.phase_finish("Tactic selection")
    progress.phase_finish("Building engine")
    progress.done("wrote x")
    assert "\r" in stream.getvalue() and stream.getvalue().rstrip().endswith("s")
    logged = io.StringIO()  # not a terminal: one line per top-level phase, no carriage returns
    quiet = BuildProgress(logged, clock=lambda: 0)
    quiet.phase_start("Building engine", None, 1)
    quiet.phase_start("Tactic selection", "Building engine", 5)
    quiet.step_complete("Tactic selection", 1)
    assert logged.getvalue().count("\n") == 1 and "\r" not in logged.getvalue()
