"""fit_recognition_model on synthetic embeddings, and its fold / hold-out helpers."""

from __future__ import annotations

import numpy as np
import pytest

import skuscale.training as training
from skuscale.model import RecognitionModel
from skuscale.routing import BANDS, Decision
from skuscale.training import (
    TrainingConfig,
    TrainingReport,
    blocked_folds,
    fit_recognition_model,
    sku_holdout_groups,
)

K, N, D = 12, 30, 32
NOISE = 1.3  # per-row noise norm ~1.3 around unit-norm centres: some confusions, three bands
# A traffic share of unknowns (20%) about what these folds hold out (3 of 12 SKUs): the far
# cluster below is that share, so none of it may be auto-accepted.
CONFIG = TrainingConfig(n_folds=3, ood_folds=3, detectors=("msp", "knn", "prototype"), unknown_share=0.2)
SKUS = [f"sku{i:02d}" for i in range(K)]
CATEGORIES = {s: f"cat{i % 3}" for i, s in enumerate(SKUS)}


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


@pytest.fixture(scope="module")
def synthetic():
    rng = np.random.default_rng(0)
    centres = _unit(rng.standard_normal((K, D)))
    X = np.vstack(
        [c + NOISE * rng.standard_normal((N, D)) / np.sqrt(D) for c in centres]
    ).astype(np.float32)
    y = np.repeat(np.array(SKUS), N)
    # the far cluster: a fresh random direction (nearly orthogonal to all centres in 32-d)
    far = _unit(rng.standard_normal(D))
    X_far = (far + NOISE * rng.standard_normal((40, D)) / np.sqrt(D)).astype(np.float32)
    X_new = np.vstack(
        [c + NOISE * rng.standard_normal((5, D)) / np.sqrt(D) for c in centres]
    ).astype(np.float32)
    y_new = np.repeat(np.array(SKUS), 5)
    return X, y, X_far, X_new, y_new


@pytest.fixture(scope="module")
def fitted(synthetic):
    X, y, *_ = synthetic
    messages: list[str] = []
    model, report = fit_recognition_model(
        X, y, sku_to_category=CATEGORIES, config=CONFIG, step=messages.append
    )
    return model, report, messages


def test_returns_model_and_report(fitted):
    model, report, _ = fitted
    assert isinstance(model, RecognitionModel)
    assert isinstance(report, TrainingReport)
    assert model.skus == sorted(SKUS)
    assert model.sku_to_category == CATEGORIES
    assert model.prototypes.classes_.tolist() == sorted(SKUS)
    assert model.router.skus == model.skus


def test_decide_gives_decisions_in_the_three_bands(fitted, synthetic):
    model, _, _ = fitted
    X, _, X_far, *_ = synthetic
    decisions = model.decide(np.vstack([X, X_far]))
    assert len(decisions) == X.shape[0] + X_far.shape[0]
    assert all(isinstance(d, Decision) for d in decisions)
    bands = {d.band for d in decisions}
    assert bands <= set(BANDS)
    assert {"accept", "unknown"} <= bands
    for d in decisions[:5]:
        assert d.sku in model.skus
        assert 0.0 <= d.confidence <= 1.0
        assert len(d.candidates) == 5


def test_report_values(fitted):
    model, report, _ = fitted
    assert report.detector in CONFIG.detectors
    assert set(report.detector_scores) <= set(CONFIG.detectors)
    assert report.detector in report.detector_scores
    assert report.temperature > 0
    assert model.temperature == report.temperature
    assert 0.0 <= report.heldout_detection_rate <= 1.0
    assert report.heldout_detection_rate == report.detector_scores[report.detector][
        "detection_rate"
    ]
    assert model.router.ood_threshold == report.ood_threshold
    assert report.crossval["n_heldout"] == K * N
    assert 0.0 <= report.crossval["top1"] <= 1.0
    assert len(report.ood_heldout_skus) == CONFIG.ood_folds
    assert set(report.to_dict()) >= {"temperature", "detector", "crossval", "ood_threshold"}


