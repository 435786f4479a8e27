"""The ``redunet`` command: construct, evaluate and inspect ReduNets.

The library itself prints nothing; this module owns the progress bar, the
summary tables and the files of a run (``metrics.json``, ``network.npz`` and
the figures).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import NoReturn

import numpy as np

from redunet_jax._classify import usable_n_comp

# Data sets whose test set is drawn or shipped separately.
FIXED_SPLITS = ("gaussian2d", "gaussian3d", "mnist1d")


class CLIError(Exception):
    """A user error reported as one line, with exit status 2."""


class _Parser(argparse.ArgumentParser):
    """An argument parser whose usage errors are one line, with exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _int_at_least(text: str, minimum: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
    return value


def _positive_int(text: str) -> int:
    return _int_at_least(text, 1)


def _non_negative_int(text: str) -> int:
    return _int_at_least(text, 0)


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not (value > 0 and value < float("inf")):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
    return value


def _non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not (0 <= value < float("inf")):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text}")
    return value


def _seed(text: str) -> int:
    value = _int_at_least(text, 0)
    if value >= 2**32:
        raise argparse.ArgumentTypeError(f"must be < 2**32, got {value}")
    return value


def _fraction(text: str) -> float:
    value = _positive_float(text)
    if value >= 1:
        raise argparse.ArgumentTypeError(
            f"must lie strictly between 0 and 1, got {text}"
        )
    return value


