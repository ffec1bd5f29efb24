"""skuscale.routing: per-SKU thresholds and accept / verify / unknown bands."""

from skuscale.routing.router import (
    ACCEPT,
    BANDS,
    TOP_K,
    UNKNOWN,
    VERIFY,
    Decision,
    Router,
    category_probabilities,
)
from skuscale.routing.thresholds import (
    NEVER_ACCEPT,
    ThresholdTable,
    fit_thresholds,
    precision_lower_bound,
    precision_upper_bound,
)

__all__ = [
    "ACCEPT",
    "BANDS",
    "NEVER_ACCEPT",
    "TOP_K",
    "UNKNOWN",
    "VERIFY",
    "Decision",
    "Router",
    "ThresholdTable",
    "category_probabilities",
    "fit_thresholds",
    "precision_lower_bound",
    "precision_upper_bound",
]
