"""Shared helpers of the benchmark scripts: timing and atomic JSON output."""

from __future__ import annotations

import json
import platform
import time
from importlib.metadata import version
from pathlib import Path

import jax

RESULTS = Path(__file__).resolve().parent / "results"


def best_of(fn, repeats: int = 3) -> float:
    """Best wall time of ``fn()`` over ``repeats`` runs; ``fn`` must block."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def environment() -> dict:
    """Library versions and the device the benchmark ran on."""
    return {
        "redunet_jax": version("redunet_jax"),
        "jax": jax.__version__,
        "jaxlib": version("jaxlib"),
        "numpy": version("numpy"),
        "backend": jax.default_backend(),
        "devices": [str(d) for d in jax.devices()],
        "python": platform.python_version(),
        "machine": platform.machine(),
    }


def write_json(name: str, payload: dict, out: Path | None = None) -> Path:
    """Write ``payload`` atomically to ``out`` or ``benchmarks/results/NAME``."""
    from redunet_jax.io import atomic_write_bytes

    path = out or RESULTS / name
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, json.dumps(payload, indent=2).encode())
    return path
