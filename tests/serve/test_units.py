"""Service pieces without HTTP: enrolment into a model, image store, token checks, migrations."""

from __future__ import annotations

import datetime as _dt

import numpy as np
import pytest
import sqlalchemy as sa

from skuscale.head.linear import LinearHead
from skuscale.head.prototypes import PrototypeHead
from skuscale.model import RecognitionModel
from skuscale.monitor.accuracy import Outcome, RollingAccuracy
from skuscale.ood.detectors import (
    KNNCosineDetector,
    MahalanobisDetector,
    MaxSoftmaxDetector,
    PrototypeCosineDetector,
)
from skuscale.routing import Router
from skuscale.routing.thresholds import ThresholdTable
from skuscale.serve import repository as repo
from skuscale.serve.auth import identify
from skuscale.serve.db import Event, Feedback, make_engine, make_sessionmaker, migrate
from skuscale.serve.images import ImageStore
from skuscale.serve.recognizer import enrol_into_model
from skuscale.serve.settings import hash_token


def _toy(detector_cls, seed=0):
    rng = np.random.default_rng(seed)
    d, centres = 16, np.eye(16)[:3] * 4 + 1.0  # a shared component, as real embeddings have
    X = np.vstack([c + rng.normal(0, 0.3, (20, d)) for c in centres]).astype(np.float32)
    y = np.repeat(["a", "b", "c"], 20)
    head = LinearHead(C=10.0).fit(X, y)
    det = MaxSoftmaxDetector.from_head(head) if detector_cls is MaxSoftmaxDetector else detector_cls().fit(X, y)
    if detector_cls is MaxSoftmaxDetector:
        det = MaxSoftmaxDetector.from_head(LinearHead(C=10.0).fit(X, y))  # an equal copy, as after Bundle.load
    table = ThresholdTable(per_sku={"a": 0.9}, source={"a": "sku"}, per_category={"fruit": 0.7}, global_=0.8,
                           target_precision=0.99, min_support=20)
    router = Router(skus=["a", "b", "c"], sku_to_category={"a": "fruit"}, sku_thresholds=table,
                    ood_threshold=-0.5 if detector_cls is MaxSoftmaxDetector else 2 * float(det.score_samples(X).max()))
    model = RecognitionModel(head=head, temperature=1.0, prototypes=PrototypeHead().fit(X, y), detector=det,
                             router=router, sku_to_category={"a": "fruit"})
    new = (np.eye(16)[5] * 4 + 1.0 + rng.normal(0, 0.3, (24, d))).astype(np.float32)
    return model, new


@pytest.mark.parametrize("detector_cls", [MaxSoftmaxDetector, PrototypeCosineDetector, KNNCosineDetector,
                                          MahalanobisDetector])
def test_enrolment_makes_new_sku_recognisable(detector_cls):
    model, new = _toy(detector_cls)
    before = model.decide(new[12:])
    assert all(d.sku != "z" for d in before)
    enrol_into_model(model, "z", new[:12], "fruit")
    assert model.skus == ["a", "b", "c", "z"] and model.router.skus == model.skus
    assert model.router.sku_thresholds.threshold_for("z") == 0.7  # category back-off
    after = model.decide(new[12:])
    assert all(d.sku == "z" for d in after)
    assert sum(d.band == "accept" for d in after) >= 10, [(d.band, d.confidence) for d in after]
    if detector_cls is MaxSoftmaxDetector:
        assert model.detector.head_ is model.head


def test_enrolment_threshold_global_and_configured():
    model, new = _toy(PrototypeCosineDetector)
    enrol_into_model(model, "z", new[:6], None)
    assert model.router.sku_thresholds.threshold_for("z") == 0.8
    enrol_into_model(model, "y", new[:6], "fruit", threshold=0.95)
    assert model.router.sku_thresholds.threshold_for("y") == 0.95


def test_image_store_is_content_addressed(tmp_path):
    store = ImageStore(tmp_path)
    sha = store.put(b"abc")
    assert sha == store.put(b"abc") and store.get(sha) == b"abc"
    assert store.path(sha).parent.name == sha[:2]
    with pytest.raises(ValueError):
        store.path("../../etc/passwd")


