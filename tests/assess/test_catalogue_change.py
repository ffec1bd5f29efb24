"""Check 3: change rates from a catalogue log, and clear errors for bad logs."""

from __future__ import annotations

import datetime as dt

import pytest

from skuscale.assess.catalogue_change import (
    CatalogueChange,
    CatalogueChangeCheck,
    CatalogueLogError,
    assess_catalogue_change,
    change_rates,
    read_catalogue_log,
)
from skuscale.assess.context import AssessmentContext


def _log(tmp_path, text: str):
    path = tmp_path / "changes.csv"
    path.write_text(text)
    return path


def _changes(*rows):
    return [CatalogueChange(dt.date.fromisoformat(d), s, c, i + 2) for i, (d, s, c) in enumerate(rows)]


def test_read_log_any_column_order_and_blank_lines(tmp_path):
    path = _log(tmp_path, "sku,change,date\nA,added,2024-01-05\n\nB,Removed,2024-02-01T10:00:00\n")
    changes = read_catalogue_log(path)
    assert [(c.sku, c.change, c.date.isoformat(), c.line) for c in changes] == [
        ("A", "added", "2024-01-05", 2), ("B", "removed", "2024-02-01", 4)]


def test_rates_known_answer():
    changes = _changes(
        ("2023-06-30", "old", "added"),      # outside the 12 months to 2024-06
        ("2023-07-01", "A", "added"),        # quarter 1: 2023-07..09
        ("2023-07-15", "A", "changed"),      # same SKU again: counted once in the quarter
        ("2023-10-10", "B", "removed"),      # quarter 2
        ("2024-04-01", "C", "added"),        # quarter 4: 2024-04..06
        ("2024-05-01", "D", "added"),
        ("2024-06-30", "E", "changed"),
    )
    r = change_rates(changes, catalogue_size=50)
    assert r["as_of"] == "2024-06-30"
    assert r["months"][0] == "2023-07" and r["months"][-1] == "2024-06"
    assert [q["skus_changed"] for q in r["quarters"]] == [1, 1, 0, 3]
    assert r["max_quarterly_share"] == pytest.approx(3 / 50)
    assert r["per_month"]["2023-07"] == {"added": 1, "changed": 1, "removed": 0}
    assert r["changes_in_window"] == 6


def test_fast_change_without_unknown_loop_fails():
    changes = _changes(*[("2024-05-01", f"S{i}", "added") for i in range(6)])
    result = assess_catalogue_change(changes, catalogue_size=100, unknown_object_loop=False)
    assert result.status == "fail"
    assert result.value == pytest.approx(0.06)
    assert any("review queue" in a for a in result.actions)


def test_fast_change_with_unknown_loop_passes_and_slow_change_passes():
    changes = _changes(*[("2024-05-01", f"S{i}", "added") for i in range(6)])
    assert assess_catalogue_change(changes, catalogue_size=100, unknown_object_loop=True).status == "pass"
    assert assess_catalogue_change(changes[:5], catalogue_size=100, unknown_object_loop=False).status == "pass"


def test_as_of_moves_the_window():
    changes = _changes(("2024-05-01", "A", "added"))
    r = change_rates(changes, catalogue_size=10, as_of=dt.date(2025, 12, 31))
    assert r["changes_in_window"] == 0 and r["max_quarterly_share"] == 0


def test_wrong_columns_name_line_1(tmp_path):
    path = _log(tmp_path, "when,product,what\n2024-01-01,A,added\n")
    with pytest.raises(CatalogueLogError, match=r"line 1: missing column\(s\) date, sku, change"):
        read_catalogue_log(path)


def test_unparseable_date_names_the_line(tmp_path):
    path = _log(tmp_path, "date,sku,change\n2024-01-01,A,added\n2024-13-45,B,added\n01/02/2024,C,added\n")
    with pytest.raises(CatalogueLogError) as info:
        read_catalogue_log(path)
    message = str(info.value)
    assert "line 3: unparseable date '2024-13-45'" in message
    assert "line 4: unparseable date '01/02/2024'" in message
    assert str(path) in message


def test_bad_change_and_short_row_name_the_line(tmp_path):
    path = _log(tmp_path, "date,sku,change\n2024-01-01,A,renamed\n2024-01-02,B\n")
    with pytest.raises(CatalogueLogError, match=r"line 2: change 'renamed'.*line 3: expected 3 fields"):
        read_catalogue_log(path)


def test_check_reports_a_bad_log_as_error_through_the_runner(tmp_path):
    from skuscale.assess.config import AssessConfig
    from skuscale.assess.report import _run_one

    ctx = AssessmentContext(catalogue_log=_log(tmp_path, "date,sku,change\nnot-a-date,A,added\n"))
    result = _run_one(CatalogueChangeCheck(), ctx, AssessConfig(checks={"catalogue_change": {"catalogue_size": 10}}))
    assert result.status == "error"
    assert "line 2: unparseable date 'not-a-date'" in result.summary


def test_check_is_skipped_without_a_log():
    assert CatalogueChangeCheck().missing_inputs(AssessmentContext()) == "no --catalogue-log given"
