"""Readiness assessment: seven checks that predict the compound failure class before rollout.

``skuscale assess`` loads a bundle and its training (and validation) images into an
:class:`AssessmentContext`, runs every registered check (:data:`CHECKS`, one module
each), relates them (coupled risks, tail view) and writes ``report.json`` and a
self-contained ``report.html``.
"""

from skuscale.assess.base import CHECKS, Check, CheckResult, register, registered_checks
from skuscale.assess.config import AssessConfig, ConfigError, load_config, parse_config
from skuscale.assess.context import AssessmentContext, HeldoutPredictions, heldout_predictions, load_context
from skuscale.assess.report import coupled_risks, run_assessment, tail_view, write_report

__all__ = [
    "CHECKS",
    "AssessConfig",
    "AssessmentContext",
    "Check",
    "CheckResult",
    "ConfigError",
    "HeldoutPredictions",
    "coupled_risks",
    "heldout_predictions",
    "load_config",
    "load_context",
    "parse_config",
    "register",
    "registered_checks",
    "run_assessment",
    "tail_view",
    "write_report",
]
