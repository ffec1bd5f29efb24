"""The quick-start demo: the simulated pilot-to-rollout story, and the real-image mode (--data)."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from skuscale.cli.main import app
from skuscale.demo import PILOT, ROLLOUT, main, pick_unknown_skus, sample_dir
from tests.browser import assert_images_rendered, open_page


def test_pick_unknown_skus_is_reproducible_and_leaves_known_skus():
    train = [f"s{i}" for i in range(10)]
    val = train[:6]
    first = pick_unknown_skus(train, val, 4)
    assert first == pick_unknown_skus(train, val, 4)
    assert len(first) == 4 and set(first) <= set(val)
    # At least two SKUs always stay known.
    assert len(pick_unknown_skus(["a", "b", "c"], ["a", "b", "c"], 4)) == 1


def test_demo_on_embedded_sample(tmp_path, monkeypatch):
    monkeypatch.setenv("SKUSCALE_CACHE", str(tmp_path / "cache"))
    assert (sample_dir() / "train.csv").is_file()
    assert main(["--data", str(tmp_path / "no-such-folder"), "--out", str(tmp_path / "out")]) == 0
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["n_unknown"] > 0 and metrics["n_known"] > 0
    assert len(metrics["unknown_skus"]) == 4
    assert metrics["silent_error_rate"] <= metrics["naive_argmax_silent_error_rate"]
    assert (tmp_path / "out" / "bundle" / "bundle.json").is_file()


def test_simulated_demo_tells_the_story_and_its_html_renders(tmp_path):
    out = tmp_path / "demo"
    # A fifth of the catalogue sizes keeps the test short; `skuscale demo` itself runs at full size.
    result = CliRunner().invoke(app, ["demo", "--out", str(out), "--scale", "0.2"])
    assert result.exit_code == 0, result.output
    assert "SIMULATED" in result.output
    story = json.loads((out / "demo.json").read_text())
    assert story["simulated"] is True
    assert story["pilot"]["n_skus"] == 160 and story["rollout"]["n_skus"] == 400
    assert story["rollout"]["n_new_skus"] == 20
    # Naive argmax degrades from pilot to rollout; routing cuts the silent errors.
    assert story["pilot"]["naive_top1"] > story["rollout"]["naive_top1"] + 0.03
    assert story["rollout"]["routed"]["silent_error_rate"] < story["rollout"]["naive_silent_error_rate"] / 3
    assert story["assessment"]["failing"], "the rollout should fail some readiness checks"
    assert 0.5 < story["forecast"]["top1"] <= 1.0
    html = (out / "demo.html").read_text()
    assert "SIMULATED DATA" in html
    with open_page((out / "demo.html").as_uri()) as page:
        page.screenshot(path=str(tmp_path / "demo.png"), full_page=True)
        assert_images_rendered(page, minimum=2)


def test_demo_presets_are_the_documented_story():
    assert PILOT.n_skus == 800 and PILOT.zipf_exponent == 0 and PILOT.family_size == 1
    assert ROLLOUT.n_skus == 2000 and ROLLOUT.family_size > 1 and ROLLOUT.zipf_exponent > 0
    assert ROLLOUT.new_sku_monthly_rate * 3 == pytest.approx(0.05) and ROLLOUT.drift_share > 0


def test_simulated_demo_assesses_on_predictions_not_fitted_on_the_validation_rows(tmp_path):
    """The rollout bundle's temperature and thresholds were fitted on its validation rows."""
    import io

    from rich.console import Console

    from skuscale.demo import run_simulated

    story = run_simulated(tmp_path, Console(file=io.StringIO()), scale=0.05)
    assert "refitted on the training images only" in story["assessment"]["heldout_source"]
