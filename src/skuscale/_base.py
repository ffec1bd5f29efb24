"""scikit-learn style estimator base with a flat, pickle-free state for bundles.

Every estimator stores its keyword-only constructor arguments unchanged, learns
attributes whose names end in ``_``, and can round-trip through
:meth:`BaseEstimator.get_state` / :meth:`BaseEstimator.from_state`, which use only
numpy arrays and JSON-able scalars, so a bundle never needs pickle.
"""

from __future__ import annotations

import inspect
from typing import Any, Self

import numpy as np

from skuscale.exceptions import NotFittedError

_NESTED = "."


class BaseEstimator:
    """Mixin giving ``get_params``, fitted-state checks and array state round-trips."""

    @classmethod
    def _param_names(cls) -> list[str]:
        sig = inspect.signature(cls.__init__)
        return [
            name
            for name, p in sig.parameters.items()
            if name != "self" and p.kind is inspect.Parameter.KEYWORD_ONLY
        ]

    def get_params(self) -> dict[str, Any]:
        """Constructor arguments as given."""
        return {name: getattr(self, name) for name in self._param_names()}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({args})"

    def _fitted_attributes(self) -> list[str]:
        return [
            k for k in vars(self) if k.endswith("_") and not k.startswith("_")
        ]

    def is_fitted(self) -> bool:
        return bool(self._fitted_attributes())

    def _check_fitted(self) -> None:
        if not self.is_fitted():
            raise NotFittedError(
                f"This {type(self).__name__} is not fitted yet; call fit(X, y) first."
            )

    def get_state(self) -> dict[str, Any]:
        """Learned attributes as a flat dict of numpy arrays and JSON-able scalars.

        Nested estimators are flattened with ``"attr_.inner_"`` keys; their
        constructor parameters are stored under ``"attr_.__params__"``.
        """
        self._check_fitted()
        state: dict[str, Any] = {}
        for key in self._fitted_attributes():
            value = getattr(self, key)
            if isinstance(value, BaseEstimator):
                state[f"{key}{_NESTED}__class__"] = type(value).__name__
                state[f"{key}{_NESTED}__params__"] = value.get_params()
                for inner, v in value.get_state().items():
                    state[f"{key}{_NESTED}{inner}"] = v
            else:
                state[key] = value
        return state

    @classmethod
    def from_state(cls, params: dict[str, Any], state: dict[str, Any]) -> Self:
        """Rebuild a fitted estimator from :meth:`get_params` and :meth:`get_state`."""
        est = cls(**params)
        nested: dict[str, dict[str, Any]] = {}
        for key, value in state.items():
            if _NESTED in key:
                outer, inner = key.split(_NESTED, 1)
                nested.setdefault(outer, {})[inner] = value
            else:
                setattr(est, key, _restore(value))
        for outer, inner_state in nested.items():
            klass = _resolve_class(inner_state.pop("__class__"))
            inner_params = inner_state.pop("__params__")
            setattr(est, outer, klass.from_state(inner_params, inner_state))
        return est


def _restore(value: Any) -> Any:
    if isinstance(value, np.ndarray) and value.ndim == 0:
        return value.item()
    return value


def _resolve_class(name: str) -> type[BaseEstimator]:
    if isinstance(name, np.ndarray):
        name = str(name)

    def all_subclasses(k: type) -> list[type]:
        out = []
        for sub in k.__subclasses__():
            out.append(sub)
            out.extend(all_subclasses(sub))
        return out

    for sub in all_subclasses(BaseEstimator):
        if sub.__name__ == name:
            return sub
    raise ValueError(f"unknown estimator class in state: {name!r}")


def check_X(X: Any, *, name: str = "X", n_features: int | None = None) -> np.ndarray:
    """Validate a 2-D float embedding matrix and return it as float32."""
    arr = np.asarray(X)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be a 2-D (n_samples, n_features) array, got shape {arr.shape}")
    if arr.shape[0] == 0:
        raise ValueError(f"{name} has no rows")
    if not np.issubdtype(arr.dtype, np.number):
        raise ValueError(f"{name} must be numeric, got dtype {arr.dtype}")
    arr = arr.astype(np.float32, copy=False)
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    if n_features is not None and arr.shape[1] != n_features:
        raise ValueError(f"{name} has {arr.shape[1]} features, the estimator was fitted on {n_features}")
    return arr


def check_X_y(X: Any, y: Any) -> tuple[np.ndarray, np.ndarray]:
    """Validate embeddings and labels of equal length; labels stay as given (str or int)."""
    X = check_X(X)
    y = np.asarray(y)
    if y.ndim != 1 or y.shape[0] != X.shape[0]:
        raise ValueError(f"y must be 1-D with {X.shape[0]} labels, got shape {y.shape}")
    return X, y


def l2_normalize(X: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """Rows scaled to unit L2 norm (float32)."""
    X = np.asarray(X, dtype=np.float32)
    return X / np.maximum(np.linalg.norm(X, axis=1, keepdims=True), eps)


def softmax(logits: np.ndarray, axis: int = -1) -> np.ndarray:
    """Numerically stable softmax."""
    z = logits - logits.max(axis=axis, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=axis, keepdims=True)


def logsumexp(logits: np.ndarray, axis: int = -1) -> np.ndarray:
    """Numerically stable log-sum-exp."""
    m = logits.max(axis=axis, keepdims=True)
    return (m + np.log(np.exp(logits - m).sum(axis=axis, keepdims=True))).squeeze(axis)
