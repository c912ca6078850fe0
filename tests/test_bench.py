"""edgedb bench: statistics on known data, what a run measures, reports, errors."""

from __future__ import annotations

import json
import math
import statistics
import threading

import numpy as np
import pytest

from edgedb import InvalidInputError, MissingDependencyError
from edgedb.bench import Summary, percentile, report, run_benchmark, run_comparison
from edgedb.bench.stats import coefficient_of_variation, median, throughput
from edgedb.cli import main
from edgedb.synthetic import make_text_image

# Small scenes, small frames: a query takes a few milliseconds on two cores.
FAST = dict(backend="cpu", detector_options={"limit_type": "max", "limit_side_len": 320}, threads=2,
            progress=False)


@pytest.fixture(scope="module")
def frames():
    return [make_text_image(seed, size=(240, 320)).image for seed in range(3)]


def test_percentiles_and_median_as_trtexec_computes_them():
    hundred = list(range(1, 101))
    # float32 arithmetic, as in trtexec: (1 - 0.99f) * 100 = 0.99999 -> nothing excluded, p99 = max
    assert [percentile(hundred[::-1], p) for p in (90, 95, 99, 100, 0)] == [90, 95, 100, 100, 1]
    assert percentile(list(range(1, 1001)), 99) == 991 and percentile(list(range(1, 1001)), 90) == 900
    ten = list(range(1, 11))
    assert percentile(ten, 90) == 9 and percentile(ten, 99) == 10 and percentile(ten, 50) == 5
    assert median(ten) == 5.5 and median([3, 1, 2]) == 2
    assert percentile([], 90) == math.inf
    with pytest.raises(InvalidInputError):
        percentile(ten, 101)
    assert coefficient_of_variation([2, 4, 4, 4, 5, 5, 7, 9]) == pytest.approx(40.0)  # std 2, mean 5
    summary = Summary.of([4.0, 1.0, 3.0, 2.0])
    assert (summary.min, summary.max, summary.mean, summary.median, summary.count) == (1.0, 4.0, 2.5, 2.5, 4)
    assert throughput(30, 1.0, 4.0) == 10.0


def test_a_run_times_every_stage_and_they_add_up(frames):
    result = run_benchmark(images=frames, warm_up_ms=50, duration_s=0.4, iterations=6, **FAST)
    assert len(result.queries) >= 6 and not result.interrupted
    assert all(q.start >= 0.05 for q in result.queries)  # warm-up queries dropped
    gaps = []
    for query in result.queries:
        assert set(query.stages) == {"preprocess", "infer", "boxes"}
        gaps.append(query.latency_ms - sum(query.stages.values()))
    # One clock: only the call around the stages is outside them. A single query may take
    # a garbage collection or a thread switch there (0.53 ms once, a fresh clone's first
    # test), so the typical gap is what is bounded.
    assert min(gaps) >= 0 and statistics.median(gaps) < 0.1, gaps
    data = result.to_dict()
    for key in ("settings", "system", "throughput_qps", "throughput_images_per_s", "latency_ms", "stages_ms",
                "stage_shares", "walltime_s", "mean_boxes"):
        assert key in data
    assert data["throughput_qps"] == pytest.approx(len(result.queries) / result.walltime_s())
    assert data["mean_boxes"] > 0  # generated scenes have text
    assert sum(data["stage_shares"][s] for s in ("preprocess", "infer", "boxes")) == pytest.approx(1.0, abs=0.01)
    assert set(data["latency_ms"]) >= {"min", "max", "mean", "median", "p90", "p95", "p99"}
    json.dumps(data, default=str)
    times = result.times()
    assert set(times[0]) >= {"worker", "startMs", "endMs", "latencyMs", "preprocessMs", "inferMs", "boxesMs"}
    text = report([result])
    assert "Throughput:" in text and "percentile(99%)" in text and "Box formation" in text


def test_infer_only_iterations_streams_and_batches(frames):
    only = run_benchmark(images=frames, warm_up_ms=0, duration_s=0, iterations=5, infer_only=True, **FAST)
    assert len(only.queries) >= 5 and all(set(q.stages) == {"infer"} for q in only.queries)
    two = run_benchmark(images=frames, warm_up_ms=0, duration_s=0.3, iterations=4, streams=2,
                        **{**FAST, "threads": 1})
    assert {q.worker for q in two.queries} == {0, 1} and two.settings["streams"] == 2
    batched = run_benchmark(images=frames, warm_up_ms=0, duration_s=0, iterations=2, batch=2,
                            input_size=(256, 320), **FAST)
    assert batched.settings["frame_shape"] == [256, 320, 3]
    assert batched.to_dict()["throughput_images_per_s"] == pytest.approx(2 * batched.qps())
    with pytest.raises(InvalidInputError, match="input_size"):
        run_benchmark(images=frames, batch=2, **FAST)


