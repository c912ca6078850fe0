"""``edgedb compare``: models' accuracy and map error against a reference (edgedb.compare)."""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from edgedb.backends import BACKENDS
from edgedb.cli._common import (
    _add_input_size_arguments,
    _add_spec_arguments,
    _add_strict_argument,
    _check_output,
    _counted,
    _deployable_models,
    _Skipped,
    _write_text,
)
from edgedb.errors import InvalidInputError


def add_parser(commands) -> None:
    compare = commands.add_parser(
        "compare", help="accuracy and map error of models against a reference",
        description="Per model: ICDAR 2015 hmean, max and mean absolute error of the probability map and "
        "IoU of the binarized maps against the reference (edgedb.compare.compare_precisions).")
    compare.add_argument("reference", help="the FP32 model (zoo name or ONNX path)")
    compare.add_argument("models", nargs="+", help="models to compare (ONNX paths)")
    compare.add_argument("--images", type=Path, required=True, help="ICDAR-style folder of images")
    compare.add_argument("--gt", type=Path, help="folder of gt_*.txt files (default: ../gt or ./gt)")
    compare.add_argument("--json", metavar="FILE", help="write the figures as JSON (- for stdout)")
    compare.add_argument("--backend", default="auto", choices=list(BACKENDS),
                         help="where the models run (default auto)")
    compare.add_argument("--reference-backend", choices=list(BACKENDS),
                         help="where the reference runs (default: --backend); e.g. --reference-backend onnxruntime "
                              "--backend openvino checks OpenVINO against ONNX Runtime, the reference given again "
                              "as a model")
    _add_input_size_arguments(compare)
    _add_spec_arguments(compare)
    _add_strict_argument(compare)
    compare.set_defaults(run=_cmd_compare)


def _cmd_compare(args: argparse.Namespace) -> int:
    from edgedb.compare import compare_precisions, format_reports
    from edgedb.evaluation import IcdarDataset
    from edgedb.preprocess import as_bgr_image

    _check_output(args.json, "--json")
    names = [args.reference, *args.models]
    with tempfile.TemporaryDirectory(prefix="edgedb-compare-") as scratch:
        paths = _deployable_models(args, names, Path(scratch))
        dataset = IcdarDataset(args.images, args.gt)
        skipped = _Skipped("compare", args.strict)
        samples = []
        for name, path, truth in dataset:
            try:
                samples.append((name, as_bgr_image(path), truth))
            except InvalidInputError as error:
                skipped.add(path, error)
        skipped.check_some_left(len(samples))
        models, backends = {}, {}
        reference_backend = args.reference_backend or args.backend
        for index, (name, path) in enumerate(zip(names, paths)):
            label = Path(name).stem if Path(name).suffix == ".onnx" else name
            backend = reference_backend if index == 0 else args.backend
            if reference_backend != args.backend:
                label += f"@{backend}"
            while label in models:
                label += "'"
            models[label], backends[label] = path, backend
        reports = compare_precisions(models, samples, limit_side_len=args.limit_side_len, limit_type=args.limit_type,
                                     input_size=args.input_size, backends=backends)
    print(format_reports(reports))
    if skipped.items:
        print(f"{_counted(len(samples), 'image')}{skipped.summary()}")
    if args.json:
        _write_text(args.json, json.dumps({"models": [r.to_dict() for r in reports], "skipped": skipped.items},
                                          indent=1))
        if str(args.json) != "-":
            print(f"wrote {args.json}")
    return 0
