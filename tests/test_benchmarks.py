"""The benchmark scripts check themselves and write their JSON on tiny sizes."""

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def run_bench(tmp_path, *args):
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "redunet_jax.cli",
            "bench",
            "--quick",
            "--out",
            str(tmp_path),
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=400,
        check=False,
    )


def test_redunet_bench_quick_agrees_and_writes_json_and_figure(tmp_path):
    done = run_bench(tmp_path)
    assert done.returncode == 0, done.stderr
    result = json.loads((tmp_path / "bench.json").read_text())
    assert (tmp_path / "bench.png").stat().st_size > 1000

    checks = result["correctness"]
    assert checks and all(row["agree"] for row in checks)
    for row in checks:
        assert row["reference"] == "numpy" and set(row["max_abs_diff"]) >= {"rfft"}
        assert max(row["max_abs_diff"].values()) < 1e-3 * row["max_abs_move"]
    assert any("dense" in row["max_abs_diff"] for row in checks)
    for row in result["comparison"]:
        assert min(row["rfft_s"], row["fft_s"], row["numpy_s"]) > 0
    for by_path in result["scaling"].values():
        assert math.isfinite(by_path["rfft"]["exponent"])

    throughput = result["throughput"]
    assert throughput["matmul_2048_float32_gflops"] > 0
    assert throughput["class_covariances"]["ratio"] > 0
    for row in [*throughput["phases"].values(), throughput["layer"]]:
        assert row["gflops"] > 0 and 0 < row["fraction_of_matmul"] < 1
    layer = throughput["layer"]
    assert throughput["rounds"] >= 20
    assert layer["median_seconds"] >= layer["seconds"] > 0
    assert 0 < layer["median_fraction_of_matmul"] < 1
    # Deeper networks reuse the one compiled layer step.
    assert set(result["compile"]["compiled_steps_by_num_layers"].values()) == {1}
    rows = result["memory_2d"]["constructions"]
    assert [row["num_layers"] for row in rows] == [1, 3]
    assert rows[1]["network_mib"] == 3 * rows[0]["network_mib"] > 0


def test_redunet_bench_fails_when_paths_disagree(tmp_path):
    done = run_bench(tmp_path, "--tolerance", "0", "--memory-layers", "0")
    assert done.returncode == 2
    assert "disagree" in done.stderr and len(done.stderr.splitlines()) == 1
    assert not (tmp_path / "bench.json").exists()


def test_numpy_loop_matches_the_library_layer():
    """The baseline must compute the same layer, or the speed-up means nothing."""
    from redunet_jax.bench import Case, fft_path, numpy_path, synthetic_signals

    Z, y = synthetic_signals(Case(m=30, C=2, T=10, k=3))
    results = {}
    for name, (run, decode) in {
        "numpy": numpy_path(Z, y, 3),
        "fft": fft_path(Z, y, 3),
    }.items():
        results[name] = decode(run())
    assert np.max(np.abs(results["numpy"] - Z)) > 1e-3
    np.testing.assert_allclose(results["fft"], results["numpy"], atol=1e-6)


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


def test_numerics_matrix_quick_is_finite_within_tolerance(tmp_path):
    done = subprocess.run(
        [
            sys.executable,
            str(BENCHMARKS / "numerics_matrix.py"),
            "--quick",
            "--out-dir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=400,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "| version | case | bfloat16 | float16 | float32 |" in done.stdout
    result = json.loads((tmp_path / "numerics_matrix.json").read_text())
    assert result["failures"] == 0
    rows = result["results"]
    cases = result["config"]["cases"]
    assert len(rows) == 2 * len(cases) * 3 * 5  # versions, cases, dtypes, quantities
    status = {(r["kind"], r["case"], r["dtype"], r["quantity"]): r for r in rows}
    for kind in ("vector", "invariant"):
        # Unnormalized 1e30 features overflow float32 rates by definition.
        for dtype in ("bfloat16", "float32"):
            row = status[kind, "norm=1e+30", dtype, "rates"]
            assert row["status"] == "expected error" and "too large" in row["message"]
            assert status[kind, "norm=1e+30", dtype, "construct"]["status"] == "ok"
        assert status[kind, "norm=1e+30", "float16", "rates"]["status"] == (
            "not representable"
        )
        row = status[kind, "norm=1e-30", "float16", "construct"]
        assert row["status"] == "expected error" and "collapsed" in row["message"]
    checked = [r for r in rows if r["status"] == "ok"]
    assert len(checked) > len(rows) // 2
    for row in checked:
        assert row["finite"] and 0 <= row["max_error"] <= row["tolerance"]
    markdown = (tmp_path / "numerics_matrix.md").read_text()
    assert "| vector | zeros |" in markdown and "## Every quantity" in markdown


def test_readme_speed_section_is_the_recorded_run():
    """The README's speed block is rendered from the committed benchmark JSON."""
    sys.path.insert(0, str(BENCHMARKS))
    try:
        import record_bench
    finally:
        sys.path.remove(str(BENCHMARKS))
    from redunet_jax.bench import markdown_summary

    payload = json.loads(record_bench.RECORD.read_text())
    assert payload["config"]["m"] >= 1000 and payload["comparison"]
    text = record_bench.README.read_text()
    assert record_bench.readme_block(text) == markdown_summary(payload)
    assert all(row["agree"] for row in payload["correctness"])


def test_interleaved_timing_alternates_the_calls():
    from redunet_jax.bench import interleaved

    order = []
    times = interleaved(
        {"a": lambda: order.append("a"), "b": lambda: order.append("b")}, 3
    )
    assert order == ["a", "b"] * 3
    assert {name: len(t) for name, t in times.items()} == {"a": 3, "b": 3}
    assert all(t >= 0 for seconds in times.values() for t in seconds)
