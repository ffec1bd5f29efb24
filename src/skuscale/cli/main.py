"""The ``skuscale`` command."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from skuscale.cli.paths import os_error_message, output_file_problem, output_folder_problem
from skuscale.embed.finetune_config import DEFAULT_FINETUNE_EPOCHS, FinetuneConfig
from skuscale.exceptions import SkuscaleError

app = typer.Typer(
    name="skuscale",
    help="Retail SKU recognition with confidence bands, OOD detection and per-class routing.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()

HELP = {
    "train": "Training manifest (CSV path,sku,category) or image folder DIR/<sku>/*.jpg.",
    "val": "Validation manifest (other shooting sessions): cross-fitted to set temperature, thresholds "
    "and the OOD cut-off, then trained on.",
    "embeddings": "An embedding file (.npz: X, sku[, category, split, meta]) instead of images, e.g. from "
    "skuscale simulate.",
    "train_on_val": "After calibrating on the validation set, also train the final head on it (default). "
    "--no-train-on-val keeps it out, so evaluating on it measures the head honestly.",
    "exclude_sku": "Drop this SKU entirely (repeatable); it becomes an unknown product.",
    "backbone": "Backbone: efficientnet-lite0 (default), efficientnet-lite1, efficientnet-lite2.",
    "demo_data": "Run on real images: a folder with train.csv and val.csv (one without train.csv falls back to the "
    "embedded sample). Without it the demo simulates the pilot-to-rollout story.",
    "cache_dir": "Embedding cache folder (default $SKUSCALE_CACHE or ~/.cache/skuscale/embeddings).",
}


def fail(message: str, code: int = 1) -> None:
    Console(stderr=True).print(f"[bold red]error:[/] {message}", highlight=False)
    raise typer.Exit(code)


def no_backbone_message(what: str, bundle: Path) -> str:
    """Why a bundle built from an embedding file cannot ``what`` (it has no image backbone), and what it can do."""
    return (f"cannot {what}: bundle {bundle} was built from embeddings and has no image backbone "
            "(score it on an embedding file: skuscale evaluate BUNDLE --embeddings FILE)")


def _fmt(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


OOD_BASIS_NOTE = {
    "sentinels": " (sentinel SKUs, unseen by fine-tuning)",
    "sentinels_late_join": " (sentinel SKUs, on the backbone before they joined fine-tuning)",
    "finetuned_on_heldout": " [yellow](optimistic: the backbone was fine-tuned on these SKUs; see --ood-sentinels)[/]",
}


@app.command()
def build(
    out: Annotated[Path, typer.Option(help="Bundle folder to write.")],
    train: Annotated[Path | None, typer.Option(help=HELP["train"])] = None,
    embeddings: Annotated[Path | None, typer.Option(help=HELP["embeddings"])] = None,
    val: Annotated[Path | None, typer.Option(help=HELP["val"])] = None,
    reference: Annotated[Path | None, typer.Option(help="Reference pack shots (one or more per SKU).")] = None,
    exclude_sku: Annotated[list[str] | None, typer.Option(help=HELP["exclude_sku"])] = None,
    backbone: Annotated[str, typer.Option(help=HELP["backbone"])] = "efficientnet-lite0",
    cache_dir: Annotated[Path | None, typer.Option(help=HELP["cache_dir"])] = None,
    target_precision: Annotated[float, typer.Option(help="Per-SKU auto-accept precision target.")] = 0.99,
    ood_flag_rate: Annotated[float, typer.Option(help="Share of known items the OOD stage may flag.")] = 0.05,
    threads: Annotated[int | None, typer.Option(help="torch threads (default: all cores).", min=1)] = None,
    seed: Annotated[int, typer.Option(help="Seed for folds and held-out SKUs.", min=0)] = 0,
    train_on_val: Annotated[bool, typer.Option(help=HELP["train_on_val"])] = True,
    device: Annotated[str | None, typer.Option(help="Device profile (name or YAML): size backbone, INT8 and class "
                                               "tables for its lowest tier before training (docs/edge.md).")] = None,
    finetune_epochs: Annotated[int | None, typer.Option(
        help=f"Fine-tune the backbone for N epochs on train + reference photos before embedding (default "
             f"{DEFAULT_FINETUNE_EPOCHS}; 0 keeps the ImageNet features). Uses the GPU when torch sees one.")] = None,
    finetune_lr: Annotated[float, typer.Option(help="Peak AdamW learning rate of the backbone.")] = 5e-4,
    finetune_loss: Annotated[str, typer.Option(
        help="ce, logit_adjust (with --finetune-sampler uniform), cosface, or supcon (cross-entropy plus "
             "supervised contrastive loss; each batch holds 4 views of each of batch-size / 4 SKUs).")] = "ce",
    finetune_sampler: Annotated[str, typer.Option(help="balanced (every SKU equally often) or uniform.")] = "balanced",
    finetune_batch_size: Annotated[int, typer.Option(help="Images per fine-tuning step.")] = 32,
    finetune_device: Annotated[str, typer.Option(help="auto (GPU when torch sees one), cpu or cuda.")] = "auto",
    finetune_mixup: Annotated[float, typer.Option(
        help="Mixup alpha while fine-tuning (blend each batch with a shuffled copy of itself, lam ~ Beta(a, a)); "
             "0 switches it off. Losses ce and logit_adjust only.", min=0.0)] = 0.0,
    finetune_erase: Annotated[float, typer.Option(
        help="Probability of random erasing while fine-tuning (a rectangle of the view replaced by noise); "
             "0 switches it off.", min=0.0, max=1.0)] = 0.0,
    ood_sentinels: Annotated[int | None, typer.Option(
        help="Keep N SKUs with calibration photos out of fine-tuning; only they simulate unknown products, so "
             "the OOD estimate and the thresholds' allowance for unknowns are honest. They stay in the catalogue. "
             "Default: 10% of the SKUs. 0: every SKU is held out once, which a fine-tuned backbone makes "
             "optimistic.", min=0)] = None,
    late_join_epochs: Annotated[int, typer.Option(
        help="With sentinels: after fine-tuning, N more epochs on every SKU, the sentinels included, at half the "
             "learning rate (2 measured: +1.2 points of top-1, but more confident errors; docs/accuracy.md). "
             "Unknowns are still simulated on the backbone from before.", min=0)] = 0,
    unknown_share: Annotated[float, typer.Option(
        help="Share of items at the camera that are not in the catalogue (new, seasonal products): simulated "
             "unknowns that pass the OOD stage count as errors with this weight when thresholds are fitted. "
             "Measure it from the review queue.")] = 0.02,
) -> None:
    """Build a bundle: validate, embed (cached), export ONNX, fit head/calibration/OOD/routing."""
    from skuscale.build import build_bundle, check_out_folder
    from skuscale.cli.progress import RichBuildProgress
    from skuscale.training import TrainingConfig

    if not 0.5 <= target_precision < 1.0:
        fail("--target-precision must be in [0.5, 1)", 2)
    if not 0.0 < ood_flag_rate < 0.5:
        fail("--ood-flag-rate must be in (0, 0.5)", 2)
    if (train is None) == (embeddings is None):
        fail("give exactly one of --train (images) or --embeddings (an embedding file)", 2)
    if embeddings is not None and device:
        fail("--device sizes the image backbone; it does not apply to --embeddings", 2)
    if embeddings is not None and (val or reference):
        fail("--val and --reference apply to images; an embedding file carries its own split column", 2)
    if embeddings is not None and finetune_epochs:
        fail("--finetune-epochs trains the image backbone; it does not apply to --embeddings", 2)
    if embeddings is not None and ood_sentinels:
        fail("--ood-sentinels keeps SKUs out of backbone fine-tuning; it does not apply to --embeddings", 2)
    if embeddings is not None and late_join_epochs:
        fail("--late-join-epochs fine-tunes the image backbone; it does not apply to --embeddings", 2)
    try:
        finetune = FinetuneConfig(
            epochs=DEFAULT_FINETUNE_EPOCHS if finetune_epochs is None else finetune_epochs, lr=finetune_lr,
            loss=finetune_loss, sampler=finetune_sampler, batch_size=finetune_batch_size, device=finetune_device,
            mixup_alpha=finetune_mixup, random_erase=finetune_erase, seed=seed,
        )
    except ValueError as exc:
        fail(f"fine-tuning settings: {exc}", 2)
    if not 0.0 < unknown_share < 0.5:
        fail("--unknown-share must be in (0, 0.5)", 2)
    try:
        # Before any work: --out is replaced only when it is empty or an earlier bundle.
        check_out_folder(out)
    except SkuscaleError as exc:
        fail(str(exc), 2)
    config = TrainingConfig(
        target_precision=target_precision, ood_flag_rate=ood_flag_rate, seed=seed, final_on_calibration=train_on_val,
        unknown_share=unknown_share,
    )
    try:
        if embeddings is not None:
            from skuscale.build import build_bundle_from_embeddings

            result = build_bundle_from_embeddings(
                embeddings, out, exclude_skus=exclude_sku or [], config=config, progress=RichBuildProgress()
            )
        else:
            result = build_bundle(
                train, out, val=val, reference=reference, exclude_skus=exclude_sku or [], backbone=backbone,
                cache_dir=cache_dir, config=config, threads=threads, progress=RichBuildProgress(), device=device,
                finetune=finetune, ood_sentinels=ood_sentinels, late_join_epochs=late_join_epochs,
            )
    except SkuscaleError as exc:
        fail(str(exc))
    except OSError as exc:
        fail(f"build failed: {os_error_message(exc)}")
    b = result.bundle
    build_info = b.metadata["build"]
    cv = build_info["crossval"]
    table = Table(title=f"bundle {out}", show_header=False)
    table.add_row("SKUs", str(len(b.skus)))
    table.add_row("images", ", ".join(f"{k} {v}" for k, v in b.metadata["training"]["n_images"].items()))
    table.add_row("held-out top-1", _fmt(cv["top1"]))
    table.add_row("held-out ECE (before → after temperature)", f"{cv['ece_uncalibrated']:.4f} → {cv['ece']:.4f}")
    table.add_row("temperature", _fmt(build_info["temperature"]))
    table.add_row("OOD detector", build_info["detector"])
    table.add_row("held-out-SKU detection", _fmt(build_info["heldout_detection_rate"])
                  + OOD_BASIS_NOTE.get(b.metadata["training"].get("ood_basis"), ""))
    ft_info = b.metadata["training"].get("finetune")
    if ft_info:
        rep = ft_info.get("report")
        how = "cached weights" if ft_info["from_cache"] else (
            f"{rep['epochs']} epochs on {rep['device']}, {rep['seconds'] / 60:.1f} min, "
            f"final train loss {rep['epoch_loss'][-1]:.3f}" if rep and rep["epoch_loss"] else "")
        table.add_row("fine-tuned backbone", how)
    late = b.metadata["training"].get("late_join")
    if late:
        rep = late.get("report")
        table.add_row("late join of the sentinels", "cached weights" if late["from_cache"] else (
            f"{rep['epochs']} epochs, {rep['seconds'] / 60:.1f} min" if rep else ""))
    if b.metadata["training"].get("calibration_carved_from_train"):
        table.add_row("calibration", "no --val: 10% of each SKU's training photos held out")
    if b.backbone.get("onnx"):
        table.add_row("export max |torch - onnx|", f"{b.backbone['export_max_abs_diff']:.2e}")
    if b.simulated:
        table.add_row("data", "[bold yellow]SIMULATED embeddings[/]")
    if "device_sizing" in b.metadata:
        table.add_row("device sizing", b.metadata["device_sizing"]["choice"]["arithmetic"])
        if "quantization" in b.metadata:
            th = b.metadata["quantization"]["thresholds"]
            how = "re-fitted, " if th.get("method") == "int8_margin" else "fp32 kept, "
            table.add_row("INT8 thresholds", how + ("verified" if th["passed"] else
                                                    "[red]NOT verified[/] (see docs/edge.md)"))
    table.add_row("cache hits / misses", f"{result.cache_hits} / {result.cache_misses}")
    table.add_row("build time", f"{result.seconds:.1f} s")
    console.print(table)


@app.command()
def predict(
    bundle: Annotated[Path, typer.Argument(help="Bundle folder.")],
    images: Annotated[list[Path], typer.Argument(help="Image files.")],
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per image on stdout.")] = False,
) -> None:
    """Predict images: band (accept/verify/unknown), SKU, confidence, OOD score, top-5."""
    from skuscale.bundle import Bundle
    from skuscale.data.images import load_image

    try:
        b = Bundle.load(bundle)
        if not b.backbone.get("onnx"):
            fail(no_backbone_message("predict on images", bundle))
        b.embedder()
    except SkuscaleError as exc:
        fail(str(exc))
    failed = 0
    rows = []
    for path in images:
        try:
            decision = b.predict_images([load_image(path)])[0]
            rows.append({"image": str(path), **decision.to_dict()})
        except SkuscaleError as exc:
            failed += 1
            rows.append({"image": str(path), "error": str(exc)})
    if as_json:
        for row in rows:
            sys.stdout.write(json.dumps(row) + "\n")
    else:
        table = Table("image", "band", "sku", "confidence", "ood score", "category")
        for row in rows:
            if "error" in row:
                table.add_row(row["image"], "[red]error[/]", row["error"], "", "", "")
            else:
                cat = f"{row['category']} ({row['category_confidence']:.2f})" if row.get("category") else ""
                table.add_row(row["image"], row["band"], row["sku"], f"{row['confidence']:.3f}",
                              f"{row['ood_score']:.3f}", cat)
        console.print(table)
    if failed:
        raise typer.Exit(1)


@app.command()
def evaluate(
    bundle: Annotated[Path, typer.Argument(help="Bundle folder.")],
    data: Annotated[Path | None, typer.Option(help="Manifest or image folder with ground truth.")] = None,
    embeddings: Annotated[Path | None, typer.Option(help="An embedding file instead of images.")] = None,
    split: Annotated[str | None, typer.Option(help="With --embeddings: the split to score (default test if present)."
                                              )] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the metrics here.")] = None,
) -> None:
    """Evaluate a bundle; SKUs outside its catalogue count as unknown products."""
    from skuscale.bundle import Bundle
    from skuscale.cli.progress import image_progress
    from skuscale.evaluate import EvaluationInputError, evaluate_bundle, evaluate_embeddings

    if (data is None) == (embeddings is None):
        fail("give exactly one of --data (images) or --embeddings (an embedding file)", 2)
    if split is not None and embeddings is None:
        fail("--split selects rows of an --embeddings file; it does not apply to --data", 2)
    if json_out is not None and (problem := output_file_problem(json_out, "--json")):
        fail(problem, 2)
    try:
        b = Bundle.load(bundle)
        if embeddings is not None:
            metrics = evaluate_embeddings(b, embeddings, split=split)
        else:
            if not b.backbone.get("onnx"):
                fail(no_backbone_message("evaluate images", bundle))
            with image_progress() as bar:
                task = bar.add_task("predicting", total=None)
                metrics = evaluate_bundle(b, data, progress=lambda n: bar.advance(task, n))
    except EvaluationInputError as exc:
        fail(str(exc), 2)
    except (SkuscaleError, ValueError) as exc:
        fail(str(exc))
    simulated = " [bold yellow](SIMULATED)[/]" if metrics.get("simulated") else ""
    table = Table("metric", "value", title=f"{bundle} on {data or embeddings}{simulated}")
    for key in ("n_items", "n_known", "n_unknown", "top1", "coarse_top1", "automation_rate", "auto_precision",
                "silent_error_rate", "unknown_flag_rate", "unknown_accept_rate", "ood_auroc", "ece",
                "per_class_top1_std_pp", "per_class_top1_min", "images_per_second", "decisions_per_second"):
        if key in metrics:
            table.add_row(key, _fmt(metrics[key]))
    table.add_row("bands", ", ".join(f"{k} {v}" for k, v in metrics["bands"].items()))
    console.print(table)
    if metrics.get("n_seen_in_training"):
        Console(stderr=True).print(
            f"[bold yellow]warning:[/] {metrics['n_seen_in_training']} of {metrics['n_items']} items were used to "
            "train this bundle's head; these numbers are in-sample, not a measure of recognition on new data."
        )
    elif metrics.get("n_used_for_calibration"):
        Console(stderr=True).print(
            f"[yellow]note:[/] {metrics['n_used_for_calibration']} of {metrics['n_items']} items calibrated this "
            "bundle (temperature, thresholds, OOD cut-off); the head never trained on them."
        )
    if json_out:
        # Last, so that the metrics are on screen even when the file cannot be written.
        try:
            json_out.parent.mkdir(parents=True, exist_ok=True)
            json_out.write_text(json.dumps(metrics, indent=2))
        except OSError as exc:
            fail(f"cannot write --json: {os_error_message(exc)}")


@app.command()
def demo(
    data: Annotated[Path | None, typer.Option(help=HELP["demo_data"])] = None,
    out: Annotated[Path, typer.Option(help="Output folder.")] = Path("out"),
    scale: Annotated[float, typer.Option(help="Simulated mode: multiply the catalogue sizes (0.2 = quick).")] = 1.0,
) -> None:
    """Simulated pilot (800 SKUs) to rollout (2,000 SKUs) story, or real images with --data."""
    from skuscale import demo as demo_module

    if problem := output_folder_problem(out, "--out"):
        fail(problem, 2)
    args = ["--out", str(out), "--scale", str(scale)] + (["--data", str(data)] if data else [])
    try:
        code = demo_module.main(args)
    except SkuscaleError as exc:
        fail(str(exc))
    except OSError as exc:
        fail(os_error_message(exc))
    raise typer.Exit(code)


app.command(name="export")(__import__("skuscale.cli.export", fromlist=["export"]).export)
app.command(name="assess")(__import__("skuscale.cli.assess", fromlist=["assess"]).assess)
app.command(name="serve")(__import__("skuscale.cli.serve", fromlist=["serve"]).serve)
app.command(name="simulate")(__import__("skuscale.cli.simulate", fromlist=["simulate"]).simulate)
app.command(name="forecast")(__import__("skuscale.cli.forecast", fromlist=["forecast"]).forecast)


def main() -> None:  # pragma: no cover - entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