def _dataset_name(text: str) -> str:
    from redunet_jax._experiment import DEFAULTS

    if text in DEFAULTS and text != "idx" or text.startswith("idx:") and len(text) > 4:
        return text
    names = ", ".join([n for n in DEFAULTS if n != "idx"] + ["idx:PATH"])
    raise argparse.ArgumentTypeError(
        f"unknown data set {text!r}; choose one of {names}"
    )


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``redunet`` command."""
    parser = _Parser(
        prog="redunet", description="Construct and evaluate ReduNets (rate reduction)."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    fit = sub.add_parser("fit", help="construct a network on a data set")
    fit.add_argument(
        "--dataset",
        type=_dataset_name,
        default="digits",
        help="digits (default), gaussian2d, gaussian3d, sinusoids, "
        "digits-translation, digits-rotation, mnist1d or idx:PATH (a folder of "
        "MNIST-format IDX files)",
    )
    fit.add_argument(
        "--invariant",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="shift-invariant layers (default per data set)",
    )
    fit.add_argument(
        "--lift-channels",
        type=_non_negative_int,
        help="lifting channels of invariant networks (0: no lifting)",
    )
    fit.add_argument("--kernel-size", type=_positive_int, help="lifting kernel size")
    fit.add_argument(
        "--radii", type=_positive_int, help="polar radii of digits-rotation (default 8)"
    )
    fit.add_argument(
        "--angles",
        type=_positive_int,
        help="polar angles of digits-rotation (default 32)",
    )
    fit.add_argument(
        "--layers", type=_positive_int, help="number of layers (default per data set)"
    )
    fit.add_argument("--eta", type=_positive_float, help="step size (default 0.5)")
    fit.add_argument(
        "--eps-sq", type=_positive_float, help="distortion eps^2 (default per data set)"
    )
    fit.add_argument(
        "--lam", type=_positive_float, help="inverse temperature (default 500)"
    )
    fit.add_argument("--seed", type=_seed, default=0, help="split and data seed")
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
    fit.add_argument("--out", help="output folder (default runs/DATASET)")
    fit.add_argument(
        "--checkpoint-every",
        type=_positive_int,
        metavar="N",
        help="checkpoint every N layers in OUT/checkpoint, so that an interrupted "
        "run can resume",
    )
    fit.add_argument(
        "--resume",
        action="store_true",
        help="continue an interrupted run from OUT/checkpoint (same options)",
    )
    fit.add_argument("--quiet", action="store_true", help="no progress bar")

    evaluate = sub.add_parser("evaluate", help="reload a run and score it again")
    evaluate.add_argument("run", type=Path, help="folder written by 'redunet fit'")
    evaluate.add_argument(
        "--network",
        default="network.npz",
        help="network file in the run folder (network_finetuned.npz after "
        "'redunet finetune')",
    )
    evaluate.add_argument(
        "--shifts",
        action="store_true",
        help="also score circularly shifted test sets "
        "(shifts -8, -4, 0, 4, 8 per signal axis)",
    )

    plot = sub.add_parser("plot", help="redraw a run's figures from its files")
    plot.add_argument("run", type=Path, help="folder written by 'redunet fit'")

    tune = sub.add_parser(
        "finetune", help="improve a run's network by back-propagating delta R"
    )
    tune.add_argument("run", type=Path, help="folder written by 'redunet fit'")
    tune.add_argument("--epochs", type=_positive_int, default=5, help="default 5")
    tune.add_argument(
        "--batch-size",
        type=_positive_int,
        default=256,
        help="mini-batch size (default 256)",
    )
    tune.add_argument(
        "--lr", type=_positive_float, default=1e-3, help="learning rate (default 1e-3)"
    )
    tune.add_argument("--optimizer", choices=("adam", "sgd"), default="adam")
    tune.add_argument(
        "--ce-weight",
        type=_non_negative_float,
        default=0.0,
        help="weight of a cross-entropy term on pihat (default 0)",
    )
    tune.add_argument("--seed", type=_seed, default=0, help="mini-batch seed")
    tune.add_argument("--quiet", action="store_true", help="no progress bar")

    bench = sub.add_parser(
        "bench",
        help="time shift-invariant layers: rfft vs full FFT vs dense vs NumPy loop",
    )
    bench.add_argument("--quick", action="store_true", help="tiny grid (seconds)")
    bench.add_argument("--m", type=_positive_int, help="samples (1000)")
    bench.add_argument("--channels", type=_positive_int, help="channels C (16)")
    bench.add_argument(
        "--classes", type=lambda t: _int_at_least(t, 2), help="classes k (10)"
    )
    bench.add_argument(
        "--lengths",
        type=lambda t: _int_at_least(t, 2),
        nargs="+",
        help="signal lengths T of the T grid (32 64 128 256 512)",
    )
    bench.add_argument(
        "--channel-grid",
        type=_positive_int,
        nargs="+",
        help="channels of the C grid (4 8 16 32 64)",
    )
    bench.add_argument(
        "--channel-length",
        type=lambda t: _int_at_least(t, 2),
        help="T of the C grid (64)",
    )
    bench.add_argument("--repeats", type=_positive_int, help="timed calls (3)")
    bench.add_argument(
        "--tolerance",
        type=_non_negative_float,
        default=1e-4,
        help="largest accepted max |difference| between paths (1e-4)",
    )
    bench.add_argument(
        "--memory-layers",
        type=_non_negative_int,
        nargs="+",
        help="depths of the 2D memory constructions (1 25); 0 skips them",
    )
    bench.add_argument(
        "--out", type=Path, default=Path("bench"), help="output folder (./bench)"
    )
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


def _load(config: dict):
    """The run's data set and its network inputs (lifted or flattened)."""
    from redunet_jax import load_dataset
    from redunet_jax._experiment import prepare

    extra = {key: config[key] for key in ("radii", "angles") if key in config}
    raw = load_dataset(
        config["dataset"], seed=config["seed"], test_size=config["test_size"], **extra
    )
    X_train = prepare(raw.X_train, config, seed=config["seed"])
    X_test = prepare(raw.X_test, config, seed=config["seed"])
    return raw, X_train, X_test


