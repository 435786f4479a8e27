"""Seconds per shift-invariant layer: Fourier blocks against dense operators and NumPy.

One layer step (build the operators from the features, then move the features)
is timed three ways on the same synthetic signals:

- spectral: the library's jitted step on the F = T // 2 + 1 stored ``rfft`` bins,
  one batched Cholesky call for E and every C_j (the Fourier-domain layer);
- dense: a jitted JAX layer with the explicit (CT)×(CT) block-circulant
  operators, built from the covariance of every circular shift of every sample
  and applied in the signal domain, O(k (CT)³);
- numpy: the obvious float64 port, a Python loop over all T bins of the full
  complex FFT with ``numpy.linalg.inv`` for E and every C_j.

The three outputs are compared in the signal domain before anything is timed;
the script exits non-zero if they disagree. Then the spectral step's time is
fitted against T and against C, and the peak resident memory of one 2D layer
(``construct(..., invariant=True, num_layers=1)``) is read from a subprocess.
Spectral and dense timings exclude the once-per-block transforms (the
spectral step works on ``rfft`` coefficients), and the spectral step also
returns the rates of its input, from the same factorization.

Usage: python benchmarks/bench_spectral.py [--quick] [--m 500] [--channels 8]
           [--classes 4] [--dense-lengths 16 32 64 128] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from _common import best_of, environment, write_json

from redunet_jax import construct
from redunet_jax._fourier import _irfft, _rfft, num_bins
from redunet_jax._network import _construction_step, normalize

HYPER = {"eps_sq": 0.1, "eta": 0.5, "lam": 500.0}
TOLERANCE = 1e-4  # max abs difference of unit-norm outputs, float32 vs float64
DENSE_MEMORY_LIMIT = 2 * 2**30
DENSE_TIME_LIMIT_S = 60.0
MEMORY_BUDGET = 4 * 2**30
MIB = 2**20


class Case(NamedTuple):
    """Sizes of one 1D benchmark: samples, channels, signal length, classes."""

    m: int
    C: int
    T: int
    k: int

    def __str__(self) -> str:
        return f"m={self.m} C={self.C} T={self.T} k={self.k}"


def synthetic_signals(case: Case, seed: int = 0):
    """Unit-norm (m, C, T) float32 signals: shifted class prototypes plus noise."""
    rng = np.random.default_rng(seed)
    y = np.arange(case.m) % case.k
    prototypes = rng.standard_normal((case.k, case.C, case.T))[y]
    shifts = rng.integers(0, case.T, case.m)
    positions = (np.arange(case.T)[None, :] - shifts[:, None]) % case.T
    Z = np.take_along_axis(
        prototypes, np.broadcast_to(positions[:, None, :], prototypes.shape), axis=-1
    )
    Z = Z + 0.5 * rng.standard_normal(Z.shape)
    Z /= np.linalg.norm(Z, axis=(1, 2), keepdims=True)
    return Z.astype(np.float32), y


def _scalars(dtype=jnp.float32):
    return [jnp.asarray(HYPER[name], dtype) for name in ("eps_sq", "eta", "lam")]


def spectral_path(Z, y, k):
    """The library's layer step on the rfft of ``Z`` (1D or 2D signals).

    Returns ``(run, decode)``: ``run()`` blocks on the step's outputs (operators,
    moved coefficients, rates); ``decode`` maps them to (m, C, ...) float64
    output signals.
    """
    signal_shape = tuple(Z.shape[2:])
    Z_hat = jax.block_until_ready(_rfft(jnp.asarray(Z)))
    Pi = jax.nn.one_hot(jnp.asarray(y), k, dtype=jnp.float32)
    scalars = _scalars()

    def run():
        return jax.block_until_ready(
            _construction_step(
                Z_hat, Pi, *scalars, use_labels=False, signal_shape=signal_shape
            )
        )

    def decode(out):
        return np.asarray(_irfft(out[1], signal_shape), np.float64)

    return run, decode


def shift_covariances(Z, memberships):
    """Dense covariances of all circular shifts, one per column of ``memberships``.

    Entry j is ``sum_i w_ij sum_s vec(roll(z_i, s)) vec(roll(z_i, s))^T``. Its
    block (a, b) is circulant: entry (t, u) is the circular cross-correlation
    ``K[a, b, (u - t) % T]`` of channels a and b summed over the samples, so
    the correlations are computed without an FFT in O(k m C² T²) and then laid
    out as full (CT)×(CT) matrices.

    Args:
      Z: (m, C, T) signals.
      memberships: (m, n) weights ``w``.

    Returns:
      (n, C*T, C*T) symmetric positive semi-definite matrices.
    """
    m, C, T = Z.shape
    lags = jnp.arange(T)
    ahead = Z[:, :, (lags[:, None] + lags[None, :]) % T]  # (m, C, lag, t)
    K = jnp.einsum("ij,iat,ibdt->jabd", memberships, Z, ahead)
    blocks = K[..., (lags[None, :] - lags[:, None]) % T]  # (n, a, b, t, u)
    return blocks.transpose(0, 1, 3, 2, 4).reshape(-1, C * T, C * T)


@jax.jit
def dense_layer_step(Z, Pi, eps_sq, eta, lam):
    """One layer with explicit block-circulant operators, in the signal domain.

    ``E = alpha inv(I + alpha/T Sigma)`` and ``C_j = alpha_j inv(I + alpha_j/T
    Sigma_j)`` with the shift covariances of :func:`shift_covariances`, then the
    update of a shift-invariant layer with norms over the whole (C, T) signal.
    E and the C_j are inverted in one batched call (a single factorization per
    compiled program). Cost O(k m C² T² + k (CT)³ + k m (CT)²).

    Returns:
      ``(E, C, Z_next)`` of shapes (CT, CT), (k, CT, CT) and (m, C, T).
    """
    m, C, T = Z.shape
    memberships = jnp.concatenate([jnp.ones((m, 1), Pi.dtype), Pi], axis=1)
    counts = memberships.sum(axis=0)
    alphas = (C / (jnp.maximum(counts, 1.0) * eps_sq))[:, None, None]

    Sigma = shift_covariances(Z, memberships)
    eye = jnp.eye(C * T, dtype=Z.dtype)
    operators = alphas * jnp.linalg.inv(eye + alphas / T * Sigma)
    E, C_ops = operators[0], operators[1:]

    gamma = counts[1:] / m
    z = Z.reshape(m, C * T)
    CZ = jnp.einsum("jxy,my->mjx", C_ops, z)
    norms = jnp.maximum(jnp.linalg.norm(CZ, axis=-1), 1e-8)
    pihat = jax.nn.softmax(jnp.where(gamma > 0, -lam * norms, -jnp.inf), axis=-1)
    z_next = z + eta * (z @ E.T - jnp.einsum("mj,mjx->mx", gamma * pihat, CZ))
    z_next /= jnp.maximum(jnp.linalg.norm(z_next, axis=-1, keepdims=True), 1e-8)
    return E, C_ops, z_next.reshape(m, C, T)


def dense_path(Z, y, k):
    """The dense JAX layer; ``(run, decode)`` as in :func:`spectral_path`."""
    Z = jnp.asarray(Z)
    Pi = jax.nn.one_hot(jnp.asarray(y), k, dtype=jnp.float32)
    scalars = _scalars()

    def run():
        return jax.block_until_ready(dense_layer_step(Z, Pi, *scalars))

    def decode(out):
        return np.asarray(out[-1], np.float64)

    return run, decode


def dense_bytes(case: Case) -> int:
    """Rough float32 working set of :func:`dense_layer_step`."""
    n = case.C * case.T
    shifted = case.m * case.C * case.T**2
    operators = 4 * (case.k + 1) * n * n  # covariances, shifted, inverse, scaled
    applied = 2 * (case.k + 1) * case.m * n
    return 4 * (shifted + operators + applied)


def numpy_layer(Z_hat, y, k, *, eps_sq, eta, lam):
    """The obvious NumPy port: every one of the T bins, explicit inverses.

    Args:
      Z_hat: (m, C, T) complex128 orthonormal FFT of the signals (all T bins).
      y: (m,) labels in [0, k).
      k: number of classes.
      eps_sq: distortion ``ε²``.
      eta: step size.
      lam: inverse temperature of ``pihat``.

    Returns:
      (m, C, T) FFT of the output signals.
    """
    m, C, T = Z_hat.shape
    eye = np.eye(C)
    members = [y == j for j in range(k)]
    counts = np.array([mask.sum() for mask in members])
    alpha = C / (m * eps_sq)
    EZ = np.empty_like(Z_hat)
    CZ = np.zeros((m, k, C, T), complex)
    for p in range(T):
        Zp = Z_hat[:, :, p]
        E_p = alpha * np.linalg.inv(eye + alpha * Zp.T @ Zp.conj())
        EZ[:, :, p] = Zp @ E_p.T
        for j, mask in enumerate(members):
            if counts[j] == 0:
                continue
            alpha_j = C / (counts[j] * eps_sq)
            Zj = Zp[mask]
            C_jp = alpha_j * np.linalg.inv(eye + alpha_j * Zj.T @ Zj.conj())
            CZ[:, j, :, p] = Zp @ C_jp.T

    gamma = counts / m
    norms = np.maximum(np.sqrt(np.sum(np.abs(CZ) ** 2, axis=(2, 3))), 1e-8)
    logits = np.where(gamma > 0, -lam * norms, -np.inf)
    pihat = np.exp(logits - logits.max(axis=1, keepdims=True))
    pihat /= pihat.sum(axis=1, keepdims=True)
    Z_next = Z_hat + eta * (EZ - np.einsum("mj,mjcp->mcp", gamma * pihat, CZ))
    scale = np.maximum(np.sqrt(np.sum(np.abs(Z_next) ** 2, axis=(1, 2))), 1e-8)
    return Z_next / scale[:, None, None]


def numpy_path(Z, y, k):
    """The float64 NumPy layer; ``(run, decode)`` as in :func:`spectral_path`."""
    Z_hat = np.fft.fft(Z.astype(np.float64), axis=-1, norm="ortho")

    def run():
        return numpy_layer(Z_hat, y, k, **HYPER)

    def decode(out):
        return np.fft.ifft(out, axis=-1, norm="ortho").real

    return run, decode


def dense_skip_reason(case: Case, previous) -> str | None:
    """Why the dense layer is not run at ``case``, or ``None`` to run it.

    ``previous`` is ``(T, seconds)`` of a warm dense call at the last smaller
    T, extrapolated as (CT)³.
    """
    needed = dense_bytes(case)
    if needed > DENSE_MEMORY_LIMIT:
        return f"needs about {needed / 2**30:.1f} GiB (limit 2 GiB)"
    if previous is not None:
        length, seconds = previous
        predicted = seconds * (case.T / length) ** 3
        if predicted > DENSE_TIME_LIMIT_S:
            return f"predicted {predicted:.0f} s per layer (limit 60 s)"
    return None


def check_case(case: Case, with_dense: bool, previous_dense, tolerance: float):
    """Run every path once at ``case`` (compiling it) and compare the outputs.

    Returns:
      ``(row, paths)``: a dict of maximum differences against the float64
      NumPy layer, and the ``(run, decode)`` pairs by name, ready to time.
    """
    Z, y = synthetic_signals(case)
    paths = {"spectral": spectral_path(Z, y, case.k), "numpy": numpy_path(Z, y, case.k)}
    row = {"case": case._asdict()}
    if with_dense:
        reason = dense_skip_reason(case, previous_dense)
        if reason is None:
            paths["dense"] = dense_path(Z, y, case.k)
        else:
            row["dense_skipped"] = reason

    outputs, first_call = {}, {}
    for name, (run, decode) in paths.items():
        start = time.perf_counter()
        outputs[name] = decode(run())
        first_call[name] = time.perf_counter() - start
    if "dense" in paths:
        # A warm call, to extrapolate the dense cost to the next, larger T.
        row["dense_warm_call_s"] = best_of(paths["dense"][0], 1)
    reference = outputs["numpy"]
    # How far the layer moves the features: the differences are small against it.
    row["max_abs_move"] = float(np.max(np.abs(reference - Z)))
    for name in sorted(paths.keys() - {"numpy"}):
        row[f"max_abs_diff_{name}_vs_numpy"] = float(
            np.max(np.abs(outputs[name] - reference))
        )
    row["first_call_s"] = first_call
    row["agree"] = all(
        value <= tolerance
        for key, value in row.items()
        if key.startswith("max_abs_diff")
    )
    return row, paths


def fit_exponent(sizes, seconds) -> float:
    """Least-squares slope of log(seconds) against log(sizes)."""
    return float(np.polyfit(np.log(sizes), np.log(seconds), 1)[0])


def run_correctness(cases, dense_cases, tolerance: float):
    """Check every case before any timing; exit non-zero on a disagreement."""
    rows, paths, previous_dense = [], {}, None
    for case in cases:
        row, paths[case] = check_case(
            case, case in dense_cases, previous_dense, tolerance
        )
        if "dense" in paths[case]:
            previous_dense = (case.T, row["dense_warm_call_s"])
        diffs = "  ".join(
            f"{key.removeprefix('max_abs_diff_')} {value:.1e}"
            for key, value in row.items()
            if key.startswith("max_abs_diff")
        )
        verdict = "ok" if row["agree"] else "DISAGREE"
        print(
            f"check {case}: {diffs}  (layer moves by {row['max_abs_move']:.1e}) "
            f"{verdict}"
        )
        rows.append(row)
        if not row["agree"]:
            raise SystemExit(
                f"layer outputs disagree beyond {tolerance:g} at {case}: {row}"
            )
    return rows, paths


def run_timings(paths, repeats):
    """Best-of-``repeats`` seconds of every checked path, by case and name."""
    return {
        case: {name: best_of(run, repeats) for name, (run, _) in by_name.items()}
        for case, by_name in paths.items()
    }


def _vm_hwm_kib() -> int | None:
    """High-water RSS of this process image from ``/proc`` (Linux), in KiB."""
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:
        return None
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return None


def memory_child(mode: str, m: int, C: int, size: int, k: int, repeats: int):
    """Body of a subprocess whose peak RSS is measured (its report goes to stdout).

    ``baseline`` imports JAX and the library and allocates the inputs;
    ``layer`` also constructs one shift-invariant layer on them, then times
    ``construct`` and the bare layer step (both warmed up).
    """
    X = jax.random.normal(jax.random.key(0), (m, C, size, size), jnp.float32)
    y = jnp.arange(m) % k
    jax.block_until_ready((X, y))
    result = {}
    if mode == "layer":

        def one_layer():
            return jax.block_until_ready(
                construct(X, y, num_classes=k, num_layers=1, invariant=True)
            )

        start = time.perf_counter()
        one_layer()
        result["first_call_s"] = time.perf_counter() - start
        result["construct_s"] = best_of(one_layer, repeats)
        run, _ = spectral_path(normalize(X), y, k)
        run()
        result["layer_step_s"] = best_of(run, repeats)
    result["vm_hwm_kib"] = _vm_hwm_kib()
    print(json.dumps(result))


# On Linux a new process inherits the peak RSS of the process that spawned it
# (ru_maxrss survives fork and exec), so a child of this already large process
# would report at least our own peak. A minimal launcher therefore starts each
# measured child and reads RUSAGE_CHILDREN itself, printing it last.
_LAUNCHER = (
    "import resource, subprocess, sys\n"
    "done = subprocess.run(sys.argv[1:])\n"
    "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"
    "sys.exit(done.returncode)\n"
)


def _peak_rss_of(command) -> tuple[dict, int]:
    """Run ``command`` through the launcher: its JSON report and peak RSS bytes."""
    done = subprocess.run(
        [sys.executable, "-c", _LAUNCHER, *command],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise SystemExit(f"memory subprocess failed:\n{done.stderr}")
    *_, report, peak_kib = done.stdout.strip().splitlines()
    return json.loads(report), int(peak_kib) * 1024  # ru_maxrss is in KiB


def xla_buffer_plan(m: int, C: int, size: int, k: int) -> dict | None:
    """XLA's static buffer sizes (MiB) for the 2D layer step, compiled, not run."""
    scalar = jax.ShapeDtypeStruct((), jnp.float32)
    compiled = _construction_step.lower(
        jax.ShapeDtypeStruct((m, C, num_bins((size, size))), jnp.complex64),
        jax.ShapeDtypeStruct((m, k), jnp.float32),
        scalar,
        scalar,
        scalar,
        use_labels=False,
        signal_shape=(size, size),
    ).compile()
    stats = compiled.memory_analysis()
    if stats is None:
        return None
    kinds = ("argument", "output", "temp")
    return {kind: getattr(stats, f"{kind}_size_in_bytes") / MIB for kind in kinds}


