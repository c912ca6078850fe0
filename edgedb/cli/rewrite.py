"""``edgedb rewrite``: a DBNet export rewritten for deployment (edgedb.graph.rewrite_file)."""

from __future__ import annotations

import argparse
from pathlib import Path

from edgedb.cli._common import (
    _add_spec_arguments,
    _bounded_int,
    _check_output,
    _model_spec,
)


def add_parser(commands) -> None:
    rewrite = commands.add_parser("rewrite", help="rewrite a DBNet ONNX export for deployment",
                                  description="Upgrades the opset, folds constants, prunes the threshold "
                                  "branch, folds affine layers into convolutions and fuses HardSwish, fuses preprocessing (uint8 NHWC BGR frames in), names the output "
                                  "'prob' and makes batch, height and width dynamic (edgedb.graph.rewrite_file).")
    rewrite.add_argument("input", help="zoo name or ONNX path")
    rewrite.add_argument("output", type=Path, help="where to write the rewritten ONNX")
    rewrite.add_argument("--opset", type=_bounded_int(11, 21), default=17, help="target opset (default 17)")
    rewrite.add_argument("--no-fold", action="store_true", help="skip constant folding")
    rewrite.add_argument("--no-prune", action="store_true", help="keep threshold/binary-map outputs")
    rewrite.add_argument("--no-simplify", action="store_true",
                         help="keep affine layers and the HardSwish decomposition as exported")
    rewrite.add_argument("--no-fuse-preprocessing", action="store_true", help="keep the float NCHW input")
    rewrite.add_argument("--no-dynamic", action="store_true", help="keep the input and output shapes as they are")
    _add_spec_arguments(rewrite)
    rewrite.set_defaults(run=_cmd_rewrite)


def _cmd_rewrite(args: argparse.Namespace) -> int:
    from edgedb.graph import rewrite_file
    from edgedb.models import resolve_model, zoo_spec
    from edgedb.spec import guess_spec, spec_from_metadata

    source = resolve_model(args.input)
    _check_output(args.output, "output", [source])
    model = _read_onnx_full(source)
    spec = _model_spec(args, args.input) or spec_from_metadata(model) or zoo_spec(args.input) or guess_spec(model)
    new_spec = rewrite_file(
        model, args.output, spec, opset=args.opset, fold=not args.no_fold, prune=not args.no_prune,
        simplify=not args.no_simplify, fuse_preprocessing=not args.no_fuse_preprocessing, dynamic=not args.no_dynamic,
    )
    print(f"wrote {args.output}: input {new_spec.input_name!r}, output {new_spec.prob_output!r}")
    return 0


def _read_onnx_full(path: Path):
    """An ONNX file with its weights, or a one-line ModelError."""
    from edgedb.graph.rewrite import load_model

    return load_model(path)
