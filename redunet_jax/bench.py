"""Benchmark of shift-invariant layers, behind the ``redunet bench`` command.

One layer step (build the operators from unit-norm training signals, then move
the signals through the layer) is run four ways on the same data:

- ``rfft``: the library's construction step, on the F = T // 2 + 1 stored
  ``rfft`` bins in the packed real layout (what ``construct`` runs);
- ``fft``: the same closed forms in plain complex JAX on all T bins of the
  full FFT (per-class weighted covariances, one batched Cholesky, einsum
  application);
- ``dense``: explicit (CT)×(CT) block-circulant operators in JAX, while they
  fit in memory and time;
- ``numpy``: the obvious NumPy port, a Python loop over the T bins of the full
  complex128 FFT with ``numpy.linalg.inv`` for E and every C_j, laid out
  frequency-major so that every product is contiguous.

The outputs are compared in the signal domain before anything is timed, and
the command fails if they disagree. Every path is warmed up (compiled) before
timing; times are the best of several calls, each ending in
``block_until_ready``. The same run measures the machine's float32
matrix-multiply throughput, the fraction of it that each phase of the rfft
layer reaches (the whole layer step is timed in alternation with the matrix
product, so that both see the same machine), the compile time of the layer
step, and the peak memory of a 2D construction in a subprocess.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

HYPER = {"eps_sq": 0.1, "eta": 0.5, "lam": 500.0}
MIB = 2**20

#: Grid sizes of a full and of a quick run.
FULL = {
    "m": 1000,
    "channels": 16,
    "classes": 10,
    "lengths": [32, 64, 128, 256, 512],
    "channel_grid": [4, 8, 16, 32, 64],
    "channel_length": 64,
    "dense_max_gib": 12.0,
    "path_limit_s": 30.0,
    "memory": {"m": 1000, "C": 75, "size": 28, "k": 10, "layers": [1, 25]},
    "repeats": 3,
}
QUICK = {
    "m": 40,
    "channels": 3,
    "classes": 4,
    "lengths": [8, 16, 32],
    "channel_grid": [2, 4],
    "channel_length": 16,
    "dense_max_gib": 0.5,
    "path_limit_s": 30.0,
    "memory": {"m": 12, "C": 3, "size": 8, "k": 3, "layers": [1, 3]},
    "repeats": 2,
}
PATHS = ("rfft", "fft", "dense", "numpy")

#: Alternating calls of the headline layer step and of the matmul (at least).
THROUGHPUT_ROUNDS = 20


class Case(NamedTuple):
    """Sizes of one 1D case: samples, channels, signal length, classes."""

    m: int
    C: int
    T: int
    k: int

    def __str__(self) -> str:
        return f"m={self.m} C={self.C} T={self.T} k={self.k}"


def best_of(fn: Callable[[], object], repeats: int = 3) -> float:
    """Best wall time of ``fn()`` over ``repeats`` calls; ``fn`` must block."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def synthetic_signals(case: Case, seed: int = 0):
    """Unit-norm (m, C, T) float32 signals: shifted class prototypes plus noise."""
    rng = np.random.default_rng(seed)
    y = np.arange(case.m) % case.k
    prototypes = rng.standard_normal((case.k, case.C, case.T))[y]
    shifts = rng.integers(0, case.T, case.m)
    positions = (np.arange(case.T)[None, :] - shifts[:, None]) % case.T
    index = np.broadcast_to(positions[:, None, :], prototypes.shape)
    Z = np.take_along_axis(prototypes, index, axis=-1)
    Z = Z + 0.5 * rng.standard_normal(Z.shape)
    Z /= np.linalg.norm(Z, axis=(1, 2), keepdims=True)
    return Z.astype(np.float32), y


def _scalars():
    return [jnp.asarray(HYPER[name], jnp.float32) for name in ("eps_sq", "eta", "lam")]


# ---------------------------------------------------------------------------
# The four paths. Each returns ``(run, decode)``: ``run()`` computes and blocks;
# ``decode`` maps its result to (m, C, T) float64 output signals.


def rfft_path(Z, y, k):
    """The library's construction step on the packed ``rfft`` bins.

    Construction packs the features (and computes their class Gram matrices)
    once and then runs this step per layer, each on the previous layer's
    output (whose buffers it reuses), so the timed calls do the same: the
    first call moves the packed inputs, every later call the output of the
    call before. The blocks are moved in as many concurrent parts as
    construction uses on this machine (``_concurrent.concurrent_parts``).
    """
    from redunet_jax._concurrent import PackedConstruction
    from redunet_jax._fourier import _irfft, _rfft

    signal_shape = tuple(Z.shape[2:])
    Pi = jax.nn.one_hot(jnp.asarray(y), k, dtype=jnp.float32)
    step = PackedConstruction(
        y, k, signal_shape=signal_shape, use_labels=False, channels=Z.shape[1]
    )
    scalars = _scalars()
    features = [step.to_carry(_rfft(jnp.asarray(Z)))]

    def run():
        out = step(features.pop(), Pi, *scalars)
        features.append(out[1])
        return jax.block_until_ready(out)

    def decode(out):
        Z_hat = step.from_carry(out[1])
        return np.asarray(_irfft(Z_hat, signal_shape), np.float64)

    return run, decode


