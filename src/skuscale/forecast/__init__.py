"""Forecast recognition accuracy against catalogue size from the training data alone.

:func:`forecast` measures top-1, automation at a precision target and ECE on
nested random sub-catalogues with a cheap proxy classifier, fits the
competitor-hazard model and extrapolates to ``N`` SKUs with an uncertainty band;
:func:`write_report` writes JSON and an HTML page with the curve.
"""

from skuscale.forecast.core import forecast, pilot_subset, size_grid
from skuscale.forecast.measure import (
    SimilarityTable,
    Whitener,
    automation_at_precision,
    exact_top1_curve,
    measure_subcatalogues,
    similarity_table,
)
from skuscale.forecast.model import CompetitorHazardModel, fit_hazard_model
from skuscale.forecast.report import render_html, write_report

__all__ = [
    "CompetitorHazardModel",
    "SimilarityTable",
    "Whitener",
    "automation_at_precision",
    "exact_top1_curve",
    "fit_hazard_model",
    "forecast",
    "measure_subcatalogues",
    "pilot_subset",
    "render_html",
    "similarity_table",
    "size_grid",
    "write_report",
]
