"""Serving on Triton against in-process detection, in one run, on real images.

    python bench/bench_serving.py [--data DIR] [--count 20] [--requests 800] [--clients 8]
                                  [--instances 2] [--threads T] [--max-batch 8]
                                  [--layouts throughput latency] [--json OUT]

Measures, on the same 720p ICDAR 2015 frames (raw uint8 over HTTP, loopback):

- in-process single stream: ``EdgeDetector.detect`` in a loop (all cores): images/s, p50/p99;
- the in-process ceiling for concurrency: ``--instances`` detectors of ``--threads`` threads
  each, run side by side from threads with no server at all, and one detector's
  ``detect_batch`` of ``--max-batch`` frames: what no server on these cores can beat;
- two served layouts, each on its own server: the throughput layout (``--instances`` x
  ``--threads``, the export's default) and the latency layout (one instance on every core):
  - one client: a request's p50/p99 (the goal: p50 within 10 ms of in-process), and
    the same requests in turn with in-process ``detect`` on the same frames, so drift in
    the machine's speed over the run falls on both alike;
  - ``--clients`` concurrent clients (``--requests`` in all on the throughput layout, a
    tenth of them on the latency layout): images/s (the goal: >= 1.3x in-process),
    p50/p99, and every response's boxes checked against the in-process boxes of the same
    frame (detectors with that layout's thread count);
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


def _timed(detect, frames, rounds: int) -> dict:
    """images/s and latency percentiles of ``detect`` over ``frames`` ``rounds`` times."""
    for frame in frames[:3]:
        detect(frame)
    latencies, started = [], time.perf_counter()
    for frame in frames * rounds:
        t = time.perf_counter()
        detect(frame)
        latencies.append(time.perf_counter() - t)
    return {"images_per_s": round(len(latencies) / (time.perf_counter() - started), 2), **_percentiles(latencies)}


def _paired(local, served, frames, rounds: int) -> dict:
    """One request's latency, served against in-process, frame by frame in turn (the
    machine's speed drifts over minutes; pairs see the same drift): both p50s and the p50
    of the per-frame differences."""
    for frame in frames[:3]:
        local(frame), served(frame)
    pairs = []
    for frame in frames * rounds:
        t = time.perf_counter()
        local(frame)
        middle = time.perf_counter()
        served(frame)
        pairs.append((middle - t, time.perf_counter() - middle))
    here, there = np.array(pairs).T * 1000
    return {"in_process_p50_ms": round(float(np.median(here)), 1), "served_p50_ms": round(float(np.median(there)), 1),
            "difference_p50_ms": round(float(np.median(there - here)), 1), "pairs": len(pairs)}


def _side_by_side(frames, count: int, threads: int, rounds: int) -> float:
    """images/s of ``count`` in-process detectors run at once, one Python thread each."""
    from edgedb import EdgeDetector

    detectors = [EdgeDetector(threads=threads) for _ in range(count)]
    try:
        for detector in detectors:
            detector.detect(frames[0])
        workers = [threading.Thread(target=lambda d=d: [d.detect(f) for f in frames * rounds]) for d in detectors]
        started = time.perf_counter()
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        return round(count * len(frames) * rounds / (time.perf_counter() - started), 2)
    finally:
        for detector in detectors:
            detector.close()


def _batched(frames, batch: int, rounds: int) -> float:
    """images/s of one all-core detector's ``detect_batch`` over batches of ``batch`` frames."""
    from edgedb import EdgeDetector

    with EdgeDetector() as detector:
        detector.detect_batch(frames[:batch])
        started = time.perf_counter()
        for _ in range(rounds):
            for first in range(0, len(frames), batch):
                detector.detect_batch(frames[first:first + batch])
        return round(len(frames) * rounds / (time.perf_counter() - started), 2)


def _concurrent(url: str, frames, expected, clients: int, requests: int) -> dict:
    """``requests`` requests from ``clients`` concurrent clients; every answer checked."""
    from edgedb.serving import TritonDetector

    jobs: queue.Queue = queue.Queue()
    for index in range(requests):
        jobs.put(index % len(frames))
    latencies, wrong, errors = [], [], []
    lock = threading.Lock()

    def client_loop():
        with TritonDetector(url) as client:
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

    workers = [threading.Thread(target=client_loop) for _ in range(clients)]
    started = time.perf_counter()
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    elapsed = time.perf_counter() - started
    return {"clients": clients, "requests": requests, "answered": len(latencies), "errors": len(errors),
            "first_errors": errors[:3], "mismatched": len(wrong), "seconds": round(elapsed, 1),
            "images_per_s": round(len(latencies) / elapsed, 2), **_percentiles(latencies)}


