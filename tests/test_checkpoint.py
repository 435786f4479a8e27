"""Checkpointed construction: bit-identical resume and refusal of bad files."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from redunet_jax import construct, load_dataset, save
from redunet_jax.cli import main

LAYERS = 6


def _data(invariant):
    rng = np.random.default_rng(0)
    # Invariant: equal classes of 40 samples, two blocks each, so the class
    # covariances are sums over several blocks.
    m = 120 if invariant else 60
    shape = (m, 2, 8) if invariant else (m, 5)
    return rng.standard_normal(shape).astype(np.float32), np.arange(m) % 3


def _build(invariant, **kwargs):
    X, y = _data(invariant)
    seen = []
    kwargs.setdefault("num_layers", LAYERS)
    kwargs.setdefault("eta", 0.5)
    kwargs.setdefault("callback", lambda i, r: seen.append((i, np.asarray(r))))
    net, Z = construct(X, y, num_classes=3, eps_sq=0.2, invariant=invariant, **kwargs)
    return net, Z, seen


@pytest.fixture(scope="module", params=[False, True], ids=["vector", "invariant"])
def reference(request):
    """An uninterrupted run without checkpoints."""
    return request.param, _build(request.param)


def assert_bit_identical(result, expected):
    (net, Z, seen), (net0, Z0, seen0) = result, expected
    assert net.num_layers == net0.num_layers
    for a, b in zip(jax.tree.leaves(net), jax.tree.leaves(net0), strict=True):
        assert a.dtype == b.dtype and np.array_equal(np.asarray(a), np.asarray(b))
    assert Z.dtype == Z0.dtype and np.array_equal(np.asarray(Z), np.asarray(Z0))
    assert [i for i, _ in seen] == list(range(net0.num_layers))
    for (i, rates), (_, rates0) in zip(seen, seen0, strict=True):
        assert np.array_equal(rates, rates0), f"rates of layer {i} differ"


def _manifest(folder):
    return json.loads((folder / "manifest.json").read_text())


def _interrupt_at(layer):
    def callback(index, rates):
        if index == layer:
            raise KeyboardInterrupt

    return callback


def test_interrupted_then_resumed_is_bit_identical(reference, tmp_path):
    invariant, expected = reference
    with pytest.raises(KeyboardInterrupt):
        _build(
            invariant,
            checkpoint_dir=tmp_path,
            checkpoint_every=2,
            callback=_interrupt_at(3),
        )
    # layer 3's rates are reported by the step that builds layer 4, after
    # the checkpoint of layers 0-3
    manifest = _manifest(tmp_path)
    assert manifest["layers"] == 4
    Z_dtype = manifest["state"]["arrays"]["Z"]["dtype"]
    assert Z_dtype == ("<c8" if invariant else "<f4")  # features as held

    result = _build(invariant, checkpoint_dir=tmp_path, checkpoint_every=2)
    assert_bit_identical(result, expected)
    assert _manifest(tmp_path)["layers"] == LAYERS
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == [
        "layers-000000-000002.npz",
        "layers-000002-000004.npz",
        "layers-000004-000006.npz",
        "manifest.json",
        "state-000006.npz",
    ]


def test_shorter_run_is_extended_and_longer_checkpoint_refused(reference, tmp_path):
    invariant, expected = reference
    _build(invariant, num_layers=4, checkpoint_dir=tmp_path, checkpoint_every=3)
    assert _manifest(tmp_path)["layers"] == 4  # the final state is checkpointed
    result = _build(invariant, checkpoint_dir=tmp_path)  # default: every layer
    assert_bit_identical(result, expected)
    with pytest.raises(ValueError, match="holds 6 layers, more than num_layers=3"):
        _build(invariant, num_layers=3, checkpoint_dir=tmp_path)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A vector checkpoint of 4 layers (2 blocks)."""
    folder = tmp_path_factory.mktemp("saved")
    _build(False, num_layers=4, checkpoint_dir=folder, checkpoint_every=2)
    return folder


@pytest.fixture
def copy(saved, tmp_path):
    target = tmp_path / "ckpt"
    shutil.copytree(saved, target)
    return target


def _resume(folder, **kwargs):
    return _build(False, checkpoint_dir=folder, **kwargs)


def _expect_refusal(folder, message, **kwargs):
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    with pytest.raises(ValueError, match=message) as info:
        _resume(folder, **kwargs)
    after = {p.name: p.read_bytes() for p in folder.iterdir()}
    assert after == before  # a refused checkpoint is left as it was
    return str(info.value)