def measure_memory(m: int, C: int, size: int, k: int, repeats: int) -> dict:
    """Peak RSS of a subprocess running one 2D layer, and of a baseline one.

    The baseline subprocess imports JAX and the library and allocates the
    same inputs, so the difference is what the layer itself (its compilation
    included) adds. XLA's own plan for the step's buffers is added for
    comparison.
    """
    dims = ["--memory-m", str(m), "--memory-channels", str(C)]
    dims += ["--memory-classes", str(k), "--memory-size", str(size)]
    dims += ["--repeats", str(repeats)]
    script = [sys.executable, str(Path(__file__).resolve())]
    reports, peaks = {}, {}
    for mode in ("baseline", "layer"):
        reports[mode], peaks[mode] = _peak_rss_of(
            [*script, "--memory-child", mode, *dims]
        )

    layer = reports["layer"]
    return {
        "config": {"m": m, "C": C, "H": size, "W": size, "k": k},
        "baseline_peak_rss_mib": peaks["baseline"] / MIB,
        "layer_peak_rss_mib": peaks["layer"] / MIB,
        "layer_minus_baseline_mib": (peaks["layer"] - peaks["baseline"]) / MIB,
        "vm_hwm_mib": {
            mode: None if report["vm_hwm_kib"] is None else report["vm_hwm_kib"] / 1024
            for mode, report in reports.items()
        },
        "xla_layer_step_buffers_mib": xla_buffer_plan(m, C, size, k),
        "fits_4_gib": peaks["layer"] <= MEMORY_BUDGET,
        "first_call_s_including_compile": layer["first_call_s"],
        "construct_one_layer_s": layer["construct_s"],
        "layer_step_s": layer["layer_step_s"],
    }


