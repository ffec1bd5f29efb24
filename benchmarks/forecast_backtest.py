"""Backtests of ``skuscale forecast``, written as JSON.

Usage::

    python benchmarks/forecast_backtest.py --bundle BUNDLE [--data ../shared/grocery-store]
        [--out out/bench_forecast.json] [--pilots 10] [--sim-seeds 5]

1. **Grocery Store** (train + val only; the test split is never read). The train and
   val images are embedded with ``BUNDLE``'s ONNX backbone (cached). Targets at 81
   SKUs are *measured* with the forecast's proxy (whitened nearest-class-mean,
   trained on train, scored on val); the bundle-style logistic-regression head is
   measured too, for reference.

   * ``subcatalogue``: the model is fitted only on random sub-catalogues of at
     most 40 SKUs (``--fit-max-size 40``) and forecasts 81;
   * ``pilot``: only the data of 40 random SKUs is given to the forecast (a pilot
     catalogue), repeated over ``--pilots`` draws.

2. **Simulated** (``skuscale.demo.ROLLOUT`` statistics, no drift or new SKUs, one
   catalogue per seed): fitted on at most 800 of 2,000 SKUs (both ways), compared
   with the proxy's top-1 measured at 2,000.

3. **Simulator fit**: the simulator fitted to the Grocery Store train split (from
   its statistics alone, and with the spread matched to the real val top-1),
   simulated at 81 SKUs, and the proxy's top-1 on real and simulated val rows.

Target (issue 7): |forecast - measured| <= 3 points on top-1.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np

from skuscale._base import softmax
from skuscale.data.embeddings import EmbeddingDataset
from skuscale.forecast import (
    automation_at_precision,
    exact_top1_curve,
    forecast,
    measure_subcatalogues,
    pilot_subset,
    similarity_table,
)
from skuscale.forecast.measure import fit_scale


def embed_grocery(data: Path, bundle: Path) -> EmbeddingDataset:
    from skuscale.cli.forecast import load_forecast_data

    return load_forecast_data(data / "train.csv", val=data / "val.csv", bundle=bundle)


def measured_at_full(ds: EmbeddingDataset, target_precision: float = 0.99, n_boot: int = 300) -> dict:
    """The proxy's numbers on the whole catalogue, with a bootstrap (over images) of the automation."""
    tr, va = ds.part("train"), ds.part("val")
    table = similarity_table(tr.X, tr.sku, va.X, va.sku)
    scale = fit_scale(table)
    row = measure_subcatalogues(table, [table.n_skus], repeats=1, target_precision=target_precision, scale=scale)[0]
    probs = softmax(scale * table.S.astype(np.float64))
    conf, correct = probs.max(1), probs.argmax(1) == table.y
    rng = np.random.default_rng(0)
    boot = [automation_at_precision(conf[i], correct[i], target_precision)
            for i in (rng.integers(0, conf.size, conf.size) for _ in range(n_boot))]
    return {"n_skus": table.n_skus, "top1": float(exact_top1_curve(table.beaten_by(), table.n_skus,
                                                                    [table.n_skus])[0]),
            "automation": row["automation"], "automation_bootstrap_10_90": np.percentile(boot, [10, 90]).tolist(),
            "automation_bootstrap_std": float(np.std(boot)), "ece": row["ece"], "n_images": row["n_images"]}


def linear_head_top1(ds: EmbeddingDataset) -> float:
    from skuscale.head.linear import LinearHead

    tr, va = ds.part("train"), ds.part("val")
    head = LinearHead().fit(tr.X, tr.sku)
    return float((head.predict(va.X) == va.sku).mean())


def summarise(errors: list[float]) -> dict:
    e = np.array(errors)
    return {"mean_error_pp": float(e.mean()), "mean_abs_error_pp": float(np.abs(e).mean()),
            "max_abs_error_pp": float(np.abs(e).max()), "within_3pp": int((np.abs(e) <= 3).sum()), "n": int(e.size)}


def grocery_backtest(ds: EmbeddingDataset, pilots: int, fit_size: int = 40) -> dict:
    measured = measured_at_full(ds)
    full = measured["n_skus"]
    started = time.perf_counter()
    sub = forecast(ds, full, fit_max_size=fit_size, seed=0)
    sub_row = {
        "forecast_top1": sub["at_target"]["top1"], "band": [sub["at_target"]["top1_lo"], sub["at_target"]["top1_hi"]],
        "forecast_automation": sub["at_target"]["automation"],
        "error_top1_pp": 100 * (sub["at_target"]["top1"] - measured["top1"]),
        "error_automation_pp": 100 * (sub["at_target"]["automation"] - measured["automation"]),
        "dominant_axis": sub["dominant_axis"], "seconds": time.perf_counter() - started,
    }
    pilot_rows = []
    for seed in range(pilots):
        f = forecast(pilot_subset(ds, fit_size, seed=seed), full, seed=seed)
        pilot_rows.append({
            "seed": seed, "pilot_top1_measured_at_40": f["measured_mean"][-1]["top1"],
            "forecast_top1": f["at_target"]["top1"], "band": [f["at_target"]["top1_lo"], f["at_target"]["top1_hi"]],
            "forecast_automation": f["at_target"]["automation"],
            "error_top1_pp": 100 * (f["at_target"]["top1"] - measured["top1"]),
            "error_automation_pp": 100 * (f["at_target"]["automation"] - measured["automation"]),
        })
    inside = [r["band"][0] <= measured["top1"] <= r["band"][1] for r in pilot_rows]
    return {
        "measured_at_81": measured,
        "linear_head_top1_at_81": linear_head_top1(ds),
        "subcatalogue": sub_row,
        "pilot": {"rows": pilot_rows, "top1": summarise([r["error_top1_pp"] for r in pilot_rows]),
                  "automation": summarise([r["error_automation_pp"] for r in pilot_rows]),
                  "band_covers_measured": int(sum(inside))},
    }


