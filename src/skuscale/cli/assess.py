"""``skuscale assess``: the readiness report and its go/no-go exit code."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from skuscale.cli.paths import os_error_message, output_folder_problem
from skuscale.exceptions import SkuscaleError

STATUS_STYLE = {"pass": "green", "fail": "bold red", "skipped": "dim", "error": "bold magenta"}


def assess(
    bundle: Annotated[Path, typer.Argument(help="Bundle folder.")],
    out: Annotated[Path, typer.Option(help="Folder for report.json and report.html.")],
    train: Annotated[Path | None, typer.Option(
        help="Training manifest or image folder the bundle was built from.")] = None,
    embeddings: Annotated[Path | None, typer.Option(
        help="An embedding file (train/val rows) instead of images, e.g. from skuscale simulate.")] = None,
    val: Annotated[Path | None, typer.Option(help="Validation manifest (photos from other sessions).")] = None,
    device: Annotated[str | None, typer.Option(
        help="Device profile: smart-cart, shelf-camera, handheld, or a YAML file.")] = None,
    catalogue_log: Annotated[Path | None, typer.Option(help="Catalogue change log CSV: date,sku,change.")] = None,
    config: Annotated[Path | None, typer.Option(help="YAML overriding per-check thresholds.")] = None,
    cache_dir: Annotated[Path | None, typer.Option(
        help="Embedding cache folder (default $SKUSCALE_CACHE or ~/.cache/skuscale/embeddings).")] = None,
) -> None:
    """Readiness checks with a go/no-go verdict: exit 0 all pass, 1 a check failed or errored, 2 bad usage."""
    from skuscale.assess.config import load_config
    from skuscale.assess.context import load_context, load_context_from_embeddings
    from skuscale.assess.html import fmt_threshold, fmt_value
    from skuscale.assess.profiles import load_profile
    from skuscale.assess.report import run_assessment, write_report
    from skuscale.cli.progress import image_progress

    err = Console(stderr=True)
    started = time.perf_counter()

    def usage_error(message: str) -> None:
        err.print(f"[bold red]error:[/] {message}", highlight=False)
        raise typer.Exit(2)

    if (train is None) == (embeddings is None):
        usage_error("give exactly one of --train (images) or --embeddings (an embedding file)")
    if embeddings is not None and val is not None:
        usage_error("--val applies to images; an embedding file carries its own split column")
    if problem := output_folder_problem(out, "--out"):
        usage_error(problem)
    try:
        cfg = load_config(config)
        profile = load_profile(device) if device else None
    except SkuscaleError as exc:
        usage_error(str(exc))

    bars = image_progress()

    def embed_progress(total: int, label: str):
        task = bars.add_task(f"embedding {label}", total=total)
        return lambda n: bars.advance(task, n)

    try:
        if embeddings is not None:
            ctx = load_context_from_embeddings(
                bundle, embeddings, device=profile, catalogue_log=catalogue_log, seed=cfg.seed, say=err.log
            )
        else:
            with bars:
                ctx = load_context(
                    bundle, train, val=val, device=profile, catalogue_log=catalogue_log, cache_dir=cache_dir,
                    seed=cfg.seed, say=err.log, embed_progress=embed_progress,
                )
    except SkuscaleError as exc:
        usage_error(str(exc))

    def on_result(result) -> None:
        style = STATUS_STYLE[result.status]
        err.log(f"  [{style}]{result.status}[/] {result.title} ({result.seconds:.1f} s): {result.summary}",
                highlight=False)

    report = run_assessment(
        ctx, cfg, on_result=on_result,
        inputs={"bundle": str(bundle), "train": str(train) if train else None,
                "embeddings": str(embeddings) if embeddings else None, "val": str(val) if val else None,
                "device": profile.source if profile else None,
                "catalogue_log": str(catalogue_log) if catalogue_log else None,
                "config": str(config) if config else None},
    )
    report["seconds_total"] = time.perf_counter() - started
    err.log("writing the report")
    try:
        json_path, html_path = write_report(report, out)
    except OSError as exc:
        err.print(f"[bold red]error:[/] cannot write the report: {os_error_message(exc)}", highlight=False)
        raise typer.Exit(1) from None

    table = Table("#", "check", "value", "threshold", "verdict", title=f"readiness of {bundle}")
    for c in report["checks"]:
        table.add_row(str(c["number"]), c["title"], fmt_value(c["value"], c["unit"]), fmt_threshold(c),
                      f"[{STATUS_STYLE[c['status']]}]{c['status']}[/]")
    console = Console()
    console.print(table)
    n = report["counts"]
    style = "bold green" if report["verdict"] == "go" else "bold red"
    console.print(f"[{style}]{report['verdict']}[/]: {n['pass']} passed, {n['fail']} failed, {n['error']} errors, "
                  f"{n['skipped']} skipped; {len(report['coupled_risks'])} coupled risk(s), "
                  f"{len(report['actions'])} action(s)", highlight=False)
    for c in report["checks"]:
        if c["status"] in ("skipped", "error"):
            console.print(f"  {c['title']}: {c['summary']}", highlight=False, markup=False)
    console.print(f"report: {html_path} and {json_path} ({report['seconds_total']:.1f} s)", highlight=False)
    raise typer.Exit(report["exit_code"])
