"""Run every benchmark of the repository and collect their JSON in one folder.

- the shift-invariant layer grid of ``redunet bench`` (rfft vs full FFT vs
  dense vs NumPy loop, throughput, compile time, 2D memory), with its figure;
- the vector construction against NumPy (``bench_vector.py``).

Usage: python benchmarks/run_all.py [--quick] [--out DIR]   (default DIR:
benchmarks/results). Exits non-zero if any benchmark fails its correctness
checks.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny grids (minutes)")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    quick = ["--quick"] if args.quick else []

    commands = {
        "spectral": [
            sys.executable,
            "-m",
            "redunet_jax.cli",
            "bench",
            *quick,
            "--out",
            str(args.out),
        ],
        "vector": [
            sys.executable,
            str(HERE / "bench_vector.py"),
            *quick,
            "--out",
            str(args.out / "bench_vector.json"),
        ],
    }
    failed = []
    for name, command in commands.items():
        sys.stdout.write(f"== {name}: {' '.join(command[1:])}\n")
        sys.stdout.flush()
        if subprocess.run(command, check=False).returncode != 0:
            failed.append(name)
    if failed:
        sys.stderr.write(f"failed: {', '.join(failed)}\n")
        return 1
    sys.stdout.write(f"all benchmarks written to {args.out}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