def _score(net, raw, X_train, X_test, n_comp: int):
    """Accuracies, per-layer rates and output features of a run's data set."""
    from redunet_jax import (
        evaluate,
        predict,
        rates_per_layer,
        shift_invariant_features,
        transform,
    )

    y_train, y_test, num_classes = raw.y_train, raw.y_test, raw.num_classes

    Z_train = transform(net, X_train)
    Z_test = transform(net, X_test)
    n_comp = usable_n_comp(n_comp, Z_train)
    accuracy = evaluate(
        Z_train, y_train, Z_test, y_test, num_classes=num_classes, n_comp=n_comp
    )
    if net.invariant:
        # The same classifiers on shift-invariant features of the outputs.
        invariant = evaluate(
            shift_invariant_features(Z_train),
            y_train,
            shift_invariant_features(Z_test),
            y_test,
            num_classes=num_classes,
            n_comp=n_comp,
        )
        for split, values in invariant.items():
            accuracy[split].update({f"{k}_invariant": v for k, v in values.items()})
    rates = {}
    for split, X, y in (("train", X_train, y_train), ("test", X_test, y_test)):
        accuracy[split]["pihat"] = float(np.mean(np.asarray(predict(net, X)) == y))
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
    for name in acc["test"]:
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


def _fit_config(args) -> dict:
    from redunet_jax._experiment import defaults_for

    config = defaults_for(args.dataset)
    for key in (
        "layers",
        "eta",
        "eps_sq",
        "lam",
        "invariant",
        "lift_channels",
        "kernel_size",
        "radii",
        "angles",
    ):
        if getattr(args, key) is not None:
            config[key] = getattr(args, key)
    if args.dataset != "digits-rotation" and (args.radii or args.angles):
        raise CLIError("--radii and --angles apply to digits-rotation only")
    if not config["invariant"] and (args.lift_channels is not None or args.kernel_size):
        raise CLIError("--lift-channels and --kernel-size apply to invariant networks")
    if args.angles is not None and args.angles < 2:
        raise CLIError(f"--angles must be >= 2, got {args.angles}")
    config.update(
        dataset=args.dataset,
        seed=args.seed,
        test_size=args.test_size,
        use_labels=args.use_labels,
    )
    return config


def _figures(out: Path, rates: dict, X_test, Z_test, y_test, *, title: str) -> None:
    """Write rates.png (rates per layer) and cosine.png (test heat maps)."""
    from redunet_jax import normalize
    from redunet_jax.plots import plot_cosine, plot_rates

    plot_rates(rates, out / "rates.png", title=title)
    plot_cosine(
        {"test inputs": normalize(X_test), "test outputs": np.asarray(Z_test)},
        y_test,
        out / "cosine.png",
    )


def _run_plot(args) -> int:
    from redunet_jax import transform

    stored, config, net = _load_run(args.run)
    if not isinstance(stored.get("rates"), dict):
        raise CLIError(f"{args.run}/metrics.json holds no per-layer rates")
    raw, _, X_test = _load(config)
    _figures(
        args.run,
        stored["rates"],
        X_test,
        transform(net, X_test),
        raw.y_test,
        title=f"ReduNet on {config['dataset']}",
    )
    sys.stdout.write(f"wrote {args.run}/ (rates.png, cosine.png)\n")
    return 0


def _checkpoint_folder(out: Path, args) -> tuple[Path | None, int | None]:
    """The checkpoint folder of a fit and how often to write it, or ``None``."""
    from redunet_jax._checkpoint import MANIFEST, stored_every

    folder = out / "checkpoint"
    exists = (folder / MANIFEST).is_file()
    if args.resume:
        if not exists:
            raise CLIError(f"--resume: {folder} holds no checkpoint to continue")
        return folder, args.checkpoint_every or stored_every(folder)
    if args.checkpoint_every is None:
        return None, None
    if exists:
        raise CLIError(
            f"{folder} holds a checkpoint of an earlier run; add --resume to "
            "continue it, or remove that folder to start over"
        )
    return folder, args.checkpoint_every


def _resume_hint(folder: Path | None, argv: list[str]) -> str:
    """One line on what an interrupted fit left behind and how to continue."""
    import shlex

    from redunet_jax._checkpoint import stored_layers

    if folder is None:
        return "no checkpoint was written (--checkpoint-every N makes a run resumable)"
    layers = stored_layers(folder)
    if layers is None:
        return f"stopped before the first checkpoint in {folder}; nothing to resume"
    command = shlex.join(
        ["redunet", *argv, *([] if "--resume" in argv else ["--resume"])]
    )
    return f"{folder} holds {layers} layers; continue with: {command}"


