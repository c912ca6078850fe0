"""Benchmark reports: trtexec's performance summary, with the detector's stages added."""

from __future__ import annotations

from typing import Sequence

from edgedb.bench.runner import BenchmarkResult

STAGE_TITLES = {
    "preprocess": "Preprocessing",
    "infer": "Inference (host)",
    "h2d": "H2D Latency",
    "compute": "GPU Compute Time",
    "d2h": "D2H Latency",
    "boxes": "Box formation",
}
PERCENTILE_NOTE = ("percentiles as trtexec computes them: nearest rank, sorted[max(N - 1 - int((1 - p/100) * N), 0)]; "
                   "median averages the two middle values of an even count")


def format_system(system: dict) -> str:
    parts = [f"CPU: {system.get('cpu', '?')} ({system.get('cores', '?')} cores, {system.get('machine', '')})",
             f"memory {system.get('memory_gib', '?')} GiB", f"OS {system.get('os', '?')}",
             f"Python {system.get('python', '?')}", f"ONNX Runtime {system.get('onnxruntime', '?')}"]
    for key, title in (("openvino", "OpenVINO"), ("tensorrt", "TensorRT"), ("cuda_driver", "CUDA driver"), ("gpu", "GPU"),
                       ("compute_capability", "compute capability"), ("l4t", "L4T"), ("power_mode", "power mode"),
                       ("clocks_locked", "clocks locked")):
        if key in system:
            parts.append(f"{title} {system[key]}")
    return ", ".join(parts)


def _shape(shape) -> str:
    return "x".join(map(str, shape))


def format_settings(settings: dict) -> str:
    shape = _shape(settings.get("frame_shape", []))
    mode = (f"input size {settings['input_size'][0]}x{settings['input_size'][1]}" if settings.get("input_size")
            else "limit mode (aspect kept)")
    if settings.get("input_shapes", 1) > 1:
        mode += (f"; {settings['input_shapes']} input sizes, {_shape(settings['smallest_input'])} to "
                 f"{_shape(settings['largest_input'])}")
    return (f"model {settings['model']}, backend {settings['backend']}, batch {settings['batch']}, first frame {shape} "
            f"({mode}), streams {settings['streams']}, warm-up {settings['warm_up_ms']:g} ms, duration "
            f"{settings['duration_s']:g} s, iterations >= {settings['iterations']}, "
            f"{'network only (--infer-only)' if settings['infer_only'] else 'whole detector'}, "
            f"{settings['frames']} frame{'' if settings['frames'] == 1 else 's'}")


def format_result(result: BenchmarkResult) -> str:
    lines = [f"=== {result.label} ===", format_settings(result.settings)]
    if result.interrupted:
        lines.append("(interrupted: figures of the queries measured so far)")
    if not result.queries:
        lines.append("no queries were measured")
        return "\n".join(lines)
    qps = result.qps()
    lines.append(f"Throughput: {qps:.3f} qps ({qps * result.batch:.3f} images/s)")
    lines.append(f"Latency: {result.latency().line()}")
    summaries = result.stage_summaries()
    for stage, title in STAGE_TITLES.items():
        if stage in summaries:
            lines.append(f"{title}: {summaries[stage].line()}")
    lines.append(f"Total Host Walltime: {result.walltime_s():.3f} s, {len(result.queries)} queries "
                 f"(warm-up dropped), {result.to_dict()['mean_boxes'] / result.batch:.1f} boxes per frame")
    shares = result.stage_shares()
    if shares:
        inner = [f"{STAGE_TITLES[s]} {shares[s]:.1%}" for s in ("h2d", "compute", "d2h") if s in shares]
        top = [f"{STAGE_TITLES[s].lower()} {shares[s]:.1%}" for s in ("preprocess", "infer", "boxes") if s in shares]
        lines.append("Share of end-to-end time: " + ", ".join(top) + (f" (of which {', '.join(inner)})" if inner else ""))
    lines.extend(_warnings(result))
    if result.layers:
        lines.append("Slowest layers (separate profiled run):")
        for row in result.layers:
            lines.append(f"  {row['total_ms'] / row['calls']:8.3f} ms  {row['share']:6.1%}  {row['layer']}")
    return "\n".join(lines)


def _warnings(result: BenchmarkResult) -> list[str]:
    """trtexec's advice, where it applies to a whole detector."""
    out = []
    latency = result.latency()
    sizes = result.settings.get("input_shapes", 1)
    if latency.cov_percent > 5.0 and sizes > 1:
        out.append(f"[I] latency varies (coefficient of variation {latency.cov_percent:.1f}%) because the frames "
                   f"differ in size ({sizes} input sizes, {_shape(result.settings['smallest_input'])} to "
                   f"{_shape(result.settings['largest_input'])}), not necessarily the machine; for its steadiness, "
                   "time one size (--input-size HxW)")
    elif latency.cov_percent > 5.0:
        out.append(f"[W] latency varies (coefficient of variation {latency.cov_percent:.1f}%): other load on the "
                   "machine, frequency scaling or thermal throttling; lock clocks (jetson_clocks) and run longer")
    if result.settings.get("streams", 1) > 1:
        out.append("[I] with several streams, read throughput: latencies include waiting for the others")
    stages = result.stage_summaries()
    if "compute" in stages and "h2d" in stages and stages["h2d"].median >= stages["compute"].median:
        out.append("[W] copies take as long as compute: on a Jetson the zero-copy path avoids them")
    return out


def format_comparison(results: Sequence[BenchmarkResult]) -> str:
    """One row per contender, with ratios against the first."""
    base = results[0]
    rows = [f"{'contender':<32} {'qps':>9} {'img/s':>9} {'median ms':>10} {'p99 ms':>9} {'speed-up':>9}"]
    for result in results:
        latency = result.latency()
        ratio = result.qps() / base.qps() if base.qps() else float("nan")
        rows.append(f"{result.label[:32]:<32} {result.qps():9.3f} {result.qps() * result.batch:9.3f} "
                    f"{latency.median:10.3f} {latency.p99:9.3f} {ratio:8.2f}x")
    return "\n".join(rows)


def report(results: Sequence[BenchmarkResult]) -> str:
    parts = ["=== System ===", format_system(results[0].system)]
    for result in results:
        parts += ["", format_result(result)]
    if len(results) > 1:
        parts += ["", "=== Comparison (interleaved rounds; speed-up = throughput against the first) ===",
                  format_comparison(results)]
    parts += ["", f"({PERCENTILE_NOTE})"]
    return "\n".join(parts)
