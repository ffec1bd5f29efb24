from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from skuscale.data import (
    Dataset,
    Item,
    load_dataset,
    read_image_folder,
    read_manifest,
    validate_dataset,
)
from skuscale.exceptions import ManifestError

HEADER = ["path", "sku", "category"]


def _save_png(path: Path, colour: tuple[int, int, int] = (200, 10, 10)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 6), colour).save(path, format="PNG")
    return path


def _one_problem_matching(error: ManifestError, *fragments: str) -> str:
    matches = [p for p in error.problems if all(f in p for f in fragments)]
    assert len(matches) == 1, f"expected one problem with {fragments}, got {error.problems}"
    return matches[0]


# --- reading manifests ---------------------------------------------------------------


def test_read_manifest_with_absolute_paths_to_real_images(tmp_path, real_rows, write_csv):
    rows = [[r["path"], r["sku"], r["category"]] for r in real_rows]
    manifest = write_csv(tmp_path / "subset.csv", [HEADER, *rows])

    dataset = load_dataset(manifest)

    assert len(dataset) == 4
    assert dataset.source == str(manifest)
    assert dataset.paths == [Path(r["path"]).resolve() for r in real_rows]
    assert all(p.is_absolute() for p in dataset.paths)
    assert dataset.skus == sorted({r["sku"] for r in real_rows})
    assert dataset.labels.tolist() == [r["sku"] for r in real_rows]
    assert dataset.labels.dtype.kind == "U"
    assert dataset.categories() == {r["sku"]: r["category"] for r in real_rows}


def test_relative_paths_resolve_against_manifest_folder(
    tmp_path, real_rows, write_csv, monkeypatch
):
    image_dir = tmp_path / "images"
    image_dir.mkdir()
    copies = [
        Path(shutil.copy(r["path"], image_dir / f"img{i}.jpg")) for i, r in enumerate(real_rows)
    ]
    manifest_dir = tmp_path / "manifests"
    manifest_dir.mkdir()
    manifest = write_csv(
        manifest_dir / "rel.csv",
        [
            HEADER,
            *[
                [f"../images/{copy.name}", row["sku"], row["category"]]
                for copy, row in zip(copies, real_rows, strict=True)
            ],
        ],
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)

    dataset = load_dataset(os.path.relpath(manifest, elsewhere))

    assert dataset.paths == [c.resolve() for c in copies]


def test_relative_paths_to_real_dataset_files(tmp_path, real_rows, write_csv):
    rows = [[os.path.relpath(r["path"], tmp_path), r["sku"], ""] for r in real_rows[:2]]
    manifest = write_csv(tmp_path / "rel_real.csv", [HEADER, *rows])

    dataset = load_dataset(manifest)

    assert dataset.paths == [Path(r["path"]).resolve() for r in real_rows[:2]]
    assert all(item.category is None for item in dataset.items)
    assert dataset.categories() == {}


def test_real_reference_manifest_reads_every_sku(grocery_root):
    dataset = load_dataset(grocery_root / "reference.csv", check_images=False)

    assert len(dataset) == 81
    assert len(dataset.skus) == 81
    assert set(dataset.categories()) == set(dataset.skus)
    assert all(p.is_file() for p in dataset.paths)


def test_header_tolerates_bom_whitespace_and_case(tmp_path):
    image = _save_png(tmp_path / "a.png")
    manifest = tmp_path / "bom.csv"
    manifest.write_bytes(
        "\ufeff Path , SKU ,Category \r\n  a.png ,  milk-1l , \r\n\r\n , , \r\n".encode()
    )

    dataset = load_dataset(manifest)

    assert dataset.items == [Item(path=image.resolve(), sku="milk-1l", category=None)]


def test_category_column_is_optional(tmp_path, write_csv):
    _save_png(tmp_path / "a.png")
    manifest = write_csv(tmp_path / "m.csv", [["sku", "path"], ["juice", "a.png"]])

    dataset = load_dataset(manifest)

    assert dataset.items[0].sku == "juice"
    assert dataset.items[0].category is None


def test_wrong_header_is_reported_at_once_with_columns_found(tmp_path, write_csv):
    manifest = write_csv(tmp_path / "m.csv", [["file", "label", "category"], ["a.png", "x", "y"]])

    with pytest.raises(ManifestError) as info:
        read_manifest(manifest)

    [problem] = info.value.problems
    assert "path" in problem and "sku" in problem
    assert "'file'" in problem and "'label'" in problem
    assert info.value.source == str(manifest)


