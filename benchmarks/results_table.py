"""The README's results table, measured by the ``redunet`` command itself.

Every row runs ``redunet fit`` through the command line's own entry point
(``redunet_jax.cli.main``) into a temporary folder and reads the
``metrics.json`` it writes; rows on signals or images are also scored on
circularly shifted test sets with ``redunet evaluate --shifts``. The summaries
go to ``benchmarks/results_table.json`` (committed), and the README's block
between ``<!-- results:start -->`` and ``<!-- results:end -->`` is rendered
from that file and rewritten atomically. The notebooks call the same
functions, so they show the same numbers.

Usage:
  python benchmarks/results_table.py              # every row, then JSON and README
  python benchmarks/results_table.py --only digits/vector --no-readme
  python benchmarks/results_table.py --render     # README from the JSON only
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS_JSON = ROOT / "benchmarks" / "results_table.json"
README = ROOT / "README.md"
START = "<!-- results:start -->"
END = "<!-- results:end -->"

# (row id, ``redunet fit`` arguments, score shifted test sets). A row id is
# ``DATASET/NETWORK``; arguments beyond the data set override its defaults.
ROWS: tuple[tuple[str, tuple[str, ...], bool], ...] = (
    ("digits/vector", ("--dataset", "digits"), False),
    ("gaussian2d/vector", ("--dataset", "gaussian2d"), False),
    ("gaussian3d/vector", ("--dataset", "gaussian3d"), False),
    ("sinusoids/invariant", ("--dataset", "sinusoids"), True),
    ("sinusoids/vector", ("--dataset", "sinusoids", "--no-invariant"), True),
    ("digits-translation/invariant", ("--dataset", "digits-translation"), True),
    (
        "digits-translation/vector",
        (
            "--dataset",
            "digits-translation",
            "--no-invariant",
            "--layers",
            "30",
            "--eps-sq",
            "0.5",
        ),
        True,
    ),
    ("digits-rotation/invariant", ("--dataset", "digits-rotation"), True),
    (
        "digits-rotation/vector",
        (
            "--dataset",
            "digits-rotation",
            "--no-invariant",
            "--layers",
            "30",
            "--eps-sq",
            "0.5",
        ),
        True,
    ),
    ("mnist1d/invariant", ("--dataset", "mnist1d"), False),
)

READOUTS = ("nearest_subspace", "svm", "knn", "pihat")


def row_spec(row_id: str) -> tuple[tuple[str, ...], bool]:
    """The ``redunet fit`` arguments of a row and whether shifts are scored.

    Args:
      row_id: a row id of ``ROWS``, such as ``"digits/vector"``.

    Returns:
      ``(arguments, shifts)``.

    Raises:
      KeyError: for an unknown row id.
    """
    for name, arguments, shifts in ROWS:
        if name == row_id:
            return arguments, shifts
    known = ", ".join(name for name, _, _ in ROWS)
    raise KeyError(f"unknown row {row_id!r}; rows are {known}")


def _cli(argv: list[str]) -> str:
    """Run the ``redunet`` command in-process; return what it printed."""
    from redunet_jax.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = main(argv)
    if status != 0:
        raise RuntimeError(f"redunet {' '.join(argv)} failed: {err.getvalue()}")
    return out.getvalue()


def fit(row_id: str, folder: str | Path) -> dict:
    """Run ``redunet fit`` with a row's settings into ``folder``.

    Args:
      row_id: a row id of ``ROWS``.
      folder: output folder of the run (``network.npz``, ``metrics.json``...).

    Returns:
      The run's ``metrics.json`` as a dict.

    Raises:
      KeyError: for an unknown row id.
      RuntimeError: if the command fails.
    """
    arguments, _ = row_spec(row_id)
    _cli(["fit", *arguments, "--out", str(folder), "--quiet"])
    return json.loads((Path(folder) / "metrics.json").read_text())


def evaluate_shifts(folder: str | Path) -> dict:
    """Run ``redunet evaluate --shifts`` on a run folder; return ``shifts.json``."""
    _cli(["evaluate", str(folder), "--shifts"])
    return json.loads((Path(folder) / "shifts.json").read_text())


def closed_form_rates(dim: int, samples_per_class: int = 500, *, eps_sq=0.1):
    """Rates of ``dim`` classes collapsed onto orthogonal unit axes.

    This is the plateau that the Gaussian-mixture networks approach (MATH.md,
    section 2): R = 2.3979, Rc = 1.5223, ΔR = 0.8756 for two classes in 2D.

    Args:
      dim: feature dimension d, equal to the number of classes.
      samples_per_class: samples in each class.
      eps_sq: distortion ε².

    Returns:
      ``Rates(delta_r, r, rc)`` as Python floats.
    """
    from redunet_jax import Rates, rate_reduction

    one_hot = np.repeat(np.eye(dim, dtype=np.float32), samples_per_class, axis=0)
    rates = rate_reduction(one_hot, one_hot, eps_sq=eps_sq)
    return Rates(*(float(v) for v in rates))


def shift_summary(report: dict) -> dict:
    """Per read-out: unshifted, mean and worst accuracy over the shifted sets.

    Args:
      report: the ``shifts.json`` written by ``redunet evaluate --shifts``.

    Returns:
      ``{read-out: {"unshifted", "mean", "worst", "changed"}}`` where
      ``changed`` is the largest number of test predictions that differ from
      the unshifted ones.
    """
    table = report["shifts"]
    names = [key for key in table[0] if key != "shift"]
    summary = {}
    for name in names:
        values = [row[name] for row in table]
        unshifted = next(row[name] for row in table if not any(row["shift"]))
        summary[name] = {
            "unshifted": unshifted,
            "mean": float(np.mean(values)),
            "worst": float(min(values)),
            "changed": int(report["worst"][f"changed_{name}"]),
        }
    return summary


def summarize(row_id: str, metrics: dict, shifts: dict | None = None) -> dict:
    """The numbers of one row, from a run's ``metrics.json`` (and shifts).

    Args:
      row_id: a row id of ``ROWS``.
      metrics: the run's ``metrics.json``.
      shifts: its ``shifts.json``, or None.

    Returns:
      A JSON-ready dict: settings, train and test accuracies of every
      read-out, those of the same classifiers on the inputs, final ΔR, R and
      Rc (true labels), the closed-form plateau of the Gaussian mixtures,
      construction time and the shifted-test summary.
    """
    config = metrics["config"]
    rates = metrics["rates"]
    row = {
        "id": row_id,
        "arguments": list(row_spec(row_id)[0]),
        "dataset": config["dataset"],
        "network": "invariant" if config["invariant"] else "vector",
        "signal_dims": len(config["input_shape"]) - 1 if config["invariant"] else 0,
        "layers": config["layers"],
        "eps_sq": config["eps_sq"],
        "samples": metrics["samples"],
        "accuracy": metrics["accuracy"],
        "inputs_accuracy": metrics["baseline_accuracy"],
        "rates": {
            split: {
                key: rates[split]["true"][key][-1] for key in ("delta_r", "r", "rc")
            }
            for split in ("train", "test")
        },
        "construct_s": metrics["timings_s"]["construct"],
    }
    if config["dataset"] in ("gaussian2d", "gaussian3d"):
        dim = int(config["dataset"][-2])
        plateau = closed_form_rates(dim, eps_sq=config["eps_sq"])
        row["plateau"] = plateau._asdict()
        curve = np.asarray(rates["test"]["true"]["delta_r"])
        close = np.flatnonzero(curve >= 0.99 * plateau.delta_r)
        row["test_layers_to_1pct"] = int(close[0]) if close.size else None
    if shifts is not None:
        row["shifts"] = shift_summary(shifts)
    return row


def run_row(row_id: str, folder: str | Path | None = None) -> dict:
    """Fit a row (and score its shifted test sets) and summarize it.

    Args:
      row_id: a row id of ``ROWS``.
      folder: run folder to keep; a temporary folder when None.

    Returns:
      The row's summary (see :func:`summarize`).
    """
    if folder is None:
        with tempfile.TemporaryDirectory() as tmp:
            return run_row(row_id, tmp)
    metrics = fit(row_id, folder)
    shifts = evaluate_shifts(folder) if row_spec(row_id)[1] else None
    return summarize(row_id, metrics, shifts)


def _network_label(row: dict) -> str:
    if row["network"] == "vector":
        return f"vector, {row['layers']} layers"
    return f"invariant {row['signal_dims']}D, {row['layers']} layers"


def render(results: dict) -> str:
    """The README block (without the markers) for the results in the JSON.

    Args:
      results: the content of ``results_table.json``.

    Returns:
      Markdown text: the main table, the shifted-test table and their notes.
    """
    rows = results["rows"]
    env = results["environment"]
    lines = [
        f"Measured on {env['machine']} (jax {env['jax']}, {env['backend']} "
        "backend) with `redunet fit`. Test accuracies; ΔR of the test features "
        "with their labels (for invariant networks an average over "
        "frequencies, i.e. divided by the signal length); construction time "
        "includes compiling the layer step, except where an earlier row (the "
        "rows run in this order, in one process) already compiled it for the "
        "same shapes.",
        "",
        "| data set | network | nearest subspace / SVM / 5-NN / argmax pihat "
        "| inputs: nearest subspace | ΔR (test) | construction |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        test = row["accuracy"]["test"]
        accuracies = " / ".join(f"{test[name]:.3f}" for name in READOUTS)
        delta_r = f"{row['rates']['test']['delta_r']:.4f}"
        if "plateau" in row:
            delta_r += f" (plateau {row['plateau']['delta_r']:.4f})"
        lines.append(
            f"| {row['dataset']} | {_network_label(row)} | {accuracies} "
            f"| {row['inputs_accuracy']['test']['nearest_subspace']:.3f} "
            f"| {delta_r} | {row['construct_s']:.1f} s |"
        )
    near = [row for row in rows if row.get("test_layers_to_1pct") is not None]
    if near:
        reached = " and ".join(
            f"{row['test_layers_to_1pct']} ({row['dataset']})" for row in near
        )
        lines += [
            "",
            "The test ΔR of the Gaussian mixtures is within 1% of the closed-form "
            f"plateau (MATH.md, section 2) from layer {reached} on.",
        ]
    shifted = [row for row in rows if "shifts" in row]
    if shifted:
        lines += [
            "",
            "Circularly shifted test sets, scored by `redunet evaluate --shifts` "
            "(every shift by {-8, -4, 0, 4, 8} "
            "samples per signal axis: 25 shifts of the images of "
            "`digits-translation`, rotations by multiples of 2π/32 for "
            "`digits-rotation`); `nearest_subspace_invariant` is nearest subspace "
            "on the rfft moduli of the output features "
            "(`shift_invariant_features`):",
            "",
            "| data set | network | read-out | unshifted | mean over shifts "
            "| worst shift | predictions changed |",
            "|---|---|---|---|---|---|---|",
        ]
        for row in shifted:
            tested = row["samples"]["test"]
            for name, values in row["shifts"].items():
                lines.append(
                    f"| {row['dataset']} | {_network_label(row)} | {name} "
                    f"| {values['unshifted']:.3f} | {values['mean']:.3f} "
                    f"| {values['worst']:.3f} | {values['changed']}/{tested} |"
                )
    return "\n".join(lines)


def replace_block(text: str, block: str) -> str:
    """Put ``block`` between the results markers of ``text``.

    Args:
      text: the README.
      block: the new content between the markers.

    Returns:
      The README with the block replaced.

    Raises:
      ValueError: unless both markers occur exactly once, in order.
    """
    if text.count(START) != 1 or text.count(END) != 1:
        raise ValueError(f"the README must hold {START} and {END} exactly once")
    head, rest = text.split(START)
    _, tail = rest.split(END)
    if END in head:
        raise ValueError(f"{END} comes before {START} in the README")
    return f"{head}{START}\n{block}\n{END}{tail}"


def readme_block(text: str) -> str:
    """The current content between the results markers of the README text."""
    if text.count(START) != 1 or text.count(END) != 1:
        raise ValueError(f"the README must hold {START} and {END} exactly once")
    return text.split(START)[1].split(END)[0].strip("\n")


def _environment(metrics: dict) -> dict:
    import platform

    versions = metrics["versions"]
    return {
        "redunet_jax": versions["redunet_jax"],
        "jax": versions["jax"],
        "jaxlib": versions["jaxlib"],
        "backend": versions["backend"],
        "machine": f"a {_cpu_count()}-core {platform.machine()} CPU"
        if versions["backend"] == "cpu"
        else ", ".join(versions["devices"]),
    }


def _cpu_count() -> int:
    import os

    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _write(path: Path, text: str) -> None:
    from redunet_jax.io import atomic_write_bytes

    atomic_write_bytes(path, text.encode())


def write_readme(results: dict, readme: Path = README) -> None:
    """Rewrite the README's results block from ``results``, atomically."""
    _write(readme, replace_block(readme.read_text(), render(results)))


