"""Numerical guards: the compute precision and the detection of degenerate layers.

Two concerns live here.

* The *compute dtype*: the floating type in which covariances, Cholesky
  factorizations and log-determinants are formed. Half-precision features are
  never factored in half precision; float64 is used only when asked for (or
  when the features are float64) and only under ``jax_enable_x64``.
* *Degeneracy* during construction: features of a class (or of the whole
  training set) that have collapsed onto a single point, and factorizations
  that failed. The statistics are computed inside the compiled layer step (a
  few O(m d) reductions next to the O(k m d²) covariances) and inspected on
  the host together with the rates that construction already fetches, so the
  guards add no device round-trip.

References:
  Chan et al., "ReduNet: A White-box Deep Network from the Principle of
  Maximizing Rate Reduction", JMLR 23 (2022), section 2.3 (the layer
  operators, which require ``I + alpha_j Z^T diag(Pi_j) Z`` to be factored).
"""

from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
import numpy as np

from redunet_jax._checks import is_concrete

ON_DEGENERATE = ("raise", "warn", "ignore")

# Two features count as identical when they differ by less than this many
# rounding units of the compute dtype, relative to the largest feature norm of
# their group: below it the dtype cannot tell them apart reliably.
_IDENTICAL_ULPS = 16.0

_LAYER_HINT = (
    "try a larger eps_sq, a smaller eta or fewer layers, or pass "
    "on_degenerate='warn' to continue"
)
_INPUT_HINT = (
    "no layer can spread them apart (inputs that are positive multiples of one "
    "another become identical once normalized); pass on_degenerate='warn' to "
    "construct the network anyway"
)


def resolve_compute_dtype(compute_dtype, input_dtype, name: str = "compute_dtype"):
    """Return the real dtype in which rates and factorizations are computed.

    Args:
      compute_dtype: ``None`` (the default rule), or float32 / float64 given as
        a NumPy or JAX dtype, scalar type or name.
      input_dtype: dtype of the features as given (before any promotion).
      name: argument name used in error messages.

    Returns:
      ``np.dtype('float32')`` or ``np.dtype('float64')``. The default is float64
      for float64 features (only possible under ``jax_enable_x64``) and float32
      otherwise: bfloat16 and float16 features are factored in float32.

    Raises:
      TypeError: if ``compute_dtype`` is not a dtype.
      ValueError: if it is not float32 or float64, or is float64 while 64-bit
        JAX is disabled.
    """
    x64 = jax.dtypes.canonicalize_dtype(jnp.float64) == np.dtype(np.float64)
    if compute_dtype is None:
        wide = np.dtype(input_dtype) == np.dtype(np.float64) and x64
        return np.dtype(np.float64 if wide else np.float32)
    try:
        dtype = np.dtype(compute_dtype)
    except TypeError as err:
        raise TypeError(
            f"{name} must be a floating dtype such as jnp.float32, got "
            f"{compute_dtype!r}"
        ) from err
    if dtype not in (np.dtype(np.float32), np.dtype(np.float64)):
        raise ValueError(
            f"{name} must be float32 or float64 (factorizations are never run in "
            f"lower precision), got {dtype}"
        )
    if dtype == np.dtype(np.float64) and not x64:
        raise ValueError(
            f"{name}=float64 needs 64-bit JAX: call "
            "jax.config.update('jax_enable_x64', True) at start-up (or compute "
            "inside `with jax.enable_x64(True):`), or use compute_dtype=float32"
        )
    return dtype


def cast_features(Z: jax.Array, dtype, name: str) -> jax.Array:
    """Return ``Z`` in ``dtype``, raising if narrowing made concrete values infinite."""
    out = Z.astype(dtype)
    if out.dtype != Z.dtype and is_concrete(Z) and is_concrete(out):
        if not np.isfinite(np.asarray(out)).all():
            raise ValueError(
                f"{name} has values too large for compute_dtype={out.dtype} "
                f"(largest magnitude {float(np.max(np.abs(np.asarray(Z)))):.3g}); "
                "rescale it or compute in float64"
            )
    return out