@jax.jit
def fft_layer_step(Z_hat, Pi, eps_sq, eta, lam):
    """Plain complex layer on all T bins of the full FFT (every bin weight 1)."""
    from redunet_jax._circulant import _build_circulant_with_rates, _move_circulant

    T = Z_hat.shape[-1]
    weights = jnp.ones(T, jnp.float32)
    layer, _ = _build_circulant_with_rates(Z_hat, Pi, eps_sq, weights, T)
    return _move_circulant(layer, Z_hat, eta, lam, weights)[0]


def fft_path(Z, y, k):
    """Plain complex JAX on the full FFT; ``(run, decode)`` as in :func:`rfft_path`."""
    Z_hat = jax.block_until_ready(jnp.fft.fft(jnp.asarray(Z), axis=-1, norm="ortho"))
    Pi = jax.nn.one_hot(jnp.asarray(y), k, dtype=jnp.float32)
    scalars = _scalars()

    def run():
        return jax.block_until_ready(fft_layer_step(Z_hat, Pi, *scalars))

    def decode(out):
        return np.fft.ifft(np.asarray(out, np.complex128), axis=-1, norm="ortho").real

    return run, decode


def shift_covariances(Z, memberships):
    """Dense covariances of all circular shifts, one per column of ``memberships``.

    Block (a, b) of entry j is circulant: entry (t, u) is the circular
    cross-correlation ``K[a, b, (u - t) % T]`` of channels a and b, weighted by
    ``memberships[:, j]`` and summed over samples. Computed without an FFT in
    O(k m C² T²), then laid out as (CT)×(CT) matrices.

    Args:
      Z: (m, C, T) signals.
      memberships: (m, n) weights.

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
    Sigma_j)``, inverted in one batched call, then the shift-invariant update
    with norms over the whole (C, T) signal. Cost O(k (CT)³ + k m (CT)²).
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
    return z_next.reshape(m, C, T)


def dense_bytes(case: Case) -> int:
    """Rough float32 working set of :func:`dense_layer_step`."""
    n = case.C * case.T
    shifted = case.m * case.C * case.T**2
    operators = 4 * (case.k + 1) * n * n
    applied = 2 * (case.k + 1) * case.m * n
    return 4 * (shifted + operators + applied)


def dense_path(Z, y, k):
    """Dense JAX; ``(run, decode)`` as in :func:`rfft_path`."""
    Z = jnp.asarray(Z)
    Pi = jax.nn.one_hot(jnp.asarray(y), k, dtype=jnp.float32)
    scalars = _scalars()

    def run():
        return jax.block_until_ready(dense_layer_step(Z, Pi, *scalars))

    def decode(out):
        return np.asarray(out, np.float64)

    return run, decode


def numpy_layer(Z_hat, y, k, *, eps_sq, eta, lam):
    """The obvious NumPy port: a loop over all T bins with explicit inverses.

    Args:
      Z_hat: (m, C, T) complex128 orthonormal FFT of the signals.
      y: (m,) labels in [0, k).
      k: number of classes.
      eps_sq: distortion.
      eta: step size.
      lam: inverse temperature of ``pihat``.

    Returns:
      (m, C, T) FFT of the output signals.
    """
    m, C, T = Z_hat.shape
    Zf = np.ascontiguousarray(Z_hat.transpose(2, 0, 1))  # (T, m, C), rows z^T
    members = [np.flatnonzero(y == j) for j in range(k)]
    counts = np.array([idx.size for idx in members])
    eye = np.eye(C)
    alpha = C / (m * eps_sq)

    EZ = np.empty_like(Zf)
    CZ = np.zeros((k, T, m, C), complex)
    for p in range(T):
        Zp = Zf[p]
        E_p = alpha * np.linalg.inv(eye + alpha * Zp.T @ Zp.conj())
        EZ[p] = Zp @ E_p.T
        for j, idx in enumerate(members):
            if idx.size == 0:
                continue
            alpha_j = C / (idx.size * eps_sq)
            Zj = Zp[idx]
            C_jp = alpha_j * np.linalg.inv(eye + alpha_j * Zj.T @ Zj.conj())
            CZ[j, p] = Zp @ C_jp.T

    gamma = counts / m
    norms = np.sqrt(np.einsum("jpmc,jpmc->mj", CZ, CZ.conj()).real)
    logits = np.where(gamma > 0, -lam * np.maximum(norms, 1e-8), -np.inf)
    pihat = np.exp(logits - logits.max(axis=1, keepdims=True))
    pihat /= pihat.sum(axis=1, keepdims=True)
    moved = Zf + eta * (EZ - np.einsum("mj,jpmc->pmc", gamma * pihat, CZ))
    scale = np.sqrt(np.einsum("pmc,pmc->m", moved, moved.conj()).real)
    return (moved / np.maximum(scale, 1e-8)[None, :, None]).transpose(1, 2, 0)


def numpy_path(Z, y, k):
    """The float64 NumPy loop; ``(run, decode)`` as in :func:`rfft_path`."""
    Z_hat = np.fft.fft(Z.astype(np.float64), axis=-1, norm="ortho")

    def run():
        return numpy_layer(Z_hat, y, k, **HYPER)

    def decode(out):
        return np.fft.ifft(out, axis=-1, norm="ortho").real

    return run, decode


def _cost(name: str, case: Case) -> float:
    """Relative cost model of a path, to extrapolate its time between cases."""
    if name == "dense":
        return (
            case.k * (case.C * case.T) ** 3 + case.m * case.k * (case.C * case.T) ** 2
        )
    return case.k * case.T * case.C**2 * (case.m + case.C)


def skip_reason(
    name: str, case: Case, *, max_bytes: float, max_seconds: float, previous
) -> str | None:
    """Why the ``dense`` or ``numpy`` path is not run at ``case`` (else ``None``).

    ``previous`` is ``(case, seconds)`` of the last timed call of that path;
    its time is extrapolated with the path's cost model.
    """
    if name == "dense" and dense_bytes(case) > max_bytes:
        return (
            f"needs about {dense_bytes(case) / 2**30:.1f} GiB "
            f"(limit {max_bytes / 2**30:.1f} GiB)"
        )
    if previous is not None:
        before, seconds = previous
        predicted = seconds * _cost(name, case) / _cost(name, before)
        if predicted > max_seconds:
            return f"predicted {predicted:.0f} s per call (limit {max_seconds:g} s)"
    return None


# ---------------------------------------------------------------------------
# Throughput: the machine, and each phase of the rfft layer.


def matmul_call(n: int = 2048):
    """A blocking float32 n×n matrix product (compiled) and its flops."""
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    product = jax.jit(lambda x: x @ x)
    jax.block_until_ready(product(a))
    return (lambda: jax.block_until_ready(product(a))), 2.0 * n**3


def interleaved(calls: dict, rounds: int) -> dict:
    """Wall times of several blocking calls, taken in turn, ``rounds`` each.

    Alternating the calls exposes them to the same machine state (other
    tenants, clock speed), so ratios of their times drift much less than
    ratios of times taken minutes apart.

    Returns:
      ``{name: [seconds per round]}``.
    """
    times: dict = {name: [] for name in calls}
    for _ in range(rounds):
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            times[name].append(time.perf_counter() - start)
    return times


def batched_complex_gflops(F: int, C: int, m: int, repeats: int = 3) -> float:
    """Throughput of (F, C, C) @ (F, C, m) complex64 products, 8 flops per MAC."""
    key = jax.random.key(1)
    parts = jax.random.normal(key, (2, F, C, C + m), jnp.float32)
    x = jax.lax.complex(parts[0], parts[1])
    A, B = x[..., :C], x[..., C:]
    product = jax.jit(lambda a, b: a @ b)
    jax.block_until_ready(product(A, B))
    seconds = best_of(lambda: jax.block_until_ready(product(A, B)), repeats)
    return 8 * F * C * C * m / seconds / 1e9


def layer_flops(m: int, C: int, F: int, k: int) -> dict:
    """Useful real flops of one rfft layer by phase, 8 per complex multiply-add.

    Covariances: one Gram matrix per bin over the m samples (the classes
    partition them). Factorization: Cholesky (C³/3) and the solve for the
    operator (C³) of the k + 1 stacks. Application: E and the k C_j applied
    to every sample. Padding samples are not counted.
    """
    complex_macs = {
        "covariances": m * C * C * F,
        "factorization": (k + 1) * F * (C**3 / 3 + C**3),
        "application": (k + 1) * m * C * C * F,
    }
    return {phase: 8.0 * macs for phase, macs in complex_macs.items()}


def phase_seconds(Z, y, k, repeats: int) -> dict:
    """Seconds of the three phases of the rfft layer on packed features.

    Each phase is compiled on its own.
    """
    from redunet_jax._circulant import _layer_from_covariances
    from redunet_jax._fourier import _bin_weights, _rfft
    from redunet_jax._packed import pack, packed_covariances, packed_move, plan_blocks

    T = Z.shape[-1]
    Z_hat = jax.block_until_ready(_rfft(jnp.asarray(Z)))
    blocks = plan_blocks(np.asarray(y), k)
    order, _, block_class = (jnp.asarray(a) for a in blocks[:3])
    weights = jnp.asarray(_bin_weights((T,)), jnp.float32)
    m_j = jnp.asarray(np.bincount(y, minlength=k), jnp.float32)
    eps_sq, eta, lam = _scalars()

    covariances = jax.jit(
        lambda Yb: packed_covariances(Yb, block_class, k, groups=blocks.groups)
    )
    factor = jax.jit(
        lambda S: _layer_from_covariances(S, m_j, Z.shape[0], eps_sq, weights, T)
    )

    def apply(layer, Yb):
        return packed_move(
            layer.E_hat, layer.C_hat, layer.gamma, Yb, weights, eta, lam
        )[0]

    apply = jax.jit(apply)
    Yb = jax.block_until_ready(pack(Z_hat, order, blocks.block))
    S = jax.block_until_ready(covariances(Yb))
    layer = jax.block_until_ready(factor(S)[0])
    jax.block_until_ready(apply(layer, Yb))
    return {
        "covariances": best_of(lambda: jax.block_until_ready(covariances(Yb)), repeats),
        "factorization": best_of(lambda: jax.block_until_ready(factor(S)), repeats),
        "application": best_of(
            lambda: jax.block_until_ready(apply(layer, Yb)), repeats
        ),
    }


def class_covariance_cost(Z, y, k, repeats: int) -> dict:
    """Seconds of the k class covariances against one covariance of all samples.

    Both from the same packed blocks: the class sums (what a layer computes)
    and one Gram matrix per bin over every sample. The classes partition the
    samples, so the ratio should be close to 1, not k.
    """
    from redunet_jax._fourier import _rfft
    from redunet_jax._packed import class_grams, pack, plan_blocks

    blocks = plan_blocks(np.asarray(y), k)
    Yb = jax.block_until_ready(
        pack(_rfft(jnp.asarray(Z)), jnp.asarray(blocks.order), blocks.block)
    )
    block_class = jnp.asarray(blocks.block_class)
    per_class = jax.jit(lambda Y: class_grams(Y, block_class, k, groups=blocks.groups))
    one = jax.jit(lambda Y: jnp.einsum("npia,npib->pab", Y, Y))
    jax.block_until_ready((per_class(Yb), one(Yb)))
    classes_s = best_of(lambda: jax.block_until_ready(per_class(Yb)), repeats)
    full_s = best_of(lambda: jax.block_until_ready(one(Yb)), repeats)
    return {
        "class_covariances_s": classes_s,
        "one_covariance_s": full_s,
        "ratio": classes_s / full_s,
    }


def compile_report(Z, y, k, layer_counts=(2, 6)) -> dict:
    """Compile time of the layer step, and compiled steps per network depth."""
    from redunet_jax import construct
    from redunet_jax._concurrent import clear_compiled as clear
    from redunet_jax._concurrent import compiled_sweeps as size

    clear()
    start = time.perf_counter()
    construct(Z, y, num_classes=k, num_layers=1, invariant=True)
    first = time.perf_counter() - start
    start = time.perf_counter()
    construct(Z, y, num_classes=k, num_layers=1, invariant=True)
    warm = time.perf_counter() - start

    compiled = {}
    for layers in layer_counts:
        clear()
        construct(Z, y, num_classes=k, num_layers=layers, invariant=True)
        compiled[str(layers)] = size()
    return {
        "first_construct_s": first,
        "warm_construct_s": warm,
        "compile_s": first - warm,
        "compiled_steps_by_num_layers": compiled,
    }


# ---------------------------------------------------------------------------
# Peak memory of a 2D construction, in subprocesses.

_LAUNCHER = (
    "import resource, subprocess, sys\n"
    "done = subprocess.run(sys.argv[1:])\n"
    "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"
    "sys.exit(done.returncode)\n"
)


def memory_child(m: int, C: int, size: int, k: int, layers: int) -> None:
    """Body of a measured subprocess: construct ``layers`` 2D layers (0: inputs only).

    Prints one JSON line: seconds and the bytes of the stored network.
    """
    from redunet_jax import construct

    X = jax.random.normal(jax.random.key(0), (m, C, size, size), jnp.float32)
    y = np.arange(m) % k
    jax.block_until_ready(X)
    report: dict = {"layers": layers}
    if layers:
        start = time.perf_counter()
        net, _ = construct(X, y, num_classes=k, num_layers=layers, invariant=True)
        jax.block_until_ready(net.layers)
        report["seconds"] = time.perf_counter() - start
        report["network_bytes"] = sum(leaf.nbytes for leaf in jax.tree.leaves(net))
    stats = jax.devices()[0].memory_stats() or {}
    if "peak_bytes_in_use" in stats:  # accelerators report their own peak
        report["device_peak_bytes"] = stats["peak_bytes_in_use"]
    sys.stdout.write(json.dumps(report) + "\n")


def _peak_rss(m: int, C: int, size: int, k: int, layers: int) -> tuple[dict, int]:
    """Run :func:`memory_child` in a fresh process: its report and peak RSS bytes.

    A launcher process reads RUSAGE_CHILDREN: a child of this (already large)
    process would otherwise inherit our peak.
    """
    args = [str(v) for v in (m, C, size, k, layers)]
    child = (
        "import sys; from redunet_jax.bench import memory_child; "
        "memory_child(*map(int, sys.argv[1:]))"
    )
    done = subprocess.run(
        [sys.executable, "-c", _LAUNCHER, sys.executable, "-c", child, *args],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"memory subprocess failed: {done.stderr.strip()[-500:]}")
    *_, report, peak_kib = done.stdout.strip().splitlines()
    return json.loads(report), int(peak_kib) * 1024


def measure_memory(m: int, C: int, size: int, k: int, layers) -> dict:
    """Peak RSS of 2D constructions of each depth in ``layers``, and a baseline."""
    baseline, base_peak = _peak_rss(m, C, size, k, 0)
    rows = []
    for depth in layers:
        report, peak = _peak_rss(m, C, size, k, depth)
        rows.append(
            {
                "num_layers": depth,
                "peak_rss_mib": peak / MIB,
                "above_baseline_mib": (peak - base_peak) / MIB,
                "network_mib": report["network_bytes"] / MIB,
                "construct_s": report["seconds"],
                "device_peak_mib": report.get("device_peak_bytes", 0) / MIB or None,
            }
        )
    return {
        "config": {"m": m, "C": C, "H": size, "W": size, "k": k},
        "baseline_peak_rss_mib": base_peak / MIB,
        "constructions": rows,
    }


# ---------------------------------------------------------------------------
# The run.


def fit_exponent(sizes, seconds) -> float:
    """Least-squares slope of log(seconds) against log(sizes)."""
    return float(np.polyfit(np.log(sizes), np.log(seconds), 1)[0])


def check_case(case: Case, skips: dict, tolerance: float):
    """Run every path once (compiling it) and compare the outputs.

    The reference is the float64 NumPy loop, or the full-FFT JAX path where
    the NumPy loop is skipped (``skips`` maps path names to reasons).

    Returns:
      ``(row, paths)``: differences and first-call seconds, and the
      ``(run, decode)`` pairs by name, ready to time.
    """
    Z, y = synthetic_signals(case)
    makers = {"rfft": rfft_path, "fft": fft_path, "dense": dense_path}
    makers["numpy"] = numpy_path
    paths = {
        name: make(Z, y, case.k) for name, make in makers.items() if name not in skips
    }
    row: dict = {"case": case._asdict(), "skipped": skips}

    outputs, first_call = {}, {}
    for name, (run, decode) in paths.items():
        start = time.perf_counter()
        outputs[name] = decode(run())
        first_call[name] = time.perf_counter() - start
    row["reference"] = "numpy" if "numpy" in outputs else "fft"
    reference = outputs[row["reference"]]
    row["max_abs_move"] = float(np.max(np.abs(reference - Z)))
    row["max_abs_diff"] = {
        name: float(np.max(np.abs(out - reference)))
        for name, out in outputs.items()
        if name != row["reference"]
    }
    row["first_call_s"] = first_call
    row["agree"] = all(d <= tolerance for d in row["max_abs_diff"].values())
    return row, paths


def environment() -> dict:
    """Versions, device and machine load."""
    return {
        "redunet_jax": version("redunet_jax"),
        "jax": jax.__version__,
        "jaxlib": version("jaxlib"),
        "numpy": np.__version__,
        "backend": jax.default_backend(),
        "devices": [str(d) for d in jax.devices()],
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
    }


def _stdout(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def run_benchmark(config: dict, *, tolerance: float = 1e-4, log=_stdout) -> dict:
    """Run the grid of ``config`` (see ``FULL``); return the JSON payload.

    Raises:
      RuntimeError: if the paths disagree beyond ``tolerance`` at any case.
    """
    from redunet_jax._linalg import single_threaded_lapack

    m, C, k = config["m"], config["channels"], config["classes"]
    T_cases = [Case(m, C, T, k) for T in config["lengths"]]
    C_cases = [Case(m, c, config["channel_length"], k) for c in config["channel_grid"]]
    cases = list(dict.fromkeys(T_cases + C_cases))
    dense_max = config["dense_max_gib"] * 2**30
    repeats = config["repeats"]
    load_start = os.getloadavg()
    clock = time.perf_counter()

    checks, seconds, previous = [], {}, {}
    with single_threaded_lapack():
        for case in sorted(cases, key=lambda c: (c.C, c.T)):
            skips = {}
            for name in ("dense", "numpy"):
                reason = skip_reason(
                    name,
                    case,
                    max_bytes=dense_max,
                    max_seconds=config["path_limit_s"],
                    previous=previous.get((name, case.C)),
                )
                if reason is not None:
                    skips[name] = reason
            row, paths = check_case(case, skips, tolerance)
            diffs = "  ".join(
                f"{name} {d:.1e}" for name, d in row["max_abs_diff"].items()
            )
            log(f"check {case}: max |diff| vs {row['reference']}: {diffs}")
            checks.append(row)
            if not row["agree"]:
                raise RuntimeError(
                    f"layer outputs disagree beyond {tolerance:g} at {case}: "
                    f"{row['max_abs_diff']} against {row['reference']}"
                )
            seconds[case] = {
                name: best_of(run, repeats) for name, (run, _) in paths.items()
            }
            for name in ("dense", "numpy"):
                if name in seconds[case]:
                    previous[(name, case.C)] = (case, seconds[case][name])
            log(
                f"time  {case}: "
                + "  ".join(f"{n} {s * 1e3:.1f} ms" for n, s in seconds[case].items())
                + "".join(f"  ({n} skipped: {r})" for n, r in skips.items())
            )

        headline = max(T_cases, key=lambda c: (c.T <= 256, c.T))
        Z, y = synthetic_signals(headline)
        phases = phase_seconds(Z, y, k, repeats)
        class_cost = class_covariance_cost(Z, y, k, repeats)
        compile_info = compile_report(Z, y, k)
        # The layer's share of the machine: the headline step and the matmul
        # timed in alternation, so that both see the same machine.
        layer_call, _ = rfft_path(Z, y, k)
        layer_call()
        matmul_run, matmul_flops = matmul_call()
        rounds = max(THROUGHPUT_ROUNDS, repeats)
        paired = interleaved({"layer": layer_call, "matmul": matmul_run}, rounds)
    F = headline.T // 2 + 1
    flops = layer_flops(m, C, F, k)
    layer_flop = sum(flops.values())
    ratios = [
        layer_flop / layer_s / (matmul_flops / matmul_s)
        for layer_s, matmul_s in zip(paired["layer"], paired["matmul"], strict=True)
    ]
    step_s = min(paired["layer"])
    matmul = matmul_flops / min(paired["matmul"]) / 1e9
    throughput = {
        "matmul_2048_float32_gflops": matmul,
        "rounds": rounds,
        "batched_complex64_gflops": batched_complex_gflops(F, C, m),
        "phases": {
            phase: {
                "seconds": phase_s,
                "gflop": flops[phase] / 1e9,
                "gflops": flops[phase] / phase_s / 1e9,
                "fraction_of_matmul": flops[phase] / phase_s / 1e9 / matmul,
            }
            for phase, phase_s in phases.items()
        },
    }
    throughput["class_covariances"] = class_cost
    throughput["layer"] = {
        "case": headline._asdict(),
        "seconds": step_s,
        "median_seconds": float(np.median(paired["layer"])),
        "gflop": layer_flop / 1e9,
        "gflops": layer_flop / step_s / 1e9,
        "fraction_of_matmul": layer_flop / step_s / 1e9 / matmul,
        "median_fraction_of_matmul": float(np.median(ratios)),
    }
    log(
        f"layer at {headline}: {throughput['layer']['gflops']:.1f} GFLOP/s = "
        f"{throughput['layer']['fraction_of_matmul']:.0%} of the {matmul:.0f} GFLOP/s "
        "float32 matmul"
    )

    memory = None
    if config.get("memory"):
        mem = config["memory"]
        log(f"memory: 2D constructions {mem} in subprocesses")
        memory = measure_memory(
            mem["m"], mem["C"], mem["size"], mem["k"], mem["layers"]
        )

    comparison = []
    dense_cases = [c for c in T_cases if "dense" in seconds[c]]
    largest_dense = max(dense_cases, key=lambda c: c.T) if dense_cases else None
    for case in T_cases:
        row = {"label": str(case), **case._asdict()}
        row.update({f"{name}_s": s for name, s in seconds[case].items()})
        rfft_s = seconds[case]["rfft"]
        row["speedup"] = {
            n: s / rfft_s for n, s in seconds[case].items() if n != "rfft"
        }
        comparison.append(row)

    def scaling(grid, axis):
        return {
            name: {
                "sizes": [getattr(c, axis) for c in grid if name in seconds[c]],
                "seconds": [seconds[c][name] for c in grid if name in seconds[c]],
            }
            for name in PATHS
        }

    fits = {"T": scaling(T_cases, "T"), "C": scaling(C_cases, "C")}
    for by_path in fits.values():
        for fit in by_path.values():
            if len(fit["sizes"]) >= 2:
                fit["exponent"] = fit_exponent(fit["sizes"], fit["seconds"])

    headline_row = next(r for r in comparison if r["T"] == headline.T)
    summary = {
        "headline_case": headline._asdict(),
        "rfft_s": seconds[headline]["rfft"],
        "speedup_vs_numpy": headline_row["speedup"].get("numpy"),
        "speedup_vs_fft": headline_row["speedup"]["fft"],
        "largest_dense_T": None if largest_dense is None else largest_dense.T,
        "speedup_vs_dense_at_largest_T": None
        if largest_dense is None
        else seconds[largest_dense]["dense"] / seconds[largest_dense]["rfft"],
        "exponent_T": fits["T"]["rfft"].get("exponent"),
        "exponent_C": fits["C"]["rfft"].get("exponent"),
        "layer_fraction_of_matmul": throughput["layer"]["fraction_of_matmul"],
        "compile_s": compile_info["compile_s"],
    }
    return {
        "benchmark": "shift-invariant layer step: rfft vs fft vs dense vs numpy",
        "config": {**config, "hyperparameters": HYPER, "tolerance": tolerance},
        "environment": {
            **environment(),
            "load_average_start": load_start,
            "load_average_end": os.getloadavg(),
        },
        "wall_s": time.perf_counter() - clock,
        "summary": summary,
        "correctness": checks,
        "comparison": comparison,
        "scaling": fits,
        "throughput": throughput,
        "compile": compile_info,
        "memory_2d": memory,
    }


def plot_scaling(payload: dict, path: Path) -> None:
    """Log-log seconds against T and against C for every path, with exponents."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from redunet_jax.io import atomic_write_bytes

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, axis in zip(axes, ("T", "C"), strict=True):
        for name, fit in payload["scaling"][axis].items():
            if not fit["sizes"]:
                continue
            label = name
            if "exponent" in fit:
                label += f" (slope {fit['exponent']:.2f})"
            ax.loglog(fit["sizes"], fit["seconds"], "o-", label=label)
        fixed = payload["config"]
        title = (
            f"m={fixed['m']} C={fixed['channels']} k={fixed['classes']}"
            if axis == "T"
            else f"m={fixed['m']} T={fixed['channel_length']} k={fixed['classes']}"
        )
        ax.set(xlabel=axis, ylabel="seconds per layer (build + apply)", title=title)
        ax.legend()
        ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    import io

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120)
    plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())


