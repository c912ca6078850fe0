"""The benchmark's own overhead: ``edgedb bench``'s median latency against a bare
``time.perf_counter()`` loop over the same ``EdgeDetector.detect`` calls, same detector,
same frames, in interleaved rounds of one run.

    python bench/bench_overhead.py [--images DIR] [--rounds 5] [--queries 30]

Goal: the two medians agree within 3%.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_IMAGES = ROOT.parent / "shared" / "data" / "icdar2015-dev" / "images"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=Path, default=DEFAULT_IMAGES)
    parser.add_argument("--model", default="ppocrv4-det")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--queries", type=int, default=30, help="queries per contender per round")
    args = parser.parse_args()

    from edgedb import EdgeDetector
    from edgedb.bench import bare_loop, run_benchmark
    from edgedb.bench.runner import default_frames, load_frames
    from edgedb.bench.system import system_info

    # One input size for all frames, so every query does the same work in both loops.
    frames = load_frames(args.images, limit=args.queries) if args.images.is_dir() else default_frames()
    bench_ms, bare_ms = [], []
    with EdgeDetector(args.model, "cpu", input_size=(736, 1312)) as detector:
        bare_loop(detector, frames, 3)  # warm-up
        for round_index in range(args.rounds):
            for contender in (("bench", "bare") if round_index % 2 == 0 else ("bare", "bench")):
                if contender == "bench":
                    result = run_benchmark(args.model, detectors=[detector], images=frames, warm_up_ms=0,
                                           duration_s=0, iterations=args.queries, progress=False)
                    bench_ms += [q.latency_ms for q in result.queries]
                else:
                    bare_ms += bare_loop(detector, frames, args.queries)
    bench_median, bare_median = statistics.median(bench_ms), statistics.median(bare_ms)
    system = system_info()
    print(f"machine: {system['cpu']}, {system['cores']} cores, Python {system['python']}, "
          f"ONNX Runtime {system['onnxruntime']}")
    print(f"frames: {len(frames)} from {args.images if args.images.is_dir() else 'edgedb.synthetic'}, "
          f"letterboxed into 736x1312; {args.rounds} interleaved rounds of {args.queries} queries each")
    print(f"edgedb bench median latency: {bench_median:.2f} ms ({len(bench_ms)} queries)")
    print(f"bare perf_counter loop over detect(): {bare_median:.2f} ms ({len(bare_ms)} calls)")
    difference = (bench_median - bare_median) / bare_median
    print(f"difference: {difference:+.2%} (goal: within 3%)")
    return 0 if abs(difference) <= 0.03 else 1


if __name__ == "__main__":
    sys.exit(main())
