"""``skuscale export``: one-graph edge pipeline, optionally with an INT8 backbone."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from skuscale.cli.paths import os_error_message, output_file_problem
from skuscale.exceptions import SkuscaleError

console = Console()


def _pct(value) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def _pts(value) -> str:
    return "-" if value is None else f"{value:+.1f}"


#: Options that only an INT8 export reads (parameter name → flag).
INT8_ONLY = {
    "calibration": "--calibration",
    "calibration_per_sku": "--calibration-per-sku",
    "exclude_node": "--exclude-node",
    "thresholds": "--thresholds",
    "keep_thresholds": "--keep-thresholds",
    "margin_per_sku": "--margin-per-sku",
    "margin_quantile": "--margin-quantile",
}
#: Options that only the threshold re-fit reads; ``--thresholds keep`` never runs it.
REFIT_ONLY = ("margin_per_sku", "margin_quantile")


def _usage_error(message: str) -> None:
    Console(stderr=True).print(f"[bold red]error:[/] {message}", highlight=False)
    raise typer.Exit(2)


def option_problem(given: set[str], *, int8: bool, thresholds: str, keep_thresholds: bool) -> str | None:
    """Why the options named in ``given`` (parameter names set on the command line) contradict each other.

    An option that the export would ignore is refused rather than dropped silently.
    """
    if not int8:
        ignored = [flag for name, flag in INT8_ONLY.items() if name in given]
        if ignored:
            one = len(ignored) == 1
            return (f"{', '.join(ignored)} {'applies' if one else 'apply'} only to an INT8 export; add --int8 or "
                    f"leave {'it' if one else 'them'} out (an fp32 export quantises nothing and keeps the "
                    "bundle's thresholds)")
        return None
    if keep_thresholds and "thresholds" in given and thresholds != "keep":
        return f"--keep-thresholds contradicts --thresholds {thresholds} (--keep-thresholds means --thresholds keep)"
    if keep_thresholds or thresholds == "keep":
        ignored = [INT8_ONLY[name] for name in REFIT_ONLY if name in given]
        if ignored:
            keep = "--keep-thresholds" if keep_thresholds else "--thresholds keep"
            return (f"{', '.join(ignored)} set{'s' if len(ignored) == 1 else ''} the threshold re-fit, which "
                    f"{keep} never runs; leave {'it' if len(ignored) == 1 else 'them'} out or use --thresholds "
                    "auto or refit")
    return None


def export(
    ctx: typer.Context,
    bundle: Annotated[Path, typer.Argument(help="Bundle folder.")],
    out: Annotated[Path, typer.Option(help="Edge bundle folder to write (bundle + pipeline.onnx).")],
    int8: Annotated[bool, typer.Option("--int8", help="Quantise the backbone (static QDQ INT8).")] = False,
    calibration: Annotated[Path | None, typer.Option(
        help="--int8 only: calibration manifest (default: the bundle's training manifest, kept to its SKUs).")] = None,
    evaluation: Annotated[Path | None, typer.Option(
        "--eval", help="Manifest of the pipeline check images and, with --int8, of the fp32 vs INT8 per-SKU table "
             "(default: the bundle's validation manifest).")
    ] = None,
    calibration_per_sku: Annotated[int, typer.Option(help="--int8 only: calibration images per SKU.")] = 2,
    exclude_node: Annotated[list[str] | None, typer.Option(
        help="--int8 only: backbone node kept in fp32 (repeatable).")] = None,
    thresholds: Annotated[str, typer.Option(
        help="--int8 only. auto: ship the fp32 thresholds if they pass verification on INT8 embeddings of the "
             "--eval images, else raise them by the INT8 confidence movement measured on calibration images; "
             "refit: always raise them; keep: always ship the fp32 thresholds (still verified).")] = "auto",
    keep_thresholds: Annotated[bool, typer.Option(
        "--keep-thresholds", help="--int8 only: same as --thresholds keep.")] = False,
    margin_per_sku: Annotated[int, typer.Option(
        help="--int8, re-fit only: calibration images per SKU on which the INT8 confidence movement is "
             "measured.")] = 10,
    margin_quantile: Annotated[float, typer.Option(
        help="--int8, re-fit only: quantile of that movement (log-odds, images near their threshold) added to "
             "every threshold.")] = 0.9,
    report: Annotated[Path | None, typer.Option(help="Write the export report (JSON) here.")] = None,
    cache_dir: Annotated[Path | None, typer.Option(help="Embedding cache folder.")] = None,
) -> None:
    """Export BUNDLE for edge devices: one ONNX graph (backbone→bands), optionally INT8 with its per-SKU cost."""
    from skuscale.build import check_out_folder
    from skuscale.edge.export import export_bundle

    if calibration_per_sku < 1 or margin_per_sku < 1:
        _usage_error("--calibration-per-sku and --margin-per-sku must be at least 1")
    if thresholds not in ("auto", "refit", "keep"):
        _usage_error(f"--thresholds must be auto, refit or keep, got {thresholds!r}")
    if not 0.0 < margin_quantile <= 1.0:
        _usage_error("--margin-quantile must be in (0, 1]")
    # Typer carries its own copy of click, so the source is compared by name.
    given = {name for name in INT8_ONLY
             if getattr(ctx.get_parameter_source(name), "name", "DEFAULT") not in ("DEFAULT", "DEFAULT_MAP")}
    if problem := option_problem(given, int8=int8, thresholds=thresholds, keep_thresholds=keep_thresholds):
        _usage_error(problem)
    try:
        # Before any work: --out is replaced only when it is empty or an earlier bundle.
        check_out_folder(out)
        if report is not None and (problem := output_file_problem(report, "--report")):
            raise SkuscaleError(problem)
    except SkuscaleError as exc:
        Console(stderr=True).print(f"[bold red]error:[/] {exc}", highlight=False)
        raise typer.Exit(2) from None
    # onnxruntime's quantiser logs pre-processing advice through the root logger.
    logging.getLogger().setLevel(logging.ERROR)
    try:
        result = export_bundle(
            bundle, out, int8=int8, calibration=calibration, evaluation=evaluation,
            calibration_per_sku=calibration_per_sku, exclude_nodes=exclude_node or [], cache_dir=cache_dir,
            keep_thresholds=keep_thresholds, thresholds_policy=thresholds, margin_per_sku=margin_per_sku,
            margin_quantile=margin_quantile,
            step=lambda message: console.print(f"[dim]{message}[/]"),
        )
    except (SkuscaleError, ValueError, OSError) as exc:
        Console(stderr=True).print(f"[bold red]error:[/] {exc}", highlight=False)
        raise typer.Exit(1) from None
    if report:
        try:
            report.parent.mkdir(parents=True, exist_ok=True)
            report.write_text(json.dumps(result, indent=2))
        except OSError as exc:
            Console(stderr=True).print(f"[bold red]error:[/] cannot write --report: {os_error_message(exc)}",
                                       highlight=False)
            raise typer.Exit(1) from None
    table = Table(title=f"edge bundle {out}", show_header=False)
    for name, size in result["files"].items():
        table.add_row(name, f"{size / 1e6:.2f} MB")
    check = result.get("pipeline_check")
    if check:
        table.add_row("pipeline vs Python (check images)",
                      f"bands {_pct(check['band_agreement'])}, SKUs {_pct(check['sku_agreement'])}, "
                      f"max |Δconf| {check['max_confidence_diff']:.1e}")
    failed = False
    q = result.get("quantization")
    if q:
        o = q["impact"]["overall"]
        table.add_row("top-1 fp32 → int8", f"{_pct(o['top1_fp32'])} → {_pct(o['top1_int8'])} "
                                          f"({_pts(o['top1_change_points'])} pts)")
        table.add_row("automation fp32 → int8", f"{_pct(o['automation_fp32'])} → {_pct(o['automation_int8'])}")
        table.add_row("auto-accept precision fp32 → int8",
                      f"{_pct(o['auto_precision_fp32'])} → {_pct(o['auto_precision_int8'])}")
        table.add_row("band agreement fp32 vs int8", _pct(o["band_agreement"]))
        deciles = q["impact"]["deciles"]
        if deciles:
            for part in ("bottom", "top"):
                d = deciles[part]
                table.add_row(f"{part} decile by samples ({d['train_count_range'][0]}–{d['train_count_range'][1]})",
                              f"top-1 {_pct(d['mean_top1_fp32'])} → {_pct(d['mean_top1_int8'])}")
        flagged = q["impact"]["flagged"]
        table.add_row(f"SKUs losing > {q['impact']['flag_points']:g} pts", ", ".join(flagged) or "none")
        th = q["thresholds"]
        refit = th.get("refit")
        if refit and refit.get("applied") is False:
            table.add_row("thresholds", f"fp32 thresholds kept: they pass on INT8 (a re-fit would have raised them "
                          f"by {refit['sku_margin']['margin']:.2f} log-odds; --thresholds refit forces it)")
            refit = None
        elif refit:
            before, after = th["evaluation"]["int8_fp32_thresholds"], th["evaluation"]["int8"]
            table.add_row("thresholds re-fitted", f"+{refit['sku_margin']['margin']:.2f} log-odds "
                          f"({refit['n_raised']} SKUs raised; movement on {refit['n_images']} calibration images)")
            table.add_row("int8 before → after re-fit",
                          f"automation {_pct(before['automation'])} → {_pct(after['automation'])}, "
                          f"precision {_pct(before['auto_precision'])} → {_pct(after['auto_precision'])}")
        failed = not th["passed"]
        table.add_row("thresholds", ("verified" if th["passed"] else
                      f"[red]NOT verified[/]: int8 precision {_pct(th['auto_precision_int8'])} < "
                      f"{_pct(th['required_auto_precision'])}") + (" (fp32 thresholds)" if not refit else ""))
        if q["evaluation"]["n_seen_in_training"]:
            table.add_row("[yellow]note[/]", f"{q['evaluation']['n_seen_in_training']} of "
                          f"{q['evaluation']['n_images']} comparison images were used to fit the bundle")
    table.add_row("time", f"{result['seconds']:.1f} s")
    console.print(table)
    if failed:
        raise typer.Exit(1)
