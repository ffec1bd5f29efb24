"""Check 3: catalogue change rate, from a ``date,sku,change`` log.

The window is the 12 calendar months ending with the month of ``as_of`` (default:
the latest date in the log), cut into four quarters of three months. A quarter's
share is the number of distinct SKUs added, changed or removed in it divided by
the catalogue size (the bundle's number of SKUs unless configured). The headline
value is the largest quarterly share; it fails the check only while the bundle
has no unknown-object loop (unknown products routed to review and enrolment).
"""

from __future__ import annotations

import csv
import datetime as dt
import os
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

from skuscale.assess.base import PASS, Check, CheckResult, register, verdict
from skuscale.assess.config import optional_date, optional_positive_int
from skuscale.exceptions import SkuscaleError

CHANGE_KINDS = ("added", "changed", "removed")
COLUMNS = ("date", "sku", "change")


class CatalogueLogError(SkuscaleError):
    """A catalogue change log cannot be read; the message names the file and line."""


@dataclass(frozen=True)
class CatalogueChange:
    date: dt.date
    sku: str
    change: str
    line: int


def read_catalogue_log(path: str | os.PathLike) -> list[CatalogueChange]:
    """Parse a CSV log with the header ``date,sku,change`` (any column order, extra columns ignored).

    ``date`` is ISO 8601 (``YYYY-MM-DD``, a time part is allowed and ignored),
    ``change`` one of ``added``, ``changed``, ``removed``.

    Raises
    ------
    CatalogueLogError
        Naming the file and line of every problem (up to 20).
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise CatalogueLogError(f"catalogue log {path}: cannot read it ({exc})") from exc
    reader = csv.reader(text.splitlines())
    header = next(reader, None)
    if header is None:
        raise CatalogueLogError(f"catalogue log {path} line 1: the file is empty; expected the header date,sku,change")
    names = [h.strip().lower() for h in header]
    missing = [c for c in COLUMNS if c not in names]
    if missing:
        raise CatalogueLogError(
            f"catalogue log {path} line 1: missing column(s) {', '.join(missing)}; expected the header "
            f"date,sku,change, got {','.join(header)}"
        )
    col = {c: names.index(c) for c in COLUMNS}
    problems: list[str] = []
    changes: list[CatalogueChange] = []
    for line_no, row in enumerate(reader, start=2):
        if not row or all(not cell.strip() for cell in row):
            continue
        if len(row) < len(names):
            problems.append(f"line {line_no}: expected {len(names)} fields, got {len(row)}")
            continue
        raw_date, sku, change = (row[col[c]].strip() for c in COLUMNS)
        try:
            date = dt.datetime.fromisoformat(raw_date).date()
        except ValueError:
            problems.append(f"line {line_no}: unparseable date {raw_date!r} (expected YYYY-MM-DD)")
            continue
        if not sku:
            problems.append(f"line {line_no}: empty sku")
            continue
        if change.lower() not in CHANGE_KINDS:
            problems.append(f"line {line_no}: change {change!r} is not one of {', '.join(CHANGE_KINDS)}")
            continue
        changes.append(CatalogueChange(date, sku, change.lower(), line_no))
    if problems:
        shown = "; ".join(problems[:20]) + (f"; ... and {len(problems) - 20} more" if len(problems) > 20 else "")
        raise CatalogueLogError(f"catalogue log {path}: {len(problems)} problem(s): {shown}")
    return changes


def _month_index(d: dt.date) -> int:
    return d.year * 12 + d.month - 1


def _month_label(index: int) -> str:
    return f"{index // 12:04d}-{index % 12 + 1:02d}"


def change_rates(changes: list[CatalogueChange], *, catalogue_size: int, as_of: dt.date | None = None) -> dict:
    """Changes per month over the last 12 months and the share of the catalogue changed per quarter.

    Returns
    -------
    dict
        ``as_of``, ``months`` (12 labels, oldest first), ``per_month`` (count per
        month and kind), ``quarters`` (4 dicts: ``months``, ``skus_changed``,
        ``share``), ``max_quarterly_share``, ``changes_in_window``.
    """
    if catalogue_size < 1:
        raise ValueError(f"catalogue_size must be positive, got {catalogue_size!r}")
    if as_of is None:
        as_of = max((c.date for c in changes), default=dt.date.today())
    last = _month_index(as_of)
    first = last - 11
    months = [_month_label(m) for m in range(first, last + 1)]
    per_month = {m: dict.fromkeys(CHANGE_KINDS, 0) for m in months}
    quarter_skus: list[set[str]] = [set() for _ in range(4)]
    in_window = 0
    for c in changes:
        m = _month_index(c.date)
        if first <= m <= last and c.date <= as_of:
            in_window += 1
            per_month[_month_label(m)][c.change] += 1
            quarter_skus[(m - first) // 3].add(c.sku)
    quarters = [
        {"months": months[3 * q : 3 * q + 3], "skus_changed": len(s), "share": len(s) / catalogue_size}
        for q, s in enumerate(quarter_skus)
    ]
    return {
        "as_of": as_of.isoformat(),
        "months": months,
        "per_month": per_month,
        "quarters": quarters,
        "max_quarterly_share": max(q["share"] for q in quarters),
        "changes_in_window": in_window,
        "catalogue_size": catalogue_size,
    }


def assess_catalogue_change(changes: list[CatalogueChange], *, catalogue_size: int, unknown_object_loop: bool,
                            max_quarterly_share: float = 0.05, as_of: dt.date | None = None) -> CheckResult:
    """Check 3 on parsed log entries."""
    rates = change_rates(changes, catalogue_size=catalogue_size, as_of=as_of)
    value = rates["max_quarterly_share"]
    over = verdict(value, max_quarterly_share, "max") == "fail"
    status = "fail" if over and not unknown_object_loop else PASS
    actions: list[str] = []
    if status == "fail":
        actions.append(
            f"Up to {value:.1%} of the catalogue changes per quarter and unknown products have nowhere to go: "
            "route the 'unknown' band to a review queue that enrols new SKUs (imprint without retraining), "
            "then set unknown_object_loop: true under catalogue_change in the config"
        )
        busiest = max(rates["quarters"], key=lambda q: q["share"])
        actions.append(f"Plan a retrain cadence at least as often as the busiest quarter ({busiest['months'][0]} to "
                       f"{busiest['months'][-1]}, {busiest['skus_changed']} SKUs changed)")
    loop = "with" if unknown_object_loop else "without"
    summary = (f"up to {value:.1%} of the {catalogue_size}-SKU catalogue changed per quarter "
               f"({rates['changes_in_window']} changes in the 12 months to {rates['as_of']}), {loop} an "
               "unknown-object loop")
    details = {**rates, "unknown_object_loop": unknown_object_loop,
               "over_threshold": over}
    return CatalogueChangeCheck().result(status, value=value, threshold=float(max_quarterly_share), summary=summary,
                                         details=details, actions=actions)


def _parse_as_of(value: Any) -> dt.date | None:
    if value is None or isinstance(value, dt.date):
        return value
    try:
        return dt.date.fromisoformat(str(value))
    except ValueError as exc:
        raise ValueError(f"catalogue_change.as_of must be a date YYYY-MM-DD, got {value!r}") from exc


@register
class CatalogueChangeCheck(Check):
    name = "catalogue_change"
    number = 3
    title = "Catalogue change rate"
    measure = "largest share of the catalogue added/changed/removed in a quarter, last 12 months"
    direction = "max"
    unit = "share"
    defaults = MappingProxyType(
        {"max_quarterly_share": 0.05, "unknown_object_loop": False, "as_of": None, "catalogue_size": None}
    )
    validators = MappingProxyType({"as_of": optional_date, "catalogue_size": optional_positive_int})

    def missing_inputs(self, ctx):
        return None if ctx.catalogue_log is not None else "no --catalogue-log given"

    def run(self, ctx, params) -> CheckResult:
        changes = read_catalogue_log(ctx.catalogue_log)
        size = params["catalogue_size"] or (len(ctx.model.skus) if ctx.model is not None else None)
        if not size:
            raise ValueError("catalogue size unknown: set catalogue_change.catalogue_size in the config")
        return assess_catalogue_change(
            changes, catalogue_size=int(size), unknown_object_loop=bool(params["unknown_object_loop"])
            or ctx.unknown_object_loop, max_quarterly_share=params["max_quarterly_share"],
            as_of=_parse_as_of(params["as_of"]),
        )

    def figures(self, result):
        from skuscale.assess.plots import stacked_bar_figure

        d = result.details
        series = {k: [d["per_month"][m][k] for m in d["months"]] for k in CHANGE_KINDS}
        fig = stacked_bar_figure(d["months"], series, ylabel="changes", title="Catalogue changes per month")
        return [("Catalogue changes per month, last 12 months", fig)]
