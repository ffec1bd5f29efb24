"""Per-SKU rolling accuracy from feedback and review resolutions."""

from __future__ import annotations

import datetime as _dt
import itertools
import threading
from collections import OrderedDict
from collections.abc import Hashable, Iterable
from typing import NamedTuple


class Outcome(NamedTuple):
    """One label of an event: was the SKU it was predicted as right?

    ``event_id`` identifies the event, so that a second label of it (a cashier's
    correction after a reviewer's resolution, a repeated feedback call) replaces the
    first instead of counting again; ``at`` is when the label was given (naive UTC, as
    the database stores it). An outcome without ``event_id`` is an event of its own.
    """

    sku: str
    correct: bool
    event_id: Hashable | None = None
    at: _dt.datetime | None = None


class RollingAccuracy:
    """Accuracy of each SKU's predictions over its last ``window`` labelled events.

    An event counts for the SKU it was *predicted* as, so the value answers "when the
    service says X, how often is it X?" (the precision-like view that an auto-accept
    threshold is about).

    Each event counts once, with its latest label: a new label of an event that is in
    its SKU's window replaces the earlier one, and the event moves to the window's newest
    end (the window holds the ``window`` events labelled most recently). A label older
    (by ``at``) than the one the window holds for that event is ignored, so the order in
    which two labels arrive does not matter.

    Parameters
    ----------
    window : int
        Labelled events kept per SKU.
    """

    def __init__(self, window: int = 200):
        if window < 1:
            raise ValueError("window must be positive")
        self.window = int(window)
        # SKU -> event key -> (correct, at), oldest label first.
        self._outcomes: dict[str, OrderedDict[Hashable, tuple[bool, _dt.datetime | None]]] = {}
        self._anonymous = itertools.count()
        self._lock = threading.Lock()

    def add(self, sku: str, correct: bool, *, event_id: Hashable | None = None,
            at: _dt.datetime | None = None) -> None:
        """Record one label; see :class:`Outcome`."""
        self.extend([Outcome(sku, correct, event_id, at)])

    def extend(self, outcomes: Iterable[Outcome | tuple]) -> None:
        """:meth:`add` each of ``outcomes`` (``Outcome``, or ``(sku, correct)`` pairs), oldest first."""
        with self._lock:
            for item in outcomes:
                sku, correct, event_id, at = Outcome(*item)
                events = self._outcomes.setdefault(sku, OrderedDict())
                key = ("anonymous", next(self._anonymous)) if event_id is None else ("event", event_id)
                held = events.get(key)
                if held is not None:
                    if at is not None and held[1] is not None and at < held[1]:
                        continue  # an older label of an event whose newer one is counted already
                    del events[key]
                events[key] = (bool(correct), at)
                while len(events) > self.window:
                    events.popitem(last=False)

    def values(self) -> dict[str, tuple[float, int]]:
        """SKU -> (accuracy, number of labelled events in the window)."""
        with self._lock:
            out = {}
            for sku, events in self._outcomes.items():
                if events:
                    out[sku] = (sum(ok for ok, _ in events.values()) / len(events), len(events))
            return out
