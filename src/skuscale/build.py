"""``skuscale build``: images in, a verified, calibrated, routed bundle out."""

from __future__ import annotations

import copy
import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from skuscale.bundle import BACKBONE_FILE, FORMAT, MANIFEST, Bundle, embedding_rows, image_digests
from skuscale.data import Dataset, Item, load_dataset, validate_dataset
from skuscale.data.preprocess import Preprocessing
from skuscale.embed.cache import EmbeddingCache, content_key
from skuscale.embed.finetune_config import DEFAULT_FINETUNE_EPOCHS, FinetuneConfig
from skuscale.exceptions import ManifestError, SkuscaleError
from skuscale.training import TrainingConfig, fit_recognition_model

EXPORT_CHECK_IMAGES = 8
#: Without --val, a fine-tuned build holds this share of each SKU's training photos
#: (the last ones in manifest order, so whole shooting sessions) out for calibration.
CARVED_CALIBRATION_FRACTION = 0.1
#: Share of the catalogue kept out of fine-tuning as sentinel SKUs when not given.
DEFAULT_SENTINEL_FRACTION = 0.1
#: SKUs with fewer training photos give none to the carved calibration set.
CARVE_MIN_IMAGES = 5
#: Learning rate of the late join (``late_join_epochs``), as a share of fine-tuning's.
#: Off by default: measured in docs/accuracy.md, it recovers the top-1 that keeping the
#: sentinels out costs, but its most confident errors get more confident.
LATE_JOIN_LR_FACTOR = 0.5
#: The backbone before the late join, kept in the bundle for the OOD check of ``skuscale assess``.
PRE_JOIN_BACKBONE_FILE = "backbone_pre_join.onnx"


def default_cache_dir() -> Path:
    """``$SKUSCALE_CACHE``, else ``$XDG_CACHE_HOME/skuscale/embeddings``, else ``~/.cache/skuscale/embeddings``."""
    if env := os.environ.get("SKUSCALE_CACHE"):
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "skuscale" / "embeddings"


def finetuned_weights_path(cache_dir: str | os.PathLike | None, key: str) -> Path:
    """Where a build caches fine-tuned backbone weights (``key`` from ``bundle.json``'s ``finetune.key``)."""
    return Path(cache_dir or default_cache_dir()) / "finetuned" / f"{key}.pt"


class BuildProgress:
    """Progress hooks; the default does nothing. The CLI passes a rich-backed one."""

    def step(self, message: str) -> None:
        """A new stage starts."""

    def embed_start(self, total: int, label: str) -> None:
        """Embedding ``total`` images begins."""

    def embed_advance(self, n: int) -> None:
        """``n`` more images are embedded."""

    def embed_end(self) -> None:
        """Embedding finished."""

    def train_start(self, total_steps: int, label: str) -> None:
        """Fine-tuning of ``total_steps`` optimiser steps begins."""

    def train_advance(self, step: int, loss: float) -> None:
        """Optimiser step ``step`` is done; ``loss`` is the epoch's running mean."""

    def train_end(self) -> None:
        """Fine-tuning finished."""


@dataclass
class BuildResult:
    bundle: Bundle
    seconds: float
    cache_hits: int
    cache_misses: int


def _read_checked(
    inputs: Sequence[tuple[str, str | os.PathLike]], is_known_good: Callable[[Path], bool],
    exclude_skus: Sequence[str] = (),
) -> dict[str, Dataset]:
    """Read and validate every input, and check them against each other; one error lists every problem.

    Images are fully decoded only when the cache has not seen them: an image whose
    exact bytes already have a cached embedding decoded fine before, so a warm
    rebuild does not decode every file just to validate it.
    """
    read: dict[str, Dataset] = {}
    failed: list[tuple[str, ManifestError]] = []
    for flag, path in inputs:
        try:
            read[flag] = load_dataset(path, validate=False)
            validate_dataset(read[flag], check_images=lambda p: not is_known_good(p))
        except ManifestError as exc:
            failed.append((flag, exc))
    across = _cross_manifest_problems(list(read.items()), exclude_skus=exclude_skus)
    if len(failed) == 1 and not across:
        raise failed[0][1]
    if failed or across:
        # Fixing the train manifest should not reveal a new list of val problems.
        problems = [f"{flag} {exc.source}: {p}" for flag, exc in failed for p in exc.problems] + across
        raise ManifestError(" and ".join(f"{flag} {path}" for flag, path in inputs), problems)
    return read


