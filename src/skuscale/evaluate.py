"""``skuscale evaluate``: routed decisions against ground truth, unknown SKUs included."""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np

from skuscale.bundle import Bundle, embedding_rows
from skuscale.data import load_dataset
from skuscale.exceptions import SkuscaleError
from skuscale.metrics import expected_calibration_error
from skuscale.ood import auroc
from skuscale.routing import BANDS, Decision


class EvaluationInputError(SkuscaleError, ValueError):
    """The data or the options do not fit the bundle (wrong embedding size, a split the file lacks).

    The caller asked for something this data cannot give; ``skuscale evaluate`` exits 2.
    """


def check_embedding_dim(bundle: Bundle, X: np.ndarray, source: str) -> None:
    """Raise :class:`EvaluationInputError` unless the rows of ``X`` have the size the bundle's head expects."""
    expected = bundle.backbone.get("dim")
    got = int(X.shape[1]) if X.ndim == 2 else None
    if expected is None or got == int(expected):
        return
    shape = f"{got}-d" if got is not None else f"of shape {X.shape}"
    gives = (f"the bundle's backbone gives {int(expected)}-d" if bundle.backbone.get("onnx")
             else f"the bundle was built from {int(expected)}-d embeddings")
    raise EvaluationInputError(f"embedding file {source} is {shape}, {gives}")


def decision_metrics(
    decisions: Sequence[Decision],
    y_true: Sequence[str],
    *,
    catalogue: Sequence[str],
    sku_to_category: dict[str, str] | None = None,
    true_categories: Sequence[str | None] | None = None,
) -> dict:
    """The evaluation metrics of routed decisions.

    Items whose true SKU is not in ``catalogue`` are unknown products: they count
    against ``auto_precision`` and ``silent_error_rate`` when accepted, and they are
    the positives of ``ood_auroc``.

    Returns
    -------
    dict
        ``n_items, n_known, n_unknown, top1, coarse_top1, automation_rate,
        auto_precision, silent_error_rate, unknown_flag_rate, unknown_accept_rate,
        ood_auroc, ece, per_class_top1, per_class_top1_std_pp, per_class_top1_min, bands``.
    """
    y_true = np.asarray(y_true, dtype=str)
    if len(decisions) != y_true.size:
        raise ValueError(f"{len(decisions)} decisions for {y_true.size} labels")
    sku_to_category = sku_to_category or {}
    known = np.isin(y_true, list(catalogue))
    pred = np.array([d.sku for d in decisions], dtype=str)
    band = np.array([d.band for d in decisions], dtype=str)
    conf = np.array([d.confidence for d in decisions], dtype=np.float64)
    ood = np.array([d.ood_score for d in decisions], dtype=np.float64)
    correct = (pred == y_true) & known
    accepted = band == "accept"
    n, n_known, n_unknown = y_true.size, int(known.sum()), int((~known).sum())

    def share(mask: np.ndarray, of: np.ndarray) -> float | None:
        return float(mask[of].mean()) if of.any() else None

    per_class = {
        str(s): float(correct[known & (y_true == s)].mean()) for s in np.unique(y_true[known])
    }
    per_class_values = np.array(list(per_class.values()))
    coarse = None
    if true_categories is not None and n_known:
        true_cat = np.array([c or "" for c in true_categories], dtype=str)
        pred_cat = np.array([sku_to_category.get(p, "") for p in pred], dtype=str)
        has_cat = known & (true_cat != "")
        coarse = float((pred_cat[has_cat] == true_cat[has_cat]).mean()) if has_cat.any() else None
    return {
        "n_items": int(n),
        "n_known": n_known,
        "n_unknown": n_unknown,
        "top1": share(correct, known),
        "coarse_top1": coarse,
        "automation_rate": share(accepted, known),
        "auto_precision": float(correct[accepted].mean()) if accepted.any() else None,
        "silent_error_rate": float((accepted & ~correct).mean()) if n else None,
        "unknown_flag_rate": share(band == "unknown", ~known),
        "unknown_accept_rate": share(accepted, ~known),
        "ood_auroc": auroc(ood[known], ood[~known]) if n_known and n_unknown else None,
        "ece": float(expected_calibration_error(conf[known], correct[known])) if n_known else None,
        "per_class_top1": per_class,
        "per_class_top1_std_pp": float(per_class_values.std() * 100) if per_class_values.size else None,
        "per_class_top1_min": float(per_class_values.min()) if per_class_values.size else None,
        "bands": {b: int((band == b).sum()) for b in BANDS},
    }