def test_category_thresholds_are_fitted(fitted):
    model, _, _ = fitted
    assert model.router.category_thresholds is not None
    assert model.router.categories() == ["cat0", "cat1", "cat2"]


def test_progress_messages(fitted):
    _, report, messages = fitted
    assert any("held-out images" in m for m in messages)
    assert f"OOD detector: {report.detector}" in messages


def test_known_products_are_mostly_recognised(fitted, synthetic):
    model, _, _ = fitted
    *_, X_new, y_new = synthetic
    decisions = model.decide(X_new)
    top1 = np.mean([d.sku == t for d, t in zip(decisions, y_new, strict=True)])
    assert top1 >= 0.9
    assert np.mean([d.band == "unknown" for d in decisions]) <= 0.2
    accepted = [d.sku == t for d, t in zip(decisions, y_new, strict=True) if d.band == "accept"]
    assert len(accepted) >= 10
    assert np.mean(accepted) >= 0.95


def test_far_cluster_is_mostly_unknown(fitted, synthetic):
    model, _, _ = fitted
    X_far = synthetic[2]
    bands = [d.band for d in model.decide(X_far)]
    assert np.mean([b == "unknown" for b in bands]) >= 0.8
    assert "accept" not in bands


def test_calibration_rows_subset(synthetic):
    X, y, *_ = synthetic
    # the last 10 rows of each SKU are held out, except sku00 which has none
    pos = np.tile(np.arange(N), K)
    calib = (pos >= N - 10) & (y != "sku00")
    model, report = fit_recognition_model(
        X, y, sku_to_category=CATEGORIES, calibration_rows=calib, config=CONFIG
    )
    assert report.crossval["n_heldout"] == int(calib.sum()) == 110
    # the head is still trained on every row and every SKU
    assert model.skus == sorted(SKUS)
    # simulated unknowns are drawn among SKUs with calibration rows only
    held = [s for group in report.ood_heldout_skus for s in group]
    assert held
    assert "sku00" not in held
    assert report.detector in CONFIG.detectors
    assert {d.band for d in model.decide(X[:20])} <= set(BANDS)


@pytest.mark.parametrize(
    "mask",
    [np.zeros(K * N, bool), np.ones(K * N - 1, bool)],
    ids=["no-rows", "wrong-length"],
)
def test_bad_calibration_rows(synthetic, mask):
    X, y, *_ = synthetic
    with pytest.raises(ValueError, match="calibration_rows"):
        fit_recognition_model(X, y, calibration_rows=mask, config=CONFIG)


def test_two_skus_fall_back_to_msp(synthetic):
    # too few SKUs to hold any out as unknowns: msp with a flag-rate cut-off on held-out rows
    X, y, *_ = synthetic
    keep = np.isin(y, ["sku03", "sku07"])
    model, report = fit_recognition_model(X[keep], y[keep], config=CONFIG)
    assert report.ood_heldout_skus == []
    assert report.detector_scores == {}
    assert report.detector == "msp"
    assert np.isnan(report.heldout_detection_rate)
    assert model.skus == ["sku03", "sku07"]
    decisions = model.decide(X[keep])
    assert np.mean([d.sku == t for d, t in zip(decisions, y[keep], strict=True)]) >= 0.9
    assert {d.band for d in decisions} <= set(BANDS)


# -- blocked_folds ------------------------------------------------------------------------


@pytest.fixture
def interleaved_labels():
    rng = np.random.default_rng(3)
    sizes = {"p": 3, "q": 4, "r": 7, "s": 10, "t": 2}
    y = np.concatenate([np.full(n, k) for k, n in sizes.items()])
    return y[rng.permutation(y.size)], sizes


