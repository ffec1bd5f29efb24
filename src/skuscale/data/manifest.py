"""Datasets of labelled product images: CSV manifests, image folders, validation.

A manifest is a CSV file with the columns ``path,sku`` and optionally
``category``; relative paths are resolved against the manifest's folder. An image
folder is laid out as ``DIR/<sku>/*.jpg``. :func:`validate_dataset` collects
every problem it finds and reports them together in one :class:`ManifestError`.
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path

import numpy as np

from skuscale.data.images import decode_image, read_image_bytes
from skuscale.exceptions import ImageError, ManifestError

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png"})
REQUIRED_COLUMNS = ("path", "sku")
OPTIONAL_COLUMNS = ("category",)


@dataclass(frozen=True)
class Item:
    """One labelled image.

    Parameters
    ----------
    path : pathlib.Path
        Absolute, resolved path of the image file.
    sku : str
        The product label.
    category : str or None
        Coarse category of the SKU, or ``None`` when not given.
    """

    path: Path
    sku: str
    category: str | None = None
    # Where the item came from, for messages only; excluded from equality and hashing.
    _manifest: str | None = field(default=None, kw_only=True, repr=False, compare=False)
    _line: int | None = field(default=None, kw_only=True, repr=False, compare=False)


@dataclass
class Dataset:
    """An ordered collection of :class:`Item` with the place it was read from.

    Parameters
    ----------
    items : list of Item
        The labelled images, in manifest (or sorted folder) order.
    source : str
        Manifest path or folder the items came from, used in messages.
    """

    items: list[Item]
    source: str

    @property
    def skus(self) -> list[str]:
        """Sorted unique SKUs."""
        return sorted({item.sku for item in self.items})

    @property
    def labels(self) -> np.ndarray:
        """SKU of each item, as a 1-D array of ``str``."""
        return np.array([item.sku for item in self.items], dtype=str)

    @property
    def paths(self) -> list[Path]:
        """Image path of each item."""
        return [item.path for item in self.items]

    def categories(self) -> dict[str, str]:
        """Map each SKU that has a category to it.

        Returns
        -------
        dict of str to str
            ``sku -> category``; SKUs without a category are left out. If a SKU's
            rows disagree (which :func:`validate_dataset` reports), the first wins.
        """
        mapping: dict[str, str] = {}
        for item in self.items:
            if item.category is not None:
                mapping.setdefault(item.sku, item.category)
        return mapping

    def __len__(self) -> int:
        return len(self.items)

    def subset(self, mask_or_indices: Sequence[bool] | Sequence[int] | np.ndarray) -> Dataset:
        """Items selected by a boolean mask or by integer indices.

        Parameters
        ----------
        mask_or_indices : array-like of bool or int
            A boolean mask with one entry per item, or integer positions (order
            and repeats are kept; negative positions count from the end).

        Returns
        -------
        Dataset
            A new dataset with the same ``source``.

        Raises
        ------
        ValueError
            If a mask has the wrong length, a position is out of range, or the
            selector is neither boolean nor integer.
        """
        selector = np.asarray(mask_or_indices)
        n_items = len(self.items)
        # np.asarray([]) is float64, so an empty list of positions needs this shortcut;
        # an empty boolean mask still goes through the length check below.
        if selector.size == 0 and selector.dtype != bool:
            return Dataset(items=[], source=self.source)
        if selector.ndim != 1:
            raise ValueError(f"selector must be 1-D, got shape {selector.shape}")
        if selector.dtype == bool:
            if selector.shape[0] != n_items:
                raise ValueError(
                    f"boolean mask has {selector.shape[0]} entries, dataset has {n_items} items"
                )
            positions = np.flatnonzero(selector)
        elif np.issubdtype(selector.dtype, np.integer):
            out_of_range = (selector < -n_items) | (selector >= n_items)
            if out_of_range.any():
                bad = selector[out_of_range][:5].tolist()
                raise ValueError(f"indices out of range for {n_items} items: {bad}")
            positions = np.where(selector < 0, selector + n_items, selector)
        else:
            raise ValueError(
                f"selector must be a boolean mask or integer indices, got dtype {selector.dtype}"
            )
        return Dataset(items=[self.items[i] for i in positions.tolist()], source=self.source)

    def exclude_skus(self, skus: Iterable[str]) -> Dataset:
        """Drop every item of the given SKUs.

        Parameters
        ----------
        skus : iterable of str
            SKUs to remove; a single string is taken as one SKU. SKUs not present
            are ignored.

        Returns
        -------
        Dataset
            A new dataset with the same ``source``.
        """
        dropped = {skus} if isinstance(skus, str) else set(skus)
        kept = [item for item in self.items if item.sku not in dropped]
        return Dataset(items=kept, source=self.source)

    @staticmethod
    def concat(datasets: list[Dataset], source: str) -> Dataset:
        """Join datasets end to end.

        Parameters
        ----------
        datasets : list of Dataset
            Datasets to join, in order.
        source : str
            Description of the combined dataset, used in messages.

        Returns
        -------
        Dataset
            The items of all datasets, in order. Duplicates are kept;
            :func:`validate_dataset` reports them.
        """
        items = [item for dataset in datasets for item in dataset.items]
        return Dataset(items=items, source=source)


def read_manifest(path: str | PathLike[str]) -> Dataset:
    """Read a CSV manifest with columns ``path,sku`` and optionally ``category``.

    Relative image paths are resolved against the manifest's folder; absolute
    paths are kept. A UTF-8 byte-order mark and whitespace around header names
    and values are ignored, header names are case-insensitive, blank lines are
    skipped, and an empty category cell means ``None``. Files are not checked
    here; use :func:`validate_dataset` (or :func:`load_dataset`).

    Parameters
    ----------
    path : str or path-like
        The CSV file.

    Returns
    -------
    Dataset
        One item per data row, with ``source`` set to the manifest path.

    Raises
    ------
    ManifestError
        If the file cannot be read, the header lacks a required column, or rows
        cannot be turned into items (empty path cell, extra non-empty cells);
        all row problems are listed together.
    """
    manifest_path = Path(path)
    source = str(manifest_path)
    try:
        with manifest_path.open(encoding="utf-8-sig", newline="") as handle:
            reader = csv.reader(handle)
            # line_num is the physical line a row ends on, which is what an editor shows.
            rows = [(reader.line_num, row) for row in reader]
    except FileNotFoundError:
        raise ManifestError(source, ["manifest file not found"]) from None
    except IsADirectoryError:
        raise ManifestError(source, ["expected a CSV file, got a directory"]) from None
    except UnicodeDecodeError as exc:
        raise ManifestError(source, [f"manifest is not valid UTF-8 text: {exc}"]) from None
    except csv.Error as exc:
        raise ManifestError(source, [f"malformed CSV: {exc}"]) from None
    except OSError as exc:
        raise ManifestError(source, [f"cannot read manifest: {exc.strerror or exc}"]) from None

    if not rows:
        raise ManifestError(source, ["manifest is empty: no header row"])
    _, header = rows[0]
    column_of = _parse_header(header, source)

    base_dir = manifest_path.resolve().parent
    items: list[Item] = []
    problems: list[str] = []
    for line, row in rows[1:]:
        cells = [cell.strip() for cell in row]
        if not any(cells):
            continue
        extra = [cell for cell in cells[len(header) :] if cell]
        if extra:
            problems.append(
                f"line {line}: {len(cells)} fields but the header has {len(header)} "
                f"(extra values {extra})"
            )
            continue
        values = {name: cells[i] if i < len(cells) else "" for name, i in column_of.items()}
        if not values["path"]:
            problems.append(f"line {line}: empty path")
            continue
        image_path = Path(values["path"])
        if not image_path.is_absolute():
            image_path = base_dir / image_path
        try:
            resolved = image_path.resolve()
        except (OSError, ValueError, RuntimeError) as exc:
            # A NUL byte in the cell (ValueError), a symlink loop (RuntimeError before
            # Python 3.13) or a name the OS rejects (OSError) is one bad row, not a crash.
            problems.append(f"line {line}: invalid path {values['path']!r}: {exc}")
            continue
        items.append(
            Item(
                path=resolved,
                sku=values["sku"],
                category=values.get("category") or None,
                _manifest=source,
                _line=line,
            )
        )
    if problems:
        raise ManifestError(source, problems)
    return Dataset(items=items, source=source)


def read_image_folder(path: str | PathLike[str]) -> Dataset:
    """Read an image folder laid out as ``DIR/<sku>/*.jpg``.

    Each sub-folder name is a SKU; files ending in ``.jpg``, ``.jpeg`` or
    ``.png`` (any case) directly inside it are its images. Hidden files and
    folders are skipped. Items are sorted by SKU, then file name; categories
    are ``None``.

    Parameters
    ----------
    path : str or path-like
        The root folder.

    Returns
    -------
    Dataset
        One item per image file, with ``source`` set to the folder path.

    Raises
    ------
    ManifestError
        If ``path`` is not an existing directory.
    """
    root = Path(path)
    source = str(root)
    if not root.is_dir():
        problem = "folder not found" if not root.exists() else "not a directory"
        raise ManifestError(source, [problem])
    items: list[Item] = []
    for sku_dir in sorted(root.iterdir()):
        if sku_dir.name.startswith(".") or not sku_dir.is_dir():
            continue
        for image_path in sorted(sku_dir.iterdir()):
            if (
                image_path.name.startswith(".")
                or image_path.suffix.lower() not in IMAGE_SUFFIXES
                or not image_path.is_file()
            ):
                continue
            items.append(Item(path=image_path.resolve(), sku=sku_dir.name, category=None))
    return Dataset(items=items, source=source)


def load_dataset(
    path: str | PathLike[str], *, validate: bool = True, check_images: bool = True
) -> Dataset:
    """Read a CSV manifest or an image folder, and by default validate it.

    Parameters
    ----------
    path : str or path-like
        A ``.csv`` manifest (see :func:`read_manifest`) or an image folder (see
        :func:`read_image_folder`).
    validate : bool, default True
        Run :func:`validate_dataset` on the result.
    check_images : bool, default True
        When validating, decode every image fully to find corrupt files.

    Returns
    -------
    Dataset
        The items read.

    Raises
    ------
    ManifestError
        If ``path`` is neither a ``.csv`` file nor a directory, or if reading or
        validation finds problems.
    """
    target = Path(path)
    if target.is_dir():
        dataset = read_image_folder(target)
    elif target.is_file() and target.suffix.lower() == ".csv":
        dataset = read_manifest(target)
    elif not target.exists():
        raise ManifestError(str(target), ["no such file or directory"])
    else:
        raise ManifestError(
            str(target), ["expected a .csv manifest or a folder of DIR/<sku>/ images"]
        )
    if validate:
        validate_dataset(dataset, check_images=check_images)
    return dataset


def validate_dataset(dataset: Dataset, *, check_images: bool | Callable[[Path], bool] = True) -> None:
    """Check a dataset and report every problem at once.

    Checks that the dataset is not empty, every SKU is non-empty, no image
    path appears twice, each SKU has one category, and every file exists and
    (with ``check_images``) decodes completely. Problems on CSV rows name the
    manifest line.

    Parameters
    ----------
    dataset : Dataset
        The dataset to check.
    check_images : bool or callable, default True
        Decode every image fully (slow on large datasets); when False only the
        files' existence is checked. A callable decides per path (for example,
        skip images whose exact bytes are already known to decode).

    Raises
    ------
    ManifestError
        Listing all problems found, if any.
    """
    if not dataset.items:
        raise ManifestError(dataset.source, ["dataset is empty: no images listed or found"])

    problems: list[str] = []
    first_seen_at: dict[Path, Item] = {}
    for item in dataset.items:
        where = _location(item, dataset.source)
        if not item.sku:
            problems.append(f"{where}: empty SKU")
        earlier = first_seen_at.get(item.path)
        if earlier is not None:
            relabelled = f", there as SKU {earlier.sku!r}" if earlier.sku != item.sku else ""
            problems.append(
                f"{where}: duplicate path {item.path} "
                f"(first at {_location(earlier, dataset.source)}{relabelled})"
            )
            continue
        first_seen_at[item.path] = item
        decode = check_images(item.path) if callable(check_images) else check_images
        file_problem = _file_problem(item.path, check_images=decode)
        if file_problem is not None:
            problems.append(f"{where}: {file_problem}")

    problems.extend(_category_conflicts(dataset))
    if problems:
        raise ManifestError(dataset.source, problems)


def _parse_header(header: list[str], source: str) -> dict[str, int]:
    names = [cell.strip().lower() for cell in header]
    missing = [name for name in REQUIRED_COLUMNS if name not in names]
    duplicated = sorted({name for name in names if name and names.count(name) > 1})
    problems = []
    if missing:
        problems.append(
            f"header is missing required column(s) {missing}; columns found: "
            f"{[cell.strip() for cell in header]} (expected path,sku[,category])"
        )
    if duplicated:
        problems.append(f"header repeats column(s) {duplicated}")
    if problems:
        raise ManifestError(source, problems)
    wanted = (*REQUIRED_COLUMNS, *OPTIONAL_COLUMNS)
    return {name: names.index(name) for name in wanted if name in names}


def _location(item: Item, source: str) -> str:
    if item._line is None:
        return str(item.path)
    if item._manifest is not None and item._manifest != source:
        return f"{item._manifest} line {item._line}"
    return f"line {item._line}"


def _file_problem(path: Path, *, check_images: bool) -> str | None:
    if not path.exists():
        return f"file not found: {path}"
    if not path.is_file():
        return f"not a file: {path}"
    if not check_images:
        return None
    try:
        data = read_image_bytes(path)
        if not data:
            return f"unreadable image {path}: file is empty (0 bytes)"
        # The same decode serving uses, so what passes here also decodes there.
        decode_image(data)
    except ImageError as exc:
        return f"unreadable image {path}: {exc}"
    return None


def _category_conflicts(dataset: Dataset) -> list[str]:
    lines_by_category: dict[str, dict[str, list[str]]] = {}
    for item in dataset.items:
        if item.category is None:
            continue
        where = _location(item, dataset.source)
        lines_by_category.setdefault(item.sku, {}).setdefault(item.category, []).append(where)
    problems = []
    for sku, by_category in lines_by_category.items():
        if len(by_category) > 1:
            described = "; ".join(
                f"{category!r} at {_abbreviate(places)}" for category, places in by_category.items()
            )
            problems.append(f"SKU {sku!r} has different categories: {described}")
    return problems


def _abbreviate(places: list[str], limit: int = 3) -> str:
    shown = ", ".join(places[:limit])
    return shown if len(places) <= limit else f"{shown} and {len(places) - limit} more"


__all__ = [
    "Dataset",
    "Item",
    "load_dataset",
    "read_image_folder",
    "read_manifest",
    "validate_dataset",
]
