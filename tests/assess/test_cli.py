"""``skuscale assess`` end to end on a small real bundle, and its report in headless Chromium."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from skuscale.cli.main import app
from tests.browser import assert_images_rendered, open_page

runner = CliRunner()
pytestmark = pytest.mark.slow
LOG = "date,sku,change\n" + "".join(f"2024-0{m}-10,SKU-{m}-{i},added\n" for m in range(1, 7) for i in range(2))


@pytest.fixture(scope="module")
def bundle_dir(small_real, cache_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("assess-bundle") / "b"
    result = runner.invoke(app, [
        "build", "--finetune-epochs", "0", "--train", str(small_real["train"]), "--val", str(small_real["val"]),
        "--reference", str(small_real["reference"]), "--out", str(out), "--cache-dir", str(cache_dir),
    ])
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="module")
def catalogue_log(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("log") / "changes.csv"
    path.write_text(LOG)
    return path


def _assess(bundle_dir, small_real, cache_dir, out, *extra):
    return runner.invoke(app, [
        "assess", str(bundle_dir), "--train", str(small_real["train"]), "--val", str(small_real["val"]),
        "--out", str(out), "--cache-dir", str(cache_dir), *extra,
    ])


@pytest.fixture(scope="module")
def full_run(bundle_dir, small_real, cache_dir, catalogue_log, tmp_path_factory):
    out = tmp_path_factory.mktemp("assess-report")
    result = _assess(bundle_dir, small_real, cache_dir, out, "--device", "shelf-camera",
                     "--catalogue-log", str(catalogue_log))
    return result, out


def test_report_has_every_check_and_matches_the_exit_code(full_run):
    result, out = full_run
    report = json.loads((out / "report.json").read_text())
    assert result.exit_code == report["exit_code"], result.output
    assert [c["number"] for c in report["checks"]] == [1, 2, 3, 4, 5, 6, 7]
    statuses = {c["check"]: c["status"] for c in report["checks"]}
    assert set(statuses.values()) <= {"pass", "fail"}, report["checks"]
    assert result.exit_code == (1 if "fail" in statuses.values() else 0)
    # 2 SKUs a month for the last 3 months of the log over a 6-SKU catalogue: 6 / 6 changed in a quarter.
    catalogue = next(c for c in report["checks"] if c["check"] == "catalogue_change")
    assert catalogue["value"] == pytest.approx(1.0) and catalogue["status"] == "fail"
    memory = next(c for c in report["checks"] if c["check"] == "memory_headroom")
    assert memory["details"]["footprint"]["weights_bytes"] > 10 * 1024 * 1024  # EfficientNet-Lite0, float32
    assert memory["details"]["lowest_tier"] == "shelf-cam-basic"
    # The bundle was built on the validation images: predictions come from a head refitted without them.
    assert "refitted on the training images only" in report["tail_view"]["source"]
    assert report["tail_view"]["top"]["skus"] and report["tail_view"]["bottom"]["skus"]
    for check in report["checks"]:
        if check["status"] == "fail":
            assert check["actions"], check["check"]
    text = " ".join(result.output.split())
    for title in ("Sample balance", "Visual similarity", "Calibration"):
        assert title in text
    assert "report:" in text


def test_report_renders_in_headless_chromium(full_run, tmp_path):
    _, out = full_run
    shot = tmp_path / "report.png"
    with open_page((out / "report.html").resolve().as_uri()) as page:
        page.screenshot(path=str(shot), full_page=True)
        images = assert_images_rendered(page, minimum=8)  # one plot per check (7) and the tail view
    assert all(img["src"].startswith("data:image/png;base64,") for img in images)
    assert shot.stat().st_size > 10_000


def test_lenient_config_passes_with_exit_code_zero(bundle_dir, small_real, cache_dir, tmp_path):
    config = tmp_path / "lenient.yaml"
    config.write_text(
        "checks:\n"
        "  sample_balance: {max_ratio: 1000}\n"
        "  visual_similarity: {spread_factor: 0}\n"
        "  memory_headroom: {min_headroom: -100}\n"
        "  ood_heldout: {min_detection: 0, compare_detectors: false}\n"
        "  class_spread: {max_std_pp: 100}\n"
        "  calibration: {max_ece: 1}\n"
    )
    result = _assess(bundle_dir, small_real, cache_dir, tmp_path / "out", "--config", str(config),
                     "--device", "handheld")
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["verdict"] == "go"
    assert {c["check"]: c["status"] for c in report["checks"]}["catalogue_change"] == "skipped"


def test_bad_catalogue_log_is_an_error_naming_the_line(bundle_dir, small_real, cache_dir, tmp_path):
    log = tmp_path / "bad.csv"
    log.write_text("date,sku,change\n2024-01-01,A,added\n2024-02-30,B,added\n")
    config = tmp_path / "quick.yaml"
    config.write_text("checks:\n  ood_heldout: {compare_detectors: false}\n")
    result = _assess(bundle_dir, small_real, cache_dir, tmp_path / "out", "--catalogue-log", str(log),
                     "--config", str(config))
    assert result.exit_code == 1
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    catalogue = next(c for c in report["checks"] if c["check"] == "catalogue_change")
    assert catalogue["status"] == "error"
    assert "line 3: unparseable date '2024-02-30'" in catalogue["summary"]
    assert "line 3" in " ".join(result.output.split())
    # The other checks still ran.
    assert sum(c["status"] in ("pass", "fail") for c in report["checks"]) == 5


@pytest.mark.parametrize(("extra", "needle"), [
    (["--device", "toaster"], "unknown device profile 'toaster'"),
    (["--config", "MISSING"], "cannot read config"),
    (["--catalogue-log", "MISSING.csv"], "does not exist"),
])
def test_usage_errors_exit_two(bundle_dir, small_real, cache_dir, tmp_path, extra, needle):
    extra = [str(tmp_path / e) if e.startswith("MISSING") else e for e in extra]
    result = _assess(bundle_dir, small_real, cache_dir, tmp_path / "out", *extra)
    assert result.exit_code == 2, result.output
    assert needle in " ".join(result.output.split())
    assert not (tmp_path / "out" / "report.json").exists()


def test_missing_bundle_and_missing_option_exit_two(small_real, tmp_path):
    result = runner.invoke(app, ["assess", str(tmp_path / "nope"), "--train", str(small_real["train"]),
                                 "--out", str(tmp_path / "out")])
    assert result.exit_code == 2
    assert "not a skuscale bundle" in " ".join(result.output.split())
    assert runner.invoke(app, ["assess", str(tmp_path), "--out", str(tmp_path / "o")]).exit_code == 2


def test_validation_images_that_are_training_images_are_not_scored_as_held_out(bundle_dir, small_real, cache_dir,
                                                                               tmp_path):
    import csv

    def rows(path):
        with open(path, newline="") as fh:
            return [{**r, "path": str((Path(path).parent / r["path"]).resolve())} for r in csv.DictReader(fh)]

    train_rows, val_rows = rows(small_real["train"]), rows(small_real["val"])
    mixed = tmp_path / "mixed.csv"
    with open(mixed, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["path", "sku", "category"])
        writer.writeheader()
        writer.writerows({k: r[k] for k in ("path", "sku", "category")} for r in val_rows + train_rows[:3])
    config = tmp_path / "quick.yaml"
    config.write_text("checks:\n  ood_heldout: {compare_detectors: false}\n")
    out = tmp_path / "out"
    result = runner.invoke(app, ["assess", str(bundle_dir), "--train", str(small_real["train"]), "--val", str(mixed),
                                 "--out", str(out), "--cache-dir", str(cache_dir), "--config", str(config)])
    assert result.exit_code in (0, 1), result.output
    notes = " ".join(json.loads((out / "report.json").read_text())["notes"])
    assert f"3 of the {len(val_rows) + 3} validation images are also training images" in notes
    # All of them shared: nothing is held out, and that is refused.
    result = runner.invoke(app, ["assess", str(bundle_dir), "--train", str(small_real["train"]),
                                 "--val", str(small_real["train"]), "--out", str(tmp_path / "o2"),
                                 "--cache-dir", str(cache_dir)])
    assert result.exit_code == 2 and "nothing would be held out" in " ".join(result.output.split())
