"""``skuscale simulate``: write a simulated embedding catalogue (fitted from data or set by parameters)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from skuscale.cli.paths import os_error_message, output_file_problem
from skuscale.exceptions import SkuscaleError

PRESETS = ("pilot", "rollout")


def _fail(message: str, code: int = 1) -> None:
    Console(stderr=True).print(f"[bold red]error:[/] {message}", highlight=False)
    raise typer.Exit(code)


def simulate(
    out: Annotated[Path, typer.Option(help="Embedding file (.npz) to write.")],
    fit: Annotated[Path | None, typer.Option(
        "--from", help="Fit the statistics to this embedding file (its train split), e.g. real embeddings.")] = None,
    preset: Annotated[str | None, typer.Option(
        help="Start from the demo's calibrated preset: pilot (800 clean SKUs) or rollout (2,000 SKUs).")] = None,
    n_skus: Annotated[int | None, typer.Option(help="SKUs at the training snapshot.")] = None,
    dim: Annotated[int | None, typer.Option(help="Embedding dimension.")] = None,
    family_size: Annotated[float | None, typer.Option(help="Mean SKUs per near-duplicate family (1 = none).")] = None,
    family_similarity: Annotated[float | None, typer.Option(help="Centroid cosine inside a family.")] = None,
    background_similarity: Annotated[float | None, typer.Option(help="Centroid cosine across families.")] = None,
    within_spread: Annotated[float | None, typer.Option(help="Image noise scale around the centroid.")] = None,
    zipf_exponent: Annotated[float | None, typer.Option(help="Zipf exponent of training counts (0 = balanced).")
                             ] = None,
    max_train: Annotated[int | None, typer.Option(help="Training images of the most popular SKU.")] = None,
    min_train: Annotated[int | None, typer.Option(help="Training-image floor for the long tail.")] = None,
    val_per_sku: Annotated[int | None, typer.Option(help="Validation images per SKU.")] = None,
    test_per_sku: Annotated[int | None, typer.Option(help="Test images per SKU.")] = None,
    new_sku_monthly_rate: Annotated[float | None, typer.Option(
        help="New SKUs per month as a share of the catalogue (test split only).")] = None,
    months: Annotated[float | None, typer.Option(help="Months between the training snapshot and the test period.")
                      ] = None,
    drift_share: Annotated[float | None, typer.Option(help="Share of SKUs whose appearance drifts in test.")] = None,
    drift_similarity: Annotated[float | None, typer.Option(help="Cosine between old and drifted centroid.")] = None,
    match_accuracy: Annotated[bool, typer.Option(
        help="With --from: set the spread so the simulation is as hard as the file's val split (proxy top-1).")
    ] = False,
    seed: Annotated[int | None, typer.Option(
        help="Random seed (default: the preset's own, so --preset rollout is the demo's catalogue; else 0).",
        min=0)] = None,
) -> None:
    """Simulate a catalogue in embedding space; the file feeds build/evaluate/assess/forecast --embeddings."""
    from skuscale.data.embeddings import load_embeddings, save_embeddings
    from skuscale.demo import PILOT, ROLLOUT
    from skuscale.simulate import SimulatorParams, fit_simulator_params, simulate_catalogue

    if preset is not None and preset not in PRESETS:
        _fail(f"--preset must be one of {', '.join(PRESETS)}", 2)
    if preset is not None and fit is not None:
        _fail("give at most one of --preset and --from", 2)
    if match_accuracy and fit is None:
        _fail("--match-accuracy needs --from", 2)
    if problem := output_file_problem(out, "--out"):
        _fail(problem, 2)
    given = {
        "n_skus": n_skus, "dim": dim, "family_size": family_size, "family_similarity": family_similarity,
        "background_similarity": background_similarity, "within_spread": within_spread,
        "zipf_exponent": zipf_exponent, "max_train": max_train, "min_train": min_train,
        "val_per_sku": val_per_sku, "test_per_sku": test_per_sku,
        "new_sku_monthly_rate": new_sku_monthly_rate, "months": months, "drift_share": drift_share,
        "drift_similarity": drift_similarity,
    }
    overrides = {k: v for k, v in given.items() if v is not None} | ({} if seed is None else {"seed": seed})
    try:
        if fit is not None:
            params = fit_simulator_params(load_embeddings(fit), match_accuracy=match_accuracy, **overrides)
        else:
            base = {"pilot": PILOT, "rollout": ROLLOUT}.get(preset or "", SimulatorParams())
            params = base.replace(**overrides)
        data = simulate_catalogue(params)
        if fit is not None:
            data.meta["fitted_from"] = str(fit)
        save_embeddings(out, data)
    except (SkuscaleError, ValueError) as exc:
        _fail(str(exc))
    except OSError as exc:
        _fail(f"cannot write --out: {os_error_message(exc)}")
    table = Table("parameter", "value", title=f"[bold yellow]SIMULATED[/] catalogue {out}")
    for key, value in params.to_dict().items():
        table.add_row(key, f"{value:.4g}" if isinstance(value, float) else str(value))
    for split in ("train", "val", "test"):
        table.add_row(f"{split} rows", str(int((data.split == split).sum())))
    table.add_row("new SKUs (test only)", str(len(data.meta["new_skus"])))
    table.add_row("drifted SKUs", str(len(data.meta["drifted_skus"])))
    Console().print(table)
