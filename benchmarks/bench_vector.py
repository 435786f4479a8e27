"""Seconds per layer of the jitted vector construction against plain NumPy float64.

Both implement the same algorithm (ReduNet, JMLR 2022, section 2.3) on the
same data in the same run. Correctness is checked first (output features
agree), JAX is warmed up (compiled) once, and every timing blocks until the
result is ready.

Usage: python benchmarks/bench_vector.py [--layers 10] [--out FILE]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from _common import best_of, environment, write_json

from redunet_jax import construct, load_dataset


def numpy_construct(X, y, num_classes, num_layers, eta, eps_sq, lam):
    """The obvious NumPy port: explicit inverses, one class at a time."""
    Z = X / np.maximum(np.linalg.norm(X, axis=1, keepdims=True), 1e-8)
    Pi = np.eye(num_classes)[y]
    m, d = Z.shape
    for _ in range(num_layers):
        alpha = d / (m * eps_sq)
        E = alpha * np.linalg.inv(np.eye(d) + alpha * Z.T @ Z)
        m_j = Pi.sum(axis=0)
        C = np.stack(
            [
                d
                / (m_j[j] * eps_sq)
                * np.linalg.inv(
                    np.eye(d) + d / (m_j[j] * eps_sq) * (Z.T * Pi[:, j]) @ Z
                )
                for j in range(num_classes)
            ]
        )
        gamma = m_j / m
        CZ = np.einsum("kab,mb->mka", C, Z)
        logits = -lam * np.maximum(np.linalg.norm(CZ, axis=-1), 1e-8)
        pihat = np.exp(logits - logits.max(axis=1, keepdims=True))
        pihat /= pihat.sum(axis=1, keepdims=True)
        Z = Z + eta * (Z @ E - np.einsum("mk,mka->ma", gamma * pihat, CZ))
        Z = Z / np.maximum(np.linalg.norm(Z, axis=1, keepdims=True), 1e-8)
    return Z


def synthetic(m, d, k, seed=0):
    rng = np.random.default_rng(seed)
    y = np.arange(m) % k
    X = rng.standard_normal((k, d))[y] + 0.5 * rng.standard_normal((m, d))
    return X.astype(np.float32), y


def run_case(name, X, y, k, layers, hyper):
    def ours():
        net, Z = construct(X, y, num_classes=k, num_layers=layers, **hyper)
        Z.block_until_ready()
        return Z

    start = time.perf_counter()
    Z = np.asarray(ours())  # first call: compiles the layer step
    first_call = time.perf_counter() - start
    Z_ref = numpy_construct(X.astype(np.float64), y, k, layers, **hyper)
    max_error = float(np.max(np.abs(Z - Z_ref)))
    ours_s = best_of(ours)
    numpy_s = best_of(
        lambda: numpy_construct(X.astype(np.float64), y, k, layers, **hyper)
    )
    return {
        "case": name,
        "m": int(X.shape[0]),
        "d": int(X.shape[1]),
        "k": k,
        "layers": layers,
        "jax_s_per_layer": ours_s / layers,
        "numpy_float64_s_per_layer": numpy_s / layers,
        "speedup": numpy_s / ours_s,
        "first_call_s_including_compile": first_call,
        "max_abs_feature_difference": max_error,
        "agree": max_error < 1e-3,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=10)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--quick", action="store_true", help="digits only, 2 layers")
    args = parser.parse_args()
    layers = 2 if args.quick else args.layers

    hyper = {"eta": 0.5, "eps_sq": 0.5, "lam": 500.0}
    digits = load_dataset("digits")
    cases = [("digits", digits.X_train, digits.y_train, 10)]
    if not args.quick:
        cases += [
            (f"synthetic m={m} d={d}", *synthetic(m, d, 10), 10)
            for m, d in ((4000, 64), (4000, 256))
        ]
    results = [run_case(name, X, y, k, layers, hyper) for name, X, y, k in cases]
    for row in results:
        print(
            f"{row['case']:24s} jax {row['jax_s_per_layer'] * 1e3:8.2f} ms/layer  "
            f"numpy {row['numpy_float64_s_per_layer'] * 1e3:8.2f} ms/layer  "
            f"x{row['speedup']:.1f}  max diff {row['max_abs_feature_difference']:.1e}"
        )
        if not row["agree"]:
            raise SystemExit(f"JAX and NumPy disagree on {row['case']}")
    path = write_json(
        "bench_vector.json",
        {
            "benchmark": "vector construction",
            "hyperparameters": hyper,
            "environment": environment(),
            "results": results,
        },
        out=args.out,
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
