"""ONNX Runtime's CPU arena: speed with it off, on, and shrunk after every run; RSS after a
huge frame in each mode (the figures of bench/RESULTS.md, "ONNX Runtime's CPU arena, back").

    python bench/bench_arena.py speed          # 8 interleaved runs of a 736x1312 frame each
    python bench/bench_arena.py off|on|shrink  # RSS: 720p, one 4096x4096 frame, 720p again

Sessions get the backend's own options (``session_options``, two threads) and shrink with
its run option (``ort_run_options``). Run each RSS mode in its own process.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_soak import memory_mb  # noqa: E402


def main(mode: str) -> None:
    if mode not in ("speed", "off", "on", "shrink"):
        sys.exit(f"bench_arena: mode must be speed, off, on or shrink, not {mode!r}")
    import onnxruntime as ort

    from edgedb.backends.onnxrt import ort_run_options, session_options
    from edgedb.detector import load_deployable

    proto, spec = load_deployable("ppocrv4-det")
    data = proto.SerializeToString()

    def session(arena: bool):
        return ort.InferenceSession(data, session_options(2, arena=arena), providers=["CPUExecutionProvider"])

    shrink = ort_run_options(shrink_arena=True)
    frame = {spec.input_name: np.random.default_rng(0).integers(0, 255, (1, 736, 1312, 3), np.uint8)}
    if mode == "speed":
        sessions = {"off": session(False), "on": session(True), "on+shrink": session(True)}
        times = {name: [] for name in sessions}
        for item in sessions.values():
            item.run(["prob"], frame)
        for _ in range(8):
            for name, item in sessions.items():
                start = time.perf_counter()
                item.run(["prob"], frame, shrink if name == "on+shrink" else None)
                times[name].append(time.perf_counter() - start)
        for name, values in times.items():
            print(f"{name}: median {statistics.median(values) * 1e3:.1f} ms, min {min(values) * 1e3:.1f} ms")
        return
    item = session(mode != "off")
    options = shrink if mode == "shrink" else None
    for _ in range(3):
        item.run(["prob"], frame)
    steady = memory_mb()
    item.run(["prob"], {spec.input_name: np.zeros((1, 4096, 4096, 3), np.uint8)}, options)
    after_big = memory_mb()
    for _ in range(3):
        item.run(["prob"], frame, options)
    print(f"{mode}: steady {steady:.0f} MB, after 4096x4096 {after_big:.0f} MB, after 3 more 720p {memory_mb():.0f} MB")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "speed")
