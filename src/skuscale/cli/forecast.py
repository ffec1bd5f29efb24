"""``skuscale forecast``: top-1, automation and ECE against catalogue size, extrapolated to N SKUs."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import numpy as np
import typer
from rich.console import Console
from rich.table import Table

from skuscale.cli.paths import os_error_message, output_folder_problem
from skuscale.exceptions import SkuscaleError


def _fail(message: str, code: int = 1) -> None:
    Console(stderr=True).print(f"[bold red]error:[/] {message}", highlight=False)
    raise typer.Exit(code)


def input_problem(train: Path, *, val: Path | None = None, bundle: Path | None = None) -> str | None:
    """Why ``--train`` / ``--val`` / ``--bundle`` do not go together (a usage error), or None."""
    if train.suffix == ".npz":
        if val is not None:
            return "--val applies to image manifests; an embedding file carries its own split column"
        if bundle is not None:
            return "--bundle embeds image manifests; an embedding file (.npz) is used as it is"
    elif bundle is None:
        return "images need --bundle BUNDLE to embed them with its backbone (or pass an .npz file)"
    return None


def load_forecast_data(train: Path, *, val: Path | None = None, bundle: Path | None = None,
                       cache_dir: Path | None = None):
    """An :class:`~skuscale.data.embeddings.EmbeddingDataset` from an embedding file or image manifests.

    Images are embedded with ``bundle``'s ONNX backbone through the on-disk cache.
    """
    from skuscale.data.embeddings import EmbeddingDataset, load_embeddings

    if problem := input_problem(train, val=val, bundle=bundle):
        raise SkuscaleError(problem)
    if train.suffix == ".npz":
        return load_embeddings(train)
    from skuscale.build import default_cache_dir
    from skuscale.bundle import Bundle
    from skuscale.data import load_dataset
    from skuscale.embed import EmbeddingCache

    b = Bundle.load(bundle)
    cache = EmbeddingCache(cache_dir or default_cache_dir())
    parts = []
    for split, path in (("train", train), ("val", val)):
        if path is None:
            continue
        ds = load_dataset(path)
        X = b.embed_paths(ds.paths, cache=cache)
        cats = np.array([item.category or "" for item in ds.items])
        parts.append((X, np.array(ds.labels), cats, np.full(len(ds), split)))
    return EmbeddingDataset(
        X=np.vstack([p[0] for p in parts]), sku=np.concatenate([p[1] for p in parts]),
        category=np.concatenate([p[2] for p in parts]), split=np.concatenate([p[3] for p in parts]),
        meta={"simulated": False, "embedded_with": str(bundle)}, source=str(train),
    )


def forecast(
    train: Annotated[Path, typer.Option(
        help="Training data: an embedding file (.npz, train/val splits) or a manifest/image folder (needs --bundle).")],
    to: Annotated[int, typer.Option(help="Catalogue size (SKUs) to forecast.")],
    out: Annotated[Path, typer.Option(help="Folder for forecast.json and forecast.html.")] = Path("out/forecast"),
    val: Annotated[Path | None, typer.Option(help="Validation manifest (images from other sessions).")] = None,
    bundle: Annotated[Path | None, typer.Option(help="Bundle whose backbone embeds image manifests.")] = None,
    fit_max_size: Annotated[int | None, typer.Option(
        help="Fit the model on sub-catalogues of at most this many SKUs (default: all).")] = None,
    pilot_skus: Annotated[int | None, typer.Option(
        help="Keep only this many random SKUs of the data, as a pilot catalogue would have.")] = None,
    repeats: Annotated[int, typer.Option(help="Draws of the nested sub-catalogue sequence.")] = 5,
    unknown_share: Annotated[float | None, typer.Option(
        help="Expected share of images of products outside the catalogue (default: from simulated data, else 0).")
    ] = None,
    target_precision: Annotated[float, typer.Option(help="Precision target for automation.")] = 0.99,
    cache_dir: Annotated[Path | None, typer.Option(help="Embedding cache folder.")] = None,
    seed: Annotated[int, typer.Option(help="Random seed.", min=0)] = 0,
) -> None:
    """Forecast accuracy against catalogue size from the training data alone; write JSON and HTML."""
    from skuscale.forecast import forecast as run_forecast
    from skuscale.forecast import pilot_subset, write_report

    if to < 2:
        _fail("--to must be at least 2", 2)
    if repeats < 1:
        _fail("--repeats must be at least 1", 2)
    if not 0.5 <= target_precision < 1.0:
        _fail("--target-precision must be in [0.5, 1)", 2)
    if unknown_share is not None and not 0.0 <= unknown_share < 1.0:
        _fail("--unknown-share must be in [0, 1)", 2)
    if problem := input_problem(train, val=val, bundle=bundle):
        _fail(problem, 2)
    if problem := output_folder_problem(out, "--out"):
        _fail(problem, 2)
    try:
        data = load_forecast_data(train, val=val, bundle=bundle, cache_dir=cache_dir)
        if pilot_skus is not None:
            data = pilot_subset(data, pilot_skus, seed=seed)
        result = run_forecast(data, to, fit_max_size=fit_max_size, repeats=repeats, unknown_share=unknown_share,
                              target_precision=target_precision, seed=seed)
        paths = write_report(result, out)
    except (SkuscaleError, ValueError) as exc:
        _fail(str(exc))
    except OSError as exc:
        _fail(os_error_message(exc))
    at = result["at_target"]
    sim = " [bold yellow](SIMULATED)[/]" if result["simulated"] else ""
    table = Table("", "value", title=f"forecast at {to} SKUs (data: {result['n_skus']} SKUs){sim}")
    table.add_row("top-1", f"{at['top1']:.1%}  (10-90%: {at['top1_lo']:.1%} – {at['top1_hi']:.1%})")
    table.add_row(f"automation at {target_precision:.2f} precision", f"{at['automation']:.1%}")
    table.add_row("ECE", f"{at['ece']:.3f}")
    table.add_row("dominant axis", result["dominant_axis"])
    for axis, loss in result["attribution"]["loss"].items():
        table.add_row(f"  loss from {axis}", f"{100 * loss:.1f} points")
    table.add_row("fitted on sub-catalogues of ≤", f"{result['fit_max_size']} SKUs")
    table.add_row("proxy classifier", result["proxy"]["classifier"])
    Console().print(table)
    Console().print(f"report: {paths['html']} and {paths['json']}", highlight=False)
