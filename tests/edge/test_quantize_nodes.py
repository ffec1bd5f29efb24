"""``--exclude-node`` names are checked against the graph ``quantize_static`` is given (tiny ONNX model)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from skuscale.data.preprocess import Preprocessing
from skuscale.exceptions import SkuscaleError

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from skuscale.edge.quantize import quantize_backbone  # noqa: E402


@pytest.fixture
def tiny_backbone(tmp_path):
    """image (n, 3, 8, 8) -> Conv -> Mul by a Constant node -> mean pool -> embedding (n, 4)."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.normal(size=(4, 3, 3, 3)).astype(np.float32), "w")
    nodes = [
        helper.make_node("Conv", ["image", "w"], ["c"], name="/stem/Conv", pads=[1, 1, 1, 1]),
        # pre-processing folds this Constant node into an initializer: its name is gone from the prepared graph
        helper.make_node("Constant", [], ["k"], name="/scale/Constant",
                         value=numpy_helper.from_array(np.array(0.5, np.float32))),
        helper.make_node("Mul", ["c", "k"], ["m"], name="/scale/Mul"),
        helper.make_node("ReduceMean", ["m"], ["embedding"], name="/pool/ReduceMean", axes=[2, 3], keepdims=0),
    ]
    graph = helper.make_graph(
        nodes, "tiny", [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["n", 3, 8, 8])],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["n", 4])], initializer=[w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    path = tmp_path / "backbone.onnx"
    onnx.save(model, str(path))
    images = []
    for i in range(2):
        image = tmp_path / f"img{i}.png"
        Image.fromarray(rng.integers(0, 255, size=(8, 8, 3), dtype=np.uint8)).save(image)
        images.append(image)
    return path, images, Preprocessing(image_size=8, resize_shorter=8)


def test_unknown_exclude_node_is_refused_with_valid_names(tiny_backbone, tmp_path):
    src, images, prep = tiny_backbone
    dst = tmp_path / "int8.onnx"
    # "/scale/Constant" is a node of the exported file but not of the graph that is quantised
    with pytest.raises(SkuscaleError, match="exclude-node") as info:
        quantize_backbone(src, dst, images, prep, exclude_nodes=["/stem/Conv", "/nope/Conv", "/scale/Constant"])
    message = str(info.value)
    assert "'/nope/Conv'" in message and "'/scale/Constant'" in message
    assert "'/stem/Conv'" not in message.split("for example")[0]  # a valid name is not reported as unknown
    assert "/stem/Conv" in message.split("for example")[1]  # ...and is offered as an example
    assert not dst.exists()


def _conv_weight_is_quantised(path) -> bool:
    graph = onnx.load(str(path)).graph
    (conv,) = [n for n in graph.node if n.op_type == "Conv"]
    assert conv.name == "/stem/Conv"
    return any(n.op_type == "DequantizeLinear" and conv.input[1] in n.output for n in graph.node)


def test_known_exclude_node_is_kept_in_fp32(tiny_backbone, tmp_path):
    src, images, prep = tiny_backbone
    assert _conv_weight_is_quantised(quantize_backbone(src, tmp_path / "all.onnx", images, prep))
    kept = quantize_backbone(src, tmp_path / "kept.onnx", images, prep, exclude_nodes=["/stem/Conv"])
    assert not _conv_weight_is_quantised(kept)
