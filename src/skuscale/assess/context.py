"""Everything the checks read: bundle, embeddings, held-out predictions, optional inputs.

:func:`load_context` builds it from files (embedding through the bundle's ONNX
backbone with the on-disk cache); tests build :class:`AssessmentContext` directly
from arrays. Expensive derived data (held-out predictions, the bundle footprint)
is computed once, on first use, and shared by the checks that need it.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from skuscale._base import softmax
from skuscale.head.calibration import TemperatureScaler
from skuscale.training import TrainingConfig, _aligned_logits, blocked_folds

if TYPE_CHECKING:
    from skuscale.assess.profiles import DeviceProfile
    from skuscale.bundle import Bundle
    from skuscale.model import RecognitionModel

Say = Callable[[str], None]


@dataclass
class HeldoutPredictions:
    """Predictions on images the scoring head did not train on, with calibrated confidence.

    Attributes
    ----------
    y_true, y_pred : ndarray of str (n,)
    confidence : ndarray of float (n,)
        Calibrated top-1 probability.
    source : str
        How they were obtained, for the report.
    """

    y_true: np.ndarray
    y_pred: np.ndarray
    confidence: np.ndarray
    source: str

    @property
    def correct(self) -> np.ndarray:
        return self.y_pred == self.y_true


@dataclass
class AssessmentContext:
    """Inputs of an assessment.

    Attributes
    ----------
    model : RecognitionModel or None
        The bundle's decision stack.
    train_X, train_y : ndarray, optional
        Training embeddings and SKU labels (SKUs outside the bundle's catalogue removed).
    train_counts : dict, optional
        Training images per SKU; defaults to the counts of ``train_y``.
    val_X, val_y : ndarray, optional
        Validation embeddings and labels.
    val_seen_in_training : bool
        Whether the bundle was trained or calibrated on (some of) the validation images.
    training_config : TrainingConfig
        The bundle's head settings, used when a check refits a head.
    ood_flag_rate : float
        Share of known items the OOD stage may flag (the bundle's target).
    catalogue_log : path, optional
    device_profile : DeviceProfile, optional
    bundle : Bundle, optional
        Needed by the memory check (ONNX file, class tables).
    unknown_object_loop : bool
        Whether unknown-object images are routed back into enrolment (the review queue).
    pre_join_embeddings : callable, optional
        Returns ``{"train": X, "val": X}``: the same images embedded by the bundle's
        backbone from before its sentinel SKUs joined fine-tuning (late-join bundles).
    seed : int
    notes : list of str
        Things the report should mention about its inputs.
    """

    model: RecognitionModel | None = None
    train_X: np.ndarray | None = None  # noqa: N815 - the X/y convention of the rest of the package
    train_y: np.ndarray | None = None
    train_counts: dict[str, int] | None = None
    val_X: np.ndarray | None = None  # noqa: N815
    val_y: np.ndarray | None = None
    val_seen_in_training: bool = False
    training_config: TrainingConfig = field(default_factory=TrainingConfig)
    ood_flag_rate: float = 0.05
    catalogue_log: Path | None = None
    device_profile: DeviceProfile | None = None
    bundle: Bundle | None = None
    unknown_object_loop: bool = False
    pre_join_embeddings: Callable[[], dict[str, np.ndarray]] | None = field(default=None, repr=False)
    seed: int = 0
    notes: list[str] = field(default_factory=list)
    say: Say = field(default=lambda _msg: None, repr=False)
    _heldout: HeldoutPredictions | None = field(default=None, repr=False)
    _cache: dict[str, Any] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if self.train_y is not None:
            self.train_y = np.asarray(self.train_y).astype(str)
            if self.train_counts is None:
                skus, counts = np.unique(self.train_y, return_counts=True)
                self.train_counts = {str(s): int(c) for s, c in zip(skus, counts, strict=True)}
        if self.val_y is not None:
            self.val_y = np.asarray(self.val_y).astype(str)

    @property
    def has_val(self) -> bool:
        return self.val_X is not None and self.val_y is not None and len(self.val_y) > 0

    def memo(self, key: str, compute: Callable[[], Any]) -> Any:
        """``compute()`` once per context; later calls return the stored value."""
        if key not in self._cache:
            self._cache[key] = compute()
        return self._cache[key]

    def heldout(self) -> HeldoutPredictions:
        """Held-out predictions (computed once); see :func:`heldout_predictions`."""
        if self._heldout is None:
            self._heldout = heldout_predictions(self)
        return self._heldout


def _crossfit_temperature(logits: np.ndarray, y_idx: np.ndarray, folds: np.ndarray) -> np.ndarray:
    """Calibrated probabilities where each fold's temperature is fitted on the other folds only."""
    probs = np.empty_like(logits, dtype=np.float64)
    for f in np.unique(folds):
        test = folds == f
        t = TemperatureScaler().fit(logits[~test], y_idx[~test]).temperature_ if (~test).any() else 1.0
        probs[test] = softmax(logits[test] / t)
    return probs


def heldout_predictions(ctx: AssessmentContext, *, n_folds: int = 5) -> HeldoutPredictions:
    """Predictions on images the scoring head never saw, calibrated without them.

    * Validation images the bundle was not built on: the bundle's own model.
    * Validation images the bundle was built on: a head with the bundle's settings
      is refitted on the training images only and predicts them; the temperature
      is cross-fitted over two contiguous folds of the validation images. Photos
      from other shooting sessions stay the honest test (cross-validation over the
      training photos is far more optimistic on session-structured data).
    * No validation images: ``n_folds`` contiguous-block cross-validation over the
      training images, temperature cross-fitted over the same folds.
    """
    if ctx.model is None or ctx.train_X is None or ctx.train_y is None:
        raise ValueError("held-out predictions need the bundle's model and training embeddings")
    model = ctx.model
    catalogue = np.asarray(model.head.classes_).astype(str)
    cfg = ctx.training_config
    rng = np.random.default_rng(ctx.seed)
    if ctx.has_val and not ctx.val_seen_in_training:
        ctx.say("predicting the validation images with the bundle's model")
        probs = model.predict_proba(ctx.val_X)
        source = "validation images, predicted by the bundle's model (not fitted on them)"
        y_true = ctx.val_y
        left_out = 0
    elif ctx.has_val:
        ctx.say("refitting the head on the training images to predict the validation images")
        head = cfg.make_head().fit(ctx.train_X, ctx.train_y, init=model.head)
        # A validation SKU without training images is unknown to the refitted head: not a held-out known image.
        keep = np.isin(ctx.val_y, head.classes_)
        left_out = int((~keep).sum())
        logits = _aligned_logits(head, ctx.val_X[keep], catalogue)
        y_true = ctx.val_y[keep]
        folds = blocked_folds(y_true, 2, rng)
        probs = _crossfit_temperature(logits, np.searchsorted(catalogue, y_true), folds)
        source = (
            "validation images, predicted by a head refitted on the training images only (the bundle was trained "
            "or calibrated on the validation images, so its own predictions would be in-sample); temperature "
            "cross-fitted over 2 folds of the validation images"
        )
    else:
        ctx.say(f"cross-validating the head over {n_folds} folds of the training images")
        y_true = ctx.train_y
        folds = blocked_folds(y_true, n_folds, rng)
        logits = np.zeros((y_true.size, catalogue.size), dtype=np.float32)
        keep = np.zeros(y_true.size, bool)
        for f in range(n_folds):
            test = folds == f
            if test.any():
                head = cfg.make_head().fit(ctx.train_X[~test], y_true[~test], init=model.head)
                logits[test] = _aligned_logits(head, ctx.train_X[test], catalogue)
                # A SKU whose every image is in this fold is unknown to its head (as in the build's fit).
                keep[test] = np.isin(y_true[test], head.classes_)
        left_out = int((~keep).sum())
        logits, y_true, folds = logits[keep], y_true[keep], folds[keep]
        probs = _crossfit_temperature(logits, np.searchsorted(catalogue, y_true), folds)
        source = (
            f"{n_folds}-fold cross-validation over the training images (contiguous blocks per SKU, temperature "
            "cross-fitted); optimistic when a SKU's photos come from one shooting session: pass --val for "
            "photos from other sessions"
        )
    if left_out:
        source += (f"; {left_out} image(s) of SKUs with no image left to train the scoring head on were left out "
                   "(a head cannot recognise a SKU it has not seen)")
    if y_true.size == 0:
        raise ValueError("no held-out image belongs to a SKU that the other images train a head on")
    return HeldoutPredictions(
        y_true=np.asarray(y_true).astype(str),
        y_pred=catalogue[probs.argmax(axis=1)],
        confidence=np.minimum(probs.max(axis=1), 1.0),
        source=source,
    )


def _image_roles(bundle: Bundle, blobs: list[bytes]) -> np.ndarray:
    """2 = the bundle's head trained on the image, 1 = it only calibrated the bundle, 0 = unseen."""
    if hasattr(bundle, "image_roles"):
        return np.asarray(bundle.image_roles(blobs))
    return bundle.seen_in_training(blobs).astype(np.int8) * 2


def training_config_of(bundle: Bundle) -> TrainingConfig:
    """The :class:`TrainingConfig` recorded in a bundle (defaults for anything missing)."""
    recorded = bundle.metadata.get("training", {}).get("config", {}) or {}
    known = set(TrainingConfig.__dataclass_fields__)
    kwargs = {k: (tuple(v) if isinstance(v, list) else v) for k, v in recorded.items() if k in known}
    return TrainingConfig(**kwargs)


def load_context(
    bundle_dir: str | os.PathLike,
    train: str | os.PathLike,
    *,
    val: str | os.PathLike | None = None,
    device: DeviceProfile | None = None,
    catalogue_log: str | os.PathLike | None = None,
    unknown_object_loop: bool = False,
    cache_dir: str | os.PathLike | None = None,
    seed: int = 0,
    say: Say | None = None,
    embed_progress: Callable[[int, str], Callable[[int], None]] | None = None,
) -> AssessmentContext:
    """Load the bundle and manifests and embed the images (cached) into a context.

    Parameters
    ----------
    bundle_dir : path
    train, val : path
        Manifests or image folders (validated; images already in the embedding
        cache are not decoded again).
    device : DeviceProfile, optional
    catalogue_log : path, optional
        Checked for existence here; parsed by the catalogue-change check.
    embed_progress : callable, optional
        ``embed_progress(total, label)`` returns a callback advanced by the number
        of images embedded.

    Raises
    ------
    skuscale.exceptions.SkuscaleError
        For a refused bundle or invalid manifests (nothing can be assessed).
    """
    from skuscale.build import default_cache_dir
    from skuscale.bundle import Bundle
    from skuscale.data import load_dataset, validate_dataset
    from skuscale.embed.cache import EmbeddingCache, content_key
    from skuscale.exceptions import SkuscaleError

    say = say or (lambda _msg: None)
    say(f"loading bundle {bundle_dir}")
    bundle = Bundle.load(bundle_dir)
    if catalogue_log is not None and not Path(catalogue_log).is_file():
        raise SkuscaleError(f"catalogue log {catalogue_log} does not exist")
    embedder = bundle.embedder()
    cache = EmbeddingCache(cache_dir or default_cache_dir())
    prep_id = embedder.preprocessing.fingerprint()

    def needs_decoding(path: Path) -> bool:
        try:
            return not cache.contains(content_key(path.read_bytes(), embedder.identity, prep_id))
        except OSError:
            return True

    catalogue = set(bundle.skus)
    notes: list[str] = []
    parts = {}
    part_paths = {}
    for label, source in (("train", train), ("val", val)):
        if source is None:
            continue
        say(f"validating {label} data {source}")
        ds = load_dataset(source, validate=False)
        validate_dataset(ds, check_images=needs_decoding)
        outside = sorted(set(ds.skus) - catalogue)
        if outside:
            notes.append(f"{label}: {len(outside)} SKU(s) not in the bundle's catalogue were left out: "
                         + ", ".join(outside[:10]) + (" ..." if len(outside) > 10 else ""))
            ds = ds.subset(np.flatnonzero(np.isin(ds.labels, sorted(catalogue))))
        if len(ds) == 0:
            raise SkuscaleError(f"{source}: no images of SKUs in the bundle's catalogue")
        advance = embed_progress(len(ds), label) if embed_progress else None
        X = bundle.embed_paths(ds.paths, cache=cache, progress=advance)
        roles = None
        if label == "val":
            blobs = [p.read_bytes() for p in ds.paths]
            roles = _image_roles(bundle, blobs)
            val_sha256 = [hashlib.sha256(b).digest() for b in blobs]
            del blobs
        parts[label] = (X, ds.labels.astype(str), roles)
        part_paths[label] = ds.paths
    if "val" in parts:
        # An image in both manifests would be scored by a head trained on it and reported as held out.
        from skuscale.data.images import hash_image_file

        in_train = {hash_image_file(p) for p in part_paths["train"]}
        shared = np.array([digest in in_train for digest in val_sha256], dtype=bool)
        if shared.all():
            raise SkuscaleError(f"every image of {val} is also in {train}: nothing would be held out")
        if shared.any():
            notes.append(f"{int(shared.sum())} of the {shared.size} validation images are also training images; "
                         "they were left out of the validation images")
            X, y, roles = parts["val"]
            parts["val"] = (X[~shared], y[~shared], roles[~shared])
            part_paths["val"] = [p for p, s in zip(part_paths["val"], shared, strict=True) if not s]
    train_X, train_y, _ = parts["train"]
    val_X = val_y = None
    val_seen = False
    if "val" in parts:
        val_X, val_y, roles = parts["val"]
        # Trained on (2) or only calibrated on (1): either way its own predictions there are in-sample.
        val_seen = bool((roles > 0).any())
        if (roles == 2).any():
            notes.append(f"the bundle's head was trained on {int((roles == 2).sum())} of the {roles.size} "
                         "validation images")
        if (roles == 1).any():
            notes.append(f"the bundle was calibrated (temperature, thresholds) on {int((roles == 1).sum())} of the "
                         f"{roles.size} validation images")
        n_val_skus = len(set(val_y))
        if n_val_skus < len(catalogue):
            notes.append(f"the validation images cover {n_val_skus} of the {len(catalogue)} catalogue SKUs: per-SKU "
                         "accuracy, calibration and the tail view see only those")
    train_skus = set(train_y)
    missing = sorted(catalogue - train_skus)
    if missing:
        notes.append(f"{len(missing)} catalogue SKU(s) have no training images in {train}: "
                     + ", ".join(missing[:10]))
    flag_rate = bundle.metadata.get("targets", {}).get("ood_flag_rate", 0.05)

    def pre_join_embeddings() -> dict[str, np.ndarray]:
        from skuscale.embed.pipeline import embed_paths

        # Opened only when check 5 asks: most assessments never need this second backbone.
        pre_join = bundle.pre_join_embedder()
        out = {}
        for label, paths in part_paths.items():
            say(f"embedding the {label} images with the backbone from before the late join")
            advance = embed_progress(len(paths), f"{label} (before the late join)") if embed_progress else None
            out[label] = embed_paths(paths, pre_join, cache=cache, progress=advance)
        return out

    return AssessmentContext(
        model=bundle.model, train_X=train_X, train_y=train_y, val_X=val_X, val_y=val_y,
        val_seen_in_training=val_seen, training_config=training_config_of(bundle), ood_flag_rate=float(flag_rate),
        catalogue_log=Path(catalogue_log) if catalogue_log is not None else None, device_profile=device,
        bundle=bundle, unknown_object_loop=unknown_object_loop or bool(bundle.metadata.get("unknown_object_loop")),
        seed=seed, notes=notes, say=say,
        pre_join_embeddings=pre_join_embeddings if bundle.backbone.get("pre_join_onnx") else None,
    )


def load_context_from_embeddings(
    bundle_dir: str | os.PathLike,
    embeddings: str | os.PathLike,
    *,
    device: DeviceProfile | None = None,
    catalogue_log: str | os.PathLike | None = None,
    unknown_object_loop: bool = False,
    seed: int = 0,
    say: Say | None = None,
) -> AssessmentContext:
    """A context from an embedding file (``train`` and ``val`` rows), e.g. a simulated catalogue.

    Simulated data is named as such in the report's notes.
    """
    from skuscale.bundle import Bundle
    from skuscale.data.embeddings import load_embeddings
    from skuscale.exceptions import SkuscaleError

    say = say or (lambda _msg: None)
    say(f"loading bundle {bundle_dir}")
    bundle = Bundle.load(bundle_dir)
    if catalogue_log is not None and not Path(catalogue_log).is_file():
        raise SkuscaleError(f"catalogue log {catalogue_log} does not exist")
    say(f"reading embeddings {embeddings}")
    data = load_embeddings(embeddings)
    if data.X.shape[1] != bundle.model.head.n_features_in_:
        raise SkuscaleError(
            f"{embeddings} holds {data.X.shape[1]}-d embeddings; the bundle expects {bundle.model.head.n_features_in_}"
        )
    catalogue = sorted(bundle.skus)
    data = data.select(np.isin(data.sku, catalogue))
    train, val = data.part("train"), data.part("val")
    if len(train) == 0:
        raise SkuscaleError(f"{embeddings}: no training rows of SKUs in the bundle's catalogue")
    notes = []
    if data.simulated:
        notes.append("SIMULATED data: this report describes a simulated catalogue, not real photos")
    if data.split is not None and len(val):
        notes.append("validation rows of the embedding file were used as held-out predictions")
    flag_rate = bundle.metadata.get("targets", {}).get("ood_flag_rate", 0.05)
    return AssessmentContext(
        model=bundle.model, train_X=train.X, train_y=train.sku,
        val_X=val.X if len(val) else None, val_y=val.sku if len(val) else None,
        # An embedding bundle's validation rows calibrated it when present.
        val_seen_in_training=bool(len(val)) and bundle.metadata.get("training", {}).get("embeddings") is not None,
        training_config=training_config_of(bundle), ood_flag_rate=float(flag_rate),
        catalogue_log=Path(catalogue_log) if catalogue_log is not None else None, device_profile=device,
        bundle=bundle, unknown_object_loop=unknown_object_loop or bool(bundle.metadata.get("unknown_object_loop")),
        seed=seed, notes=notes, say=say,
    )