def _where(item: Item, ds: Dataset) -> str:
    """``tr.csv line 4``, or the image path for an image folder."""
    line = getattr(item, "_line", None)
    return f"{ds.source} line {line}" if line is not None else str(item.path)


def _cross_manifest_problems(datasets: list[tuple[str, Dataset]], *, exclude_skus: Sequence[str] = ()) -> list[str]:
    """Images listed by two inputs, SKUs whose category differs, --val SKUs without training photos.

    Each manifest is checked on its own by :func:`validate_dataset`; these problems
    only show across them. An image in both --train and --val would make the held-out
    calibration in-sample; a SKU can have only one category in the bundle; the head
    could never predict a --val SKU it has no training photos of, so every such photo
    would count as an error of some other SKU.
    """
    problems: list[str] = []
    by_flag = dict(datasets)
    if "--train" in by_flag and "--val" in by_flag:
        extra = sorted(set(by_flag["--val"].skus) - set(by_flag["--train"].skus) - set(exclude_skus))
        if extra:
            problems.append(f"--val {by_flag['--val'].source}: {len(extra)} SKU(s) with no training photos: "
                            + ", ".join(extra[:10]) + (" ..." if len(extra) > 10 else "")
                            + "; add their photos to --train or drop them from --val")
    first: dict[Path, tuple[str, Item, Dataset]] = {}
    for flag, ds in datasets:
        for item in ds.items:
            earlier = first.get(item.path)
            if earlier is None:
                first[item.path] = (flag, item, ds)
            elif earlier[0] != flag:
                problems.append(f"{flag} {_where(item, ds)}: image {item.path} is also in {earlier[0]} "
                                f"({_where(earlier[1], earlier[2])}); an image may be in only one of them")
    categories: dict[str, dict[str, str]] = {}
    for flag, ds in datasets:
        for sku, category in ds.categories().items():
            categories.setdefault(sku, {}).setdefault(category, f"{flag} {ds.source}")
    for sku, by_category in sorted(categories.items()):
        if len(by_category) > 1:
            described = "; ".join(f"{category!r} in {where}" for category, where in by_category.items())
            problems.append(f"SKU {sku!r} has different categories: {described}")
    return problems


def _collect(
    train: str | os.PathLike,
    val: str | os.PathLike | None,
    reference: str | os.PathLike | None,
    exclude_skus: Sequence[str],
    is_known_good: Callable[[Path], bool],
) -> tuple[Dataset, Dataset | None, Dataset | None]:
    inputs = [("--train", train)] + [(flag, path) for flag, path in (("--val", val), ("--reference", reference))
                                      if path]
    loaded = _read_checked(inputs, is_known_good, exclude_skus)
    train_ds, val_ds, ref_ds = loaded["--train"], loaded.get("--val"), loaded.get("--reference")
    if exclude_skus:
        unknown = sorted(set(exclude_skus) - set(train_ds.skus))
        if unknown:
            raise SkuscaleError(f"--exclude-sku names SKUs that are not in the training data: {', '.join(unknown)}")
        train_ds = train_ds.exclude_skus(exclude_skus)
        val_ds = val_ds.exclude_skus(exclude_skus) if val_ds else None
        ref_ds = ref_ds.exclude_skus(exclude_skus) if ref_ds else None
    if ref_ds is not None:
        # Reference shots of SKUs absent from training would create classes without store images.
        keep = np.isin(ref_ds.labels, train_ds.skus)
        ref_ds = ref_ds.subset(np.flatnonzero(keep)) if keep.any() else None
    if len(train_ds.skus) < 2:
        raise SkuscaleError("training data needs at least two SKUs")
    return train_ds, val_ds, ref_ds


def carve_calibration(ds: Dataset, fraction: float = CARVED_CALIBRATION_FRACTION,
                      min_images: int = CARVE_MIN_IMAGES) -> tuple[Dataset, Dataset | None]:
    """Split off the last ``fraction`` of each SKU's photos (manifest order) for calibration.

    Returns ``(rest, carved)``; ``carved`` is None when no SKU has ``min_images``.
    """
    carved = np.zeros(len(ds), bool)
    for sku in ds.skus:
        rows = np.flatnonzero(ds.labels == sku)
        if rows.size >= min_images:
            carved[rows[-max(1, round(rows.size * fraction)):]] = True
    if not carved.any():
        return ds, None
    return ds.subset(np.flatnonzero(~carved)), ds.subset(np.flatnonzero(carved))


