"""Finiteness and accuracy of every public computation, per input dtype and edge case.

For the vector and the shift-invariant versions, each input dtype (bfloat16,
float16, float32) and each case of the matrix below, the script evaluates

* ``rates``: the rate reduction of the raw features (``rate_reduction`` or
  ``shift_invariant_rate_reduction``),
* ``normalize``: the unit-norm inputs,
* ``construct``: the output of every layer of a short construction (layers
  re-applied one by one with the public ``apply_*_layer`` functions),
* ``grad_rates``: ``jax.grad`` of the rate reduction with respect to ``Z``,
* ``grad_finetune``: the gradient of the fine-tuning loss
  (``redunet_jax.nnx.rate_reduction_loss``) with respect to the operators,

and compares each with the same computation in float64, on the *same* input
values (the low-precision inputs widened exactly), so the errors measure the
computation and not the rounding of the inputs. The error of a quantity is
``max |x - x_64| / max(1, max |x_64|)``. A cell passes when every value is
finite and the error is within the tolerance of its dtype and quantity, or
when the case is one that must fail with a documented error.

Cases: eps_sq in {1e-4, 1e-2, 1, 10}; batch sizes {1, 2, 64, 4096}; one class
with m_j in {0, 1, d-1, d, d+1} samples (d = channels C for signals);
duplicated samples; some all-zero samples; sample norms 1e+30 and 1e-30;
nearly collinear classes. Unless a case says otherwise: m = 64, k = 3,
eps_sq = 0.1, d = 8 (vectors) or C = 4, T = 8 (signals).

Documented outcomes that count as passing:

* ``norm=1e+30``: the rates of such unnormalized features overflow float32
  (the Gram matrix holds values near 1e60), so ``rates`` raises the clear
  "values are too large" ValueError; float16 cannot even hold the inputs
  (largest value 65504), so its whole row is "not representable".
  ``normalize`` and ``construct`` (which normalizes first) work.
* ``norm=1e-30`` in float16: the inputs underflow to zero, so construction
  stops with "all 64 samples are zero (features collapsed)".

Tolerances (error as defined above; low-precision inputs are computed in
float32, so most tolerances do not depend on the input dtype; outputs that
keep the input dtype, ``normalize`` and the gradients with respect to ``Z``,
carry one rounding of that dtype):

==============  ========  ========  ========
quantity        bfloat16  float16   float32
==============  ========  ========  ========
rates           5e-5      5e-5      5e-5
normalize       4e-3      5e-4      1e-6
construct       1e-4      1e-4      1e-4
grad_rates      4e-3      5e-4      1e-4
grad_finetune   1e-3      1e-3      1e-3
==============  ========  ========  ========

With eps_sq = 1e-4 every tolerance is multiplied by ``SMALL_EPS_FACTOR`` = 100
(float32 loses accuracy when eps_sq < 1e-3: the matrices ``I + alpha_j
Sigma_j`` have condition numbers near d / (m_j eps_sq)). The fine-tuning
gradient of the two-sample vector network (case ``m=2``) is itself
ill-conditioned: perturbing its float64 inputs by one float32 rounding (1e-7)
moves the float64 gradient by about 1e-2, so its tolerance is multiplied by
10 (``ILL_CONDITIONED``).

Writes ``numerics_matrix.json`` and ``numerics_matrix.md`` to
``benchmarks/results/`` (or ``--out-dir``), prints the summary table and exits
with status 1 if any cell fails.

Usage: python benchmarks/numerics_matrix.py [--quick] [--out-dir DIR]
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from functools import partial
from pathlib import Path

import jax

# float64 references are computed in the same run; every low-precision path
# below passes explicit float32 (or narrower) arrays, and the script checks
# that its results really are float32.
jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from _common import RESULTS, environment, write_json  # noqa: E402
from flax import nnx  # noqa: E402

from redunet_jax import (  # noqa: E402
    apply_circulant_layer,
    apply_vector_layer,
    bin_weights,
    construct,
    from_fourier,
    normalize,
    rate_reduction,
    shift_invariant_rate_reduction,
    to_fourier,
)
from redunet_jax.nnx import ReduNetModule, rate_reduction_loss  # noqa: E402

DTYPES = ("bfloat16", "float16", "float32")
QUANTITIES = ("rates", "normalize", "construct", "grad_rates", "grad_finetune")
TOLERANCES = {
    "rates": {"bfloat16": 5e-5, "float16": 5e-5, "float32": 5e-5},
    "normalize": {"bfloat16": 4e-3, "float16": 5e-4, "float32": 1e-6},
    "construct": {"bfloat16": 1e-4, "float16": 1e-4, "float32": 1e-4},
    "grad_rates": {"bfloat16": 4e-3, "float16": 5e-4, "float32": 1e-4},
    "grad_finetune": {"bfloat16": 1e-3, "float16": 1e-3, "float32": 1e-3},
}
SMALL_EPS_FACTOR = 100.0
ILL_CONDITIONED = {("m=2", "grad_finetune"): 10.0}
NUM_CLASSES = 3
VECTOR_DIM = 8
CHANNELS, LENGTH = 4, 8
BASE = {"m": 64, "eps_sq": 0.1}
CASES = {
    "eps_sq=1e-4": {"eps_sq": 1e-4},
    "eps_sq=1e-2": {"eps_sq": 1e-2},
    "eps_sq=1": {"eps_sq": 1.0},
    "eps_sq=10": {"eps_sq": 10.0},
    "m=1": {"m": 1},
    "m=2": {"m": 2},
    "m=64": {"m": 64},
    "m=4096": {"m": 4096},
    "m_j=0": {"m_j": "0"},
    "m_j=1": {"m_j": "1"},
    "m_j=d-1": {"m_j": "d-1"},
    "m_j=d": {"m_j": "d"},
    "m_j=d+1": {"m_j": "d+1"},
    "duplicates": {"duplicates": True},
    "zeros": {"zeros": 6},
    "norm=1e+30": {"scale": 1e30},
    "norm=1e-30": {"scale": 1e-30},
    "collinear": {"collinear": True},
}
# One batch size (one set of compiled shapes) and the cases most likely to break.
QUICK_CASES = ("m_j=d+1", "zeros", "norm=1e+30", "norm=1e-30")


def class_sizes(m: int, d: int, m_j: str | None) -> list[int]:
    """Class sizes; with ``m_j`` ("0", "1", "d-1", "d", "d+1") the last class has it."""
    if m_j is None:
        return [m // NUM_CLASSES + (j < m % NUM_CLASSES) for j in range(NUM_CLASSES)]
    last = {"0": 0, "1": 1, "d-1": d - 1, "d": d, "d+1": d + 1}[m_j]
    rest = m - last
    return [rest - rest // 2, rest // 2, last]


def make_case(kind: str, spec: dict, seed: int = 0):
    """Float64 inputs (m, d) or (m, C, T), labels and eps_sq of one case."""
    spec = {**BASE, **spec}
    rng = np.random.default_rng(seed)
    m = spec["m"]
    d = VECTOR_DIM if kind == "vector" else CHANNELS
    sizes = class_sizes(m // 2 if spec.get("duplicates") else m, d, spec.get("m_j"))
    y = np.concatenate([np.full(s, j) for j, s in enumerate(sizes)]).astype(int)
    sample = (VECTOR_DIM,) if kind == "vector" else (CHANNELS, LENGTH)
    centres = rng.standard_normal((NUM_CLASSES, *sample))
    spread = 0.3
    if spec.get("collinear"):
        # Every class close to one common direction, and tight around it.
        centres = centres[:1] + 1e-2 * rng.standard_normal(centres.shape)
        spread = 1e-3
    if kind == "vector":
        X = centres[y] + spread * rng.standard_normal((len(y), *sample))
    else:
        # Randomly shifted class templates: the shift-invariant structure.
        shifts = rng.integers(0, LENGTH, len(y))
        X = np.stack(
            [np.roll(centres[c], s, axis=-1) for c, s in zip(y, shifts, strict=True)]
        )
        X = X + spread * rng.standard_normal(X.shape)
    if spec.get("duplicates"):
        X, y = np.concatenate([X, X]), np.concatenate([y, y])
    if spec.get("zeros"):
        X[rng.choice(len(y), spec["zeros"], replace=False)] = 0.0
    X = X * spec.get("scale", 1.0)
    return X, y, spec["eps_sq"]


def scaled_error(x, ref) -> float:
    """``max |x - ref| / max(1, max |ref|)`` in float64."""
    x = np.asarray(x, np.complex128 if np.iscomplexobj(x) else np.float64)
    ref = np.asarray(ref, x.dtype)
    return float(np.max(np.abs(x - ref)) / max(1.0, float(np.max(np.abs(ref)))))


def all_finite(values) -> bool:
    return all(np.all(np.isfinite(np.asarray(v))) for v in values)


def evaluate(kind: str, X, y, eps_sq: float, num_layers: int) -> dict:
    """Every quantity for one input array; values are lists of arrays (or errors).

    ``X`` keeps its dtype; float32 computation is enforced for narrower inputs
    by the library, float64 only for float64 inputs.
    """
    Pi = jax.nn.one_hot(jnp.asarray(y), NUM_CLASSES, dtype=jnp.float32)
    invariant = kind == "invariant"
    rates_fn = shift_invariant_rate_reduction if invariant else rate_reduction
    wide = X.dtype == jnp.float64
    compute = jnp.float64 if wide else jnp.float32
    Pi = Pi.astype(compute)
    out: dict = {}

    def attempt(name, fn):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error")
                out[name] = fn()
        except ValueError as err:
            out[name] = err

    def rates():
        r = rates_fn(X, Pi, eps_sq=eps_sq)
        assert r.r.dtype == compute, f"rates computed in {r.r.dtype}"
        return [jnp.stack(list(r))]

    def grad_rates():
        return [_grad_rates(X, Pi, eps_sq, invariant=invariant)]

    attempt("rates", rates)
    attempt("normalize", lambda: [normalize(X)])
    if isinstance(out["rates"], ValueError):
        # Overflowing rates: the gradient of the same computation is not
        # defined either (inside jax.grad the values are not checked).
        out["grad_rates"] = out["rates"]
    else:
        attempt("grad_rates", grad_rates)

    def built():
        net, Z = construct(
            X,
            y,
            num_classes=NUM_CLASSES,
            num_layers=num_layers,
            eps_sq=eps_sq,
            invariant=invariant,
        )
        assert net.dtype == compute, f"network computed in {net.dtype}"
        return net, Z

    attempt("_net", built)
    net = out.pop("_net")
    if isinstance(net, ValueError):
        out["construct"] = out["grad_finetune"] = net
        return out
    net, Z_final = net
    out["construct"] = layer_outputs(net, X) + [Z_final]
    out["grad_finetune"] = finetune_gradients(net, X, Pi)
    return out


@partial(jax.jit, static_argnames=("invariant",))
def _grad_rates(Z, Pi, eps_sq, *, invariant: bool):
    rates_fn = shift_invariant_rate_reduction if invariant else rate_reduction
    return jax.grad(lambda Z: rates_fn(Z, Pi, eps_sq=eps_sq).delta_r)(Z)


@partial(jax.jit, static_argnames=("graphdef",))
def _finetune_grad(graphdef, params, rest, X, Pi):
    def loss(params):
        model = nnx.merge(graphdef, params, rest)
        return rate_reduction_loss(model, X, Pi, 0.5)[0]

    return jax.grad(loss)(params)


def layer_outputs(net, X) -> list:
    """Features after every layer, from the public per-layer functions."""
    Z = normalize(X.astype(jnp.promote_types(X.dtype, net.dtype))).astype(net.dtype)
    invariant = net.invariant
    weights = bin_weights(net.input_shape[1:]) if invariant else None
    if invariant:
        Z = to_fourier(Z)
    outputs = []
    for i in range(net.num_layers):
        layer = jax.tree.map(lambda a, i=i: a[i], net.layers)
        if invariant:
            Z, _ = apply_circulant_layer(
                layer, Z, eta=net.eta, lam=net.lam, weights=weights
            )
            outputs.append(from_fourier(Z, net.input_shape[1:]))
        else:
            Z, _ = apply_vector_layer(layer, Z, eta=net.eta, lam=net.lam)
            outputs.append(Z)
    return outputs


def finetune_gradients(net, X, Pi) -> list:
    """Gradient of the fine-tuning loss (with a cross-entropy term) wrt operators."""
    graphdef, params, rest = nnx.split(ReduNetModule(net), nnx.Param, ...)
    grads = _finetune_grad(graphdef, params, rest, X, Pi.astype(net.dtype))
    return [np.asarray(leaf) for leaf in jax.tree.leaves(grads)]


def expected_error(case: str, dtype: str, quantity: str) -> str | None:
    """Substring of the documented error this cell must raise, if any."""
    if case == "norm=1e+30" and quantity in ("rates", "grad_rates"):
        return "too large"
    if case == "norm=1e-30" and dtype == "float16":
        if quantity in ("construct", "grad_finetune"):
            return "collapsed"
    return None


def tolerance(case: str, quantity: str, dtype: str, eps_sq: float) -> float:
    factor = SMALL_EPS_FACTOR if eps_sq < 1e-3 else 1.0
    factor *= ILL_CONDITIONED.get((case, quantity), 1.0)
    return TOLERANCES[quantity][dtype] * factor


def compare(kind, case, dtype, low, ref, eps_sq) -> list[dict]:
    rows = []
    for quantity in QUANTITIES:
        got, want = low[quantity], ref[quantity]
        row = {
            "kind": kind,
            "case": case,
            "dtype": dtype,
            "quantity": quantity,
            "tolerance": tolerance(case, quantity, dtype, eps_sq),
            "max_error": None,
            "finite": None,
            "message": "",
        }
        expected = expected_error(case, dtype, quantity)
        if isinstance(got, ValueError):
            row["message"] = str(got).splitlines()[0]
            ok = expected is not None and expected in row["message"]
            row["status"] = "expected error" if ok else "FAIL"
        elif expected is not None:
            row["status"], row["message"] = "FAIL", f"no error (expected {expected!r})"
        elif isinstance(want, ValueError):
            row["status"] = "FAIL"
            row["message"] = f"float64 reference failed: {want}"
        else:
            row["finite"] = all_finite(got)
            row["max_error"] = max(
                scaled_error(a, b) for a, b in zip(got, want, strict=True)
            )
            good = row["finite"] and row["max_error"] <= row["tolerance"]
            row["status"] = "ok" if good else "FAIL"
        rows.append(row)
    return rows


def unrepresentable(kind, case, dtype) -> list[dict]:
    return [
        {
            "kind": kind,
            "case": case,
            "dtype": dtype,
            "quantity": quantity,
            "tolerance": None,
            "max_error": None,
            "finite": None,
            "status": "not representable",
            "message": f"the inputs overflow {dtype}",
        }
        for quantity in QUANTITIES
    ]


def run(cases, num_layers: int) -> list[dict]:
    rows = []
    for kind in ("vector", "invariant"):
        for case in cases:
            X64, y, eps_sq = make_case(kind, CASES[case])
            for dtype in DTYPES:
                with warnings.catch_warnings():
                    # 1e+30 overflows float16: reported as "not representable".
                    warnings.simplefilter("ignore", RuntimeWarning)
                    X = jnp.asarray(X64, dtype)
                if not np.all(np.isfinite(np.asarray(X, np.float64))):
                    rows += unrepresentable(kind, case, dtype)
                    continue
                same = jnp.asarray(np.asarray(X, np.float64))
                low = evaluate(kind, X, y, eps_sq, num_layers)
                ref = evaluate(kind, same, y, eps_sq, num_layers)
                rows += compare(kind, case, dtype, low, ref, eps_sq)
    return rows


def cell(rows: list[dict]) -> str:
    """One table cell: the worst error of a (kind, case, dtype) and its state."""
    if any(r["status"] == "FAIL" for r in rows):
        failed = [r["quantity"] for r in rows if r["status"] == "FAIL"]
        return "FAIL: " + ", ".join(failed)
    if all(r["status"] == "not representable" for r in rows):
        return "not representable"
    errors = [r["max_error"] for r in rows if r["max_error"] is not None]
    text = f"{max(errors):.1e}, finite" if errors else ""
    expected = [r["quantity"] for r in rows if r["status"] == "expected error"]
    if expected:
        text += ("; " if text else "") + "expected error: " + ", ".join(expected)
    return text


def summary_table(rows: list[dict], cases) -> str:
    lines = [
        "| version | case | " + " | ".join(DTYPES) + " |",
        "|---|---|" + "---|" * len(DTYPES),
    ]
    for kind in ("vector", "invariant"):
        for case in cases:
            cells = []
            for dtype in DTYPES:
                group = [
                    r
                    for r in rows
                    if (r["kind"], r["case"], r["dtype"]) == (kind, case, dtype)
                ]
                cells.append(cell(group))
            lines.append(f"| {kind} | {case} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def detail_table(rows: list[dict]) -> str:
    lines = [
        "| version | case | dtype | quantity | max error | tolerance | finite "
        "| status | note |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        error = "" if r["max_error"] is None else f"{r['max_error']:.2e}"
        tol = "" if r["tolerance"] is None else f"{r['tolerance']:.0e}"
        finite = "" if r["finite"] is None else ("yes" if r["finite"] else "no")
        note = r["message"].replace("|", "/")
        lines.append(
            f"| {r['kind']} | {r['case']} | {r['dtype']} | {r['quantity']} | "
            f"{error} | {tol} | {finite} | {r['status']} | {note} |"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few cases only")
    parser.add_argument("--layers", type=int, default=None, help="layers per net")
    parser.add_argument("--out-dir", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    cases = QUICK_CASES if args.quick else tuple(CASES)
    num_layers = args.layers or (2 if args.quick else 3)

    start = time.perf_counter()
    rows = run(cases, num_layers)
    elapsed = time.perf_counter() - start
    failures = [r for r in rows if r["status"] == "FAIL"]
    table = summary_table(rows, cases)
    payload = {
        "config": {
            "quick": args.quick,
            "cases": {c: {**BASE, **CASES[c]} for c in cases},
            "num_layers": num_layers,
            "num_classes": NUM_CLASSES,
            "vector_dim": VECTOR_DIM,
            "channels": CHANNELS,
            "length": LENGTH,
            "dtypes": list(DTYPES),
            "tolerances": TOLERANCES,
            "small_eps_factor": SMALL_EPS_FACTOR,
            "ill_conditioned": {f"{c} {q}": f for (c, q), f in ILL_CONDITIONED.items()},
        },
        "environment": environment(),
        "seconds": elapsed,
        "failures": len(failures),
        "results": rows,
    }
    write_json("numerics_matrix.json", payload, args.out_dir / "numerics_matrix.json")
    markdown = (
        "# Numerics matrix\n\nWorst error over the quantities of each cell "
        "(vs float64 on the same inputs).\n\n"
        + table
        + "\n\n## Every quantity\n\n"
        + detail_table(rows)
        + "\n"
    )
    (args.out_dir / "numerics_matrix.md").write_text(markdown)
    print(table)
    print(f"\n{len(rows)} checks in {elapsed:.1f} s, {len(failures)} failed")
    if failures:
        for r in failures:
            print(
                f"FAIL {r['kind']} {r['case']} {r['dtype']} {r['quantity']}: "
                f"error {r['max_error']}, tolerance {r['tolerance']}, "
                f"finite {r['finite']} {r['message']}",
                file=sys.stderr,
            )
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