@pytest.mark.parametrize("n_folds", [3, 4])
def test_blocked_folds_cover_every_fold_per_class(interleaved_labels, n_folds):
    y, sizes = interleaved_labels
    folds = blocked_folds(y, n_folds, np.random.default_rng(0))
    assert folds.shape == y.shape
    assert folds.min() >= 0
    assert folds.max() < n_folds
    for cls, size in sizes.items():
        f = folds[y == cls]
        if size >= n_folds:
            assert set(f.tolist()) == set(range(n_folds)), cls
            counts = np.bincount(f, minlength=n_folds)
            assert counts.max() - counts.min() <= 1, cls
        else:
            # fewer rows than folds: each row in a fold of its own
            assert len(set(f.tolist())) == size, cls


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_blocked_folds_keep_contiguous_blocks(interleaved_labels, seed):
    y, sizes = interleaved_labels
    n_folds = 3
    folds = blocked_folds(y, n_folds, np.random.default_rng(seed))
    for cls in sizes:
        seq = folds[y == cls]  # the class's rows in their given order
        for f in np.unique(seq):
            where = np.flatnonzero(seq == f)
            assert where[-1] - where[0] + 1 == where.size, (cls, seq)
        # a rotation of 0, 0, 1, 1, 2, 2, ...: at most n_folds - 1 changes
        assert np.count_nonzero(np.diff(seq)) <= n_folds - 1


def test_blocked_folds_deterministic_given_rng(interleaved_labels):
    y, _ = interleaved_labels
    a = blocked_folds(y, 3, np.random.default_rng(42))
    b = blocked_folds(y, 3, np.random.default_rng(42))
    np.testing.assert_array_equal(a, b)


def test_blocked_folds_known_layout():
    # one class of 6 rows in 3 folds: blocks [0, 0, 1, 1, 2, 2] rotated by some r
    folds = blocked_folds(np.array(["a"] * 6), 3, np.random.default_rng(0))
    r = folds[0]
    np.testing.assert_array_equal(folds, (np.array([0, 0, 1, 1, 2, 2]) + r) % 3)


# -- sku_holdout_groups --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("n_skus", "n_groups", "fraction", "size", "expected_groups"),
    [
        (20, 8, 0.05, 1, 8),
        (40, 8, 0.05, 2, 8),
        (10, 8, 0.3, 3, 2),  # (10 - 2) // 3 groups fit
        (3, 5, 0.05, 1, 1),
        (2, 5, 0.05, 1, 0),
        (1, 5, 0.05, 1, 0),
    ],
)
def test_sku_holdout_groups(n_skus, n_groups, fraction, size, expected_groups):
    skus = [f"s{i:02d}" for i in range(n_skus)]
    groups = sku_holdout_groups(skus, n_groups, fraction, np.random.default_rng(0))
    assert len(groups) == expected_groups
    flat = [s for g in groups for s in g]
    assert len(flat) == len(set(flat)), "groups overlap"
    assert set(flat) <= set(skus)
    assert len(set(skus) - set(flat)) >= 2 or not groups
    for g in groups:
        assert len(g) == size
        assert g == sorted(g)
        assert n_skus - len(g) >= 2


def test_sku_holdout_groups_are_random_but_reproducible():
    skus = [f"s{i:02d}" for i in range(30)]
    a = sku_holdout_groups(skus, 5, 0.1, np.random.default_rng(1))
    b = sku_holdout_groups(skus, 5, 0.1, np.random.default_rng(1))
    c = sku_holdout_groups(skus, 5, 0.1, np.random.default_rng(2))
    assert a == b
    assert a != c


def test_holdout_predicts_calibration_rows_with_a_head_that_never_saw_them(synthetic):
    X, y, *_ = synthetic
    calib = np.zeros(len(y), bool)
    calib[::4] = True
    messages: list[str] = []
    _, report = fit_recognition_model(X, y, calibration_rows=calib, holdout=True, config=CONFIG,
                                      step=messages.append)
    assert any("(hold-out)" in m for m in messages)
    assert report.crossval["n_heldout"] == int(calib.sum())


def test_final_head_can_leave_calibration_rows_out(synthetic):
    X, y, *_ = synthetic
    calib = np.zeros(len(y), bool)
    calib[::4] = True
    cfg = TrainingConfig(**{**vars(CONFIG), "final_on_calibration": False})
    model, _ = fit_recognition_model(X, y, calibration_rows=calib, holdout=True, config=cfg)
    reference = TrainingConfig(**vars(CONFIG)).make_head().fit(X[~calib], y[~calib])
    np.testing.assert_allclose(model.head.coef_, reference.coef_, atol=1e-5)


