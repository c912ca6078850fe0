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
    from edgedb.serving import TritonDetector

    expected = [local.detect(scene) for scene in scenes]
    wrong, done = [], []

    def client_loop(worker: int):
        with TritonDetector(server.http_url) as client:
            for step in range(6):
                index = (worker + step) % len(scenes)
                if not _same(client.detect(scenes[index]), expected[index]):
                    wrong.append((worker, step))
                done.append(1)

    threads = [threading.Thread(target=client_loop, args=(w,)) for w in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
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
