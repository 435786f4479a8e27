import json
import os
import subprocess
import sys

import pytest

from redunet_jax import load
from redunet_jax.cli import main


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    status = main(
        [
            "fit",
            "--dataset",
            "gaussian2d",
            "--layers",
            "6",
            "--out",
            str(out),
            "--quiet",
        ]
    )
    assert status == 0
    return out


def test_fit_writes_every_artifact(run_dir):
    assert sorted(os.listdir(run_dir)) == [
        "cosine.png",
        "metrics.json",
        "network.npz",
        "rates.png",
    ]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["config"]["layers"] == 6 and metrics["config"]["eps_sq"] == 0.1
    for split in ("train", "test"):
        for labels in ("true", "estimated"):
            rates = metrics["rates"][split][labels]
            assert len(rates["delta_r"]) == 7  # the input, then each layer
            assert set(rates) == {"delta_r", "r", "rc"}
        assert set(metrics["accuracy"][split]) == {
            "nearest_subspace",
            "svm",
            "knn",
            "pihat",
        }
    assert metrics["accuracy"]["test"]["nearest_subspace"] > 0.9
    assert metrics["versions"]["backend"] == "cpu"
    assert metrics["timings_s"]["construct"] > 0
    assert load(run_dir / "network.npz").num_layers == 6
    for png in ("rates.png", "cosine.png"):
        assert (run_dir / png).read_bytes()[:4] == b"\x89PNG"


