"""Check 4: footprint arithmetic, device profiles and the headroom verdict."""

from __future__ import annotations

import numpy as np
import pytest

from skuscale.assess.footprint import MIB, Footprint, class_table_bytes, onnx_weights_and_activations, peak_live_bytes
from skuscale.assess.memory_headroom import assess_headroom
from skuscale.assess.profiles import DeviceProfile, DeviceTier, ProfileError, load_profile, shipped_profiles


def _footprint(total_mib: float, *, per_sku: float = 1024.0, n_skus: int = 100) -> Footprint:
    tables = int(per_sku * n_skus)
    return Footprint(weights_bytes=int(total_mib * MIB) - tables, activation_peak_bytes=0, class_table_bytes=tables,
                     class_table_parts={"head": tables}, per_sku_bytes=per_sku, n_skus=n_skus)


def test_peak_live_bytes_known_answer():
    # x(10) -> A -> a(20) -> B -> b(30) -> C -> out(5); x is also read by C (a skip connection).
    nodes = [(["x"], ["a"]), (["a"], ["b"]), (["b", "x"], ["out"])]
    sizes = {"x": 10, "a": 20, "b": 30, "out": 5}
    # step 0: x+a=30; step 1: x+a+b=60; step 2: x+b+out=45.
    assert peak_live_bytes(nodes, sizes, inputs=["x"], outputs=["out"]) == 60
    # Without the skip connection x dies after step 0: max(30, 50, 35).
    nodes[2] = (["b"], ["out"])
    assert peak_live_bytes(nodes, sizes, inputs=["x"], outputs=["out"]) == 50


def test_onnx_weights_and_activations_on_a_tiny_graph(tmp_path):
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.ones((4, 8), np.float32), "w")  # 128 bytes
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Relu", ["h"], ["y"])],
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 8])],
        initializer=[w],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp_path / "tiny.onnx"
    onnx.save(model, path)
    weights, peak = onnx_weights_and_activations(path)
    assert weights == 128
    # batch 1: x 16 bytes, h 32, y 32; step 0: x+h = 48, step 1: h+y = 64.
    assert peak == 64


def test_class_table_bytes_on_a_real_head():
    from skuscale.head.linear import LinearHead
    from skuscale.head.prototypes import PrototypeHead
    from skuscale.model import RecognitionModel
    from skuscale.ood import PrototypeCosineDetector
    from skuscale.routing import Router, fit_thresholds

    rng = np.random.default_rng(0)
    X = rng.standard_normal((30, 6)).astype(np.float32)
    y = np.repeat(["a", "b", "c"], 10)
    head = LinearHead().fit(X, y)
    table = fit_thresholds(np.full(30, 0.9), y, np.ones(30, bool), skus=["a", "b", "c"], sku_to_category={})
    model = RecognitionModel(head=head, temperature=1.0, prototypes=PrototypeHead().fit(X, y),
                             detector=PrototypeCosineDetector().fit(X, y),
                             router=Router(skus=["a", "b", "c"], sku_to_category={}, sku_thresholds=table,
                                           ood_threshold=0.5))
    parts, per_sku = class_table_bytes(model)
    assert parts["prototypes"] >= 3 * 6 * 4 and parts["router"] == 3 * 8
    # coef (3x6 float32) + intercept + log prior per SKU at least.
    assert per_sku >= 6 * 4 + 4 + 4 + 2 * 6 * 4 + 8


def test_headroom_arithmetic_and_max_skus():
    fp = _footprint(16.0, per_sku=1024.0, n_skus=100)
    assert fp.headroom(32 * MIB) == pytest.approx(0.5)
    # 80% of 32 MiB = 25.6 MiB; fixed part = 16 MiB - 100 KiB.
    fixed = 16 * MIB - 100 * 1024
    assert fp.max_skus(32 * MIB, 0.2) == int((0.8 * 32 * MIB - fixed) // 1024)


def test_pass_and_fail_on_the_lowest_tier():
    profile = DeviceProfile(name="p", tiers=(DeviceTier("big", 64), DeviceTier("small", 20)))
    ok = assess_headroom(_footprint(10.0), profile)
    assert ok.status == "pass" and ok.details["lowest_tier"] == "small"
    assert ok.value == pytest.approx(0.5)
    bad = assess_headroom(_footprint(17.0), profile)
    assert bad.status == "fail"
    assert bad.value == pytest.approx(0.15)
    assert bad.actions[0].startswith("small (20 MiB) needs a smaller model")
    assert {t["name"] for t in bad.details["tiers"]} == {"big", "small"}


def test_budgets_are_mib_and_labelled_so():
    """memory_mb is used as MiB (2**20 bytes); every label says MiB, none says MB."""
    from skuscale.assess.html import _check_extras

    tier = DeviceTier("t", 20)
    assert tier.memory_bytes == 20 * 2**20
    result = assess_headroom(_footprint(17.0), DeviceProfile(name="p", tiers=(tier,)))
    assert "(20 MiB for the model)" in result.summary
    assert all(" MB" not in text for text in [result.summary, *result.actions])
    html = _check_extras(result.to_dict())
    assert "MiB for the model" in html and "MB for the model" not in html


def test_shipped_profiles_load_and_bad_ones_are_clear(tmp_path):
    assert {"smart-cart", "shelf-camera", "handheld"} <= set(shipped_profiles())
    for name in shipped_profiles():
        profile = load_profile(name)
        assert profile.tiers and profile.lowest_tier.memory_mb > 0
    custom = tmp_path / "mine.yaml"
    custom.write_text("name: mine\ntiers:\n  - {name: t1, memory_mb: 48}\n")
    assert load_profile(custom).lowest_tier == DeviceTier("t1", 48.0)
    with pytest.raises(ProfileError, match="unknown device profile 'toaster'"):
        load_profile("toaster")
    custom.write_text("name: mine\ntiers:\n  - {name: t1, memory_mb: -1}\n")
    with pytest.raises(ProfileError, match="memory_mb must be a positive number"):
        load_profile(custom)