def summary_text(payload: dict) -> str:
    """The readable table printed at the end of a run."""
    lines = ["", "Layer step (build + apply), ms", ""]
    lines.append(
        f"{'case':28s} {'rfft':>8s} {'fft':>9s} {'dense':>10s} {'numpy':>9s}"
        f" {'numpy/rfft':>10s} {'dense/rfft':>10s}"
    )

    def ms(row, name, width):
        value = row.get(f"{name}_s")
        return f"{value * 1e3:{width}.2f}" if value else f"{'skipped':>{width}s}"

    def ratio(row, name):
        value = row["speedup"].get(name)
        return f"{value:9.1f}x" if value else f"{'-':>10s}"

    for row in payload["comparison"]:
        lines.append(
            f"{row['label']:28s} {ms(row, 'rfft', 8)} {ms(row, 'fft', 9)} "
            f"{ms(row, 'dense', 10)} {ms(row, 'numpy', 9)} {ratio(row, 'numpy')} "
            f"{ratio(row, 'dense')}"
        )
    s = payload["summary"]
    t = payload["throughput"]
    exponents = [
        f"{axis}^{s[f'exponent_{axis}']:.2f}"
        for axis in ("T", "C")
        if s[f"exponent_{axis}"] is not None
    ]
    lines += [
        "",
        f"fitted exponents of the rfft step: {', '.join(exponents) or 'none'}",
        f"float32 2048² matmul {t['matmul_2048_float32_gflops']:.0f} GFLOP/s; "
        f"batched complex64 products {t['batched_complex64_gflops']:.0f} GFLOP/s",
    ]
    for phase, row in t["phases"].items():
        lines.append(
            f"  {phase:14s} {row['seconds'] * 1e3:8.2f} ms {row['gflops']:7.1f} "
            f"GFLOP/s ({row['fraction_of_matmul']:.0%} of matmul)"
        )
    lines.append(
        f"  {'whole layer':14s} {t['layer']['seconds'] * 1e3:8.2f} ms "
        f"{t['layer']['gflops']:7.1f} GFLOP/s "
        f"({t['layer']['fraction_of_matmul']:.0%} of matmul; timed in alternation "
        f"with it, median share {t['layer']['median_fraction_of_matmul']:.0%})"
    )
    cost = t.get("class_covariances")
    if cost:
        lines.append(
            f"k class covariances {cost['class_covariances_s'] * 1e3:.2f} ms vs one "
            f"covariance of all samples {cost['one_covariance_s'] * 1e3:.2f} ms "
            f"(ratio {cost['ratio']:.2f})"
        )
    c = payload["compile"]
    lines.append(
        f"compile of the layer step {c['compile_s']:.2f} s; compiled steps by depth "
        f"{c['compiled_steps_by_num_layers']}"
    )
    memory = payload["memory_2d"]
    if memory:
        cfg = memory["config"]
        for row in memory["constructions"]:
            lines.append(
                f"2D m={cfg['m']} C={cfg['C']} {cfg['H']}x{cfg['W']} k={cfg['k']}, "
                f"{row['num_layers']} layers: peak RSS {row['peak_rss_mib']:.0f} MiB, "
                f"network {row['network_mib']:.0f} MiB, {row['construct_s']:.1f} s"
            )
    load = payload["environment"]
    lines.append(
        f"load average (1 min) {load['load_average_start'][0]:.2f} at start, "
        f"{load['load_average_end'][0]:.2f} at end on {load['cpu_count']} CPUs"
    )
    return "\n".join(lines)