def test_flipped_bytes_are_detected(copy):
    state = copy / "state-000004.npz"
    with np.load(state) as archive:
        Z = archive["Z"]
    data = state.read_bytes()
    position = data.find(Z.tobytes()[:64]) + 10  # inside Z's payload
    corrupted = bytearray(data)
    corrupted[position] ^= 0xFF
    state.write_bytes(bytes(corrupted))
    message = _expect_refusal(copy, "corrupted")
    assert str(state) in message and "CRC" in message


def test_modified_array_fails_its_checksum(copy):
    block = copy / "layers-000000-000002.npz"
    with np.load(block) as archive:
        arrays = {name: archive[name] for name in archive.files}
    arrays["E"] = arrays["E"].copy()
    arrays["E"][0, 0, 0] += 1e-3  # a valid archive with a changed value
    np.savez(block, **arrays)
    message = _expect_refusal(copy, "checksum mismatch for array E")
    assert str(block) in message


def test_truncated_files_are_detected(copy):
    state = copy / "state-000004.npz"
    state.write_bytes(state.read_bytes()[:-100])
    assert str(state) in _expect_refusal(copy, "truncated")
    manifest = copy / "manifest.json"
    manifest.write_bytes(manifest.read_bytes()[:200])
    assert str(manifest) in _expect_refusal(copy, "not a valid checkpoint manifest")


def test_missing_block_is_detected(copy):
    (copy / "layers-000002-000004.npz").unlink()
    _expect_refusal(copy, "layers-000002-000004.npz is missing")


def _edit_manifest(folder, change):
    manifest = _manifest(folder)
    change(manifest)
    (folder / "manifest.json").write_text(json.dumps(manifest))


@pytest.mark.parametrize(
    "change",
    [
        lambda m: m.update(library_version="99.0.0"),
        lambda m: m.update(format_version=m["format_version"] + 1),
    ],
    ids=["library", "format"],
)
def test_newer_version_is_refused(copy, change):
    _edit_manifest(copy, change)
    message = _expect_refusal(copy, "newer than this library")
    assert str(copy / "manifest.json") in message


def test_older_version_is_refused(copy):
    _edit_manifest(copy, lambda m: m.update(library_version="0.0.1"))
    _expect_refusal(copy, "written by redunet_jax 0.0.1.*not mixed")


def test_file_names_in_the_manifest_cannot_leave_the_folder(copy):
    def escape(manifest):
        manifest["blocks"][0]["file"] = "../../layers-000000-000002.npz"

    _edit_manifest(copy, escape)
    _expect_refusal(copy, "malformed")


def test_other_inputs_or_settings_are_refused(copy):
    X, y = _data(False)
    with pytest.raises(ValueError, match="belongs to different inputs: X differs"):
        construct(
            X + 1e-3, y, num_classes=3, num_layers=6, eps_sq=0.2, checkpoint_dir=copy
        )
    with pytest.raises(ValueError, match="different inputs: labels differs"):
        construct(
            X, y[::-1], num_classes=3, num_layers=6, eps_sq=0.2, checkpoint_dir=copy
        )
    message = _expect_refusal(copy, "different settings", eta=0.4)
    assert "eta=0.5 in the checkpoint, 0.4 now" in message
    _expect_refusal(copy, "use_labels=False in the checkpoint", use_labels=True)
    _expect_refusal(copy, "chunk_size=None in the checkpoint, 7 now", chunk_size=7)
    assert _manifest(copy)["layers"] == 4


def test_checkpoint_arguments_are_checked(tmp_path):
    X, y = _data(False)
    with pytest.raises(ValueError, match="checkpoint_every needs a checkpoint_dir"):
        construct(X, y, num_classes=3, num_layers=2, checkpoint_every=2)
    with pytest.raises(ValueError, match="checkpoint_every must be >= 1"):
        construct(
            X,
            y,
            num_classes=3,
            num_layers=2,
            checkpoint_dir=tmp_path,
            checkpoint_every=0,
        )
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(ValueError, match="is not a folder"):
        construct(X, y, num_classes=3, num_layers=2, checkpoint_dir=blocker)
    with pytest.raises(TypeError, match="checkpoint_dir must be a str"):
        construct(X, y, num_classes=3, num_layers=2, checkpoint_dir=3)


# The command line: a run killed mid-construction resumes to the same network.

FIT = ["fit", "--dataset", "gaussian2d", "--layers", "200", "--quiet"]