def _served(layout: str, frames, instances: int, threads: int, args, baseline: float) -> dict:
    """One served layout on its own server: startup, one client, concurrent clients, shutdown."""
    import shutil

    from edgedb import EdgeDetector
    from edgedb.serving import TritonDetector, TritonServer, export_triton

    with EdgeDetector(threads=threads) as reference:  # the boxes each served instance must give
        expected = [reference.detect(frame) for frame in frames]
    report = {"instances": instances, "threads_per_instance": threads}
    scratch = Path(os.environ.get("TMPDIR", "/tmp")) / f"edgedb-bench-serving-{os.getpid()}-{layout}"
    repository = export_triton("ppocrv4-det", scratch, instances=instances, threads=threads,
                               max_batch=args.max_batch, max_queue=max(64, 4 * args.clients))
    server = TritonServer(repository, http_port=_port(), grpc_port=_port(), metrics_port=0)
    report["startup_s"] = round(server.startup_seconds, 2)
    try:
        with TritonDetector(server.http_url) as client:
            report["one_client"] = _timed(client.detect, frames, args.rounds)
            with EdgeDetector() as local:  # in-process single stream, as the baseline
                report["one_client_paired"] = _paired(local.detect, client.detect, frames, args.rounds)
        requests = args.requests if layout == "throughput" else max(args.clients, args.requests // 10)
        report["concurrent"] = _concurrent(server.http_url, frames, expected, args.clients, requests)
        report["concurrent"]["x_in_process"] = round(report["concurrent"]["images_per_s"] / baseline, 2)
    finally:
        t = time.perf_counter()
        server.close()
        report["shutdown_s"] = round(time.perf_counter() - t, 2)
        shutil.rmtree(scratch, ignore_errors=True)
    print(layout, json.dumps(report), flush=True)
    return report


def main() -> int:
    import cv2

    from edgedb import EdgeDetector

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--count", type=int, default=20, help="images (default 20)")
    parser.add_argument("--requests", type=int, default=800,
                        help="served requests from --clients on the throughput layout (default 800)")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--instances", type=int, default=2, help="instances of the throughput layout (default 2)")
    parser.add_argument("--threads", type=int, help="threads per instance there (default: cores / instances)")
    parser.add_argument("--max-batch", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3, help="passes over the images when timing (default 3)")
    parser.add_argument("--layouts", nargs="+", choices=["throughput", "latency"], default=["throughput", "latency"],
                        help="the served layouts to run (default both)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    paths = sorted(args.data.glob("*.jpg"))[: args.count]
    frames = [cv2.imread(str(p)) for p in paths]
    cores = os.cpu_count() or 1
    threads = args.threads or max(1, cores // args.instances)
    report = {"machine": machine_line(), "images": len(frames), "size": list(frames[0].shape[:2]),
              "max_batch": args.max_batch}

    with EdgeDetector() as local:  # in-process single stream on every core
        report["in_process"] = _timed(local.detect, frames, args.rounds)
    baseline = report["in_process"]["images_per_s"]
    report["ceiling"] = {"side_by_side": _side_by_side(frames, args.instances, threads, args.rounds),
                         "batched": _batched(frames, args.max_batch, args.rounds)}
    report["ceiling"]["x_in_process"] = round(max(report["ceiling"].values()) / baseline, 2)
    print("in-process", report["in_process"], "ceiling", report["ceiling"], flush=True)
    if "throughput" in args.layouts:
        report["throughput_layout"] = _served("throughput", frames, args.instances, threads, args, baseline)
    if "latency" in args.layouts:
        report["latency_layout"] = _served("latency", frames, 1, cores, args, baseline)
    with EdgeDetector() as local:  # again, after: the machine's swing over the run
        report["in_process_after"] = _timed(local.detect, frames, args.rounds)
    print(json.dumps(report, indent=1))
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