def choose_sentinels(train_ds: Dataset, calibration_ds: Dataset | None, n: int, *, seed: int) -> list[str]:
    """``n`` SKUs with training and calibration photos, drawn at random (reproducible under ``seed``).

    Raises :class:`SkuscaleError` when fewer than ``n`` such SKUs exist, or when
    fewer than two SKUs would be left to fine-tune on.
    """
    if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 0:
        raise SkuscaleError(f"--ood-sentinels must be a non-negative integer, got {n!r}")
    skus, candidates = train_ds.skus, _sentinel_candidates(train_ds, calibration_ds)
    if n > len(candidates):
        raise SkuscaleError(f"--ood-sentinels {n}: only {len(candidates)} SKUs have both training and calibration "
                            "photos (sentinels need calibration photos to measure the OOD stage on)")
    if len(skus) - n < 2:
        raise SkuscaleError(f"--ood-sentinels {n} leaves fewer than two of the {len(skus)} SKUs to fine-tune on")
    rng = np.random.default_rng(seed)
    return sorted(candidates[i] for i in rng.choice(len(candidates), size=n, replace=False))


def default_sentinel_count(train_ds: Dataset, calibration_ds: Dataset | None) -> int:
    """:data:`DEFAULT_SENTINEL_FRACTION` of the catalogue, within what :func:`choose_sentinels` accepts."""
    n_skus = len(train_ds.skus)
    wanted = max(1, round(DEFAULT_SENTINEL_FRACTION * n_skus))
    return max(0, min(wanted, len(_sentinel_candidates(train_ds, calibration_ds)), n_skus - 2))


def _sentinel_candidates(train_ds: Dataset, calibration_ds: Dataset | None) -> list[str]:
    """SKUs with training and calibration photos, sorted."""
    return sorted(set(train_ds.skus) & set(calibration_ds.skus)) if calibration_ds is not None else []


def _without(ds: Dataset, skus: Sequence[str]) -> Dataset | None:
    keep = np.flatnonzero(~np.isin(ds.labels, list(skus)))
    return ds.subset(keep) if keep.size else None


def _finetune(net, backbone: str, embedder, train_ds: Dataset, ref_ds: Dataset | None, *, ft: FinetuneConfig,
              cache: EmbeddingCache, cache_root: Path, batch_size: int, hooks: BuildProgress, head_config):
    """Fine-tune ``net`` on train (+ reference) photos, or load the identical earlier run."""
    from skuscale.data.images import load_image
    from skuscale.embed.backbone import TorchEmbedder
    from skuscale.embed.finetune import finetune_backbone, finetune_key, save_state, state_digest
    from skuscale.embed.pipeline import embed_paths

    parts = [train_ds] + ([ref_ds] if ref_ds is not None and ft.reference_weight > 0 else [])
    paths = [p for ds in parts for p in ds.paths]
    labels = np.concatenate([ds.labels for ds in parts]).astype(str)
    weights = np.concatenate([np.ones(len(train_ds))] + [np.full(len(ds), ft.reference_weight) for ds in parts[1:]])
    digests = [hashlib.sha256(Path(p).read_bytes()).hexdigest() for p in paths]
    key = finetune_key(embedder.identity, ft, digests, labels.tolist(), weights.tolist(),
                       probe={"C": head_config.head_C, "long_tail": head_config.long_tail, "tau": head_config.tau})
    stored = finetuned_weights_path(cache_root, key)
    report = None
    if stored.is_file():
        import torch

        hooks.step(f"fine-tuned weights found in the cache ({stored.name[:12]}…)")
        net.load_state_dict(torch.load(stored, map_location="cpu", weights_only=True))
    else:
        hooks.step("linear probe on the backbone's current features (starts the fine-tuning classifier)")
        hooks.embed_start(len(paths), "current features")
        X0 = embed_paths(paths, embedder, cache=cache, batch_size=batch_size, progress=hooks.embed_advance)
        hooks.embed_end()
        probe = head_config.make_head().fit(X0, labels)
        device = ft.resolved_device()
        hooks.step(f"fine-tuning {backbone} for {ft.epochs} epochs on {device} ({len(paths)} images)")
        images = [load_image(p) for p in paths]
        hooks.train_start(ft.steps_per_epoch(len(paths)) * ft.epochs, "fine-tuning")
        try:
            net, rep = finetune_backbone(
                net, images, labels, config=ft, init_weight=probe.coef_, init_bias=probe.intercept_,
                classes=probe.classes_, sample_weight=weights,
                progress=lambda step, _total, loss: hooks.train_advance(step, loss),
            )
        finally:
            hooks.train_end()
        report = rep.to_dict()
        stored.parent.mkdir(parents=True, exist_ok=True)
        save_state(net, stored)
    identity = f"{backbone}-ft-{state_digest(net)[:16]}"
    return net, TorchEmbedder(net, preprocessing=embedder.preprocessing, identity=identity), {
        "config": ft.to_dict(), "key": key, "report": report, "from_cache": report is None, "identity": identity,
    }


