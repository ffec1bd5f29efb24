"""Footprint, measured, and device sizing before training.

The arithmetic is check 4's (:mod:`skuscale.assess.footprint`): ``footprint = W + A + T``
(backbone weights, peak activations at batch 1, class tables) against the memory of
the lowest tier of a device profile (:mod:`skuscale.assess.profiles`), with at least
20% headroom. Both use the same numbers:

* ``W`` and ``A`` of the graph ONNX Runtime actually executes
  (:func:`runtime_weights_and_activations`, shared with check 4): for an INT8 QDQ model
  the unoptimised graph holds every activation twice (uint8 and its fp32
  dequantisation), and for fp32 it keeps tensors ONNX Runtime fuses away;
* ``T`` from the arrays the bundle stores (:func:`class_table_bytes_for`: head,
  prototypes, the OOD detector's state, router thresholds), which equals what check 4
  measures on the built bundle for the same catalogue size and detector.

This module adds what an edge deployment needs on top:

* the ONNX Runtime session's resident-memory delta, measured in a fresh process
  (:func:`session_rss_delta`);
* class-table bytes for a table setting (dimension, fp16/int8, FAISS) and catalogue size,
  and the same pipeline's footprint at 2k, 20k and 100k SKUs (:func:`measure_bundle`);
* :func:`size_for_device`: pick backbone, INT8, table dimension and precision so the
  footprint fits *before* training ("memory budgets before architecture selection"),
  or fail with the arithmetic.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from skuscale.assess.footprint import MIB, Footprint, runtime_weights_and_activations
from skuscale.assess.profiles import DeviceProfile, load_profile
from skuscale.edge.tables import table_bytes
from skuscale.exceptions import SkuscaleError

__all__ = [
    "BUILD_TABLE_SETTINGS",
    "MIB",
    "BackboneCost",
    "DeviceProfile",
    "Footprint",
    "SizingChoice",
    "class_table_bytes_for",
    "load_profile",
    "measure_bundle",
    "runtime_weights_and_activations",
    "session_rss_delta",
    "size_for_device",
]

#: Catalogue sizes the footprint report extrapolates to.
SCALE_POINTS = (2000, 20000, 100000)
#: Full-width table settings, most accurate first: tried with the fp32 backbone, then with INT8.
DENSE_TABLE_SETTINGS = ((None, "fp32"), (None, "fp16"), (None, "int8"))
#: PCA-reduced int8 table settings, tried after the INT8 backbone (see docs/edge.md for their accuracy cost).
REDUCED_TABLE_SETTINGS = ((512, "int8"), (256, "int8"), (128, "int8"), (64, "int8"))
#: Table settings tried by :func:`size_for_device` (the order is set by :func:`size_for_device`).
TABLE_SETTINGS = DENSE_TABLE_SETTINGS + REDUCED_TABLE_SETTINGS
#: Table settings ``skuscale build`` can store today: dense fp32 head, prototypes and detector
#: tables (docs/edge.md, "The table setting"). The others are sized, never chosen, by the build.
BUILD_TABLE_SETTINGS = ((None, "fp32"),)
#: OOD detectors whose stored state :func:`class_table_bytes_for` knows (names of ``skuscale.ood.DETECTORS``).
SIZING_DETECTORS = ("prototype", "msp", "energy", "mahalanobis", "knn")
#: Characters per SKU label assumed when the SKU names are not given (labels are stored as
#: fixed-width unicode arrays, 4 bytes per character of the longest label).
DEFAULT_LABEL_CHARS = 32


_RSS_SCRIPT = r"""
import json, sys
import numpy as np
import onnxruntime as ort