def test_heldout_embeddings_change_the_predictions_not_the_head(synthetic, fitted):
    X, y, *_ = synthetic
    model, report, _ = fitted
    same, same_report = fit_recognition_model(X, y, sku_to_category=CATEGORIES, config=CONFIG, X_heldout=X.copy())
    assert same_report.crossval == report.crossval
    np.testing.assert_array_equal(same.router.sku_threshold_vector(), model.router.sku_threshold_vector())
    rng = np.random.default_rng(5)
    noisy = (X + 2.0 * NOISE * rng.standard_normal(X.shape) / np.sqrt(D)).astype(np.float32)
    other, other_report = fit_recognition_model(X, y, sku_to_category=CATEGORIES, config=CONFIG, X_heldout=noisy)
    # every head is still trained on X: the final head is the same ...
    np.testing.assert_array_equal(other.head.decision_function(X), model.head.decision_function(X))
    # ... but the held-out rows were predicted from the noisy embeddings
    assert other_report.crossval["top1"] < report.crossval["top1"]
    with pytest.raises(ValueError, match="X_heldout"):
        fit_recognition_model(X, y, config=CONFIG, X_heldout=X[:, :-1])


def test_ood_skus_restrict_the_simulated_unknowns(synthetic):
    X, y, *_ = synthetic
    sentinels = ["sku02", "sku05", "sku09"]
    model, report = fit_recognition_model(X, y, sku_to_category=CATEGORIES, config=CONFIG, ood_skus=sentinels)
    held = [s for group in report.ood_heldout_skus for s in group]
    assert held and set(held) <= set(sentinels)
    assert len(held) == len(set(held))
    # sentinels stay in the catalogue
    assert model.skus == sorted(SKUS)
    assert report.detector in report.detector_scores


def test_ood_skus_without_calibration_rows_leave_no_folds(synthetic):
    X, y, *_ = synthetic
    calib = y != "sku04"
    _, report = fit_recognition_model(X, y, calibration_rows=calib, config=CONFIG, ood_skus=["sku04"])
    assert report.ood_heldout_skus == []
    assert np.isnan(report.heldout_detection_rate)


@pytest.mark.parametrize(
    ("n_candidates", "n_skus", "fraction", "size", "expected_groups"),
    [
        (8, 81, 0.05, 4, 2),  # a build's 8 sentinels: two folds of round(0.05 * 81)
        (3, 81, 0.05, 3, 1),  # fewer candidates than a group: one smaller group
        (8, 20, 0.05, 1, 8),
        (8, 9, 0.05, 1, 7),  # two SKUs of the catalogue stay known
    ],
)
def test_sku_holdout_groups_from_candidates(n_candidates, n_skus, fraction, size, expected_groups):
    candidates = [f"s{i:02d}" for i in range(n_candidates)]
    groups = sku_holdout_groups(candidates, 8, fraction, np.random.default_rng(0), n_skus=n_skus)
    assert len(groups) == expected_groups
    assert all(len(g) == size for g in groups)
    flat = [s for g in groups for s in g]
    assert len(flat) == len(set(flat)) and set(flat) <= set(candidates)


def test_unknown_weight_gives_simulated_unknowns_the_assumed_share():
    from skuscale.training import _unknown_weight

    # 300 known held-out rows, 40 simulated unknown images, 2% of traffic unknown:
    # 40 * w / (300 + 40 * w) = 0.02  ->  w = 0.02 / 0.98 * 300 / 40
    w = _unknown_weight(TrainingConfig(unknown_share=0.02), 300, 40)
    assert w == pytest.approx(0.02 / 0.98 * 300 / 40)
    assert 40 * w / (300 + 40 * w) == pytest.approx(0.02)
    assert _unknown_weight(TrainingConfig(unknown_share=None), 300, 40) == 1.0
    assert _unknown_weight(TrainingConfig(unknown_share=0.02), 300, 0) == 1.0


