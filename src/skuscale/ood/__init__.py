"""Out-of-distribution detection on embeddings: detectors, registry and metrics.

Every detector follows :class:`~skuscale.ood.base.BaseDetector`: ``fit(X, y)``
returns the detector, ``score_samples(X)`` returns one float per row, higher
meaning more out-of-distribution. Build one by name with :func:`make_detector`.
"""

from skuscale.ood.base import BaseDetector
from skuscale.ood.detectors import (
    DETECTORS,
    EnergyDetector,
    KNNCosineDetector,
    MahalanobisDetector,
    MaxSoftmaxDetector,
    PrototypeCosineDetector,
    detector_name,
    make_detector,
)
from skuscale.ood.metrics import auroc, detection_rate, threshold_at_flag_rate

__all__ = [
    "DETECTORS",
    "BaseDetector",
    "EnergyDetector",
    "KNNCosineDetector",
    "MahalanobisDetector",
    "MaxSoftmaxDetector",
    "PrototypeCosineDetector",
    "auroc",
    "detection_rate",
    "detector_name",
    "make_detector",
    "threshold_at_flag_rate",
]
