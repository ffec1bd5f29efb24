"""Runner, coupled risks, tail view, configuration and report files on hand-made inputs."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from skuscale.assess.base import CHECKS, Check, CheckResult, register, registered_checks, verdict
from skuscale.assess.config import AssessConfig, ConfigError, parse_config
from skuscale.assess.context import AssessmentContext
from skuscale.assess.report import coupled_risks, proximity, run_assessment, tail_view, write_report


def _result(check, status, value, threshold, direction="max", number=1, details=None):
    return CheckResult(check=check, number=number, title=check.replace("_", " "), status=status, value=value,
                       threshold=threshold, direction=direction, details=details or {})


def test_verdict_directions():
    assert verdict(10, 10, "max") == "pass" and verdict(10.1, 10, "max") == "fail"
    assert verdict(0.2, 0.2, "min") == "pass" and verdict(0.19, 0.2, "min") == "fail"
    with pytest.raises(ValueError):
        verdict(1, 1, "sideways")


def test_proximity_within_twenty_percent():
    assert proximity(_result("a", "pass", 8.0, 10.0), 0.2) == "near"        # 80% of a max threshold
    assert proximity(_result("a", "pass", 7.9, 10.0), 0.2) is None
    assert proximity(_result("a", "pass", 0.24, 0.2, "min"), 0.2) == "near"  # 120% of a min threshold
    assert proximity(_result("a", "pass", 0.25, 0.2, "min"), 0.2) is None
    assert proximity(_result("a", "fail", 30.0, 10.0), 0.2) == "failing"
    assert proximity(_result("a", "skipped", None, None), 0.2) is None


def test_coupled_risk_names_pairs_that_are_both_near():
    results = [
        _result("catalogue_change", "pass", 0.045, 0.05, number=3),            # near
        _result("memory_headroom", "pass", 0.22, 0.20, "min", number=4),        # near
        _result("class_spread", "pass", 5.0, 15.0, number=6),                   # far
    ]
    risks = coupled_risks(results, margin=0.2)
    assert len(risks) == 1
    assert risks[0]["checks"] == ["catalogue_change", "memory_headroom"]
    assert risks[0]["states"] == ["near", "near"]
    assert "runs out of memory" in risks[0]["why"]
    # Move memory out of range: no coupled risk any more.
    results[1] = _result("memory_headroom", "pass", 0.5, 0.20, "min", number=4)
    assert coupled_risks(results, margin=0.2) == []


def test_coupled_risk_imbalance_with_tail_near_duplicates():
    counts = {f"m{i}": 30 for i in range(8)} | {"big": 100, "tiny": 9}
    pairs = [{"sku_a": "tiny", "sku_b": "m1", "closer_than_spread": True},
             {"sku_a": "m2", "sku_b": "m3", "closer_than_spread": True}]
    results = [_result("sample_balance", "pass", 9.0, 10.0, number=1),
               _result("visual_similarity", "fail", 0.05, 0.1, "min", number=2, details={"pairs": pairs})]
    risks = coupled_risks(results, margin=0.2, train_counts=counts)
    assert len(risks) == 1
    assert risks[0]["tail_pairs"] == ["tiny / m1"]
    assert "tiny / m1" in risks[0]["why"]


def test_tail_view_known_answer():
    counts = {f"s{i}": 10 + i for i in range(10)}  # top decile s9, bottom decile s0
    y_true = np.array(["s9"] * 4 + ["s0"] * 4 + ["s5"] * 2)
    y_pred = np.array(["s9"] * 4 + ["s0", "s1", "s1", "s1"] + ["s5"] * 2)
    conf = np.array([0.9] * 4 + [0.9] * 4 + [0.5] * 2)
    t = tail_view(y_true, y_pred, conf, counts)
    assert [r["sku"] for r in t["top"]["skus"]] == ["s9"]
    assert [r["sku"] for r in t["bottom"]["skus"]] == ["s0"]
    assert t["top"]["top1"] == 1.0 and t["bottom"]["top1"] == 0.25
    assert t["bottom"]["ece"] == pytest.approx(0.65)  # confidence 0.9, accuracy 0.25
    assert t["top1_gap"] == pytest.approx(0.75)
    assert t["bottom"]["skus"][0]["gap"] == pytest.approx(0.65)


class _Boom(Check):
    name = "zz_boom"
    number = 98
    title = "Always raises"

    def run(self, ctx, params):
        raise RuntimeError("deliberate failure")


class _Needs(Check):
    name = "zz_needs"
    number = 99
    title = "Needs an input"

    def missing_inputs(self, ctx):
        return "no widget given"


@pytest.fixture
def extra_checks():
    register(_Boom)
    register(_Needs)
    yield
    CHECKS.pop("zz_boom")
    CHECKS.pop("zz_needs")


def _toy_context():
    counts = {f"s{i}": 20 + i for i in range(10)}
    return AssessmentContext(train_counts=counts)


def test_runner_isolates_errors_and_reports_skips(extra_checks):
    report = run_assessment(_toy_context())
    by_name = {c["check"]: c for c in report["checks"]}
    assert by_name["zz_boom"]["status"] == "error"
    assert "RuntimeError: deliberate failure" in by_name["zz_boom"]["summary"]
    assert by_name["zz_needs"]["status"] == "skipped"
    assert "no widget given" in by_name["zz_needs"]["summary"]
    # The other checks still ran: sample balance passed, the ones without embeddings were skipped.
    assert by_name["sample_balance"]["status"] == "pass"
    assert by_name["visual_similarity"]["status"] == "skipped"
    assert report["exit_code"] == 1 and report["verdict"] == "no-go"
    assert "error" in report["tail_view"]


class _BrokenInputs(Check):
    name = "zz_broken_inputs"
    number = 97
    title = "Its input test raises"

    def missing_inputs(self, ctx):
        raise RuntimeError("cannot even look")


def test_a_check_whose_input_test_raises_is_an_error_not_a_crash(extra_checks, tmp_path):
    register(_BrokenInputs)
    try:
        report = run_assessment(_toy_context())
    finally:
        CHECKS.pop("zz_broken_inputs")
    by_name = {c["check"]: c for c in report["checks"]}
    assert by_name["zz_broken_inputs"]["status"] == "error"
    assert "cannot even look" in by_name["zz_broken_inputs"]["summary"]
    assert by_name["sample_balance"]["status"] == "pass"
    # No check proposed an action, and the HTML must not call that "every check passed".
    assert not report["actions"]
    write_report(report, tmp_path)
    html = (tmp_path / "report.html").read_text()
    assert "every check that ran passed" not in html and "raised an error" in html


def test_all_pass_or_skipped_is_go():
    report = run_assessment(_toy_context())
    assert {c["status"] for c in report["checks"]} == {"pass", "skipped"}
    assert report["exit_code"] == 0 and report["verdict"] == "go"
    assert [c["number"] for c in report["checks"]] == sorted(c["number"] for c in report["checks"])


def test_failing_check_makes_exit_code_one_and_lists_actions():
    ctx = AssessmentContext(train_counts={"a": 200, "b": 2})
    report = run_assessment(ctx)
    assert report["exit_code"] == 1
    assert report["actions"] and report["actions"][0]["check"] == "sample_balance"


def test_config_overrides_and_errors():
    cfg = parse_config({"checks": {"sample_balance": {"max_ratio": 500}}, "coupled_risks": {"margin": 0.1}})
    balance = next(c for c in registered_checks() if c.name == "sample_balance")
    assert cfg.params_for(balance) == {"max_ratio": 500.0}
    assert run_assessment(AssessmentContext(train_counts={"a": 200, "b": 2}), cfg)["exit_code"] == 0
    with pytest.raises(ConfigError, match="unknown check 'nope'"):
        parse_config({"checks": {"nope": {}}})
    with pytest.raises(ConfigError, match=r"checks.sample_balance.max_rate"):
        parse_config({"checks": {"sample_balance": {"max_rate": 3}}})
    with pytest.raises(ConfigError, match="must be a number"):
        parse_config({"checks": {"calibration": {"max_ece": "low"}}})
    with pytest.raises(ConfigError, match="unknown key"):
        parse_config({"thresholds": {}})
    assert isinstance(parse_config(None), AssessConfig)


@pytest.mark.parametrize("params, needle", [
    ({"as_of": "last week"}, "checks.catalogue_change.as_of must be a date"),
    ({"as_of": 2024}, "checks.catalogue_change.as_of must be a date"),
    ({"catalogue_size": "many"}, "checks.catalogue_change.catalogue_size must be a positive integer"),
    ({"catalogue_size": 0}, "checks.catalogue_change.catalogue_size must be a positive integer"),
    ({"catalogue_size": 12.5}, "checks.catalogue_change.catalogue_size must be a positive integer"),
    ({"catalogue_size": float("inf")}, "checks.catalogue_change.catalogue_size must be a positive integer"),
])
def test_parameters_without_a_typed_default_are_validated(params, needle):
    """A None default has no type to compare with: the check's validator makes a bad value a usage error."""
    with pytest.raises(ConfigError, match=needle):
        parse_config({"checks": {"catalogue_change": params}})


