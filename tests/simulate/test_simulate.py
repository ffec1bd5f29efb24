"""The simulator's statistics match its parameters, and its files feed build/evaluate."""

from __future__ import annotations

import numpy as np
import pytest
from typer.testing import CliRunner

from skuscale._base import l2_normalize
from skuscale.cli.main import app
from skuscale.data.embeddings import load_embeddings, save_embeddings
from skuscale.simulate import (
    SimulatorParams,
    catalogue_statistics,
    estimate_zipf_exponent,
    fit_simulator_params,
    simulate_catalogue,
    zipf_counts,
)


def test_zipf_counts_follow_the_law_and_the_exponent_is_recovered():
    rng = np.random.default_rng(0)
    counts = zipf_counts(3000, 0.8, 300, 2, rng)
    assert counts.max() == 300 and counts.min() == 2
    ranked = np.sort(counts)[::-1]
    assert ranked[9] == round(300 * 10 ** -0.8)
    assert estimate_zipf_exponent(counts) == pytest.approx(0.8, abs=0.05)
    assert estimate_zipf_exponent(np.full(50, 7)) == 0.0


@pytest.mark.parametrize("exponent", [0.5, 1.1])
def test_fitted_parameters_recover_zipf_and_family_similarity(exponent):
    true = SimulatorParams(n_skus=1200, dim=64, family_size=3.0, family_similarity=0.75, background_similarity=0.15,
                           within_spread=0.5, zipf_exponent=exponent, max_train=120, min_train=3, seed=3)
    fitted = fit_simulator_params(simulate_catalogue(true))
    assert fitted.zipf_exponent == pytest.approx(exponent, abs=0.1)
    assert fitted.family_similarity == pytest.approx(0.75, abs=0.04)
    assert fitted.background_similarity == pytest.approx(0.15, abs=0.03)
    assert fitted.within_spread == pytest.approx(0.5, rel=0.1)
    assert fitted.dim == pytest.approx(64, rel=0.15)
    assert fitted.family_size == pytest.approx(3.0, rel=0.15)


def test_family_similarity_is_recovered_without_family_labels_through_links():
    true = SimulatorParams(n_skus=400, dim=64, family_size=2.0, family_similarity=0.95, background_similarity=0.1,
                           within_spread=0.3, max_train=20, min_train=20, seed=1)
    data = simulate_catalogue(true)
    train = data.part("train")
    stats = catalogue_statistics(train.X, train.sku, link_similarity=0.8)
    assert stats["family_similarity"] == pytest.approx(0.95, abs=0.03)
    # A different truth gives a different estimate: the recovery is not a constant.
    other = simulate_catalogue(true.replace(family_similarity=0.85))
    o = other.part("train")
    assert catalogue_statistics(o.X, o.sku, link_similarity=0.7)["family_similarity"] == pytest.approx(0.85, abs=0.03)


def test_new_skus_arrive_only_in_test_and_drift_moves_the_centroid_by_the_set_cosine():
    p = SimulatorParams(n_skus=300, dim=48, within_spread=0.4, new_sku_monthly_rate=0.02, months=5,
                        drift_share=0.2, drift_similarity=0.6, test_per_sku=40, max_train=40, min_train=40, seed=2)
    data = simulate_catalogue(p)
    assert data.simulated and data.meta["params"]["drift_share"] == 0.2
    new = data.meta["new_skus"]
    assert len(new) == round(300 * 0.02 * 5) == p.n_new_skus
    assert all(0 <= m <= 5 for m in data.meta["arrival_month"])
    assert not np.isin(new, data.part("train").sku).any() and not np.isin(new, data.part("val").sku).any()
    assert np.isin(new, data.part("test").sku).all()
    drifted = data.meta["drifted_skus"]
    assert len(drifted) == 60

    def centroid(part, sku):
        return l2_normalize(l2_normalize(part.X[part.sku == sku]).mean(0, keepdims=True))[0]

    train, test = data.part("train"), data.part("test")
    moved = np.mean([centroid(train, s) @ centroid(test, s) for s in drifted])
    still = np.mean([centroid(train, s) @ centroid(test, s) for s in sorted(set(train.sku) - set(drifted))[:60]])
    assert moved == pytest.approx(0.6, abs=0.05)
    assert still > 0.98


def test_parameters_are_validated():
    with pytest.raises(ValueError, match="family_similarity"):
        SimulatorParams(family_similarity=0.1, background_similarity=0.3)
    with pytest.raises(ValueError, match="min_train"):
        SimulatorParams(min_train=10, max_train=5)
    with pytest.raises(ValueError, match="unknown simulator parameter"):
        SimulatorParams.from_dict({"n_skus": 10, "colour": "red"})


