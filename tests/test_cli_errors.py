"""Every CLI error is one line on stderr, ``edgedb COMMAND: error: ...``, with exit code 2:
every subcommand against a table of bad inputs. Batch commands skip unreadable images and
say so; outputs are checked before the work and never replace an input."""

from __future__ import annotations

import json

import cv2
import onnx
import pytest
from onnx import TensorProto, helper

from edgedb.cli import main
from edgedb.synthetic import make_dataset, make_text_image


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Bad and good inputs, small enough that every error case runs in well under a second."""
    root = tmp_path_factory.mktemp("cli-errors")
    paths = {"tmp": root, "missing": root / "missing"}
    image = make_text_image(1, size=(96, 128)).image
    paths["image"] = root / "scan.png"
    cv2.imwrite(str(paths["image"]), image)
    paths["bad_image"] = root / "bad.png"
    paths["bad_image"].write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    paths["bad_dir"] = root / "bad-images"
    paths["bad_dir"].mkdir()
    (paths["bad_dir"] / "broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
    (paths["bad_dir"] / "empty.png").write_bytes(b"")
    paths["empty_dir"] = root / "empty-dir"
    paths["empty_dir"].mkdir()
    paths["dataset"] = root / "data"  # img_N.jpg, with gt/gt_img_N.txt
    make_dataset(paths["dataset"], 1, seed=3, size=(96, 128))
    paths["corrupt_onnx"] = root / "corrupt.onnx"
    paths["corrupt_onnx"].write_bytes(b"\x08\x07 this is not protobuf \xff\xff\xff")
    paths["empty_onnx"] = root / "empty.onnx"
    paths["empty_onnx"].write_bytes(b"")
    # A valid ONNX graph that is no DBNet: a 2-D input, an Identity.
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])], "not-dbnet",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
    )
    paths["foreign_onnx"] = root / "foreign.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(paths["foreign_onnx"]))
    return paths


CASES = [  # command, arguments, a fragment of the message
    # detect
    ("detect", ["{missing}/x.jpg"], "no such file"),
    ("detect", ["{empty_dir}"], "holds no images"),
    ("detect", ["--input-size", "100000x100000"], "1..8192"),
    ("detect", ["--input-size", "0x5"], "1..8192"),
    ("detect", ["--input-size", "big"], "HEIGHTxWIDTH"),
    ("detect", ["--threads", "-1"], "--threads"),
    ("detect", ["--thresh", "2"], "--thresh"),
    ("detect", ["--max-candidates", str(2**40)], "--max-candidates"),
    ("detect", ["--limit-side-len", "0"], "--limit-side-len"),
    ("detect", ["--std", "0", "1", "1"], "--std"),
    ("detect", ["{image}", "--json", "{missing}/x.json"], "does not exist"),
    ("detect", ["{image}", "--json", "{image}"], "also an input"),
    ("detect", ["{image}", "--draw", "{image}"], "is a file"),
    ("detect", ["{image}", "--model", "{missing}/m.onnx"], "no model file"),
    ("detect", ["{image}", "--model", "{corrupt_onnx}"], "not an ONNX model"),
    ("detect", ["{image}", "--model", "{empty_onnx}"], "not an ONNX model"),
    ("detect", ["{image}", "--model", "{foreign_onnx}"], "--input-name"),
    ("detect", ["{image}", "--model", "{foreign_onnx}", "--input-name", "x", "--prob-output", "y"], "expected the input 'x'"),
    ("detect", ["{bad_image}", "--strict"], "truncated"),
    ("detect", ["{bad_dir}", "--strict"], "truncated"),
    # eval
    ("eval", ["--images", "{missing}"], "does not exist"),
    ("eval", ["--images", "{empty_dir}"], "no images"),
    ("eval", ["--images", "{dataset}", "--json", "{missing}/x.json"], "does not exist"),
    ("eval", ["--images", "{dataset}", "--model", "{corrupt_onnx}"], "not an ONNX model"),
    ("eval", ["--images", "{dataset}", "--input-size", "0x5"], "1..8192"),
    # rewrite
    ("rewrite", ["{corrupt_onnx}", "{tmp}/out.onnx"], "ONNX model"),
    ("rewrite", ["{empty_onnx}", "{tmp}/out.onnx"], "not an ONNX model"),
    ("rewrite", ["{foreign_onnx}", "{tmp}/out.onnx"], "--input-name"),
    ("rewrite", ["{foreign_onnx}", "{tmp}/out.onnx", "--input-name", "nope", "--prob-output", "y"], "'nope'"),
    ("rewrite", ["{missing}/m.onnx", "{tmp}/out.onnx"], "no model file"),
    ("rewrite", ["ppocrv4-det", "{missing}/out.onnx"], "does not exist"),
    ("rewrite", ["{corrupt_onnx}", "{corrupt_onnx}"], "also an input"),
    ("rewrite", ["ppocrv4-det", "{tmp}/out.onnx", "--opset", "3"], "--opset"),
    # quantize
    ("quantize", ["ppocrv4-det", "-o", "{missing}/q.onnx", "--precision", "fp16"], "does not exist"),
    ("quantize", ["ppocrv4-det", "-o", "{tmp}/q.onnx"], "calibration set"),
    ("quantize", ["ppocrv4-det", "-o", "{tmp}/q.onnx", "--calib", "{missing}"], "does not exist"),
    ("quantize", ["ppocrv4-det", "-o", "{tmp}/q.onnx", "--calib", "{empty_dir}"], "holds no images"),
    ("quantize", ["ppocrv4-det", "-o", "{tmp}/q.onnx", "--calib", "{bad_dir}", "--strict"], "truncated"),
    ("quantize", ["{corrupt_onnx}", "-o", "{tmp}/q.onnx", "--precision", "fp16"], "not an ONNX model"),
    ("quantize", ["{foreign_onnx}", "-o", "{tmp}/q.onnx", "--precision", "fp16"], "--input-name"),
    ("quantize", ["ppocrv4-det", "-o", "{tmp}/q.onnx", "--precision", "fp16", "--input-size", "100000x100000"], "1..8192"),
    # compare
    ("compare", ["ppocrv4-det", "{missing}/m.onnx", "--images", "{dataset}"], "no model file"),
    ("compare", ["ppocrv4-det", "{corrupt_onnx}", "--images", "{dataset}"], "not an ONNX model"),
    ("compare", ["ppocrv4-det", "{foreign_onnx}", "--images", "{dataset}", "--input-name", "x"], "--input-name"),
    ("compare", ["ppocrv4-det", "ppocrv4-det", "--images", "{missing}"], "does not exist"),
    ("compare", ["ppocrv4-det", "ppocrv4-det", "--images", "{dataset}", "--json", "{missing}/x.json"], "does not exist"),
    # build
    ("build", ["ppocrv4-det", "-o", "{tmp}/e.engine"], "tensorrt"),
    ("build", ["ppocrv4-det", "-o", "{missing}/e.engine"], "tensorrt"),  # the extra first, the folder is made
    ("build", ["ppocrv4-det", "-o", "{tmp}/e.engine", "--min-shape", "1x32x32"], "--max-shape"),
    ("build", ["{missing}/m.onnx", "-o", "{tmp}/e.engine"], "no model file"),
    ("build", ["ppocrv4-det", "-o", "{tmp}/e.engine", "--input-size", "0x5"], "1..8192"),
    # bench
    ("bench", ["{missing}/m.onnx"], "no model file"),
    ("bench", ["{corrupt_onnx}"], "not an ONNX model"),
    ("bench", ["ppocrv4-det", "--images", "{missing}"], "no such folder"),
    ("bench", ["ppocrv4-det", "--images", "{empty_dir}"], "holds no images"),
    ("bench", ["ppocrv4-det", "--images", "{bad_dir}", "--strict"], "truncated"),
    ("bench", ["ppocrv4-det", "--json", "{missing}/x.json"], "does not exist"),
    ("bench", ["ppocrv4-det", "--batch", "0"], "--batch"),
    ("bench", ["ppocrv4-det", "--input-size", "100000x100000"], "1..8192"),
    ("bench", ["ppocrv4-det", "--shapes", "1x32x32", "--input-size", "32x32"], "not both"),
    # train
    ("train", ["--images", "{missing}", "-o", "{tmp}/t.onnx"], "neither an image folder"),
    ("train", ["--images", "{dataset}", "-o", "{missing}/t.onnx"], "does not exist"),
    ("train", ["--images", "{dataset}", "-o", "{tmp}/t.onnx", "--steps", "0"], "--steps"),
    ("train", ["--images", "{dataset}", "-o", "{tmp}/t.onnx", "--crop", "100000"], "--crop"),
    ("train", ["--images", "{dataset}", "-o", "{tmp}/t.onnx", "--base", "{corrupt_onnx}", "--input-name", "x"], "not an ONNX model"),
    ("train", ["--images", "{dataset}", "--gt", "{missing}", "-o", "{tmp}/t.onnx"], "ground-truth folder"),
]


@pytest.mark.parametrize("command, arguments, fragment", CASES, ids=[f"{c}-{' '.join(a)}" for c, a, _ in CASES])
def test_error_is_one_clean_line(files, capsys, command, arguments, fragment):
    argv = [command] + [argument.format(**files) for argument in arguments]
    assert main(argv) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"edgedb {command}: error: "), err
    assert "Traceback" not in err
    assert fragment in lines[0], err


def test_detect_skips_unreadable_images_and_writes_the_rest(files, tmp_path, capsys):
    folder = tmp_path / "mixed"
    folder.mkdir()
    cv2.imwrite(str(folder / "good.png"), make_text_image(2, size=(160, 224)).image)
    (folder / "truncated.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    out = tmp_path / "boxes.json"
    assert main(["detect", str(folder), "--json", str(out)]) == 0
    captured = capsys.readouterr()
    assert "skipped" in captured.err and "truncated.jpg" in captured.err
    assert "1 skipped" in captured.out
    report = json.loads(out.read_text())
    assert [entry["image"] for entry in report["images"]] == [str(folder / "good.png")]
    assert [entry["file"] for entry in report["skipped"]] == [str(folder / "truncated.jpg")]
    assert report["skipped"][0]["reason"]
    assert main(["detect", str(folder), "--json", str(out), "--strict"]) == 2


def test_eval_skips_unreadable_images(tmp_path, capsys):
    make_dataset(tmp_path, 2, seed=4, size=(160, 224))
    images = sorted(tmp_path.glob("*.jpg"))
    images[0].write_bytes(b"not an image")
    out = tmp_path / "eval.json"
    assert main(["eval", "--images", str(tmp_path), "--json", str(out)]) == 0
    figures = json.loads(out.read_text())
    assert len(figures["images"]) == 1 and figures["skipped"][0]["file"] == str(images[0])
    assert "1 skipped" in capsys.readouterr().out


def test_draw_never_replaces_an_input_or_another_drawing(tmp_path, capsys):
    first = make_text_image(5, size=(96, 128)).image
    second = make_text_image(6, size=(96, 128)).image
    cv2.imwrite(str(tmp_path / "a.png"), first)
    cv2.imwrite(str(tmp_path / "a.jpg"), second)
    cv2.imwrite(str(tmp_path / "a_png.png"), second)  # an input named like a drawing
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    assert main(["detect", str(tmp_path / "a.png"), str(tmp_path / "a.jpg"), str(tmp_path / "a_png.png"),
                 "--draw", str(tmp_path)]) == 0
    for name, data in before.items():
        assert (tmp_path / name).read_bytes() == data, f"{name} was overwritten"
    drawings = sorted(set(p.name for p in tmp_path.iterdir()) - set(before))
    assert len(drawings) == 3, drawings


def test_verbose_after_the_command(files, capsys):
    assert main(["detect", "-v", str(files["missing"])]) == 2
    assert main(["-v", "detect", str(files["missing"])]) == 2


def test_box_flags_show_their_defaults(capsys):
    assert main(["detect", "--help"]) == 0
    help_text = " ".join(capsys.readouterr().out.split())
    for flag in ("--thresh", "--box-thresh", "--unclip-ratio", "--max-candidates", "--min-size"):
        assert flag in help_text
    assert "(default 0.3)" in help_text and "(default 0.6)" in help_text and "(default 1.5)" in help_text


@pytest.mark.parametrize("error", [MemoryError(), PermissionError(13, "Permission denied", "/root/out.json")])
def test_memory_and_os_errors_are_one_line(monkeypatch, capsys, error):
    import edgedb.cli.rewrite

    def fail(args):
        raise error

    monkeypatch.setattr(edgedb.cli.rewrite, "_cmd_rewrite", fail)
    assert main(["rewrite", "ppocrv4-det", "out.onnx"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("edgedb rewrite: error: ") and len(err.strip().splitlines()) == 1


def test_spec_flags_apply_before_the_guess(tmp_path, capsys):
    """An export whose probability map the guess cannot find (no Sigmoid, no shape on its
    output) is rewritten once the flags name its input and output."""
    conv = helper.make_node("Conv", ["image_in", "w"], ["maps"], kernel_shape=[1, 1])
    relu = helper.make_node("Relu", ["maps"], ["p"])
    weight = helper.make_tensor("w", TensorProto.FLOAT, [1, 3, 1, 1], [0.1, 0.2, 0.3])
    graph = helper.make_graph(
        [conv, relu], "odd-export",
        [helper.make_tensor_value_info("image_in", TensorProto.FLOAT, ["n", 3, "h", "w"])],
        [helper.make_tensor_value_info("p", TensorProto.FLOAT, None)],
        [weight],
    )
    model = tmp_path / "odd.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(model))
    assert main(["rewrite", str(model), str(tmp_path / "no.onnx")]) == 2
    assert "--input-name" in capsys.readouterr().err
    out = tmp_path / "deploy.onnx"
    assert main(["rewrite", str(model), str(out), "--input-name", "image_in", "--prob-output", "p"]) == 0
    assert [o.name for o in onnx.load(str(out)).graph.output] == ["prob"]
