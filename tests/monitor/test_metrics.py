"""Rolling per-SKU accuracy and the Prometheus metric set (known answers, own registry)."""

from __future__ import annotations

import datetime as _dt

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from skuscale.monitor.accuracy import Outcome, RollingAccuracy
from skuscale.monitor.metrics import ServiceMetrics, ood_buckets


def test_rolling_accuracy_window():
    acc = RollingAccuracy(window=3)
    for ok in (False, False, True, True, True):
        acc.add("A", ok)
    acc.add("B", False)
    assert acc.values() == {"A": (1.0, 3), "B": (0.0, 1)}
    acc.add("A", False)
    assert acc.values()["A"] == (pytest.approx(2 / 3), 3)
    with pytest.raises(ValueError):
        RollingAccuracy(window=0)


def test_rolling_accuracy_extend_keeps_the_last_window_of_each_sku():
    acc = RollingAccuracy(window=2)
    acc.add("C", True)
    acc.extend([("A", True), ("A", False), ("B", True), ("A", False)])
    assert acc.values() == {"A": (0.0, 2), "B": (1.0, 1), "C": (1.0, 1)}
    acc.add("B", False)
    assert acc.values()["B"] == (0.5, 2)


T0 = _dt.datetime(2026, 11, 27, 12, 0, 0)


def _at(seconds: float) -> _dt.datetime:
    return T0 + _dt.timedelta(seconds=seconds)


def test_rolling_accuracy_counts_each_event_once_with_its_latest_label():
    acc = RollingAccuracy(window=10)
    # Three feedback calls on one event, then a reviewer's resolution and a cashier's correction of another.
    acc.add("Banana", False, event_id="e1", at=_at(1))
    acc.add("Banana", False, event_id="e1", at=_at(2))
    acc.add("Banana", True, event_id="e1", at=_at(3))
    assert acc.values() == {"Banana": (1.0, 1)}
    acc.extend([Outcome("Banana", True, "e2", _at(4)), Outcome("Banana", False, "e2", _at(5))])
    assert acc.values() == {"Banana": (0.5, 2)}
    # A label older than the one counted (a slow request) does not win over it.
    acc.add("Banana", True, event_id="e2", at=_at(4.5))
    assert acc.values() == {"Banana": (0.5, 2)}
    # Labels without an event id are events of their own.
    acc.add("Banana", True)
    acc.add("Banana", True)
    assert acc.values() == {"Banana": (0.75, 4)}


def test_rolling_accuracy_relabelled_event_moves_to_the_newest_end_of_the_window():
    acc = RollingAccuracy(window=2)
    acc.extend([Outcome("A", False, "e1", _at(1)), Outcome("A", True, "e2", _at(2))])
    acc.add("A", True, event_id="e1", at=_at(3))  # e1 relabelled: now the newest, e2 the oldest
    assert acc.values() == {"A": (1.0, 2)}
    acc.add("A", False, event_id="e3", at=_at(4))  # pushes out e2, not e1
    assert acc.values() == {"A": (0.5, 2)}
    acc.add("A", True, event_id="e3", at=_at(5))
    assert acc.values() == {"A": (1.0, 2)}


def test_record_outcome_counts_every_label_but_each_event_once_in_the_accuracy():
    reg = CollectorRegistry()
    m = ServiceMetrics(reg, ood_threshold=0.4, bundle_info={}, queue_depth=dict, accuracy=RollingAccuracy(10))
    for k, ok in enumerate((False, False, True)):
        m.record_outcome("Banana", ok, event_id="e1", at=_at(k))
    text = generate_latest(reg).decode()
    assert 'skuscale_feedback_total{outcome="incorrect",sku="Banana"} 2.0' in text
    assert 'skuscale_feedback_total{outcome="correct",sku="Banana"} 1.0' in text
    assert 'skuscale_sku_accuracy_samples{sku="Banana"} 1.0' in text
    assert 'skuscale_sku_accuracy{sku="Banana"} 1.0' in text


def test_ood_buckets_straddle_threshold_for_any_sign():
    for thr in (-0.27, 0.39, 2801.7, 0.0):
        b = ood_buckets(thr)
        assert list(b) == sorted(b) and len(set(b)) == len(b)
        assert min(b) < thr <= max(b) and thr in b


def test_metrics_text():
    reg = CollectorRegistry()
    acc = RollingAccuracy(10)
    m = ServiceMetrics(reg, ood_threshold=0.4, bundle_info={"version": "abc", "n_skus": "2"},
                       queue_depth=lambda: {"verify": 3}, accuracy=acc)
    m.record_recognition("A", "verify", 0.1)
    m.record_recognition("A", "verify", 0.2)
    m.record_outcome("A", True)
    m.record_outcome("A", False)
    text = generate_latest(reg).decode()
    assert 'skuscale_recognitions_total{band="verify",sku="A"} 2.0' in text
    assert 'skuscale_feedback_total{outcome="correct",sku="A"} 1.0' in text
    assert 'skuscale_feedback_total{outcome="incorrect",sku="A"} 1.0' in text
    assert 'skuscale_sku_accuracy{sku="A"} 0.5' in text
    assert 'skuscale_review_queue_depth{band="verify"} 3.0' in text
    assert 'skuscale_review_queue_depth{band="unknown"} 0.0' in text
    assert 'skuscale_bundle_info{n_skus="2",version="abc"} 1.0' in text
    assert 'skuscale_ood_score_count{band="verify"} 2.0' in text
    assert m.multiprocess_dir is None and m.exposition().decode() == text


def test_scrape_survives_a_failing_queue_query():
    def broken():
        raise RuntimeError("database away")

    reg = CollectorRegistry()
    ServiceMetrics(reg, ood_threshold=1.0, bundle_info={}, queue_depth=broken, accuracy=RollingAccuracy())
    assert 'skuscale_review_queue_depth{band="verify"} 0.0' in generate_latest(reg).decode()
