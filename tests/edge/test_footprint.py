"""Footprint arithmetic, device sizing and check 4 on known cases."""

from __future__ import annotations

import numpy as np
import pytest

from skuscale.assess.footprint import MIB, Footprint
from skuscale.assess.memory_headroom import assess_headroom
from skuscale.assess.profiles import DeviceProfile, DeviceTier, parse_profile
from skuscale.edge.footprint import BUILD_TABLE_SETTINGS, BackboneCost, class_table_bytes_for, size_for_device
from skuscale.edge.tables import table_bytes
from skuscale.exceptions import SkuscaleError


def test_table_bytes_known_cases():
    assert table_bytes(1000, 128, "fp32") == 1000 * (128 * 4 + 4)
    assert table_bytes(1000, 128, "fp16") == 1000 * (128 * 2 + 4)
    assert table_bytes(1000, 128, "int8") == 1000 * (128 + 4 + 4)  # row, bias, scale
    # FAISS: (dim + 1) code bytes (bias column), 8-byte id per row, fp32 centroids
    assert table_bytes(1000, 128, "int8", approximate=True, nlist=10) == 1000 * (129 + 8) + 10 * 129 * 4
    with pytest.raises(ValueError, match="precision"):
        table_bytes(10, 8, "int4")


def test_100k_skus_dense_fp32_is_half_a_gigabyte_per_table():
    # head (coef, intercept, log prior), prototypes (rows, norms, counts), a prototype detector, router
    k, d = 100_000, 1280
    dense = class_table_bytes_for(k, d, label_chars=0, approximate_above=10**9)
    assert dense == (k * d * 4 + 8 * k) + (k * d * 4 + 12 * k) + k * d * 4 + 8 * k
    assert 100_000 * 1280 * 4 == 512_000_000  # the 512 MB, three times
    # a k-NN detector keeps its bank instead of a k x d table
    knn = class_table_bytes_for(k, d, detector="knn", n_bank=50, label_chars=0, approximate_above=10**9)
    assert dense - knn == k * d * 4 - 50 * d * 4


def test_reduced_table_counts_its_pca_basis_once():
    k, w, d = 100, 128, 1280
    matrix = k * (w + 4)  # int8 rows and a float32 scale per row
    expected = (matrix + 8 * k) + (matrix + 12 * k) + matrix + 8 * k + (d * w + d) * 4
    assert class_table_bytes_for(k, d, dim=w, precision="int8", label_chars=0) == expected


@pytest.mark.parametrize("detector", ["prototype", "msp", "energy", "mahalanobis", "knn"])
def test_sizing_tables_equal_what_check_4_measures(detector):
    """Device sizing counts the arrays the built bundle stores, for every detector."""
    from skuscale.assess.footprint import class_table_bytes
    from skuscale.edge.footprint import detector_layout
    from skuscale.head.linear import LinearHead
    from skuscale.head.prototypes import PrototypeHead
    from skuscale.model import RecognitionModel
    from skuscale.ood import make_detector
    from skuscale.ood.detectors import EnergyDetector, MaxSoftmaxDetector
    from skuscale.routing import Router, fit_thresholds

    rng = np.random.default_rng(0)
    skus = ["sku-a", "sku-bb", "sku-ccc", "sku-dddd"]
    X = rng.standard_normal((40, 12)).astype(np.float32)
    y = np.repeat(skus, 10)
    head = LinearHead().fit(X, y)
    logit = {"msp": MaxSoftmaxDetector, "energy": EnergyDetector}
    det = logit[detector].from_head(head) if detector in logit else make_detector(detector).fit(X, y)
    table = fit_thresholds(np.full(40, 0.9), y, np.ones(40, bool), skus=skus, sku_to_category={})
    model = RecognitionModel(head=head, temperature=1.0, prototypes=PrototypeHead().fit(X, y), detector=det,
                             router=Router(skus=skus, sku_to_category={}, sku_thresholds=table, ood_threshold=0.5))
    parts, _ = class_table_bytes(model)
    name, n_bank = detector_layout(det)
    assert name == detector and n_bank == (40 if detector == "knn" else 0)
    assert class_table_bytes_for(4, 12, detector=name, n_bank=n_bank, label_chars=8) == sum(parts.values())


