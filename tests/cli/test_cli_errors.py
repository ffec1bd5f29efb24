"""Bad output paths and out-of-range options: one clear error line, the right exit code, nothing lost.

Everything here runs on a small simulated embedding file, so it needs no images.
"""

from __future__ import annotations

import errno
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from skuscale.build import build_bundle_from_embeddings
from skuscale.cli.main import app
from skuscale.data import save_embeddings
from skuscale.exceptions import SkuscaleError
from skuscale.simulate import SimulatorParams, simulate_catalogue

runner = CliRunner()


@pytest.fixture(scope="module")
def sim(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("sim") / "sim.npz"
    save_embeddings(path, simulate_catalogue(SimulatorParams(n_skus=8, dim=8, max_train=10, min_train=6,
                                                             val_per_sku=3, test_per_sku=3, seed=3)))
    return path


@pytest.fixture(scope="module")
def sim_bundle(sim, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("sim-bundle") / "b"
    build_bundle_from_embeddings(sim, out)
    return out


@pytest.fixture
def precious(tmp_path) -> Path:
    """A folder of the user's that no command may delete."""
    folder = tmp_path / "precious"
    (folder / "sub").mkdir(parents=True)
    (folder / "notes.txt").write_text("important")
    return folder


def _clean_error(result, code: int, *needles: str) -> str:
    """The command failed with ``code`` and a message naming ``needles``, not a traceback."""
    text = " ".join(result.output.split())
    assert result.exit_code == code, result.output
    assert isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output
    for needle in needles:
        assert needle in text, (needle, text)
    return text


def _build(sim, out, *extra):
    return runner.invoke(app, ["build", "--embeddings", str(sim), "--out", str(out), *extra])


# ----------------------------------------------------------------------------- build --out


def test_build_refuses_to_replace_a_folder_that_is_not_a_bundle(sim, precious):
    result = _build(sim, precious)
    _clean_error(result, 2, "neither empty nor a skuscale bundle", str(precious))
    assert (precious / "notes.txt").read_text() == "important" and (precious / "sub").is_dir()
    assert not [p for p in precious.parent.iterdir() if p.name.endswith(".partial")]


@pytest.mark.parametrize(("make", "out", "needle"), [
    ("file", "afile", "is a file, not a folder"),
    ("file", "afile/b", "afile is a file, not a folder"),
    (None, ".", "does not name a folder"),
    (None, "..", "does not name a folder"),
])
def test_build_refuses_an_out_that_is_no_folder_name(sim, tmp_path, monkeypatch, make, out, needle):
    # Two levels down, so that even a build that wrongly replaced ``..`` stays inside tmp_path.
    cwd = tmp_path / "outer" / "cwd"
    cwd.mkdir(parents=True)
    (cwd / "notes.txt").write_text("important")
    monkeypatch.chdir(cwd)
    if make == "file":
        (cwd / "afile").write_text("mine")
    before = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))
    _clean_error(_build(sim, out), 2, needle)
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")) == before
    if make == "file":
        assert (cwd / "afile").read_text() == "mine"


def test_build_refuses_a_symbolic_link(sim, tmp_path, sim_bundle):
    link = tmp_path / "link"
    link.symlink_to(sim_bundle, target_is_directory=True)
    _clean_error(_build(sim, link), 2, "symbolic link")
    assert (sim_bundle / "bundle.json").is_file()


def test_build_writes_into_an_empty_folder_and_replaces_an_earlier_bundle(sim, tmp_path):
    out = tmp_path / "b"
    out.mkdir()
    assert _build(sim, out).exit_code == 0
    result = _build(sim, out, "--seed", "1")
    assert result.exit_code == 0, result.output
    doc = json.loads((out / "bundle.json").read_text())
    assert doc["training"]["config"]["seed"] == 1
    # Nothing is left next to it: no staging folder, no set-aside copy of the earlier bundle.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]


def test_build_os_error_is_one_line_and_keeps_the_earlier_bundle(sim, tmp_path, monkeypatch):
    from skuscale.bundle import Bundle

    out = tmp_path / "b"
    assert _build(sim, out).exit_code == 0
    before = (out / "bundle.json").read_text()

    def full_disk(self, root):
        (Path(root) / "half-written").write_text("x")
        raise OSError(errno.ENOSPC, "No space left on device", str(root))

    monkeypatch.setattr(Bundle, "save", full_disk)
    _clean_error(_build(sim, out), 1, "No space left on device")
    assert (out / "bundle.json").read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]


