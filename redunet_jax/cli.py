"""The ``redunet`` command: construct, evaluate and inspect ReduNets.

The library itself prints nothing; this module owns the progress bar, the
summary tables and the files of a run (``metrics.json``, ``network.npz`` and
the figures).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

DEFAULTS = {
    # Chosen so that the nearest-subspace test accuracy on digits beats the
    # same classifier on the inputs (settings of the ReduNet digits experiment).
    "digits": {"layers": 30, "eps_sq": 0.5, "eta": 0.5, "lam": 500.0},
    # The mixtures approach the closed-form plateau within 1% after about 770
    # layers; 1000 layers take a few seconds.
    "gaussian2d": {"layers": 1000, "eps_sq": 0.1, "eta": 0.5, "lam": 500.0},
    "gaussian3d": {"layers": 1000, "eps_sq": 0.1, "eta": 0.5, "lam": 500.0},
    "idx": {"layers": 30, "eps_sq": 0.5, "eta": 0.5, "lam": 500.0},
}


class CLIError(Exception):
    """A user error reported as one line, with exit status 2."""


def _defaults_for(dataset: str) -> dict:
    return DEFAULTS["idx" if dataset.startswith("idx:") else dataset]


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not (value > 0 and value < float("inf")):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
    return value


def _fraction(text: str) -> float:
    value = _positive_float(text)
    if value >= 1:
        raise argparse.ArgumentTypeError(
            f"must lie strictly between 0 and 1, got {text}"
        )
    return value


def _dataset_name(text: str) -> str:
    if text in DEFAULTS and text != "idx" or text.startswith("idx:") and len(text) > 4:
        return text
    names = ", ".join([n for n in DEFAULTS if n != "idx"] + ["idx:PATH"])
    raise argparse.ArgumentTypeError(
        f"unknown data set {text!r}; choose one of {names}"
    )


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``redunet`` command."""
    parser = argparse.ArgumentParser(
        prog="redunet", description="Construct and evaluate ReduNets (rate reduction)."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    fit = sub.add_parser("fit", help="construct a network on a data set")
    fit.add_argument(
        "--dataset",
        type=_dataset_name,
        default="digits",
        help="digits (default), gaussian2d, gaussian3d or idx:PATH",
    )
    fit.add_argument("--layers", type=_positive_int, help="number of layers")
    fit.add_argument("--eta", type=_positive_float, help="step size")
    fit.add_argument("--eps-sq", type=_positive_float, help="distortion eps^2")
    fit.add_argument("--lam", type=_positive_float, help="inverse temperature")
    fit.add_argument("--seed", type=int, default=0, help="split and data seed")
    fit.add_argument(
        "--test-size",
        type=_fraction,
        default=0.3,
        help="held-out fraction (default 0.3)",
    )
    fit.add_argument(
        "--n-comp",
        type=_positive_int,
        help="nearest-subspace dimension (10 for digits, 1 for mixtures)",
    )
    fit.add_argument(
        "--use-labels",
        action="store_true",
        help="move training features with their true labels",
    )
    fit.add_argument("--out", type=Path, help="output folder (default runs/DATASET)")
    fit.add_argument("--quiet", action="store_true", help="no progress bar")

    evaluate = sub.add_parser("evaluate", help="reload a run and score it again")
    evaluate.add_argument("run", type=Path, help="folder written by 'redunet fit'")
    return parser


def _writable_folder(path: Path) -> Path:
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path):
            pass
    except OSError as err:
        raise CLIError(
            f"cannot write to output folder {path}: {err.strerror}"
        ) from None
    return path


def _versions() -> dict:
    from importlib.metadata import version

    import jax

    from redunet_jax import __version__

    return {
        "redunet_jax": __version__,
        "jax": jax.__version__,
        "jaxlib": version("jaxlib"),
        "backend": jax.default_backend(),
        "devices": [str(d) for d in jax.devices()],
        "python": platform.python_version(),
    }


def _rates_lists(start, per_layer) -> dict:
    return {
        key: [float(getattr(start, key))] + [float(v) for v in getattr(per_layer, key)]
        for key in ("delta_r", "r", "rc")
    }


def _score(net, data, n_comp: int) -> tuple[dict, dict, object, object]:
    import numpy as np

    from redunet_jax import evaluate, predict, rates_per_layer, transform

    Z_train = transform(net, data.X_train)
    Z_test = transform(net, data.X_test)
    accuracy = evaluate(
        Z_train,
        data.y_train,
        Z_test,
        data.y_test,
        num_classes=data.num_classes,
        n_comp=n_comp,
    )
    for split, X, y in (
        ("train", data.X_train, data.y_train),
        ("test", data.X_test, data.y_test),
    ):
        accuracy[split]["pihat"] = float(np.mean(np.asarray(predict(net, X)) == y))
    rates = {}
    for split, X, y in (
        ("train", data.X_train, data.y_train),
        ("test", data.X_test, data.y_test),
    ):
        res = rates_per_layer(net, X, y)
        rates[split] = {
            "true": _rates_lists(res["input"], res["true"]),
            "estimated": _rates_lists(res["input"], res["estimated"]),
        }
    return accuracy, rates, Z_train, Z_test


