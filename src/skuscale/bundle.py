"""The bundle: a folder with the ONNX backbone, numpy arrays and ``bundle.json``.

Loading checks the format version and the sha256 of every file (and of the one-graph
pipeline an edge export records under ``edge``), and refuses a tampered or
incompatible bundle. No pickle is involved anywhere: arrays are
``.npz`` loaded with ``allow_pickle=False`` and everything else is JSON.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from skuscale import __version__
from skuscale._base import BaseEstimator
from skuscale.data.preprocess import Preprocessing
from skuscale.exceptions import BundleError
from skuscale.head.linear import LinearHead
from skuscale.head.prototypes import PrototypeHead
from skuscale.model import RecognitionModel
from skuscale.ood import DETECTORS
from skuscale.routing import Decision, Router

FORMAT = "skuscale-bundle"
FORMAT_VERSION = 1
MANIFEST = "bundle.json"
BACKBONE_FILE = "backbone.onnx"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(1 << 20):
            h.update(block)
    return h.hexdigest()


REQUIRED_FILES = ("head.npz", "prototypes.npz", "detector.npz")
TRAINING_IMAGES = "training_images.npz"
DIGEST_BYTES = 16


def image_digests(blobs) -> np.ndarray:
    """sha256 prefixes (n, 16) of image files' bytes, as stored in ``training_images.npz``."""
    rows = [np.frombuffer(hashlib.sha256(b).digest()[:DIGEST_BYTES], dtype=np.uint8).copy() for b in blobs]
    return np.stack(rows) if rows else np.zeros((0, DIGEST_BYTES), np.uint8)


def embedding_rows(X) -> list[bytes]:
    """The bytes that stand for each embedding row in :func:`image_digests` (float32, C order).

    Bundles built from embeddings record these rows' digests, so ``evaluate --embeddings``
    can tell the rows they were fitted on; both sides must produce the same bytes.
    """
    return [row.tobytes() for row in np.ascontiguousarray(X, dtype=np.float32)]


