"""``skuscale forecast`` on real images: manifests embedded with a small bundle's backbone."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from skuscale.cli.main import app


@pytest.mark.slow
def test_forecast_on_real_image_manifests(small_real, tmp_path):
    runner = CliRunner()
    cache = tmp_path / "cache"
    bundle = tmp_path / "bundle"
    built = runner.invoke(app, ["build", "--finetune-epochs", "0",
                                "--train", str(small_real["train"]), "--val", str(small_real["val"]),
                                "--out", str(bundle), "--cache-dir", str(cache)])
    assert built.exit_code == 0, built.output
    out = tmp_path / "forecast"
    result = runner.invoke(app, ["forecast", "--train", str(small_real["train"]), "--val", str(small_real["val"]),
                                 "--bundle", str(bundle), "--to", "12", "--out", str(out),
                                 "--cache-dir", str(cache), "--repeats", "2"])
    assert result.exit_code == 0, result.output
    doc = json.loads((out / "forecast.json").read_text())
    assert doc["simulated"] is False and "SIMULATED" not in (out / "forecast.html").read_text()
    assert doc["n_skus"] == len(small_real["skus"]) and doc["evaluation"] == "val rows"
    assert doc["n_eval_images"] == 3 * len(small_real["skus"])
    sizes, top1 = doc["curve"]["size"], doc["curve"]["top1"]
    assert sizes[-1] == 12 and top1[-1] <= top1[sizes.index(6)] <= 1.0
    # Images need a backbone: the manifest without --bundle is refused with a clear message.
    refused = runner.invoke(app, ["forecast", "--train", str(small_real["train"]), "--to", "12", "--out", str(out)])
    assert refused.exit_code == 2 and "--bundle" in refused.output