def test_compare_mode_interleaves_and_profiles_layers(frames, tmp_path):
    results = run_comparison(["ppocrv4-det", "ppocrv4-det@cpu"], rounds=2, images=frames, warm_up_ms=0,
                             duration_s=0.2, iterations=4, **FAST)
    assert [r.label for r in results] == ["ppocrv4-det", "ppocrv4-det@cpu"]
    for result in results:
        assert len(result.queries) >= 4 and len(result.segments) == 2
        starts = [q.start for q in result.queries]
        assert starts == sorted(starts)  # rounds laid end to end
    assert "speed-up" in report(results)
    profiled = run_benchmark(images=frames, warm_up_ms=0, duration_s=0, iterations=1, export_profile=True, **FAST)
    assert profiled.layers and profiled.layers[0]["total_ms"] >= profiled.layers[-1]["total_ms"] > 0
    from edgedb.bench.plot import plot_results

    pytest.importorskip("matplotlib")
    png = plot_results(results, tmp_path / "bench.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_stopping_early_keeps_what_was_measured(frames):
    stop = threading.Event()
    timer = threading.Timer(0.3, stop.set)
    timer.start()
    result = run_benchmark(images=frames, warm_up_ms=0, duration_s=60, iterations=10**6, stop=stop, **FAST)
    timer.cancel()
    assert result.interrupted and result.queries
    assert "interrupted" in report([result])


def test_bad_input_gets_clear_errors(tmp_path, capsys, monkeypatch):
    empty = tmp_path / "empty"
    empty.mkdir()
    cases = [
        (["bench", "no-such-model.onnx"], "no model file"),
        (["bench", "ppocrv4-det", "--shapes", "1x736"], "NxHxW"),
        (["bench", "ppocrv4-det", "--duration", "0", "--iterations", "0"], "positive duration"),
        (["bench", "ppocrv4-det", "--images", str(empty)], "holds no images"),
        (["bench", "ppocrv4-det", "--json", str(tmp_path / "missing" / "x.json")], "does not exist"),
        (["bench", "ppocrv4-det", "--streams", "0"], "streams"),
        (["bench", "ppocrv4-det", "--plot", str(tmp_path / "x.jpg"), "--duration", "0", "--iterations", "1",
          "--limit-type", "max", "--limit-side-len", "64"], "PNG"),
    ]
    for args, message in cases:
        assert main(args) == 2, args
        assert message in capsys.readouterr().err, args
    monkeypatch.setitem(__import__("sys").modules, "matplotlib", None)
    from edgedb.bench.plot import _pyplot

    with pytest.raises(MissingDependencyError, match="pip install matplotlib"):
        _pyplot()


def test_cli_writes_its_files(tmp_path, capsys):
    out = {name: tmp_path / name for name in ("b.json", "t.json", "p.json")}
    args = ["bench", "ppocrv4-det", "--backend", "cpu", "--duration", "0.2", "--iterations", "3", "--warm-up", "0",
            "--limit-type", "max", "--limit-side-len", "320", "--json", str(out["b.json"]),
            "--export-times", str(out["t.json"]), "--export-profile", str(out["p.json"])]
    assert main(args) == 0
    assert "Throughput:" in capsys.readouterr().out
    summary = json.loads(out["b.json"].read_text())[0]
    assert summary["queries"] >= 3 and summary["settings"]["backend"] == "onnxruntime"
    assert len(json.loads(out["t.json"].read_text())["ppocrv4-det"]) == summary["queries"]
    assert json.loads(out["p.json"].read_text())["ppocrv4-det"][0]["layer"]


def test_tensorrt_runs_report_the_gpu_stages(monkeypatch, frames):
    from fake_tensorrt import install

    install(monkeypatch, gpu_name="bench GPU")
    result = run_benchmark(images=frames, warm_up_ms=0, duration_s=0, iterations=3, export_profile=True,
                           **{**FAST, "backend": "tensorrt",
                              "detector_options": {"limit_type": "max", "limit_side_len": 320,
                                                   "image_sizes": [(240, 320)]}})
    assert result.settings["backend"] == "tensorrt"
    stages = result.stage_summaries()
    assert {"h2d", "compute", "d2h"} <= set(stages) and stages["compute"].median > 0
    assert result.layers and result.layers[0]["calls"] == 10  # one report per layer per profiled run
    assert "GPU Compute Time" in report([result])
    assert not np.isnan(result.latency().median)


def test_peer_benchmark_runs(tmp_path):
    """bench/bench_peers.py end to end on two generated images (skipped without its peers)."""
    import importlib.util
    import json
    from pathlib import Path

    pytest.importorskip("rapidocr")
    pytest.importorskip("openvino")
    from edgedb.synthetic import make_dataset

    script = Path(__file__).resolve().parents[1] / "bench" / "bench_peers.py"
    spec = importlib.util.spec_from_file_location("bench_peers", script)
    bench_peers = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench_peers)
    make_dataset(tmp_path / "data", 2, seed=5, size=(320, 480))
    out = tmp_path / "peers.json"
    assert bench_peers.main(["--models", "ppocrv4-det", "--images", str(tmp_path / "data"), "--count", "2",
                             "--json", str(out), "--markdown", str(tmp_path / "peers.md")]) == 0
    report = json.loads(out.read_text())
    rows = report["models"][0]["contenders"]
    assert {"rapidocr-ort", "rapidocr-ov", "rapidocr-ov-f32", "edgedb-ort", "edgedb-ov", "edgedb-ov-bf16"} <= set(rows)
    assert all(row["hmean"] is not None and row["mean_ms"] > 0 for row in rows.values())
    assert "x rapidocr-ov" in (tmp_path / "peers.md").read_text()
    # --only keeps the three baselines; --offset skips images
    assert bench_peers.main(["--models", "ppocrv4-det", "--images", str(tmp_path / "data"), "--offset", "1",
                             "--count", "5", "--only", "edgedb-ov", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert set(report["models"][0]["contenders"]) == {"rapidocr-ort", "rapidocr-ov", "rapidocr-ov-f32", "edgedb-ort", "edgedb-ov"}
    assert report["count"] == 1 and report["models"][0]["images"] == 1
