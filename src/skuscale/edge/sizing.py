"""``skuscale build --device PROFILE``: size the model for the device before training.

"Memory budgets before architecture selection": the backbone variant, INT8 and the
class-table setting are chosen from measured costs and the catalogue size *before* any
image is embedded, and the build stops at once, printing the arithmetic, when nothing
leaves the required headroom on the profile's lowest tier.

Costs are measured, not looked up: each installed backbone variant is exported to ONNX
(torch, in :mod:`skuscale.embed`) and its runtime graph's ``W`` and ``A`` are measured
(:func:`skuscale.edge.footprint.runtime_weights_and_activations`, the function check 4
uses); the INT8 variant is quantised on a handful of the training images and measured
the same way, only when no fp32 configuration the build can store fits.

Only configurations the build applies are chosen: the backbone variant, INT8 and dense
fp32 class tables (:data:`skuscale.edge.footprint.BUILD_TABLE_SETTINGS`). Compact table
settings (fp16/int8 rows, PCA) are sized and listed with the candidates, marked as not
applicable, so a failure says when only they would have fitted.
"""

from __future__ import annotations

import importlib.util
import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from skuscale.edge.footprint import (
    BUILD_TABLE_SETTINGS,
    DEFAULT_LABEL_CHARS,
    BackboneCost,
    SizingChoice,
    runtime_weights_and_activations,
    size_for_device,
)
from skuscale.exceptions import SkuscaleError

#: Calibration images used to measure an INT8 variant's footprint.
SIZING_CALIBRATION_IMAGES = 16


@dataclass
class DevicePlan:
    """The sizing decision recorded in the bundle (``metadata["device_sizing"]``).

    Everything chosen is applied by the build: backbone, INT8, and the dense fp32 class
    tables the bundle stores (:func:`plan_for_device` never chooses a compact table
    setting; see "Footprint and device sizing" in docs/edge.md).
    """

    profile: str
    choice: SizingChoice
    tried: list[SizingChoice]
    skipped_backbones: dict[str, str] = field(default_factory=dict)

    @property
    def table_setting_applied(self) -> bool:
        """Whether the built bundle has the chosen table setting (only dense fp32 tables can be stored)."""
        return self.choice.table_dim is None and self.choice.table_precision == "fp32"

    def to_dict(self) -> dict[str, Any]:
        return {
            "profile": self.profile,
            "choice": self.choice.to_dict(),
            "tried": [c.arithmetic() for c in self.tried],
            "skipped_backbones": self.skipped_backbones,
            "table_setting_applied": self.table_setting_applied,
        }


def installed_backbones(preferred: str) -> tuple[list[str], dict[str, str]]:
    """Backbone variants whose weights are installed, most accurate (largest) first, and the skipped ones."""
    from skuscale.embed.backbone import BACKBONES

    ordered = sorted(BACKBONES, key=lambda n: BACKBONES[n].image_size, reverse=True)
    if preferred in BACKBONES:
        # Never choose a bigger variant than the one asked for.
        ordered = [n for n in ordered if BACKBONES[n].image_size <= BACKBONES[preferred].image_size]
    found, skipped = [], {}
    for name in ordered:
        if importlib.util.find_spec(BACKBONES[name].weights_module) is None:
            skipped[name] = f"weights package {BACKBONES[name].weights_module.replace('_', '-')} not installed"
        else:
            found.append(name)
    return found, skipped


def measure_backbone(name: str, calibration_paths: Sequence[str | os.PathLike] = (), *,
                     int8: bool = False) -> BackboneCost:
    """Export ``name`` to ONNX and measure ``W``/``A`` (and INT8's, on ``calibration_paths``, when ``int8``)."""
    from skuscale.embed.backbone import BACKBONES, load_backbone
    from skuscale.embed.export import export_onnx

    spec = BACKBONES[name]
    with tempfile.TemporaryDirectory() as work:
        fp32 = export_onnx(load_backbone(name), Path(work) / "backbone.onnx", image_size=spec.image_size)
        w32, a32 = runtime_weights_and_activations(fp32)
        w8 = a8 = None
        if int8:
            from skuscale.edge.quantize import quantize_backbone

            if not calibration_paths:
                raise SkuscaleError("measuring an INT8 backbone needs calibration images")
            q = quantize_backbone(fp32, Path(work) / "int8.onnx", calibration_paths, spec.default_preprocessing())
            w8, a8 = runtime_weights_and_activations(q)
    return BackboneCost(name=name, weights_fp32=w32, activations_fp32=a32, weights_int8=w8, activations_int8=a8,
                        embedding_dim=spec.dim)


def plan_for_device(
    profile_name: str | os.PathLike,
    n_skus: int,
    *,
    backbone: str,
    calibration_paths: Sequence[str | os.PathLike],
    min_headroom: float = 0.20,
    step: Callable[[str], None] | None = None,
    detector: str = "prototype",
    sku_names: Sequence[str] | None = None,
) -> DevicePlan:
    """Choose backbone and INT8 for ``profile_name`` before training, with dense fp32 tables.

    The class tables are counted as the bundle will store them
    (:func:`skuscale.edge.footprint.class_table_bytes_for`) for ``detector``, which
    training has not chosen yet (default ``prototype``: a ``mahalanobis`` detector adds a
    d x d matrix, a ``knn`` one its bank of one row per training image); ``sku_names``
    gives the label width (default :data:`~skuscale.edge.footprint.DEFAULT_LABEL_CHARS`
    characters). Candidates are tried in :func:`~skuscale.edge.footprint.size_for_device`'s
    order; only :data:`~skuscale.edge.footprint.BUILD_TABLE_SETTINGS` can be chosen.

    Raises
    ------
    SkuscaleError
        When nothing fits (the message holds the arithmetic of every candidate), the
        profile is invalid, or no backbone's weights are installed.
    """
    from skuscale.assess.profiles import load_profile

    say = step or (lambda message: None)
    profile = load_profile(profile_name)
    names, skipped = installed_backbones(backbone)
    if not names:
        raise SkuscaleError(f"no backbone weights installed for device sizing: {skipped}")
    say(f"sizing for {profile.name} (lowest tier {profile.lowest_tier.name}, {profile.lowest_tier.memory_mb:g} MiB): "
        f"measuring {', '.join(names)} fp32")
    label_chars = max((len(str(s)) for s in sku_names), default=0) if sku_names is not None else DEFAULT_LABEL_CHARS
    options = {"min_headroom": min_headroom, "detector": detector, "n_bank": len(calibration_paths),
               "label_chars": label_chars, "applicable": BUILD_TABLE_SETTINGS}
    costs = [measure_backbone(n) for n in names]
    try:
        choice, tried = size_for_device(profile, n_skus, costs, **options)
    except SkuscaleError:
        say("no fp32 configuration the build can store fits: measuring INT8")
        cal = list(calibration_paths)[:: max(1, len(calibration_paths) // SIZING_CALIBRATION_IMAGES)]
        cal = cal[:SIZING_CALIBRATION_IMAGES]
        costs = [measure_backbone(n, cal, int8=True) for n in names]
        choice, tried = size_for_device(profile, n_skus, costs, **options)
    return DevicePlan(profile=profile.name, choice=choice, tried=tried, skipped_backbones=skipped)