def test_check_4_measures_the_graph_onnx_runtime_runs(tmp_path, monkeypatch):
    """fp32 and INT8 alike: check 4's W and A are the runtime graph's, as in device sizing."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    from skuscale.assess.footprint import bundle_footprint, onnx_weights_and_activations
    from skuscale.edge.footprint import runtime_weights_and_activations

    # Conv then Relu: ONNX Runtime fuses them, so the pre-activation tensor never exists.
    w = numpy_helper.from_array(np.ones((8, 3, 3, 3), np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["c"], ["y"])],
        "convrelu", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 16, 16])], initializer=[w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, tmp_path / "backbone.onnx")
    runtime = runtime_weights_and_activations(tmp_path / "backbone.onnx")
    assert runtime[1] < onnx_weights_and_activations(tmp_path / "backbone.onnx")[1]

    from types import SimpleNamespace

    import skuscale.assess.footprint as fp

    bundle = SimpleNamespace(root=tmp_path, backbone={"onnx": "backbone.onnx"}, metadata={},
                             model=SimpleNamespace(skus=["a"]))
    monkeypatch.setattr(fp, "class_table_bytes", lambda model: ({"head": 0}, 0.0))
    footprint = bundle_footprint(bundle)
    assert (footprint.weights_bytes, footprint.activation_peak_bytes) == runtime


LITE0 = BackboneCost("lite0", weights_fp32=13 * MIB, activations_fp32=6 * MIB, weights_int8=4 * MIB,
                     activations_int8=3 * MIB)
CART = DeviceProfile(name="cart", tiers=(DeviceTier("gen1", 64), DeviceTier("gen2", 256)))


def test_sizing_keeps_the_dense_table_when_it_fits():
    choice, tried = size_for_device(CART, 81, [LITE0])
    assert len(tried) == 1
    assert (choice.backbone, choice.int8, choice.table_dim, choice.table_precision) == ("lite0", False, None, "fp32")
    expected = 13 * MIB + 6 * MIB + class_table_bytes_for(81, 1280)
    assert choice.total_bytes == expected
    assert choice.headroom == pytest.approx((64 * MIB - expected) / (64 * MIB))
    assert choice.tier == "cart/gen1"


def test_sizing_at_100k_skus_picks_the_first_candidate_with_20_percent_headroom():
    choice, tried = size_for_device(CART, 100_000, [LITE0], label_chars=0)
    assert choice.headroom >= 0.20
    assert all(c.headroom < 0.20 for c in tried[:-1])
    assert choice is tried[-1]
    # 100k rows: dense tables are far too big; a reduced int8 FAISS table is needed
    assert choice.table_dim is not None and choice.table_precision == "int8"
    assert "headroom" in choice.arithmetic() and "W 13.00" in choice.arithmetic()


def test_sizing_fails_early_with_the_arithmetic():
    tiny = DeviceProfile(name="tag", tiers=(DeviceTier("t0", 8),))
    with pytest.raises(SkuscaleError, match="nothing fits tag/t0") as info:
        size_for_device(tiny, 81, [LITE0])
    message = str(info.value)
    assert "W 13.00 + A 6.00" in message and "W 4.00 + A 3.00" in message  # fp32 and int8 both tried


# 13 + 6 MiB fp32, 4 + 3 MiB INT8; 1,500 SKUs of dense fp32 tables (22.6 MiB) fit neither on 32 MiB with 20%
# headroom; fp16 or int8 rows fit with the fp32 backbone, dense fp32 with INT8 does not, int8 rows with INT8 do.
SHELF = DeviceProfile(name="shelf", tiers=(DeviceTier("basic", 32),))


def test_sizing_tries_the_int8_backbone_before_pca_tables():
    # fp32 with dense int8 rows does not fit at 3,000 SKUs; fp32 with 512-d tables would, INT8 with int8 rows does.
    choice, tried = size_for_device(SHELF, 3000, [LITE0], label_chars=0)
    order = [(c.int8, c.table_dim, c.table_precision) for c in tried]
    assert order[:3] == [(False, None, "fp32"), (False, None, "fp16"), (False, None, "int8")]
    assert all(dim is None for _, dim, _ in order)  # no PCA candidate before every INT8 dense one
    assert (choice.int8, choice.table_dim) == (True, None)


def test_build_sizing_never_chooses_a_table_setting_it_cannot_store():
    choice, tried = size_for_device(SHELF, 600, [LITE0], label_chars=0, applicable=BUILD_TABLE_SETTINGS)
    # fp32 + fp16 rows would leave the headroom but the build stores dense fp32: INT8 + dense fp32 is chosen.
    assert any(c.headroom >= 0.20 and not c.applicable for c in tried)
    assert (choice.int8, choice.table_dim, choice.table_precision, choice.applicable) == (True, None, "fp32", True)
    assert "not applicable" in tried[1].arithmetic()
    with pytest.raises(SkuscaleError, match="compact tables would leave the headroom") as info:
        size_for_device(SHELF, 3000, [LITE0], label_chars=0, applicable=BUILD_TABLE_SETTINGS)
    assert "32 MiB for the model" in str(info.value)


def test_too_small_profile_fails_check_4():
    footprint = Footprint(weights_bytes=13 * MIB, activation_peak_bytes=6 * MIB, class_table_bytes=MIB,
                          class_table_parts={"head": MIB}, per_sku_bytes=MIB / 81, n_skus=81)
    small = parse_profile({"name": "small", "tiers": [{"name": "s", "memory_mb": 16}]}, "test")
    assert assess_headroom(footprint, small).status == "fail"
    roomy = parse_profile({"name": "roomy", "tiers": [{"name": "r", "memory_mb": 64}]}, "test")
    assert assess_headroom(footprint, roomy).status == "pass"


def test_device_plan_says_whether_the_table_setting_is_applied():
    from skuscale.edge.sizing import DevicePlan

    dense, _ = size_for_device(CART, 81, [LITE0])
    compact, _ = size_for_device(CART, 100_000, [LITE0], label_chars=0)
    assert DevicePlan("smart-cart", dense, [dense]).to_dict()["table_setting_applied"] is True
    assert (compact.table_dim, compact.table_precision) != (None, "fp32")
    assert DevicePlan("smart-cart", compact, [compact]).to_dict()["table_setting_applied"] is False