def test_fit_prints_summary(tmp_path, capsys):
    assert (
        main(
            [
                "fit",
                "--dataset",
                "gaussian3d",
                "--layers",
                "2",
                "--out",
                str(tmp_path),
                "--quiet",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    for word in (
        "delta R",
        "acc nearest_subspace",
        "acc svm",
        "acc knn",
        "inputs nearest_subspace",
        "construction",
    ):
        assert word in out


def test_evaluate_reproduces_stored_accuracy(run_dir, capsys):
    assert main(["evaluate", str(run_dir)]) == 0
    out = capsys.readouterr().out
    stored = json.loads((run_dir / "metrics.json").read_text())["accuracy"]["test"]
    line = next(x for x in out.splitlines() if x.startswith("nearest_subspace"))
    assert f"{stored['nearest_subspace']:.4f}" in line.split()[2]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["fit", "--layers", "-3"], "must be >= 1"),
        (["fit", "--layers", "two"], "expected an integer"),
        (["fit", "--eta", "0"], "must be a finite number > 0"),
        (["fit", "--eps-sq", "nan"], "must be a finite number > 0"),
        (["fit", "--dataset", "imagenet"], "unknown data set"),
        (["fit", "--test-size", "1.2"], "strictly between"),
        (["frobnicate"], "invalid choice"),
    ],
)
def test_bad_arguments_give_one_line_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_runtime_errors_are_one_line(tmp_path, capsys):
    blocked = tmp_path / "file"
    blocked.write_text("not a folder")
    assert main(["fit", "--out", str(blocked / "sub"), "--quiet"]) == 2
    assert "cannot write to output folder" in capsys.readouterr().err
    assert main(["evaluate", str(tmp_path)]) == 2
    assert "not a run folder" in capsys.readouterr().err
    assert (
        main(
            [
                "fit",
                "--dataset",
                f"idx:{tmp_path}",
                "--quiet",
                "--out",
                str(tmp_path / "o"),
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert err.startswith("redunet: error:") and len(err.strip().splitlines()) == 1


def test_console_script_runs_without_traceback(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "redunet_jax.cli", "fit", "--layers", "0"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr and "--layers" in result.stderr


def test_invariant_fit_and_shift_evaluation(tmp_path, capsys):
    out = tmp_path / "sin"
    assert (
        main(
            [
                "fit",
                "--dataset",
                "sinusoids",
                "--layers",
                "3",
                "--lift-channels",
                "4",
                "--out",
                str(out),
                "--quiet",
            ]
        )
        == 0
    )
    config = json.loads((out / "metrics.json").read_text())["config"]
    assert config["invariant"] and config["lift_channels"] == 4
    assert config["input_shape"] == [4, 150]
    capsys.readouterr()
    assert main(["evaluate", str(out), "--shifts"]) == 0
    text = capsys.readouterr().out
    assert "(-8,)" in text and "(8,)" in text
    report = json.loads((out / "shifts.json").read_text())
    assert len(report["shifts"]) == 5
    assert report["worst"]["changed_pihat"] == 0
    assert report["worst"]["changed_nearest_subspace_invariant"] == 0
    assert report["worst"]["max_pihat_change"] < 1e-4
    pihat = {row["pihat"] for row in report["shifts"]}
    assert len(pihat) == 1  # identical accuracy on every shifted test set


def test_vector_network_on_images_and_shift_errors(tmp_path, capsys):
    out = tmp_path / "flat"
    assert (
        main(
            [
                "fit",
                "--dataset",
                "digits-translation",
                "--no-invariant",
                "--layers",
                "2",
                "--out",
                str(out),
                "--quiet",
            ]
        )
        == 0
    )
    config = json.loads((out / "metrics.json").read_text())["config"]
    assert not config["invariant"] and config["input_shape"] == [64]
    assert main(["evaluate", str(out), "--shifts"]) == 0
    report = json.loads((out / "shifts.json").read_text())
    assert len(report["shifts"]) == 25
    capsys.readouterr()
    vector = tmp_path / "vec"
    assert (
        main(
            [
                "fit",
                "--dataset",
                "gaussian2d",
                "--layers",
                "2",
                "--out",
                str(vector),
                "--quiet",
            ]
        )
        == 0
    )
    assert main(["evaluate", str(vector), "--shifts"]) == 2
    assert "holds vectors" in capsys.readouterr().err
    assert (
        main(
            [
                "fit",
                "--dataset",
                "gaussian2d",
                "--invariant",
                "--layers",
                "2",
                "--out",
                str(vector),
                "--quiet",
            ]
        )
        == 2
    )
    assert "need signals" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv, message",
    [
        (
            ["fit", "--dataset", "gaussian2d", "--n-comp", "2"],
            "--n-comp must be smaller",
        ),
        (["fit", "--dataset", "digits", "--radii", "4"], "digits-rotation only"),
        (["fit", "--dataset", "digits", "--lift-channels", "4"], "invariant networks"),
        (["fit", "--out", ""], "empty string"),
    ],
)
def test_inconsistent_options_are_one_line_errors(argv, message, capsys, tmp_path):
    assert main([*argv, "--quiet"]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_evaluate_tolerates_older_configs_and_reports_bad_networks(
    run_dir, tmp_path, capsys
):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy)
    metrics = json.loads((copy / "metrics.json").read_text())
    for key in ("invariant", "lift_channels", "kernel_size"):
        metrics["config"].pop(key, None)
    metrics["accuracy"] = "not a table"
    (copy / "metrics.json").write_text(json.dumps(metrics))
    assert main(["evaluate", str(copy)]) == 0
    (copy / "network.npz").write_bytes(b"PK\x03\x04 broken")
    capsys.readouterr()
    assert main(["evaluate", str(copy)]) == 2
    err = capsys.readouterr().err
    assert "network" in err and len(err.strip().splitlines()) == 1


def test_finetune_writes_a_loadable_network(run_dir, tmp_path, capsys):
    import shutil

    copy = tmp_path / "tune"
    shutil.copytree(run_dir, copy)
    assert (
        main(
            [
                "finetune",
                str(copy),
                "--epochs",
                "1",
                "--batch-size",
                "200",
                "--lr",
                "1e-3",
                "--quiet",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "test delta R" in out and "fine-tuning" in out
    report = json.loads((copy / "finetune_metrics.json").read_text())
    assert len(report["history"]["loss"]) == 5  # 1000 samples in batches of 200
    assert set(report["accuracy_after"]["test"]) >= {"nearest_subspace", "pihat"}
    assert load(copy / "network_finetuned.npz").num_layers == 6
    assert (copy / "finetune_loss.png").read_bytes()[:4] == b"\x89PNG"
    assert main(["evaluate", str(copy), "--network", "network_finetuned.npz"]) == 0
    with pytest.raises(SystemExit):
        main(["finetune", str(copy), "--optimizer", "rmsprop"])
    assert "invalid choice" in capsys.readouterr().err


def test_plot_redraws_the_figures(run_dir, tmp_path, capsys):
    import shutil

    copy = tmp_path / "plot"
    shutil.copytree(run_dir, copy)
    for png in ("rates.png", "cosine.png"):
        (copy / png).unlink()
    assert main(["plot", str(copy)]) == 0
    for png in ("rates.png", "cosine.png"):
        assert (copy / png).read_bytes()[:4] == b"\x89PNG"
    assert main(["plot", str(tmp_path / "nowhere")]) == 2
    assert "not a run folder" in capsys.readouterr().err
