"""ONNX Runtime's CPU arena: speed with it off, on, and shrunk after every run; RSS after a
huge frame in each mode (the figures of bench/RESULTS.md, "ONNX Runtime's CPU arena, back").

    python bench/bench_arena.py speed          # 8 interleaved runs of a 736x1312 frame each
    python bench/bench_arena.py off|on|shrink  # RSS: 720p, one 4096x4096 frame, 720p again

Run each RSS mode in its own process.
"""
import statistics
import sys
import time

import numpy as np
import onnxruntime as ort

from edgedb.detector import load_deployable
proto, spec = load_deployable("ppocrv4-det")
data = proto.SerializeToString()
def sess(arena, strategy=None):
    o = ort.SessionOptions(); o.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    o.enable_cpu_mem_arena = arena; o.intra_op_num_threads = 2; o.inter_op_num_threads = 1
    o.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return ort.InferenceSession(data, o, providers=["CPUExecutionProvider"])
frame = np.random.default_rng(0).integers(0, 255, (1, 736, 1312, 3), np.uint8)
shrink = ort.RunOptions(); shrink.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")
def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS"): return int(line.split()[1]) // 1024
mode = sys.argv[1]
if mode == "speed":
    s = {"off": sess(False), "on": sess(True), "on+shrink": sess(True)}
    t = {k: [] for k in s}
    for k, x in s.items(): x.run(["prob"], {spec.input_name: frame})
    for i in range(8):
        for k, x in s.items():
            a = time.perf_counter(); x.run(["prob"], {spec.input_name: frame}, shrink if k == "on+shrink" else None); t[k].append(time.perf_counter() - a)
    for k, v in t.items(): print(k, "median %.1f ms  min %.1f" % (statistics.median(v) * 1e3, min(v) * 1e3))
else:
    arena = mode != "off"
    x = sess(arena)
    for _ in range(3): x.run(["prob"], {spec.input_name: frame})
    steady = rss()
    big = np.zeros((1, 4096, 4096, 3), np.uint8)
    x.run(["prob"], {spec.input_name: big}, shrink if mode == "shrink" else None)
    peak = rss()
    for _ in range(3): x.run(["prob"], {spec.input_name: frame}, shrink if mode == "shrink" else None)
    print(mode, "steady", steady, "after big", peak, "after 3 normal", rss())