def write_results(payload: dict, out: Path) -> tuple[Path, Path]:
    """Write ``bench.json`` and ``bench.png`` into ``out`` atomically."""
    from redunet_jax.io import atomic_write_bytes

    out.mkdir(parents=True, exist_ok=True)
    json_path, png_path = out / "bench.json", out / "bench.png"
    atomic_write_bytes(json_path, json.dumps(payload, indent=2).encode())
    plot_scaling(payload, png_path)
    return json_path, png_path


def throughput_line(T: int, t: dict) -> str:
    """The Markdown bullet on the layer's share of the matmul throughput."""
    layer = t["layer"]
    head = (
        f"- At T = {T} the layer step does {layer['gflop']:.2f} GFLOP "
        "(8 per complex multiply-add)."
    )
    complex_rate = (
        f"Batched complex64 products reach {t['batched_complex64_gflops']:.0f} GFLOP/s."
    )
    return (
        f"{head} Timed in alternation with a 2048² float32 matmul, "
        f"{t['rounds']} calls each (apart from the table above): best "
        f"{layer['seconds'] * 1e3:.1f} ms, {layer['gflops']:.0f} GFLOP/s, "
        f"{layer['fraction_of_matmul']:.0%} of the matmul's "
        f"{t['matmul_2048_float32_gflops']:.0f} GFLOP/s; median of the per-round "
        f"shares {layer['median_fraction_of_matmul']:.0%}. {complex_rate}"
    )


