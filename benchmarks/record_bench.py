"""Record a ``redunet bench`` run: committed JSON and the README's speed section.

Copies the run's ``bench.json`` to ``benchmarks/bench_cpu.json`` (committed,
plotted by ``notebooks/06_spectral_speedup.ipynb``) and rewrites the README
block between ``<!-- bench:start -->`` and ``<!-- bench:end -->`` from it,
atomically. ``--render`` rewrites the README from the committed JSON only.

Usage:
  redunet bench --out bench && python benchmarks/record_bench.py bench/bench.json
  python benchmarks/record_bench.py --render
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from redunet_jax.bench import markdown_summary
from redunet_jax.io import atomic_write_bytes

ROOT = Path(__file__).resolve().parents[1]
RECORD = ROOT / "benchmarks" / "bench_cpu.json"
README = ROOT / "README.md"
START, END = "<!-- bench:start -->", "<!-- bench:end -->"


def replace_block(text: str, block: str) -> str:
    """``text`` with the content between the bench markers replaced by ``block``."""
    if text.count(START) != 1 or text.count(END) != 1:
        raise ValueError(f"the README must hold {START} and {END} exactly once")
    head, rest = text.split(START)
    _, tail = rest.split(END)
    return f"{head}{START}\n{block}\n{END}{tail}"


def readme_block(text: str) -> str:
    """The current content between the bench markers."""
    return text.split(START)[1].split(END)[0].strip("\n")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("json", nargs="?", type=Path, help="bench.json of a run")
    parser.add_argument("--render", action="store_true", help="README only")
    args = parser.parse_args(argv)
    if not args.render:
        if args.json is None:
            parser.error("give the bench.json of a run, or --render")
        payload = json.loads(args.json.read_text())
        if payload.get("config", {}).get("lengths") == [8, 16, 32]:
            parser.error("refusing to record a --quick run")
        atomic_write_bytes(RECORD, json.dumps(payload, indent=2).encode())
    payload = json.loads(RECORD.read_text())
    text = replace_block(README.read_text(), markdown_summary(payload))
    atomic_write_bytes(README, text.encode())
    sys.stdout.write(f"wrote {README}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