def _fit_and_package(
    X: np.ndarray,
    y: np.ndarray,
    origin: np.ndarray,
    sku_to_category: dict[str, str],
    *,
    cfg: TrainingConfig,
    hooks: BuildProgress,
    training: dict,
    ood_skus: Sequence[str] | None = None,
    X_ood: np.ndarray | None = None,
) -> tuple:
    """Fit the decision stack on embeddings; shared by image and embedding-file builds."""
    has_val = bool((origin == "val").any())
    try:
        model, report = fit_recognition_model(
            X,
            y,
            sku_to_category=sku_to_category,
            calibration_rows=(origin == "val") if has_val else (origin == "train"),
            holdout=has_val,
            config=cfg,
            step=hooks.step,
            ood_skus=ood_skus,
            X_ood=X_ood,
        )
    except ValueError as exc:  # the data cannot support the fit (e.g. no SKU has calibration and training rows)
        raise SkuscaleError(f"cannot fit the decision stack on this data: {exc}") from exc
    if report.detectors_skipped:
        hooks.step("OOD detectors left out: " + "; ".join(f"{k} ({v})" for k, v in report.detectors_skipped.items()))
    counts = {s: int(c) for s, c in zip(*np.unique(y[origin == "train"], return_counts=True), strict=True)}
    metadata = {
        "targets": {"auto_precision": cfg.target_precision, "ood_flag_rate": cfg.ood_flag_rate},
        "training": {
            **training,
            "train_counts": counts,
            "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(cfg).items()},
        },
        "build": report.to_dict(),
    }
    return model, metadata


def _is_bundle(folder: Path) -> bool:
    """Whether ``folder`` holds a ``bundle.json`` that a skuscale bundle wrote."""
    try:
        return json.loads((folder / MANIFEST).read_text(encoding="utf-8")).get("format") == FORMAT
    except (OSError, UnicodeDecodeError, ValueError, AttributeError):
        return False


def check_out_folder(out: str | os.PathLike, what: str = "--out") -> Path:
    """The bundle folder ``out``, refused unless it may be replaced.

    A bundle folder may be written where nothing is, into an empty folder, or over
    an earlier skuscale bundle (a folder with its ``bundle.json``). Anything else (a
    file, a symbolic link, a folder with other contents, a path through a file, or
    a path without a folder name such as ``.``) raises :class:`SkuscaleError`, so
    nothing of the user's is ever deleted.
    """
    out = Path(out)
    if out.name in ("", ".", ".."):
        raise SkuscaleError(f"{what} {str(out)!r} does not name a folder; give a new folder's name, e.g. {what} "
                            "bundles/v1")
    if out.is_symlink():
        raise SkuscaleError(f"{what} {out} is a symbolic link; give the folder itself or a new path")
    if out.exists():
        if not out.is_dir():
            raise SkuscaleError(f"{what} {out} is a file, not a folder; give a new path or remove it")
        if not _is_bundle(out):
            try:
                empty = next(out.iterdir(), None) is None
            except OSError as exc:
                raise SkuscaleError(f"{what} {out}: cannot read it: {exc.strerror or exc}") from None
            if not empty:
                raise SkuscaleError(f"{what} {out} is a folder that is neither empty nor a skuscale bundle (no "
                                    f"{MANIFEST}); refusing to replace it: give a new path or remove it")
    for parent in out.parents:
        if parent.exists():
            if not parent.is_dir():
                raise SkuscaleError(f"{what} {out}: {parent} is a file, not a folder")
            break
    return out


