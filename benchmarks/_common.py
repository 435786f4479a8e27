"""Shared helpers of the benchmark scripts: timing and atomic JSON output.

Timing and the environment record are the library's own (``redunet bench``).
"""

from __future__ import annotations

import json
from pathlib import Path

from redunet_jax.bench import best_of, environment

__all__ = ["RESULTS", "best_of", "environment", "write_json"]

RESULTS = Path(__file__).resolve().parent / "results"


def write_json(name: str, payload: dict, out: Path | None = None) -> Path:
    """Write ``payload`` atomically to ``out`` or ``benchmarks/results/NAME``."""
    from redunet_jax.io import atomic_write_bytes

    path = out or RESULTS / name
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, json.dumps(payload, indent=2).encode())
    return path