def test_a_larger_unknown_share_never_loosens_thresholds(synthetic):
    X, y, *_ = synthetic
    tables = {}
    for share in (0.01, 0.3):
        cfg = TrainingConfig(n_folds=3, ood_folds=3, detectors=("msp",), unknown_share=share)
        model, _ = fit_recognition_model(X, y, sku_to_category=CATEGORIES, config=cfg)
        tables[share] = model.router.sku_thresholds
    low, high = tables[0.01], tables[0.3]
    assert all(high.per_sku[s] >= low.per_sku[s] for s in SKUS)
    assert any(high.per_sku[s] > low.per_sku[s] for s in SKUS)


@pytest.mark.parametrize("share", [0.0, 1.0, -0.1])
def test_bad_unknown_share(synthetic, share):
    X, y, *_ = synthetic
    with pytest.raises(ValueError, match="unknown_share"):
        fit_recognition_model(X, y, config=TrainingConfig(unknown_share=share))


def test_unknowns_simulated_in_another_space_leave_head_and_calibration_alone(synthetic):
    X, y, *_ = synthetic
    sentinels = ["sku02", "sku05", "sku09"]
    base_model, base = fit_recognition_model(X, y, sku_to_category=CATEGORIES, config=CONFIG, ood_skus=sentinels)
    assert base.ood_temperature is None
    # A backbone to which the sentinels look exactly like a known SKU: nothing can flag them there.
    X_ood = X.copy()
    for s in sentinels:
        X_ood[y == s] = X[y == "sku00"]
    model, report = fit_recognition_model(X, y, sku_to_category=CATEGORIES, config=CONFIG, ood_skus=sentinels,
                                          X_ood=X_ood)
    np.testing.assert_array_equal(model.head.decision_function(X), base_model.head.decision_function(X))
    assert report.temperature == base.temperature
    for key in ("n_heldout", "top1", "ece", "ece_uncalibrated"):
        assert report.crossval[key] == base.crossval[key]
    assert report.ood_heldout_skus == base.ood_heldout_skus
    assert isinstance(report.ood_temperature, float) and report.ood_temperature > 0
    assert report.heldout_detection_rate < base.heldout_detection_rate - 0.3
    # Those undetected unknowns now count against the SKU they pass for.
    i = model.skus.index("sku00")
    assert model.router.sku_threshold_vector()[i] > base_model.router.sku_threshold_vector()[i]
    with pytest.raises(ValueError):
        fit_recognition_model(X, y, config=CONFIG, ood_skus=sentinels, X_ood=X_ood[:-1])


def test_the_ood_cut_off_comes_from_the_deployed_space(synthetic):
    X, y, *_ = synthetic
    sentinels = ["sku02", "sku05", "sku09"]
    cfg = TrainingConfig(n_folds=3, ood_folds=3, detectors=("knn",), unknown_share=0.2)
    rng = np.random.default_rng(7)
    noisy = (X + NOISE * rng.standard_normal(X.shape) / np.sqrt(D)).astype(np.float32)
    same, same_report = fit_recognition_model(X, y, config=cfg, ood_skus=sentinels, X_ood=X.copy())
    other, other_report = fit_recognition_model(X, y, config=cfg, ood_skus=sentinels, X_ood=noisy)
    # The simulation ran in different spaces ...
    assert other_report.detector_scores["knn"]["threshold"] != same_report.detector_scores["knn"]["threshold"]
    # ... but the deployed detector's cut-off flags the target share of held-out known rows of X in both.
    assert other.router.ood_threshold == same.router.ood_threshold
    flagged = same.detector.score_samples(X) > same.router.ood_threshold
    assert flagged.mean() < 3 * cfg.ood_flag_rate


