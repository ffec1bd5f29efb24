"""What a multi-worker /metrics scrape pays to follow the labels, as JSON.

Usage::

    python benchmarks/label_feed.py [--labels 100000] [--new 50] [--rate 1] [--db URL]
        [--out out/bench_label_feed.json]

With ``skuscale serve --workers N`` every scrape first brings the per-SKU rolling accuracy
up to date from the database (:class:`skuscale.serve.repository.LabelFeed`). This fills a
database with ``--labels`` review resolutions and as many feedback rows (2,000 SKUs, ``--rate``
resolutions a second up to now), then times, each the median of five:

* ``first_read_s``: a new feed's first read, as on start-up. Until 2026-11-27 every scrape
  after any new label paid this (the whole window re-read), plus two ``count(*)`` scans;
* ``idle_read_s``: a read with nothing new;
* ``incremental_read_s``: a read after ``--new`` more resolutions and as many feedback rows.

An idle read still re-reads the rows of the last ``LABEL_LATENESS`` (2 min) and skips them
by id, so its cost follows the label rate, not the history.

SQLite in a temporary directory by default; ``--db`` takes any SQLAlchemy URL (an empty
database or schema: the tables are filled).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from sqlalchemy import insert, text

from skuscale.serve import repository as repo
from skuscale.serve.db import Event, Feedback, make_engine, make_sessionmaker, migrate, utcnow


def fill(Session, start: int, n: int, skus: list[str], rng: np.random.Generator, t0: dt.datetime,
         step: dt.timedelta) -> None:
    """``n`` resolved events and one feedback row for each, ``step`` apart from ``t0``."""
    for lo in range(start, start + n, 20_000):
        ids = range(lo, min(lo + 20_000, start + n))
        events, feedback = [], []
        for i in ids:
            sku = skus[int(rng.integers(len(skus)))]
            final = sku if rng.random() < 0.9 else skus[int(rng.integers(len(skus)))]
            t = t0 + (i - start) * step
            events.append(dict(id=f"bench{i:027d}", created_at=t, band="verify", sku=sku, confidence=0.9,
                               ood_score=0.0, category=None, category_confidence=None, candidates=[],
                               image_sha256=None, status="final", final_sku=final, resolution="sku",
                               proposed_sku=None, resolved_at=t, resolved_by="bench"))
            feedback.append(dict(event_id=f"bench{i:027d}", truth_sku=sku, not_a_product=False,
                                 outcome="correct" if rng.random() < 0.9 else "incorrect", source="bench",
                                 created_at=t))
        with Session() as s:
            s.execute(insert(Event), events)
            s.execute(insert(Feedback), feedback)
            s.commit()


def timed(fn, repeats: int = 5) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeats):
        started = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times), out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--labels", type=int, default=100_000, help="resolutions in the database (and as many feedback)")
    ap.add_argument("--new", type=int, default=50, help="resolutions (and feedback) added between two reads")
    ap.add_argument("--rate", type=float, default=1.0, help="resolutions per second in the filled history")
    ap.add_argument("--db", default=None, help="SQLAlchemy URL of an empty database (default: SQLite in a temp dir)")
    ap.add_argument("--out", type=Path, default=Path("out/bench_label_feed.json"))
    args = ap.parse_args(argv)
    if args.labels < 1 or args.new < 1 or not args.rate > 0:
        ap.error("--labels, --new and --rate must be positive")
    step = dt.timedelta(seconds=1 / args.rate)

    with tempfile.TemporaryDirectory(prefix="skuscale-label-feed-") as tmp:
        engine = make_engine(args.db or f"sqlite:///{Path(tmp) / 'labels.sqlite'}")
        migrate(engine)
        Session = make_sessionmaker(engine)
        rng = np.random.default_rng(0)
        skus = [f"SKU-{k:04d}" for k in range(2000)]
        # Stamped so that the newest rows are "now": what a running service has.
        fill(Session, 0, args.labels, skus, rng, utcnow() - args.labels * step, step)
        if engine.dialect.name == "postgresql":
            # What autovacuum does to a running service's tables; without statistics the planner
            # scans the freshly filled tables instead of using the timestamp indexes.
            with engine.begin() as conn:
                conn.execute(text("ANALYZE events"))
                conn.execute(text("ANALYZE feedback"))

        def first_read():
            with Session() as s:
                return repo.LabelFeed().read(s)

        first_s, rows = timed(first_read)
        feed = repo.LabelFeed()
        with Session() as s:
            feed.read(s)

        def read():
            with Session() as s:
                return feed.read(s)

        idle_s, idle_rows = timed(read)
        incremental = []
        for k in range(5):
            fill(Session, args.labels + k * args.new, args.new, skus, rng, utcnow(), step / args.new)
            seconds, new_rows = timed(read, repeats=1)
            incremental.append((seconds, len(new_rows)))
        engine.dispose()

    result = {
        "labels_in_db": {"resolutions": args.labels, "feedback": args.labels, "per_second": args.rate},
        "lateness_s": repo.LABEL_LATENESS.total_seconds(),
        "first_read_s": round(first_s, 4),
        "first_read_rows": len(rows),
        "idle_read_s": round(idle_s, 5),
        "idle_read_rows": len(idle_rows),
        "incremental_read_s": round(statistics.median(s for s, _ in incremental), 5),
        "incremental_read_rows": [n for _, n in incremental],
        "db": "sqlite" if args.db is None else args.db.split(":", 1)[0],
        "machine": {"python": sys.version.split()[0], "platform": platform.platform()},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
