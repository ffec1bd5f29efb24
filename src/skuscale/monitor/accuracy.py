"""Per-SKU rolling accuracy from feedback and review resolutions."""

from __future__ import annotations

import threading
from collections import deque


class RollingAccuracy:
    """Accuracy of each SKU's predictions over its last ``window`` labelled events.

    An event counts for the SKU it was *predicted* as, so the value answers "when the
    service says X, how often is it X?" (the precision-like view that an auto-accept
    threshold is about).

    Parameters
    ----------
    window : int
        Labelled events kept per SKU.
    """

    def __init__(self, window: int = 200):
        if window < 1:
            raise ValueError("window must be positive")
        self.window = int(window)
        self._outcomes: dict[str, deque[bool]] = {}
        self._lock = threading.Lock()

    def add(self, sku: str, correct: bool) -> None:
        self.extend([(sku, correct)])

    def extend(self, outcomes) -> None:
        """:meth:`add` each of ``outcomes``, (SKU, correct) pairs, oldest first."""
        with self._lock:
            for sku, correct in outcomes:
                self._outcomes.setdefault(sku, deque(maxlen=self.window)).append(bool(correct))

    def values(self) -> dict[str, tuple[float, int]]:
        """SKU -> (accuracy, number of labelled events in the window)."""
        with self._lock:
            return {s: (sum(d) / len(d), len(d)) for s, d in self._outcomes.items() if d}