def comparison_rows(dense_cases, checks, seconds) -> list[dict]:
    """One row per case of the three-way comparison, seconds by path."""
    skipped = {
        Case(**row["case"]): row["dense_skipped"]
        for row in checks
        if "dense_skipped" in row
    }
    rows = []
    for case in dense_cases:
        row = {"label": str(case), **case._asdict()}
        row.update({f"{name}_s": s for name, s in seconds[case].items()})
        if case in skipped:
            row["dense_skipped"] = skipped[case]
        rows.append(row)
    return rows


def scaling_fit(seconds, grid, axis: str) -> dict:
    """Spectral times along one axis (``"T"`` or ``"C"``) of ``grid`` and their fit."""
    times = [seconds[case]["spectral"] for case in grid]
    sizes = [getattr(case, axis) for case in grid]
    fixed = {name: value for name, value in grid[0]._asdict().items() if name != axis}
    return {
        "sizes": sizes,
        "fixed": fixed,
        "spectral_s": times,
        "exponent": fit_exponent(sizes, times),
    }


def blas_threads() -> dict:
    """Thread pools of the loaded BLAS libraries and the variables that size them.

    jaxlib runs its CPU Cholesky and triangular solves through SciPy's
    OpenBLAS, so these pools matter to every path timed here.
    """
    from threadpoolctl import threadpool_info

    names = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "XLA_FLAGS")
    return {
        "pools": [
            {"library": Path(pool["filepath"]).name, "num_threads": pool["num_threads"]}
            for pool in threadpool_info()
        ],
        "environment_variables": {name: os.environ.get(name) for name in names},
    }


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny grid (seconds)")
    parser.add_argument("--m", type=int, default=None, help="samples (500)")
    parser.add_argument("--channels", type=int, default=None, help="C (8)")
    parser.add_argument("--classes", type=int, default=None, help="k (4)")
    parser.add_argument("--dense-lengths", type=int, nargs="+", default=None)
    parser.add_argument("--scaling-lengths", type=int, nargs="+", default=None)
    parser.add_argument("--scaling-channels", type=int, nargs="+", default=None)
    parser.add_argument(
        "--scaling-length", type=int, default=None, help="T of the C grid (64)"
    )
    parser.add_argument("--memory-m", type=int, default=None, help="2D m (100)")
    parser.add_argument("--memory-channels", type=int, default=None, help="2D C (75)")
    parser.add_argument("--memory-size", type=int, default=None, help="2D H = W (28)")
    parser.add_argument("--memory-classes", type=int, default=None, help="2D k (10)")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument(
        "--tolerance",
        type=float,
        default=TOLERANCE,
        help="largest max abs output difference accepted (1e-4)",
    )
    parser.add_argument("--out", default=None)
    parser.add_argument(
        "--memory-child", choices=("baseline", "layer"), help=argparse.SUPPRESS
    )
    args = parser.parse_args(argv)

    quick = {
        "m": 24,
        "channels": 2,
        "classes": 3,
        "dense_lengths": [8, 16],
        "scaling_lengths": [8, 16, 32],
        "scaling_channels": [2, 4],
        "scaling_length": 16,
        "memory_m": 12,
        "memory_channels": 3,
        "memory_size": 8,
        "memory_classes": 3,
        "repeats": 3,
    }
    full = {
        "m": 500,
        "channels": 8,
        "classes": 4,
        "dense_lengths": [16, 32, 64, 128],
        "scaling_lengths": [16, 32, 64, 128, 256],
        "scaling_channels": [4, 8, 16, 32],
        "scaling_length": 64,
        "memory_m": 100,
        "memory_channels": 75,
        "memory_size": 28,
        "memory_classes": 10,
        "repeats": 5,
    }
    for name, value in (quick if args.quick else full).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.m < args.classes or args.memory_m < args.memory_classes:
        parser.error("every class needs a sample: m must be >= k")
    return args


