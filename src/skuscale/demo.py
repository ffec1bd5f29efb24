"""``skuscale demo`` / ``make demo``: build, hold out unknown SKUs, evaluate, compare with argmax.

Runs on a Grocery Store style folder (``train.csv``, ``val.csv``, optional
``reference.csv``) or, when none is given or found, on the small sample of real
Grocery Store images shipped inside the package.
"""

from __future__ import annotations

import argparse
import json
import sys
from importlib import resources
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

DEFAULT_DATA = Path("../shared/grocery-store")
N_UNKNOWN = 4


def sample_dir() -> Path:
    """Folder of the embedded sample (real Grocery Store images, MIT licence)."""
    return Path(str(resources.files("skuscale") / "sample"))


def pick_unknown_skus(train_skus: list[str], val_skus: list[str], n: int, seed: int = 0) -> list[str]:
    """``n`` SKUs present in validation, drawn reproducibly, to play unknown products."""
    candidates = sorted(set(train_skus) & set(val_skus))
    rng = np.random.default_rng(seed)
    return sorted(rng.choice(candidates, size=min(n, max(len(candidates) - 2, 0)), replace=False).tolist())


def run(data: Path, out: Path, console: Console) -> dict:
    from skuscale.build import build_bundle
    from skuscale.cli.progress import RichBuildProgress
    from skuscale.data import load_dataset
    from skuscale.evaluate import evaluate_bundle
    from skuscale.training import TrainingConfig

    train, val = data / "train.csv", data / "val.csv"
    reference = data / "reference.csv"
    train_ds, val_ds = load_dataset(train), load_dataset(val)
    unknown = pick_unknown_skus(train_ds.skus, val_ds.skus, N_UNKNOWN)
    console.print(f"[bold]data[/] {data}: {len(train_ds)} train / {len(val_ds)} val images, "
                  f"{len(train_ds.skus)} SKUs; held out as unknown products: {', '.join(unknown)}")
    # The validation photos calibrate the bundle but stay out of its head, so the
    # head's numbers below are on photos it never trained on.
    result = build_bundle(
        train, out / "bundle", val=val, reference=reference if reference.is_file() else None,
        exclude_skus=unknown, progress=RichBuildProgress(),
        config=TrainingConfig(final_on_calibration=False),
    )
    metrics = evaluate_bundle(result.bundle, val)
    naive_silent = 1.0 - metrics["n_known"] * metrics["top1"] / metrics["n_items"]
    metrics["naive_argmax_silent_error_rate"] = naive_silent
    metrics["unknown_skus"] = unknown
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))

    def pct(value: float | None) -> str:
        return "-" if value is None else f"{value:.1%}"

    table = Table("", "naive argmax", "skuscale routed", title="validation images, unknown SKUs included")
    table.add_row("items acted on automatically", "100%", pct(metrics["bands"]["accept"] / metrics["n_items"]))
    table.add_row("  ... sent to a reviewer (verify)", "0%", pct(metrics["bands"]["verify"] / metrics["n_items"]))
    table.add_row("  ... flagged as unknown product", "0%", pct(metrics["bands"]["unknown"] / metrics["n_items"]))
    table.add_row("silent errors (acted on, wrong)", pct(naive_silent), pct(metrics["silent_error_rate"]))
    table.add_row("top-1 on known SKUs", pct(metrics["top1"]), pct(metrics["top1"]))
    table.add_row("precision of what is acted on", pct(1 - naive_silent), pct(metrics["auto_precision"]))
    table.add_row("unknown products acted on", "100%", pct(metrics["unknown_accept_rate"]))
    table.add_row("calibration error (ECE)", "-", "-" if metrics["ece"] is None else f"{metrics['ece']:.3f}")
    console.print(table)
    console.print(f"bundle: {out / 'bundle'}   metrics: {out / 'metrics.json'}")
    return metrics


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="skuscale-demo", description=__doc__)
    parser.add_argument("--data", type=Path, default=None, help="folder with train.csv and val.csv")
    parser.add_argument("--out", type=Path, default=Path("out"))
    args = parser.parse_args(argv)
    console = Console()
    data = args.data or DEFAULT_DATA
    if not (data / "train.csv").is_file():
        console.print(f"{data} has no train.csv; using the embedded sample of real Grocery Store images")
        data = sample_dir()
    args.out.mkdir(parents=True, exist_ok=True)
    run(data, args.out, console)
    return 0


if __name__ == "__main__":
    sys.exit(main())