def test_bundle_records_the_absolute_embedding_path(sim, tmp_path, monkeypatch):
    monkeypatch.chdir(sim.parent)
    assert _build(sim.name, tmp_path / "b").exit_code == 0
    assert json.loads((tmp_path / "b" / "bundle.json").read_text())["training"]["embeddings"] == str(sim.resolve())


def test_library_build_refuses_too(sim, precious):
    with pytest.raises(SkuscaleError, match="neither empty nor a skuscale bundle"):
        build_bundle_from_embeddings(sim, precious)
    assert (precious / "notes.txt").is_file()


def test_replace_folder_checks_out_again_and_restores_the_earlier_bundle_on_failure(tmp_path, sim_bundle,
                                                                                     monkeypatch):
    import os
    import shutil

    from skuscale.build import check_out_folder, replace_folder

    staging = tmp_path / "new"
    staging.mkdir()
    (staging / "bundle.json").write_text("{}")
    # A folder that filled up while the build ran is not replaced.
    late = tmp_path / "late"
    late.mkdir()
    (late / "notes.txt").write_text("important")
    with pytest.raises(SkuscaleError, match="neither empty nor a skuscale bundle"):
        replace_folder(staging, late)
    assert (late / "notes.txt").is_file() and staging.is_dir()

    out = tmp_path / "b"
    shutil.copytree(sim_bundle, out)
    real_replace = os.replace

    def failing_replace(src, dst):
        if Path(src) == staging:
            raise OSError(errno.EXDEV, "Invalid cross-device link", str(src))
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError, match="cross-device"):
        replace_folder(staging, out)
    assert check_out_folder(out) == out and (out / "head.npz").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b", "late", "new"]


# ----------------------------------------------------------------------------- options out of range


@pytest.mark.parametrize(("extra", "needle"), [
    (["--threads", "-1"], "--threads"),
    (["--threads", "0"], "--threads"),
    (["--seed", "-1"], "--seed"),
])
def test_build_option_out_of_range_is_a_usage_error(sim, tmp_path, extra, needle):
    _clean_error(_build(sim, tmp_path / "b", *extra), 2, needle)
    assert not (tmp_path / "b").exists()


@pytest.mark.parametrize(("extra", "needle"), [
    (["--port", "70000"], "--port"),
    (["--port", "-1"], "--port"),
    (["--log-level", "bogus"], "--log-level"),
])
def test_serve_option_out_of_range_is_a_usage_error(sim_bundle, tmp_path, monkeypatch, extra, needle):
    # serve passes its settings through the environment: restore it whatever happens.
    for key in ("SKUSCALE_BUNDLE", "SKUSCALE_DATA_DIR"):
        monkeypatch.setenv(key, "")
    result = runner.invoke(app, ["serve", str(sim_bundle), "--data-dir", str(tmp_path / "data"), *extra])
    _clean_error(result, 2, needle)


# ----------------------------------------------------------------------------- output files of other commands


def test_evaluate_json_that_is_a_folder_or_under_a_file(sim, sim_bundle, tmp_path):
    (tmp_path / "afile").write_text("mine")
    for target, needle in ((tmp_path, "is a folder"), (tmp_path / "afile" / "m.json", "is a file, not a folder")):
        result = runner.invoke(app, ["evaluate", str(sim_bundle), "--embeddings", str(sim), "--json", str(target)])
        _clean_error(result, 2, "--json", needle)
    assert (tmp_path / "afile").read_text() == "mine"