def evaluate_bundle(bundle: Bundle, data, *, progress=None, batch_size: int = 32) -> dict:
    """Predict every image of ``data`` (manifest or folder) and score the decisions.

    ``images_per_second`` times the whole prediction stage, decoding included, with
    no embedding cache. ``n_seen_in_training`` counts images whose exact bytes the
    head was trained on (the numbers are then in-sample); ``n_used_for_calibration``
    those that only set temperature, thresholds and the OOD cut-off.
    """
    from skuscale.embed.pipeline import embed_paths

    ds = load_dataset(data)
    started = time.perf_counter()
    X = embed_paths(ds.paths, bundle.embedder(), batch_size=batch_size, progress=progress)
    decisions = bundle.model.decide(X)
    elapsed = time.perf_counter() - started
    cats = [item.category for item in ds.items]
    metrics = decision_metrics(
        decisions,
        ds.labels,
        catalogue=bundle.skus,
        sku_to_category=bundle.model.sku_to_category,
        true_categories=cats if any(c is not None for c in cats) else None,
    )
    metrics["images_per_second"] = len(ds) / elapsed if elapsed > 0 else None
    metrics["data"] = str(data)
    # Scoring images the bundle was fitted on measures memory, not recognition.
    roles = bundle.image_roles(p.read_bytes() for p in ds.paths)
    metrics["n_seen_in_training"] = int((roles == 2).sum())
    metrics["n_used_for_calibration"] = int((roles == 1).sum())
    return metrics


def evaluate_embeddings(bundle: Bundle, data, *, split: str | None = None) -> dict:
    """Score a bundle on an embedding file (:mod:`skuscale.data.embeddings`).

    ``split`` picks rows (default: the ``"test"`` rows when the file has any, else
    all rows). Simulated data is labelled as such in the result. Rows the bundle was
    fitted on (same embedding vector) are counted in ``n_seen_in_training`` and
    ``n_used_for_calibration``, as for images.
    """
    from skuscale.data.embeddings import EmbeddingDataset, load_embeddings

    ds = data if isinstance(data, EmbeddingDataset) else load_embeddings(data)
    check_embedding_dim(bundle, ds.X, ds.source)
    if split is None and ds.split is not None and (ds.split == "test").any():
        split = "test"
    if split is not None:
        if ds.split is None:
            raise EvaluationInputError(f"{ds.source} has no split column; cannot select split {split!r} "
                                       "(leave --split out to score every row)")
        present = sorted(set(ds.split.tolist()))
        if split not in present:
            raise EvaluationInputError(f"{ds.source} has no rows of split {split!r}; its splits: "
                                       f"{', '.join(present)}")
        ds = ds.select(ds.split == split)
    if len(ds) == 0:
        raise ValueError(f"no rows to evaluate in {ds.source} (split {split!r})")
    started = time.perf_counter()
    decisions = bundle.model.decide(ds.X)
    elapsed = time.perf_counter() - started
    metrics = decision_metrics(
        decisions,
        ds.sku,
        catalogue=bundle.skus,
        sku_to_category=bundle.model.sku_to_category,
        true_categories=list(ds.category) if ds.category is not None else None,
    )
    metrics["decisions_per_second"] = len(ds) / elapsed if elapsed > 0 else None
    roles = bundle.image_roles(embedding_rows(ds.X))
    metrics["n_seen_in_training"] = int((roles == 2).sum())
    metrics["n_used_for_calibration"] = int((roles == 1).sum())
    metrics["data"] = ds.source
    metrics["split"] = split
    metrics["simulated"] = ds.simulated
    return metrics
