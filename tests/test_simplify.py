"""Exact graph simplifications: affine folds and HardSwish fusion, checked for parity."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgedb.graph import (
    fold_affine_into_next_conv,
    fold_conv_affine,
    fuse_hardswish,
    remove_identities,
    residual_scale_as_one_mul,
    spatial_mean_as_global_pool,
    rewrite_model,
    subpixel_head,
)
from edgedb.models import resolve_model, zoo_spec


def const(name, value):
    return numpy_helper.from_array(np.asarray(value, np.float32), name)


def lcnet_like_model(seed: int = 0) -> onnx.ModelProto:
    """Conv -> scalar affine -> HardSwish (decomposed) -> per-channel affine -> 1x1 Conv,
    and a second branch whose affine feeds a padded 3x3 Conv (must keep its Add)."""
    rng = np.random.default_rng(seed)
    inits = [
        const("w1", rng.normal(0, 0.5, (6, 4, 3, 3))), const("b1", rng.normal(0, 0.1, 6)),
        const("s1", [1.3]), const("t1", [0.2]),
        const("three", 3.0), const("zero", 0.0), const("six", 6.0),
        const("s2", rng.uniform(0.5, 1.5, (1, 6, 1, 1))), const("t2", rng.normal(0, 0.3, (1, 6, 1, 1))),
        const("w2", rng.normal(0, 0.5, (5, 6, 1, 1))), const("b2", rng.normal(0, 0.1, 5)),
        const("s3", [0.7]), const("t3", [-0.4]),
        const("w3", rng.normal(0, 0.5, (3, 6, 3, 3))),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Mul", ["c1", "s1"], ["m1"]),
        helper.make_node("Add", ["m1", "t1"], ["a1"]),
        helper.make_node("Add", ["a1", "three"], ["h0"]),
        helper.make_node("Clip", ["h0", "zero", "six"], ["h1"]),
        helper.make_node("Mul", ["a1", "h1"], ["h2"]),
        helper.make_node("Div", ["h2", "six"], ["hs"]),
        helper.make_node("Mul", ["hs", "s2"], ["m2"]),
        helper.make_node("Add", ["m2", "t2"], ["a2"]),
        helper.make_node("Conv", ["a2", "w2", "b2"], ["y1"]),
        helper.make_node("Mul", ["hs", "s3"], ["m3"]),
        helper.make_node("Add", ["m3", "t3"], ["a3"]),
        helper.make_node("Conv", ["a3", "w3"], ["y2"], pads=[1, 1, 1, 1]),
    ]
    graph = helper.make_graph(
        nodes, "lcnet_like",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4, "h", "w"])],
        [helper.make_tensor_value_info("y1", TensorProto.FLOAT, ["n", 5, "h", "w"]),
         helper.make_tensor_value_info("y2", TensorProto.FLOAT, ["n", 3, "h", "w"])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def run(model: onnx.ModelProto, x: np.ndarray) -> list[np.ndarray]:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})


def simplified(model: onnx.ModelProto, *passes) -> onnx.ModelProto:
    graph = gs.import_onnx(model)
    for simplify in passes:
        simplify(graph)
    out = gs.export_onnx(graph)
    onnx.checker.check_model(out, full_check=True)
    return out


@pytest.mark.parametrize("shape", [(1, 4, 16, 16), (2, 4, 9, 13)])
def test_all_passes_keep_the_outputs(shape):
    model = lcnet_like_model()
    x = np.random.default_rng(1).normal(0, 2, shape).astype(np.float32)
    out = simplified(model, fold_conv_affine, fuse_hardswish, fold_affine_into_next_conv)
    for a, b in zip(run(model, x), run(out, x)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
    ops = [n.op_type for n in out.graph.node]
    assert ops.count("HardSwish") == 1 and "Clip" not in ops and "Div" not in ops
    # The first affine went into the first Conv, the second into the unpadded 1x1 Conv;
    # the third stays because its Conv is padded.
    assert ops.count("Mul") == 1 and ops.count("Add") == 1
    assert len(out.graph.node) == 6


def test_each_pass_alone_keeps_the_outputs():
    model = lcnet_like_model(3)
    x = np.random.default_rng(2).normal(0, 2, (1, 4, 12, 12)).astype(np.float32)
    expected = run(model, x)
    for simplify in (fold_conv_affine, fuse_hardswish, fold_affine_into_next_conv):
        for a, b in zip(expected, run(simplified(model, simplify), x)):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_shared_conv_output_is_not_folded():
    model = lcnet_like_model()
    model.graph.output.append(helper.make_tensor_value_info("c1", TensorProto.FLOAT, ["n", 6, "h", "w"]))
    out = simplified(model, fold_conv_affine)
    assert sum(n.op_type == "Mul" for n in out.graph.node) == sum(n.op_type == "Mul" for n in model.graph.node)


def dbnet_head_model(out_channels: int, seed: int = 0, second_kernel=(2, 2)) -> onnx.ModelProto:
    """DBNet's head after BatchNormalization folding: ConvTranspose(2x2, s2) -> Relu ->
    ConvTranspose(2x2, s2) -> Sigmoid."""
    rng = np.random.default_rng(seed)
    inits = [const("w1", rng.normal(0, 0.5, (6, 5, 2, 2))), const("b1", rng.normal(0, 0.3, 5)),
             const("w2", rng.normal(0, 0.5, (5, out_channels) + tuple(second_kernel))),
             const("b2", rng.normal(0, 0.3, out_channels))]
    nodes = [
        helper.make_node("ConvTranspose", ["x", "w1", "b1"], ["u1"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Relu", ["u1"], ["r1"]),
        helper.make_node("ConvTranspose", ["r1", "w2", "b2"], ["u2"], kernel_shape=list(second_kernel), strides=[2, 2]),
        helper.make_node("Sigmoid", ["u2"], ["y"]),
    ]
    graph = helper.make_graph(nodes, "head", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 6, "h", "w"])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", out_channels, "H", "W"])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("out_channels", [1, 3])
def test_subpixel_head_equals_the_transposed_convolutions(out_channels):
    model = dbnet_head_model(out_channels)
    x = np.random.default_rng(4).normal(0, 1, (2, 6, 7, 9)).astype(np.float32)
    graph = gs.import_onnx(model)
    aliases = subpixel_head(graph)
    out = gs.export_onnx(graph)
    onnx.checker.check_model(out, full_check=True)
    assert [n.op_type for n in out.graph.node] == ["Conv", "Relu", "Conv", "DepthToSpace", "Sigmoid"]
    assert set(aliases.values()) == {"u1", "r1", "u2"}
    expected, = run(model, x)
    got, = run(out, x)
    assert got.shape == expected.shape == (2, out_channels, 28, 36)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_subpixel_head_leaves_other_upsamplers():
    model = dbnet_head_model(1, second_kernel=(3, 3))  # overlapping kernels: not a sub-pixel step
    graph = gs.import_onnx(model)
    assert subpixel_head(graph) == {}
    assert [n.op for n in graph.nodes].count("ConvTranspose") == 2


def test_residual_gate_becomes_one_mul():
    """x + x * sigmoid(pool(x)), the RSE layer's squeeze-and-excitation residual."""
    nodes = [
        helper.make_node("GlobalAveragePool", ["x"], ["p"]),
        helper.make_node("Sigmoid", ["p"], ["s"]),
        helper.make_node("Mul", ["s", "x"], ["xs"]),  # gate first: either operand order
        helper.make_node("Add", ["x", "xs"], ["y"]),
    ]
    graph = helper.make_graph(nodes, "rse", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4, "h", "w"])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4, "h", "w"])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    x = np.random.default_rng(5).normal(0, 1, (2, 4, 6, 7)).astype(np.float32)
    out = simplified(model, residual_scale_as_one_mul)
    ops = [n.op_type for n in out.graph.node]
    assert ops.count("Mul") == 1 and ops.count("Add") == 1
    big = next(n for n in out.graph.node if n.op_type == "Mul")
    assert "x" in big.input  # the full-size pass is the Mul; the Add works on the gate
    np.testing.assert_allclose(run(out, x)[0], run(model, x)[0], rtol=1e-6, atol=1e-6)


