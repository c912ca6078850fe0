"""Issue 19, new-user trip-ups: each one a flag, message or default that a first run
stumbled on, checked as the user met it (``edgedb ...``) and, where the library was at
fault too, at the library call."""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from edgedb import InvalidInputError
from edgedb.cli import build_parser, main
from edgedb.synthetic import make_dataset, make_text_image

CHECKOUT = Path(__file__).resolve().parents[1]
CORES = os.cpu_count() or 1
# Tiny and quick: a query or a calibration pass takes milliseconds.
QUICK_BENCH = ["--backend", "cpu", "--duration", "0", "--iterations", "1", "--warm-up", "0",
               "--limit-type", "max", "--limit-side-len", "64", "--threads", "1"]


def _subparsers() -> dict:
    parser = build_parser()
    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices


def _one_word(path: Path) -> Path:
    """A white image with one black word: the default model finds exactly one box in it."""
    image = np.full((160, 320, 3), 255, np.uint8)
    cv2.putText(image, "HELLO", (40, 100), cv2.FONT_HERSHEY_SIMPLEX, 2.0, (0, 0, 0), 5)
    cv2.imwrite(str(path), image)
    return path


# 1 -------------------------------------------------------------------------------------


def test_bench_defaults_to_the_model_detect_uses(capsys):
    assert build_parser().parse_args(["bench"]).models == ["ppocrv4-det"]
    assert "default ppocrv4-det" in " ".join(_subparsers()["bench"].format_help().split())
    assert main(["bench", *QUICK_BENCH]) == 0
    assert "Throughput:" in capsys.readouterr().out


# 2 -------------------------------------------------------------------------------------