def rss():
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
path, batch, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
before = rss()
opts = ort.SessionOptions()
opts.intra_op_num_threads = threads
opts.log_severity_level = 3
s = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
after_load = rss()
inp = s.get_inputs()[0]
shape = [d if isinstance(d, int) else batch for d in inp.shape]
s.run(None, {inp.name: np.zeros(shape, np.float32)})
after_run = rss()
print(json.dumps({"before": before, "after_load": after_load, "after_run": after_run}))
"""


def session_rss_delta(path: str | os.PathLike, *, batch: int = 1, threads: int = 1) -> dict[str, int]:
    """Resident-memory growth of a fresh process when it loads ``path`` in ORT and runs one batch.

    Returns ``load_bytes`` (session creation) and ``run_bytes`` (creation plus one run), read
    from ``/proc/self/status`` (Linux only).
    """
    if not Path("/proc/self/status").is_file():
        raise SkuscaleError("measuring resident memory needs Linux /proc")
    proc = subprocess.run([sys.executable, "-c", _RSS_SCRIPT, str(path), str(batch), str(threads)],
                          capture_output=True, text=True, timeout=600, check=False)
    if proc.returncode != 0:
        raise SkuscaleError(f"measuring {path} failed: {proc.stderr.strip()[-500:]}")
    doc = json.loads(proc.stdout.strip().splitlines()[-1])
    return {"load_bytes": doc["after_load"] - doc["before"], "run_bytes": doc["after_run"] - doc["before"]}


def class_table_bytes_for(n_skus: int, embedding_dim: int, *, dim: int | None = None, precision: str = "fp32",
                          detector: str = "prototype", n_bank: int = 0, label_chars: int = DEFAULT_LABEL_CHARS,
                          approximate_above: int = 10000) -> int:
    """Bytes of the class tables a bundle of ``n_skus`` SKUs stores, under one table setting.

    The arrays :func:`skuscale.assess.footprint.class_table_bytes` (check 4) counts on a
    built bundle, counted before training (``k = n_skus``, ``d = embedding_dim``):

    * head: ``coef_`` (k x d), ``intercept_`` and ``log_prior_`` (k float32 each), labels;
    * prototypes: ``prototypes_`` (k x d), ``resultant_norms_`` (k float32), ``counts_``
      (k int64), labels;
    * the OOD detector's state: ``prototype``, its k x d prototypes and labels; ``msp`` and
      ``energy``, a stored copy of the head; ``mahalanobis``, k x d class means, a d x d
      precision matrix and labels; ``knn``, its bank of ``n_bank`` training embeddings
      (``n_bank x d``);
    * the router's per-SKU thresholds (k float64).

    Labels are fixed-width unicode arrays, ``4 * label_chars`` bytes per SKU each. With the
    default dense fp32 setting this is exactly what a built bundle stores. ``dim`` and
    ``precision`` store every k-row matrix projected on ``dim`` principal axes (the basis,
    ``d x dim`` float32 plus the mean, counted once) at ``precision`` (int8: plus a float32
    scale per row), as a FAISS index above ``approximate_above`` SKUs; a k-NN bank or a
    precision matrix stays float32 at the table width.
    """
    if detector not in SIZING_DETECTORS:
        raise ValueError(f"detector must be one of {SIZING_DETECTORS}, got {detector!r}")
    if dim is not None and not 1 <= dim <= embedding_dim:
        raise ValueError(f"dim must be in [1, {embedding_dim}], got {dim!r}")
    k = int(n_skus)
    width = embedding_dim if dim is None else int(dim)
    approximate = k > approximate_above
    nlist = max(1, int(4 * k ** 0.5)) if approximate else 0
    # One k x width matrix at the setting (table_bytes counts a float32 bias per dense row;
    # the biases are counted below as the arrays that hold them).
    matrix = table_bytes(k, width, precision, approximate=approximate, nlist=nlist) - (0 if approximate else 4 * k)
    labels = 4 * int(label_chars) * k
    head = matrix + 4 * k + 4 * k + labels
    prototypes = matrix + 4 * k + 8 * k + labels
    if detector == "prototype":
        ood = matrix + labels
    elif detector in ("msp", "energy"):
        ood = head
    elif detector == "mahalanobis":
        ood = matrix + 4 * width * width + labels
    else:
        ood = 4 * int(n_bank) * width
    router = 8 * k
    basis = 0 if dim is None else (embedding_dim * width + embedding_dim) * 4
    return int(head + prototypes + ood + router + basis)


@dataclass(frozen=True)
class BackboneCost:
    """Measured ``W`` and ``A`` of a backbone variant, fp32 and INT8 (bytes)."""

    name: str
    weights_fp32: int
    activations_fp32: int
    weights_int8: int | None = None
    activations_int8: int | None = None
    embedding_dim: int = 1280


@dataclass(frozen=True)
class SizingChoice:
    """One candidate of :func:`size_for_device`, with its arithmetic.

    ``applicable`` is False for a table setting the caller cannot store (``skuscale build``
    stores dense fp32 tables only): such a candidate is sized and listed, never chosen.
    """

    backbone: str
    int8: bool
    table_dim: int | None
    table_precision: str
    n_skus: int
    weights_bytes: int
    activation_bytes: int
    table_bytes: int
    budget_bytes: float
    tier: str
    min_headroom: float
    applicable: bool = True

    @property
    def total_bytes(self) -> int:
        return self.weights_bytes + self.activation_bytes + self.table_bytes

    @property
    def headroom(self) -> float:
        return (self.budget_bytes - self.total_bytes) / self.budget_bytes

    @property
    def fits(self) -> bool:
        """Leaves ``min_headroom`` and can be applied: the only candidates :func:`size_for_device` chooses."""
        return self.applicable and self.headroom >= self.min_headroom

    def arithmetic(self) -> str:
        dim = "full" if self.table_dim is None else str(self.table_dim)
        return (f"{self.backbone} {'int8' if self.int8 else 'fp32'}, table {dim}-d {self.table_precision}: "
                f"W {self.weights_bytes / MIB:.2f} + A {self.activation_bytes / MIB:.2f} + "
                f"T {self.table_bytes / MIB:.2f} = {self.total_bytes / MIB:.2f} MiB of "
                f"{self.budget_bytes / MIB:.0f} MiB ({self.tier}): headroom {self.headroom:.1%}"
                f" {'>=' if self.headroom >= self.min_headroom else '<'} {self.min_headroom:.0%}"
                + ("" if self.applicable else " (not applicable: the build stores dense fp32 tables only)"))

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "total_bytes": self.total_bytes, "headroom": self.headroom, "fits": self.fits,
                "arithmetic": self.arithmetic()}


def size_for_device(
    profile: DeviceProfile,
    n_skus: int,
    backbones: Sequence[BackboneCost],
    *,
    min_headroom: float = 0.20,
    detector: str = "prototype",
    n_bank: int = 0,
    label_chars: int = DEFAULT_LABEL_CHARS,
    approximate_above: int = 10000,
    table_settings: Sequence[tuple[int | None, str]] = TABLE_SETTINGS,
    applicable: Sequence[tuple[int | None, str]] | None = None,
) -> tuple[SizingChoice, list[SizingChoice]]:
    """The most accurate configuration whose footprint leaves ``min_headroom`` on the lowest tier.

    Candidates are tried in this order, for each of ``backbones`` as given (most accurate
    first): the fp32 backbone with the full-width settings of ``table_settings`` (fp32,
    fp16, int8 rows), the INT8 backbone (when its costs are given) with the same, then the
    PCA-reduced settings (512, 256, 128, 64-d int8) with the fp32 backbone and then with
    INT8. ``T`` is :func:`class_table_bytes_for` with ``detector``, ``n_bank`` and
    ``label_chars``.

    ``applicable`` lists the table settings the caller can store (default: all); a
    candidate with another setting is sized and listed in ``tried`` but never chosen, so
    the choice is always one the caller applies (``skuscale build`` passes
    :data:`BUILD_TABLE_SETTINGS`).

    Returns
    -------
    choice : SizingChoice
    tried : list of SizingChoice
        Every candidate evaluated up to and including the choice.

    Raises
    ------
    SkuscaleError
        When nothing applicable fits; the message prints the arithmetic of every candidate.
    """
    if not 0.0 <= min_headroom < 1.0:
        raise ValueError(f"min_headroom must be in [0, 1), got {min_headroom!r}")
    allowed = None if applicable is None else {(d, p) for d, p in applicable}
    dense = [(d, p) for d, p in table_settings if d is None]
    reduced = [(d, p) for d, p in table_settings if d is not None]
    tier = profile.lowest_tier
    tried: list[SizingChoice] = []
    for cost in backbones:
        variants = [(False, cost.weights_fp32, cost.activations_fp32)]
        if cost.weights_int8 is not None and cost.activations_int8 is not None:
            variants.append((True, cost.weights_int8, cost.activations_int8))
        stages = [(v, dense) for v in variants] + [(v, reduced) for v in variants]
        for (int8, weights, activations), settings in stages:
            for dim, precision in settings:
                if dim is not None and dim >= cost.embedding_dim:
                    continue
                choice = SizingChoice(
                    backbone=cost.name, int8=int8, table_dim=dim, table_precision=precision, n_skus=n_skus,
                    weights_bytes=int(weights), activation_bytes=int(activations),
                    table_bytes=class_table_bytes_for(n_skus, cost.embedding_dim, dim=dim, precision=precision,
                                                      detector=detector, n_bank=n_bank, label_chars=label_chars,
                                                      approximate_above=approximate_above),
                    budget_bytes=tier.memory_bytes, tier=f"{profile.name}/{tier.name}", min_headroom=min_headroom,
                    applicable=allowed is None or (dim, precision) in allowed,
                )
                tried.append(choice)
                if choice.fits:
                    return choice, tried
    lines = "\n  ".join(c.arithmetic() for c in tried)
    unusable = [c for c in tried if not c.applicable and c.headroom >= min_headroom]
    hint = (f"\n{len(unusable)} candidate(s) with compact tables would leave the headroom, but the build cannot "
            "store them yet (docs/edge.md, 'The table setting')" if unusable else "")
    raise SkuscaleError(
        f"nothing fits {profile.name}/{tier.name} ({tier.memory_mb:g} MiB for the model) with {min_headroom:.0%} "
        f"headroom for {n_skus} SKUs:\n  {lines}{hint}"
    )


def detector_layout(detector) -> tuple[str, int]:
    """Registry name of a fitted OOD detector and the rows of its bank (k-NN; 0 otherwise)."""
    from skuscale.ood import detector_name

    bank = getattr(detector, "bank_", None)
    return detector_name(detector), 0 if bank is None else int(bank.shape[0])


def measure_bundle(root: str | os.PathLike, *, scale_points: Sequence[int] = SCALE_POINTS,
                   measure_rss: bool = True, profiles: Mapping[str, DeviceProfile] | None = None) -> dict[str, Any]:
    """Footprint of a bundle folder, measured: file sizes, ``W``/``A``, RSS delta, class tables, scaling.

    ``profiles`` (name -> profile) adds the headroom on each profile's lowest tier.
    """
    from skuscale.assess.footprint import class_table_bytes
    from skuscale.bundle import Bundle
    from skuscale.edge.pipeline import PIPELINE_FILE

    bundle = Bundle.load(root)
    root = Path(root)
    backbone_path = root / bundle.backbone["onnx"]
    weights, activations = runtime_weights_and_activations(backbone_path)
    parts, per_sku = class_table_bytes(bundle.model)
    tables = sum(parts.values())
    n = len(bundle.skus)
    dim = int(bundle.backbone.get("dim", 1280))
    detector, n_bank = detector_layout(bundle.model.detector)
    labels = np.asarray(bundle.model.head.classes_)
    label_chars = labels.dtype.itemsize // 4 if labels.dtype.kind == "U" else DEFAULT_LABEL_CHARS
    report: dict[str, Any] = {
        "bundle": str(root),
        "precision": bundle.backbone.get("precision", "fp32"),
        "files": {p.name: p.stat().st_size for p in sorted(root.iterdir()) if p.is_file()},
        "weights_bytes": weights,
        "activation_peak_bytes": activations,
        "class_table_bytes": tables,
        "class_table_parts": parts,
        "per_sku_bytes": per_sku,
        "n_skus": n,
        "total_bytes": weights + activations + tables,
    }
    if measure_rss:
        target = root / PIPELINE_FILE if (root / PIPELINE_FILE).is_file() else backbone_path
        report["session_rss"] = {"model": target.name, **session_rss_delta(target)}
    scale = []
    for k in scale_points:
        # The dense fp32 row scales the measured tables (fixed parts, e.g. a k-NN bank, stay fixed).
        row = {"n_skus": k, "dense_fp32_table_bytes": int(tables + per_sku * (k - n))}
        row["dense_fp32_total_bytes"] = weights + activations + row["dense_fp32_table_bytes"]
        for tdim, precision in ((None, "int8"), (256, "int8"), (128, "int8")):
            key = f"table_{tdim or dim}d_{precision}"
            row[f"{key}_bytes"] = class_table_bytes_for(k, dim, dim=tdim, precision=precision, detector=detector,
                                                        n_bank=n_bank, label_chars=label_chars)
            row[f"{key}_total_bytes"] = weights + activations + row[f"{key}_bytes"]
        scale.append(row)
    report["scale"] = scale
    if profiles:
        report["profiles"] = {
            name: {"tier": p.lowest_tier.name, "memory_mb": p.lowest_tier.memory_mb,  # MiB (see profiles)
                   "headroom": (p.lowest_tier.memory_bytes - report["total_bytes"]) / p.lowest_tier.memory_bytes}
            for name, p in profiles.items()
        }
    return report