def test_identify_tokens():
    hashes = {hash_token("t-dev"): "device", hash_token("t-rev"): "reviewer"}
    assert identify("t-dev", hashes)[0] == "device"
    assert identify("t-rev", hashes)[0] == "reviewer"
    assert identify("t-other", hashes) is None and identify(None, hashes) is None and identify("", hashes) is None


def test_migrations_are_idempotent(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path / 'db.sqlite'}")
    migrate(engine)
    migrate(engine)
    with engine.connect() as conn:
        assert conn.execute(sa.text("PRAGMA journal_mode")).scalar() == "wal"
        tables = set(sa.inspect(conn).get_table_names())
        assert conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar() == "0002"
        indexes = sa.inspect(conn).get_indexes("events")
    assert any(ix["column_names"] == ["resolved_at"] for ix in indexes)
    assert {"events", "images", "feedback", "enrolments", "webhooks", "outbox"} <= tables


def test_image_label_counts_from_1_and_quotes_the_filename_safely():
    from skuscale.serve.app import image_label

    assert image_label(0, 2, "bad.jpg") == "image 1 of 2 ('bad.jpg')"
    assert image_label(1, 2) == image_label(1, 2, "") == "image 2 of 2"
    assert image_label(2, 3, event_id="ab12") == "image 3 of 3 (event ab12)"
    # Control characters and unpaired surrogates are escaped (the answer is JSON), a long name is cut.
    assert image_label(0, 1, "a\nb\ud800.jpg").encode("utf-8") == b"image 1 of 1 ('a\\nb\\ud800.jpg')"
    assert image_label(0, 1, "n" * 500) == "image 1 of 1 ('" + "n" * 100 + "...')"


def test_serving_path_does_not_import_torch():
    import subprocess
    import sys

    code = ("import sys, skuscale.serve.app, skuscale.cli.serve, skuscale.client; "
            "sys.exit(1 if 'torch' in sys.modules else 0)")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def _label_db(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path / 'labels.sqlite'}")
    migrate(engine)
    return make_sessionmaker(engine)


T0 = _dt.datetime(2026, 11, 27, 12, 0, 0)


def _resolved(session, n, at, *, sku="a", final="a"):
    session.add(Event(id=f"e{n}", created_at=at, band="verify", sku=sku, confidence=0.9, ood_score=0.0,
                      candidates=[], status="final", final_sku=final, resolution="sku", resolved_at=at,
                      resolved_by="r"))


def _feedback(session, event_id, at, outcome):
    session.add(Feedback(event_id=event_id, truth_sku=None, outcome=outcome, created_at=at))


def _read(feed, session) -> list[tuple[str, bool]]:
    return [(label.sku, label.correct) for label in feed.read(session)]


def test_label_feed_returns_each_label_once_oldest_first(tmp_path):
    Session = _label_db(tmp_path)
    feed = repo.LabelFeed()
    with Session() as s:
        assert feed.read(s) == []
        _resolved(s, 1, T0, sku="a", final="a")
        _resolved(s, 2, T0 + _dt.timedelta(seconds=2), sku="b", final="a")
        s.flush()
        _feedback(s, "e1", T0 + _dt.timedelta(seconds=1), "incorrect")
        s.commit()
        assert feed.read(s) == [
            Outcome("a", True, "e1", T0),
            Outcome("a", False, "e1", T0 + _dt.timedelta(seconds=1)),
            Outcome("b", False, "e2", T0 + _dt.timedelta(seconds=2)),
        ]
        assert feed.read(s) == []
        _feedback(s, "e2", T0 + _dt.timedelta(seconds=3), "correct")
        s.commit()
        assert feed.read(s) == [Outcome("b", True, "e2", T0 + _dt.timedelta(seconds=3))]
        assert feed.read(s) == []


def test_label_feed_into_rolling_accuracy_counts_each_event_once(tmp_path):
    """What a worker of several does on a scrape: every label of an event is read, the latest one counts."""
    Session = _label_db(tmp_path)
    feed, acc = repo.LabelFeed(), RollingAccuracy(window=10)
    with Session() as s:
        _resolved(s, 1, T0, sku="a", final="a")  # the reviewer said a: right
        _resolved(s, 2, T0 + _dt.timedelta(seconds=1), sku="a", final="b")
        s.flush()
        for k in range(3):  # a cashier's correction of e1, sent three times
            _feedback(s, "e1", T0 + _dt.timedelta(seconds=2 + k), "incorrect")
        s.commit()
        acc.extend(feed.read(s))
        assert acc.values() == {"a": (0.0, 2)}
        _feedback(s, "e2", T0 + _dt.timedelta(seconds=10), "correct")  # read by a later scrape
        s.commit()
        acc.extend(feed.read(s))
        assert acc.values() == {"a": (0.5, 2)}