def markdown_summary(payload: dict) -> str:
    """A short Markdown report of a run: the comparison table and the headlines."""

    def ms(row, name):
        value = row.get(f"{name}_s")
        return f"{value * 1e3:.1f}" if value else "–"

    def times(row, name):
        value = row["speedup"].get(name)
        return f"{value:.0f}×" if value else "–"

    env = payload["environment"]
    cfg = payload["config"]
    lines = [
        f"One layer step (build + apply), m = {cfg['m']}, C = {cfg['channels']}, "
        f"k = {cfg['classes']}, float32; {env['backend']} with "
        f"{env['cpu_count']} cores, jax {env['jax']}. Milliseconds, best of "
        f"{cfg['repeats']}; every path checked against the NumPy loop first.",
        "",
        "| T | rfft (ours) | full FFT, plain JAX | dense JAX | NumPy loop "
        "| NumPy / ours | dense / ours |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in payload["comparison"]:
        lines.append(
            f"| {row['T']} | {ms(row, 'rfft')} | {ms(row, 'fft')} | "
            f"{ms(row, 'dense')} | {ms(row, 'numpy')} | {times(row, 'numpy')} | "
            f"{times(row, 'dense')} |"
        )
    s, t = payload["summary"], payload["throughput"]
    lines += [
        "",
        f"- Fitted exponents of our step: time ∝ T^{s['exponent_T']:.2f} "
        f"(C = {cfg['channels']}), ∝ C^{s['exponent_C']:.2f} "
        f"(T = {cfg['channel_length']}).",
        throughput_line(s["headline_case"]["T"], t),
        f"- Compiling the layer step takes {s['compile_s']:.1f} s, once for any depth.",
    ]
    memory = payload.get("memory_2d")
    if memory:
        c = memory["config"]
        for row in memory["constructions"]:
            lines.append(
                f"- 2D, m = {c['m']}, C = {c['C']}, {c['H']}×{c['W']}, k = {c['k']}, "
                f"{row['num_layers']} layer(s): peak memory "
                f"{row['peak_rss_mib'] / 1024:.1f} GiB, network "
                f"{row['network_mib'] / 1024:.2f} GiB, {row['construct_s']:.0f} s."
            )
    return "\n".join(lines)
