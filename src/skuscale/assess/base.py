"""What a readiness check is, what it returns, and the registry the runner walks.

A check turns an :class:`~skuscale.assess.context.AssessmentContext` into a
:class:`CheckResult`: a verdict, one headline value against one threshold, the
evidence as JSON-able ``details`` and, when it fails, concrete ``actions``.
Each check lives in its own module and registers itself with :func:`register`;
its arithmetic is a plain function on arrays so it can be tested on hand-made
inputs without a bundle.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from skuscale.assess.context import AssessmentContext

PASS, FAIL, SKIPPED, ERROR = "pass", "fail", "skipped", "error"
STATUSES = (PASS, FAIL, SKIPPED, ERROR)
#: ``"max"``: the check fails when the value is above the threshold; ``"min"``: below it.
DIRECTIONS = ("max", "min")


@dataclass
class CheckResult:
    """The outcome of one check.

    Attributes
    ----------
    check : str
        Registry name, e.g. ``"sample_balance"``.
    number : int
        Position in the checklist (1-7 for the built-in checks).
    title : str
    status : str
        ``"pass"``, ``"fail"``, ``"skipped"`` (inputs missing; never fails the run)
        or ``"error"`` (the check raised; fails the run).
    value, threshold : float or None
        The headline measure and its limit (None when skipped or errored).
    direction : str
        ``"max"`` (fail when ``value > threshold``) or ``"min"`` (fail when below).
    unit : str
        How to read ``value`` (``"ratio"``, ``"pp"``, ``"share"``, ...).
    summary : str
        One sentence for people.
    details : dict
        The evidence, JSON-able; what the HTML plots are drawn from.
    actions : list of str
        Concrete next steps (always present for a failing check).
    seconds : float
        Wall time the check took.
    """

    check: str
    number: int
    title: str
    status: str
    value: float | None = None
    threshold: float | None = None
    direction: str = "max"
    unit: str = ""
    summary: str = ""
    details: dict[str, Any] = field(default_factory=dict)
    actions: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}, got {self.status!r}")
        if self.direction not in DIRECTIONS:
            raise ValueError(f"direction must be one of {DIRECTIONS}, got {self.direction!r}")

    @property
    def failed(self) -> bool:
        """Whether this result fails the assessment (``fail`` or ``error``)."""
        return self.status in (FAIL, ERROR)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def verdict(value: float, threshold: float, direction: str) -> str:
    """``"fail"`` when ``value`` is past ``threshold`` in ``direction``, else ``"pass"``.

    The threshold itself passes: ``max`` fails on ``value > threshold`` and ``min``
    on ``value < threshold``.
    """
    if direction == "max":
        return FAIL if value > threshold else PASS
    if direction == "min":
        return FAIL if value < threshold else PASS
    raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")


class Check:
    """Base class of a readiness check; subclasses set the class attributes and :meth:`run`.

    Attributes
    ----------
    name : str
        Registry key and section name in the YAML config.
    number : int
        Order in the report.
    title, measure : str
        Heading and a one-line description of what is measured.
    direction, unit : str
        See :class:`CheckResult`.
    defaults : dict
        Every parameter the check accepts with its default; the YAML config may
        override any of them (and nothing else). An override must have the default's
        type.
    validators : dict
        Parameter name to a function that returns the validated value or raises
        ``ValueError`` saying what is expected (the config names the parameter). Needed
        for a parameter whose default is None, which has no type to check against.
    """

    name: str = ""
    number: int = 0
    title: str = ""
    measure: str = ""
    direction: str = "max"
    unit: str = ""
    defaults: Mapping[str, Any] = {}
    validators: Mapping[str, Callable[[Any], Any]] = {}

    def missing_inputs(self, ctx: AssessmentContext) -> str | None:
        """Why this check cannot run on ``ctx`` (it is then skipped), or None."""
        return None

    def run(self, ctx: AssessmentContext, params: Mapping[str, Any]) -> CheckResult:
        raise NotImplementedError

    def figures(self, result: CheckResult) -> list[tuple[str, Any]]:
        """``(caption, matplotlib Figure)`` pairs drawn from ``result.details`` (default: none)."""
        return []

    def result(self, status: str, **fields: Any) -> CheckResult:
        """A :class:`CheckResult` pre-filled with this check's identity."""
        base = {"direction": self.direction, "unit": self.unit}
        return CheckResult(check=self.name, number=self.number, title=self.title, status=status,
                           **{**base, **fields})


CHECKS: dict[str, Check] = {}
#: Modules of the built-in checks, one per check.
BUILTIN_MODULES = (
    "sample_balance", "visual_similarity", "catalogue_change", "memory_headroom", "ood_heldout", "class_spread",
    "calibration",
)


def register(check_class: type[Check]) -> type[Check]:
    """Class decorator: add an instance of ``check_class`` to :data:`CHECKS` under its ``name``."""
    check = check_class()
    if not check.name:
        raise ValueError(f"{check_class.__name__} has no name")
    if check.name in CHECKS and type(CHECKS[check.name]) is not check_class:
        raise ValueError(f"a check named {check.name!r} is already registered")
    CHECKS[check.name] = check
    return check_class


def registered_checks() -> list[Check]:
    """Every registered check, in checklist order."""
    for module in BUILTIN_MODULES:
        importlib.import_module(f"skuscale.assess.{module}")  # importing registers the check
    return sorted(CHECKS.values(), key=lambda c: (c.number, c.name))