def _table(rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _summary(metrics: dict) -> str:
    rates, acc = metrics["rates"], metrics["accuracy"]
    rows: list[tuple[str, ...]] = [("", "train", "test")]
    for key, label in (("delta_r", "delta R"), ("r", "R"), ("rc", "Rc")):
        rows.append(
            (label, *(f"{rates[s]['true'][key][-1]:.4f}" for s in ("train", "test")))
        )
    for name in ("nearest_subspace", "svm", "knn", "pihat"):
        rows.append(
            (f"acc {name}", *(f"{acc[s][name]:.4f}" for s in ("train", "test")))
        )
    base = metrics["baseline_accuracy"]
    for name in ("nearest_subspace", "svm", "knn"):
        rows.append(
            (f"inputs {name}", *(f"{base[s][name]:.4f}" for s in ("train", "test")))
        )
    text = _table(rows)
    t = metrics["timings_s"]
    layers = metrics["config"]["layers"]
    return f"{text}\nconstruction {t['construct']:.2f} s ({layers} layers)"


def _run_fit(args) -> int:
    import numpy as np
    from tqdm.auto import tqdm

    from redunet_jax import construct, evaluate, load_dataset, normalize, save
    from redunet_jax.io import atomic_write_bytes
    from redunet_jax.plots import plot_cosine, plot_rates

    config = dict(_defaults_for(args.dataset))
    for key in ("layers", "eta", "eps_sq", "lam"):
        if getattr(args, key) is not None:
            config[key] = getattr(args, key)
    out = _writable_folder(
        args.out or Path("runs") / args.dataset.replace(":", "_").replace("/", "_")
    )

    timings = {}
    start = time.perf_counter()
    data = load_dataset(args.dataset, seed=args.seed, test_size=args.test_size)
    timings["load"] = time.perf_counter() - start
    n_comp = args.n_comp or data.n_comp
    config.update(
        dataset=args.dataset,
        seed=args.seed,
        test_size=args.test_size,
        n_comp=n_comp,
        use_labels=args.use_labels,
        num_classes=data.num_classes,
    )

    bar = tqdm(
        total=config["layers"],
        desc="layers",
        unit="layer",
        disable=args.quiet,
        file=sys.stderr,
    )

    def progress(index, rates):
        bar.update(1)
        bar.set_postfix(delta_r=f"{float(rates.delta_r):.4f}")

    start = time.perf_counter()
    net, Z = construct(
        data.X_train,
        data.y_train,
        num_classes=data.num_classes,
        num_layers=config["layers"],
        eta=config["eta"],
        eps_sq=config["eps_sq"],
        lam=config["lam"],
        use_labels=args.use_labels,
        callback=progress,
    )
    Z.block_until_ready()
    timings["construct"] = time.perf_counter() - start
    timings["construct_per_layer"] = timings["construct"] / config["layers"]
    bar.close()

    start = time.perf_counter()
    accuracy, rates, Z_train, Z_test = _score(net, data, n_comp)
    baseline = evaluate(
        normalize(data.X_train),
        data.y_train,
        normalize(data.X_test),
        data.y_test,
        num_classes=data.num_classes,
        n_comp=n_comp,
    )
    timings["evaluate"] = time.perf_counter() - start

    metrics = {
        "config": config,
        "samples": {"train": int(len(data.y_train)), "test": int(len(data.y_test))},
        "rates": rates,
        "accuracy": accuracy,
        "baseline_accuracy": baseline,
        "timings_s": timings,
        "versions": _versions(),
    }
    save(out / "network.npz", net)
    atomic_write_bytes(out / "metrics.json", json.dumps(metrics, indent=2).encode())
    plot_rates(rates, out / "rates.png", title=f"ReduNet on {args.dataset}")
    plot_cosine(
        {"test inputs": normalize(data.X_test), "test outputs": np.asarray(Z_test)},
        data.y_test,
        out / "cosine.png",
    )
    sys.stdout.write(
        _summary(metrics) + f"\nwrote {out}/ (network.npz, metrics.json, "
        "rates.png, cosine.png)\n"
    )
    return 0


def _run_evaluate(args) -> int:
    from redunet_jax import load, load_dataset

    metrics_path = args.run / "metrics.json"
    if not metrics_path.is_file():
        raise CLIError(f"{args.run} is not a run folder: {metrics_path} is missing")
    try:
        stored = json.loads(metrics_path.read_text())
        config = stored["config"]
        dataset, seed, test_size = (
            config["dataset"],
            config["seed"],
            config["test_size"],
        )
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise CLIError(f"{metrics_path} is not a valid metrics file ({err})") from None
    net = load(args.run / "network.npz")
    data = load_dataset(dataset, seed=seed, test_size=test_size)
    accuracy, _, _, _ = _score(net, data, config.get("n_comp", data.n_comp))
    rows: list[tuple[str, ...]] = [("accuracy", "train", "test", "stored test")]
    for name in ("nearest_subspace", "svm", "knn", "pihat"):
        before = stored.get("accuracy", {}).get("test", {}).get(name)
        rows.append(
            (
                name,
                f"{accuracy['train'][name]:.4f}",
                f"{accuracy['test'][name]:.4f}",
                "-" if before is None else f"{before:.4f}",
            )
        )
    sys.stdout.write(_table(rows) + "\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``redunet`` command; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "fit":
            return _run_fit(args)
        return _run_evaluate(args)
    except (CLIError, ValueError, TypeError, OSError) as err:
        message = str(err).splitlines()[0] if str(err) else type(err).__name__
        sys.stderr.write(f"redunet: error: {message}\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write("redunet: interrupted\n")
        return 130


if __name__ == "__main__":
    sys.exit(main())
