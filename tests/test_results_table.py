"""The README's results table is the rendering of the committed measurements,
and a row measured again gives the same numbers as before and as ``redunet fit``."""

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location(
    "results_table", ROOT / "benchmarks" / "results_table.py"
)
assert _spec is not None and _spec.loader is not None
results_table = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(results_table)


def committed() -> dict:
    return json.loads(results_table.RESULTS_JSON.read_text())


def test_committed_json_holds_every_row_in_order():
    rows = committed()["rows"]
    assert [row["id"] for row in rows] == [name for name, _, _ in results_table.ROWS]
    for row in rows:
        assert row["arguments"] == list(results_table.row_spec(row["id"])[0])
        assert set(results_table.READOUTS) <= set(row["accuracy"]["test"])
        assert row["construct_s"] > 0
        assert ("shifts" in row) == results_table.row_spec(row["id"])[1]


def test_readme_block_is_the_rendering_of_the_committed_json():
    text = results_table.README.read_text()
    assert results_table.readme_block(text) == results_table.render(committed())


def test_rendering_has_one_line_per_row_and_read_out():
    results = committed()
    lines = results_table.render(results).splitlines()
    rows = results["rows"]
    body = [line for line in lines if line.startswith("| ") and "---" not in line]
    shift_lines = sum(len(row.get("shifts", {})) for row in rows)
    assert len(body) == 2 + len(rows) + shift_lines  # two header lines
    digits = next(line for line in body if line.startswith("| digits | vector"))
    accuracy = rows[0]["accuracy"]["test"]
    assert f"{accuracy['nearest_subspace']:.3f} / {accuracy['svm']:.3f}" in digits


def test_replace_block_keeps_the_rest_and_checks_the_markers():
    start, end = results_table.START, results_table.END
    text = f"head\n{start}\nold\n{end}\ntail\n"
    new = results_table.replace_block(text, "new")
    assert new == f"head\n{start}\nnew\n{end}\ntail\n"
    assert results_table.replace_block(new, "new") == new
    assert results_table.readme_block(new) == "new"
    for bad in ("no markers", f"{start}{start}{end}", f"{end}\n{start}\n"):
        with pytest.raises(ValueError):
            results_table.replace_block(bad, "x")


def test_write_readme_rewrites_only_the_block(tmp_path):
    readme = tmp_path / "README.md"
    start, end = results_table.START, results_table.END
    readme.write_text(f"# title\n\n{start}\nstale\n{end}\n\nmore text\n")
    results_table.write_readme(committed(), readme)
    text = readme.read_text()
    assert text.startswith("# title\n\n") and text.endswith("\n\nmore text\n")
    assert results_table.readme_block(text) == results_table.render(committed())


def test_closed_form_rates_are_those_of_math_md():
    two = results_table.closed_form_rates(2)
    three = results_table.closed_form_rates(3)
    assert [round(v, 4) for v in (two.r, two.rc, two.delta_r)] == [
        2.3979,
        1.5223,
        0.8756,
    ]
    assert [round(v, 4) for v in (three.r, three.rc, three.delta_r)] == [
        3.5968,
        1.7170,
        1.8798,
    ]


def test_unknown_row_is_refused():
    with pytest.raises(KeyError, match="digits/vector"):
        results_table.row_spec("digits/unknown")


def _redunet_command() -> list[str]:
    script = Path(sys.executable).with_name("redunet")
    if script.is_file():
        return [str(script)]
    found = shutil.which("redunet")
    return [found] if found else [sys.executable, "-m", "redunet_jax.cli"]


def test_digits_row_is_reproduced_exactly_and_equals_redunet_fit(tmp_path):
    stored = {row["id"]: row for row in committed()["rows"]}["digits/vector"]
    row = results_table.run_row("digits/vector", tmp_path / "script")

    # Deterministic: the same accuracies as the committed measurement.
    assert row["accuracy"] == stored["accuracy"]
    assert row["inputs_accuracy"] == stored["inputs_accuracy"]
    for split in ("train", "test"):
        for key in ("delta_r", "r", "rc"):
            assert row["rates"][split][key] == pytest.approx(
                stored["rates"][split][key], rel=1e-5
            )

    # The installed command on the same settings prints and stores the same.
    out = tmp_path / "command"
    done = subprocess.run(
        [*_redunet_command(), "fit", *row["arguments"], "--out", str(out), "--quiet"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["accuracy"] == row["accuracy"]
    assert metrics["baseline_accuracy"] == row["inputs_accuracy"]
    assert metrics["config"]["layers"] == row["layers"] == 30
    test = row["accuracy"]["test"]
    for name in results_table.READOUTS:
        assert f"{test[name]:.4f}" in done.stdout
