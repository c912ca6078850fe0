"""Activations an export writes out as several nodes, found so each runs as one torch function.

For training speed on small CPUs, a hard-swish written out as x * Clip(x + 3, 0, 6) / 6
runs as one ``F.hardswish`` and a GELU written out as x * (1 + Erf(x / sqrt 2)) * 0.5 as
one ``F.gelu``; both compute what ONNX Runtime does to float32 rounding.
"""

from __future__ import annotations

import math
from typing import Callable, Mapping, Optional

import onnx

from edgedb.train.onnx_ops import _attributes


def _scalar(constants: Mapping, name: str) -> Optional[float]:
    value = constants.get(name)
    if value is None or value.numel() != 1 or not value.is_floating_point():
        return None
    return float(value.reshape(-1)[0])


def _sole_readers(graph: onnx.GraphProto) -> Callable[[str], tuple]:
    """name -> (position, node) of the one node reading tensor ``name``, or (None, None)
    when several do, none does, or it is a graph output (a fused chain must hide it)."""
    nodes = list(graph.node)
    readers: dict = {}
    for position, node in enumerate(nodes):
        for name in node.input:
            readers.setdefault(name, []).append(position)
    outputs = {o.name for o in graph.output}

    def only_reader(name: str) -> tuple:
        positions = readers.get(name, [])
        return (positions[0], nodes[positions[0]]) if len(positions) == 1 and name not in outputs else (None, None)

    return only_reader


def _hard_swish_chains(graph: onnx.GraphProto, opset: int, constants: Mapping) -> tuple[dict, set]:
    """Hard-swishes written out as x * Clip(x + 3, 0, 6) / 6 (paddle2onnx does so below opset
    14; PP-OCRv3 and v4 have 20 and 24): {position of the Div: x} and the positions of the
    Add, Clip and Mul it replaces. One F.hardswish trains about ten times faster than the
    four ops. Chains whose inner tensors anything else reads, or that are graph outputs,
    are left alone."""
    nodes = list(graph.node)
    only_reader = _sole_readers(graph)

    fused, replaced = {}, set()
    for position, add in enumerate(nodes):
        if add.op_type != "Add" or len(add.input) != 2:
            continue
        operands = [(x, c) for x, c in (add.input, add.input[::-1]) if _scalar(constants, c) == 3.0]
        if not operands:
            continue
        x = operands[0][0]
        clip_at, clip = only_reader(add.output[0])
        if clip is None or clip.op_type != "Clip" or clip.input[0] != add.output[0]:
            continue
        if opset < 11:
            attrs = _attributes(clip)
            bounds = (attrs.get("min"), attrs.get("max"))
        else:
            bounds = tuple(_scalar(constants, clip.input[i]) if i < len(clip.input) else None for i in (1, 2))
        if bounds != (0.0, 6.0):
            continue
        mul_at, mul = only_reader(clip.output[0])
        if mul is None or mul.op_type != "Mul" or sorted(mul.input) != sorted([x, clip.output[0]]):
            continue
        div_at, div = only_reader(mul.output[0])
        if div is None or div.op_type != "Div" or div.input[0] != mul.output[0]:
            continue
        if _scalar(constants, div.input[1]) != 6.0:
            continue
        fused[div_at] = x
        replaced.update((position, clip_at, mul_at))
    return fused, replaced


def _gelu_chains(graph: onnx.GraphProto, constants: Mapping) -> tuple[dict, set]:
    """GELUs written out as x * (1 + Erf(x / sqrt 2)) * 0.5 (PP-OCRv6 small det has 13):
    {position of the last Mul: x} and the positions of the Div, Erf, Add and Mul it
    replaces. One F.gelu is one kernel forward and back instead of five."""
    nodes = list(graph.node)
    only_reader = _sole_readers(graph)

    def other(node, name):
        return node.input[1] if node.input[0] == name else node.input[0]

    fused, replaced = {}, set()
    for position, div in enumerate(nodes):
        if div.op_type != "Div" or len(div.input) != 2:
            continue
        root2 = _scalar(constants, div.input[1])
        if root2 is None or abs(root2 - math.sqrt(2)) > 1e-4:
            continue
        x = div.input[0]
        erf_at, erf = only_reader(div.output[0])
        if erf is None or erf.op_type != "Erf":
            continue
        add_at, add = only_reader(erf.output[0])
        if add is None or add.op_type != "Add" or _scalar(constants, other(add, erf.output[0])) != 1.0:
            continue
        mul_at, mul = only_reader(add.output[0])
        if mul is None or mul.op_type != "Mul" or other(mul, add.output[0]) != x:
            continue
        half_at, half = only_reader(mul.output[0])
        if half is None or half.op_type != "Mul" or _scalar(constants, other(half, mul.output[0])) != 0.5:
            continue
        fused[half_at] = x
        replaced.update((position, erf_at, add_at, mul_at))
    return fused, replaced
