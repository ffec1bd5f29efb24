"""``skuscale demo`` / ``make demo``: the pilot-to-rollout story, or a real-image run with ``--data``.

Without ``--data`` (the default; no data needed) it simulates, in embedding
space, a clean balanced pilot of 800 SKUs and a rollout of 2,000 SKUs with
near-duplicate families, Zipf-distributed image counts, 5% new SKUs per quarter
and appearance drift on 10% of the SKUs, then shows with numbers: naive argmax
accuracy, pilot against rollout; the readiness assessment's failing checks,
computed from the rollout's training data before deployment; the forecast of the
rollout accuracy; and the routed pipeline's silent-error rate against naive
argmax's. It writes ``demo.json`` and one HTML report with the degradation
curve. Everything it shows is labelled SIMULATED.

With ``--data FOLDER`` (``train.csv``, ``val.csv``, optional ``reference.csv``)
it builds a bundle on real images with 4 SKUs held out as unknown products and
compares routing with naive argmax; a folder without ``train.csv`` falls back
to the small sample of real Grocery Store images shipped inside the package.
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

from skuscale.head.linear import LinearHead
from skuscale.simulate import SimulatorParams
from skuscale.training import TrainingConfig

DEFAULT_DATA = Path("../shared/grocery-store")
N_UNKNOWN = 4

# The simulated pilot and rollout (docs/forecast.md, "Calibrating the demo"): one
# world (dimension, spread, background similarity), a clean balanced pilot and a
# rollout with near-duplicate families, Zipf counts, 5% new SKUs per quarter and
# drift on 10% of the SKUs.
PILOT = SimulatorParams(
    n_skus=800, dim=64, within_spread=1.25, background_similarity=0.2, family_size=1.0,
    zipf_exponent=0.0, max_train=20, min_train=20, val_per_sku=4, test_per_sku=5, seed=0,
)
ROLLOUT = PILOT.replace(
    n_skus=2000, family_size=2.0, family_similarity=0.6, zipf_exponent=0.6, max_train=40, min_train=8,
    val_per_sku=2, new_sku_monthly_rate=0.05 / 3, months=3.0, drift_share=0.1, drift_similarity=0.85, seed=1,
)


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
    from skuscale.embed.finetune_config import FinetuneConfig
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
        # The demo stays quick on frozen features; `skuscale build` fine-tunes by default.
        finetune=FinetuneConfig(epochs=0),
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


# ----------------------------------------------------------------- simulated story
def _scaled(params: SimulatorParams, scale: float, seed: int) -> SimulatorParams:
    return params.replace(n_skus=max(20, round(params.n_skus * scale)), seed=params.seed + 2 * seed)


IMPRINT_SCALE = 16.0


def imprinted_head(X, y) -> LinearHead:
    """A :class:`LinearHead` whose weights are imprinted class means, with no optimisation.

    Weight imprinting (Qi, Brown & Lowe, CVPR 2018; :meth:`LinearHead.imprint`) makes
    the head a cosine nearest-class-mean classifier. On the simulator's isotropic
    noise that is the right classifier, and it costs one pass over the data where
    L-BFGS on 2,000 classes costs minutes on two cores.
    """
    from skuscale.head.prototypes import PrototypeHead

    proto = PrototypeHead().fit(X, y)
    head = LinearHead(long_tail="none")
    head.classes_ = proto.classes_
    head.coef_ = (IMPRINT_SCALE * proto.prototypes_).astype(np.float32)
    head.intercept_ = np.zeros(proto.classes_.size, dtype=np.float32)
    head.log_prior_ = np.log(proto.counts_ / proto.counts_.sum()).astype(np.float32)
    head.n_features_in_ = proto.n_features_in_
    head.n_iter_ = 0
    return head


class _ImprintingHead(LinearHead):
    """``fit`` returns :func:`imprinted_head` (a plain LinearHead), so bundles stay loadable anywhere."""

    def fit(self, X, y, *, init=None) -> LinearHead:
        return imprinted_head(X, y)


class ImprintedTrainingConfig(TrainingConfig):
    """:class:`TrainingConfig` whose heads are imprinted (the demo's 2,000-SKU budget)."""

    def make_head(self) -> LinearHead:
        return _ImprintingHead()


def naive_top1(train, test) -> float:
    """Arg-max top-1 of the imprinted head on the test images of known SKUs."""
    head = imprinted_head(train.X, train.sku)
    known = np.isin(test.sku, head.classes_)
    return float((head.predict(test.X[known]) == test.sku[known]).mean())


def _demo_figures(fc: dict, pilot_point: dict, rollout_point: dict, rollout: dict) -> list[tuple[str, str]]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from skuscale.forecast.report import figure_png_base64, plot_curve

    curve = plot_curve(fc, extra_points=[pilot_point, rollout_point],
                       title="degradation curve: rollout training data, forecast from <= 40% of its SKUs")
    fig, ax = plt.subplots(figsize=(6, 3.2))
    labels = ["naive argmax", "skuscale routed"]
    values = [100 * rollout["naive_silent_error_rate"], 100 * rollout["routed"]["silent_error_rate"]]
    ax.bar(labels, values, color=["#c0392b", "#2e86c1"])
    for i, v in enumerate(values):
        ax.text(i, v, f"{v:.1f}%", ha="center", va="bottom")
    ax.set_ylabel("silent errors (% of all items)")
    ax.set_title("rollout test items acted on and wrong [SIMULATED]", fontsize=10)
    return [("Degradation curve", figure_png_base64(curve)), ("Silent errors", figure_png_base64(fig))]


def render_demo_html(result: dict, figures: list[tuple[str, str]]) -> str:
    from html import escape

    from skuscale.forecast.report import PAGE_STYLE, SIMULATED_BANNER

    p, r, f = result["pilot"], result["rollout"], result["forecast"]

    def pct(v):
        return "-" if v is None else f"{100 * v:.1f}%"

    checks = "".join(
        f"<tr><td>{c['number']}</td><td>{escape(c['title'])}</td><td>{escape(c['status'])}</td>"
        f"<td style='text-align:left'>{escape(c['summary'])}</td></tr>" for c in result["assessment"]["checks"])
    imgs = "".join(f"<h2>{escape(t)}</h2><img alt='{escape(t)}' src='data:image/png;base64,{b}'>"
                   for t, b in figures)
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>skuscale demo: pilot to rollout</title>
<style>{PAGE_STYLE}</style></head><body>
<h1>From pilot to rollout</h1>{SIMULATED_BANNER}
<table><tr><th></th><th>pilot</th><th>rollout</th></tr>
<tr><td>SKUs</td><td>{p['n_skus']}</td><td>{r['n_skus']} (+{r['n_new_skus']} new in the test period)</td></tr>
<tr><td>naive argmax top-1 (known SKUs)</td><td>{pct(p['naive_top1'])}</td><td>{pct(r['naive_top1'])}</td></tr>
<tr><td>forecast of the rollout top-1 (before deployment)</td><td></td>
<td>{pct(f['top1'])} (10-90%: {pct(f['top1_lo'])} – {pct(f['top1_hi'])}; proxy classifier, training-time look,
{pct(f['drifted_share'])} of SKUs drift afterwards)</td></tr>
<tr><td>silent errors, naive argmax</td><td></td><td>{pct(r['naive_silent_error_rate'])}</td></tr>
<tr><td>silent errors, skuscale routed</td><td></td><td>{pct(r['routed']['silent_error_rate'])}</td></tr>
<tr><td>automation (routed, known items accepted)</td><td></td><td>{pct(r['routed']['automation_rate'])}</td></tr>
<tr><td>unknown products acted on (naive / routed)</td><td></td>
<td>100% / {pct(r['routed']['unknown_accept_rate'])}</td></tr></table>
<h2>Readiness assessment of the rollout, before deployment: {escape(result['assessment']['verdict'])}</h2>
<table><tr><th>#</th><th>check</th><th>verdict</th><th>summary</th></tr>{checks}</table>
{imgs}
<p>Forecast dominant loss axis at {r['n_skus']} SKUs: <b>{escape(f['dominant_axis'])}</b>.
Simulator parameters: see demo.json. Total time {result['seconds']:.0f} s.</p>
</body></html>"""


def run_simulated(out: Path, console: Console, *, scale: float = 1.0, seed: int = 0) -> dict:
    """The simulated pilot-to-rollout story (module docstring); writes ``demo.json`` and ``demo.html``."""
    import time

    from skuscale.assess import AssessConfig, AssessmentContext, run_assessment
    from skuscale.build import build_bundle_from_embeddings
    from skuscale.data.embeddings import save_embeddings
    from skuscale.evaluate import evaluate_embeddings
    from skuscale.forecast import forecast
    from skuscale.simulate import simulate_catalogue

    started = time.perf_counter()
    say = console.print
    pilot_params, rollout_params = _scaled(PILOT, scale, seed), _scaled(ROLLOUT, scale, seed)
    say("[bold yellow]SIMULATED[/] embedding catalogues (skuscale simulate); no photos are involved")
    pilot, rollout = simulate_catalogue(pilot_params), simulate_catalogue(rollout_params)
    rollout_file = save_embeddings(out / "rollout.npz", rollout)
    save_embeddings(out / "pilot.npz", pilot)

    say(f"pilot: {pilot_params.n_skus} balanced, clean SKUs; imprinting the head")
    pilot_top1 = naive_top1(pilot.part("train"), pilot.part("test"))
    say(f"  naive argmax top-1 {pilot_top1:.1%}")

    # The thresholds allow for unknown products at the share the scenario has (in a store,
    # the share the review queue reports as "not in the catalogue").
    unknown_share = rollout_params.n_new_skus / (rollout_params.n_skus + rollout_params.n_new_skus)
    say(f"rollout: {rollout_params.n_skus} SKUs, families, Zipf counts, {rollout_params.n_new_skus} new SKUs "
        f"in {rollout_params.months:g} months, drift on {rollout_params.drift_share:.0%}; building the bundle "
        f"(thresholds allow for {unknown_share:.1%} unknown products)")
    config = ImprintedTrainingConfig(final_on_calibration=False, ood_folds=4, seed=seed,
                                     detectors=("msp", "energy", "prototype"), unknown_share=unknown_share)
    built = build_bundle_from_embeddings(rollout_file, out / "rollout-bundle", config=config)
    bundle = built.bundle
    routed = evaluate_embeddings(bundle, rollout, split="test")
    naive_silent = 1.0 - routed["n_known"] * routed["top1"] / routed["n_items"]
    say(f"  built in {built.seconds:.0f} s; naive argmax top-1 {routed['top1']:.1%} on known test SKUs")

    say("assessing the rollout's training data before deployment")
    train, val = rollout.part("train"), rollout.part("val")
    ctx = AssessmentContext(
        model=bundle.model, train_X=train.X, train_y=train.sku, val_X=val.X, val_y=val.sku,
        # The bundle's temperature and thresholds were fitted on these validation rows (as in
        # `load_context_from_embeddings`), so the held-out predictions must refit without them.
        val_seen_in_training=bool(len(val)), training_config=config, bundle=bundle, seed=seed,
    )
    # Fewer held-out-SKU folds than a real assessment, for the two-minute budget.
    assess_cfg = AssessConfig(checks={"ood_heldout": {"folds": 2, "compare_detectors": False}}, seed=seed)
    report = run_assessment(ctx, assess_cfg, inputs={"embeddings": str(rollout_file), "simulated": True})
    failing = [c for c in report["checks"] if c["status"] in ("fail", "error")]

    say("forecasting the rollout accuracy from sub-catalogues of at most 40% of its SKUs")
    fit_size = max(3, round(0.4 * rollout_params.n_skus))
    fc = forecast(rollout, rollout_params.n_skus, fit_max_size=fit_size, repeats=3, n_boot=20, seed=seed)
    # The forecast sees the catalogue as it looks at training time: drift happens later.
    at = fc["at_target"]
    drifted = len(rollout.meta["drifted_skus"]) / max(rollout_params.n_skus, 1)
    forecast_block = {
        "top1": at["top1"], "top1_lo": at["top1_lo"], "top1_hi": at["top1_hi"],
        "automation": at["automation"], "dominant_axis": fc["dominant_axis"],
        "attribution": fc["attribution"], "fit_max_size": fit_size, "drifted_share": drifted,
        "proxy": fc["proxy"]["classifier"],
    }
    result = {
        "simulated": True,
        "pilot": {"n_skus": pilot_params.n_skus, "naive_top1": pilot_top1, "params": pilot_params.to_dict()},
        "rollout": {
            "n_skus": rollout_params.n_skus, "n_new_skus": rollout_params.n_new_skus,
            "naive_top1": routed["top1"], "naive_silent_error_rate": naive_silent,
            "routed": {k: routed[k] for k in ("silent_error_rate", "automation_rate", "auto_precision",
                                               "unknown_accept_rate", "unknown_flag_rate", "n_items", "n_known",
                                               "n_unknown", "bands", "ece")},
            "params": rollout_params.to_dict(), "build_seconds": built.seconds,
        },
        "assessment": {"verdict": report["verdict"], "failing": [c["check"] for c in failing],
                       "heldout_source": report.get("heldout_source"),
                       "checks": [{k: c[k] for k in ("number", "check", "title", "status", "value", "threshold",
                                                      "summary")} for c in report["checks"]]},
        "forecast": forecast_block,
    }
    result["seconds"] = time.perf_counter() - started
    figures = _demo_figures(
        fc, {"size": pilot_params.n_skus, "top1": pilot_top1, "label": "pilot, naive argmax (measured)"},
        {"size": rollout_params.n_skus, "top1": routed["top1"], "label": "rollout, naive argmax (measured)"},
        result["rollout"],
    )
    (out / "demo.json").write_text(json.dumps(result, indent=2, default=float))
    (out / "demo.html").write_text(render_demo_html(result, figures))

    def pct(v):
        return "-" if v is None else f"{v:.1%}"

    table = Table("", "pilot", "rollout", title="[bold yellow]SIMULATED[/] pilot to rollout")
    table.add_row("SKUs", str(pilot_params.n_skus), f"{rollout_params.n_skus} (+{rollout_params.n_new_skus} new)")
    table.add_row("naive argmax top-1", pct(pilot_top1), pct(routed["top1"]))
    table.add_row("forecast top-1 (from training data)", "",
                  f"{pct(at['top1'])} [{pct(at['top1_lo'])} – {pct(at['top1_hi'])}]")
    table.add_row("silent errors: naive argmax", "", pct(naive_silent))
    table.add_row("silent errors: skuscale routed", "", pct(routed["silent_error_rate"]))
    table.add_row("automation (routed)", "", pct(routed["automation_rate"]))
    table.add_row("failing assessment checks", "", ", ".join(c["title"] for c in failing) or "none")
    console.print(table)
    console.print(f"report: {out / 'demo.html'}   data: {out / 'demo.json'}   ({result['seconds']:.0f} s)")
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="skuscale-demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=None,
                        help="folder with train.csv and val.csv: run on real images instead of the simulation")
    parser.add_argument("--out", type=Path, default=Path("out"))
    parser.add_argument("--scale", type=float, default=1.0,
                        help="simulated mode: multiply both catalogue sizes (e.g. 0.2 for a quick run)")
    parser.add_argument("--seed", type=int, default=0, help="simulated mode: random seed")
    args = parser.parse_args(argv)
    console = Console()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.data is None:
        if not 0.05 <= args.scale <= 5:
            parser.error("--scale must be in [0.05, 5]")
        run_simulated(args.out, console, scale=args.scale, seed=args.seed)
        return 0
    data = args.data
    if not (data / "train.csv").is_file():
        console.print(f"{data} has no train.csv; using the embedded sample of real Grocery Store images")
        data = sample_dir()
    run(data, args.out, console)
    return 0


if __name__ == "__main__":
    sys.exit(main())