def summary(comparison, scaling, memory) -> str:
    """The readable table printed at the end of a run."""
    lines = ["", "Layer step (build + apply), ms per layer", ""]
    lines.append(
        f"{'case':28s} {'spectral':>9s} {'dense':>10s} {'numpy':>9s} "
        f"{'dense/sp':>9s} {'numpy/sp':>9s}"
    )
    for row in comparison:
        dense = row.get("dense_s")
        lines.append(
            f"{row['label']:28s} {row['spectral_s'] * 1e3:9.2f} "
            + (f"{dense * 1e3:10.2f} " if dense else f"{'skipped':>10s} ")
            + f"{row['numpy_s'] * 1e3:9.2f} "
            + (f"{dense / row['spectral_s']:8.1f}x " if dense else f"{'-':>9s} ")
            + f"{row['numpy_s'] / row['spectral_s']:8.1f}x"
        )
        if "dense_skipped" in row:
            lines.append(f"    dense skipped: {row['dense_skipped']}")
    for axis, fit in scaling.items():
        points = "  ".join(
            f"{axis}={size}: {seconds * 1e3:.2f}"
            for size, seconds in zip(fit["sizes"], fit["spectral_s"], strict=True)
        )
        fixed = ", ".join(f"{key}={value}" for key, value in fit["fixed"].items())
        lines += ["", f"spectral time vs {axis} ({fixed}), ms: {points}"]
        lines.append(f"    fitted exponent: {fit['exponent']:.2f}")
    cfg = memory["config"]
    lines += [
        "",
        f"2D layer m={cfg['m']} C={cfg['C']} {cfg['H']}x{cfg['W']} k={cfg['k']}: "
        f"peak RSS {memory['layer_peak_rss_mib']:.0f} MiB "
        f"(baseline {memory['baseline_peak_rss_mib']:.0f} MiB, "
        f"+{memory['layer_minus_baseline_mib']:.0f} MiB), "
        f"fits in 4 GiB: {'yes' if memory['fits_4_gib'] else 'NO'}",
        f"    construct one layer {memory['construct_one_layer_s'] * 1e3:.1f} ms, "
        f"layer step {memory['layer_step_s'] * 1e3:.1f} ms, "
        f"first call (compile) {memory['first_call_s_including_compile']:.1f} s",
    ]
    plan = memory["xla_layer_step_buffers_mib"]
    if plan is not None:
        lines.append(
            "    XLA buffer plan of the step, MiB: "
            + ", ".join(f"{kind} {size:.1f}" for kind, size in plan.items())
        )
    return "\n".join(lines)


