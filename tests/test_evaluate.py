"""decision_metrics: known answers on hand-made decisions."""

from __future__ import annotations

import math

import pytest

from skuscale.evaluate import decision_metrics
from skuscale.routing import Decision

CATALOGUE = ["a", "b", "c"]
CATS = {"a": "X", "b": "X", "c": "Y"}


def dec(band: str, sku: str, conf: float, ood: float) -> Decision:
    return Decision(band=band, sku=sku, confidence=conf, ood_score=ood)


# item  true  pred  band     conf  ood   notes
# 1     a     a     accept   0.9   0.10  right, accepted
# 2     a     b     accept   0.8   0.20  wrong, accepted (silent error)
# 3     b     b     verify   0.6   0.30  right
# 4     c     a     verify   0.5   0.40  wrong (category Y predicted as X)
# 5     z     c     accept   0.7   0.35  unknown product, accepted (silent error)
# 6     w     a     unknown  0.4   0.90  unknown product, flagged
DECISIONS = [
    dec("accept", "a", 0.9, 0.10),
    dec("accept", "b", 0.8, 0.20),
    dec("verify", "b", 0.6, 0.30),
    dec("verify", "a", 0.5, 0.40),
    dec("accept", "c", 0.7, 0.35),
    dec("unknown", "a", 0.4, 0.90),
]
Y_TRUE = ["a", "a", "b", "c", "z", "w"]
TRUE_CATS = ["X", "X", "X", "Y", "Y", None]


@pytest.fixture
def metrics():
    return decision_metrics(
        DECISIONS, Y_TRUE, catalogue=CATALOGUE, sku_to_category=CATS, true_categories=TRUE_CATS
    )


def test_counts(metrics):
    assert metrics["n_items"] == 6
    assert metrics["n_known"] == 4
    assert metrics["n_unknown"] == 2


def test_top1_and_coarse_top1(metrics):
    # known items 1-4: right on 1 and 3
    assert metrics["top1"] == pytest.approx(0.5)
    # predicted categories X, X, X, X against X, X, X, Y (unknown items are left out)
    assert metrics["coarse_top1"] == pytest.approx(0.75)


def test_automation_and_precision(metrics):
    # accepted among known: items 1, 2
    assert metrics["automation_rate"] == pytest.approx(0.5)
    # accepted: 1, 2, 5, of which only 1 is right (the accepted unknown counts as wrong)
    assert metrics["auto_precision"] == pytest.approx(1 / 3)
    # accepted and wrong: 2, 5 of all 6 items
    assert metrics["silent_error_rate"] == pytest.approx(2 / 6)


def test_unknown_rates(metrics):
    assert metrics["unknown_flag_rate"] == pytest.approx(0.5)  # item 6 of 5, 6
    assert metrics["unknown_accept_rate"] == pytest.approx(0.5)  # item 5 of 5, 6


def test_ood_auroc(metrics):
    # unknown 0.35 beats 0.10, 0.20, 0.30 (3 of 4); 0.90 beats all 4 -> 7 / 8
    assert metrics["ood_auroc"] == pytest.approx(7 / 8)


def test_ece(metrics):
    # known confidences 0.9, 0.8, 0.6, 0.5 fall in four different bins of 15:
    # (|1 - .9| + |0 - .8| + |1 - .6| + |0 - .5|) / 4 = 1.8 / 4
    assert metrics["ece"] == pytest.approx(0.45)


def test_per_class(metrics):
    assert metrics["per_class_top1"] == pytest.approx({"a": 0.5, "b": 1.0, "c": 0.0})
    assert set(metrics["per_class_top1"]) == {"a", "b", "c"}
    # population std of [0.5, 1, 0] = sqrt(1/6), in percentage points
    assert metrics["per_class_top1_std_pp"] == pytest.approx(100 * math.sqrt(1 / 6))
    assert metrics["per_class_top1_min"] == pytest.approx(0.0)


def test_bands(metrics):
    assert metrics["bands"] == {"accept": 3, "verify": 2, "unknown": 1}


def test_all_keys_present(metrics):
    assert set(metrics) == {
        "n_items", "n_known", "n_unknown", "top1", "coarse_top1", "automation_rate",
        "auto_precision", "silent_error_rate", "unknown_flag_rate", "unknown_accept_rate",
        "ood_auroc", "ece", "per_class_top1", "per_class_top1_std_pp", "per_class_top1_min",
        "bands",
    }


def test_no_unknown_items():
    m = decision_metrics(DECISIONS[:4], Y_TRUE[:4], catalogue=CATALOGUE)
    assert m["n_unknown"] == 0
    assert m["ood_auroc"] is None
    assert m["unknown_flag_rate"] is None
    assert m["unknown_accept_rate"] is None
    assert m["coarse_top1"] is None  # no true categories given
    assert m["auto_precision"] == pytest.approx(0.5)
    assert m["silent_error_rate"] == pytest.approx(0.25)
    assert m["bands"] == {"accept": 2, "verify": 2, "unknown": 0}