def test_a_sku_missing_from_its_fold_head_does_not_wreck_calibration(synthetic):
    """A one-photo SKU is absent from the head of its own fold: its row is left out of the fit."""
    X, y, *_ = synthetic
    config = TrainingConfig(n_folds=3, ood_folds=2, detectors=("msp",))
    _, base = fit_recognition_model(X, y, config=config)
    rng = np.random.default_rng(1)
    X1 = np.vstack([X, rng.standard_normal((1, D)).astype(np.float32)])
    y1 = np.append(y, "lonely")
    model, report = fit_recognition_model(X1, y1, config=config)
    assert "lonely" in model.skus
    assert report.crossval["n_heldout_skipped"] == 1
    assert report.crossval["n_heldout"] == len(y)
    # Without the guard the lonely row pins T at its bound (100) and nothing is accepted.
    assert report.temperature < 2 * base.temperature
    assert report.crossval["automation_rate_in_sample"] > 0.5 * base.crossval["automation_rate_in_sample"] > 0


def test_category_thresholds_are_fitted_on_the_rows_that_reach_them(synthetic, monkeypatch):
    """Auto-accepted rows never get a category claim, so they must not vouch for one."""
    calls = []

    def spy(confidence, *args, **kwargs):
        calls.append((np.asarray(confidence).size, kwargs["skus"]))
        return fit_thresholds(confidence, *args, **kwargs)

    fit_thresholds = training.fit_thresholds
    monkeypatch.setattr(training, "fit_thresholds", spy)
    X, y, *_ = synthetic
    _, report = fit_recognition_model(X, y, sku_to_category=CATEGORIES, config=CONFIG)
    n_rows, names = calls[-1]
    assert names == sorted(set(CATEGORIES.values()))
    accepted = round(report.crossval["automation_rate_in_sample"] * report.crossval["n_heldout"])
    assert 0 < accepted < report.crossval["n_heldout"]
    assert n_rows == report.crossval["n_heldout"] - accepted


def test_one_training_photo_per_sku_skips_detectors_that_cannot_fit():
    """Pack-shot catalogues: Mahalanobis has no within-class scatter to fit on the OOD folds."""
    rng = np.random.default_rng(5)
    k, d = 20, 16
    centres = _unit(rng.standard_normal((k, d)))
    skus = np.array([f"s{i:02d}" for i in range(k)])
    X = np.vstack([centres, np.repeat(centres, 3, axis=0) + 0.3 * rng.standard_normal((3 * k, d)) / np.sqrt(d)])
    y = np.concatenate([skus, np.repeat(skus, 3)])
    calib = np.arange(len(y)) >= k
    _, report = fit_recognition_model(
        X.astype(np.float32), y, calibration_rows=calib, holdout=True,
        config=TrainingConfig(ood_folds=2, detectors=("msp", "mahalanobis")),
    )
    assert "mahalanobis" in report.detectors_skipped
    assert report.detector == "msp" and set(report.detector_scores) == {"msp"}


def test_known_ood_scores_leave_out_skus_the_fold_head_lacks(synthetic, monkeypatch):
    """A SKU whose only photo is in the test fold is new to that head, not a known product."""
    X, y, *_ = synthetic
    rng = np.random.default_rng(2)
    X_lonely = (5.0 * rng.standard_normal((4, D))).astype(np.float32)
    X1, y1 = np.vstack([X, X_lonely]), np.append(y, [f"lonely{i}" for i in range(4)])
    known_batches = []
    real = training._make_fitted_detector

    def spy(*args, **kwargs):
        det = real(*args, **kwargs)
        calls = []
        score = det.score_samples

        def recording(Xq):
            calls.append(1)
            if len(calls) == 1:  # the first call of each fold's detector scores the known rows
                known_batches.append(np.asarray(Xq))
            return score(Xq)

        det.score_samples = recording
        return det

    monkeypatch.setattr(training, "_make_fitted_detector", spy)
    fit_recognition_model(X1, y1, config=TrainingConfig(n_folds=3, ood_folds=2, detectors=("msp",)))
    assert known_batches
    for batch in known_batches:
        assert not any(np.isclose(batch, row).all(axis=1).any() for row in X_lonely)