def main(argv=None):
    args = parse_args(argv)
    if args.memory_child:
        memory_child(
            args.memory_child,
            args.memory_m,
            args.memory_channels,
            args.memory_size,
            args.memory_classes,
            args.repeats,
        )
        return

    load_start = os.getloadavg()
    m, C, k = args.m, args.channels, args.classes
    dense_cases = [Case(m, C, T, k) for T in args.dense_lengths]
    length_cases = [Case(m, C, T, k) for T in args.scaling_lengths]
    channel_cases = [Case(m, c, args.scaling_length, k) for c in args.scaling_channels]
    cases = list(dict.fromkeys(dense_cases + length_cases + channel_cases))

    phases, clock = {}, time.perf_counter()
    checks, paths = run_correctness(cases, set(dense_cases), args.tolerance)
    phases["checks"], clock = time.perf_counter() - clock, time.perf_counter()
    seconds = run_timings(paths, args.repeats)
    phases["timings"], clock = time.perf_counter() - clock, time.perf_counter()
    comparison = comparison_rows(dense_cases, checks, seconds)
    scaling = {
        "T": scaling_fit(seconds, length_cases, "T"),
        "C": scaling_fit(seconds, channel_cases, "C"),
    }
    memory = measure_memory(
        args.memory_m,
        args.memory_channels,
        args.memory_size,
        args.memory_classes,
        min(args.repeats, 3),  # one large case: a few repeats suffice
    )
    phases["memory"] = time.perf_counter() - clock

    config = {
        name: value
        for name, value in vars(args).items()
        if name not in ("out", "memory_child")
    }
    payload = {
        "benchmark": "shift-invariant layer: spectral vs dense vs NumPy",
        "config": {
            **config,
            "hyperparameters": HYPER,
            "dense_limits": {
                "bytes": DENSE_MEMORY_LIMIT,
                "seconds": DENSE_TIME_LIMIT_S,
            },
            "dtypes": {"spectral": "complex64", "dense": "float32", "numpy": "float64"},
        },
        "environment": {
            **environment(),
            "cpu_count": os.cpu_count(),
            "blas": blas_threads(),
            "load_average_1_5_15_min": {"start": load_start, "end": os.getloadavg()},
        },
        "wall_seconds_by_phase": phases,
        "correctness": checks,
        "comparison": comparison,
        "scaling": scaling,
        "memory_2d": memory,
    }
    print(summary(comparison, scaling, memory))
    print("wall time: " + ", ".join(f"{key} {s:.0f} s" for key, s in phases.items()))
    load = payload["environment"]["load_average_1_5_15_min"]
    print(
        f"load average (1 min) at start {load['start'][0]:.2f}, at end "
        f"{load['end'][0]:.2f} on {os.cpu_count()} CPUs: timings are noisy when "
        "other processes share the machine"
    )
    path = write_json(
        "bench_spectral.json", payload, out=None if args.out is None else Path(args.out)
    )
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
