"""Footprint arithmetic, device sizing and check 4 on known cases."""

from __future__ import annotations

import pytest

from skuscale.assess.footprint import MIB, Footprint
from skuscale.assess.memory_headroom import assess_headroom
from skuscale.assess.profiles import DeviceProfile, DeviceTier, parse_profile
from skuscale.edge.footprint import BackboneCost, class_table_bytes_for, size_for_device
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
    one_table = class_table_bytes_for(100_000, 1280, prototype_table=False, approximate_above=10**9)
    assert one_table == 100_000 * (1280 * 4 + 4) + 4 * 100_000
    assert 100_000 * 1280 * 4 == 512_000_000  # the 512 MB
    both = class_table_bytes_for(100_000, 1280, prototype_table=True, approximate_above=10**9)
    assert both == 2 * 100_000 * (1280 * 4 + 4) + 4 * 100_000


def test_reduced_table_counts_its_pca_basis():
    assert class_table_bytes_for(100, 1280, dim=128, precision="int8", prototype_table=False) == (
        100 * (128 + 8) + 4 * 100 + (1280 * 128 + 1280) * 4)


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
    choice, tried = size_for_device(CART, 100_000, [LITE0])
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
    compact, _ = size_for_device(CART, 100_000, [LITE0])
    assert DevicePlan("smart-cart", dense, [dense]).to_dict()["table_setting_applied"] is True
    assert (compact.table_dim, compact.table_precision) != (None, "fp32")
    assert DevicePlan("smart-cart", compact, [compact]).to_dict()["table_setting_applied"] is False
