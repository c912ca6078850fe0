"""Serving on Triton: the wire format and decoding here; export, a real tritonserver on
loopback, the client, load and faults where a tritonserver is installed (scripts/setup.sh
unpacks the nvidia-pytriton wheel's; skipped where the platform has none)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from edgedb import EdgeDetector, InvalidInputError, ServingError, TextBox
from edgedb.preprocess import decode_image
from edgedb.serving.protocol import pack_boxes, unpack_boxes
from edgedb.serving.triton_model import request_images
from edgedb.synthetic import make_text_image

ROOT = Path(__file__).resolve().parents[1]


def _server_or_skip():
    from edgedb.serving import find_tritonserver

    try:
        return find_tritonserver()
    except ServingError as error:
        pytest.skip(f"no tritonserver here: {error}")


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def _same(served, local) -> bool:
    return len(served) == len(local) and all(
        np.array_equal(a.points, b.points) and a.score == b.score for a, b in zip(served, local))


def _concurrent_clients(server, local, scenes, *, clients: int, requests: int) -> tuple[list, list]:
    """``clients`` threads, each sending ``requests`` scenes in turn: the requests answered,
    and the (client, request) pairs whose boxes differ from in-process."""
    from edgedb.serving import TritonDetector

    expected = [local.detect(scene) for scene in scenes]
    done, wrong = [], []

    def client_loop(worker: int):
        with TritonDetector(server.http_url) as client:
            for step in range(requests):
                index = (worker + step) % len(scenes)
                if not _same(client.detect(scenes[index]), expected[index]):
                    wrong.append((worker, step))
                done.append(1)

    threads = [threading.Thread(target=client_loop, args=(w,)) for w in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    return done, wrong


# -- the wire format and decoding (no server) --------------------------------------


def test_boxes_survive_packing_whatever_their_point_counts():
    results = [[TextBox(np.arange(8, dtype=np.float32).reshape(4, 2), 0.9),
                TextBox(np.arange(12, dtype=np.float32).reshape(6, 2), 0.7123456789)], [],
               [TextBox(np.ones((4, 2), np.float32), 0.5)]]
    packed = pack_boxes(results)
    assert packed["BOXES"].shape == (3, 2, 6, 2) and packed["COUNTS"].tolist() == [[2], [0], [1]]
    back = unpack_boxes(packed)
    assert [len(b) for b in back] == [2, 0, 1]
    assert all(_same(b, r) for b, r in zip(back, results))
    assert unpack_boxes(pack_boxes([[]]))[0] == [] and unpack_boxes(pack_boxes([])) == []


def test_decode_image_checks_bytes_as_read_image_checks_files():
    image = make_text_image(1, size=(120, 200)).image
    png = cv2.imencode(".png", image)[1].tobytes()
    jpeg = cv2.imencode(".jpg", image)[1].tobytes()
    assert np.array_equal(decode_image(png), image)
    assert decode_image(jpeg).shape == image.shape
    with pytest.raises(InvalidInputError, match="truncated"):
        decode_image(jpeg[: len(jpeg) // 2])
    with pytest.raises(InvalidInputError, match="not an image"):
        decode_image(b"certainly not an image file")
    with pytest.raises(InvalidInputError, match="empty"):
        decode_image(b"")
    with pytest.raises(InvalidInputError, match="over the limit"):
        decode_image(png, max_pixels=1000)


def test_a_request_must_hold_one_input_of_a_usable_shape():
    frames = np.zeros((2, 40, 60, 3), np.uint8)
    assert len(request_images(frames, None, 10_000)) == 2
    with pytest.raises(InvalidInputError, match="exactly one"):
        request_images(None, None, 10_000)
    with pytest.raises(InvalidInputError, match="C = 1, 3 or 4"):
        request_images(np.zeros((1, 4, 4, 2), np.uint8), None, 10_000)
    with pytest.raises(InvalidInputError, match="over this model's limit"):
        request_images(frames, None, 1000)


def test_no_tritonserver_is_said_with_how_to_get_one(monkeypatch, tmp_path):
    from edgedb.serving import find_tritonserver

    monkeypatch.setenv("EDGEDB_TRITONSERVER", str(tmp_path / "nowhere"))
    with pytest.raises(ServingError, match="not an executable file.*nvidia-pytriton"):
        find_tritonserver()


def test_export_writes_a_repository_triton_can_read(tmp_path):
    from edgedb.serving import export_triton

    repository = export_triton("ppocrv4-det", tmp_path / "repo", instances=3, max_batch=4, max_queue=9,
                               detector_options={"box_thresh": 0.5})
    config = (repository / "edgedb_det" / "config.pbtxt").read_text()
    for line in ('backend: "python"', "max_batch_size: 4", "count: 3 kind: KIND_CPU", "max_queue_size: 9",
                 '"edgedb_version"', "box_thresh"):
        assert line in config
    assert {p.name for p in (repository / "edgedb_det" / "1").iterdir()} == {"model.py", "model.onnx"}
    with pytest.raises(InvalidInputError, match="detector_options must not hold backend"):
        export_triton("ppocrv4-det", tmp_path / "r2", detector_options={"backend": "cpu"})
    with pytest.raises(InvalidInputError, match="max_batch"):
        export_triton("ppocrv4-det", tmp_path / "r3", max_batch=0)


# -- a real server ---------------------------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    _server_or_skip()
    from edgedb.serving import TritonServer, export_triton

    repository = export_triton("ppocrv4-det", tmp_path_factory.mktemp("repo"), instances=2, threads=1,
                               max_pixels=4_000_000)
    http, grpc = _free_ports(2)
    with TritonServer(repository, http_port=http, grpc_port=grpc, metrics_port=0) as running:
        yield running


@pytest.fixture(scope="module")
def local():
    with EdgeDetector(threads=1) as detector:
        yield detector


@pytest.fixture(scope="module")
def scenes():
    return [make_text_image(seed, size=(360, 640)).image for seed in range(4)] + \
        [make_text_image(9, size=(300, 500)).image]


@pytest.mark.slow
@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_served_boxes_are_the_in_process_boxes(server, local, scenes, protocol, tmp_path):
    from edgedb.serving import TritonDetector

    url = server.http_url if protocol == "http" else server.grpc_url
    with TritonDetector(url, protocol=protocol) as client:
        assert all(_same(client.detect(scene), local.detect(scene)) for scene in scenes)
        served = client.detect_batch(scenes)  # four of one size in one request, one alone
        assert all(_same(s, local.detect(scene)) for s, scene in zip(served, scenes))
        assert client.detect(np.zeros((64, 64, 3), np.uint8)) == []  # no text: no boxes, not an error
        assert client.detect_batch([np.full((64, 64), 255, np.uint8)] * 2) == [[], []]
        path = tmp_path / "scene.png"
        cv2.imwrite(str(path), scenes[0])
        assert _same(client.detect(path), local.detect(scenes[0]))  # sent as file bytes


@pytest.mark.slow
def test_concurrent_clients_get_every_answer_right(server, local, scenes):
    done, wrong = _concurrent_clients(server, local, scenes, clients=8, requests=6)
    assert len(done) == 48 and not wrong


@pytest.mark.slow
def test_bad_requests_get_errors_and_the_server_keeps_serving(server, local, scenes):
    import tritonclient.http as http

    from edgedb.serving import TritonDetector

    raw = http.InferenceServerClient(server.http_url)

    def send(name, array, dtype="UINT8"):
        tensor = http.InferInput(name, list(array.shape), dtype)
        tensor.set_data_from_numpy(array)
        return raw.infer("edgedb_det", [tensor])

    jpeg = cv2.imencode(".jpg", scenes[0])[1].reshape(1, -1)
    bad = [
        ("IMAGE", np.zeros((1, 32, 32, 3), np.float32), "FP32"),  # wrong dtype
        ("IMAGE", np.zeros((1, 32, 32), np.uint8), "UINT8"),  # wrong rank
        ("IMAGE", np.zeros((1, 0, 0, 3), np.uint8), "UINT8"),  # empty
        ("IMAGE", np.zeros((1, 2100, 2100, 1), np.uint8), "UINT8"),  # over the served pixel limit
        ("IMAGE", np.zeros((1, 32, 32, 2), np.uint8), "UINT8"),  # two channels
        ("ENCODED", np.frombuffer(b"garbage bytes, no image" * 5, np.uint8).reshape(1, -1), "UINT8"),
        ("ENCODED", jpeg[:, : jpeg.shape[1] // 2], "UINT8"),  # truncated JPEG
    ]
    from tritonclient.utils import InferenceServerException

    for name, array, dtype in bad:
        with pytest.raises(InferenceServerException):
            send(name, array, dtype)
    with TritonDetector(server.http_url) as client:
        with pytest.raises(ServingError, match="truncated"):
            client.detect_encoded(jpeg[0, : jpeg.shape[1] // 2].tobytes())
        assert _same(client.detect(scenes[1]), local.detect(scenes[1]))
    raw.close()


@pytest.mark.slow
def test_overload_is_refused_cleanly_and_a_crash_is_reported(tmp_path, scenes):
    _server_or_skip()
    from edgedb.serving import TritonDetector, TritonServer, export_triton

    repository = export_triton("ppocrv4-det", tmp_path / "repo", instances=1, threads=1, max_batch=1, max_queue=1,
                               queue_delay_us=0)
    http, grpc = _free_ports(2)
    with TritonServer(repository, http_port=http, grpc_port=grpc, metrics_port=0) as server:
        outcomes = []

        def one():
            try:
                with TritonDetector(server.http_url) as client:
                    client.detect(scenes[0])
                outcomes.append("ok")
            except ServingError as error:
                outcomes.append(str(error))

        threads = [threading.Thread(target=one) for _ in range(12)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        refused = [o for o in outcomes if o != "ok"]
        assert len(outcomes) == 12 and "ok" in outcomes and refused
        assert all("queue" in o for o in refused)
        assert server.ready()

        stubs = subprocess.run(["pgrep", "-g", str(os.getpgid(server._process.pid)), "-f", "triton_python_backend_stub"],
                               capture_output=True, text=True).stdout.split()
        assert stubs and server.stubs() == {"edgedb_det": 1}
        for pid in stubs:
            os.kill(int(pid), signal.SIGKILL)
        started, states = time.monotonic(), []
        while time.monotonic() - started < 30 and not (False in states and states[-1]):
            states.append(server.ready())  # the watchdog's reload: not ready, then ready again
            time.sleep(0.05)
        assert False in states and states[-1] and server.restarts == 1
        with TritonDetector(server.http_url, timeout=30) as client:
            assert len(client.detect(scenes[0])) > 0


@pytest.mark.slow
def test_edgedb_serve_prints_its_endpoints_and_stops_cleanly_on_sigint(tmp_path):
    _server_or_skip()
    http, grpc = _free_ports(2)
    command = [sys.executable, "-m", "edgedb", "serve", "--http-port", str(http), "--grpc-port", str(grpc),
               "--metrics-port", "0", "--instances", "1"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    try:
        line = process.stdout.readline()
        assert f"HTTP 127.0.0.1:{http}" in line and f"gRPC 127.0.0.1:{grpc}" in line
        started = time.monotonic()
        process.send_signal(signal.SIGINT)
        assert process.wait(10) == 0
        assert time.monotonic() - started < 5
        left = subprocess.run(["pgrep", "-f", f"--http-port={http}"], capture_output=True, text=True).stdout
        assert not left.strip()
    finally:
        if process.poll() is None:
            process.kill()


# -- the ensemble layout ------------------------------------------------------------

# The wheel's tritonserver has the Python backend only, so the ensemble's network step
# (onnxruntime_onnx in the exported config) runs here as a Python model with the same
# name, inputs, outputs and batching, on edgedb's own ONNX Runtime backend: what is tested
# is everything edgedb writes and runs around the network.
_NET_STAND_IN = '''
import numpy as np


class TritonPythonModel:
    def initialize(self, args):
        from pathlib import Path

        import triton_python_backend_utils as pb
        from edgedb.backends import create_backend

        self._pb = pb
        self.backend = create_backend("onnxruntime", str(Path(args["model_repository"]) / args["model_version"] /
                                                         "model.onnx"), threads=1)
        self.input = self.backend.input_names[0]

    def execute(self, requests):
        pb, responses = self._pb, []
        for request in requests:
            frames = np.from_dlpack(pb.get_input_tensor_by_name(request, self.input))
            prob = self.backend.infer({self.input: frames})["prob"]
            responses.append(pb.InferenceResponse([pb.Tensor.from_dlpack("prob", np.ascontiguousarray(prob))]))
        return responses
'''


def test_the_ensemble_steps_size_frames_and_form_boxes_as_the_detector_does(local, scenes):
    from edgedb.serving.ensemble_steps import prepare_request, request_boxes

    options = {"limit_side_len": local.limit_side_len, "limit_type": local.limit_type,
               "max_side_len": local.max_side_len, "stride": local.spec.stride, "input_size": None}
    frames, info = prepare_request([scenes[0], scenes[1]], options)
    assert frames.shape == (2, 736, 1312, 3) and info.tolist() == [[736, 1308, 360, 640]] * 2
    prob = np.stack([local._infer([frame])[0] for frame in frames])[:, None]
    found = request_boxes(prob, info, dict(local._box_options))
    assert all(_same(f, local.detect(scene)) for f, scene in zip(found, scenes[:2]))
    with pytest.raises(InvalidInputError, match="FRAME"):
        request_boxes(prob, info[:1], dict(local._box_options))
    with pytest.raises(InvalidInputError, match="says"):
        request_boxes(prob, info * 2, dict(local._box_options))


def test_the_ensemble_layout_is_four_models_triton_can_read(tmp_path):
    from edgedb.serving import export_triton

    repository = export_triton("ppocrv4-det", tmp_path / "repo", layout="ensemble", instances=2, threads=1,
                               max_batch=4, detector_options={"box_thresh": 0.5, "limit_side_len": 640})
    names = {p.name for p in repository.iterdir()}
    assert names == {"edgedb_det", "edgedb_det_pre", "edgedb_det_net", "edgedb_det_post"}
    ensemble = (repository / "edgedb_det" / "config.pbtxt").read_text()
    for line in ('platform: "ensemble"', 'model_name: "edgedb_det_net"', 'output_map { key: "COUNTS"'):
        assert line in ensemble
    net = (repository / "edgedb_det_net" / "config.pbtxt").read_text()
    for line in ('platform: "onnxruntime_onnx"', "max_batch_size: 4", 'dims: [ -1, -1, 3 ]',
                 '"intra_op_thread_count" value: { string_value: "1" }'):
        assert line in net
    assert (repository / "edgedb_det_net" / "1" / "model.onnx").is_file()
    assert '\\"box_thresh\\": 0.5' in (repository / "edgedb_det_post" / "config.pbtxt").read_text()
    assert '\\"limit_side_len\\": 640' in (repository / "edgedb_det_pre" / "config.pbtxt").read_text()
    with pytest.raises(InvalidInputError, match="not tile"):
        export_triton("ppocrv4-det", tmp_path / "r2", layout="ensemble", detector_options={"tile": "on"})
    with pytest.raises(InvalidInputError, match="build an engine"):
        export_triton("ppocrv4-det", tmp_path / "r3", layout="ensemble", backend="tensorrt")
    with pytest.raises(InvalidInputError, match="box_thresh"):
        export_triton("ppocrv4-det", tmp_path / "r4", layout="ensemble", detector_options={"box_thresh": 2.0})
    with pytest.raises(InvalidInputError, match="layout must be"):
        export_triton("ppocrv4-det", tmp_path / "r5", layout="graph")


def test_an_engine_becomes_the_ensembles_tensorrt_plan_step(tmp_path):
    import hashlib

    from edgedb.engine.profiles import limit_profile
    from edgedb.engine.sidecar import DeviceInfo, EngineSidecar, write_engine
    from edgedb.serving import export_triton
    from edgedb.spec import ModelSpec

    def engine(name: str, profile) -> Path:
        plan, path = b"\x00plan" * 64, tmp_path / name
        write_engine(path, plan, EngineSidecar(
            edgedb_version="0.1.0", device=DeviceInfo("10.3.0.30", "Orin (nvgpu)", (8, 7)), precision="fp16",
            profiles=(profile,), spec=ModelSpec(input_name="image", prob_output="prob", fused_preprocessing=True),
            source_onnx="ppocrv4-det", source_sha256="ab" * 32, engine_sha256=hashlib.sha256(plan).hexdigest(),
            engine_bytes=len(plan)))
        return path

    batched = engine("det-b4.engine", limit_profile(max_batch=4))
    repository = export_triton(batched, tmp_path / "repo", layout="ensemble", max_batch=4, instances=1)
    net = repository / "edgedb_det_net"
    config = (net / "config.pbtxt").read_text()
    for line in ('platform: "tensorrt_plan"', "kind: KIND_GPU", 'name: "image" data_type: TYPE_UINT8',
                 "max_batch_size: 4"):
        assert line in config
    assert "intra_op_thread_count" not in config
    assert {p.name for p in (net / "1").iterdir()} == {"model.plan", "det-b4.engine.json"}
    with pytest.raises(InvalidInputError, match="profile batches 1..4"):
        export_triton(batched, tmp_path / "r2", layout="ensemble", max_batch=8)
    plain = engine("plain.engine", limit_profile(layout="NCHW"))
    with pytest.raises(InvalidInputError, match="NCHW"):
        export_triton(plain, tmp_path / "r3", layout="ensemble", max_batch=1)
    with pytest.raises(InvalidInputError, match="precision"):
        export_triton(batched, tmp_path / "r4", layout="ensemble", max_batch=1, precision="int8")


def test_edgedb_export_triton_layout_ensemble(tmp_path, capsys):
    from edgedb.cli import main

    assert main(["export", "triton", "ppocrv4-det", "-o", str(tmp_path / "repo"), "--layout", "ensemble",
                 "--max-batch", "2", "--box-thresh", "0.55"]) == 0
    assert "edgedb_det_net" in capsys.readouterr().out
    assert "max_batch_size: 2" in (tmp_path / "repo" / "edgedb_det_net" / "config.pbtxt").read_text()
    assert "0.55" in (tmp_path / "repo" / "edgedb_det_post" / "config.pbtxt").read_text()


def test_a_server_without_the_networks_backend_is_refused_before_it_starts(tmp_path):
    install = _server_or_skip()
    from edgedb.serving import TritonServer, export_triton

    repository = export_triton("ppocrv4-det", tmp_path / "repo", layout="ensemble")
    if install.backends() is not None and "onnxruntime" in install.backends():
        pytest.skip("this tritonserver has the ONNX Runtime backend")
    with pytest.raises(ServingError, match="needs Triton's onnxruntime backend.*--layout python"):
        TritonServer(repository, http_port=_free_ports(1)[0], metrics_port=0)


@pytest.mark.slow
def test_the_ensemble_serves_the_in_process_boxes(tmp_path, local, scenes):
    _server_or_skip()
    from edgedb.serving import TritonDetector, TritonServer, export_triton

    repository = export_triton("ppocrv4-det", tmp_path / "repo", layout="ensemble", instances=1, threads=1,
                               max_pixels=4_000_000)
    net = repository / "edgedb_det_net"
    config = (net / "config.pbtxt").read_text()
    (net / "config.pbtxt").write_text(config.replace('platform: "onnxruntime_onnx"', 'backend: "python"'))
    preamble = (repository / "edgedb_det_pre" / "1" / "model.py").read_text().rsplit("\nfrom edgedb", 1)[0]
    (net / "1" / "model.py").write_text(preamble + _NET_STAND_IN)
    http, grpc = _free_ports(2)
    with TritonServer(repository, http_port=http, grpc_port=grpc, metrics_port=0) as server:
        with TritonDetector(server.http_url) as client:
            assert not client.takes_encoded
            assert all(_same(client.detect(scene), local.detect(scene)) for scene in scenes)
            served = client.detect_batch(scenes)  # four of one size in one request, one alone
            assert all(_same(s, local.detect(scene)) for s, scene in zip(served, scenes))
            assert client.detect(np.zeros((64, 64, 3), np.uint8)) == []
            path = tmp_path / "scene.png"
            cv2.imwrite(str(path), scenes[2])
            assert _same(client.detect(path), local.detect(scenes[2]))  # decoded here, sent as a frame
            with pytest.raises(InvalidInputError, match="frames only"):
                client.detect_encoded(path.read_bytes())
            with pytest.raises(ServingError, match="over this model's limit"):
                client.detect(np.zeros((2100, 2100, 3), np.uint8))
            assert _same(client.detect(scenes[1]), local.detect(scenes[1]))  # still serving
        _, wrong = _concurrent_clients(server, local, scenes, clients=6, requests=4)
        assert not wrong
