"""Serving on Triton against in-process detection, in one run, on real images.

    python bench/bench_serving.py [--data DIR] [--count 20] [--requests 800] [--clients 8]
                                  [--instances 2] [--max-batch 8] [--json OUT]

Measures, on the same 720p ICDAR 2015 frames (raw uint8 over HTTP, loopback):

- in-process single stream: ``EdgeDetector.detect`` in a loop (all cores): images/s, p50/p99;
- served, one client: a request's p50/p99 (the goal: p50 within 10 ms of in-process);
- served, ``--clients`` concurrent clients, ``--requests`` in all: images/s (the goal:
  >= 1.3x in-process), p50/p99, and every response's boxes checked against the in-process
  boxes of the same frame (detectors with the served instances' thread count);
- the server's startup to ready, and its shutdown.

Nothing else may run on the machine meanwhile (two cores).
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import socket
import sys
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from bench_peers import machine_line  # noqa: E402

DEFAULT_DATA = ROOT.parent / "shared" / "data" / "icdar2015-dev" / "images"


def _percentiles(values) -> dict:
    values = np.asarray(values) * 1000
    return {"p50_ms": round(float(np.percentile(values, 50)), 1), "p99_ms": round(float(np.percentile(values, 99)), 1)}


def _same(served, local) -> bool:
    return len(served) == len(local) and all(
        np.array_equal(a.points, b.points) and a.score == b.score for a, b in zip(served, local))


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> int:
    import cv2

    from edgedb import EdgeDetector
    from edgedb.serving import TritonDetector, TritonServer, export_triton

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--count", type=int, default=20, help="images (default 20)")
    parser.add_argument("--requests", type=int, default=800, help="served requests with --clients (default 800)")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--instances", type=int, default=2)
    parser.add_argument("--threads", type=int, help="threads per instance (default: cores / instances)")
    parser.add_argument("--max-batch", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3, help="in-process passes over the images (default 3)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    paths = sorted(args.data.glob("*.jpg"))[: args.count]
    frames = [cv2.imread(str(p)) for p in paths]
    cores = os.cpu_count() or 1
    threads = args.threads or max(1, cores // args.instances)
    report = {"machine": machine_line(), "images": len(frames), "size": list(frames[0].shape[:2]),
              "instances": args.instances, "threads_per_instance": threads, "max_batch": args.max_batch}

    with EdgeDetector(threads=threads) as reference:  # the boxes each served instance must give
        expected = [reference.detect(frame) for frame in frames]
    with EdgeDetector() as local:  # in-process single stream on every core
        for frame in frames[:3]:
            local.detect(frame)
        latencies, started = [], time.perf_counter()
        for _ in range(args.rounds):
            for frame in frames:
                t = time.perf_counter()
                local.detect(frame)
                latencies.append(time.perf_counter() - t)
        elapsed = time.perf_counter() - started
    report["in_process"] = {"images_per_s": round(len(latencies) / elapsed, 2), **_percentiles(latencies)}
    print("in-process", report["in_process"], flush=True)

    scratch = Path(os.environ.get("TMPDIR", "/tmp")) / f"edgedb-bench-serving-{os.getpid()}"
    repository = export_triton("ppocrv4-det", scratch, instances=args.instances, threads=threads,
                               max_batch=args.max_batch, max_queue=max(64, 4 * args.clients))
    server = TritonServer(repository, http_port=_port(), grpc_port=_port(), metrics_port=0)
    report["startup_s"] = round(server.startup_seconds, 2)
    try:
        with TritonDetector(server.http_url) as client:
            for frame in frames[:3]:
                client.detect(frame)
            latencies = []
            for frame in frames * args.rounds:
                t = time.perf_counter()
                client.detect(frame)
                latencies.append(time.perf_counter() - t)
        report["served_one_client"] = _percentiles(latencies)
        print("served, one client", report["served_one_client"], flush=True)

        jobs: queue.Queue = queue.Queue()
        for index in range(args.requests):
            jobs.put(index % len(frames))
        latencies, wrong, errors = [], [], []
        lock = threading.Lock()

        def client_loop():
            with TritonDetector(server.http_url) as client:
                while True:
                    try:
                        index = jobs.get_nowait()
                    except queue.Empty:
                        return
                    t = time.perf_counter()
                    try:
                        boxes = client.detect(frames[index])
                    except Exception as error:  # counted, not raised: the goal is zero
                        with lock:
                            errors.append(str(error))
                        continue
                    with lock:
                        latencies.append(time.perf_counter() - t)
                        if not _same(boxes, expected[index]):
                            wrong.append(index)

        workers = [threading.Thread(target=client_loop) for _ in range(args.clients)]
        started = time.perf_counter()
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        elapsed = time.perf_counter() - started
        report["served_concurrent"] = {
            "clients": args.clients, "requests": args.requests, "answered": len(latencies), "errors": len(errors),
            "mismatched": len(wrong), "images_per_s": round(len(latencies) / elapsed, 2), **_percentiles(latencies)}
        report["served_concurrent"]["x_in_process"] = round(
            report["served_concurrent"]["images_per_s"] / report["in_process"]["images_per_s"], 2)
        print("served, concurrent", report["served_concurrent"], errors[:3], flush=True)
    finally:
        t = time.perf_counter()
        server.close()
        report["shutdown_s"] = round(time.perf_counter() - t, 2)
        import shutil

        shutil.rmtree(scratch, ignore_errors=True)
    print(json.dumps(report, indent=1))
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