def replace_folder(staging: Path, out: Path, what: str = "--out") -> None:
    """Move the finished ``staging`` folder to ``out``, replacing what :func:`check_out_folder` allows.

    ``out`` is checked again (it may have changed during the build), and an earlier
    bundle there is moved aside and only deleted once ``staging`` has taken its place.
    """
    check_out_folder(out, what)
    if not out.exists():
        os.replace(staging, out)
        return
    aside = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=out.parent))
    try:
        os.replace(out, aside / out.name)
    except BaseException:
        aside.rmdir()
        raise
    try:
        os.replace(staging, out)
    except BaseException:
        # Put the earlier bundle back; should even that fail, it stays in ``aside``.
        os.replace(aside / out.name, out)
        aside.rmdir()
        raise
    shutil.rmtree(aside, ignore_errors=True)


def staging_folder_for(out: Path) -> Path:
    """A new, uniquely named folder beside ``out`` (never a folder of the user's)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))


def _publish(bundle: Bundle, staging: Path, out: Path, hooks: BuildProgress, started: float) -> None:
    hooks.step("writing the bundle")
    bundle.metadata["build"]["seconds"] = round(time.perf_counter() - started, 3)
    bundle.save(staging)
    replace_folder(staging, out)
    bundle.root = out


def build_bundle_from_embeddings(
    embeddings: str | os.PathLike,
    out: str | os.PathLike,
    *,
    exclude_skus: Sequence[str] = (),
    config: TrainingConfig | None = None,
    progress: BuildProgress | None = None,
) -> BuildResult:
    """Fit a bundle on an embedding file (see :mod:`skuscale.data.embeddings`).

    Rows with ``split == "train"`` train the head; ``"val"`` rows, when present,
    are the held-out calibration set (as ``--val`` for images); ``"test"`` rows are
    ignored. The bundle has no image backbone: it evaluates embeddings only.
    """
    from skuscale.data.embeddings import load_embeddings

    started = time.perf_counter()
    out = check_out_folder(out)
    hooks = progress or BuildProgress()
    cfg = config or TrainingConfig()
    hooks.step(f"reading embeddings {embeddings}")
    data = load_embeddings(embeddings)
    keep = np.ones(len(data), bool) if data.split is None else np.isin(data.split, ["train", "val"])
    if exclude_skus:
        unknown = sorted(set(exclude_skus) - set(data.sku[keep].tolist()))
        if unknown:
            raise SkuscaleError(f"--exclude-sku names SKUs that are not in the training data: {', '.join(unknown)}")
        keep &= ~np.isin(data.sku, list(exclude_skus))
    data = data.select(keep)
    origin = np.full(len(data), "train") if data.split is None else data.split
    if np.unique(data.sku[origin == "train"]).size < 2:
        raise SkuscaleError("training data needs at least two SKUs")
    extra = sorted(set(data.sku[origin == "val"].tolist()) - set(data.sku[origin == "train"].tolist()))
    if extra:
        raise SkuscaleError(f"{embeddings}: {len(extra)} SKU(s) have val rows but no train rows: "
                            + ", ".join(extra[:10]) + (" ..." if len(extra) > 10 else ""))
    model, metadata = _fit_and_package(
        data.X, data.sku, origin, data.categories(), cfg=cfg, hooks=hooks,
        training={
            "embeddings": str(Path(embeddings).resolve()),
            "simulated": data.simulated,
            "embedding_meta": data.meta,
            "excluded_skus": sorted(exclude_skus),
            "n_images": {label: int((origin == label).sum()) for label in ("train", "val") if (origin == label).any()},
        },
    )
    staging = staging_folder_for(out)
    try:
        # Digests of the embedding rows, so `skuscale evaluate --embeddings` can tell in-sample rows.
        bundle = Bundle(
            model=model,
            preprocessing=Preprocessing(),
            backbone={"name": None, "onnx": None, "dim": int(data.X.shape[1])},
            metadata=metadata,
            training_digests=image_digests(embedding_rows(data.X)),
            digest_trained=(origin != "val") | cfg.final_on_calibration,
        )
        _publish(bundle, staging, out, hooks, started)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return BuildResult(bundle=bundle, seconds=time.perf_counter() - started, cache_hits=0, cache_misses=0)


def build_bundle(
    train: str | os.PathLike,
    out: str | os.PathLike,
    *,
    val: str | os.PathLike | None = None,
    reference: str | os.PathLike | None = None,
    exclude_skus: Sequence[str] = (),
    backbone: str = "efficientnet-lite0",
    cache_dir: str | os.PathLike | None = None,
    config: TrainingConfig | None = None,
    batch_size: int = 32,
    threads: int | None = None,
    progress: BuildProgress | None = None,
    device: str | os.PathLike | None = None,
    finetune: FinetuneConfig | None = None,
    ood_sentinels: int | None = None,
    late_join_epochs: int = 0,
) -> BuildResult:
    """Validate data, embed it (cached), export and verify ONNX, fit and save a bundle.

    Parameters
    ----------
    train, val, reference : path
        Manifests (CSV ``path,sku,category``) or image folders (``DIR/<sku>/*.jpg``).
        With a validation set, its cross-fitted predictions set temperature,
        thresholds and the OOD cut-off (see :mod:`skuscale.training`), and it joins
        the final head; without one, training photos are cross-fitted instead.
        Reference pack shots are always on the training side.
    out : path
        Bundle folder; replaced atomically on success.
    exclude_skus : sequence of str
        SKUs dropped from every input, to serve as unknown products in evaluation.
    backbone : str
        One of :data:`skuscale.embed.backbone.BACKBONES`.
    cache_dir : path, optional
        Embedding cache (default :func:`default_cache_dir`).
    config : TrainingConfig, optional
    device : str or path, optional
        Device profile (name or YAML): backbone variant, INT8 and class-table setting are
        chosen before embedding so the footprint leaves 20% headroom on its lowest tier
        (:mod:`skuscale.edge.sizing`); raises :class:`SkuscaleError` with the arithmetic
        when nothing fits.
    finetune : FinetuneConfig, optional
        Backbone fine-tuning on the train (+ reference) photos before embedding
        (default: :data:`~skuscale.embed.finetune_config.DEFAULT_FINETUNE_EPOCHS`
        epochs with the measured settings; ``FinetuneConfig(epochs=0)`` keeps the
        ImageNet features). The validation photos never train the backbone, so their
        predictions stay honest for calibration; without ``val``, the last 10% of each
        SKU's training photos are held out of fine-tuning for that purpose. The
        fine-tuned weights are cached under ``cache_dir/finetuned`` by a key over the
        base weights, the settings and the exact training images.
    ood_sentinels : int, optional
        With fine-tuning: this many SKUs with calibration photos (drawn with the
        config's seed) are kept out of fine-tuning, and only they simulate unknown
        products when the OOD detector is chosen, its detection rate estimated and
        the thresholds account for unknowns that slip past it. A SKU the backbone
        was fine-tuned on is no unknown to it: with 0 sentinels all of that is
        optimistic (``metadata["training"]["ood_basis"]`` says which). The
        sentinels stay in the catalogue, recognised on transferred features. Default:
        :data:`DEFAULT_SENTINEL_FRACTION` of the catalogue (as many as have
        calibration photos, leaving two SKUs to fine-tune on).
    late_join_epochs : int
        With sentinels: after fine-tuning, this many more epochs on every SKU, the
        sentinels included, at :data:`LATE_JOIN_LR_FACTOR` of the learning rate
        (default 0: they stay out; 2 is the measured setting). The
        bundle's backbone is the one after the late join; unknown products are still
        simulated on the backbone from before it (``fit_recognition_model(X_ood=...)``),
        which is kept in the bundle as :data:`PRE_JOIN_BACKBONE_FILE` for the OOD check
        of ``skuscale assess``.
    """
    from skuscale.data.images import load_image
    from skuscale.data.preprocess import preprocess_batch
    from skuscale.embed.backbone import TorchEmbedder, load_backbone
    from skuscale.embed.export import export_onnx, verify_export
    from skuscale.embed.pipeline import embed_paths

    started = time.perf_counter()
    out = check_out_folder(out)
    hooks = progress or BuildProgress()
    cfg = config or TrainingConfig()
    ft = finetune if finetune is not None else FinetuneConfig(epochs=DEFAULT_FINETUNE_EPOCHS)
    hooks.step(f"loading backbone {backbone}")
    net = load_backbone(backbone)
    embedder = TorchEmbedder(net, threads=threads)
    cache_root = Path(cache_dir or default_cache_dir())
    cache = EmbeddingCache(cache_root)
    prep_id = embedder.preprocessing.fingerprint()

    def is_known_good(path: Path) -> bool:
        try:
            return cache.contains(content_key(path.read_bytes(), embedder.identity, prep_id))
        except OSError:
            return False

    hooks.step("validating data")
    train_ds, val_ds, ref_ds = _collect(train, val, reference, exclude_skus, is_known_good)
    plan = None
    if device is not None:
        from skuscale.edge.sizing import plan_for_device

        plan = plan_for_device(device, len(train_ds.skus), backbone=backbone, calibration_paths=train_ds.paths,
                               sku_names=train_ds.skus, step=hooks.step)
        hooks.step(f"device sizing: {plan.choice.arithmetic()}")
        if plan.choice.int8:
            # The quantised bundle is written next to --out first; that must not replace anything of the user's.
            check_out_folder(out.with_name(out.name + ".int8"), "the INT8 work folder")
        if plan.choice.backbone != backbone:
            backbone = plan.choice.backbone
            net = load_backbone(backbone)
            embedder = TorchEmbedder(net, threads=threads)

    carved = False
    finetune_info = None
    sentinels: list[str] = []
    if isinstance(late_join_epochs, bool) or int(late_join_epochs) != late_join_epochs or late_join_epochs < 0:
        raise SkuscaleError(f"--late-join-epochs must be a non-negative integer, got {late_join_epochs!r}")
    no_sentinels = SkuscaleError("--late-join-epochs needs sentinel SKUs (--ood-sentinels N with fine-tuning): "
                                 "without them every SKU is fine-tuned on from the start")
    if late_join_epochs and ft.epochs <= 0:
        raise no_sentinels
    if ood_sentinels and ft.epochs <= 0:
        raise SkuscaleError("--ood-sentinels needs fine-tuning: a frozen backbone has seen none of the SKUs, so "
                            "every SKU already simulates an unknown product honestly")
    if ft.epochs > 0:
        if val_ds is None:
            train_ds, val_ds = carve_calibration(train_ds)
            carved = val_ds is not None
            if carved:
                hooks.step(f"no --val: {len(val_ds)} training photos held out of fine-tuning for calibration")
        ft_train, ft_ref = train_ds, ref_ds
        if ood_sentinels is None:
            ood_sentinels = default_sentinel_count(train_ds, val_ds)
        if ood_sentinels:
            sentinels = choose_sentinels(train_ds, val_ds, ood_sentinels, seed=cfg.seed)
            hooks.step(f"{len(sentinels)} sentinel SKUs kept out of fine-tuning to test the OOD stage: "
                       + ", ".join(sentinels))
            ft_train = _without(train_ds, sentinels)
            ft_ref = _without(ref_ds, sentinels) if ref_ds is not None else None
        if late_join_epochs and not sentinels:
            # Before fine-tuning: this should not cost a user the half hour it takes.
            raise no_sentinels
        net, embedder, finetune_info = _finetune(
            net, backbone, embedder, ft_train, ft_ref, ft=ft, cache=cache, cache_root=cache_root,
            batch_size=batch_size, hooks=hooks, head_config=cfg,
        )

    parts = [("train", train_ds)] + [(n, d) for n, d in (("val", val_ds), ("reference", ref_ds)) if d is not None]

    def embed_parts(with_embedder, what: str) -> np.ndarray:
        out = []
        for label, ds in parts:
            hooks.embed_start(len(ds), f"{label}{what}")
            out.append(
                embed_paths(ds.paths, with_embedder, cache=cache, batch_size=batch_size, progress=hooks.embed_advance)
            )
            hooks.embed_end()
        return np.concatenate(out)

    X_ood = pre_join_net = late_join_info = None
    if late_join_epochs:
        # Unknown products are simulated on this backbone, which has not seen the sentinels.
        X_ood = embed_parts(embedder, " (before the late join)")
        pre_join_net, pre_join_identity = net, embedder.identity
        late_ft = replace(ft, epochs=int(late_join_epochs), lr=ft.lr * LATE_JOIN_LR_FACTOR)
        hooks.step(f"late join: the {len(sentinels)} sentinel SKUs join fine-tuning for {late_join_epochs} epochs")
        # A copy: the pre-join weights stay intact for their ONNX export.
        net, embedder, late_join_info = _finetune(
            copy.deepcopy(net), backbone, embedder, train_ds, ref_ds, ft=late_ft, cache=cache,
            cache_root=cache_root, batch_size=batch_size, hooks=hooks, head_config=cfg,
        )
        late_join_info["pre_join_identity"] = pre_join_identity
    X = embed_parts(embedder, "")
    y = np.concatenate([ds.labels for _, ds in parts]).astype(str)
    origin = np.concatenate([np.full(len(ds), label) for label, ds in parts])
    sku_to_category: dict[str, str] = {}
    for _, ds in parts:
        for sku, cat in ds.categories().items():
            sku_to_category.setdefault(sku, cat)

    staging = staging_folder_for(out)
    try:
        hooks.step("exporting the backbone to ONNX")
        onnx_path = export_onnx(net, staging / BACKBONE_FILE, image_size=embedder.preprocessing.image_size)
        check_paths = train_ds.paths[:: max(1, len(train_ds) // EXPORT_CHECK_IMAGES)][:EXPORT_CHECK_IMAGES]
        check_batch = preprocess_batch([load_image(p) for p in check_paths], embedder.preprocessing)
        export_diff = verify_export(net, onnx_path, check_batch)
        pre_join = {}
        if pre_join_net is not None:
            pre_join_path = export_onnx(pre_join_net, staging / PRE_JOIN_BACKBONE_FILE,
                                        image_size=embedder.preprocessing.image_size)
            pre_join = {"pre_join_onnx": PRE_JOIN_BACKBONE_FILE,
                        "pre_join_export_max_abs_diff": verify_export(pre_join_net, pre_join_path, check_batch)}

        model, metadata = _fit_and_package(
            X, y, origin, sku_to_category, cfg=cfg, hooks=hooks,
            training={
                # Absolute: `skuscale export` reads them back from wherever it runs.
                "train": str(Path(train).resolve()),
                "val": str(Path(val).resolve()) if val else None,
                "reference": str(Path(reference).resolve()) if reference else None,
                "excluded_skus": sorted(exclude_skus),
                "n_images": {label: len(ds) for label, ds in parts},
                "calibration_carved_from_train": carved,
                "ood_sentinels": sentinels,
                "ood_basis": ("sentinels_late_join" if late_join_info else "sentinels") if sentinels else (
                    "finetuned_on_heldout" if finetune_info else "frozen"),
            },
            ood_skus=sentinels or None,
            X_ood=X_ood,
        )
        metadata["training"]["finetune"] = finetune_info
        metadata["training"]["late_join"] = late_join_info
        if plan is not None:
            metadata["device_sizing"] = plan.to_dict()
        digests = image_digests(Path(p).read_bytes() for _, ds in parts for p in ds.paths)
        trained = (origin != "val") | cfg.final_on_calibration
        bundle = Bundle(
            training_digests=digests,
            digest_trained=trained,
            model=model,
            preprocessing=embedder.preprocessing,
            backbone={
                "name": backbone,
                "onnx": BACKBONE_FILE,
                "dim": int(X.shape[1]),
                "identity": embedder.identity,
                "export_max_abs_diff": export_diff,
                "export_check_images": len(check_paths),
                "finetuned": finetune_info is not None,
                **pre_join,
            },
            metadata=metadata,
        )
        _publish(bundle, staging, out, hooks, started)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if plan is not None and plan.choice.int8:
        from skuscale.edge.export import export_bundle

        quantised = out.with_name(out.name + ".int8")
        export_bundle(out, quantised, int8=True, calibration=train, evaluation=val or train, cache_dir=cache_dir,
                      step=hooks.step)
        replace_folder(quantised, out)
        bundle = Bundle.load(out)
    return BuildResult(
        bundle=bundle, seconds=time.perf_counter() - started, cache_hits=cache.hits, cache_misses=cache.misses
    )