def main(argv: list[str] | None = None) -> int:
    """Run the rows, write the JSON and rewrite the README block."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--only", action="append", help="run only this row id (repeatable)"
    )
    parser.add_argument(
        "--render", action="store_true", help="rewrite the README from the JSON only"
    )
    parser.add_argument("--no-readme", action="store_true", help="leave the README")
    parser.add_argument("--out", type=Path, default=RESULTS_JSON, help="JSON file")
    args = parser.parse_args(argv)

    if args.render:
        write_readme(json.loads(args.out.read_text()))
        return 0

    ids = args.only or [name for name, _, _ in ROWS]
    previous = json.loads(args.out.read_text()) if args.out.is_file() else None
    kept = {row["id"]: row for row in previous["rows"]} if previous else {}
    environment = previous["environment"] if previous else None
    for row_id in ids:
        with tempfile.TemporaryDirectory() as tmp:
            metrics = fit(row_id, tmp)
            shifts = evaluate_shifts(tmp) if row_spec(row_id)[1] else None
            kept[row_id] = summarize(row_id, metrics, shifts)
            environment = _environment(metrics)
        row = kept[row_id]
        print(
            f"{row_id}: test {row['accuracy']['test']}, "
            f"delta R {row['rates']['test']['delta_r']:.4f}, "
            f"{row['construct_s']:.1f} s",
            file=sys.stderr,
        )
    order = [name for name, _, _ in ROWS]
    results = {
        "environment": environment,
        "rows": sorted(kept.values(), key=lambda row: order.index(row["id"])),
    }
    _write(args.out, json.dumps(results, indent=2) + "\n")
    if not args.no_readme:
        write_readme(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
