"""``edgedb export triton``: a Triton model repository (edgedb.serving.export_triton)."""

from __future__ import annotations

import argparse
from pathlib import Path

from edgedb.cli._common import _add_repository_arguments, _export_options


def add_parser(commands) -> None:
    export = commands.add_parser(
        "export", help="export a Triton model repository serving the detector",
        description="Writes a Triton Inference Server model repository (edgedb.serving.export_triton): a "
        "Python-backend model running EdgeDetector, uint8 frames (IMAGE) or JPEG/PNG bytes (ENCODED) in, boxes, "
        "scores and counts out, with dynamic batching and a bounded queue; or, with --layout ensemble, the network "
        "on Triton's own TensorRT or ONNX Runtime backend between Python resize and box-formation steps. Serve it "
        "with edgedb serve, or in NVIDIA's Triton container (see the README).")
    export.add_argument("format", choices=["triton"], help="the serving format (triton)")
    _add_repository_arguments(export)
    export.add_argument("--output", "-o", type=Path, required=True, help="the repository folder (made if missing)")
    export.set_defaults(run=_cmd_export)


def _cmd_export(args: argparse.Namespace) -> int:
    from edgedb.serving import export_triton

    repository = export_triton(args.model, args.output, **_export_options(args))
    if args.layout == "ensemble":
        models = ", ".join(f"{args.name}{suffix}" for suffix in ("", "_pre", "_net", "_post"))
        print(f"wrote {repository} (the ensemble {args.name} and its steps: {models})")
    else:
        print(f"wrote {repository / args.name} (config.pbtxt, 1/model.py, the model)")
    return 0
