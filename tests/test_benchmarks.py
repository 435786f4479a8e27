"""The benchmark scripts check themselves and write their JSON on tiny sizes."""

import json
import math
import subprocess
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def run_spectral(*args):
    return subprocess.run(
        [sys.executable, str(BENCHMARKS / "bench_spectral.py"), "--quick", *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_bench_spectral_quick_agrees_and_writes_json(tmp_path):
    out = tmp_path / "bench_spectral.json"
    done = run_spectral("--out", str(out))
    assert done.returncode == 0, done.stderr
    result = json.loads(out.read_text())

    checks = result["correctness"]
    assert checks and all(row["agree"] for row in checks)
    dense_checked = [row for row in checks if "max_abs_diff_dense_vs_numpy" in row]
    assert len(dense_checked) == len(result["config"]["dense_lengths"])
    for row in checks:
        assert row["max_abs_diff_spectral_vs_numpy"] < 1e-3 * row["max_abs_move"]
    for row in result["comparison"]:
        assert min(row["spectral_s"], row["dense_s"], row["numpy_s"]) > 0
    for fit in result["scaling"].values():
        assert len(fit["sizes"]) == len(fit["spectral_s"]) >= 2
        assert math.isfinite(fit["exponent"])
    memory = result["memory_2d"]
    assert memory["layer_peak_rss_mib"] >= memory["baseline_peak_rss_mib"] > 0
    assert memory["fits_4_gib"] and memory["layer_step_s"] > 0


def test_bench_spectral_exits_nonzero_when_paths_disagree(tmp_path):
    out = tmp_path / "bench_spectral.json"
    done = run_spectral("--tolerance", "0", "--out", str(out))
    assert done.returncode != 0
    assert "disagree" in done.stderr
    assert not out.exists()


def test_bench_vector_quick_agrees_and_writes_json(tmp_path):
    out = tmp_path / "bench_vector.json"
    done = subprocess.run(
        [
            sys.executable,
            str(BENCHMARKS / "bench_vector.py"),
            "--quick",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    rows = json.loads(out.read_text())["results"]
    assert rows and all(row["agree"] and row["speedup"] > 0 for row in rows)
