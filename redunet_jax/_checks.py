"""Validation of user input at the public boundary.

Every check raises ``ValueError`` or ``TypeError`` whose message names the
argument and shows what was received, so that a mistake never surfaces as a
traceback from inside a compiled JAX function.
"""

from __future__ import annotations

import numbers

import jax
import jax.numpy as jnp
import numpy as np
from jax.core import Tracer


def is_concrete(x) -> bool:
    """Whether ``x`` holds values (not an abstract tracer inside ``jit``)."""
    return not isinstance(x, Tracer)


#: Floating dtypes the library computes with (half precision in float32).
_FLOATS = tuple(
    np.dtype(d) for d in (jnp.float16, jnp.bfloat16, jnp.float32, jnp.float64)
)


def check_float_array(x, name: str, *, ndims: tuple[int, ...]) -> jax.Array:
    """Return ``x`` as a floating JAX array after checking its rank and values.

    Integer and boolean inputs are promoted to the default float type; complex
    inputs are rejected. Values are checked for NaN and inf only when they are
    concrete (outside ``jit``); host arrays are checked with NumPy so that no
    device computation is compiled for the check.
    """
    if isinstance(x, (str, bytes)) or x is None:
        raise TypeError(f"{name} must be an array, got {type(x).__name__}")
    xp = jnp if isinstance(x, jax.Array) else np
    try:
        arr = xp.asarray(x)
    except (TypeError, ValueError) as err:
        raise TypeError(
            f"{name} must be a numeric array, got {type(x).__name__}"
        ) from err
    if np.issubdtype(arr.dtype, np.complexfloating):
        raise TypeError(f"{name} must be real-valued, got dtype {arr.dtype}")
    floating = jnp.issubdtype(arr.dtype, jnp.floating)
    if not (floating or np.issubdtype(arr.dtype, np.integer) or arr.dtype == np.bool_):
        raise TypeError(f"{name} must be a numeric array, got dtype {arr.dtype}")
    if floating and arr.dtype not in _FLOATS:
        raise TypeError(
            f"{name} must be float16, bfloat16, float32 or float64, got dtype "
            f"{arr.dtype}"
        )
    if arr.ndim not in ndims:
        if len(ndims) > 3 and list(ndims) == list(range(ndims[0], ndims[-1] + 1)):
            wanted = f"at least {ndims[0]} dimension(s)"
        else:
            wanted = " or ".join(str(n) for n in ndims) + " dimensions"
        raise ValueError(f"{name} must have {wanted}, got shape {tuple(arr.shape)}")
    if any(s == 0 for s in arr.shape):
        raise ValueError(f"{name} must not be empty, got shape {tuple(arr.shape)}")
    if is_concrete(arr) and floating:
        # NumPy, not jnp: inside an enclosing jit a jnp call on a captured
        # concrete array would be staged into the trace instead of evaluated.
        finite = np.isfinite(np.asarray(arr))
        if not finite.all():
            bad = int(arr.size - finite.sum())
            raise ValueError(f"{name} contains {bad} NaN or infinite values")
    # Half precision is computed in float32 (factorizations need it); integers
    # become the default float type.
    target = jnp.promote_types(arr.dtype, jnp.float32) if floating else float
    with np.errstate(over="ignore"):  # overflow is reported below, by name
        out = jnp.asarray(arr, dtype=jax.dtypes.canonicalize_dtype(target))
    if is_concrete(out) and out.dtype != arr.dtype and floating:
        if not np.isfinite(np.asarray(out)).all():
            raise ValueError(
                f"{name} has values too large for {out.dtype} (largest magnitude "
                f"{float(np.max(np.abs(np.asarray(arr)))):.3g}); rescale it"
            )
    return out


def check_labels(labels, name: str, *, m: int, num_classes: int) -> jax.Array:
    """Return integer labels of shape (m,) with values in [0, num_classes)."""
    if isinstance(labels, (str, bytes)) or labels is None:
        raise TypeError(f"{name} must be an integer array, got {type(labels).__name__}")
    arr = labels if isinstance(labels, jax.Array) else np.asarray(labels)
    if arr.dtype == bool or not np.issubdtype(arr.dtype, np.integer):
        if is_concrete(arr) and np.issubdtype(arr.dtype, np.floating):
            values = np.asarray(arr)
            if np.all(np.isfinite(values)) and np.all(values == np.round(values)):
                arr = values.astype(np.int64)
            else:
                raise TypeError(
                    f"{name} must hold integer class indices, got non-integer "
                    f"values of dtype {arr.dtype}"
                )
        else:
            raise TypeError(
                f"{name} must hold integer class indices, got dtype {arr.dtype}"
            )
    if arr.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {arr.shape}")
    if arr.shape[0] != m:
        raise ValueError(
            f"{name} has {arr.shape[0]} entries but X has {m} samples; they must match"
        )
    if is_concrete(arr):
        values = np.asarray(arr)
        low, high = int(values.min()), int(values.max())
        if low < 0 or high >= num_classes:
            raise ValueError(
                f"{name} must lie in [0, num_classes={num_classes}), "
                f"got values from {low} to {high}"
            )
    return jnp.asarray(arr, dtype=jnp.int32)


def check_memberships(Pi, name: str, *, m: int) -> jax.Array:
    """Return memberships of shape (m, k): non-negative rows summing to one."""
    arr = check_float_array(Pi, name, ndims=(2,))
    if arr.shape[0] != m:
        raise ValueError(
            f"{name} has {arr.shape[0]} rows but Z has {m} samples; they must match"
        )
    if arr.shape[1] < 1:
        raise ValueError(f"{name} must have at least one column, got {arr.shape}")
    if is_concrete(arr):
        values = np.asarray(arr)
        if np.any(values < 0):
            raise ValueError(f"{name} must be non-negative")
        deviation = np.max(np.abs(values.sum(axis=1) - 1.0))
        if deviation > 1e-3:
            raise ValueError(
                f"{name} rows must sum to 1 (memberships), largest deviation "
                f"{deviation:.3g}"
            )
    return arr


def check_finite_result(rates, name: str = "Z"):
    """Raise if concrete rates overflowed (features far too large for the dtype)."""
    values = [v for v in rates if is_concrete(v)]
    if values and not all(np.isfinite(np.asarray(v)).all() for v in values):
        raise ValueError(
            f"the rates of {name} are not finite: its values are too large for "
            "the floating-point type (normalize the features first)"
        )
    return rates


def check_positive(value, name: str):
    """Return ``value`` as a float after checking it is finite and > 0.

    A traced value (inside ``jit`` or ``grad``) is returned unchecked.
    """
    if not is_concrete(value):
        return value
    number = check_real(value, name)
    if not number > 0:
        raise ValueError(f"{name} must be > 0, got {value!r}")
    return number


def check_real(value, name: str) -> float:
    """Return ``value`` as a finite Python float (a traced value passes unchecked)."""
    if not is_concrete(value):
        return value
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        if not (isinstance(value, (np.ndarray, jax.Array)) and np.ndim(value) == 0):
            raise TypeError(f"{name} must be a real number, got {value!r}")
    number = float(value)
    if not np.isfinite(number):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return number


def check_float32(value, name: str) -> float:
    """Return a finite real ``value`` that float32 can represent."""
    number = check_real(value, name)
    if is_concrete(number) and abs(number) > float(np.finfo(np.float32).max):
        raise ValueError(f"{name} is too large for float32, got {value!r}")
    return number


def check_int(value, name: str, *, minimum: int) -> int:
    """Return ``value`` as an int after checking it is >= ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)
