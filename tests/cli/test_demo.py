"""The quick-start demo runs on the embedded sample of real images."""

from __future__ import annotations

import json

from skuscale.demo import main, pick_unknown_skus, sample_dir


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