def test_label_feed_reads_a_late_commit_within_lateness_and_not_beyond(tmp_path):
    Session = _label_db(tmp_path)
    feed = repo.LabelFeed(lateness=_dt.timedelta(seconds=60))
    with Session() as s:
        _resolved(s, 1, T0 + _dt.timedelta(seconds=100))
        s.commit()
        assert _read(feed, s) == [("a", True)]
        # Stamped before the newest row read, committed after that read: another worker's slow transaction.
        _resolved(s, 2, T0 + _dt.timedelta(seconds=50), sku="b", final="b")
        _resolved(s, 3, T0 + _dt.timedelta(seconds=30), sku="c", final="c")
        s.commit()
        assert _read(feed, s) == [("b", True)]
        assert feed.read(s) == []


def test_label_feed_first_read_takes_the_newest_limit_of_each_kind(tmp_path):
    Session = _label_db(tmp_path)
    with Session() as s:
        for n in range(5):
            _resolved(s, n, T0 + _dt.timedelta(seconds=n), sku=f"s{n}", final=f"s{n}")
        s.commit()
        assert _read(repo.LabelFeed(limit=2), s) == [("s3", True), ("s4", True)]
    with pytest.raises(ValueError, match="limit"):
        repo.LabelFeed(limit=0)


def test_label_feed_loses_nothing_when_a_read_fails_half_way(tmp_path):
    Session = _label_db(tmp_path)
    feed = repo.LabelFeed()
    with Session() as s:
        _resolved(s, 1, T0)
        s.commit()
        assert _read(feed, s) == [("a", True)]
        _resolved(s, 2, T0 + _dt.timedelta(seconds=1), sku="b", final="b")
        s.commit()

        class DropsSecondQuery:
            calls = 0

            def execute(self, *args, **kwargs):
                DropsSecondQuery.calls += 1
                if DropsSecondQuery.calls == 2:
                    raise sa.exc.OperationalError("SELECT", {}, Exception("database went away"))
                return s.execute(*args, **kwargs)

        with pytest.raises(sa.exc.OperationalError):
            feed.read(DropsSecondQuery())
        assert _read(feed, s) == [("b", True)]


def test_workers_starting_together_create_a_new_schema_once(postgres_url):
    """``migrate`` takes its advisory lock before ``CREATE SCHEMA IF NOT EXISTS`` (not safe on its own).

    Another worker is mid-way through creating the schema (lock held, schema created,
    not committed yet) when this one starts: this one must wait for it, then find the
    schema, instead of failing on pg_namespace's unique index.
    """
    import threading
    import time
    import uuid

    from skuscale.serve.db import MIGRATE_LOCK

    schema = "t_" + uuid.uuid4().hex[:12]
    admin = sa.create_engine(postgres_url)
    worker = make_engine(postgres_url, schema=schema)
    errors: list[BaseException] = []

    def start_worker():
        try:
            migrate(worker, schema=schema)
        except BaseException as exc:  # reported below
            errors.append(exc)

    waiting = sa.text(
        "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND pid <> pg_backend_pid() "
        "AND (query ILIKE '%pg_advisory_xact_lock%' OR query ILIKE '%CREATE SCHEMA%')"
    )
    try:
        with admin.connect() as other, admin.connect() as probe:
            with other.begin():
                other.execute(sa.text(f"SELECT pg_advisory_xact_lock({MIGRATE_LOCK})"))
                other.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
                thread = threading.Thread(target=start_worker)
                thread.start()
                deadline = time.monotonic() + 20
                while not probe.execute(waiting).scalar() and time.monotonic() < deadline:
                    probe.rollback()
                    time.sleep(0.05)
                assert time.monotonic() < deadline, "the starting worker never waited for the other one"
            thread.join(60)
        assert not errors, errors
        with worker.connect() as conn:
            assert conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar() is not None
            assert conn.execute(sa.text("SELECT current_schema()")).scalar() == schema
    finally:
        worker.dispose()
        with admin.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        admin.dispose()