def test_rows_that_cannot_become_items_are_all_listed(tmp_path, write_csv):
    manifest = write_csv(
        tmp_path / "m.csv",
        [
            HEADER,
            ["", "milk", "dairy"],
            ["a.png", "milk", "dairy", "oops"],
            ["b.png", "milk", "dairy", ""],  # a trailing empty cell is tolerated
        ],
    )

    with pytest.raises(ManifestError) as info:
        read_manifest(manifest)

    assert len(info.value.problems) == 2
    _one_problem_matching(info.value, "line 2", "empty path")
    _one_problem_matching(info.value, "line 3", "oops")


def test_unresolvable_paths_are_row_problems(tmp_path, write_csv):
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    manifest = write_csv(
        tmp_path / "m.csv",
        [HEADER, ["a\0b.png", "milk", "dairy"], ["ok.png", "milk", "dairy"], ["loop", "milk", "dairy"]],
    )

    with pytest.raises(ManifestError) as info:
        read_manifest(manifest)

    assert len(info.value.problems) == 2
    _one_problem_matching(info.value, "line 2", "invalid path 'a\\x00b.png'")
    _one_problem_matching(info.value, "line 4", "invalid path 'loop'")


def test_empty_file_and_header_only_manifest(tmp_path, write_csv):
    empty = tmp_path / "empty.csv"
    empty.write_bytes(b"")
    with pytest.raises(ManifestError, match="no header"):
        read_manifest(empty)

    header_only = write_csv(tmp_path / "header.csv", [HEADER])
    assert len(read_manifest(header_only)) == 0
    with pytest.raises(ManifestError, match="empty"):
        load_dataset(header_only)


# --- image folders and dispatch ----------------------------------------------------


def test_read_image_folder(tmp_path):
    root = tmp_path / "shelf"
    expected = [
        _save_png(root / "apple" / "1.jpg"),
        _save_png(root / "apple" / "2.JPEG"),
        _save_png(root / "milk" / "a.Png"),
    ]
    (root / "milk" / "notes.txt").write_text("not an image")
    _save_png(root / "milk" / ".hidden.png")
    _save_png(root / "milk" / "nested" / "deep.png")
    _save_png(root / ".cache" / "x.png")
    _save_png(root / "loose.png")

    dataset = load_dataset(root)

    assert dataset.source == str(root)
    assert dataset.paths == [p.resolve() for p in expected]
    assert dataset.labels.tolist() == ["apple", "apple", "milk"]
    assert all(item.category is None for item in dataset.items)
    assert dataset.categories() == {}


def test_load_dataset_rejects_other_paths(tmp_path):
    text_file = tmp_path / "list.txt"
    text_file.write_text("path,sku\n")
    with pytest.raises(ManifestError, match=r"\.csv"):
        load_dataset(text_file)
    with pytest.raises(ManifestError, match="no such file"):
        load_dataset(tmp_path / "missing.csv")
    with pytest.raises(ManifestError, match="not found"):
        read_image_folder(tmp_path / "missing")


def test_empty_image_folder_fails_validation(tmp_path):
    (tmp_path / "root" / "sku").mkdir(parents=True)
    with pytest.raises(ManifestError, match="empty"):
        load_dataset(tmp_path / "root")


# --- Dataset operations -----------------------------------------------------------


@pytest.fixture
def small_dataset(tmp_path) -> Dataset:
    items = [
        Item(tmp_path / "0.png", "apple", "fruit"),
        Item(tmp_path / "1.png", "milk", "dairy"),
        Item(tmp_path / "2.png", "apple", "fruit"),
        Item(tmp_path / "3.png", "juice", None),
    ]
    return Dataset(items=items, source="small")


def test_subset_by_mask_and_by_indices(small_dataset):
    by_mask = small_dataset.subset(small_dataset.labels == "apple")
    assert by_mask.labels.tolist() == ["apple", "apple"]
    assert by_mask.source == "small"

    by_indices = small_dataset.subset([3, 0, -1])
    assert [p.name for p in by_indices.paths] == ["3.png", "0.png", "3.png"]
    assert len(small_dataset.subset(np.array([], dtype=int))) == 0
    assert len(small_dataset.subset([])) == 0
    assert len(small_dataset.subset([]).subset(np.array([], dtype=bool))) == 0


def test_subset_rejects_bad_selectors(small_dataset):
    with pytest.raises(ValueError, match="4 items"):
        small_dataset.subset([True, False])
    with pytest.raises(ValueError, match="0 entries, dataset has 4 items"):
        small_dataset.subset(np.array([], dtype=bool))
    with pytest.raises(ValueError, match="out of range"):
        small_dataset.subset([4])
    with pytest.raises(ValueError, match="dtype"):
        small_dataset.subset([0.5])


def test_exclude_skus_drops_them_entirely(small_dataset):
    assert small_dataset.exclude_skus(["apple", "unknown"]).skus == ["juice", "milk"]
    assert small_dataset.exclude_skus("milk").skus == ["apple", "juice"]
    assert len(small_dataset) == 4