def test_nothing_accepted_gives_no_precision():
    decisions = [dec("verify", "a", 0.5, 0.1), dec("unknown", "b", 0.3, 0.9)]
    m = decision_metrics(decisions, ["a", "q"], catalogue=CATALOGUE)
    assert m["auto_precision"] is None
    assert m["automation_rate"] == pytest.approx(0.0)
    assert m["silent_error_rate"] == pytest.approx(0.0)
    assert m["unknown_flag_rate"] == pytest.approx(1.0)
    assert m["unknown_accept_rate"] == pytest.approx(0.0)
    assert m["ood_auroc"] == pytest.approx(1.0)
    assert m["top1"] == pytest.approx(1.0)


def test_only_unknown_items():
    decisions = [dec("accept", "a", 0.95, 0.2), dec("unknown", "b", 0.4, 0.8)]
    m = decision_metrics(decisions, ["x", "y"], catalogue=CATALOGUE)
    assert (m["n_known"], m["n_unknown"]) == (0, 2)
    for key in ("top1", "automation_rate", "ece", "ood_auroc", "per_class_top1_std_pp",
                "per_class_top1_min"):
        assert m[key] is None, key
    assert m["per_class_top1"] == {}
    assert m["auto_precision"] == pytest.approx(0.0)
    assert m["silent_error_rate"] == pytest.approx(0.5)
    assert m["unknown_accept_rate"] == pytest.approx(0.5)


def test_coarse_top1_ignores_items_without_a_true_category():
    decisions = [dec("verify", "a", 0.5, 0.1), dec("verify", "c", 0.5, 0.1)]
    m = decision_metrics(
        decisions, ["b", "a"], catalogue=CATALOGUE, sku_to_category=CATS,
        true_categories=["X", None],
    )
    assert m["coarse_top1"] == pytest.approx(1.0)  # only item 1 counts: a -> X == X
    m = decision_metrics(
        decisions, ["b", "a"], catalogue=CATALOGUE, sku_to_category=CATS,
        true_categories=[None, None],
    )
    assert m["coarse_top1"] is None


def test_uncategorised_prediction_counts_as_coarse_miss():
    decisions = [dec("verify", "c", 0.5, 0.1)]
    m = decision_metrics(
        decisions, ["a"], catalogue=CATALOGUE, sku_to_category={"a": "X"},
        true_categories=["X"],
    )
    assert m["coarse_top1"] == pytest.approx(0.0)


def test_length_mismatch_raises():
    with pytest.raises(ValueError, match="2 decisions for 3 labels"):
        decision_metrics(DECISIONS[:2], ["a", "b", "c"], catalogue=CATALOGUE)


def test_empty_input():
    m = decision_metrics([], [], catalogue=CATALOGUE)
    assert (m["n_items"], m["n_known"], m["n_unknown"]) == (0, 0, 0)
    assert m["silent_error_rate"] is None
    assert m["top1"] is None
    assert m["bands"] == {"accept": 0, "verify": 0, "unknown": 0}


def test_evaluate_embeddings_refuses_data_that_does_not_fit_the_bundle(tmp_path):
    from skuscale.build import build_bundle_from_embeddings
    from skuscale.data import save_embeddings
    from skuscale.evaluate import EvaluationInputError, evaluate_embeddings
    from skuscale.exceptions import SkuscaleError
    from skuscale.simulate import SimulatorParams, simulate_catalogue

    def sim(dim: int, seed: int):
        return simulate_catalogue(SimulatorParams(n_skus=5, dim=dim, max_train=6, min_train=4, val_per_sku=2,
                                                  test_per_sku=2, seed=seed))

    path = save_embeddings(tmp_path / "e.npz", sim(6, 1))
    bundle = build_bundle_from_embeddings(path, tmp_path / "b").bundle
    wide = save_embeddings(tmp_path / "wide.npz", sim(10, 2))
    with pytest.raises(EvaluationInputError, match=r"wide\.npz is 10-d, the bundle was built from 6-d embeddings"):
        evaluate_embeddings(bundle, wide)
    with pytest.raises(EvaluationInputError, match=r"no rows of split 'tset'; its splits: test, train, val"):
        evaluate_embeddings(bundle, path, split="tset")
    # Still the ValueError / SkuscaleError callers caught before; the CLI tells it apart as a usage error (exit 2).
    assert issubclass(EvaluationInputError, ValueError) and issubclass(EvaluationInputError, SkuscaleError)
    assert evaluate_embeddings(bundle, path, split="val")["split"] == "val"