def simulated_backtest(seeds: int, n_skus: int = 2000, fit_size: int = 800) -> dict:
    from skuscale.demo import ROLLOUT
    from skuscale.simulate import simulate_catalogue

    rows = []
    for seed in range(seeds):
        ds = simulate_catalogue(ROLLOUT.replace(n_skus=n_skus, new_sku_monthly_rate=0.0, drift_share=0.0, seed=seed))
        measured = measured_at_full(ds)
        started = time.perf_counter()
        pilot = forecast(pilot_subset(ds, fit_size, seed=seed), n_skus, repeats=3, seed=seed)
        sub = forecast(ds, n_skus, fit_max_size=fit_size, repeats=3, seed=seed)
        rows.append({
            "seed": seed, "measured_top1": measured["top1"], "measured_automation": measured["automation"],
            "pilot_forecast_top1": pilot["at_target"]["top1"], "subcatalogue_forecast_top1": sub["at_target"]["top1"],
            "pilot_error_pp": 100 * (pilot["at_target"]["top1"] - measured["top1"]),
            "subcatalogue_error_pp": 100 * (sub["at_target"]["top1"] - measured["top1"]),
            "pilot_forecast_automation": pilot["at_target"]["automation"],
            "seconds": time.perf_counter() - started,
        })
    return {"rows": rows, "pilot": summarise([r["pilot_error_pp"] for r in rows]),
            "subcatalogue": summarise([r["subcatalogue_error_pp"] for r in rows])}


def simulator_fit_check(ds: EmbeddingDataset) -> dict:
    from skuscale.simulate import fit_simulator_params, simulate_catalogue

    out = {"real_proxy_top1": measured_at_full(ds)["top1"]}
    for label, match in (("statistics_only", False), ("accuracy_matched", True)):
        params = fit_simulator_params(ds, match_accuracy=match)
        sims = [measured_at_full(simulate_catalogue(params.replace(seed=100 + s)), n_boot=1)["top1"] for s in range(3)]
        out[label] = {"params": params.to_dict(), "simulated_proxy_top1_3_seeds": sims}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("../shared/grocery-store"))
    parser.add_argument("--bundle", type=Path, required=True, help="bundle whose ONNX backbone embeds the images")
    parser.add_argument("--out", type=Path, default=Path("out/bench_forecast.json"))
    parser.add_argument("--pilots", type=int, default=10)
    parser.add_argument("--sim-seeds", type=int, default=5)
    args = parser.parse_args()
    started = time.perf_counter()
    ds = embed_grocery(args.data, args.bundle)
    result = {
        "machine": {"python": platform.python_version(), "processor": platform.processor() or platform.machine()},
        "grocery": grocery_backtest(ds, args.pilots),
        "simulated": simulated_backtest(args.sim_seeds),
        "simulator_fit": simulator_fit_check(ds),
    }
    result["seconds_total"] = time.perf_counter() - started
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    g, s = result["grocery"], result["simulated"]
    gp, sub = g["pilot"]["top1"], g["subcatalogue"]
    print(f"grocery: measured top-1 at 81 {g['measured_at_81']['top1']:.3f} "
          f"(linear head {g['linear_head_top1_at_81']:.3f}); sub-catalogues <= 40: forecast "
          f"{sub['forecast_top1']:.3f} ({sub['error_top1_pp']:+.1f} pp); 40-SKU pilots: "
          f"MAE {gp['mean_abs_error_pp']:.1f} pp, {gp['within_3pp']}/{gp['n']} within 3 pp")
    sp, ss = s["pilot"], s["subcatalogue"]
    print(f"simulated 2000 from <= 800: pilot MAE {sp['mean_abs_error_pp']:.2f} pp (max {sp['max_abs_error_pp']:.2f}),"
          f" sub-catalogue MAE {ss['mean_abs_error_pp']:.2f} pp (max {ss['max_abs_error_pp']:.2f})")
    print(f"wrote {args.out} in {result['seconds_total']:.0f} s")


if __name__ == "__main__":
    main()