def test_evaluate_json_write_failure_still_shows_the_metrics(sim, sim_bundle, tmp_path, monkeypatch):
    def refuse(self, *args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", str(self))

    monkeypatch.setattr(Path, "write_text", refuse)
    result = runner.invoke(app, ["evaluate", str(sim_bundle), "--embeddings", str(sim),
                                 "--json", str(tmp_path / "m.json")])
    _clean_error(result, 1, "cannot write --json: Permission denied", "top1")


def test_simulate_out_that_is_a_folder(tmp_path):
    result = runner.invoke(app, ["simulate", "--out", str(tmp_path), "--n-skus", "5", "--dim", "4"])
    _clean_error(result, 2, "--out", "is a folder")


def test_forecast_out_that_is_a_file_fails_before_forecasting(sim, tmp_path, monkeypatch):
    import skuscale.forecast as forecast_module

    def never(*args, **kwargs):
        raise RuntimeError("the forecast ran although --out was unusable")

    monkeypatch.setattr(forecast_module, "forecast", never)
    (tmp_path / "afile").write_text("mine")
    result = runner.invoke(app, ["forecast", "--train", str(sim), "--to", "50", "--out", str(tmp_path / "afile")])
    _clean_error(result, 2, "--out", "is a file, not a folder")
    assert (tmp_path / "afile").read_text() == "mine"


def test_assess_out_that_is_a_file_fails_before_assessing(sim, sim_bundle, tmp_path):
    (tmp_path / "afile").write_text("mine")
    result = runner.invoke(app, ["assess", str(sim_bundle), "--embeddings", str(sim), "--out", str(tmp_path / "afile")])
    text = _clean_error(result, 2, "--out", "is a file, not a folder")
    assert "passed" not in text  # no check ran
    assert (tmp_path / "afile").read_text() == "mine"


def test_export_refuses_to_replace_a_folder_that_is_not_a_bundle(sim_bundle, precious, tmp_path):
    result = runner.invoke(app, ["export", str(sim_bundle), "--out", str(precious)])
    _clean_error(result, 2, "neither empty nor a skuscale bundle")
    assert (precious / "notes.txt").read_text() == "important"
    result = runner.invoke(app, ["export", str(sim_bundle), "--out", str(tmp_path / "e"), "--report", str(tmp_path)])
    _clean_error(result, 2, "--report", "is a folder")
    assert not (tmp_path / "e").exists()


# ----------------------------------------------------------------------------- export options: contradictory or unused


@pytest.mark.parametrize(("extra", "needles"), [
    (["--thresholds", "refit"], ["--thresholds", "only to an INT8 export"]),
    (["--calibration-per-sku", "3"], ["--calibration-per-sku", "only to an INT8 export"]),
    (["--keep-thresholds", "--margin-quantile", "0.8"], ["--keep-thresholds, --margin-quantile", "--int8"]),
    (["--calibration", "train.csv", "--exclude-node", "n", "--margin-per-sku", "3"],
     ["--calibration, --exclude-node, --margin-per-sku", "--int8"]),
    (["--int8", "--thresholds", "refit", "--keep-thresholds"], ["--keep-thresholds contradicts --thresholds refit"]),
    (["--int8", "--thresholds", "auto", "--keep-thresholds"], ["--keep-thresholds contradicts --thresholds auto"]),
    (["--int8", "--keep-thresholds", "--margin-quantile", "0.8"],
     ["--margin-quantile sets the threshold re-fit", "--keep-thresholds never runs"]),
    (["--int8", "--thresholds", "keep", "--margin-per-sku", "3", "--margin-quantile", "0.8"],
     ["--margin-per-sku, --margin-quantile set the threshold re-fit", "--thresholds keep never runs"]),
])
def test_export_refuses_options_it_would_ignore_or_that_contradict(sim_bundle, tmp_path, extra, needles):
    out = tmp_path / "e"
    _clean_error(runner.invoke(app, ["export", str(sim_bundle), "--out", str(out), *extra]), 2, *needles)
    assert not out.exists()


@pytest.mark.parametrize("extra", [
    [],
    ["--eval", "val.csv", "--cache-dir", "cache"],
    ["--int8", "--keep-thresholds", "--thresholds", "keep", "--calibration-per-sku", "3", "--exclude-node", "n"],
    ["--int8", "--thresholds", "refit", "--margin-per-sku", "3", "--margin-quantile", "0.8",
     "--calibration", "train.csv"],
    ["--int8", "--margin-quantile", "0.8"],
])
def test_export_accepts_the_documented_combinations(sim_bundle, tmp_path, extra):
    # They pass the option checks and reach the bundle, which has no image backbone to export (exit 1, not 2).
    result = runner.invoke(app, ["export", str(sim_bundle), "--out", str(tmp_path / "e"), *extra])
    _clean_error(result, 1, "has no image backbone")


# ----------------------------------------------------------------------------- a bundle built from embeddings


def test_predict_on_an_embedding_bundle_gives_advice_for_predict(sim_bundle, tmp_path):
    result = runner.invoke(app, ["predict", str(sim_bundle), str(tmp_path / "g.jpg")])
    text = _clean_error(result, 1, f"cannot predict on images: bundle {sim_bundle} was built from embeddings",
                        "skuscale evaluate BUNDLE --embeddings FILE")
    assert "evaluate it with --embeddings" not in text


def test_serve_on_an_embedding_bundle_fails_before_starting(sim_bundle, tmp_path, monkeypatch):
    for key in ("SKUSCALE_BUNDLE", "SKUSCALE_DATA_DIR"):
        monkeypatch.setenv(key, "")
    for workers in ("1", "2"):
        result = runner.invoke(app, ["serve", str(sim_bundle), "--data-dir", str(tmp_path / "data"),
                                     "--port", "0", "--workers", workers])
        _clean_error(result, 1, f"cannot serve images: bundle {sim_bundle} was built from embeddings",
                     "skuscale evaluate BUNDLE --embeddings FILE")


def test_evaluate_images_on_an_embedding_bundle(sim_bundle, tmp_path):
    result = runner.invoke(app, ["evaluate", str(sim_bundle), "--data", str(tmp_path / "val.csv")])
    _clean_error(result, 1, "cannot evaluate images", "--embeddings FILE")


# ----------------------------------------------------------------------------- evaluate and forecast usage errors


def test_evaluate_embeddings_of_the_wrong_size_is_a_usage_error(sim_bundle, tmp_path):
    other = tmp_path / "wide.npz"
    save_embeddings(other, simulate_catalogue(SimulatorParams(n_skus=4, dim=12, max_train=4, min_train=2,
                                                              val_per_sku=1, test_per_sku=1, seed=1)))
    result = runner.invoke(app, ["evaluate", str(sim_bundle), "--embeddings", str(other)])
    text = _clean_error(result, 2, f"embedding file {other} is 12-d, the bundle was built from 8-d embeddings")
    assert "features" not in text


def test_evaluate_split_the_file_lacks_is_a_usage_error(sim, sim_bundle):
    result = runner.invoke(app, ["evaluate", str(sim_bundle), "--embeddings", str(sim), "--split", "tset"])
    _clean_error(result, 2, "has no rows of split 'tset'", "its splits: test, train, val")


def test_evaluate_split_with_images_is_a_usage_error(sim_bundle, tmp_path):
    result = runner.invoke(app, ["evaluate", str(sim_bundle), "--data", str(tmp_path), "--split", "test"])
    _clean_error(result, 2, "--split", "does not apply to --data")


@pytest.mark.parametrize(("train", "extra", "needle"), [
    ("train.csv", [], "images need --bundle"),
    ("sim.npz", ["--val", "val.csv"], "--val applies to image manifests"),
    ("sim.npz", ["--bundle", "b"], "--bundle embeds image manifests"),
])
def test_forecast_inputs_that_do_not_go_together_are_usage_errors(tmp_path, monkeypatch, train, extra, needle):
    import skuscale.forecast as forecast_module

    def never(*args, **kwargs):
        raise RuntimeError("the forecast ran although its inputs do not go together")

    monkeypatch.setattr(forecast_module, "forecast", never)
    result = runner.invoke(app, ["forecast", "--train", str(tmp_path / train), "--to", "50",
                                 "--out", str(tmp_path / "out"), *extra])
    _clean_error(result, 2, needle)


def test_serve_settings_that_cannot_be_parsed_are_a_usage_error(sim_bundle, tmp_path, monkeypatch):
    for key in ("SKUSCALE_BUNDLE", "SKUSCALE_DATA_DIR"):
        monkeypatch.setenv(key, "")
    monkeypatch.setenv("SKUSCALE_TOKENS", "")  # not JSON: pydantic-settings cannot parse it
    result = runner.invoke(app, ["serve", str(sim_bundle), "--data-dir", str(tmp_path / "data"), "--port", "0"])
    _clean_error(result, 2, "invalid settings", "tokens")