def test_compare_names_the_gt_flag_not_the_python_argument(tmp_path, capsys):
    images = tmp_path / "images"
    images.mkdir()
    cv2.imwrite(str(images / "img_1.jpg"), make_text_image(1, size=(96, 128)).image)  # no gt folder anywhere
    assert main(["compare", "ppocrv4-det", "ppocrv4-det", "--images", str(images)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pass --gt" in err and "gt_dir" not in err


def test_library_argument_names_become_flags():
    from edgedb.cli import _in_cli_words

    flags = _subparsers()["train"].get_default("cli_flags")
    assert _in_cli_words("batch_size must be >= 1, not 0", flags) == "--batch-size must be >= 1, not 0"
    assert _in_cli_words("seed must be at most 4294967295", flags) == "--seed must be at most 4294967295"
    assert _in_cli_words("the seed of the crops", flags) == "the seed of the crops"  # prose stays prose
    budget = "edgedb.memory.MEMORY_BUDGET or $EDGEDB_MEMORY_BUDGET"
    assert _in_cli_words(budget, flags) == budget


# 3 -------------------------------------------------------------------------------------


def test_build_says_tensorrt_is_missing_before_the_output_folder(tmp_path, capsys):
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("tensorrt is installed here")
    engine = tmp_path / "engines" / "det-fp16.engine"
    assert main(["build", "ppocrv4-det", "--precision", "fp16", "-o", str(engine)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "tensorrt" in err and "does not exist" not in err


def test_build_makes_the_output_folder_as_detect_draw_does(tmp_path, monkeypatch, capsys):
    import edgedb.backends.tensorrt as trt_backend
    import edgedb.engine
    from edgedb.errors import EdgeDBError

    monkeypatch.setattr(trt_backend, "import_tensorrt", lambda: None)
    monkeypatch.setattr(trt_backend, "import_pycuda_driver", lambda: None)

    def build_from_model(model, output, **kwargs):
        raise EdgeDBError(f"stub builder: folder there: {Path(output).parent.is_dir()}")

    monkeypatch.setattr(edgedb.engine, "build_from_model", build_from_model)
    engine = tmp_path / "engines" / "det-fp16.engine"
    assert main(["build", "ppocrv4-det", "--precision", "fp16", "-o", str(engine)]) == 2
    assert "stub builder: folder there: True" in capsys.readouterr().err


# 4 -------------------------------------------------------------------------------------


def test_calibration_cache_is_in_edgedbs_cache_folder(tmp_path, monkeypatch):
    from edgedb.precision.calibration import DEFAULT_CACHE, stats_cache_dir

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("EDGEDB_CACHE", str(tmp_path / "edgedb-cache"))
    assert stats_cache_dir(DEFAULT_CACHE) == tmp_path / "edgedb-cache" / "calibration"
    monkeypatch.delenv("EDGEDB_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert stats_cache_dir() == tmp_path / "xdg" / "edgedb" / "calibration"
    assert stats_cache_dir(None) is None and stats_cache_dir(tmp_path / "mine") == tmp_path / "mine"
    # One rule, said the same way in --help, the library and the README.
    rule = "($EDGEDB_CACHE, else $XDG_CACHE_HOME/edgedb or ~/.cache/edgedb)"
    import edgedb.precision.calibration as calibration

    assert rule in " ".join(_subparsers()["quantize"].format_help().split())
    assert rule in " ".join(calibration.__doc__.split())
    readme = " ".join((CHECKOUT / "README.md").read_text().replace("`", "").split())
    assert "calibration/ in edgedb's cache folder " + rule[:-1] in readme and "calibration/cache" not in readme


def test_quantize_from_another_folder_leaves_the_checkout_alone(tmp_path, monkeypatch, capsys):
    checkout_cache = CHECKOUT / "calibration" / "cache"
    before = sorted(checkout_cache.iterdir()) if checkout_cache.is_dir() else []
    calib = tmp_path / "calib"
    calib.mkdir()
    _one_word(calib / "word.png")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("EDGEDB_CACHE", str(tmp_path / "edgedb-cache"))
    assert main(["quantize", "ppocrv4-det", "--calib", str(calib), "--input-size", "64x64", "-o", "q.onnx"]) == 0
    assert list((tmp_path / "edgedb-cache" / "calibration").glob("stats-*.npz"))
    assert (sorted(checkout_cache.iterdir()) if checkout_cache.is_dir() else []) == before


# 5 -------------------------------------------------------------------------------------


def test_every_flag_with_a_default_says_it_in_its_help():
    missing = []
    for name, parser in _subparsers().items():
        for action in parser._actions:
            if isinstance(action, (argparse._HelpAction, argparse._StoreTrueAction)):
                continue
            if action.default not in (None, argparse.SUPPRESS) and "default" not in (action.help or ""):
                missing.append(f"{name} {'/'.join(action.option_strings) or action.dest}")
    assert missing == []
    assert "(default tensorrt)" in " ".join(_subparsers()["quantize"].format_help().split())


# 6 -------------------------------------------------------------------------------------


def test_bench_puts_variation_on_differing_frame_sizes():
    from edgedb.bench import report, run_benchmark
    from edgedb.bench.runner import Query

    frames = [make_text_image(0, size=(96, 128)).image, make_text_image(1, size=(192, 256)).image]
    result = run_benchmark(images=frames, backend="cpu", warm_up_ms=0, duration_s=0, iterations=2, threads=1,
                           progress=False, detector_options={"limit_type": "max", "limit_side_len": 256})
    settings = result.settings
    assert settings["input_shapes"] == 2 and settings["smallest_input"] == [96, 128]
    assert settings["largest_input"] == [192, 256]
    # Latencies of 5 and 15 ms, one per size: a coefficient of variation of 50%.
    uneven = [Query(0, i * 0.02, i * 0.02 + (0.005 if i % 2 else 0.015), {"infer": 1.0}) for i in range(10)]
    text = report([dataclasses.replace(result, queries=uneven)])
    assert "2 input sizes, 96x128 to 192x256" in text  # in the header
    assert "differ in size" in text and "--input-size" in text and "[W] latency varies" not in text
    one_size = dataclasses.replace(result, queries=uneven, settings={**settings, "input_shapes": 1})
    assert "[W] latency varies" in report([one_size])


# 7 -------------------------------------------------------------------------------------


def test_skipped_images_and_counts_read_right(tmp_path, capsys):
    from edgedb.cli import _counted

    word = _one_word(tmp_path / "one.png")
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"garbage")
    assert main(["detect", str(word), str(bad), "--threads", "1"]) == 0
    captured = capsys.readouterr()
    assert f"{word}: 1 box\n" in captured.out and "1 boxes" not in captured.out
    assert "1 image, 1 skipped" in captured.out and "1 images" not in captured.out
    assert f"skipped {bad}: not an image OpenCV can read" in captured.err
    assert [_counted(n, "box", "boxes") for n in (0, 1, 2)] == ["0 boxes", "1 box", "2 boxes"]


# 8 -------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", ["-1", str(2**32)])
def test_train_seed_is_bounded_on_the_cli(tmp_path, capsys, seed):
    make_dataset(tmp_path / "data", 1, seed=3, size=(96, 128))
    assert main(["train", "--images", str(tmp_path / "data"), "-o", str(tmp_path / "t.onnx"), "--seed", seed]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--seed" in err and "ValueError" not in err


@pytest.mark.parametrize("seed", [-1, 2**32])
def test_finetune_seed_is_bounded(seed):
    pytest.importorskip("torch")
    from edgedb._checks import seed_value
    from edgedb.train import finetune

    with pytest.raises(InvalidInputError, match="seed"):
        finetune([object()], seed=seed, progress=False)  # refused before any sample is looked at
    assert seed_value("seed", 2**32 - 1) == 2**32 - 1


# 9 -------------------------------------------------------------------------------------


@pytest.mark.parametrize("command", [
    ["quantize", "ppocrv4-det", "-o", "{tmp}/q.onnx", "--calib", "{tmp}"],
    ["compare", "ppocrv4-det", "ppocrv4-det", "--images", "{tmp}"],
    ["bench"],
    ["build", "ppocrv4-det", "-o", "{tmp}/e.engine"],
    ["detect"],
])
def test_input_size_must_be_a_multiple_of_32_everywhere(tmp_path, capsys, command):
    started = time.perf_counter()
    args = [part.format(tmp=tmp_path) for part in command]
    assert main([*args, "--input-size", "33x33"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "multiples of 32" in err and "--input-size" in err and "64x64" in err
    assert time.perf_counter() - started < 1.0  # said before any model loads or calibration runs


def test_bench_shapes_must_be_a_multiple_of_32(capsys):
    assert main(["bench", "--shapes", "1x33x64"]) == 2
    assert "multiples of 32" in capsys.readouterr().err


def test_collect_stats_refuses_an_input_size_off_the_stride(fp32, tmp_path):
    from edgedb.precision.calibration import collect_stats

    with pytest.raises(InvalidInputError, match="multiples of 32"):
        collect_stats(fp32, [_one_word(tmp_path / "one.png")], input_size=(33, 33), cache_dir=None)


# 10 ------------------------------------------------------------------------------------


@pytest.mark.parametrize("command", [["detect"], ["eval", "--images", "x"], ["bench"],
                                     ["train", "--images", "x", "-o", "t.onnx"]])
def test_threads_are_bounded_by_the_cores(capsys, command):
    assert main([*command, "--threads", str(CORES + 1)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--threads" in err and f"{CORES} cores" in err


def test_library_threads_are_bounded_by_the_cores():
    from edgedb import EdgeDetector
    from edgedb.backends.onnxrt import session_options

    with pytest.raises(InvalidInputError, match=f"threads={CORES + 1} on a machine with {CORES} cores"):
        session_options(CORES + 1)
    with pytest.raises(InvalidInputError, match="threads"):
        EdgeDetector(threads=4096)
    assert session_options(CORES).intra_op_num_threads == CORES


def test_bench_streams_are_bounded_by_cores_and_256(capsys):
    from edgedb.bench.runner import check_settings, max_streams

    assert max_streams() == min(256, 4 * CORES)
    assert main(["bench", "--streams", str(max_streams() + 1)]) == 2
    err = capsys.readouterr().err
    assert "--streams" in err and f"at most {max_streams()}" in err
    with pytest.raises(InvalidInputError, match="streams"):
        check_settings(batch=1, warm_up_ms=0, duration_s=1, iterations=1, streams=max_streams() + 1)
    assert f"({max_streams()} here)" in " ".join(_subparsers()["bench"].format_help().split())


# 11 ------------------------------------------------------------------------------------


@pytest.mark.parametrize("flag", ["--warm-up", "--duration"])
@pytest.mark.parametrize("value", ["inf", "nan", "-inf"])
def test_bench_times_must_be_finite(capsys, flag, value):
    assert main(["bench", f"{flag}={value}"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and flag in err and "finite" in err


@pytest.mark.parametrize("setting", [{"warm_up_ms": math.inf}, {"warm_up_ms": math.nan},
                                     {"duration_s": math.inf}, {"duration_s": math.nan}])
def test_run_benchmark_times_must_be_finite(setting):
    from edgedb.bench import run_benchmark
    from edgedb.bench.runner import check_settings

    values = {"batch": 1, "warm_up_ms": 0.0, "duration_s": 1.0, "iterations": 1, "streams": 1, **setting}
    with pytest.raises(InvalidInputError, match=next(iter(setting))):
        check_settings(**values)
    with pytest.raises(InvalidInputError, match="finite"):
        run_benchmark(**setting, progress=False)  # refused before any detector is made
