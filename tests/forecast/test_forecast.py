"""Sub-catalogue measurement, the competitor-hazard model, the forecast and its report."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from skuscale.cli.main import app
from skuscale.data.embeddings import save_embeddings
from skuscale.forecast import (
    SimilarityTable,
    automation_at_precision,
    exact_top1_curve,
    fit_hazard_model,
    forecast,
    measure_subcatalogues,
    pilot_subset,
    similarity_table,
    size_grid,
    write_report,
)
from skuscale.simulate import SimulatorParams, simulate_catalogue

SMALL = SimulatorParams(n_skus=500, dim=32, within_spread=0.8, family_size=2.0, family_similarity=0.6,
                        zipf_exponent=0.5, max_train=30, min_train=6, val_per_sku=4, seed=11)


@pytest.fixture(scope="module")
def catalogue():
    return simulate_catalogue(SMALL)


def test_exact_top1_curve_known_answer():
    # K = 3 SKUs: one image never beaten, one beaten by one of the two competitors.
    curve = exact_top1_curve(np.array([0, 1]), 3, [1, 2, 3])
    np.testing.assert_allclose(curve, [1.0, 0.75, 0.5])


def test_exact_curve_matches_the_mean_over_random_draws():
    rng = np.random.default_rng(0)
    S = rng.normal(size=(300, 30)).astype(np.float32)
    y = np.repeat(np.arange(30), 10)
    S[np.arange(300), y] += 1.5
    table = SimilarityTable(S=S, y=y, skus=np.array([f"s{i}" for i in range(30)]), train_counts=np.full(30, 5))
    rows = measure_subcatalogues(table, [5, 15, 30], repeats=200, scale=4.0)
    exact = exact_top1_curve(table.beaten_by(), 30, [5, 15, 30])
    for k, e in zip([5, 15, 30], exact, strict=True):
        drawn = np.mean([r["top1"] for r in rows if r["size"] == k])
        assert drawn == pytest.approx(e, abs=0.015)
    assert exact[2] == pytest.approx(float((S.argmax(1) == y).mean()))


def test_automation_at_precision_known_answer():
    conf = np.array([0.99, 0.95, 0.9, 0.8, 0.7])
    correct = np.array([True, True, True, False, True])
    assert automation_at_precision(conf, correct, 0.99) == pytest.approx(0.6)
    assert automation_at_precision(conf, correct, 0.75) == pytest.approx(1.0)
    assert automation_at_precision(conf, ~correct, 0.99) == 0.0


def test_hazard_model_recovers_a_beta_binomial_and_its_extrapolation():
    rng = np.random.default_rng(1)
    p = rng.beta(0.4, 12.0, size=20000)
    beaten = rng.binomial(39, p)
    model = fit_hazard_model(beaten, 40, components=1)
    assert model.alpha[0] == pytest.approx(0.4, rel=0.15)
    assert model.beta[0] == pytest.approx(12.0, rel=0.25)
    truth = [np.mean((1 - p) ** (n - 1)) for n in (40, 160)]
    np.testing.assert_allclose(model.top1([40, 160]), truth, atol=0.01)
    two = fit_hazard_model(beaten, 40, components=2)
    assert two.log_likelihood >= model.log_likelihood - 1e-6
    with pytest.raises(ValueError):
        fit_hazard_model([0, 5], 3)


def test_forecast_is_monotone_in_catalogue_size(catalogue):
    result = forecast(catalogue, 2000, fit_max_size=200, repeats=2, n_boot=5)
    top1 = np.array(result["curve"]["top1"])
    sizes = np.array(result["curve"]["size"])
    assert np.all(np.diff(sizes) > 0)
    assert np.all(np.diff(top1) <= 1e-12) and top1[0] > top1[-1] + 0.05
    assert np.all(np.diff(result["curve"]["automation"]) <= 1e-12)
    lo, hi = np.array(result["curve"]["top1_lo"]), np.array(result["curve"]["top1_hi"])
    assert np.all(lo <= top1 + 1e-9) and np.all(top1 <= hi + 1e-9)
    # Measured means on nested sub-catalogues fall with size too (the data is built to be monotone).
    means = [m["top1"] for m in result["measured_mean"]]
    assert means[0] > means[-1]


def test_forecast_from_at_most_40_percent_predicts_the_full_catalogue(catalogue):
    train, val = catalogue.part("train"), catalogue.part("val")
    table = similarity_table(train.X, train.sku, val.X, val.sku)
    measured = exact_top1_curve(table.beaten_by(), table.n_skus, [table.n_skus])[0]
    assert measured < 0.97  # the task is not trivial
    for data, kwargs in ((catalogue, {"fit_max_size": 200}), (pilot_subset(catalogue, 200, seed=1), {})):
        result = forecast(data, 500, repeats=2, n_boot=5, **kwargs)
        assert result["fit_max_size"] == 200
        assert result["at_target"]["top1"] == pytest.approx(measured, abs=0.03)


def test_attribution_names_the_dominant_axis(catalogue):
    balanced = simulate_catalogue(SMALL.replace(n_skus=120, zipf_exponent=0.0, max_train=10, min_train=10))
    result = forecast(balanced, 400, repeats=1, n_boot=3, unknown_share=0.0)
    assert result["attribution"]["loss"]["imbalance"] == 0.0
    assert result["dominant_axis"] == "similarity"
    flooded = forecast(balanced, 400, repeats=1, n_boot=3, unknown_share=0.6)
    assert flooded["dominant_axis"] == "unknowns"
    assert flooded["at_target"]["top1_with_unknowns"] == pytest.approx(0.4 * flooded["at_target"]["top1"])
    imbalanced = forecast(catalogue, 500, repeats=1, n_boot=3)
    assert imbalanced["attribution"]["loss"]["imbalance"] > 0.0
    # Simulated data carries its own arrival rate.
    arrivals = simulate_catalogue(SMALL.replace(n_skus=100, new_sku_monthly_rate=0.05, months=2))
    assert forecast(arrivals, 200, repeats=1, n_boot=3)["attribution"]["unknown_share"] == pytest.approx(10 / 110)


def test_automation_cap_and_loss_attribution_known_answers():
    from skuscale.forecast.core import attribute_loss, automation_from_top1

    # 1.5 * top1**2: 0.96 > 0.8 / 0.99 at top-1 0.8 (capped), 0.375 < 0.5 / 0.99 at 0.5 (kept).
    np.testing.assert_allclose(automation_from_top1([0.8, 0.5], 1.5, 2.0, 0.99), [0.8 / 0.99, 0.375])
    assert attribute_loss(0.8, 0.9) == pytest.approx((0.1, 0.1))
    # Well-sampled SKUs forecast lower than all images: no imbalance, and similarity is the whole loss, no more.
    assert attribute_loss(0.8, 0.7) == pytest.approx((0.2, 0.0))


def test_forecast_never_exceeds_what_the_precision_target_allows():
    """The reviewer's case: a power link that extrapolates past top1 / target, and a well-sampled half
    forecast below the whole catalogue."""
    data = simulate_catalogue(SimulatorParams(n_skus=200, dim=32, family_size=2.0, zipf_exponent=0.6, max_train=30,
                                              min_train=4))
    result = forecast(data, 1000, fit_max_size=80, n_boot=5)
    curve, target = result["curve"], result["target_precision"]
    for auto, top1 in (("automation", "top1"), ("automation_lo", "top1_lo"), ("automation_hi", "top1_hi")):
        assert np.all(np.array(curve[auto]) <= np.array(curve[top1]) / target + 1e-12), auto
    at = result["at_target"]
    assert at["automation"] <= at["top1"] / target + 1e-12
    loss = result["attribution"]["loss"]
    assert loss["similarity"] + loss["imbalance"] == pytest.approx(1.0 - at["top1"])
    assert max(loss["similarity"], loss["imbalance"]) <= 1.0 - at["top1"] + 1e-12


def test_size_grid_spans_ten_to_hundred_percent():
    grid = size_grid(800)
    assert grid[0] == 80 and grid[-1] == 800 and grid == sorted(set(grid))
    assert size_grid(3) == [2, 3] and size_grid(2) == [2]


def test_report_and_cli(tmp_path, catalogue):
    result = forecast(catalogue, 1000, fit_max_size=250, repeats=1, n_boot=3)
    paths = write_report(result, tmp_path / "r")
    loaded = json.loads(paths["json"].read_text())
    assert loaded["simulated"] is True and loaded["to"] == 1000
    html = paths["html"].read_text()
    assert "SIMULATED DATA" in html and "data:image/png;base64," in html

    path = save_embeddings(tmp_path / "sim.npz", catalogue)
    runner = CliRunner()
    out = tmp_path / "cli"
    res = runner.invoke(app, ["forecast", "--train", str(path), "--to", "1500", "--fit-max-size", "200",
                              "--repeats", "1", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "dominant axis" in res.output and "SIMULATED" in res.output
    assert json.loads((out / "forecast.json").read_text())["at_target"]["top1"] > 0
    manifest = tmp_path / "m.csv"
    manifest.write_text("path,sku\nx.jpg,a\n")
    res = runner.invoke(app, ["forecast", "--train", str(manifest), "--to", "10", "--out", str(out)])
    assert res.exit_code == 2 and "--bundle" in res.output
    assert runner.invoke(app, ["forecast", "--train", str(path), "--to", "1", "--out", str(out)]).exit_code == 2
