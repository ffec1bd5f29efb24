"""Generate a simulated catalogue of SKU embeddings on the unit sphere.

The generative model (all vectors in ``dim`` dimensions, ``normalize`` = L2):

* every SKU belongs to a *family* (same pack, other variant); family sizes are
  ``1 + Poisson(family_size - 1)``;
* a SKU's true centroid is
  ``normalize(sqrt(b) g + sqrt(f - b) u_family + sqrt(1 - f) u_sku)`` with ``g``
  shared by all SKUs and ``u_*`` independent random unit vectors, so the expected
  cosine between two centroids is ``f`` (``family_similarity``) inside a family and
  ``b`` (``background_similarity``) across families; in few dimensions the random
  parts add chance near-duplicates, the crowding that grows with the catalogue;
* an image is ``normalize(centroid + within_spread * z)`` with ``z ~ N(0, I/dim)``,
  so its expected cosine to its centroid is ``1 / sqrt(1 + within_spread**2)``;
* training-image counts follow a truncated Zipf law over a random popularity rank
  ``r``: ``clip(round(max_train * r**-zipf_exponent), min_train, max_train)``;
* new SKUs arrive at ``new_sku_monthly_rate`` (share of the catalogue per month)
  during the ``months`` after the training snapshot; they exist only in the
  ``test`` split (unknown products for a bundle built on ``train``/``val``);
* a ``drift_share`` of the known SKUs change appearance after the snapshot (light,
  packaging refresh): their ``test`` images come from a centroid whose cosine to
  the old one is ``drift_similarity``.

Everything is written in the embedding-file format of
:mod:`skuscale.data.embeddings` with ``meta["simulated"] = True``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

import numpy as np

from skuscale._base import l2_normalize
from skuscale.data.embeddings import EmbeddingDataset


@dataclass(frozen=True)
class SimulatorParams:
    """Parameters of the catalogue simulator (see the module docstring for the model).

    Attributes
    ----------
    n_skus : int
        SKUs in the catalogue at the training snapshot.
    dim : int
        Embedding dimension of the simulated space (fewer dimensions = more crowding).
    n_categories : int
        Categories; families are spread over them at random.
    family_size : float
        Mean SKUs per near-duplicate family (1 = no families).
    family_similarity : float
        Expected cosine between the true centroids of two SKUs of one family.
    background_similarity : float
        Expected cosine between the true centroids of SKUs of different families.
    within_spread : float
        Image noise scale; expected cosine image-to-centroid is ``1/sqrt(1+s**2)``.
    zipf_exponent : float
        Exponent of the training-count law (0 = balanced).
    max_train, min_train : int
        Training images of the most popular SKU, and the floor for the tail.
    val_per_sku, test_per_sku : int
        Validation (calibration) and test images per SKU.
    new_sku_monthly_rate : float
        New SKUs per month as a share of ``n_skus``.
    months : float
        Months between the training snapshot and the test period.
    drift_share : float
        Share of known SKUs whose appearance drifts before the test period.
    drift_similarity : float
        Cosine between a drifted SKU's old and new centroid.
    seed : int
    """

    n_skus: int = 2000
    dim: int = 48
    n_categories: int = 60
    family_size: float = 1.0
    family_similarity: float = 0.8
    background_similarity: float = 0.2
    within_spread: float = 0.6
    zipf_exponent: float = 0.0
    max_train: int = 30
    min_train: int = 3
    val_per_sku: int = 4
    test_per_sku: int = 5
    new_sku_monthly_rate: float = 0.0
    months: float = 0.0
    drift_share: float = 0.0
    drift_similarity: float = 0.7
    seed: int = 0

    def __post_init__(self) -> None:
        problems = []
        if self.n_skus < 2:
            problems.append("n_skus must be at least 2")
        if self.dim < 2:
            problems.append("dim must be at least 2")
        if self.n_categories < 1:
            problems.append("n_categories must be at least 1")
        if self.family_size < 1:
            problems.append("family_size must be >= 1")
        if not 0.0 <= self.background_similarity <= self.family_similarity < 1.0:
            problems.append("need 0 <= background_similarity <= family_similarity < 1")
        if self.within_spread < 0:
            problems.append("within_spread must be >= 0")
        if self.zipf_exponent < 0:
            problems.append("zipf_exponent must be >= 0")
        if not 1 <= self.min_train <= self.max_train:
            problems.append("need 1 <= min_train <= max_train")
        if self.val_per_sku < 0 or self.test_per_sku < 0:
            problems.append("val_per_sku and test_per_sku must be >= 0")
        if self.new_sku_monthly_rate < 0 or self.months < 0:
            problems.append("new_sku_monthly_rate and months must be >= 0")
        if not 0.0 <= self.drift_share <= 1.0:
            problems.append("drift_share must be in [0, 1]")
        if not -1.0 <= self.drift_similarity <= 1.0:
            problems.append("drift_similarity must be in [-1, 1]")
        if problems:
            raise ValueError("invalid simulator parameters: " + "; ".join(problems))

    def replace(self, **changes) -> SimulatorParams:
        """A copy with some fields changed (unknown names raise ``TypeError``)."""
        return SimulatorParams(**{**asdict(self), **changes})

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> SimulatorParams:
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown simulator parameter(s): {', '.join(unknown)}")
        return cls(**d)

    @property
    def n_new_skus(self) -> int:
        return round(self.n_skus * self.new_sku_monthly_rate * self.months)


def zipf_counts(n: int, exponent: float, max_count: int, min_count: int, rng: np.random.Generator) -> np.ndarray:
    """Truncated Zipf counts for ``n`` SKUs in random popularity order.

    ``clip(round(max_count * rank**-exponent), min_count, max_count)`` with ranks
    ``1..n`` shuffled (Zipf, "Human Behavior and the Principle of Least Effort", 1949;
    retail sales and photo counts follow such a power law).
    """
    rank = rng.permutation(n) + 1
    return np.clip(np.round(max_count * rank.astype(np.float64) ** -exponent), min_count, max_count).astype(np.int64)


def _unit(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    return l2_normalize(rng.standard_normal((n, dim)))


def _family_sizes(n: int, mean_size: float, rng: np.random.Generator) -> np.ndarray:
    sizes: list[int] = []
    total = 0
    while total < n:
        size = 1 + int(rng.poisson(mean_size - 1.0)) if mean_size > 1 else 1
        size = min(size, n - total)
        sizes.append(size)
        total += size
    return np.array(sizes, dtype=np.int64)


def _images(rng: np.random.Generator, centroids: np.ndarray, counts: np.ndarray, spread: float) -> np.ndarray:
    rows = np.repeat(np.arange(centroids.shape[0]), counts)
    noise = rng.standard_normal((rows.size, centroids.shape[1])) / math.sqrt(centroids.shape[1])
    return l2_normalize(centroids[rows] + spread * noise).astype(np.float32), rows


def simulate_catalogue(params: SimulatorParams) -> EmbeddingDataset:
    """Draw a catalogue from :class:`SimulatorParams`.

    Returns
    -------
    EmbeddingDataset
        Splits ``train`` (Zipf counts), ``val`` and ``test`` (test also holds the new
        SKUs and the drifted appearance). ``meta`` records ``simulated: true``, the
        parameters, and per-SKU ``family``, ``arrival_month`` (new SKUs), ``drifted``
        lists and the training counts.
    """
    p = params
    rng = np.random.default_rng(p.seed)
    n_total = p.n_skus + p.n_new_skus
    sizes = _family_sizes(n_total, p.family_size, rng)
    family = np.repeat(np.arange(sizes.size), sizes)
    # Families of new SKUs are drawn from the same pool, so some new SKUs are new
    # variants of an existing pack: the hardest unknowns.
    family = family[rng.permutation(n_total)]
    g = _unit(rng, 1, p.dim)[0]
    family_dirs = _unit(rng, sizes.size, p.dim)
    own = _unit(rng, n_total, p.dim)
    b, f = p.background_similarity, p.family_similarity
    centroids = l2_normalize(math.sqrt(b) * g + math.sqrt(f - b) * family_dirs[family] + math.sqrt(1 - f) * own)
    family_category = rng.integers(0, p.n_categories, size=sizes.size)
    width = len(str(n_total - 1))
    names = np.array([f"sim-{i:0{width}d}" for i in range(n_total)])
    categories = np.array([f"simcat-{c:03d}" for c in family_category[family]])

    known = np.arange(p.n_skus)
    new = np.arange(p.n_skus, n_total)
    train_counts = zipf_counts(p.n_skus, p.zipf_exponent, p.max_train, p.min_train, rng)
    n_drift = round(p.drift_share * p.n_skus)
    drifted = np.sort(rng.choice(known, size=n_drift, replace=False)) if n_drift else np.array([], dtype=np.int64)
    test_centroids = centroids.copy()
    if n_drift:
        direction = _unit(rng, n_drift, p.dim)
        # Remove the component along the old centroid so drift_similarity is the cosine.
        old = centroids[drifted]
        direction = l2_normalize(direction - (direction * old).sum(1, keepdims=True) * old)
        s = p.drift_similarity
        test_centroids[drifted] = l2_normalize(s * centroids[drifted] + math.sqrt(max(1 - s * s, 0.0)) * direction)

    parts = []
    for split, cents, counts in (
        ("train", centroids[known], train_counts),
        ("val", centroids[known], np.full(p.n_skus, p.val_per_sku)),
        ("test", test_centroids, np.full(n_total, p.test_per_sku)),
    ):
        X, rows = _images(rng, cents, counts, p.within_spread)
        parts.append((X, rows, np.full(rows.size, split)))
    X = np.vstack([x for x, _, _ in parts])
    rows = np.concatenate([r for _, r, _ in parts])
    split = np.concatenate([s for _, _, s in parts])
    arrival = np.sort(rng.uniform(0, p.months, size=new.size)) if new.size else np.array([])
    meta = {
        "simulated": True,
        "generator": "skuscale.simulate",
        "params": p.to_dict(),
        "n_known_skus": int(p.n_skus),
        "new_skus": names[new].tolist(),
        "arrival_month": [round(float(a), 3) for a in arrival],
        "drifted_skus": names[drifted].tolist(),
        "family": {str(n): int(f) for n, f in zip(names, family, strict=True)},
        "train_counts": train_counts.tolist(),
    }
    return EmbeddingDataset(X=X, sku=names[rows], category=categories[rows], split=split, meta=meta,
                            source="<simulated>")
