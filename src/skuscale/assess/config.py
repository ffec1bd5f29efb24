"""The assessment's YAML configuration: per-check thresholds and parameters.

::

    checks:
      sample_balance: {max_ratio: 10}
      calibration: {max_ece: 0.03}
    coupled_risks: {margin: 0.2}
    seed: 0

Every key is optional and must be one the check declares in its ``defaults``; an
unknown key or a value of the wrong type is a :class:`ConfigError` naming it. A value's
type is that of its default; a parameter whose default is None (no type to compare
with) is checked by the validator the check declares in ``validators``
(:func:`optional_date`, :func:`optional_positive_int`).
"""

from __future__ import annotations

import datetime as dt
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from skuscale.exceptions import SkuscaleError

COUPLED_DEFAULTS = {"margin": 0.2}


class ConfigError(SkuscaleError):
    """The assessment configuration is invalid."""


@dataclass
class AssessConfig:
    """Parameters per check (defaults merged with overrides), coupled-risk margin and seed."""

    checks: dict[str, dict[str, Any]] = field(default_factory=dict)
    coupled_margin: float = COUPLED_DEFAULTS["margin"]
    seed: int = 0

    def params_for(self, check) -> dict[str, Any]:
        return {**dict(check.defaults), **self.checks.get(check.name, {})}


def optional_date(value: Any) -> dt.date | None:
    """None, or a date (YAML ``2024-06-30``, or the string ``"2024-06-30"``)."""
    if value is None or (isinstance(value, dt.date) and not isinstance(value, dt.datetime)):
        return value
    if isinstance(value, str):
        try:
            return dt.date.fromisoformat(value)
        except ValueError:
            pass
    raise ValueError(f"must be a date YYYY-MM-DD or null, got {value!r}")


def optional_positive_int(value: Any) -> int | None:
    """None, or a whole number of at least 1."""
    if value is None:
        return None
    if (isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value)
            or float(value) != int(value) or value < 1):
        raise ValueError(f"must be a positive integer or null, got {value!r}")
    return int(value)


def _check_value(where: str, default: Any, value: Any, validator: Callable[[Any], Any] | None = None) -> Any:
    if validator is not None:
        try:
            return validator(value)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{where} {exc}") from exc
    if default is None:
        return value
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ConfigError(f"{where} must be true or false, got {value!r}")
        return value
    if isinstance(default, int | float):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{where} must be a number, got {value!r}")
        if isinstance(default, int) and not isinstance(default, bool) and (
                not math.isfinite(value) or float(value) != int(value)):
            raise ConfigError(f"{where} must be an integer, got {value!r}")
        return type(default)(value)
    if isinstance(default, str | dt.date) and not isinstance(value, type(default)):
        raise ConfigError(f"{where} must be a {type(default).__name__}, got {value!r}")
    return value


def parse_config(doc: Any, source: str = "config") -> AssessConfig:
    """Validate a parsed YAML document against the registered checks."""
    from skuscale.assess.base import registered_checks

    if doc is None:
        doc = {}
    if not isinstance(doc, dict):
        raise ConfigError(f"{source}: expected a mapping with 'checks', 'coupled_risks' and/or 'seed'")
    unknown = sorted(set(doc) - {"checks", "coupled_risks", "seed"})
    if unknown:
        raise ConfigError(f"{source}: unknown key(s) {', '.join(unknown)}; allowed: checks, coupled_risks, seed")
    checks = {c.name: c for c in registered_checks()}
    out: dict[str, dict[str, Any]] = {}
    section = doc.get("checks") or {}
    if not isinstance(section, dict):
        raise ConfigError(f"{source}: 'checks' must be a mapping of check name to parameters")
    for name, params in section.items():
        if name not in checks:
            raise ConfigError(f"{source}: unknown check {name!r}; checks: {', '.join(checks)}")
        params = params or {}
        if not isinstance(params, dict):
            raise ConfigError(f"{source}: checks.{name} must be a mapping of parameters")
        defaults = checks[name].defaults
        bad = sorted(set(params) - set(defaults))
        if bad:
            raise ConfigError(f"{source}: unknown parameter(s) {', '.join(f'checks.{name}.{b}' for b in bad)}; "
                              f"{name} accepts: {', '.join(defaults)}")
        validators = getattr(checks[name], "validators", {})
        out[name] = {k: _check_value(f"{source}: checks.{name}.{k}", defaults[k], v, validators.get(k))
                     for k, v in params.items()}
    coupled = doc.get("coupled_risks") or {}
    if not isinstance(coupled, dict) or set(coupled) - set(COUPLED_DEFAULTS):
        raise ConfigError(f"{source}: coupled_risks accepts only: {', '.join(COUPLED_DEFAULTS)}")
    margin = _check_value(f"{source}: coupled_risks.margin", 0.2, coupled.get("margin", 0.2))
    if not 0 <= margin < 1:
        raise ConfigError(f"{source}: coupled_risks.margin must be in [0, 1), got {margin!r}")
    seed = _check_value(f"{source}: seed", 0, doc.get("seed", 0))
    return AssessConfig(checks=out, coupled_margin=float(margin), seed=int(seed))


def load_config(path: str | os.PathLike | None) -> AssessConfig:
    """Read and validate a YAML config file (None: all defaults)."""
    if path is None:
        return parse_config({})
    import yaml

    path = Path(path)
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"config {path} is not valid YAML: {exc}") from exc
    return parse_config(doc, str(path))
