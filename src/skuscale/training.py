"""Fit the recognition model on embeddings, with every choice made on held-out data.

Held-out predictions come from cross-fitting over the *calibration rows*: the
store photos when no validation set is given, or the validation set when one is.
Rows outside the calibration set (reference pack shots, and the training photos
when a validation set exists) are always on the training side. The distinction
matters on real data: photos of one SKU in the training set are often shot in one
session, so folds over them are optimistic (top-1 0.96 in cross-fitting against
0.75 on the Grocery Store validation images), and temperature, thresholds and the
OOD cut-off set there do not transfer. A validation set from other sessions gives
honest held-out predictions; its rows are cross-fitted and then join the final head.

Unknown products are simulated by holding out ~5% of SKUs per fold.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from skuscale._base import check_X_y, softmax
from skuscale.head.calibration import TemperatureScaler
from skuscale.head.linear import LinearHead
from skuscale.head.prototypes import PrototypeHead
from skuscale.metrics import expected_calibration_error
from skuscale.model import RecognitionModel
from skuscale.ood import DETECTORS, auroc, detection_rate, make_detector, threshold_at_flag_rate
from skuscale.routing import Router, fit_thresholds

StepCallback = Callable[[str], None]
LOGIT_FLOOR = -1e4


@dataclass(frozen=True)
class TrainingConfig:
    """Knobs of :func:`fit_recognition_model`; the defaults are the measured ones.

    Attributes
    ----------
    head_C, long_tail, tau : LinearHead settings.
    n_folds : int
        Cross-fitting folds over the calibration rows.
    ood_folds : int
        Folds that each hold out ``ood_holdout_fraction`` of the SKUs as unknowns.
    ood_holdout_fraction : float
        Share of SKUs held out per OOD fold (at least one).
    ood_flag_rate : float
        Target share of known items flagged as unknown.
    detectors : tuple of str
        Candidates compared on the OOD folds; the best is kept.
    target_precision : float
        Per-SKU auto-accept precision target.
    min_support : int or None
        Held-out predictions a SKU needs for its own threshold (else category, else
        global); None keeps :func:`skuscale.routing.fit_thresholds`' default.
    threshold_method : {"shrinkage", "clopper_pearson"}
        Rule of :func:`skuscale.routing.fit_thresholds`.
    unknown_share : float or None
        Share of traffic assumed to be unknown products when thresholds are fitted:
        simulated unknowns that pass the OOD stage count as errors with this weight
        (shrinkage rule only; None counts every simulated unknown image once).
    final_on_calibration : bool
        Whether the final head also trains on the calibration rows (more data and
        more shooting sessions; set False to measure the head on them honestly).
    seed : int
    """

    head_C: float = 10.0  # noqa: N815 - scikit-learn's name for the inverse regularisation
    long_tail: str = "logit_adjust"
    tau: float = 1.0
    n_folds: int = 5
    ood_folds: int = 8
    ood_holdout_fraction: float = 0.05
    ood_flag_rate: float = 0.05
    detectors: tuple[str, ...] = ("msp", "energy", "mahalanobis", "knn", "prototype")
    target_precision: float = 0.99
    min_support: int | None = None
    threshold_method: str = "shrinkage"
    unknown_share: float | None = 0.02
    final_on_calibration: bool = True
    seed: int = 0

    def make_head(self) -> LinearHead:
        return LinearHead(C=self.head_C, long_tail=self.long_tail, tau=self.tau)


@dataclass
class TrainingReport:
    """What cross-fitting measured; goes into ``bundle.json``."""

    temperature: float
    detector: str
    ood_threshold: float
    heldout_detection_rate: float
    detector_scores: dict[str, dict[str, float]]
    crossval: dict[str, float]
    ood_heldout_skus: list[list[str]] = field(default_factory=list)
    #: Temperature of the space unknowns were simulated in, when it was not ``X``'s (``X_ood``).
    ood_temperature: float | None = None
    #: Candidate detectors that could not be fitted on the held-out-SKU folds, with the reason.
    detectors_skipped: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return dict(vars(self))


def blocked_folds(y: np.ndarray, n_folds: int, rng: np.random.Generator) -> np.ndarray:
    """Fold index per row: each class's rows, in their given order, cut into contiguous blocks.

    Consecutive photos of a SKU tend to come from one shooting session; keeping them
    together makes held-out predictions less optimistic than a random split. The
    block-to-fold assignment is rotated at random per class so folds stay balanced.
    """
    folds = np.empty(y.shape[0], dtype=np.int64)
    for cls in np.unique(y):
        idx = np.flatnonzero(y == cls)
        block = np.arange(idx.size) * n_folds // max(idx.size, 1)
        folds[idx] = (block + rng.integers(n_folds)) % n_folds
    return folds


def sku_holdout_groups(
    skus: Sequence[str], n_groups: int, fraction: float, rng: np.random.Generator, *,
    candidates: Sequence[str] | None = None, n_skus: int | None = None,
) -> list[list[str]]:
    """Disjoint random groups of about ``fraction`` of the catalogue, drawn from ``skus``.

    ``candidates`` restricts the draw to those of ``skus`` (sentinel SKUs); ``n_skus``
    is the catalogue size (default ``len(skus)``). At least two SKUs of the catalogue
    always stay known, and groups shrink to fit a short candidate list.
    """
    if candidates is not None:
        n_skus = len(skus) if n_skus is None else n_skus
        skus = np.intersect1d(np.asarray(list(skus), dtype=str), np.asarray(list(candidates), dtype=str))
    skus = list(skus)
    total = len(skus) if n_skus is None else int(n_skus)
    size = max(1, round(fraction * total))
    if n_skus is not None:
        size = max(1, min(size, len(skus)))
    n_groups = max(0, min(n_groups, len(skus) // size, (total - 2) // size))
    order = [skus[i] for i in rng.permutation(len(skus))]
    return [sorted(order[g * size : (g + 1) * size]) for g in range(n_groups)]


def _make_fitted_detector(name: str, head: LinearHead, temperature: float, X: np.ndarray, y: np.ndarray):
    """A fitted detector; logit-based ones reuse the fitted head at the calibrated temperature."""
    klass = DETECTORS[name]
    if hasattr(klass, "from_head"):
        return klass.from_head(head, temperature=temperature)
    return make_detector(name).fit(X, y)


def _unknown_weight(cfg: TrainingConfig, n_known: int, n_unknown: int) -> float:
    """Weight of one simulated unknown image in the threshold fit.

    Every simulated unknown image (caught or not) stands for ``unknown_share`` of the
    traffic against the known held-out images, whatever the number of folds and
    held-out SKUs happens to be; None counts each image once (the share is then
    ``n_unknown / (n_known + n_unknown)``, an accident of the fold design).
    """
    if cfg.unknown_share is None or n_unknown == 0:
        return 1.0
    share = float(cfg.unknown_share)
    return share / (1.0 - share) * n_known / n_unknown


def _aligned_logits(head: LinearHead, X: np.ndarray, catalogue: np.ndarray) -> np.ndarray:
    # A fold may lack a rare SKU entirely; its column stays at a very low logit.
    out = np.full((X.shape[0], catalogue.size), LOGIT_FLOOR, dtype=np.float32)
    out[:, np.searchsorted(catalogue, head.classes_)] = head.decision_function(X)
    return out


def _heldout_fit(X, Xh, y, y_idx, calib, folds, n_folds, final_rows, catalogue, cfg: TrainingConfig,
                 predictable: np.ndarray):
    """Final head, per-fold heads, held-out logits of the calibration rows and their temperature.

    The temperature is fitted on the calibration rows whose SKU their fold's head was
    trained on (``predictable``, see :func:`_predictable_rows`).
    """
    cv_logits = np.zeros((len(y), catalogue.size), dtype=np.float32)
    # The final head is needed anyway; it also warm-starts every fold's head.
    final_head = cfg.make_head().fit(X[final_rows], y[final_rows])
    fold_heads = {}
    for f in range(n_folds):
        test = folds == f
        if test.any():
            fold_heads[f] = cfg.make_head().fit(X[~test], y[~test], init=final_head)
            cv_logits[test] = _aligned_logits(fold_heads[f], Xh[test], catalogue)
    rows = calib & predictable
    if not rows.any():
        raise ValueError("no calibration row belongs to a SKU that the other rows train on: "
                         "every calibration SKU needs training rows too")
    temperature = float(TemperatureScaler().fit(cv_logits[rows], y_idx[rows]).temperature_)
    return final_head, fold_heads, cv_logits, temperature


def _predictable_rows(y, folds) -> np.ndarray:
    """Rows whose SKU the head of their fold is trained on (it trains on every other fold's rows).

    A SKU whose every photo falls in one fold (a single photo, or a SKU that only the
    calibration rows have) is absent from that fold's head: its rows sit at
    :data:`LOGIT_FLOOR` and would drive the temperature to its bound and the
    thresholds to "never accept" for the whole catalogue. The deployed head has seen
    them, so they say nothing about its calibration and are left out.
    """
    ok = np.zeros(len(y), bool)
    for f in np.unique(folds[folds >= 0]):
        test = folds == f
        ok[test] = np.isin(y[test], y[~test])
    return ok


def _known_flag_threshold(name, X, Xh, y, folds, fold_heads, predictable, temperature, cfg: TrainingConfig) -> float:
    """Cut-off of detector ``name`` that flags ``cfg.ood_flag_rate`` of held-out known images."""
    scores = []
    for f, head in fold_heads.items():
        # Rows of a SKU the fold's head lacks are not "known" to it (see _predictable_rows).
        test = (folds == f) & predictable
        det = _make_fitted_detector(name, head, temperature, X[folds != f], y[folds != f])
        scores.append(det.score_samples(Xh[test]))
    return float(threshold_at_flag_rate(np.concatenate(scores), cfg.ood_flag_rate))


def fit_recognition_model(
    X,
    y,
    *,
    sku_to_category: dict[str, str] | None = None,
    calibration_rows: np.ndarray | None = None,
    holdout: bool = False,
    config: TrainingConfig | None = None,
    step: StepCallback | None = None,
    X_heldout=None,
    ood_skus=None,
    X_ood=None,
) -> tuple[RecognitionModel, TrainingReport]:
    """Fit head, temperature, OOD detector and per-SKU thresholds on embeddings.

    Parameters
    ----------
    X : ndarray (n, d)
        Embeddings of every image (training, validation and reference together).
    y : ndarray (n,)
        SKU labels.
    sku_to_category : dict, optional
    calibration_rows : ndarray of bool (n,), optional
        Rows whose held-out predictions set temperature, thresholds and the OOD
        cut-off (default: all rows). The other rows are always trained on.
    holdout : bool
        Predict all calibration rows with one head trained on the other rows (a
        validation set from other shooting sessions), instead of cross-fitting
        ``n_folds`` contiguous folds over them (photos of a session then share
        folds and the predictions come out optimistic).
    config : TrainingConfig, optional
    step : callable, optional
        Receives a short message as each stage starts (for progress output).
    X_heldout : ndarray (n, d), optional
        Embeddings of the same images from another backbone (an INT8 one, say), used
        wherever a row is *predicted* as held out (held-out logits, OOD scores of
        known and held-out-SKU rows); every head and detector is still trained on
        ``X``. Temperature, OOD cut-off and thresholds then describe a deployment
        that runs the ``X``-trained head on ``X_heldout``-style embeddings.
    ood_skus : sequence of str, optional
        The only SKUs the OOD folds may hold out as unknown products (default: any
        SKU with calibration rows). A build with a fine-tuned backbone passes the
        SKUs it kept out of fine-tuning ("sentinels"): SKUs the backbone was trained
        on are not unknown to it, and simulating unknowns with them flatters the
        detector (see :func:`sku_holdout_groups`).
    X_ood : ndarray (n, d'), optional
        Embeddings of the same images from a backbone that has not seen ``ood_skus``
        (a build's backbone before its sentinels joined fine-tuning). Unknown products
        are then simulated in that space: the detector is chosen and its detection
        rate estimated there, and the unknowns that slip past it (at that space's own
        temperature and cut-off) join the threshold fit with their confidence there.
        Head, temperature, the detector's cut-off and the known rows of the threshold
        fit still come from ``X``. ``X_heldout`` does not apply to ``X_ood``.

    Returns
    -------
    model : RecognitionModel
        Its head is trained on all rows.
    report : TrainingReport
    """
    cfg = config or TrainingConfig()
    if cfg.unknown_share is not None and not 0.0 < cfg.unknown_share < 1.0:
        raise ValueError(f"unknown_share must be in (0, 1) or None, got {cfg.unknown_share!r}")
    say = step or (lambda _msg: None)
    X, y = check_X_y(X, y)
    y = y.astype(str)
    Xh = X if X_heldout is None else check_X_y(X_heldout, y)[0]
    if Xh.shape != X.shape:
        raise ValueError(f"X_heldout must have the shape of X {X.shape}, got {Xh.shape}")
    sku_to_category = dict(sku_to_category or {})
    calib = np.ones(len(y), bool) if calibration_rows is None else np.asarray(calibration_rows, bool)
    if calib.shape != y.shape or not calib.any():
        raise ValueError("calibration_rows must be a boolean mask with at least one row")
    rng = np.random.default_rng(cfg.seed)
    catalogue = np.unique(y)
    y_idx = np.searchsorted(catalogue, y)

    # 1. Held-out logits on the calibration rows.
    n_folds = 1 if holdout else cfg.n_folds
    say(f"predicting {int(calib.sum())} held-out images " + ("(hold-out)" if holdout else f"({n_folds} folds)"))
    folds = np.full(len(y), -1)
    folds[calib] = 0 if holdout else blocked_folds(y[calib], n_folds, rng)
    final_rows = np.ones(len(y), bool) if cfg.final_on_calibration else ~calib
    predictable = _predictable_rows(y, folds)
    final_head, fold_heads, cv_logits, temperature = _heldout_fit(X, Xh, y, y_idx, calib, folds, n_folds,
                                                                  final_rows, catalogue, cfg, predictable)
    n_calib = int(calib.sum())
    calib = calib & predictable
    cv_probs = softmax(cv_logits[calib] / temperature)
    cv_pred = catalogue[cv_probs.argmax(axis=1)]
    cv_conf = cv_probs.max(axis=1)
    cv_correct = cv_pred == y[calib]

    # 2. Unknown products simulated by held-out SKUs (drawn among SKUs with calibration rows),
    #    in the space of a backbone that has not seen them when one is given.
    if X_ood is None:
        Xo, Xoh, ood_head, ood_temperature = X, Xh, final_head, temperature
    else:
        Xo = check_X_y(X_ood, y)[0]
        Xoh = Xo
        ood_head, _, _, ood_temperature = _heldout_fit(Xo, Xo, y, y_idx, calib, folds, n_folds, final_rows,
                                                       catalogue, cfg, predictable)
    groups = sku_holdout_groups(np.unique(y[calib]), cfg.ood_folds, cfg.ood_holdout_fraction, rng,
                                candidates=ood_skus, n_skus=None if ood_skus is None else catalogue.size)
    say(f"comparing OOD detectors on {len(groups)} held-out-SKU folds"
        + (" (on the backbone that has not seen them)" if X_ood is not None else ""))
    known_scores: dict[str, list[np.ndarray]] = {d: [] for d in cfg.detectors}
    unknown_scores: dict[str, list[np.ndarray]] = {d: [] for d in cfg.detectors}
    fold_auroc: dict[str, list[float]] = {d: [] for d in cfg.detectors}
    unknown_conf, unknown_pred = [], []
    unusable: dict[str, str] = {}
    for g, held in enumerate(groups):
        is_unknown = np.isin(y, held)
        known_test = (folds == g % n_folds) & ~is_unknown
        # Every image of a held-out SKU is an unknown product to a head that never saw it.
        unknown_test = is_unknown
        fit_rows = ~is_unknown & (folds != g % n_folds)
        # A known SKU with no rows left to fit on is as new to this fold's head as the held-out ones.
        known_test &= np.isin(y, y[fit_rows])
        if not known_test.any() or not unknown_test.any():
            continue
        head = cfg.make_head().fit(Xo[fit_rows], y[fit_rows], init=ood_head)
        probs = softmax(head.decision_function(Xoh[unknown_test]) / ood_temperature)
        unknown_conf.append(probs.max(axis=1))
        unknown_pred.append(head.classes_[probs.argmax(axis=1)])
        for name in cfg.detectors:
            if name in unusable:
                continue
            try:
                det = _make_fitted_detector(name, head, ood_temperature, Xo[fit_rows], y[fit_rows])
            except ValueError as exc:
                # e.g. Mahalanobis when every SKU has one photo: no within-class scatter to fit.
                unusable[name] = str(exc)
                continue
            ks, us = det.score_samples(Xoh[known_test]), det.score_samples(Xoh[unknown_test])
            known_scores[name].append(ks)
            unknown_scores[name].append(us)
            fold_auroc[name].append(auroc(ks, us))

    detector_scores: dict[str, dict[str, float]] = {}
    for name in cfg.detectors:
        if known_scores[name] and name not in unusable:
            ks, us = np.concatenate(known_scores[name]), np.concatenate(unknown_scores[name])
            thr = threshold_at_flag_rate(ks, cfg.ood_flag_rate)
            detector_scores[name] = {
                "auroc": float(np.mean(fold_auroc[name])),
                "detection_rate": detection_rate(us, thr),
                "threshold": float(thr),
            }
    if detector_scores:
        best = max(detector_scores, key=lambda n: (detector_scores[n]["detection_rate"], detector_scores[n]["auroc"]))
        ood_threshold = detector_scores[best]["threshold"]
        heldout_detection = detector_scores[best]["detection_rate"]
        detector = _make_fitted_detector(best, final_head, temperature, X[final_rows], y[final_rows])
        if X_ood is not None:
            # The simulation's cut-off is in the other space; the deployed detector flags
            # the same share of held-out known images in this one.
            ood_threshold = _known_flag_threshold(best, X, Xh, y, folds, fold_heads, predictable, temperature, cfg)
    else:
        # Too few SKUs to hold any out: flag the target share of held-out known scores.
        best = "msp"
        detector = _make_fitted_detector(best, final_head, temperature, X[final_rows], y[final_rows])
        ood_threshold = threshold_at_flag_rate(-cv_conf, cfg.ood_flag_rate)
        heldout_detection = float("nan")
    say(f"OOD detector: {best}")
    prototypes = PrototypeHead().fit(X[final_rows], y[final_rows])

    # 3. Per-SKU thresholds on held-out predictions; unknown products that slipped past
    #    the detector count as errors of the SKU they were mistaken for.
    say("fitting per-SKU and per-category thresholds")
    conf_rows, pred_rows, correct_rows = [cv_conf], [cv_pred], [cv_correct]
    weights = [np.ones(cv_conf.size)]
    if best in detector_scores and unknown_conf:
        passed = np.concatenate(unknown_scores[best]) <= detector_scores[best]["threshold"]
        conf_rows.append(np.concatenate(unknown_conf)[passed])
        pred_rows.append(np.concatenate(unknown_pred)[passed])
        correct_rows.append(np.zeros(int(passed.sum()), bool))
        weights.append(np.full(int(passed.sum()), _unknown_weight(cfg, int(calib.sum()), passed.size)))
    threshold_kwargs: dict = {"target_precision": cfg.target_precision, "method": cfg.threshold_method}
    if cfg.min_support is not None:
        threshold_kwargs["min_support"] = cfg.min_support
    sku_table = fit_thresholds(
        np.concatenate(conf_rows), np.concatenate(pred_rows).astype(str), np.concatenate(correct_rows),
        skus=list(catalogue), sku_to_category=sku_to_category, **threshold_kwargs,
        sample_weight=np.concatenate(weights) if cfg.threshold_method == "shrinkage" else None,
    )
    category_table = None
    if sku_to_category and all(s in sku_to_category for s in catalogue):
        cats = np.array([sku_to_category[s] for s in catalogue])
        cat_names = np.unique(cats)
        cat_probs = cv_probs @ (cats[:, None] == cat_names[None, :]).astype(np.float64)
        cat_pred = cat_names[cat_probs.argmax(axis=1)]
        cat_true = cats[y_idx[calib]]
        # The router claims a category only for items it did not accept as a SKU, so
        # the category thresholds are fitted on those rows (as in Router.from_heldout).
        reach = cv_conf < sku_table.thresholds_for(cv_pred)
        category_table = fit_thresholds(
            np.minimum(cat_probs.max(axis=1), 1.0)[reach], cat_pred[reach], (cat_pred == cat_true)[reach],
            skus=list(cat_names), sku_to_category={}, **threshold_kwargs,
        )

    router = Router(
        skus=list(final_head.classes_),
        sku_to_category=sku_to_category,
        sku_thresholds=sku_table,
        category_thresholds=category_table,
        ood_threshold=float(ood_threshold),
    )
    model = RecognitionModel(
        head=final_head, temperature=temperature, prototypes=prototypes, detector=detector,
        router=router, sku_to_category=sku_to_category,
    )
    accepted = cv_conf >= sku_table.thresholds_for(cv_pred)
    crossval = {
        "n_heldout": int(calib.sum()),
        # Rows of a SKU absent from their fold's head (see _predictable_rows).
        "n_heldout_skipped": n_calib - int(calib.sum()),
        "top1": float(cv_correct.mean()),
        "ece": float(expected_calibration_error(cv_conf, cv_correct)),
        "ece_uncalibrated": float(
            expected_calibration_error(softmax(cv_logits[calib]).max(axis=1), cv_correct)
        ),
        # Thresholds were fitted on these same rows: in-sample, for orientation only.
        "automation_rate_in_sample": float(accepted.mean()),
        "auto_precision_in_sample": float(cv_correct[accepted].mean()) if accepted.any() else None,
    }
    report = TrainingReport(
        temperature=temperature, detector=best, ood_threshold=float(ood_threshold),
        heldout_detection_rate=float(heldout_detection), detector_scores=detector_scores,
        crossval=crossval, ood_heldout_skus=groups,
        ood_temperature=None if X_ood is None else float(ood_temperature),
        detectors_skipped=unusable,
    )
    return model, report
