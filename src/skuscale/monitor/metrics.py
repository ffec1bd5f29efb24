"""Prometheus metrics of the recognition service, on the app's own ``CollectorRegistry``.

Label values are only ever catalogue SKUs, bands, outcomes, route templates and a fixed
set of HTTP methods (:func:`skuscale.serve.guard.method_label`): free text from requests
never becomes a label (that would let a client blow up the number of series).

With several worker processes (``skuscale serve --workers N``, or any server that sets
``PROMETHEUS_MULTIPROC_DIR``), counters, histograms and gauges are written to files in
that directory by every process and summed at scrape time (prometheus_client's
multiprocess mode), so any worker answers ``/metrics`` with the service's totals.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from skuscale.monitor.accuracy import RollingAccuracy

BANDS = ("accept", "verify", "unknown")
OUTCOMES = ("correct", "incorrect")
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0)
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def multiprocess_dir() -> str | None:
    """The directory of prometheus_client's multiprocess mode, or None when it is off."""
    return os.environ.get(MULTIPROC_ENV) or None


def ood_buckets(threshold: float) -> tuple[float, ...]:
    """Histogram buckets around the OOD threshold (detectors' score scales differ by orders of magnitude)."""
    scale = abs(threshold) if threshold != 0 else 1.0
    steps = (-1.0, -0.5, -0.25, -0.1, -0.05, 0.0, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0)
    return tuple(sorted({round(threshold + k * scale, 9) for k in steps}))


class _QueueAndAccuracy(Collector):
    def __init__(self, queue_depth: Callable[[], dict[str, int]], accuracy: RollingAccuracy):
        self.queue_depth = queue_depth
        self.accuracy = accuracy

    def collect(self):
        depth = GaugeMetricFamily(
            "skuscale_review_queue_depth", "Pending review items per band.", labels=["band"]
        )
        try:
            counts = self.queue_depth()
        except Exception:  # a scrape must not fail because the database is briefly away
            counts = {}
        for band in ("verify", "unknown"):
            depth.add_metric([band], float(counts.get(band, 0)))
        yield depth
        acc = GaugeMetricFamily(
            "skuscale_sku_accuracy",
            "Share of correct predictions per predicted SKU over its rolling window of labelled events "
            "(each event once, with its latest label).",
            labels=["sku"],
        )
        n = GaugeMetricFamily(
            "skuscale_sku_accuracy_samples", "Labelled events in each SKU's accuracy window.", labels=["sku"]
        )
        for sku, (value, count) in sorted(self.accuracy.values().items()):
            acc.add_metric([sku], value)
            n.add_metric([sku], float(count))
        yield acc
        yield n


class ServiceMetrics:
    """All service metrics, registered on ``registry``.

    In multiprocess mode (``PROMETHEUS_MULTIPROC_DIR`` set before prometheus_client was
    imported) the counters, histograms and gauges live in that directory, and
    :meth:`exposition` sums them over every worker process. The bundle info, the queue
    depth and the per-SKU accuracy are not process values: they are collected by this
    process at scrape time (queue depth and accuracy come from the database).

    Parameters
    ----------
    registry : CollectorRegistry
    ood_threshold : float
        The bundle's OOD threshold (sets the OOD histogram's buckets).
    bundle_info : dict
        Labels of ``skuscale_bundle_info``.
    queue_depth : callable
        Returns pending review items per band; called at scrape time.
    accuracy : RollingAccuracy
    """

    def __init__(
        self,
        registry: CollectorRegistry,
        *,
        ood_threshold: float,
        bundle_info: dict[str, str],
        queue_depth: Callable[[], dict[str, int]],
        accuracy: RollingAccuracy,
    ):
        self.registry = registry
        self.accuracy = accuracy
        self.multiprocess_dir = multiprocess_dir()
        # What a scrape exposes. In multiprocess mode: every worker's files, plus the metrics
        # this process collects itself (prometheus_client cannot share those).
        self.scrape_registry = registry
        if self.multiprocess_dir:
            self.scrape_registry = CollectorRegistry()
            MultiProcessCollector(self.scrape_registry, path=self.multiprocess_dir)
        self.recognitions = Counter(
            "skuscale_recognitions", "Recognised images per predicted SKU and band.", ["sku", "band"],
            registry=registry,
        )
        self.feedback = Counter(
            "skuscale_feedback",
            "Labels (review resolutions and downstream feedback calls, each counted) per predicted SKU and outcome.",
            ["sku", "outcome"],
            registry=registry,
        )
        self.resolutions = Counter(
            "skuscale_resolutions", "Review resolutions per decision.", ["decision"], registry=registry
        )
        self.enrolments = Counter("skuscale_enrolments", "SKU enrolments accepted.", registry=registry)
        self.ood_score = Histogram(
            "skuscale_ood_score", "OOD score of recognised images (higher = more unknown).", ["band"],
            buckets=ood_buckets(ood_threshold), registry=registry,
        )
        self.latency = Histogram(
            "skuscale_request_duration_seconds", "HTTP request latency per route template.",
            ["method", "route", "status"], buckets=LATENCY_BUCKETS, registry=registry,
        )
        self.webhook_deliveries = Counter(
            "skuscale_webhook_deliveries", "Webhook delivery attempts per result.", ["result"], registry=registry
        )
        # "mostrecent": with several workers, the value last set by any of them.
        self.ood_threshold = Gauge("skuscale_ood_threshold", "The bundle's OOD threshold.", registry=registry,
                                   multiprocess_mode="mostrecent")
        self.ood_threshold.set(ood_threshold)
        self.bundle = Info("skuscale_bundle", "The loaded bundle.", registry=self.scrape_registry)
        self.bundle.info(bundle_info)
        self.catalogue_size = Gauge(
            "skuscale_catalogue_skus", "SKUs in the catalogue.", ["source"], registry=registry,
            multiprocess_mode="mostrecent",
        )
        self.scrape_registry.register(_QueueAndAccuracy(queue_depth, accuracy))

    def exposition(self) -> bytes:
        """The Prometheus text format of every metric (summed over worker processes in multiprocess mode)."""
        return generate_latest(self.scrape_registry)

    def record_recognition(self, sku: str, band: str, ood_score: float) -> None:
        self.recognitions.labels(sku=sku, band=band).inc()
        self.ood_score.labels(band=band).observe(ood_score)

    def record_outcome(
        self, sku: str, correct: bool, *, event_id: str | None = None, at: datetime.datetime | None = None
    ) -> None:
        """Count one label (a resolution or a feedback call) of the event ``event_id``, given at ``at``.

        ``skuscale_feedback_total`` counts every label. The per-SKU accuracy counts each
        event once, with its latest label (:class:`~skuscale.monitor.accuracy.RollingAccuracy`).
        """
        self.feedback.labels(sku=sku, outcome=OUTCOMES[0] if correct else OUTCOMES[1]).inc()
        if not self.multiprocess_dir:
            # With several workers the accuracy follows the database, where every worker's labels
            # are; adding this one here too would count it twice.
            self.accuracy.add(sku, correct, event_id=event_id, at=at)
