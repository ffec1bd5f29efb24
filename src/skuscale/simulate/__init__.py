"""Embedding-space catalogue simulator: families, Zipf counts, new SKUs, drift.

Everything after the backbone works on embeddings, so a simulated catalogue of
2,000-100,000 SKUs exercises ``build``, ``evaluate``, ``assess`` and ``forecast``
in seconds. Every file it writes says ``"simulated": true`` in its metadata.
"""

from skuscale.simulate.catalogue import SimulatorParams, simulate_catalogue, zipf_counts
from skuscale.simulate.fit import (
    catalogue_statistics,
    estimate_zipf_exponent,
    fit_simulator_params,
    participation_ratio,
)

__all__ = [
    "SimulatorParams",
    "catalogue_statistics",
    "estimate_zipf_exponent",
    "fit_simulator_params",
    "participation_ratio",
    "simulate_catalogue",
    "zipf_counts",
]