def _manifest_digest(doc: dict[str, Any]) -> str:
    """sha256 of the canonical JSON of ``bundle.json`` without its own digest field."""
    body = {k: v for k, v in doc.items() if k != "manifest_sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


# Top-level keys of bundle.json that the bundle itself writes; metadata may not use them.
_STRUCTURAL_KEYS = frozenset({
    "format", "format_version", "backbone", "preprocessing", "catalogue", "head", "prototypes",
    "calibration", "ood", "routing", "files", "manifest_sha256",
})
_STAMP_KEYS = frozenset({"package_version", "created"})


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


def save_estimator(est: BaseEstimator, path: Path) -> dict[str, Any]:
    """Arrays of ``est`` into ``path`` (.npz); returns the JSON part (class, params, scalars)."""
    arrays, scalars = {}, {}
    for key, value in est.get_state().items():
        if isinstance(value, np.ndarray) and value.ndim > 0:
            arrays[key] = value
        else:
            scalars[key] = _jsonable(value)
    np.savez(path, **arrays)
    return {
        "class": type(est).__name__,
        "params": _jsonable(est.get_params()),
        "file": path.name,
        "scalars": scalars,
    }


def load_estimator(root: Path, meta: dict[str, Any], classes: dict[str, type[BaseEstimator]]) -> BaseEstimator:
    klass = classes.get(meta["class"])
    if klass is None:
        raise BundleError(f"bundle names an unknown estimator class {meta['class']!r}")
    with np.load(root / meta["file"], allow_pickle=False) as npz:
        state = {k: npz[k] for k in npz.files}
    state.update(meta.get("scalars", {}))
    return klass.from_state(meta["params"], state)


def _edge_pipeline_problems(root: Path, edge: Any, files: dict[str, Any]) -> list[str]:
    """What is wrong with the one-graph pipeline that ``bundle.json["edge"]`` names (nothing without one).

    ``skuscale export`` records the pipeline's sha256 under ``edge.pipeline_sha256``
    rather than in ``files``; it is checked the same way.
    """
    if edge is None:
        return []
    if not isinstance(edge, dict):
        return [f"{MANIFEST}: edge is not an object"]
    name = edge.get("pipeline")
    if name is None:
        return []
    if not isinstance(name, str) or not name or Path(name).name != name:
        return [f"{MANIFEST}: edge.pipeline is not a file name ({name!r})"]
    if name in files:  # already checked with the other files
        return []
    digest = edge.get("pipeline_sha256")
    path = root / name
    if not isinstance(digest, str):
        return [f"{MANIFEST}: edge names {name} but records no pipeline_sha256"]
    if not path.is_file():
        return [f"{name} is missing"]
    if _sha256(path) != digest:
        return [f"{name} has been modified (sha256 mismatch with edge.pipeline_sha256)"]
    return []


@dataclass
class Bundle:
    """A loaded (or about to be saved) bundle.

    Attributes
    ----------
    model : RecognitionModel
    preprocessing : Preprocessing
    backbone : dict
        Name, ONNX file name, embedding dimension and export check.
    metadata : dict
        Everything else recorded in ``bundle.json`` (training data, metrics, targets).
    root : Path or None
        Folder the bundle lives in.
    training_digests : ndarray of uint8, shape (n, 16), optional
        sha256 prefixes of every image used to build the bundle, so evaluation can
        tell when it is scoring images the bundle was fitted on.
    digest_trained : ndarray of bool, shape (n,), optional
        Per digest, whether the head trained on that image (False: it only
        calibrated temperature, thresholds and the OOD cut-off).
    """

    model: RecognitionModel
    preprocessing: Preprocessing
    backbone: dict[str, Any]
    metadata: dict[str, Any] = field(default_factory=dict)
    root: Path | None = None
    training_digests: np.ndarray | None = None
    digest_trained: np.ndarray | None = None
    _embedder: Any = field(default=None, repr=False)

    @property
    def skus(self) -> list[str]:
        return self.model.skus

    @property
    def simulated(self) -> bool:
        """Whether the bundle was fitted on a simulated embedding catalogue."""
        return bool(self.metadata.get("training", {}).get("simulated", False))

    # ---------------------------------------------------------------- persistence
    def save(self, root: str | os.PathLike) -> Path:
        """Write the arrays and ``bundle.json`` into ``root`` (the ONNX file must already be there)."""
        clash = sorted(set(self.metadata) & _STRUCTURAL_KEYS)
        if clash:
            raise BundleError(f"metadata may not use the bundle's own keys: {', '.join(clash)}")
        root = Path(root)
        root.mkdir(parents=True, exist_ok=True)
        onnx_name = self.backbone.get("onnx")
        if onnx_name is not None and not (root / onnx_name).is_file():
            raise BundleError(f"{root / onnx_name} is missing; export the backbone first")
        m = self.model
        doc: dict[str, Any] = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "package_version": __version__,
            "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
            "backbone": self.backbone,
            "preprocessing": self.preprocessing.to_dict(),
            "catalogue": {
                "skus": m.skus,
                "categories": {s: m.sku_to_category[s] for s in m.skus if s in m.sku_to_category},
            },
            "head": save_estimator(m.head, root / "head.npz"),
            "prototypes": save_estimator(m.prototypes, root / "prototypes.npz"),
            "calibration": {"method": "temperature", "temperature": m.temperature},
            "ood": {**save_estimator(m.detector, root / "detector.npz"),
                    "threshold": _jsonable(m.router.ood_threshold)},
            "routing": m.router.to_dict(),
            # A loaded bundle's stamps describe its old save; this save writes its own.
            **_jsonable({k: v for k, v in self.metadata.items() if k not in _STAMP_KEYS}),
        }
        pre_join = self.backbone.get("pre_join_onnx")
        files = ["head.npz", "prototypes.npz", "detector.npz"] + [n for n in (onnx_name, pre_join) if n]
        if self.training_digests is not None:
            trained = (
                np.ones(len(self.training_digests), bool) if self.digest_trained is None else self.digest_trained
            )
            np.savez(
                root / TRAINING_IMAGES,
                sha256_prefix=np.asarray(self.training_digests, dtype=np.uint8),
                trained=np.asarray(trained, dtype=bool),
            )
            files.append(TRAINING_IMAGES)
        doc["files"] = {name: _sha256(root / name) for name in files}
        doc["manifest_sha256"] = _manifest_digest(doc)
        tmp = root / (MANIFEST + ".tmp")
        tmp.write_text(json.dumps(doc, indent=2, sort_keys=False, allow_nan=False))
        os.replace(tmp, root / MANIFEST)
        self.root = root
        return root

    @classmethod
    def load(cls, root: str | os.PathLike) -> Bundle:
        """Load and verify a bundle; raises :class:`BundleError` on any mismatch."""
        root = Path(root)
        manifest = root / MANIFEST
        if not manifest.is_file():
            raise BundleError(f"{root} is not a skuscale bundle (no {MANIFEST})")
        try:
            doc = json.loads(manifest.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise BundleError(f"{manifest} is not valid JSON: {exc}") from exc
        if not isinstance(doc, dict):
            raise BundleError(f"{manifest} is not a JSON object")
        if doc.get("format") != FORMAT:
            raise BundleError(f"{manifest}: not a skuscale bundle (format={doc.get('format')!r})")
        if doc.get("format_version") != FORMAT_VERSION:
            raise BundleError(
                f"{manifest}: bundle format version {doc.get('format_version')!r} is not supported "
                f"by skuscale {__version__} (expects {FORMAT_VERSION}); rebuild the bundle"
            )
        problems = []
        if doc.get("manifest_sha256") != _manifest_digest(doc):
            problems.append(f"{MANIFEST} has been modified (manifest_sha256 mismatch)")
        files = doc.get("files")
        if not isinstance(files, dict):
            files = {}
        for name in REQUIRED_FILES:
            if name not in files:
                problems.append(f"{MANIFEST} does not list {name}")
        for name, digest in files.items():
            path = root / name
            if not path.is_file():
                problems.append(f"{name} is missing")
            elif _sha256(path) != digest:
                problems.append(f"{name} has been modified (sha256 mismatch)")
        problems += _edge_pipeline_problems(root, doc.get("edge"), files)
        if problems:
            raise BundleError(f"refusing bundle {root}: " + "; ".join(problems))
        try:
            return cls._from_document(root, doc)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise BundleError(f"bundle {root} is incomplete or inconsistent: {exc!r}") from exc

    @classmethod
    def _from_document(cls, root: Path, doc: dict[str, Any]) -> Bundle:
        head = load_estimator(root, doc["head"], {"LinearHead": LinearHead})
        prototypes = load_estimator(root, doc["prototypes"], {"PrototypeHead": PrototypeHead})
        detector = load_estimator(root, doc["ood"], {k.__name__: k for k in DETECTORS.values()})
        router = Router.from_dict(doc["routing"])
        preprocessing = Preprocessing.from_dict(doc["preprocessing"])
        model = RecognitionModel(
            head=head,
            temperature=float(doc["calibration"]["temperature"]),
            prototypes=prototypes,
            detector=detector,
            router=router,
            sku_to_category=dict(doc["catalogue"].get("categories", {})),
        )
        # The stamps stay in metadata for display (Recognizer.info); save rewrites them.
        metadata = {k: v for k, v in doc.items() if k not in _STRUCTURAL_KEYS}
        digests = trained = None
        if TRAINING_IMAGES in doc["files"]:
            with np.load(root / TRAINING_IMAGES, allow_pickle=False) as npz:
                digests = npz["sha256_prefix"]
                trained = npz["trained"] if "trained" in npz.files else np.ones(len(digests), bool)
        return cls(
            model=model, preprocessing=preprocessing, backbone=doc["backbone"], metadata=metadata, root=root,
            training_digests=digests, digest_trained=trained,
        )

    def image_roles(self, blobs) -> np.ndarray:
        """Per image file (bytes): 2 = the head trained on it, 1 = it only calibrated the bundle, 0 = unseen."""
        blobs = list(blobs)
        if self.training_digests is None or len(self.training_digests) == 0:
            return np.zeros(len(blobs), np.int8)
        trained = np.ones(len(self.training_digests), bool) if self.digest_trained is None else self.digest_trained
        role = {row.tobytes(): 2 if t else 1 for row, t in zip(self.training_digests, trained, strict=True)}
        return np.array([role.get(row.tobytes(), 0) for row in image_digests(blobs)], dtype=np.int8)

    def seen_in_training(self, blobs) -> np.ndarray:
        """Boolean mask: which of these image files (bytes) the head was trained on."""
        return self.image_roles(blobs) == 2

    # ---------------------------------------------------------------- prediction
    def embedder(self, *, threads: int | None = None):
        """The bundle's ONNX Runtime backbone (created once)."""
        if self._embedder is None:
            from skuscale.embed.onnx_embedder import OnnxEmbedder

            if self.root is None:
                raise BundleError("bundle has no folder; save or load it first")
            if not self.backbone.get("onnx"):
                raise BundleError(
                    "this bundle was built from an embedding file and has no image backbone; "
                    "evaluate it with --embeddings"
                )
            self._embedder = OnnxEmbedder(self.root / self.backbone["onnx"], self.preprocessing, threads=threads)
        return self._embedder

    def pre_join_embedder(self, *, threads: int | None = None):
        """The backbone from before the sentinel SKUs joined fine-tuning, or None.

        Only the OOD check of ``skuscale assess`` uses it: to that backbone the sentinels
        are still unseen products (see ``skuscale.build.build_bundle(late_join_epochs=...)``).
        """
        name = self.backbone.get("pre_join_onnx")
        if not name or self.root is None:
            return None
        from skuscale.embed.onnx_embedder import OnnxEmbedder

        return OnnxEmbedder(self.root / name, self.preprocessing, threads=threads)

    def embed_paths(self, paths: Sequence[str | os.PathLike], **kwargs) -> np.ndarray:
        from skuscale.embed.pipeline import embed_paths

        return embed_paths(paths, self.embedder(), **kwargs)

    def embed_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        from skuscale.embed.pipeline import embed_images

        return embed_images(images, self.embedder())

    def predict_paths(self, paths: Sequence[str | os.PathLike], **kwargs) -> list[Decision]:
        """Routed decisions for image files."""
        return self.model.decide(self.embed_paths(paths, **kwargs))

    def predict_images(self, images: Sequence[Image.Image]) -> list[Decision]:
        """Routed decisions for decoded RGB images."""
        return self.model.decide(self.embed_images(images))