def test_identities_go_and_the_head_is_found_behind_them():
    """Newer Paddle2ONNX exports put an Identity after each layer; the head rewrite must
    still see ConvTranspose -> Relu -> ConvTranspose. An Identity naming a graph output stays."""
    model = dbnet_head_model(1)
    nodes = []
    for node in model.graph.node:  # route every edge through an Identity
        name = node.output[0]
        node.output[0] = name + "_raw"
        nodes += [node, helper.make_node("Identity", [name + "_raw"], [name])]
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    onnx.checker.check_model(model)
    x = np.random.default_rng(6).normal(0, 1, (1, 6, 5, 4)).astype(np.float32)
    out = simplified(model, remove_identities, subpixel_head)
    ops = [n.op_type for n in out.graph.node]
    assert ops == ["Conv", "Relu", "Conv", "DepthToSpace", "Sigmoid", "Identity"]
    assert out.graph.output[0].name == "y"
    np.testing.assert_allclose(run(out, x)[0], run(model, x)[0], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("axes, keepdims, as_input, pooled", [
    ([2, 3], 1, False, True), ([-1, -2], 1, False, True), ([2, 3], 1, True, True),
    ([2, 3], 0, False, False), ([1, 2], 1, False, False),
])
def test_spatial_mean_becomes_global_pool(axes, keepdims, as_input, pooled):
    opset = 18 if as_input else 17
    inputs, inits, attrs = ["x"], [], {"keepdims": keepdims}
    if as_input:
        inputs.append("axes")
        inits.append(numpy_helper.from_array(np.array(axes, np.int64), "axes"))
    else:
        attrs["axes"] = axes
    node = helper.make_node("ReduceMean", inputs, ["y"], **attrs)
    x = np.random.default_rng(7).normal(0, 1, (2, 4, 5, 6)).astype(np.float32)
    shape = list(np.mean(x, axis=tuple(axes), keepdims=bool(keepdims)).shape)
    graph = helper.make_graph([node], "se", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x.shape))],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    out = simplified(model, spatial_mean_as_global_pool)
    assert (out.graph.node[0].op_type == "GlobalAveragePool") is pooled
    np.testing.assert_allclose(run(out, x)[0], run(model, x)[0], rtol=1e-6, atol=1e-6)


def test_default_model_gets_smaller_and_keeps_its_map():
    from edgedb.synthetic import make_text_image

    spec = zoo_spec("ppocrv4-det")
    plain, _ = rewrite_model(resolve_model("ppocrv4-det"), spec, simplify=False)
    simple, _ = rewrite_model(resolve_model("ppocrv4-det"), spec)
    assert len(simple.graph.node) < 0.6 * len(plain.graph.node)
    assert "ConvTranspose" not in {n.op_type for n in simple.graph.node}
    frame = make_text_image(4, size=(256, 320)).image[None]
    outputs = [ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
               .run(None, {"image": frame})[0] for m in (plain, simple)]
    assert np.abs(outputs[0] - outputs[1]).max() < 1e-4