def test_simulated_file_round_trips_and_build_and_evaluate_accept_it(tmp_path):
    runner = CliRunner()
    path = tmp_path / "sim.npz"
    result = runner.invoke(app, ["simulate", "--out", str(path), "--n-skus", "30", "--dim", "16",
                                 "--family-size", "2", "--new-sku-monthly-rate", "0.1", "--months", "1",
                                 "--max-train", "12", "--min-train", "6", "--seed", "4"])
    assert result.exit_code == 0, result.output
    assert "SIMULATED" in result.output
    data = load_embeddings(path)
    assert data.simulated and data.X.shape[1] == 16 and set(data.split) == {"train", "val", "test"}
    save_embeddings(tmp_path / "copy.npz", data)
    assert load_embeddings(tmp_path / "copy.npz").meta == data.meta

    result = runner.invoke(app, ["build", "--embeddings", str(path), "--out", str(tmp_path / "bundle")])
    assert result.exit_code == 0, result.output
    assert "SIMULATED" in result.output
    result = runner.invoke(app, ["evaluate", str(tmp_path / "bundle"), "--embeddings", str(path),
                                 "--json", str(tmp_path / "m.json")])
    assert result.exit_code == 0, result.output
    import json

    metrics = json.loads((tmp_path / "m.json").read_text())
    assert metrics["simulated"] is True and metrics["split"] == "test"
    assert metrics["n_unknown"] == 3 * data.meta["params"]["test_per_sku"]
    assert metrics["n_seen_in_training"] == 0 and metrics["n_used_for_calibration"] == 0

    # The training rows are recognised as such, and the CLI says the numbers are in-sample.
    result = runner.invoke(app, ["evaluate", str(tmp_path / "bundle"), "--embeddings", str(path), "--split", "train",
                                 "--json", str(tmp_path / "train.json")])
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "train.json").read_text())
    assert metrics["n_seen_in_training"] == metrics["n_items"] == int((data.split == "train").sum())
    assert "in-sample" in result.output


def test_simulate_from_fits_a_file_and_rejects_bad_options(tmp_path):
    runner = CliRunner()
    src = tmp_path / "src.npz"
    save_embeddings(src, simulate_catalogue(SimulatorParams(n_skus=40, dim=24, zipf_exponent=0.7, max_train=30,
                                                            min_train=3, seed=5)))
    out = tmp_path / "fitted.npz"
    result = runner.invoke(app, ["simulate", "--from", str(src), "--n-skus", "120", "--out", str(out)])
    assert result.exit_code == 0, result.output
    fitted = load_embeddings(out)
    assert fitted.meta["fitted_from"] == str(src) and fitted.meta["params"]["n_skus"] == 120
    assert fitted.meta["params"]["dim"] == pytest.approx(24, rel=0.3)
    assert runner.invoke(app, ["simulate", "--out", str(out), "--preset", "huge"]).exit_code == 2
    assert runner.invoke(app, ["simulate", "--out", str(out), "--family-similarity", "0.1",
                               "--background-similarity", "0.5"]).exit_code == 1


def test_matching_accuracy_makes_the_simulation_as_hard_as_the_data():
    from skuscale.simulate.fit import _proxy_val_top1

    # A "real" catalogue whose val images are much noisier than its training images
    # (another shooting session): statistics of the train split alone miss that.
    base = SimulatorParams(n_skus=60, dim=24, within_spread=0.4, max_train=15, min_train=15, val_per_sku=5, seed=7)
    easy, hard = simulate_catalogue(base), simulate_catalogue(base.replace(within_spread=1.1))
    real = easy.select(easy.split == "train")
    real = type(easy)(X=np.vstack([real.X, hard.part("val").X]), sku=np.concatenate([real.sku, hard.part("val").sku]),
                      split=np.array(["train"] * len(real) + ["val"] * len(hard.part("val"))), meta={})
    target = _proxy_val_top1(real)
    assert target < 0.9
    plain = fit_simulator_params(real)
    matched = fit_simulator_params(real, match_accuracy=True)
    assert matched.within_spread > plain.within_spread
    got = np.mean([_proxy_val_top1(simulate_catalogue(matched.replace(seed=s))) for s in (20, 21, 22, 23)])
    assert got == pytest.approx(target, abs=0.06)
    assert _proxy_val_top1(simulate_catalogue(plain.replace(seed=20))) > target + 0.05


def test_preset_keeps_its_own_seed_unless_one_is_given(tmp_path):
    """`simulate --preset rollout` writes the demo's rollout catalogue."""
    from skuscale.demo import ROLLOUT

    runner = CliRunner()
    small = ["--n-skus", "40", "--dim", "8", "--months", "1"]
    out = tmp_path / "r.npz"
    assert runner.invoke(app, ["simulate", "--out", str(out), "--preset", "rollout", *small]).exit_code == 0
    expected = simulate_catalogue(ROLLOUT.replace(n_skus=40, dim=8, months=1))
    np.testing.assert_array_equal(load_embeddings(out).X, expected.X)
    assert load_embeddings(out).meta["params"]["seed"] == ROLLOUT.seed != 0
    result = runner.invoke(app, ["simulate", "--out", str(out), "--preset", "rollout", "--seed", "0", *small])
    assert result.exit_code == 0, result.output
    assert load_embeddings(out).meta["params"]["seed"] == 0
