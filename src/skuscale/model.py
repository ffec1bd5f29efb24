"""The recognition model on embeddings: head, temperature, OOD detector and router.

Everything here is numpy: it runs the same at build time, in tests and in the
service, and needs no torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from skuscale._base import check_X, softmax
from skuscale.head.linear import LinearHead
from skuscale.head.prototypes import PrototypeHead
from skuscale.ood import BaseDetector
from skuscale.routing import Decision, Router


@dataclass
class RecognitionModel:
    """A fitted decision stack over backbone embeddings.

    Attributes
    ----------
    head : LinearHead
        Logits over ``head.classes_`` (the catalogue order).
    temperature : float
        Temperature-scaling divisor (Guo et al. 2017) applied to the head's logits.
    prototypes : PrototypeHead
        Cosine prototypes per SKU, for enrolment and similarity checks.
    detector : BaseDetector
        Out-of-distribution scorer, higher = more unknown.
    router : Router
        Per-SKU thresholds and the OOD threshold that turn scores into bands.
    sku_to_category : dict
    """

    head: LinearHead
    temperature: float
    prototypes: PrototypeHead
    detector: BaseDetector
    router: Router
    sku_to_category: dict[str, str] = field(default_factory=dict)

    @property
    def skus(self) -> list[str]:
        return [str(s) for s in self.head.classes_]

    def logits(self, X) -> np.ndarray:
        return self.head.decision_function(X)

    def predict_proba(self, X) -> np.ndarray:
        """Calibrated SKU probabilities (n, k)."""
        return softmax(self.logits(X) / self.temperature)

    def ood_scores(self, X) -> np.ndarray:
        return self.detector.score_samples(X).astype(np.float32)

    def decide(self, X) -> list[Decision]:
        """One routed :class:`~skuscale.routing.Decision` per embedding."""
        X = check_X(X)
        return self.router.route(self.predict_proba(X), self.ood_scores(X))

    def decide_arrays(self, X) -> dict[str, np.ndarray]:
        X = check_X(X)
        return self.router.route_arrays(self.predict_proba(X), self.ood_scores(X))
