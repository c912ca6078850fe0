"""ONNX graph rewriting: from a DBNet export to the uint8-input, ``prob``-output,
opset-17 graph that edgedb runs on ONNX Runtime and TensorRT.

Needs onnx and onnx-graphsurgeon; ``import edgedb`` does not import this package.
"""

from edgedb.graph.passes import (
    fold_constants,
    fuse_preprocessing,
    make_dynamic,
    prune_outputs,
    rename_output,
    upgrade_opset,
)
from edgedb.graph.rewrite import check_dbnet, load_model, rewrite_file, rewrite_model
from edgedb.graph.simplify import (
    batchnorm_as_affine,
    fold_affine_into_next_conv,
    fold_conv_affine,
    fuse_hardswish,
    remove_identities,
    residual_scale_as_one_mul,
    spatial_mean_as_global_pool,
    subpixel_head,
)

__all__ = [
    "batchnorm_as_affine",
    "check_dbnet",
    "fold_affine_into_next_conv",
    "fold_constants",
    "fold_conv_affine",
    "fuse_hardswish",
    "fuse_preprocessing",
    "load_model",
    "make_dynamic",
    "prune_outputs",
    "remove_identities",
    "rename_output",
    "residual_scale_as_one_mul",
    "rewrite_file",
    "spatial_mean_as_global_pool",
    "subpixel_head",
    "rewrite_model",
    "upgrade_opset",
]