def _start_fit(out, *extra, fit=FIT):
    command = [sys.executable, "-m", "redunet_jax.cli", *fit, "--out", str(out)]
    return subprocess.Popen(
        [*command, *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def _wait_for_checkpoint(process, folder, timeout=90.0):
    """Layers in the first checkpoint that appears while ``process`` runs."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (folder / "manifest.json").is_file():
            return _manifest(folder)["layers"]
        if process.poll() is not None:
            pytest.fail(f"fit ended before checkpointing: {process.stderr.read()}")
        time.sleep(0.01)
    pytest.fail("no checkpoint appeared in time")


def _stop(process):
    if process.poll() is None:
        process.kill()
    return process.communicate(timeout=60)


def _network_arrays(path):
    with np.load(path) as archive:
        return {name: archive[name] for name in archive.files}


@pytest.mark.slow
def test_fit_killed_mid_construction_resumes_to_the_same_network(tmp_path):
    out = tmp_path / "killed"
    folder = out / "checkpoint"
    process = _start_fit(out, "--checkpoint-every", "20")
    try:
        layers = _wait_for_checkpoint(process, folder)
        os.kill(process.pid, signal.SIGKILL)
    finally:
        _stop(process)
    assert process.returncode == -signal.SIGKILL
    assert 20 <= _manifest(folder)["layers"] < 200 and layers >= 20
    assert not (out / "network.npz").exists()
    # What a crash in the middle of the next checkpoint would leave behind.
    (folder / "layers-000020-000040.npz").write_bytes(b"half a block")
    (folder / ".state-000040.npz.x1y2z3.tmp").write_bytes(b"half a state")

    resumed = subprocess.run(
        [sys.executable, "-m", "redunet_jax.cli", *FIT, "--out", str(out), "--resume"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert resumed.returncode == 0, resumed.stderr

    # The same construction, uninterrupted, with the settings the run recorded.
    config = json.loads((out / "metrics.json").read_text())["config"]
    data = load_dataset(config["dataset"], seed=config["seed"])
    net, _ = construct(
        data.X_train,
        data.y_train,
        num_classes=data.num_classes,
        num_layers=config["layers"],
        eta=config["eta"],
        eps_sq=config["eps_sq"],
        lam=config["lam"],
    )
    save(tmp_path / "reference.npz", net)
    expected = _network_arrays(tmp_path / "reference.npz")
    result = _network_arrays(out / "network.npz")
    assert sorted(result) == sorted(expected)
    for name, array in expected.items():
        assert result[name].dtype == array.dtype
        assert np.array_equal(result[name], array), f"{name} differs"
    assert _manifest(folder)["layers"] == 200 and _manifest(folder)["every"] == 20
    assert not (folder / ".state-000040.npz.x1y2z3.tmp").exists()


def test_ctrl_c_prints_how_to_resume(tmp_path):
    out = tmp_path / "run"
    # Long enough that the interrupt always lands mid-construction.
    long_fit = [*FIT[:3], "--layers", "5000", "--quiet"]
    process = _start_fit(out, "--checkpoint-every", "20", fit=long_fit)
    try:
        _wait_for_checkpoint(process, out / "checkpoint")
        os.kill(process.pid, signal.SIGINT)
        _, err = process.communicate(timeout=60)
    finally:
        _stop(process)
    assert process.returncode == 130
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("redunet: interrupted; ")
    assert "layers; continue with: redunet fit --dataset gaussian2d" in lines[0]
    assert "--layers 5000" in lines[0]
    assert lines[0].endswith("--checkpoint-every 20 --resume")


def test_fit_refuses_to_reuse_or_invent_a_checkpoint(saved, tmp_path, capsys):
    out = tmp_path / "run"
    (out / "checkpoint").mkdir(parents=True)
    argv = [*FIT, "--out", str(out)]
    assert main([*argv, "--resume"]) == 2
    err = capsys.readouterr().err
    assert "--resume:" in err and "holds no checkpoint" in err
    shutil.copytree(saved, out / "checkpoint", dirs_exist_ok=True)
    assert main([*argv, "--checkpoint-every", "5"]) == 2
    err = capsys.readouterr().err
    assert "holds a checkpoint of an earlier run; add --resume" in err
    assert len(err.strip().splitlines()) == 1
    # a checkpoint of other inputs is refused with the library's message
    assert main([*argv, "--resume"]) == 2
    err = capsys.readouterr().err
    assert "belongs to different inputs" in err and "Traceback" not in err
    with pytest.raises(SystemExit) as info:
        main([*argv, "--checkpoint-every", "0"])
    assert info.value.code == 2
    assert "must be >= 1" in capsys.readouterr().err