def test_parameters_without_a_typed_default_accept_good_values():
    import datetime as dt

    cfg = parse_config({"checks": {"catalogue_change": {"as_of": "2024-06-30", "catalogue_size": 500.0}}})
    assert cfg.checks["catalogue_change"] == {"as_of": dt.date(2024, 6, 30), "catalogue_size": 500}
    cfg = parse_config({"checks": {"catalogue_change": {"as_of": dt.date(2024, 6, 30), "catalogue_size": None}}})
    assert cfg.checks["catalogue_change"] == {"as_of": dt.date(2024, 6, 30), "catalogue_size": None}


def test_report_files_are_json_and_self_contained_html(tmp_path):
    rng = np.random.default_rng(0)
    X = np.vstack([np.eye(6)[i] * 5 + rng.standard_normal((8, 6)) for i in range(6)]).astype(np.float32)
    y = np.repeat([f"s{i}" for i in range(6)], 8)
    ctx = AssessmentContext(train_X=X, train_y=y)
    report = run_assessment(ctx, inputs={"bundle": "none"})
    report["checks"][0]["value"] = float("inf")  # non-finite values become null, not invalid JSON
    json_path, html_path = write_report(report, tmp_path / "out")
    data = json.loads(json_path.read_text())
    assert data["checks"][0]["value"] is None
    html = html_path.read_text()
    assert html.startswith("<!DOCTYPE html>")
    # Self-contained: no external resources, plots inline.
    assert not re.search(r'(src|href)="(https?:)?//', html)
    assert html.count('src="data:image/png;base64,') >= 2  # balance histogram + similarity histogram
    assert "Coupled risks" in html and "Tail view" in html


def test_html_names_the_configured_share_of_close_pairs(tmp_path):
    from skuscale.assess.html import render_html
    from skuscale.assess.report import jsonable

    rng = np.random.default_rng(0)
    X = np.vstack([np.eye(6)[i] * 5 + rng.standard_normal((8, 6)) for i in range(6)]).astype(np.float32)
    y = np.repeat([f"s{i}" for i in range(6)], 8)
    config = AssessConfig(checks={"visual_similarity": {"bottom_fraction": 0.2}})
    report = run_assessment(AssessmentContext(train_X=X, train_y=y), config, inputs={"bundle": "none"})
    html = render_html(jsonable(report), figures=False)
    assert "SKU pairs (bottom 20%)" in html and "(bottom 5%)" not in html