def layer_health(Z: jax.Array, Pi: jax.Array, sq_norm, operators=None) -> jax.Array:
    """Cheap statistics that reveal collapsed features and failed factorizations.

    Every group, the whole set (row 0) and each class (rows 1..k), is compared
    with one representative sample: the first sample of the set, and the first
    member of each class. Exact differences with a sample of the group are zero
    for identical features, whatever the group size, unlike a difference with
    the group mean, whose rounding grows with m. Cost O(m k + m D) for D
    numbers per sample.

    Args:
      Z: (m, ...) features in the layers' domain.
      Pi: (m, k) one-hot memberships.
      sq_norm: maps an (m, ...) array to its (m,) squared sample norms.
      operators: optional operators ``(E, C)`` of the layer just built, with
        ``C`` stacked by class on its leading axis.

    Returns:
      (k + 1, 4) array of the real dtype of ``Z``: group size, largest squared
      distance to the representative, largest squared norm, and 1.0 if the
      group's operator is finite (E for row 0, C_j for class j), else 0.0.
    """
    real = jnp.finfo(Z.dtype).dtype
    label = jnp.argmax(Pi, axis=1)
    first = jnp.argmax(Pi, axis=0)  # first member of each class
    members = Pi > 0

    to_class = sq_norm(Z - Z[first][label])
    to_first = sq_norm(Z - Z[0][None])
    sq = sq_norm(Z)
    class_dev = jnp.max(jnp.where(members, to_class[:, None], 0.0), axis=0)
    class_norm = jnp.max(jnp.where(members, sq[:, None], 0.0), axis=0)

    counts = jnp.concatenate([jnp.array([Z.shape[0]], real), jnp.sum(members, 0)])
    devs = jnp.concatenate([jnp.max(to_first)[None], class_dev])
    norms = jnp.concatenate([jnp.max(sq)[None], class_norm])
    return health_table(counts, devs, norms, operators)


def health_table(counts, devs, norms, operators=None) -> jax.Array:
    """The (k + 1, 4) table of :func:`layer_health` from its per-group columns.

    Args:
      counts: (k + 1,) group sizes (the set, then every class).
      devs: (k + 1,) largest squared distance to the group's representative.
      norms: (k + 1,) largest squared norm in the group.
      operators: optional ``(E, C)`` whose finiteness fills the last column.
    """
    real = norms.dtype
    if operators is None:
        finite = jnp.ones_like(counts)
    else:
        E, C = operators
        per_class = jnp.isfinite(C).reshape(C.shape[0], -1).all(axis=1)
        finite = jnp.concatenate([jnp.isfinite(E).all()[None], per_class])
    return jnp.stack(
        [counts.astype(real), devs, norms, finite.astype(real)], axis=1
    ).astype(real)


class DegeneracyGuard:
    """Host-side reading of :func:`layer_health`, with the chosen response.

    Collapsed features raise a ``ValueError``, warn (once per group) or pass,
    as ``on_degenerate`` says; non-finite features and failed factorizations
    always raise, because no later layer could be built from them.
    """

    def __init__(self, on_degenerate: str, *, dtype):
        if on_degenerate not in ON_DEGENERATE:
            raise ValueError(
                f"on_degenerate must be one of {ON_DEGENERATE}, got {on_degenerate!r}"
            )
        self.on_degenerate = on_degenerate
        self.tolerance = (_IDENTICAL_ULPS * float(np.finfo(dtype).eps)) ** 2
        self._warned: set[tuple[str, int]] = set()

    def check(self, health: np.ndarray, *, produced_by: int, built: int | None):
        """Inspect the statistics of one construction step.

        Args:
          health: (k + 1, 4) host values from :func:`layer_health`.
          produced_by: index of the layer whose output the features are, or
            -1 for the normalized input.
          built: index of the layer built from these features (whose
            operators were checked), or ``None`` after the last layer.

        Raises:
          ValueError: for non-finite features, a failed factorization, or (with
            ``on_degenerate="raise"``) collapsed features.
        """
        where = "input X" if produced_by < 0 else f"layer {produced_by}"
        counts, devs, norms, finite = (health[:, i] for i in range(4))
        if not np.all(np.isfinite(norms)):
            raise ValueError(
                f"{where}: produced non-finite features; try a larger eps_sq, a "
                "smaller eta or compute_dtype=float64"
            )
        self._collapse(where, counts, devs, norms)
        if built is not None and not np.all(finite > 0):
            group = int(np.argmin(finite))
            matrix = (
                "I + alpha Sigma of all samples (expansion E)"
                if group == 0
                else f"I + alpha_j Sigma_j of class {group - 1} (compression C_j)"
            )
            raise ValueError(
                f"layer {built}: the Cholesky factorization of {matrix} failed "
                "(non-finite log-determinant or operator); try a larger eps_sq or "
                "compute_dtype=float64"
            )

    def _collapse(self, where, counts, devs, norms):
        if self.on_degenerate == "ignore":
            return
        for group in range(len(counts)):
            n = int(round(counts[group]))
            if n < 2 or devs[group] > self.tolerance * norms[group]:
                continue
            state = "zero" if norms[group] == 0 else "identical"
            whose = "samples" if group == 0 else f"samples of class {group - 1}"
            message = f"{where}: all {n} {whose} are {state} (features collapsed)"
            if self.on_degenerate == "raise":
                hint = _INPUT_HINT if where == "input X" else _LAYER_HINT
                raise ValueError(f"{message}; {hint}")
            message += "; construction goes on (on_degenerate='warn')"
            if (state, group) not in self._warned:
                self._warned.add((state, group))
                warnings.warn(message, RuntimeWarning, stacklevel=4)
            if group == 0:
                return  # every class is then collapsed as well