@contextlib.contextmanager
def _deferred_interrupt():
    """Turn a first Ctrl-C into a flag, acted on between layers.

    A KeyboardInterrupt raised at an arbitrary point can land in a finalizer,
    where Python reports and drops it, and the run would go on; the flag is
    checked after every layer instead. A second Ctrl-C interrupts at once.
    """
    flag = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def on_interrupt(signum, frame):
        if flag.is_set():
            raise KeyboardInterrupt
        flag.set()

    previous = signal.signal(signal.SIGINT, on_interrupt)
    try:
        yield flag
    finally:
        signal.signal(signal.SIGINT, previous)


def _run_fit(args) -> int:
    config = _fit_config(args)
    name = args.dataset.replace(":", "_").replace("/", "_")
    if args.out is not None and not args.out.strip():
        raise CLIError("--out must name an output folder, got an empty string")
    out = _writable_folder(Path(args.out) if args.out else Path("runs") / name)
    checkpoints = _checkpoint_folder(out, args)
    try:
        return _fit(args, config, out, checkpoints)
    except KeyboardInterrupt:
        argv = getattr(args, "argv", None) or sys.argv[1:]
        raise KeyboardInterrupt(_resume_hint(checkpoints[0], argv)) from None


def _fit(args, config: dict, out: Path, checkpoints) -> int:
    from tqdm.auto import tqdm

    from redunet_jax import construct, evaluate, normalize, save
    from redunet_jax.io import atomic_write_bytes

    timings = {}
    start = time.perf_counter()
    raw, X_train, X_test = _load(config)
    timings["load"] = time.perf_counter() - start
    n_comp = args.n_comp or raw.n_comp
    if args.dataset in FIXED_SPLITS and args.test_size != 0.3 and not args.quiet:
        sys.stderr.write(
            f"note: {args.dataset} has a fixed split; --test-size is ignored\n"
        )
    dimension = int(np.prod(X_train.shape[1:]))
    if args.n_comp is not None and args.n_comp >= dimension:
        raise CLIError(
            f"--n-comp must be smaller than the feature dimension {dimension}, "
            f"got {args.n_comp}"
        )
    config.update(
        n_comp=n_comp, num_classes=raw.num_classes, input_shape=list(X_train.shape[1:])
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
        if interrupted.is_set():
            raise KeyboardInterrupt

    start = time.perf_counter()
    with bar, _deferred_interrupt() as interrupted:  # bar closed before errors
        net, Z = construct(
            X_train,
            raw.y_train,
            num_classes=raw.num_classes,
            num_layers=config["layers"],
            eta=config["eta"],
            eps_sq=config["eps_sq"],
            lam=config["lam"],
            invariant=config["invariant"],
            use_labels=args.use_labels,
            callback=progress,
            checkpoint_dir=checkpoints[0],
            checkpoint_every=checkpoints[1],
        )
        Z.block_until_ready()
        if interrupted.is_set():
            raise KeyboardInterrupt
    timings["construct"] = time.perf_counter() - start
    timings["construct_per_layer"] = timings["construct"] / config["layers"]
    if not args.quiet:
        sys.stderr.write("evaluating: per-layer rates and classifiers...\n")

    start = time.perf_counter()
    accuracy, rates, Z_train, Z_test = _score(net, raw, X_train, X_test, n_comp)
    flat_train = normalize(np.asarray(raw.X_train).reshape(len(raw.y_train), -1))
    flat_test = normalize(np.asarray(raw.X_test).reshape(len(raw.y_test), -1))
    baseline = evaluate(
        flat_train,
        raw.y_train,
        flat_test,
        raw.y_test,
        num_classes=raw.num_classes,
        n_comp=usable_n_comp(n_comp, flat_train),
    )
    timings["evaluate"] = time.perf_counter() - start

    metrics = {
        "config": config,
        "samples": {"train": int(len(raw.y_train)), "test": int(len(raw.y_test))},
        "rates": rates,
        "accuracy": accuracy,
        "baseline_accuracy": baseline,
        "timings_s": timings,
        "versions": _versions(),
    }
    # metrics.json is written last: its presence marks a complete run.
    save(out / "network.npz", net)
    _figures(out, rates, X_test, Z_test, raw.y_test, title=f"ReduNet on {args.dataset}")
    atomic_write_bytes(out / "metrics.json", json.dumps(metrics, indent=2).encode())
    sys.stdout.write(
        _summary(metrics) + f"\nwrote {out}/ (network.npz, metrics.json, "
        "rates.png, cosine.png)\n"
    )
    return 0


def _readouts(net, Z_train, y_train, *, num_classes: int, n_comp: int) -> dict:
    """Prediction functions on network inputs, keyed by read-out name."""
    from redunet_jax import (
        fit_nearest_subspace,
        predict,
        predict_nearest_subspace,
        shift_invariant_features,
        transform,
    )

    n_comp = usable_n_comp(n_comp, Z_train)
    bases = fit_nearest_subspace(
        Z_train, y_train, num_classes=num_classes, n_comp=n_comp
    )
    readouts = {
        "pihat": lambda X: np.asarray(predict(net, X)),
        "nearest_subspace": lambda X: predict_nearest_subspace(
            bases, transform(net, X)
        ),
    }
    if net.invariant:
        spectral = fit_nearest_subspace(
            shift_invariant_features(Z_train),
            y_train,
            num_classes=num_classes,
            n_comp=n_comp,
        )
        readouts["nearest_subspace_invariant"] = lambda X: predict_nearest_subspace(
            spectral, shift_invariant_features(transform(net, X))
        )
    return readouts


def _shift_table(net, raw, config: dict, readouts: dict) -> tuple[list, dict]:
    """Accuracy of each read-out on every circularly shifted copy of the test set.

    Returns the rows (shift and accuracies) and, per read-out, the largest
    number of test predictions that differ from those on the unshifted set,
    plus the largest change of any ``pihat`` entry.
    """
    from redunet_jax import predict_proba
    from redunet_jax._experiment import prepare, roll, shift_grid

    if np.ndim(raw.X_test) < 3:
        raise CLIError(
            f"--shifts needs a data set of signals or images; {config['dataset']} "
            "holds vectors"
        )
    results = []
    for shift in shift_grid(raw.X_test):
        X = prepare(roll(raw.X_test, shift), config, seed=config["seed"])
        guesses = {name: fn(X) for name, fn in readouts.items()}
        results.append((shift, guesses, np.asarray(predict_proba(net, X))))
    _, base_guesses, base_pihat = next(r for r in results if not any(r[0]))

    table = []
    worst: dict[str, float] = {f"changed_{name}": 0 for name in readouts}
    worst["max_pihat_change"] = 0.0
    for shift, guesses, pihat in results:
        row: dict[str, object] = {"shift": list(shift)}
        for name, guess in guesses.items():
            row[name] = float(np.mean(guess == raw.y_test))
            changed = int(np.sum(guess != base_guesses[name]))
            worst[f"changed_{name}"] = max(worst[f"changed_{name}"], changed)
        change = float(np.max(np.abs(pihat - base_pihat)))
        worst["max_pihat_change"] = max(worst["max_pihat_change"], change)
        table.append(row)
    return table, worst


def _stored_accuracy(stored: dict, name: str) -> float | None:
    """A test accuracy recorded in metrics.json, or None if absent or malformed."""
    try:
        value = stored["accuracy"]["test"][name]
    except (KeyError, TypeError):
        return None
    return float(value) if isinstance(value, (int, float)) else None


def _load_run(run: Path, network: str = "network.npz"):
    """The stored metrics, the configuration and the network of a run folder."""
    from redunet_jax import load
    from redunet_jax._experiment import defaults_for

    metrics_path = run / "metrics.json"
    if not metrics_path.is_file():
        raise CLIError(f"{run} is not a run folder: {metrics_path} is missing")
    try:
        stored = json.loads(metrics_path.read_text())
        config = stored["config"]
        missing = [k for k in ("dataset", "seed", "test_size") if k not in config]
        if missing:
            raise KeyError(", ".join(missing))
        config = {**defaults_for(str(config["dataset"])), **config}
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as err:
        raise CLIError(f"{metrics_path} is not a valid metrics file ({err})") from None
    return stored, config, load(run / network)


def _run_evaluate(args) -> int:
    from redunet_jax.io import atomic_write_bytes

    stored, config, net = _load_run(args.run, args.network)
    raw, X_train, X_test = _load(config)
    n_comp = config.get("n_comp", raw.n_comp)
    accuracy, _, Z_train, _ = _score(net, raw, X_train, X_test, n_comp)
    rows: list[tuple[str, ...]] = [
        ("accuracy", "train", "test", "test in metrics.json (network.npz)")
    ]
    for name in accuracy["test"]:
        before = _stored_accuracy(stored, name)
        rows.append(
            (
                name,
                f"{accuracy['train'][name]:.4f}",
                f"{accuracy['test'][name]:.4f}",
                "-" if before is None else f"{before:.4f}",
            )
        )
    text = _table(rows)
    if args.shifts:
        readouts = _readouts(
            net, Z_train, raw.y_train, num_classes=raw.num_classes, n_comp=n_comp
        )
        table, worst = _shift_table(net, raw, config, readouts)
        names = list(readouts)
        shift_rows: list[tuple[str, ...]] = [("shift", *names)]
        for row in table:
            shift_rows.append(
                (str(tuple(row["shift"])), *(f"{row[n]:.4f}" for n in names))
            )
        shift_rows.append(
            ("changed", *(f"{worst['changed_' + n]}/{len(raw.y_test)}" for n in names))
        )
        text += "\n\n" + _table(shift_rows)
        text += (
            f"\nlargest change of any pihat entry: {worst['max_pihat_change']:.2e}"
            "\n(changed: largest number of test predictions that differ from the "
            "unshifted ones; nearest_subspace uses signal-domain features, which "
            "are not shift-invariant)"
        )
        report = {"accuracy": accuracy, "shifts": table, "worst": worst}
        atomic_write_bytes(
            args.run / "shifts.json", json.dumps(report, indent=2).encode()
        )
    sys.stdout.write(text + "\n")
    return 0


def _run_finetune(args) -> int:
    from tqdm.auto import tqdm

    from redunet_jax import save
    from redunet_jax.io import atomic_write_bytes
    from redunet_jax.nnx import finetune
    from redunet_jax.plots import plot_loss

    stored, config, net = _load_run(args.run)
    raw, X_train, X_test = _load(config)
    n_comp = config.get("n_comp", raw.n_comp)
    before, rates_before, _, _ = _score(net, raw, X_train, X_test, n_comp)
    # finetune drops the last partial batch of every epoch
    steps = args.epochs * (len(raw.y_train) // min(args.batch_size, len(raw.y_train)))
    bar = tqdm(
        total=steps, desc="steps", unit="step", disable=args.quiet, file=sys.stderr
    )

    def progress(step, loss, delta_r):
        bar.update(1)
        bar.set_postfix(loss=f"{float(loss):.4f}", delta_r=f"{float(delta_r):.4f}")

    start = time.perf_counter()
    with bar:  # closed before any error message is printed
        tuned, history = finetune(
            net,
            X_train,
            raw.y_train,
            epochs=args.epochs,
            batch_size=args.batch_size,
            learning_rate=args.lr,
            optimizer=args.optimizer,
            ce_weight=args.ce_weight,
            seed=args.seed,
            callback=progress,
        )
    seconds = time.perf_counter() - start
    after, rates_after, _, _ = _score(tuned, raw, X_train, X_test, n_comp)

    settings = {
        key: getattr(args, key)
        for key in ("epochs", "batch_size", "lr", "optimizer", "ce_weight", "seed")
    }
    report = {
        "config": config,
        "finetune": settings,
        "accuracy_before": before,
        "accuracy_after": after,
        "delta_r_before": {
            s: rates_before[s]["true"]["delta_r"][-1] for s in rates_before
        },
        "delta_r_after": {
            s: rates_after[s]["true"]["delta_r"][-1] for s in rates_after
        },
        "history": {k: [float(v) for v in values] for k, values in history.items()},
        "timings_s": {"finetune": seconds},
        "versions": _versions(),
    }
    save(args.run / "network_finetuned.npz", tuned)
    plot_loss(report["history"], args.run / "finetune_loss.png")
    atomic_write_bytes(
        args.run / "finetune_metrics.json", json.dumps(report, indent=2).encode()
    )
    rows: list[tuple[str, ...]] = [("", "before", "after")]
    for split in ("train", "test"):
        rows.append(
            (
                f"{split} delta R",
                f"{report['delta_r_before'][split]:.4f}",
                f"{report['delta_r_after'][split]:.4f}",
            )
        )
    for name in after["test"]:
        rows.append(
            (
                f"test {name}",
                f"{before['test'][name]:.4f}",
                f"{after['test'][name]:.4f}",
            )
        )
    sys.stdout.write(
        _table(rows) + f"\nfine-tuning {seconds:.2f} s; wrote {args.run}/ "
        "(network_finetuned.npz, finetune_metrics.json, finetune_loss.png)\n"
    )
    return 0


def _run_bench(args) -> int:
    from redunet_jax import bench

    config = {
        **(bench.QUICK if args.quick else bench.FULL),
        "memory": dict((bench.QUICK if args.quick else bench.FULL)["memory"]),
    }
    for name in ("m", "channels", "classes", "lengths", "channel_grid"):
        if getattr(args, name) is not None:
            config[name] = getattr(args, name)
    for name in ("channel_length", "repeats"):
        if getattr(args, name) is not None:
            config[name] = getattr(args, name)
    if config["m"] < config["classes"]:
        raise CLIError(
            f"--m {config['m']} is smaller than --classes {config['classes']}: "
            "every class needs a sample"
        )
    if args.memory_layers is not None:
        depths = [d for d in args.memory_layers if d > 0]
        config["memory"] = {**config["memory"], "layers": depths} if depths else None
    out = _writable_folder(args.out)
    try:
        payload = bench.run_benchmark(config, tolerance=args.tolerance)
    except RuntimeError as err:
        raise CLIError(str(err)) from err
    sys.stdout.write(bench.summary_text(payload) + "\n")
    json_path, png_path = bench.write_results(payload, out)
    sys.stdout.write(f"\nwrote {json_path} and {png_path}\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``redunet`` command; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if args.command == "fit":
            return _run_fit(args)
        if args.command == "finetune":
            return _run_finetune(args)
        if args.command == "plot":
            return _run_plot(args)
        if args.command == "bench":
            return _run_bench(args)
        return _run_evaluate(args)
    except (CLIError, ValueError, TypeError, OSError) as err:
        message = str(err).splitlines()[0] if str(err) else type(err).__name__
        sys.stderr.write(f"redunet: error: {message}\n")
        return 2
    except KeyboardInterrupt as err:
        detail = f"; {err}" if str(err) else ""
        sys.stderr.write(f"redunet: interrupted{detail}\n")
        return 130
    except Exception as err:  # noqa: BLE001 - the command never shows a traceback
        message = str(err).splitlines()[0] if str(err) else ""
        sys.stderr.write(
            f"redunet: error: unexpected {type(err).__name__}: {message} "
            "(please report this)\n"
        )
        return 2


def run() -> NoReturn:
    """Console entry point: :func:`main`, then exit with its status.

    After an interrupt the process leaves at once: interpreter shutdown right
    after an interrupted jaxlib computation has been seen to crash
    (segmentation fault) in jaxlib's teardown, which would turn exit status
    130 into 139.
    """
    status = main()
    if status == 130:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(130)
    sys.exit(status)


if __name__ == "__main__":
    run()