def test_concat_keeps_order_and_takes_new_source(small_dataset):
    joined = Dataset.concat([small_dataset, small_dataset.subset([1])], source="both")
    assert len(joined) == 5
    assert joined.source == "both"
    assert joined.items[-1] == small_dataset.items[1]
    assert joined.categories() == {"apple": "fruit", "milk": "dairy"}


def test_item_is_frozen_and_hashable_ignoring_line(tmp_path):
    plain = Item(tmp_path / "a.png", "milk", "dairy")
    from_csv = Item(tmp_path / "a.png", "milk", "dairy", _manifest="m.csv", _line=7)
    assert plain == from_csv
    assert len({plain, from_csv}) == 1
    with pytest.raises(AttributeError):
        plain.sku = "other"  # type: ignore[misc]


# --- validation -------------------------------------------------------------------


def test_validation_lists_every_problem_in_one_error(
    tmp_path, real_rows, real_jpeg_bytes, write_csv
):
    good = Path(real_rows[0]["path"])
    zero_byte = tmp_path / "zero.jpg"
    zero_byte.write_bytes(b"")
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(np.random.default_rng(0).integers(0, 256, 4000, dtype=np.uint8).tobytes())
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(real_jpeg_bytes[: len(real_jpeg_bytes) // 2])
    other_good = _save_png(tmp_path / "other.png")
    third_good = _save_png(tmp_path / "third.png")

    manifest = write_csv(
        tmp_path / "bad.csv",
        [
            HEADER,
            [str(good), "apple", "fruit"],  # line 2: fine
            ["missing.jpg", "apple", "fruit"],  # line 3
            ["zero.jpg", "apple", "fruit"],  # line 4
            ["corrupt.jpg", "apple", "fruit"],  # line 5
            ["truncated.jpg", "apple", "fruit"],  # line 6
            ["other.png", "", "fruit"],  # line 7
            [str(good), "apple", "fruit"],  # line 8: duplicate of line 2
            ["third.png", "apple", "vegetable"],  # line 9: category differs
        ],
    )

    with pytest.raises(ManifestError) as info:
        load_dataset(manifest)
    error = info.value

    assert error.source == str(manifest)
    assert len(error.problems) == 7, error.problems
    _one_problem_matching(error, "line 3", "not found", "missing.jpg")
    _one_problem_matching(error, "line 4", "zero.jpg", "empty")
    _one_problem_matching(error, "line 5", "corrupt.jpg")
    _one_problem_matching(error, "line 6", "truncated.jpg", "truncated")
    _one_problem_matching(error, "line 7", "empty SKU")
    _one_problem_matching(error, "line 8", "duplicate", "line 2")
    _one_problem_matching(error, "'apple'", "'fruit'", "'vegetable'", "line 9")
    assert str(other_good) not in " ".join(error.problems)
    assert str(third_good) not in " ".join(error.problems)
    assert "7 problem(s)" in str(error)


def test_validation_without_image_check_only_checks_existence(tmp_path, write_csv):
    (tmp_path / "corrupt.jpg").write_bytes(b"not a jpeg")
    manifest = write_csv(
        tmp_path / "m.csv", [HEADER, ["corrupt.jpg", "a", ""], ["gone.jpg", "a", ""]]
    )

    with pytest.raises(ManifestError) as info:
        load_dataset(manifest, check_images=False)
    assert len(info.value.problems) == 1
    _one_problem_matching(info.value, "line 3", "not found")

    assert len(load_dataset(manifest, validate=False)) == 2


def test_validation_of_concatenated_manifests_names_each_manifest(tmp_path, write_csv):
    _save_png(tmp_path / "a.png")
    first = write_csv(tmp_path / "first.csv", [HEADER, ["a.png", "x", ""]])
    second = write_csv(tmp_path / "second.csv", [HEADER, ["b.png", "y", ""], ["a.png", "x", ""]])
    joined = Dataset.concat([read_manifest(first), read_manifest(second)], source="train+extra")

    with pytest.raises(ManifestError) as info:
        validate_dataset(joined)

    assert info.value.source == "train+extra"
    _one_problem_matching(info.value, f"{second} line 2", "not found")
    _one_problem_matching(info.value, f"{second} line 3", "duplicate", f"{first} line 2")


def test_corrupt_image_in_folder_is_reported_by_path(tmp_path):
    root = tmp_path / "shelf"
    _save_png(root / "apple" / "good.png")
    bad = root / "apple" / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 definitely not finished")

    with pytest.raises(ManifestError) as info:
        load_dataset(root)

    [problem] = info.value.problems
    assert str(bad.resolve()) in problem
